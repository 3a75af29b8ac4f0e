"""NMStructured / nm_structured inside torch.nn.utils.prune: remove, is_pruned, PruningContainer."""
from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.nn.utils import prune

from torchprox.prune import NMStructured, is_nm, is_pruned, learnable_nm, nm_structured

from ._util import LAYER_KINDS, make_layer, nonzeros_per_group, reference_mask


@pytest.mark.parametrize("kind", LAYER_KINDS)
def test_magnitude_nm_along_the_reduction_dim(kind):
    layer, x, dim = make_layer(kind)
    w = layer.weight.detach().clone()
    nm_structured(layer)
    assert prune.is_pruned(layer) and is_pruned(layer)
    assert torch.equal(layer.weight_orig, w)
    assert torch.equal(layer.weight_mask.bool(), reference_mask(w.abs(), 2, 4, dim))
    assert torch.equal(layer.weight, w * layer.weight_mask) and is_nm(layer.weight, 2, 4, dim)
    y = layer(x)
    prune.remove(layer, "weight")
    assert not prune.is_pruned(layer) and type(layer.weight) is nn.Parameter
    assert torch.equal(layer(x), y) and is_nm(layer.weight, 2, 4, dim)


def test_importance_scores_and_patterns():
    lin = nn.Linear(8, 2)
    scores = torch.arange(16.0).reshape(2, 8)  # the later entries of each group win
    nm_structured(lin, n=1, m=4, importance_scores=scores)
    expected = torch.zeros(2, 8)
    expected[:, 3] = expected[:, 7] = 1
    assert torch.equal(lin.weight_mask, expected)
    with pytest.raises(ValueError, match=r"Linear.*\(2, 6\).*not a multiple of 4"):
        nm_structured(nn.Linear(6, 2))
    with pytest.raises(ValueError, match="learnable"):
        nm_structured(learnable_nm(nn.Linear(8, 2)))
    with pytest.raises(ValueError, match="0 < n < m"):
        NMStructured(n=0, m=4)


def test_ties_keep_the_lower_index():
    lin = nn.Linear(8, 1)
    with torch.no_grad():
        lin.weight.copy_(torch.tensor([[1.0, -1.0, 1.0, 1.0, 0.0, 0.0, 0.0, 0.0]]))
    nm_structured(lin)
    assert lin.weight_mask.tolist() == [[1, 1, 0, 0, 1, 1, 0, 0]]


def test_container_l1_then_nm_is_a_subset_and_nm():
    torch.manual_seed(0)
    lin = nn.Linear(16, 8)
    prune.l1_unstructured(lin, "weight", amount=0.4)
    first = lin.weight_mask.clone()
    nm_structured(lin)
    hook = next(h for h in lin._forward_pre_hooks.values() if isinstance(h, prune.BasePruningMethod))
    assert isinstance(hook, prune.PruningContainer)
    assert [type(meth) for meth in hook._pruning_methods] == [prune.L1Unstructured, NMStructured]
    mask = lin.weight_mask
    assert torch.all(mask <= first) and is_nm(lin.weight, 2, 4, 1)
    # every group keeps min(2, its survivors)
    survivors = nonzeros_per_group(first, 4, 1)
    assert torch.equal(nonzeros_per_group(mask, 4, 1), survivors.clamp(max=2))
    # and among the survivors the largest |w| are kept
    scores = lin.weight_orig.detach().abs().masked_fill(first == 0, -1.0)
    assert torch.equal(mask.bool(), reference_mask(scores, 2, 4, 1) & first.bool())
    prune.remove(lin, "weight")
    assert is_nm(lin.weight, 2, 4, 1)


def test_container_nm_then_l1_stays_nm():
    torch.manual_seed(1)
    lin = nn.Linear(16, 8)
    nm_structured(lin)
    prune.l1_unstructured(lin, "weight", amount=0.3)
    # l1_unstructured prunes 30% of the 64 survivors
    assert is_nm(lin.weight, 2, 4, 1) and int(lin.weight_mask.sum()) == 64 - round(0.3 * 64)
    nm_structured(lin, n=1, m=4)  # tighten to 1:4
    assert is_nm(lin.weight, 1, 4, 1)


def test_global_unstructured_combination_and_custom_mask():
    torch.manual_seed(2)
    lin = nn.Linear(8, 4)
    prune.custom_from_mask(lin, "weight", mask=torch.ones(4, 8).tril())
    nm_structured(lin)
    assert torch.all(lin.weight_mask <= torch.ones(4, 8).tril()) and is_nm(lin.weight, 2, 4, 1)


def test_apply_classmethod_like_torch_methods():
    conv = nn.Conv2d(8, 2, 3)
    method = NMStructured.apply(conv, "weight", n=2, m=8, dim=1)
    assert isinstance(method, NMStructured) and method._tensor_name == "weight"
    assert is_nm(conv.weight, 2, 8, 1) and int(conv.weight_mask.sum()) == 2 * 9 * 2  # (out, kh, kw) positions x 2 kept
