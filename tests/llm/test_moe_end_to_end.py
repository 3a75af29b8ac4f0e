"""Issue 18's acceptance test: ``sparsify`` on tiny configs of seven Mixture-of-Experts architectures with all
four methods, then ``save_sparse`` → plain ``from_pretrained`` → the same logits → ``check_sparse``."""
import pytest
import torch

transformers = pytest.importorskip("transformers")

from torchprox.llm import (
    METHODS,
    ROUTER,
    check_sparse,
    save_sparse,
    sparse_manifest,
    sparsify,
)
from torchprox.llm.targets import target_tensors
from torchprox.prune import is_nm

from .tiny import MOE_ARCHS, tiny_moe

MASK_ONLY = ("proxsparse", "magnitude", "wanda")  # kept weights are W0's, bit for bit


@pytest.mark.parametrize("method", METHODS)
@pytest.mark.parametrize("arch", MOE_ARCHS)
def test_every_matrix_but_the_router_becomes_nm_saves_and_reloads(arch, method, tmp_path):
    model = tiny_moe(arch)
    w0 = {name: p.detach().clone() for name, p in model.named_parameters()}
    calib = torch.randint(0, 64, (8, 16), generator=torch.Generator().manual_seed(1))
    options = {"steps": 2} if method == "proxsparse" else {}
    report = sparsify(model, calib, 2, 4, method=method, progress=False, **options)

    targets = target_tensors(model)
    experts = [t for t in targets if t.experts]
    assert len(experts) >= 2 and all(is_nm(t.weight, 2, 4, dim=t.dim) for t in targets)
    assert set(report["layers"]) == {t.key for t in targets} and min(report["layers"].values()) == 1.0
    assert set(report["coverage"]["dense"].values()) == {ROUTER}
    routers = sum(w0[name].numel() for name in report["coverage"]["dense"])
    assert report["coverage"]["nm_weights"] == report["coverage"]["matrix_weights"] - routers
    if method in MASK_ONLY:
        for t in targets:
            kept = t.weight != 0
            assert torch.equal(t.weight[kept], w0[t.tensor_name][kept]), t.key

    out = tmp_path / "out"
    save_sparse(model, None, out, sparse_manifest(model, 2, 4, method=method))
    reloaded = type(model).from_pretrained(out).eval()
    ids = torch.randint(0, 64, (2, 12))
    with torch.no_grad():
        assert torch.equal(reloaded(ids).logits, model(ids).logits)
    assert check_sparse(out)["ok"]
