r"""Learning N:M masks with the Hugging Face ``transformers.Trainer``: no patching, one callback.

[`torchprox.ProxAdam`][torchprox.optim.proxadam.ProxAdam] is a ``torch.optim.Optimizer``, so the Trainer takes it as it is:

    learnable_nm_model(model, n=2, m=4)                       # W0 frozen, W learnable (torchprox.prune)
    opt = ProxAdam(prox_param_groups(model, lam=...), lr=1e-4)
    sched = transformers.get_linear_schedule_with_warmup(opt, 10, steps)
    trainer = transformers.Trainer(model=model, args=args, train_dataset=ds,
                                   optimizers=(opt, sched), callbacks=[NMMaskCallback()])
    trainer.train()          # every optimizer step: Adam on W, then prox_nm on W (ProxAdam.step)
    # at the end NMMaskCallback chose mask = top-n of m of |W| and set weight = W0 ⊙ mask (exactly N:M)

The Trainer wraps the optimizer (accelerate's ``AcceleratedOptimizer``) and calls its ``step()`` after each
gradient-accumulation cycle (after gradient clipping), so the prox runs once per update, as in ProxSparse.
With ``lam_scaling="lr"`` the scheduler also scales λ.

[`NMMaskCallback`][torchprox.llm.trainer.NMMaskCallback] adds progress to the Trainer's logs and finishes the run:

- ``on_log``: ``nm_fraction`` (fraction of all N:M groups of the learnable weights W that already have at
  most n nonzeros, counted over all layers: Σ_layers #N:M groups / Σ_layers #groups) and
  ``nm_layers_done`` (layers whose W is entirely N:M) are added to the logs dict (seen by the callbacks after
  this one, e.g. the progress printer), to ``state.log_history`` and to the ``torchprox.llm.trainer`` logger.
- ``on_train_end``: [`torchprox.prune.apply_learned_masks`][torchprox.prune.learnable.apply_learned_masks] (with the optimizer, so its Adam moments
  for W are freed) and [`torchprox.prune.remove_all`][torchprox.prune.remove.remove_all]: the model's target weights become plain
  Parameters equal to ``W0 ⊙ mask``, ready for ``save_pretrained`` / [`torchprox.llm.export.save_sparse`][torchprox.llm.export.save_sparse].

FSDP (``fully_shard``) is not supported through the Trainer (it refuses ``optimizers=`` with FSDP); see
``docs/distributed.md`` for sharded training. Under DDP every rank applies the same masks.
"""
from __future__ import annotations

import logging
from typing import Any

from torch import nn
from transformers import TrainerCallback

from ..prune import apply_learned_masks, nm_parametrizations, remove_all
from ._runtime import is_dtensor
from .proxsparse import nm_progress

__all__ = ["NMMaskCallback", "nm_progress"]

logger = logging.getLogger(__name__)


def _prox_covered(model: nn.Module, optimizer) -> tuple[int, int]:
    """(learnable N:M weights in a param group with a prox and lam > 0, learnable N:M weights)."""
    learnable = {id(plist.original) for _, _, _, plist, p in nm_parametrizations(model) if p.state == "learning"}
    covered = set()
    for group in getattr(optimizer, "param_groups", ()):
        if group.get("prox") is not None and group.get("lam", 0) > 0:
            covered.update(id(q) for q in group["params"] if id(q) in learnable)
    return len(covered), len(learnable)


class NMMaskCallback(TrainerCallback):
    r"""A ``transformers.TrainerCallback`` for learning N:M masks with [`torchprox.ProxAdam`][torchprox.optim.proxadam.ProxAdam].

    Logs the fraction of N:M groups of the learnable weights (see [`nm_progress`][torchprox.llm.proxsparse.nm_progress]) at every Trainer log
    and, at the end of training, applies the learned masks: ``weight = W0 ⊙ top-n-of-m(|W|)``, exactly N:M.

    Args:
        apply_at_end: apply the masks in ``on_train_end`` (False: leave the model learning, e.g. to resume).
        remove: after applying, bake the weights into plain Parameters ([`torchprox.prune.remove_all`][torchprox.prune.remove.remove_all]),
            so that ``save_pretrained`` writes the usual keys and any runtime loads the checkpoint.
        check_optimizer: in ``on_train_begin``, raise ValueError if the optimizer passed as ``optimizers=``
            has no learnable N:M weight in a group with a prox and λ > 0, and warn when no optimizer was passed
            (the usual mistake: the Trainer then builds a plain AdamW and no mask is learned).

    After training, ``self.masks`` holds ``{qualified weight name: bool mask}`` and ``self.final`` the
    [`nm_progress`][torchprox.llm.proxsparse.nm_progress] of the learned W just before the masks were applied.

    Examples:
        Pass it with a ProxAdam to ``transformers.Trainer(..., optimizers=(opt, sched), callbacks=[cb])`` (see
        the module docstring). Here the Trainer's events are called by hand on a learnable ``nn.Linear`` (8 → 4):

        >>> import torch
        >>> from transformers import TrainerControl, TrainerState
        >>> from torchprox.prune import is_nm, learnable_nm
        >>> _ = torch.manual_seed(0)
        >>> model = torch.nn.Sequential(learnable_nm(torch.nn.Linear(8, 4), n=2, m=4))
        >>> cb, state, control = NMMaskCallback(), TrainerState(), TrainerControl()
        >>> logs = {"loss": 1.0}
        >>> cb.on_log(None, state, control, logs=logs, model=model)        # what the Trainer does at each log
        >>> logs
        {'loss': 1.0, 'nm_fraction': 0.0, 'nm_layers_done': 0, 'nm_layers': 1}
        >>> cb.on_train_end(None, state, control, model=model)             # weight = W0 ⊙ top-2-of-4(|W|)
        >>> list(cb.masks), is_nm(model[0].weight, 2, 4, dim=1), state.log_history[-1]["nm_masks_applied"]
        (['0.weight'], True, 1)
    """

    def __init__(self, apply_at_end: bool = True, remove: bool = True, check_optimizer: bool = True) -> None:
        self.apply_at_end = apply_at_end
        self.remove = remove
        self.check_optimizer = check_optimizer
        self.masks: dict[str, Any] = {}
        self.final: dict[str, Any] | None = None

    def on_train_begin(self, args, state, control, model=None, optimizer=None, **kwargs):
        if model is None:
            return
        if next((p for *_, p in nm_parametrizations(model) if p.state == "learning"), None) is None:
            logger.warning("NMMaskCallback: %s has no learnable N:M layer (call torchprox.prune."
                           "learnable_nm_model before building the Trainer); nothing to learn", type(model).__name__)
            return
        if self.check_optimizer and optimizer is None:
            # The Trainer hands callbacks the optimizer given as optimizers=(...); None means it builds its own.
            logger.warning("NMMaskCallback: no optimizer was passed to the Trainer; unless create_optimizer is "
                           "overridden to return a ProxAdam, the Trainer's AdamW learns no N:M mask. Pass "
                           "optimizers=(ProxAdam(prox_param_groups(model, lam=...)), scheduler)")
        elif self.check_optimizer:
            covered, learnable = _prox_covered(model, optimizer)
            if covered == 0:
                raise ValueError(
                    f"NMMaskCallback: none of the {learnable} learnable N:M weights is in an optimizer param group "
                    f"with a prox and lam > 0 (optimizer: {type(getattr(optimizer, 'optimizer', optimizer)).__name__})"
                    "; pass optimizers=(ProxAdam(prox_param_groups(model, lam=...)), scheduler) to the Trainer"
                )
            if covered < learnable:
                logger.warning("NMMaskCallback: only %d of %d learnable N:M weights have a prox in the optimizer",
                               covered, learnable)

    def on_log(self, args, state, control, logs=None, model=None, **kwargs):
        if model is None:
            return
        stats = nm_progress(model)
        if stats is None:
            return
        if logs is not None:
            logs.update(stats)
        # Trainer.log appended a copy of logs (plus "step") to log_history just before this event.
        if state.log_history and state.log_history[-1].get("step") == state.global_step:
            state.log_history[-1].update(stats)
        if state.is_world_process_zero:
            logger.info("step %d: %.2f%% of N:M groups done, %d/%d layers exactly N:M", state.global_step,
                        100 * stats["nm_fraction"], stats["nm_layers_done"], stats["nm_layers"])

    def on_train_end(self, args, state, control, model=None, optimizer=None, **kwargs):
        if not self.apply_at_end or model is None:
            return
        if any(is_dtensor(plist.original) for *_, plist, _ in nm_parametrizations(model)):
            raise ValueError("NMMaskCallback: the learnable weights are sharded DTensors (FSDP2); gather the full "
                             "state dict and apply the masks on an unsharded model (see docs/distributed.md)")
        self.final = nm_progress(model)
        self.masks = apply_learned_masks(model, optimizer=optimizer)
        if self.remove:
            remove_all(model)
        if self.final is not None:
            state.log_history.append({"nm_masks_applied": len(self.masks),
                                      "nm_fraction_before_masking": self.final["nm_fraction"],
                                      "step": state.global_step})
            if state.is_world_process_zero:
                logger.info("applied %d learned N:M masks (%.2f%% of groups were already N:M)", len(self.masks),
                            100 * self.final["nm_fraction"])
