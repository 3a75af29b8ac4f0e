"""Hypothesis: shapes, n:m patterns and tie-heavy weights (small integer grids) for masks and one-shot pruning."""
from __future__ import annotations

import io

import torch
from hypothesis import given
from hypothesis import strategies as st
from torch import nn
from torch.nn.utils import prune

from torchprox.prune import apply_learned_masks, is_nm, learnable_nm, nm_structured, remove

from ._util import bits_equal, hf_conv1d, nonzeros_per_group, reference_mask

patterns = st.integers(2, 8).flatmap(lambda m: st.tuples(st.integers(1, m - 1), st.just(m)))


@st.composite
def layers(draw):
    """(layer, input, dim, n, m) for a random layer type and shape whose grouped dim is g·m."""
    n, m = draw(patterns)
    groups, out = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    kind = draw(st.sampled_from(["linear", "hf_conv1d", "conv2d"]))
    cin = groups * m
    if kind == "linear":
        return nn.Linear(cin, out), torch.randn(2, cin), 1, n, m
    if kind == "hf_conv1d":
        return hf_conv1d(cin, out), torch.randn(2, cin), 0, n, m
    k = draw(st.tuples(st.integers(1, 2), st.integers(1, 2)))
    return nn.Conv2d(cin, out, k), torch.randn(1, cin, 3, 3), 1, n, m


def grid(draw, shape, lo, hi, scale):
    """A tensor of shape with values lo..hi times scale: many ties and exact zeros (including -0.0)."""
    numel = 1
    for s in shape:
        numel *= s
    values = draw(st.lists(st.integers(lo, hi), min_size=numel, max_size=numel))
    t = torch.tensor(values, dtype=torch.float32).reshape(shape) * scale
    if draw(st.booleans()):
        t = torch.where(t == 0, torch.tensor(-0.0), t)
    return t


@given(data=st.data())
def test_learned_mask_is_reference_topn_and_keeps_w0_bits(data):
    layer, x, dim, n, m = data.draw(layers())
    shape = tuple(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(grid(data.draw, shape, -3, 3, 0.75))  # W0: ties and zeros too
    learnable_nm(layer, n=n, m=m)
    w0 = layer.parametrizations.weight[0].w0.clone()
    w = grid(data.draw, shape, -2, 2, 0.5)  # the "learned" W: heavy ties
    with torch.no_grad():
        layer.parametrizations.weight.original.copy_(w)
    mask = apply_learned_masks(layer)["weight"]
    assert torch.equal(mask, reference_mask(w.abs(), n, m, dim))
    counts = nonzeros_per_group(mask, m, dim)
    assert torch.equal(counts, torch.full_like(counts, n))
    expected = torch.where(mask, w0, torch.zeros_like(w0))
    assert bits_equal(layer.weight, expected) and is_nm(layer.weight, n, m, dim)
    # state_dict round trip after masking, then remove: same forward
    buf = io.BytesIO()
    torch.save(layer.state_dict(), buf)
    y = layer(x)
    remove(layer)
    assert torch.equal(layer(x), y) and bits_equal(layer.weight, expected)
    buf.seek(0)
    assert torch.equal(torch.load(buf, weights_only=True)["parametrizations.weight.0.mask"], mask)


@given(data=st.data())
def test_nm_structured_on_ties_with_a_prior_mask(data):
    layer, x, dim, n, m = data.draw(layers())
    shape = tuple(layer.weight.shape)
    with torch.no_grad():
        layer.weight.copy_(grid(data.draw, shape, -2, 2, 1.0))
    w = layer.weight.detach().clone()
    prior = None
    if data.draw(st.booleans()):
        prior = grid(data.draw, shape, 0, 1, 1.0).abs()
        prune.custom_from_mask(layer, "weight", mask=prior)
    scores = grid(data.draw, shape, -2, 2, 1.0) if data.draw(st.booleans()) else None
    nm_structured(layer, n=n, m=m, importance_scores=scores)
    s = (w if scores is None else scores).abs()
    if prior is not None:
        s = s.masked_fill(prior == 0, -1.0)
    expected = reference_mask(s, n, m, dim)
    if prior is not None:
        expected &= prior.bool()
    assert torch.equal(layer.weight_mask.bool(), expected)
    assert is_nm(layer.weight, n, m, dim)
    y = layer(x)
    prune.remove(layer, "weight")
    assert torch.equal(layer(x), y)


@given(data=st.data())
def test_is_nm_matches_a_count(data):
    n, m = data.draw(patterns)
    rows, groups = data.draw(st.integers(1, 4)), data.draw(st.integers(1, 3))
    t = grid(data.draw, (rows, groups * m), -1, 1, 1.0)
    expected = all(sum(v != 0 for v in t[r, g * m:(g + 1) * m].tolist()) <= n
                   for r in range(rows) for g in range(groups))
    assert is_nm(t, n, m, dim=1) == expected
    assert is_nm(t.T.contiguous(), n, m, dim=0) == expected
