"""learn_masks (and the masked fine-tune it can end with) is deterministic: these runs reproduce, bit for bit,
the weights, losses and N:M fractions that the code gave before the issue-20 restructuring (golden file
``data/learn_masks_golden.pt``, written by ``python -m tests.llm.test_golden`` on that code).

If a change is meant to alter the recipe's numbers, regenerate the file on purpose and say so in the commit.
Every run names its ``lr_normalization``: the golden file predates the switch of the default to ``"rms"``, and
the runs check the code path, not the default."""
from pathlib import Path

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.llm.proxsparse import ProxSparseConfig, learn_masks  # noqa: E402

from .tiny import tiny_llama  # noqa: E402

GOLDEN = Path(__file__).with_name("data") / "learn_masks_golden.pt"

#: Every stage of learn_masks: warm-up, λ ramp, frozen-weight penalty, grad clipping, both extractions, the
#: masked fine-tune (its own loop, schedule and order) and the OBS update; lam=0 (no prox: ProxAdam alone).
RUNS = {
    "activation": dict(steps=6, lam=0.5, lr=1e-2, batch_size=2, lam_ramp=0.5, frozen_lam=0.1, log_every=2, seed=3,
                       lr_normalization="none"),
    "weight_finetune": dict(steps=5, lam=0.2, lr=1e-2, mask_scores="weight", reconstruct="finetune",
                            reconstruct_steps=3, reconstruct_lr=3e-3, grad_clip=None, warmup=0.0, metric="identity",
                            lr_normalization="none"),
    "obs": dict(steps=4, lam=0.5, lr=1e-2, reconstruct="obs", reconstruct_blocks=4, lr_normalization="rms"),
    "no_prox": dict(steps=3, lam=0.0, lr=1e-2, lr_normalization="none"),
}


def _calib() -> torch.Tensor:
    return torch.randint(0, 64, (6, 16), generator=torch.Generator().manual_seed(0))


def run(name: str) -> dict:
    model = tiny_llama(seed=1)
    report = learn_masks(model, _calib(), 2, 4, ProxSparseConfig(**RUNS[name]), progress=False)
    return {"state": {k: v.detach().clone() for k, v in model.state_dict().items()}, "loss": report["loss"],
            "nm_fraction": [tuple(f) for f in report["nm_fraction"]]}


@pytest.mark.parametrize("name", sorted(RUNS))
def test_learn_masks_reproduces_the_recipe_bit_for_bit(name):
    want = torch.load(GOLDEN, weights_only=True)[name]
    got = run(name)
    assert got["loss"] == want["loss"]
    assert got["nm_fraction"] == [tuple(f) for f in want["nm_fraction"]]
    assert got["state"].keys() == want["state"].keys()
    for key, w in want["state"].items():
        assert torch.equal(got["state"][key], w), (key, (got["state"][key] - w).abs().max())


if __name__ == "__main__":  # regenerate the golden file (only on purpose: see the module docstring)
    GOLDEN.parent.mkdir(exist_ok=True)
    torch.save({name: run(name) for name in RUNS}, GOLDEN)
