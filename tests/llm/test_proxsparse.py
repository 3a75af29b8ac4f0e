"""ProxSparse on a tiny Llama built from a config: exact N:M, original values kept, resume, the dispatcher."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.llm.blocks import target_linears  # noqa: E402
from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks  # noqa: E402
from torchprox.llm.sparsify import METHODS, parse_pattern, sparsify  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .tiny import tiny_llama  # noqa: E402


@pytest.fixture
def calib():
    return torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def test_learned_masks_are_exact_nm_on_original_values(calib):
    model = tiny_llama()
    before = snapshot(model)
    report = learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=6, lam=0.5, lr=1e-2), progress=False)
    names = {name for name, _ in target_linears(model)}
    assert len(names) == 14 and report["targets"] == 14
    after = model.state_dict()
    assert set(after) == set(before)  # parametrizations removed, nothing added
    for key, w0 in before.items():
        w = after[key]
        if key.removesuffix(".weight") in names:
            assert is_nm(w, 2, 4, dim=1)
            kept = w != 0
            assert torch.equal(w[kept], w0[kept])  # mask applied to the original, frozen weights
        else:
            assert torch.equal(w, w0)  # nothing else touched
    assert all(p.requires_grad for p in model.parameters())
    assert len(report["loss"]) == 6 and report["nm_fraction"][-1][0] == 6


def test_learning_changes_the_mask_away_from_magnitude(calib):
    learned, magnitude = tiny_llama(), tiny_llama()
    learn_masks(learned, calib, 2, 4, ProxSparseConfig(steps=20, lam=0.05, lr=3e-2), progress=False)
    sparsify(magnitude, None, 2, 4, method="magnitude", progress=False)
    diff = sum(int(((a != 0) != (b != 0)).sum()) for a, b in zip(learned.parameters(), magnitude.parameters()))
    assert diff > 0


def test_resume_equals_uninterrupted(tmp_path, calib):
    cfg = ProxSparseConfig(steps=8, lam=0.3, lr=1e-2, checkpoint_every=4)
    full = tiny_llama()
    learn_masks(full, calib, 2, 4, cfg, progress=False)
    # an interrupted run: the first 4 steps, with a checkpoint at step 4 (same config, killed after it)
    part = tiny_llama()

    class Stop(Exception):
        pass

    import torchprox.llm.proxsparse as ps

    real_save = ps._atomic_save

    def save_then_stop(obj, path):
        real_save(obj, path)
        raise Stop

    ps._atomic_save = save_then_stop
    try:
        with pytest.raises(Stop):
            learn_masks(part, calib, 2, 4, cfg, checkpoint_dir=tmp_path, progress=False)
    finally:
        ps._atomic_save = real_save
    resumed = tiny_llama()
    learn_masks(resumed, calib, 2, 4, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


def test_resume_rejects_other_settings(tmp_path, calib):
    learn_masks(tiny_llama(), calib, 2, 4, ProxSparseConfig(steps=2, checkpoint_every=2), checkpoint_dir=tmp_path,
                progress=False)
    with pytest.raises(ValueError, match="other settings"):
        learn_masks(tiny_llama(), calib, 2, 4, ProxSparseConfig(steps=3, checkpoint_every=2),
                    checkpoint_dir=tmp_path, resume=True, progress=False)
    with pytest.raises(FileNotFoundError):
        learn_masks(tiny_llama(), calib, 2, 4, ProxSparseConfig(steps=2), checkpoint_dir=tmp_path / "none",
                    resume=True, progress=False)


def test_activation_aware_extraction_and_targets(calib):
    model = tiny_llama()
    before = snapshot(model)
    learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=2, mask_scores="activation"), targets=["q_proj"],
                progress=False)
    for key, w in model.state_dict().items():
        if key.endswith("q_proj.weight"):
            assert is_nm(w, 2, 4, dim=1) and torch.equal(w[w != 0], before[key][w != 0])
        else:
            assert torch.equal(w, before[key])


@pytest.mark.parametrize("method", METHODS)
def test_every_method_gives_exact_nm(method, calib):
    model = tiny_llama()
    kwargs = {"steps": 2} if method == "proxsparse" else {}
    report = sparsify(model, calib, 2, 4, method=method, progress=False, **kwargs)
    assert report["method"] == method and report["pattern"] == "2:4"
    assert len(report["layers"]) == 14 and all(v == 1.0 for v in report["layers"].values())


def test_bad_arguments(calib):
    with pytest.raises(ValueError, match="unknown method 'obs'"):
        sparsify(tiny_llama(), calib, method="obs")
    with pytest.raises(ValueError, match="needs calibration"):
        sparsify(tiny_llama(), None, method="wanda")
    with pytest.raises(ValueError, match="warmup"):
        ProxSparseConfig(warmup=1.5)
    with pytest.raises(ValueError, match="lam"):
        ProxSparseConfig(lam=-1)
    for bad in ("3:2", "2-4", "2:4:8", "a:b", "0:4"):
        with pytest.raises(ValueError):
            parse_pattern(bad)
    assert parse_pattern("2:4") == (2, 4) and parse_pattern("4:8") == (4, 8)


def test_lam_ramp_schedule_and_result(calib):
    from torchprox.llm.proxsparse import _lam_factor

    cfg = ProxSparseConfig(steps=10, lam_ramp=0.5)
    assert [_lam_factor(cfg, t) for t in (0, 4, 5, 9)] == [0.2, 1.0, 1.0, 1.0]
    assert _lam_factor(ProxSparseConfig(steps=10), 0) == 1.0
    model, w0 = tiny_llama(), snapshot(tiny_llama())
    learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=4, lam=0.5, lr=1e-2, lam_ramp=1.0), progress=False)
    for name, _ in target_linears(model):
        w = dict(model.named_modules())[name].weight
        assert is_nm(w, 2, 4, dim=1) and torch.equal(w[w != 0], w0[name + ".weight"][w != 0])
    with pytest.raises(ValueError, match="lam_ramp"):
        ProxSparseConfig(lam_ramp=1.5)


def test_reconstruct_keeps_the_learned_mask_and_moves_outputs_back_to_dense(calib):
    cfg = dict(steps=6, lam=0.5, lr=1e-2)
    mask_only, updated = tiny_llama(), tiny_llama()
    learn_masks(mask_only, calib, 2, 4, ProxSparseConfig(**cfg), progress=False)
    learn_masks(updated, calib, 2, 4, ProxSparseConfig(**cfg, reconstruct="obs"), progress=False)
    mods_a, mods_b = dict(mask_only.named_modules()), dict(updated.named_modules())
    changed = 0
    for name, _ in target_linears(mask_only):
        a, b = mods_a[name].weight, mods_b[name].weight
        assert is_nm(b, 2, 4, dim=1) and not ((a == 0) & (b != 0)).any()  # the learned mask, kept
        changed += int((a != b).any())
    assert changed == 14  # every target's kept weights were updated

    dense = tiny_llama()

    def distance_to_dense(model):  # the update compensates the pruning error: outputs move back to dense
        with torch.no_grad():
            return float((model(input_ids=calib).logits - dense(input_ids=calib).logits).norm())

    assert distance_to_dense(updated) < distance_to_dense(mask_only)
    with pytest.raises(ValueError, match="reconstruct"):
        ProxSparseConfig(reconstruct="sgd")
