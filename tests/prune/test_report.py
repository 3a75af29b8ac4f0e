"""is_nm, nm_fraction and sparsity_report."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from torchprox.prune import apply_learned_masks, is_nm, learnable_nm, nm_fraction, nm_structured, sparsity_report

from ._util import hf_conv1d


def test_is_nm_counts_nonzeros_per_group_along_dim():
    t = torch.tensor([[1.0, 0.0, 0.0, 2.0], [0.0, 3.0, 4.0, 5.0]])
    assert not is_nm(t, 2, 4) and is_nm(t, 3, 4)
    assert is_nm(t.T, 2, 4, dim=0) is False and is_nm(t.T, 3, 4, dim=0) is True
    assert is_nm(torch.zeros(3, 8), 1, 4)
    assert is_nm(torch.tensor([1.0, -0.0, 0.0, 2.0]), 2, 4)  # -0.0 is a zero
    assert float(nm_fraction(t, 2, 4)) == 0.5
    with pytest.raises(ValueError, match="not a multiple of m=4"):
        is_nm(torch.ones(3, 6), 2, 4)
    with pytest.raises(ValueError, match="0 < n < m"):
        is_nm(t, 4, 4)


def test_is_nm_on_conv_input_channels():
    w = torch.zeros(2, 8, 3, 3)
    w[:, :2] = 1.0  # 2 nonzero channels in the first group of 4 input channels at every position
    assert is_nm(w, 2, 4, dim=1) and not is_nm(w, 1, 4, dim=1)
    w[0, 2, 1, 1] = 1.0
    assert not is_nm(w, 2, 4, dim=1)
    assert float(nm_fraction(w, 2, 4, dim=1)) == pytest.approx(1 - 1 / (2 * 2 * 9))


class _Model(nn.Module):
    def __init__(self):
        super().__init__()
        self.learning = nn.Linear(8, 4)
        self.masked = nn.Linear(8, 4)
        self.pruned = nn.Conv2d(8, 2, 3)
        self.dense = nn.Linear(8, 8)
        self.odd = nn.Linear(6, 4)
        self.hf = hf_conv1d(8, 4)
        self.norm = nn.LayerNorm(8)


def test_sparsity_report_lists_every_layer_with_its_state():
    model = _Model()
    learnable_nm(model.learning)
    learnable_nm(model.masked)
    apply_learned_masks(model.masked)
    nm_structured(model.pruned)
    learnable_nm(model.hf)
    apply_learned_masks(model.hf)
    rows = {r["name"]: r for r in sparsity_report(model)}
    assert list(rows) == ["learning", "masked", "pruned", "dense", "odd", "hf"]
    assert rows["learning"]["state"] == "learning" and rows["learning"]["nm_fraction"] == 0.0
    assert rows["masked"] == {"name": "masked", "kind": "Linear", "shape": (4, 8), "dim": 1, "pattern": "2:4",
                              "state": "masked", "nm_fraction": 1.0, "is_nm": True, "sparsity": 0.5}
    assert rows["pruned"]["state"] == "pruned" and rows["pruned"]["is_nm"] and rows["pruned"]["shape"] == (2, 8, 3, 3)
    assert rows["dense"]["state"] == "dense" and not rows["dense"]["is_nm"] and rows["dense"]["sparsity"] == 0.0
    assert rows["odd"]["nm_fraction"] is None and rows["odd"]["is_nm"] is False
    assert rows["hf"]["kind"] == "Conv1D" and rows["hf"]["dim"] == 0 and rows["hf"]["is_nm"]
    # a looser pattern accepts the 2:4 layers too
    assert {r["name"] for r in sparsity_report(model, 4, 8) if r["is_nm"]} == {"masked", "pruned", "hf"}
