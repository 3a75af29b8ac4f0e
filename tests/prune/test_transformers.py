"""Tiny transformers models built from a config (no download): Llama (nn.Linear) and GPT-2 (Conv1D)."""
from __future__ import annotations

import copy
import io

import pytest
import torch

from torchprox import ProxAdam
from torchprox.prune import (apply_learned_masks, is_nm, learnable_nm_model, prox_param_groups, remove_all,
                             sparsity_report)

from ._util import bits_equal

transformers = pytest.importorskip("transformers")

LLAMA_LINEARS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]


def _llama(seed=0):
    torch.manual_seed(seed)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                                   num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=64)
    return transformers.LlamaForCausalLM(cfg).eval()


def _w0s(model):
    return {n: b.clone() for n, b in model.named_buffers() if n.endswith(".w0")}


def _train(model, steps, seed=0):
    g = torch.Generator().manual_seed(seed)
    opt = ProxAdam(prox_param_groups(model, lam=0.05), lr=1e-2)
    for _ in range(steps):
        ids = torch.randint(0, 64, (2, 12), generator=g)
        model(input_ids=ids, labels=ids).loss.backward()
        opt.step()
        opt.zero_grad()
    return opt


def _save_load(obj):
    buf = io.BytesIO()
    torch.save(obj, buf)
    buf.seek(0)
    return torch.load(buf, weights_only=True)


def test_llama_learn_save_mask_remove(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    ids = torch.randint(0, 64, (2, 10), generator=torch.Generator().manual_seed(5))
    model = _llama()
    names = learnable_nm_model(model)
    assert len(names) == 14 and {n.rsplit(".", 1)[-1] for n in names} == set(LLAMA_LINEARS)
    assert all("lm_head" not in n and "embed" not in n for n in names)
    w0 = _w0s(model)
    assert len(w0) == 14

    # casting the model (a deepcopy: the cast also rounds rotary buffers) leaves every W0 bit exact
    cast = copy.deepcopy(model).to(torch.bfloat16)
    assert cast(input_ids=ids).logits.dtype == torch.bfloat16
    assert all(bits_equal(b, w0[n]) for n, b in _w0s(cast).items())
    assert all(bits_equal(b, w0[n]) for n, b in _w0s(cast.float()).items())

    opt = _train(model, steps=3)
    assert all(bits_equal(b, w0[n]) for n, b in _w0s(model).items())

    # mid-learning checkpoint into a freshly prepared model
    sd = _save_load(model.state_dict())
    other = _llama(seed=1)
    learnable_nm_model(other)
    other.load_state_dict(sd)
    with torch.no_grad():
        assert torch.equal(other(input_ids=ids).logits, model(input_ids=ids).logits)

    masks = apply_learned_masks(model, optimizer=opt)
    assert len(masks) == 14
    for qualname, mask in masks.items():
        mod = model.get_submodule(qualname.rsplit(".", 1)[0])
        assert mod.parametrizations.weight.original not in opt.state  # Adam moments of W released
        kept = mod.weight
        assert is_nm(kept, 2, 4, dim=1)
        assert bits_equal(kept, torch.where(mask, w0[qualname.replace(".weight", ".parametrizations.weight.0.w0")],
                                            torch.zeros_like(kept)))
    report = [r for r in sparsity_report(model) if r["state"] == "masked"]
    assert len(report) == 14 and all(r["is_nm"] and r["sparsity"] == 0.5 for r in report)

    # masked checkpoint into a learning-state model, deepcopy, remove, save_pretrained/from_pretrained
    with torch.no_grad():
        y = model(input_ids=ids).logits
    other.load_state_dict(_save_load(model.state_dict()))
    dup = copy.deepcopy(model)
    with torch.no_grad():
        assert torch.equal(other(input_ids=ids).logits, y) and torch.equal(dup(input_ids=ids).logits, y)
    assert len(remove_all(model)) == 14
    with torch.no_grad():
        assert torch.equal(model(input_ids=ids).logits, y)
    model.save_pretrained(tmp_path)
    loaded = transformers.LlamaForCausalLM.from_pretrained(tmp_path).eval()
    with torch.no_grad():
        assert torch.equal(loaded(input_ids=ids).logits, y)
    assert all(is_nm(loaded.get_submodule(q.rsplit(".", 1)[0]).weight, 2, 4, 1) for q in masks)


def test_gpt2_conv1d_groups_along_dim_0():
    torch.manual_seed(0)
    cfg = transformers.GPT2Config(vocab_size=64, n_positions=32, n_embd=32, n_layer=1, n_head=4)
    model = transformers.GPT2LMHeadModel(cfg).eval()
    names = learnable_nm_model(model)
    assert sorted(n.rsplit(".", 1)[-1] for n in names) == ["c_attn", "c_fc", "c_proj", "c_proj"]
    groups = prox_param_groups(model, lam=0.05)
    assert [g["prox_kwargs"]["dim"] for g in groups if g["prox"]] == [0]
    w0 = _w0s(model)
    _train(model, steps=2)
    assert all(bits_equal(b, w0[n]) for n, b in _w0s(model).items())
    masks = apply_learned_masks(model)
    for qualname, mask in masks.items():
        weight = model.get_submodule(qualname.rsplit(".", 1)[0]).weight  # (in, out)
        assert is_nm(weight, 2, 4, dim=0)
        assert torch.equal((mask.movedim(0, -1).reshape(-1, 4)).sum(-1), torch.full((weight.numel() // 4,), 2))


# -- tied weights are refused before anything changes (issue 21, item 10) -----------------------------------
@pytest.mark.parametrize("method", ["learnable_nm", "nm_structured"])
def test_tied_lm_head_is_refused_naming_both_modules(method):
    from torchprox import prune

    torch.manual_seed(0)
    cfg = transformers.LlamaConfig(vocab_size=64, hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                                   num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True)
    model = transformers.LlamaForCausalLM(cfg).eval()
    emb, head = model.model.embed_tokens, model.lm_head
    assert head.weight is emb.weight
    before = emb.weight.detach().clone()
    with pytest.raises(ValueError) as err:
        getattr(prune, method)(head)
    msg = str(err.value)
    assert "'lm_head'" in msg and "Embedding 'model.embed_tokens'" in msg and "tie_word_embeddings" in msg
    assert type(head) is torch.nn.Linear and not prune.is_pruned(head) and head.weight is emb.weight
    assert bits_equal(emb.weight, before)
    # untied as the message says, it works and leaves the embedding dense
    model.config.tie_word_embeddings = False
    head.weight = torch.nn.Parameter(head.weight.detach().clone())
    getattr(prune, method)(head)
    assert bits_equal(emb.weight, before)
