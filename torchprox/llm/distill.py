r"""The training loss of mask learning: the language-model loss, distillation from the dense model, or both.

While a mask is learned every target still holds its original W0 (a frozen buffer of its parametrization),
so the dense model is available as a teacher at no memory cost:
[`torchprox.prune.original_weights`][torchprox.prune.parametrization.original_weights] makes the same modules
compute with W0 for one forward. A loss is a sum of weighted terms, written ``"lm"``, ``"kd"``, ``"lm+kd"``,
``"0.5*lm+0.5*kd"``, ``"lm+hidden"``, ...:

    lm      = −(1/T) Σ_t log p_student(x_{t+1} | x_≤t)                                  (next-token labels)
    kd      = τ² · (1/T) Σ_t KL( softmax(z_teacher,t / τ) ‖ softmax(z_student,t / τ) )    (every position t)
    hidden  = (1/L) Σ_l ‖H_student,l − H_teacher,l‖² / ‖H_teacher,l‖²                    (each block's output)

with z the logits, τ the temperature and H_l the hidden states after block l (``output_hidden_states``, the
embeddings excluded). At W = W0 the student *is* the teacher: ``kd`` and ``hidden`` and their gradients are
exactly 0 (the KL's gradient τ(q − p)/T is written out so that no rounding residue is left). The teacher runs
in eval mode under ``torch.no_grad``: one extra forward per step, no backward.

So a loss without ``"lm"`` never moves W from W0 under ProxAdam's ``metric="adam"``: a zero gradient leaves
v̂ = 0, where that metric takes no prox step (``ProxSparseConfig`` refuses the combination). Distillation
needs a nonzero signal to start from: ``"lm+kd"``, ``"lm+hidden"``, or ``metric="identity"``, whose prox moves W
from the first step.
"""
from __future__ import annotations

import contextlib
import math
import re
from collections.abc import Callable
from typing import Any

import torch
from torch import Tensor, nn
from torch.nn import functional as F

from ..prune import original_weights

__all__ = ["LOSS_TERMS", "dense_weights", "distillation_loss", "parse_loss"]

#: The terms a loss spec may add up.
LOSS_TERMS = ("lm", "kd", "hidden")

_TERM = re.compile(r"^(?:(\d+(?:\.\d*)?(?:[eE][-+]?\d+)?|\.\d+(?:[eE][-+]?\d+)?)\*)?([a-z]+)$")


def parse_loss(spec: str) -> dict[str, float]:
    """``{term: weight}`` of a loss spec such as ``"lm"``, ``"lm+kd"`` or ``"0.5*lm+0.5*kd"``.

    Raises:
        ValueError: not a ``+``-joined list of ``[weight*]term`` with terms from `LOSS_TERMS`, each once, with
            finite positive weights.

    Examples:
        >>> parse_loss("lm"), parse_loss("0.5*lm+0.5*kd")
        ({'lm': 1.0}, {'lm': 0.5, 'kd': 0.5})
        >>> parse_loss("lm+ce")
        Traceback (most recent call last):
            ...
        ValueError: loss 'lm+ce': unknown term 'ce'; a loss is a '+'-joined list of [weight*]term with terms lm, kd, hidden (e.g. 'lm+kd', '0.5*lm+0.5*kd')
    """
    fix = (f"a loss is a '+'-joined list of [weight*]term with terms {', '.join(LOSS_TERMS)} "
           "(e.g. 'lm+kd', '0.5*lm+0.5*kd')")
    if not isinstance(spec, str) or not spec.strip():
        raise ValueError(f"loss {spec!r}: {fix}")
    terms: dict[str, float] = {}
    for part in spec.replace(" ", "").split("+"):
        match = _TERM.match(part)
        if not match:
            raise ValueError(f"loss {spec!r}: cannot read {part!r}; {fix}")
        weight, term = float(match.group(1) or 1.0), match.group(2)
        if term not in LOSS_TERMS:
            raise ValueError(f"loss {spec!r}: unknown term {term!r}; {fix}")
        if term in terms:
            raise ValueError(f"loss {spec!r}: {term!r} appears twice; {fix}")
        if not (math.isfinite(weight) and weight > 0):
            raise ValueError(f"loss {spec!r}: the weight of {term!r} must be a finite number > 0, got {weight}")
        terms[term] = weight
    return terms


class _KL(torch.autograd.Function):
    """τ² · mean_t KL(p_t ‖ q_t), p = softmax(teacher/τ), q = softmax(student/τ), with the gradient
    τ (q − p) / T written out: exactly 0 where the student's logits equal the teacher's (autograd's own
    gradient through log_softmax leaves rounding residue of ~1e-8 · q there)."""

    @staticmethod
    def forward(ctx, student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
        log_q = F.log_softmax(student / temperature, dim=-1)
        log_p = F.log_softmax(teacher / temperature, dim=-1)
        p = log_p.exp()
        ctx.save_for_backward(log_q, p)
        ctx.temperature = temperature
        return (p * (log_p - log_q)).sum() * (temperature**2 / student.shape[0])

    @staticmethod
    def backward(ctx, grad: Tensor):
        log_q, p = ctx.saved_tensors
        return grad * (log_q.exp() - p) * (ctx.temperature / log_q.shape[0]), None, None


def _kd(student: Tensor, teacher: Tensor, temperature: float) -> Tensor:
    """τ² · mean over positions of KL(softmax(teacher/τ) ‖ softmax(student/τ)); logits ``(B, L, V)``."""
    return _KL.apply(student.float().flatten(0, -2), teacher.float().flatten(0, -2), float(temperature))


def _hidden(student: tuple[Tensor, ...], teacher: tuple[Tensor, ...]) -> Tensor:
    """Mean over blocks of ‖H_s − H_t‖² / ‖H_t‖² (hidden states after each block, embeddings excluded)."""
    terms = [(s.float() - t.float()).square().sum() / t.float().square().sum().clamp_min(1e-30)
             for s, t in zip(student[1:], teacher[1:])]
    return torch.stack(terms).mean()


def check_dense_pairs(weights: list[tuple[Tensor, Tensor]]) -> None:
    """ValueError unless every ``dense`` of ``[(tensor, dense)]`` has its tensor's shape, dtype and device."""
    for tensor, dense in weights:
        if dense.shape != tensor.shape or dense.dtype != tensor.dtype or dense.device != tensor.device:
            raise ValueError(f"a dense weight of {dense.dtype} {tuple(dense.shape)} on {dense.device} cannot stand "
                             f"in for a tensor of {tensor.dtype} {tuple(tensor.shape)} on {tensor.device}")


@contextlib.contextmanager
def dense_weights(weights: list[tuple[Tensor, Tensor]]):
    """Inside the block each tensor of ``weights`` ``[(tensor, dense)]`` holds ``dense`` (its storage swapped
    in, no copy); on exit it holds its own values again. The teacher of a masked fine-tune, whose
    parametrizations (and their W0) are gone.

    Examples:
        >>> import torch
        >>> lin = torch.nn.Linear(4, 2)
        >>> dense = torch.ones(2, 4)
        >>> with dense_weights([(lin.weight, dense)]):
        ...     float(lin.weight.sum())
        8.0
        >>> float(lin.weight.sum()) != 8.0, float(dense.sum())     # swapped back
        (True, 8.0)
    """
    check_dense_pairs(weights)
    swapped = []
    try:
        for tensor, dense in weights:
            tensor.data, dense.data = dense.data, tensor.data
            swapped.append((tensor, dense))
        yield
    finally:
        for tensor, dense in swapped:
            tensor.data, dense.data = dense.data, tensor.data


def distillation_loss(spec: str, temperature: float = 1.0, teacher: Callable[[nn.Module], Any] | None = None
                      ) -> Callable[[nn.Module, Tensor], tuple[Tensor, Tensor]]:
    r"""A loss function ``(model, ids) → (loss, lm_loss)`` for [`learn_masks`][torchprox.llm.proxsparse.learn_masks]'s
    training loop: ``loss`` = the weighted sum of the spec's terms (see the module docstring), ``lm_loss`` the
    next-token loss of the student (logged whatever the spec). The teacher is ``model`` inside the context
    ``teacher(model)``: by default [`original_weights`][torchprox.prune.parametrization.original_weights]
    (learning-state N:M layers compute with W0); a masked fine-tune passes ``lambda model:
    dense_weights(pairs)``.

    Examples:
        >>> import torch, transformers
        >>> from torchprox.prune import learnable_nm_model
        >>> _ = torch.manual_seed(0)
        >>> cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
        ...                                num_attention_heads=4, num_key_value_heads=2)
        >>> model = transformers.LlamaForCausalLM(cfg)
        >>> _ = learnable_nm_model(model, targets=["mlp.down_proj"])
        >>> loss, lm = distillation_loss("kd+hidden")(model, torch.randint(0, 64, (2, 8)))
        >>> float(loss), float(lm) > 0                          # W = W0: the student is the teacher
        (0.0, True)
    """
    terms = parse_loss(spec)
    if not (isinstance(temperature, (int, float)) and math.isfinite(temperature) and temperature > 0):
        raise ValueError(f"kd temperature must be a finite number > 0, got {temperature!r}")
    need_teacher = "kd" in terms or "hidden" in terms
    as_teacher = original_weights if teacher is None else teacher
    hidden = "hidden" in terms

    def loss_fn(model: nn.Module, ids: Tensor) -> tuple[Tensor, Tensor]:
        dense = None
        if need_teacher:
            was_training = model.training
            model.eval()
            try:
                with torch.no_grad(), as_teacher(model):
                    dense = model(input_ids=ids, use_cache=False, output_hidden_states=hidden)
            finally:
                model.train(was_training)
        out = model(input_ids=ids, labels=ids, use_cache=False, output_hidden_states=hidden)
        total = out.loss * terms["lm"] if "lm" in terms else None
        if "kd" in terms:
            kd = _kd(out.logits, dense.logits, temperature) * terms["kd"]
            total = kd if total is None else total + kd
        if hidden:
            h = _hidden(out.hidden_states, dense.hidden_states) * terms["hidden"]
            total = h if total is None else total + h
        return total, out.loss
    return loss_fn
