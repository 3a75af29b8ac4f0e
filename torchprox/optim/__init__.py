"""Optimizers: :class:`ProxAdam`, torch's Adam/AdamW step followed by each param group's proximal operator."""
from .proxadam import ProxAdam

__all__ = ["ProxAdam"]
