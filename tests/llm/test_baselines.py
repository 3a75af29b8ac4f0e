"""One-shot baselines (magnitude, Wanda, SparseGPT) and the decoder-block plumbing, on tiny models."""
import copy
import re

import pytest
import torch
from torch import nn

transformers = pytest.importorskip("transformers")
from transformers import GPT2Config, GPT2LMHeadModel, LlamaConfig, LlamaForCausalLM  # noqa: E402

from torchprox.llm import baselines  # noqa: E402
from torchprox.llm.baselines import (  # noqa: E402
    magnitude_prune, nm_fraction, sparsegpt_prune, sparsegpt_solve, wanda_prune, wanda_scores,
)
from torchprox.llm.blocks import (  # noqa: E402
    capture_block_inputs, decoder_layers, run_blocks_sequentially, target_linears,
)
from torchprox.prox import nm_mask  # noqa: E402

N, M = 2, 4
LLAMA_LINEARS = ["self_attn.q_proj", "self_attn.k_proj", "self_attn.v_proj", "self_attn.o_proj",
                 "mlp.gate_proj", "mlp.up_proj", "mlp.down_proj"]


def tiny_llama(seed=0, **overrides):
    torch.manual_seed(seed)
    kw = dict(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, bos_token_id=0, eos_token_id=1, pad_token_id=None)
    kw.update(overrides)
    return LlamaForCausalLM(LlamaConfig(**kw)).eval()


def tiny_gpt2(seed=0):
    torch.manual_seed(seed)
    cfg = GPT2Config(vocab_size=64, n_embd=32, n_layer=2, n_head=4, n_positions=32, bos_token_id=0,
                     eos_token_id=1)
    return GPT2LMHeadModel(cfg).eval()


@pytest.fixture
def llama():
    return tiny_llama()


@pytest.fixture
def calib():
    g = torch.Generator().manual_seed(1)
    return torch.randint(0, 64, (8, 16), generator=g)


def state(model):
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def hooks_of(model):
    return {name: (tuple(mod._forward_hooks), tuple(mod._forward_pre_hooks)) for name, mod in model.named_modules()
            if mod._forward_hooks or mod._forward_pre_hooks}


def no_hooks(model, before=None):
    """No hook left behind (``before``: hooks that were there already, e.g. transformers' own
    output-capturing hooks, installed for good by the first ``output_hidden_states=True`` forward)."""
    return hooks_of(model) == (before or {})


def is_exact_nm(w, dim):
    return nm_fraction(w, N, M, dim) == 1.0


def dense_linear_inputs(model, calib, names):
    """Inputs (tokens × in) of the named linear layers in a plain forward of ``model``."""
    mods = dict(model.named_modules())
    got, handles = {}, []
    for name in names:
        handles.append(mods[name].register_forward_hook(
            lambda mod, inp, out, name=name: got.setdefault(name, []).append(inp[0].reshape(-1, inp[0].shape[-1]))))
    try:
        with torch.no_grad():
            model(input_ids=calib, use_cache=False)
    finally:
        for h in handles:
            h.remove()
    return {k: torch.cat(v, 0) for k, v in got.items()}


# ------------------------------------------------------------------------------------------- plumbing


def test_decoder_layers(llama):
    assert decoder_layers(llama) is llama.model.layers
    gpt2 = tiny_gpt2()
    assert decoder_layers(gpt2) is gpt2.transformer.h
    with pytest.raises(TypeError, match="decoder blocks"):
        decoder_layers(nn.Sequential(nn.Linear(4, 4)))


def test_target_linears_default_and_filters(llama):
    names = [n for n, _ in target_linears(llama)]
    assert names == [f"model.layers.{i}.{s}" for i in range(2) for s in LLAMA_LINEARS]
    assert all(isinstance(mod, nn.Linear) for _, mod in target_linears(llama))
    assert [n for n, _ in target_linears(llama, "all-linear")] == names
    # names / suffixes
    sel = [n for n, _ in target_linears(llama, ["q_proj", "mlp.down_proj"])]
    assert sel == ["model.layers.0.self_attn.q_proj", "model.layers.0.mlp.down_proj",
                   "model.layers.1.self_attn.q_proj", "model.layers.1.mlp.down_proj"]
    # a full qualified name
    assert [n for n, _ in target_linears(llama, ["model.layers.1.mlp.up_proj"])] == ["model.layers.1.mlp.up_proj"]
    # regex: full match of the qualified name; non-linear matches (attention, norms) are skipped
    sel = [n for n, _ in target_linears(llama, r"model\.layers\.1\..*")]
    assert sel == [f"model.layers.1.{s}" for s in LLAMA_LINEARS]
    sel = [n for n, _ in target_linears(llama, r".*_proj")]
    assert sel == names
    with pytest.raises(ValueError, match="selects no linear layer"):
        target_linears(llama, r"q_proj")
    with pytest.raises(ValueError, match="selects no linear layer"):
        target_linears(llama, ["lm_head"])
    with pytest.raises(ValueError, match="selects no linear layer"):
        target_linears(llama, ["embed_tokens"])


def test_target_not_divisible_is_a_clear_error():
    model = tiny_llama(intermediate_size=66)
    with pytest.raises(ValueError, match=r"down_proj.*not a multiple of 4"):
        magnitude_prune(model)
    # excluding it works
    rep = magnitude_prune(model, targets=["q_proj", "k_proj", "v_proj", "o_proj"])
    assert set(rep.values()) == {1.0}


def test_capture_matches_model_forward(llama, calib):
    with torch.no_grad():
        ref = llama(input_ids=calib, output_hidden_states=True, use_cache=False).hidden_states
    hooks0 = hooks_of(llama)
    inputs = capture_block_inputs(llama, calib, batch_size=3)
    assert [h.shape[0] for h in inputs.hidden] == [3, 3, 2]
    torch.testing.assert_close(torch.cat(inputs.hidden), ref[0], rtol=0, atol=0)
    for kw in inputs.kwargs:
        assert not {"cache", "past_key_values", "past_key_value", "layer_past"} & kw.keys()
        assert kw.get("use_cache") is False
    # the propagated inputs of every block equal the model's own hidden states
    seen = {}

    def process(i, block, calibrate):
        h = block.register_forward_pre_hook(lambda mod, args: seen.setdefault(i, []).append(args[0]))
        try:
            calibrate()
        finally:
            h.remove()

    run_blocks_sequentially(llama, calib, process, batch_size=3)
    for i in range(2):
        torch.testing.assert_close(torch.cat(seen[i]), ref[i], rtol=1e-5, atol=1e-6)
    assert no_hooks(llama, hooks0)


def test_capture_gpt2_matches_model_forward(calib):
    gpt2 = tiny_gpt2()
    with torch.no_grad():
        ref = gpt2(input_ids=calib, output_hidden_states=True, use_cache=False).hidden_states
    inputs = capture_block_inputs(gpt2, calib, batch_size=8)
    torch.testing.assert_close(inputs.hidden[0], ref[0], rtol=0, atol=0)
    assert "cache" not in inputs.kwargs[0] and inputs.kwargs[0]["use_cache"] is False
    inputs.run(gpt2.transformer.h[0], update=True)
    torch.testing.assert_close(inputs.hidden[0], ref[1], rtol=1e-5, atol=1e-6)


def test_capture_does_not_use_a_cache_even_if_config_says_so(llama, calib):
    llama.config.use_cache = True
    a = capture_block_inputs(llama, calib)
    run = []

    def process(i, block, calibrate):
        calibrate()
        calibrate()  # a shared cache would make the second call see 2× the keys
        run.append(i)

    run_blocks_sequentially(llama, calib, process)
    b = capture_block_inputs(llama, calib)
    torch.testing.assert_close(a.hidden[0], b.hidden[0], rtol=0, atol=0)
    assert run == [0, 1]


def test_calib_formats(llama, calib):
    a = capture_block_inputs(llama, calib, batch_size=8)
    b = capture_block_inputs(llama, list(calib), batch_size=8)
    torch.testing.assert_close(a.hidden[0], b.hidden[0], rtol=0, atol=0)
    with pytest.raises(TypeError, match="token ids"):
        capture_block_inputs(llama, calib.float())
    with pytest.raises(ValueError, match="one length"):
        capture_block_inputs(llama, [calib[0], calib[1, :8]])


# ------------------------------------------------------------------------------------------- magnitude


def test_magnitude_exact_nm_mask_only(llama):
    before = state(llama)
    rep = magnitude_prune(llama)
    names = [n for n, _ in target_linears(llama)]
    assert list(rep) == names and set(rep.values()) == {1.0}
    after = state(llama)
    for key, w0 in before.items():
        mod_name = key.rsplit(".", 1)[0]
        if mod_name in names and key.endswith(".weight"):
            w = after[key]
            assert is_exact_nm(w, 1)
            keep = nm_mask(w0.abs(), N, M, dim=1)
            assert torch.equal(w, w0 * keep)
            assert torch.equal(w[keep], w0[keep])  # kept values bit-exact
            assert (w[~keep] == 0).all()
        else:
            assert torch.equal(after[key], w0), key  # embeddings, lm_head, norms untouched
    assert no_hooks(llama)


def test_magnitude_ties_lower_index_wins():
    model = tiny_llama()
    q = model.model.layers[0].self_attn.q_proj
    with torch.no_grad():
        q.weight.fill_(0.5)
    magnitude_prune(model, targets=["model.layers.0.self_attn.q_proj"])
    assert torch.equal(q.weight[:, :4], torch.tensor([0.5, 0.5, 0.0, 0.0]).expand(q.weight.shape[0], 4))


def test_other_patterns(llama, calib):
    for fn in (magnitude_prune, wanda_prune, sparsegpt_prune):
        model = copy.deepcopy(llama)
        args = (model,) if fn is magnitude_prune else (model, calib)
        fn(*args, n=1, m=4)
        for _, mod in target_linears(model):
            assert nm_fraction(mod.weight, 1, 4, 1) == 1.0
            assert ((mod.weight != 0).reshape(-1, 4).sum(-1) <= 1).all()
    with pytest.raises(ValueError):
        magnitude_prune(llama, n=4, m=4)
    with pytest.raises(ValueError, match="blocksize"):
        sparsegpt_prune(llama, calib, blocksize=6)


# ------------------------------------------------------------------------------------------- wanda


def hand_wanda(model, calib):
    """Sequential Wanda written out: for each block, the dense inputs of its linears through the already
    pruned earlier blocks (a full model forward), |W|·‖X_j‖, top-2 of 4."""
    layers = decoder_layers(model)
    for i in range(len(layers)):
        names = [f"model.layers.{i}.{s}" for s in LLAMA_LINEARS]
        xs = dense_linear_inputs(model, calib, names)
        mods = dict(model.named_modules())
        for name in names:
            w = mods[name].weight
            score = w.detach().abs() * torch.linalg.vector_norm(xs[name].double(), dim=0).float()
            with torch.no_grad():
                w.mul_(nm_mask(score, N, M, dim=1))


def test_wanda_equals_hand_computed_sequential(llama, calib):
    ref = copy.deepcopy(llama)
    hand_wanda(ref, calib)
    before = state(llama)
    rep = wanda_prune(llama, calib, batch_size=3)
    assert set(rep.values()) == {1.0}
    for (name, mod), (_, rmod) in zip(target_linears(llama), target_linears(ref)):
        assert torch.equal(mod.weight != 0, rmod.weight != 0), name
        w0 = before[name + ".weight"]
        keep = mod.weight != 0
        assert torch.equal(mod.weight[keep], w0[keep])  # mask only: kept values bit-exact
    assert no_hooks(llama)


def test_wanda_differs_from_magnitude_only_through_activations(llama, calib):
    # the first block's masks come from the dense model's activations: check one layer against the formula
    x = dense_linear_inputs(llama, calib, ["model.layers.0.mlp.down_proj"])["model.layers.0.mlp.down_proj"]
    w0 = llama.model.layers[0].mlp.down_proj.weight.detach().clone()
    scores = wanda_scores(w0, x.float().square().sum(0), dim=1)
    torch.testing.assert_close(scores, w0.abs() * x.norm(dim=0))
    wanda_prune(llama, calib)
    assert torch.equal(llama.model.layers[0].mlp.down_proj.weight, w0 * nm_mask(scores, N, M, dim=1))


def test_wanda_single_linear_layer_model():
    """A one-block model whose block is one linear layer: Wanda is |W|·‖X_j‖ on the embeddings."""

    class Block(nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = nn.Linear(8, 8, bias=False)

        def forward(self, hidden_states, attention_mask=None, use_cache=False, cache=None):
            assert cache is None and use_cache is False
            return self.proj(hidden_states)

    class Inner(nn.Module):
        def __init__(self):
            super().__init__()
            self.embed_tokens = nn.Embedding(16, 8)
            self.layers = nn.ModuleList([Block()])

        def forward(self, input_ids, use_cache=None, cache="sentinel"):
            h = self.embed_tokens(input_ids)
            for layer in self.layers:
                h = layer(h, attention_mask=None, use_cache=True, cache=cache)
            return h

    class LM(nn.Module):
        def __init__(self):
            super().__init__()
            self.model = Inner()
            self.lm_head = nn.Linear(8, 16, bias=False)

        def get_input_embeddings(self):
            return self.model.embed_tokens

        def forward(self, input_ids, use_cache=None):
            return self.lm_head(self.model(input_ids))

    torch.manual_seed(0)
    lm = LM()
    ids = torch.randint(0, 16, (5, 7))
    x = lm.model.embed_tokens.weight[ids].reshape(-1, 8).detach()
    w0 = lm.model.layers[0].proj.weight.detach().clone()
    expected = w0 * nm_mask(w0.abs() * x.norm(dim=0), N, M, dim=1)
    assert [n for n, _ in target_linears(lm)] == ["model.layers.0.proj"]
    wanda_prune(lm, ids, batch_size=2)
    assert torch.equal(lm.model.layers[0].proj.weight, expected)
    assert no_hooks(lm)


# ------------------------------------------------------------------------------------------- sparsegpt


def reference_fasterprune(W, H, prunen, prunem, blocksize=128, percdamp=0.01):
    """The N:M path of IST-DASLab/sparsegpt's SparseGPT.fasterprune, written out for comparison."""
    W = W.clone().float()
    H = H.clone()
    columns = W.shape[1]
    dead = torch.diag(H) == 0
    H[dead, dead] = 1
    W[:, dead] = 0
    damp = percdamp * torch.mean(torch.diag(H))
    diag = torch.arange(columns)
    H[diag, diag] += damp
    H = torch.linalg.cholesky(H)
    H = torch.cholesky_inverse(H)
    Hinv = torch.linalg.cholesky(H, upper=True)
    for i1 in range(0, columns, blocksize):
        i2 = min(i1 + blocksize, columns)
        count = i2 - i1
        W1 = W[:, i1:i2].clone()
        Q1 = torch.zeros_like(W1)
        Err1 = torch.zeros_like(W1)
        Hinv1 = Hinv[i1:i2, i1:i2]
        mask1 = torch.zeros_like(W1) == 1
        for i in range(count):
            w = W1[:, i]
            d = Hinv1[i, i]
            if i % prunem == 0:
                tmp = W1[:, i:(i + prunem)] ** 2 / (torch.diag(Hinv1)[i:(i + prunem)].reshape((1, -1))) ** 2
                mask1.scatter_(1, i + torch.topk(tmp, prunen, dim=1, largest=False)[1], True)
            q = w.clone()
            q[mask1[:, i]] = 0
            Q1[:, i] = q
            err1 = (w - q) / d
            W1[:, i:] -= err1.unsqueeze(1).matmul(Hinv1[i, i:].unsqueeze(0))
            Err1[:, i] = err1
        W[:, i1:i2] = Q1
        W[:, i2:] -= Err1.matmul(Hinv[i1:i2, i2:])
    return W


@pytest.mark.parametrize("blocksize", [8, 128])
def test_sparsegpt_solve_matches_reference(blocksize):
    g = torch.Generator().manual_seed(0)
    W = torch.randn(24, 48, generator=g)
    X = torch.randn(48, 300, generator=g) * torch.linspace(0.1, 3, 48).unsqueeze(1)
    X[5] = 0  # a dead input
    H = 2 * X @ X.t() / 300
    H0 = H.clone()
    new, losses = sparsegpt_solve(W, H, N, M, blocksize=blocksize)
    assert torch.equal(H, H0)  # input not modified
    ref = reference_fasterprune(W, H, M - N, M, blocksize=blocksize)  # reference: prunen = number pruned
    torch.testing.assert_close(new, ref, rtol=1e-5, atol=1e-5)
    assert is_exact_nm(new, 1) and (new[:, 5] == 0).all()
    assert losses.shape == (24,) and (losses >= 0).all()


def test_sparsegpt_solve_handles_singular_hessian():
    W = torch.randn(8, 16)
    X = torch.randn(16, 3)  # rank 3 < 16
    new, _ = sparsegpt_solve(W, X @ X.t(), N, M, percdamp=0.0)
    assert torch.isfinite(new).all() and is_exact_nm(new, 1)


def recon_errors(model, x_by_name, dense_weights):
    mods = dict(model.named_modules())
    return {name: (x @ (dense_weights[name] - mods[name].weight.detach()).t()).norm().item()
            for name, x in x_by_name.items()}


def test_sparsegpt_beats_magnitude_and_wanda_on_reconstruction(llama, calib):
    names0 = [f"model.layers.0.{s}" for s in LLAMA_LINEARS]
    x = dense_linear_inputs(llama, calib, names0)  # block 0 sees these inputs under every method
    dense = {name: dict(llama.named_modules())[name].weight.detach().clone() for name in names0}
    errs = {}
    for fn in (magnitude_prune, wanda_prune, sparsegpt_prune):
        model = copy.deepcopy(llama)
        rep = fn(model) if fn is magnitude_prune else fn(model, calib)
        assert set(rep.values()) == {1.0}
        errs[fn.__name__] = recon_errors(model, x, dense)
    for name in names0:
        assert errs["sparsegpt_prune"][name] < errs["wanda_prune"][name], name
        assert errs["sparsegpt_prune"][name] < errs["magnitude_prune"][name], name
    assert sum(errs["wanda_prune"].values()) < sum(errs["magnitude_prune"].values())


def test_sparsegpt_exact_nm_and_untouched_non_targets(llama, calib):
    before = state(llama)
    rep = sparsegpt_prune(llama, calib, blocksize=16, batch_size=5)
    names = [n for n, _ in target_linears(llama)]
    assert list(rep) == names and set(rep.values()) == {1.0}
    after = state(llama)
    changed = set()
    for key, w0 in before.items():
        if key.rsplit(".", 1)[0] in names and key.endswith(".weight"):
            assert is_exact_nm(after[key], 1)
            keep = after[key] != 0
            if not torch.equal(after[key][keep], w0[keep]):
                changed.add(key)  # SparseGPT updates the kept weights
        else:
            assert torch.equal(after[key], w0), key
    assert changed
    assert no_hooks(llama)


def test_sparsegpt_hessian_dtype_float64(llama, calib):
    a, b = copy.deepcopy(llama), copy.deepcopy(llama)
    sparsegpt_prune(a, calib)
    sparsegpt_prune(b, calib, hessian_dtype=torch.float64)
    for (name, ma), (_, mb) in zip(target_linears(a), target_linears(b)):
        assert is_exact_nm(mb.weight, 1)
        torch.testing.assert_close(ma.weight, mb.weight, rtol=1e-3, atol=1e-3)


# ------------------------------------------------------------------------------------------- targets, hooks, determinism


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_targets_filtering(llama, calib, method):
    fn = {"magnitude": magnitude_prune, "wanda": wanda_prune, "sparsegpt": sparsegpt_prune}[method]
    targets = ["q_proj", "down_proj"]
    before = state(llama)
    rep = fn(llama, targets=targets) if method == "magnitude" else fn(llama, calib, targets=targets)
    assert sorted(rep) == sorted(f"model.layers.{i}.{s}" for i in range(2)
                                 for s in ("self_attn.q_proj", "mlp.down_proj"))
    after = state(llama)
    for key, w0 in before.items():
        if key.rsplit(".", 1)[0] in rep:
            assert is_exact_nm(after[key], 1) and not torch.equal(after[key], w0)
        else:
            assert torch.equal(after[key], w0), key


@pytest.mark.parametrize("method", ["wanda", "sparsegpt"])
def test_only_later_block_targeted(llama, calib, method):
    fn = wanda_prune if method == "wanda" else sparsegpt_prune
    ref = copy.deepcopy(llama)
    rep = fn(llama, calib, targets=r"model\.layers\.1\..*")
    assert all(re.fullmatch(r"model\.layers\.1\..*", k) for k in rep)
    for p, q in zip(llama.model.layers[0].parameters(), ref.model.layers[0].parameters()):
        assert torch.equal(p, q)
    # block 1 saw the dense block 0's outputs: the same as targeting block 1's layers by name
    solo = copy.deepcopy(ref)
    fn(solo, calib, targets=[f"model.layers.1.{s}" for s in LLAMA_LINEARS])
    for p, q in zip(llama.model.layers[1].parameters(), solo.model.layers[1].parameters()):
        assert torch.equal(p, q)
    # whereas pruning block 0 too changes block 1's statistics, hence (in general) its result
    full = copy.deepcopy(ref)
    fn(full, calib)
    assert any(not torch.equal(p, q) for p, q in zip(full.model.layers[1].parameters(),
                                                     solo.model.layers[1].parameters()))


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_calling_twice_is_deterministic(llama, calib, method):
    fn = {"magnitude": magnitude_prune, "wanda": wanda_prune, "sparsegpt": sparsegpt_prune}[method]
    a, b = copy.deepcopy(llama), copy.deepcopy(llama)
    args = () if method == "magnitude" else (calib,)
    fn(a, *args)
    # a warm-up call on b's own modules (hooks, caches) must leave no state that changes the second run
    if method != "magnitude":
        capture_block_inputs(b, calib)
    b.config.use_cache = True
    fn(b, *args)
    for (name, ma), (_, mb) in zip(target_linears(a), target_linears(b)):
        assert torch.equal(ma.weight, mb.weight), name
    # and pruning an already-pruned model with magnitude / wanda changes nothing
    if method != "sparsegpt":
        snap = state(a)
        fn(a, *args)
        assert all(torch.equal(v, state(a)[k]) for k, v in snap.items())


def test_no_hooks_left_after_an_error(llama, calib, monkeypatch):
    def boom(*a, **k):
        raise RuntimeError("boom")

    monkeypatch.setattr(baselines, "sparsegpt_solve", boom)
    llama.train()
    with pytest.raises(RuntimeError, match="boom"):
        sparsegpt_prune(llama, calib)
    assert no_hooks(llama)
    assert llama.training  # the train/eval mode is restored
    with pytest.raises(IndexError):
        wanda_prune(llama, calib + 1000)  # fails inside the embedding, during the capture
    assert no_hooks(llama)


def test_eval_mode_during_calibration_and_progress(calib):
    """Dropout is off during calibration (train mode restored after), and progress bars work."""
    gpt2 = tiny_gpt2()
    gpt2.config.resid_pdrop = gpt2.config.attn_pdrop = 0.5
    a = copy.deepcopy(gpt2).train()
    b = copy.deepcopy(gpt2).eval()
    wanda_prune(a, calib, progress=True)
    wanda_prune(b, calib)
    assert a.training and not b.training
    for (_, ma), (_, mb) in zip(target_linears(a), target_linears(b)):
        assert torch.equal(ma.weight, mb.weight)


# ------------------------------------------------------------------------------------------- GPT-2 Conv1D


@pytest.mark.parametrize("method", ["magnitude", "wanda", "sparsegpt"])
def test_gpt2_conv1d_groups_along_dim0(calib, method):
    gpt2 = tiny_gpt2()
    fn = {"magnitude": magnitude_prune, "wanda": wanda_prune, "sparsegpt": sparsegpt_prune}[method]
    before = state(gpt2)
    rep = fn(gpt2) if method == "magnitude" else fn(gpt2, calib)
    sel = target_linears(gpt2)
    assert [n for n, _ in sel] == [f"transformer.h.{i}.{s}" for i in range(2)
                                   for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    assert list(rep) == [n for n, _ in sel] and set(rep.values()) == {1.0}
    for name, mod in sel:
        assert type(mod).__name__ == "Conv1D"
        assert is_exact_nm(mod.weight, 0)  # groups along the input dim (dim 0 of a Conv1D weight)
        if method == "magnitude":
            w0 = before[name + ".weight"]
            assert torch.equal(mod.weight, w0 * nm_mask(w0.abs(), N, M, dim=0))
    for key in ("transformer.wte.weight", "transformer.wpe.weight", "lm_head.weight"):
        assert torch.equal(gpt2.state_dict()[key], before[key])
    assert no_hooks(gpt2)


def test_gpt2_sparsegpt_beats_magnitude(calib):
    gpt2 = tiny_gpt2()
    names0 = [f"transformer.h.0.{s}" for s in ("attn.c_attn", "attn.c_proj", "mlp.c_fc", "mlp.c_proj")]
    x = dense_linear_inputs(gpt2, calib, names0)
    mods = dict(gpt2.named_modules())
    dense = {n: mods[n].weight.detach().clone() for n in names0}
    errs = {}
    for fn in (magnitude_prune, sparsegpt_prune):
        model = copy.deepcopy(gpt2)
        fn(model) if fn is magnitude_prune else fn(model, calib)
        mm = dict(model.named_modules())
        errs[fn.__name__] = {n: (x[n] @ (dense[n] - mm[n].weight.detach())).norm().item() for n in names0}
    for n in names0:
        assert errs["sparsegpt_prune"][n] < errs["magnitude_prune"][n], n


def test_bfloat16_model(llama, calib):
    model = llama.to(torch.bfloat16)
    rep = sparsegpt_prune(model, calib)
    assert set(rep.values()) == {1.0}
    for _, mod in target_linears(model):
        assert mod.weight.dtype == torch.bfloat16 and is_exact_nm(mod.weight, 1)


# ------------------------------------------------------------------------------------------- real model (slow)


@pytest.mark.slow
def test_real_default_model_wanda_beats_magnitude():
    models = pytest.importorskip("torchprox.llm.models")
    data = pytest.importorskip("torchprox.llm.data")
    evaluate = pytest.importorskip("torchprox.llm.evaluate")
    try:
        model, tok = models.load_default_model()
    except (ImportError, FileNotFoundError) as exc:
        pytest.skip(f"default model unavailable: {exc}")
    calib = data.calibration_blocks(tok, "builtin", seqlen=256, n_blocks=8, seed=0)
    evalb = data.evaluation_blocks(tok, "builtin", seqlen=512, max_tokens=2048)
    dense = {k: v.clone() for k, v in model.state_dict().items()}
    ppl = {}
    for name, fn in (("magnitude", magnitude_prune), ("wanda", wanda_prune)):
        model.load_state_dict(dense)
        rep = fn(model) if name == "magnitude" else fn(model, calib)
        assert len(rep) == 210 and set(rep.values()) == {1.0}
        ppl[name] = evaluate.perplexity(model, evalb, disable=True)
    assert ppl["wanda"] < ppl["magnitude"] / 3, ppl


def test_sparsegpt_solve_with_a_given_mask_keeps_it_and_lowers_the_error():
    g = torch.Generator().manual_seed(1)
    W = torch.randn(16, 64, generator=g)
    # Correlated inputs (as in a network): what a pruned input carried, the kept ones can partly carry.
    X = torch.randn(64, 16, generator=g) @ torch.randn(16, 400, generator=g) + 0.1 * torch.randn(64, 400, generator=g)
    H = 2 * X @ X.t() / 400
    keep = nm_mask(torch.rand(16, 64, generator=g), N, M, dim=1)  # an arbitrary N:M mask, not SparseGPT's own
    new, _ = sparsegpt_solve(W, H, N, M, blocksize=16, mask=keep)
    assert (new[~keep] == 0).all() and is_exact_nm(new, 1)
    err_update = ((W - new) @ X).norm()
    err_mask_only = ((W - W * keep) @ X).norm()
    assert err_update < err_mask_only
    with pytest.raises(ValueError, match="mask must be a bool tensor"):
        sparsegpt_solve(W, H, N, M, mask=keep[:, :8])


def test_sparsegpt_prune_with_masks_needs_one_per_target(llama, calib):
    with pytest.raises(ValueError, match="masks has no entry"):
        sparsegpt_prune(copy.deepcopy(llama), calib, N, M, masks={})


def test_target_linears_uses_prunes_selector_and_skips_explicit_non_linear_matches(monkeypatch):
    """llm's target selection is torchprox.prune's select_modules (one selector), restricted to the linear layers
    inside the decoder blocks: an explicit match that is not linear (an attention module) is skipped."""
    from torchprox import prune
    from torchprox.llm import blocks

    model = LlamaForCausalLM(LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                         num_attention_heads=4, num_key_value_heads=2))
    calls = []
    real = prune.select_modules
    monkeypatch.setattr(blocks, "select_modules", lambda *a, **k: calls.append(a) or real(*a, **k))
    names = [name for name, _ in blocks.target_linears(model, ["self_attn", "q_proj"])]
    assert names == ["model.layers.0.self_attn.q_proj"] and len(calls) == 1
    with pytest.raises(ValueError, match="selects no linear layer"):
        blocks.target_linears(model, ["self_attn"])
    assert "lm_head" not in {name for name, _ in blocks.target_linears(model, r".*")}
