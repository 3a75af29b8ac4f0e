"""ProxSparse (learn_masks) on tiny Mixture-of-Experts models: fused expert tensors learn exact N:M masks along
their true input dim, per-expert activation scores, unrouted experts, resume."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from torch.nn.utils import parametrize  # noqa: E402

from torchprox.llm.experts import ExpertInputStats  # noqa: E402
from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks  # noqa: E402
from torchprox.llm.targets import target_tensors  # noqa: E402
from torchprox.prox import nm_mask  # noqa: E402
from torchprox.prune import is_nm  # noqa: E402

from .test_proxsparse import _record_last_weights  # noqa: E402  (the same spy)
from .tiny import MOE_ARCHS, tiny_moe  # noqa: E402

#: The input dim of the fused expert tensors: (E, out, in) for F.linear(x, W[e]), (E, in, out) for x @ W[e].
EXPERT_DIM = {arch: 1 if arch in ("gpt_oss", "llama4") else 2 for arch in MOE_ARCHS}


@pytest.fixture
def calib():
    return torch.randint(0, 64, (4, 16), generator=torch.Generator().manual_seed(0))


def snapshot(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_every_expert_tensor_learns_exact_nm_along_its_input_dim(arch, calib):
    model = tiny_moe(arch)
    before = snapshot(model)
    targets = target_tensors(model)
    experts = [t for t in targets if t.experts]
    assert experts and all(t.dim == EXPERT_DIM[arch] for t in experts)
    report = learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=2, lam=0.5, lr=1e-2), progress=False)
    assert report["targets"] == len(targets)
    assert not any(parametrize.is_parametrized(mod) for mod in model.modules())
    names = {t.tensor_name for t in targets}
    for t in targets:
        w, w0 = t.weight, before[t.tensor_name]
        assert type(w) is torch.nn.Parameter and w.shape == w0.shape
        assert is_nm(w, 2, 4, dim=t.dim), (t.key, t.dim)
        kept = w != 0
        assert torch.equal(w[kept], w0[kept]), t.key  # mask-only: kept values are W0's, bit for bit
    for key, w in model.state_dict().items():  # routers, norms, embeddings, biases: untouched
        if key not in names:
            assert torch.equal(w, before[key]), key


@pytest.mark.parametrize("arch", ["mixtral", "gpt_oss"])
def test_expert_masks_are_top_n_of_learned_w_times_per_expert_input_norms(arch, calib, monkeypatch):
    last = _record_last_weights(monkeypatch)
    dense = tiny_moe(arch)
    experts = [t for t in target_tensors(dense) if t.experts]
    with ExpertInputStats(experts, lambda x: x.square().sum(0)) as stats, torch.no_grad():
        for block in calib:
            dense(input_ids=block[None], use_cache=False)
    model = tiny_moe(arch)
    report = learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=3, lam=0.5, lr=1e-2), progress=False)
    assert report["unrouted_experts"] == {}  # every expert is reached by these blocks
    differs = 0
    for t in (t for t in target_tensors(model) if t.experts):
        learned = last[id(t.weight)]
        shape = [t.experts, 1, 1]
        shape[t.dim] = -1
        norms = stats.stats[t.key].sqrt().view(shape)  # (E, in) along dims 0 and t.dim
        assert torch.equal(t.weight != 0, nm_mask(learned.abs() * norms, 2, 4, dim=t.dim)), t.key
        differs += int(((t.weight != 0) != nm_mask(learned.abs(), 2, 4, dim=t.dim)).sum())
    assert differs > 0  # the per-expert norms changed the choice somewhere: the check above can tell


class _NeverExpert3:
    """A forward pre-hook on a Mixtral experts module that routes every token away from expert 3 (to the
    lowest expert that is not already its other choice): expert 3 then never sees a token."""

    def __call__(self, module, args, kwargs):
        hidden, index, weights = args
        other = index.flip(-1)
        spare = torch.where(other == 0, torch.ones_like(index), torch.zeros_like(index))
        return (hidden, torch.where(index == 3, spare, index), weights), kwargs


def _never_route_expert_3(model):
    for layer in model.model.layers:
        layer.mlp.experts.register_forward_pre_hook(_NeverExpert3(), with_kwargs=True)
    return model


def test_an_expert_never_routed_keeps_w0_with_the_adam_metric_and_gets_the_magnitude_mask(calib, monkeypatch):
    last = _record_last_weights(monkeypatch)
    model = _never_route_expert_3(tiny_moe("mixtral"))
    before = snapshot(model)
    report = learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=3, lam=0.5, lr=1e-2, warmup=0.0),
                         progress=False)
    experts = [t for t in target_tensors(model) if t.experts]
    assert len(experts) == 4
    assert report["unrouted_experts"] == {t.key: [3] for t in experts}
    for t in experts:
        learned, w0 = last[id(t.weight)], before[t.tensor_name]
        assert torch.equal(learned[3], w0[3]), t.key  # no gradient, v̂ = 0: neither Adam nor the prox moved it
        assert not torch.equal(learned[0], w0[0]), t.key  # a routed expert did move
        mask = nm_mask(w0[3].abs(), 2, 4, dim=t.dim - 1)
        assert torch.equal(t.weight[3] != 0, mask), t.key  # norms of 1: the top-n of |W0| alone
        assert torch.equal(t.weight[3], torch.where(mask, w0[3], 0.0))


def test_with_the_identity_metric_the_prox_moves_an_unrouted_expert(calib, monkeypatch):
    last = _record_last_weights(monkeypatch)
    model = _never_route_expert_3(tiny_moe("mixtral"))
    before = snapshot(model)
    learn_masks(model, calib, 2, 4, ProxSparseConfig(steps=3, lam=0.5, lr=1e-2, metric="identity"), progress=False)
    for t in (t for t in target_tensors(model) if t.experts):
        learned, w0 = last[id(t.weight)], before[t.tensor_name]
        assert not torch.equal(learned[3], w0[3]), t.key  # s = 1: the prox shrinks it without any gradient
        kept = t.weight != 0
        assert is_nm(t.weight, 2, 4, dim=t.dim) and torch.equal(t.weight[kept], w0[kept])


def test_resume_with_expert_tensors_equals_uninterrupted(tmp_path, calib):
    import torchprox.llm.proxsparse as ps

    cfg = ProxSparseConfig(steps=3, lam=0.5, lr=1e-2, checkpoint_every=1)
    full = tiny_moe("mixtral")
    learn_masks(full, calib, 2, 4, cfg, progress=False)

    class Stop(Exception):
        pass

    real_save, saves = ps._atomic_save, []

    def save_twice_then_stop(obj, path):  # a run killed right after its step-2 checkpoint
        real_save(obj, path)
        saves.append(obj["step"])
        if len(saves) == 2:
            raise Stop

    part = tiny_moe("mixtral")
    before = snapshot(part)
    ps._atomic_save = save_twice_then_stop
    try:
        with pytest.raises(Stop):
            learn_masks(part, calib, 2, 4, cfg, checkpoint_dir=tmp_path, progress=False)
    finally:
        ps._atomic_save = real_save
    assert saves == [1, 2]
    state = torch.load(tmp_path / "checkpoint.pt", weights_only=True)
    expert_keys = [t.key for t in target_tensors(tiny_moe("mixtral")) if t.experts]
    assert set(expert_keys) <= set(state["targets"])
    assert all(torch.equal(a, b) for a, b in zip(snapshot(part).values(), before.values()))  # restored on error
    resumed = tiny_moe("mixtral")
    learn_masks(resumed, calib, 2, 4, cfg, checkpoint_dir=tmp_path, resume=True, progress=False)
    for (k, a), b in zip(full.state_dict().items(), resumed.state_dict().values()):
        assert torch.equal(a, b), k


@pytest.mark.parametrize("reconstruct", ["obs", "finetune"])
def test_reconstruct_never_fails_after_learning_on_expert_tensors(reconstruct, calib):
    """Either the weight update handles the fused expert tensors (exact N:M), or learn_masks refuses them up
    front, with the model as it was: never an error after the learning (which left OBS's targets dense)."""
    model = tiny_moe("mixtral")
    before = snapshot(model)
    cfg = ProxSparseConfig(steps=2, lam=0.5, lr=1e-2, reconstruct=reconstruct, reconstruct_steps=2,
                           reconstruct_blocks=2)
    try:
        learn_masks(model, calib, 2, 4, cfg, progress=False)
    except ValueError as err:
        assert f"reconstruct={reconstruct!r} cannot update" in str(err) and "experts.gate_up_proj" in str(err)
        assert all(torch.equal(a, b) for a, b in zip(snapshot(model).values(), before.values()))
        assert not any(parametrize.is_parametrized(mod) for mod in model.modules())
        return
    assert all(is_nm(t.weight, 2, 4, dim=t.dim) for t in target_tensors(model))
