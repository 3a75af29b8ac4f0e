import pytest
import torch

pytest.importorskip("transformers")

from torchprox.llm.blocks import target_linears  # noqa: E402
from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks  # noqa: E402
from torchprox.llm.reconstruct import finetune_masked, obs_update  # noqa: E402
from torchprox.prox import nm_mask  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .tiny import tiny_llama  # noqa: E402


@pytest.fixture
def calib():
    return torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(0))


def magnitude_masks(model):
    mods = dict(model.named_modules())
    return {name: nm_mask(mods[name].weight.detach().abs(), 2, 4, dim=1) for name, _ in target_linears(model)}


def loss(model, ids):
    with torch.no_grad():
        return float(model(input_ids=ids, labels=ids).loss)


def test_finetune_masked_keeps_the_mask_trains_only_targets_and_lowers_the_loss(calib):
    model = tiny_llama()
    masks = magnitude_masks(model)
    mods = dict(model.named_modules())
    others = {k: v.clone() for k, v in model.state_dict().items() if k.removesuffix(".weight") not in masks}
    with torch.no_grad():
        for name, mask in masks.items():
            mods[name].weight.mul_(mask)
    before = loss(model, calib)
    report = finetune_masked(model, calib, masks, steps=30, lr=3e-3, batch_size=4)
    assert len(report["loss"]) == 30 and loss(model, calib) < before - 0.05
    for name, mask in masks.items():
        w = mods[name].weight
        assert (w[~mask] == 0).all() and is_nm(w, 2, 4, dim=1)
    state = model.state_dict()
    assert all(torch.equal(state[k], v) for k, v in others.items())  # nothing else trained
    assert all(p.requires_grad for p in model.parameters()) and all(p.grad is None for p in model.parameters())


def test_obs_update_from_dense_keeps_the_mask(calib):
    model = tiny_llama()
    masks = magnitude_masks(model)
    obs_update(model, calib, masks)
    mods = dict(model.named_modules())
    for name, mask in masks.items():
        assert (mods[name].weight[~mask] == 0).all()


def test_bad_masks(calib):
    model = tiny_llama()
    with pytest.raises(ValueError, match="not a module with a weight"):
        finetune_masked(model, calib, {"model.nowhere": torch.ones(2, 4, dtype=torch.bool)})
    name = target_linears(model)[0][0]
    with pytest.raises(ValueError, match="must be bool of shape"):
        finetune_masked(model, calib, {name: torch.ones(2, 4, dtype=torch.bool)})


def test_learn_masks_with_finetune_keeps_the_learned_mask(calib):
    cfg = dict(steps=4, lam=0.5, lr=1e-2)
    mask_only, tuned = tiny_llama(), tiny_llama()
    learn_masks(mask_only, calib, 2, 4, ProxSparseConfig(**cfg), progress=False)
    learn_masks(tuned, calib, 2, 4, ProxSparseConfig(**cfg, reconstruct="finetune", reconstruct_steps=10,
                                                     reconstruct_lr=3e-3), progress=False)
    a, b = dict(mask_only.named_modules()), dict(tuned.named_modules())
    for name, _ in target_linears(mask_only):
        assert is_nm(b[name].weight, 2, 4, dim=1) and not ((a[name].weight == 0) & (b[name].weight != 0)).any()
    assert loss(tuned, calib) < loss(mask_only, calib)
