"""Bad input and diverging runs of learn_masks / sparsify: a clear error before the model is touched, or the
model restored to its input weights; a successful sparsify is always exactly N:M (issue 21, items 7 and 11)."""
import importlib
import math

import pytest
import torch

transformers = pytest.importorskip("transformers")

ps = importlib.import_module("torchprox.llm.proxsparse")  # the modules (torchprox.llm re-exports functions)
sp = importlib.import_module("torchprox.llm.sparsify")
from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks  # noqa: E402
from torchprox.llm.sparsify import sparsify  # noqa: E402
from torchprox.prune import is_pruned  # noqa: E402

from .tiny import tiny_llama  # noqa: E402


@pytest.fixture
def calib():
    return torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    return ({k: v.detach().clone() for k, v in model.state_dict().items()},
            {k: p.requires_grad for k, p in model.named_parameters()})


def assert_as_before(model, before):
    state, requires = before
    assert not is_pruned(model)
    after = model.state_dict()
    assert set(after) == set(state) and all(torch.equal(after[k], v) for k, v in state.items())
    assert {k: p.requires_grad for k, p in model.named_parameters()} == requires


def frozen_embedding_llama():
    model = tiny_llama()
    model.model.embed_tokens.weight.requires_grad_(False)  # a flag learn_masks must give back as it was
    return model


def test_diverging_learning_raises_and_restores_the_model(calib):
    model = frozen_embedding_llama()
    before = snapshot(model)
    with pytest.raises(FloatingPointError, match="learning diverged: the loss is nan at step 2.*lower lr"):
        sparsify(model, calib, 2, 4, method="proxsparse", steps=3, lr=1e30, progress=False)
    assert_as_before(model, before)


def test_weights_that_turn_non_finite_on_the_last_step_are_caught(calib, monkeypatch):
    # the loss of the last step is read before its update: the end-of-run check on the weights catches it
    model = frozen_embedding_llama()
    before = snapshot(model)
    real_step, calls = ps.ProxAdam.step, []

    def poisoning_step(self, *args, **kwargs):  # the 2nd (last) step leaves one weight of one layer inf
        out = real_step(self, *args, **kwargs)
        calls.append(1)
        if len(calls) == 2:
            with torch.no_grad():
                self.param_groups[5]["params"][0][0, 0] = math.inf
        return out

    monkeypatch.setattr(ps.ProxAdam, "step", poisoning_step)
    with pytest.raises(FloatingPointError, match=r"learned weights are non-finite in 1 of 14 layers "
                                                 r"\(model.layers.0.mlp.up_proj\).*lower lr"):
        learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=2), progress=False)
    assert_as_before(model, before)


def test_an_error_mid_learning_restores_the_model(calib, monkeypatch):
    model = frozen_embedding_llama()
    before = snapshot(model)
    calls = []

    def interrupted(self, *args, **kwargs):
        calls.append(1)
        if len(calls) == 3:
            raise KeyboardInterrupt
        return real_step(self, *args, **kwargs)

    real_step = ps.ProxAdam.step
    monkeypatch.setattr(ps.ProxAdam, "step", interrupted)
    with pytest.raises(KeyboardInterrupt):
        learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=5, lam=0.5, lr=1e-2), progress=False)
    assert_as_before(model, before)


BAD_FIELDS = [
    ("metric", "adamw"), ("lam_scaling", "linear"), ("lam", -1.0), ("lam", math.nan), ("lam", math.inf),
    ("lr", 0.0), ("lr", math.nan), ("lr", math.inf), ("steps", 0), ("steps", 2.5), ("steps", True),
    ("batch_size", 0), ("warmup", 1.0), ("warmup", math.nan), ("grad_clip", 0.0), ("grad_clip", math.inf),
    ("lam_normalization", "l2"), ("lr_normalization", None), ("mask_scores", "wanda"), ("lam_ramp", -0.1),
    ("lam_ramp", math.nan), ("reconstruct", "sgd"), ("reconstruct_blocks", 0), ("reconstruct_steps", -1),
    ("reconstruct_lr", math.nan), ("frozen_lam", -1.0), ("frozen_lam", math.inf), ("log_every", 0),
    ("checkpoint_every", -1), ("seed", 1.5), ("seed", "0"),
]


@pytest.mark.parametrize("field, value", BAD_FIELDS)
def test_config_validates_every_field(field, value):
    with pytest.raises(ValueError, match=f"^{field} .*got {value!r}"):
        ProxSparseConfig(**{field: value})


def test_config_accepts_the_documented_values():
    ProxSparseConfig(metric="identity", lam_scaling="lr", lam=0, grad_clip=None, warmup=0, lam_ramp=1,
                     reconstruct="obs", checkpoint_every=0, frozen_lam=0.0)


def _bad_calls(calib):
    return [
        ("float ids", dict(calib=calib.float()), "integer token ids"),
        ("1-D", dict(calib=calib[0]), r"\(B, seqlen\)"),
        ("id past the vocabulary", dict(calib=torch.cat([calib, torch.full((1, 16), 64)])), "token id 64"),
        ("negative id", dict(calib=calib - 1), "token id -1"),
        ("one token per block", dict(calib=calib[:, :1]), "seqlen >= 2"),
        ("longer than the positions", dict(calib=torch.zeros(2, 129, dtype=torch.long)), "129 tokens exceed"),
        ("fewer blocks than a batch", dict(config=ProxSparseConfig(batch_size=8)), "batch_size=8"),
        ("targets matching nothing", dict(targets=["nope_proj"]), "selects no matrix weight"),
        ("bad pattern", dict(n=4, m=4), "0 < n < m"),
        ("not a config", dict(config={"lam": 1}), "ProxSparseConfig"),
    ]


@pytest.mark.parametrize("case", range(10))
def test_learn_masks_refuses_bad_input_before_touching_the_model(calib, case):
    name, kwargs, match = _bad_calls(calib)[case]
    model = frozen_embedding_llama()
    before = snapshot(model)
    args = dict(calib=calib, n=2, m=4, config=ProxSparseConfig(steps=2), progress=False) | kwargs
    with pytest.raises((ValueError, TypeError), match=match):
        learn_masks(model, **args)
    assert_as_before(model, before)


def test_sparsify_refuses_unknown_fields_and_bad_calib_before_any_work(calib):
    model = tiny_llama()
    before = snapshot(model)
    with pytest.raises(ValueError, match="unknown ProxSparseConfig field.*stepz"):
        sparsify(model, calib, method="proxsparse", stepz=3, progress=False)
    for method in ("wanda", "sparsegpt"):
        with pytest.raises(ValueError, match="token id 99"):
            sparsify(model, torch.full((2, 8), 99), method=method, progress=False)
    assert_as_before(model, before)


def test_sparsify_never_returns_a_model_that_is_not_nm(calib, monkeypatch):
    def leaves_it_dense(model, n, m, targets=None, progress=True):  # a method that failed to prune
        return {t.key: 0.5 for t in sp.target_tensors(model, targets, m=m)}

    monkeypatch.setattr(sp, "magnitude_prune", leaves_it_dense)
    with pytest.raises(RuntimeError, match="not exactly 2:4"):
        sparsify(tiny_llama(), None, 2, 4, method="magnitude", progress=False)
