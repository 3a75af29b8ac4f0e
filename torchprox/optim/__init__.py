"""Optimizers: [`ProxAdam`][torchprox.optim.proxadam.ProxAdam], torch's Adam/AdamW step followed by each param group's proximal operator."""
from .proxadam import LAM_SCALINGS, METRICS, ProxAdam

__all__ = ["ProxAdam", "METRICS", "LAM_SCALINGS"]
