"""ProxAdam inside an unmodified ``transformers.Trainer`` learns N:M masks; NMMaskCallback logs and applies them."""
import logging

import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox import ProxAdam  # noqa: E402
from torchprox.llm import NMMaskCallback, nm_progress  # noqa: E402
from torchprox.prox import nm_mask  # noqa: E402
from torchprox.prune import is_nm, is_pruned, learnable_nm_model, prox_param_groups  # noqa: E402

from .tiny import tiny_llama  # noqa: E402

STEPS = 20


def dataset(rows: int = 64, seqlen: int = 32):
    g = torch.Generator().manual_seed(0)
    ids = (3 * torch.arange(seqlen).repeat(rows, 1) + torch.randint(0, 4, (rows, seqlen), generator=g)) % 63
    return [{"input_ids": r, "labels": r} for r in ids]


def train(tmp_path, lam: float, callback=None, optimizer_cls=ProxAdam, accumulation: int = 1):
    model = tiny_llama()
    learnable_nm_model(model, n=2, m=4)
    w0 = {name: p.w0.clone() for name, p in _nm(model)}
    if optimizer_cls is ProxAdam:
        opt = ProxAdam(prox_param_groups(model, lam=lam), lr=1e-3)
    else:
        opt = optimizer_cls(model.parameters(), lr=1e-3)
    steps = []
    opt.register_step_post_hook(lambda o, a, k: steps.append(1))  # torch's public hook: counts real updates
    sched = torch.optim.lr_scheduler.LambdaLR(opt, lambda s: 1.0 - s / (2 * STEPS))
    args = transformers.TrainingArguments(
        output_dir=str(tmp_path / "trainer"), max_steps=STEPS, per_device_train_batch_size=4 // accumulation,
        gradient_accumulation_steps=accumulation, logging_steps=5, save_strategy="no", report_to="none",
        use_cpu=True, disable_tqdm=True, seed=0)
    callbacks = [callback] if callback is not None else []
    trainer = transformers.Trainer(model=model, args=args, train_dataset=dataset(), optimizers=(opt, sched),
                                   callbacks=callbacks)
    return trainer, model, opt, w0, steps


def _nm(model):
    from torchprox.prune.parametrization import nm_parametrizations

    return [(q, p) for q, _, _, _, p in nm_parametrizations(model)]


def test_trainer_with_proxadam_learns_and_applies_nm_masks(tmp_path, caplog):
    cb = NMMaskCallback()
    trainer, model, opt, w0, steps = train(tmp_path, lam=3.0, callback=cb, accumulation=2)
    with caplog.at_level(logging.INFO, logger="torchprox.llm.trainer"):
        trainer.train()
    assert len(steps) == STEPS  # one ProxAdam.step per update (gradient accumulation 2)
    assert opt.param_groups[0]["lr"] == pytest.approx(1e-3 * (1 - STEPS / (2 * STEPS)))  # the scheduler ran

    # Progress in the Trainer's log history: rising fraction of N:M groups of W, 14 learnable layers.
    fracs = [e["nm_fraction"] for e in trainer.state.log_history if "loss" in e]
    assert len(fracs) == STEPS // 5 and all(e["nm_layers"] == 14 for e in trainer.state.log_history if "loss" in e)
    assert fracs[0] < fracs[-1] and fracs[-1] > 0.5
    assert trainer.state.log_history[-1]["nm_masks_applied"] == 14
    assert any("of N:M groups done" in r.getMessage() for r in caplog.records)
    assert any("applied 14 learned N:M masks" in r.getMessage() for r in caplog.records)

    # At the end: plain Parameters, weight == W0 ⊙ mask bit for bit, exactly 2:4, mask learned from W.
    assert not is_pruned(model) and len(cb.masks) == 14
    learned_differs = 0
    for name, mask in cb.masks.items():
        module = model.get_submodule(name.removesuffix(".weight"))
        weight = module.weight.detach()
        qual = name.removesuffix(".weight")
        assert type(module.weight) is torch.nn.Parameter and is_nm(weight, 2, 4, dim=1)
        assert torch.equal(weight, torch.where(mask, w0[qual], torch.zeros(())))
        learned_differs += not torch.equal(mask, nm_mask(w0[qual].abs(), 2, 4, dim=1))
        assert module.weight not in opt.state  # the same Parameter object held W; its Adam moments are freed
    assert learned_differs > 0  # not simply the magnitude mask of W0
    out = model(torch.arange(16).unsqueeze(0)).logits
    assert torch.isfinite(out).all()


def test_without_prox_the_weights_stay_dense(tmp_path):
    trainer, model, *_ = train(tmp_path, lam=0.0, callback=NMMaskCallback(apply_at_end=False, check_optimizer=False))
    trainer.train()
    fracs = [e["nm_fraction"] for e in trainer.state.log_history if "loss" in e]
    assert max(fracs) < 0.05  # Adam alone makes no group N:M: the masks above come from the prox
    assert nm_progress(model)["nm_layers_done"] == 0


def test_callback_rejects_an_optimizer_without_prox(tmp_path):
    trainer, *_ = train(tmp_path, lam=0.0, callback=NMMaskCallback(), optimizer_cls=torch.optim.AdamW)
    with pytest.raises(ValueError, match="optimizers=\\(ProxAdam"):
        trainer.train()


def test_nm_progress_counts_groups():
    lin = torch.nn.Linear(8, 4)
    assert nm_progress(lin) is None
    learnable_nm_model(lin)
    with torch.no_grad():
        w = lin.parametrizations.weight.original
        w[:2].zero_()
        w[2, :4] = torch.tensor([1.0, 0.0, 0.0, 1.0])
    assert nm_progress(lin) == {"nm_fraction": 5 / 8, "nm_layers_done": 0, "nm_layers": 1}


def test_example_script_quick(tmp_path, capsys):
    import importlib.util
    from pathlib import Path

    path = Path(__file__).parents[2] / "examples" / "trainer_proxsparse.py"
    spec = importlib.util.spec_from_file_location("trainer_proxsparse_example", path)
    example = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(example)
    out = tmp_path / "quick"
    assert example.main(["--quick", "--steps", "12", "--lam", "0.3", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "14/14 layers exactly 2:4 after applying the learned masks" in printed
    from torchprox.llm import check_sparse

    assert check_sparse(out)["ok"]
