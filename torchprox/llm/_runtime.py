"""What the LLM stages share at run time: progress bars, the model's device, the seeded order of the
calibration blocks, freezing and restoring ``requires_grad``, and the language-model training loop that
ProxSparse ([`learn_masks`][torchprox.llm.proxsparse.learn_masks]) and the masked fine-tune
([`finetune_masked`][torchprox.llm.reconstruct.finetune_masked]) run."""
from __future__ import annotations

import contextlib
import time
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import Tensor, nn


class _NoBar:
    """What [`progress_bar`][torchprox.llm._runtime.progress_bar] returns when there is no bar: every call does nothing."""

    def update(self, n: int = 1) -> None:
        pass

    def set_postfix(self, **kwargs: Any) -> None:
        pass

    def close(self) -> None:
        pass


def _tqdm():
    """``tqdm.auto.tqdm``, or None where tqdm (an llm extra) is not installed."""
    try:
        from tqdm.auto import tqdm
    except ImportError:  # pragma: no cover - tqdm is an llm extra
        return None
    return tqdm


def progress_bar(enabled: bool, **kwargs: Any):
    """A ``tqdm.auto.tqdm(**kwargs)`` bar when ``enabled`` and tqdm is installed, else one that does nothing
    (``update``, ``set_postfix``, ``close``)."""
    tqdm = _tqdm() if enabled else None
    return tqdm(**kwargs) if tqdm is not None else _NoBar()


def progress_iter(iterable: Iterable, enabled: bool, **kwargs: Any) -> Iterable:
    """``iterable`` wrapped in a tqdm bar (``tqdm(iterable, **kwargs)``) when ``enabled`` and tqdm is
    installed, else ``iterable`` itself."""
    tqdm = _tqdm() if enabled else None
    return tqdm(iterable, **kwargs) if tqdm is not None else iterable


def is_dtensor(t) -> bool:
    """Whether ``t`` is a ``torch.distributed.tensor.DTensor`` (an FSDP2 / tensor-parallel shard)."""
    try:
        from torch.distributed.tensor import DTensor
    except ImportError:  # pragma: no cover - torch built without distributed
        return False
    return isinstance(t, DTensor)


def module_device(module: nn.Module, default: torch.device | None = None) -> torch.device | None:
    """The device of ``module``'s first parameter, else of its first buffer, else ``default``."""
    for p in module.parameters():
        return p.device
    for b in module.buffers():
        return b.device
    return default


def block_order(n_blocks: int, steps: int, batch_size: int, seed: int) -> Tensor:
    """The calibration-block indices of every step, ``(steps, batch_size)``: seeded random permutations of
    ``range(n_blocks)`` (``torch.Generator().manual_seed(seed)``), concatenated as often as needed, cut to
    ``steps × batch_size``."""
    gen = torch.Generator().manual_seed(seed)
    need = steps * batch_size
    perms = [torch.randperm(n_blocks, generator=gen) for _ in range(-(-need // n_blocks))]
    return torch.cat(perms)[:need].view(steps, batch_size)


def freeze(model: nn.Module) -> dict[str, bool]:
    """Set ``requires_grad=False`` on every parameter of ``model``; return the flags it had, by name."""
    flags = {name: p.requires_grad for name, p in model.named_parameters()}
    for p in model.parameters():
        p.requires_grad_(False)
    return flags


def restore_requires_grad(model: nn.Module, flags: dict[str, bool]) -> None:
    """Give every parameter of ``model`` the ``requires_grad`` of ``flags`` (by name; True, torch's default,
    for a name not in it)."""
    for name, p in model.named_parameters():
        p.requires_grad_(flags.get(name, True))


@contextlib.contextmanager
def training_mode(model: nn.Module):
    """``model.train()`` inside the block, its previous mode after it."""
    was_training = model.training
    model.train()
    try:
        yield
    finally:
        model.train(was_training)


def train_lm(model: nn.Module, calib: Tensor, order: Tensor, optimizer: torch.optim.Optimizer, scheduler, *,
             start: int = 0, progress: bool, desc: str, params: list[Tensor] | None = None,
             grad_clip: float | None = None, extra_loss: Callable[[Tensor], Tensor] | None = None,
             before_step: Callable[[int], None] | None = None,
             after_step: Callable[[int, float], dict[str, str] | None] | None = None,
             loss_fn: Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]] | None = None) -> tuple[list[float], float]:
    """Train ``model`` on the language-model loss (or ``loss_fn``'s) for the steps ``start .. len(order) - 1``.

    Step t: ``before_step(t)``; ``ids = calib[order[t]]`` on the model's device; ``L = model(ids,
    labels=ids).loss``, or ``(L, logged) = loss_fn(model, ids)`` (e.g. a
    [`distillation_loss`][torchprox.llm.distill.distillation_loss]; the logged value is then ``logged``, the
    next-token loss), plus ``extra_loss(model)`` when given, not logged; backward; the global gradient
    norm of ``params`` clipped to ``grad_clip`` (None: no clipping); ``optimizer.step()``, ``zero_grad``,
    ``scheduler.step()``; then ``after_step(t, float(L))``, whose dict is added to the progress bar's postfix.
    The model is in training mode for the loop and gets its mode back after it.

    Returns:
        ``(losses of the steps run, seconds)``.
    """
    device = module_device(model)
    steps = order.shape[0]
    losses: list[float] = []
    bar = progress_bar(progress, total=steps, initial=start, desc=desc, unit="step")
    t0 = time.perf_counter()
    try:
        with training_mode(model):
            for step in range(start, steps):
                if before_step is not None:
                    before_step(step)
                ids = calib[order[step]].to(device)
                if loss_fn is None:
                    loss = lm_loss = model(input_ids=ids, labels=ids, use_cache=False).loss
                else:
                    loss, lm_loss = loss_fn(model, ids)
                loss = loss if extra_loss is None else loss + extra_loss(model)
                loss.backward()
                if grad_clip is not None:
                    torch.nn.utils.clip_grad_norm_(params, grad_clip)
                optimizer.step()
                optimizer.zero_grad(set_to_none=True)
                scheduler.step()
                losses.append(float(lm_loss.detach()))
                postfix = after_step(step, losses[-1]) if after_step is not None else None
                bar.update(1)
                bar.set_postfix(loss=f"{losses[-1]:.3f}", **(postfix or {}))
    finally:
        bar.close()
    return losses, time.perf_counter() - t0
