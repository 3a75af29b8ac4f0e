import pytest
import torch

from torchprox.prox import available_prox, get_prox, prox_group_lasso, prox_l1, prox_nm, register_prox
from torchprox.prox import registry


@pytest.fixture
def clean_registry():
    before = dict(registry._REGISTRY)
    yield
    registry._REGISTRY.clear()
    registry._REGISTRY.update(before)


def test_builtins_are_registered():
    assert {"nm", "nm_projection", "l1", "group_lasso"} <= set(available_prox())
    assert get_prox("nm") is prox_nm and get_prox("l1") is prox_l1 and get_prox("group_lasso") is prox_group_lasso
    y = torch.randn(3, 8)
    assert torch.equal(get_prox("nm_projection")(y, 0.0, n=2, m=4), get_prox("nm_projection")(y, 5.0, n=2, m=4))


def test_register_and_use_user_operator(clean_registry):
    @register_prox("box")
    def prox_box(y, lam, *, step=1.0, bound=1.0):
        return y.clamp(-bound, bound)

    assert "box" in available_prox()
    assert torch.equal(get_prox("box")(torch.tensor([-3.0, 0.5, 2.0]), 0.0, bound=1.0), torch.tensor([-1.0, 0.5, 1.0]))


def test_duplicate_name_needs_overwrite(clean_registry):
    register_prox("dup")(lambda y, lam, step=1.0: y)
    with pytest.raises(ValueError, match="already registered"):
        register_prox("dup")(lambda y, lam, step=1.0: 2 * y)
    register_prox("dup", overwrite=True)(lambda y, lam, step=1.0: 3 * y)
    assert torch.equal(get_prox("dup")(torch.ones(1), 0.0), torch.full((1,), 3.0))


def test_unknown_and_bad_names():
    with pytest.raises(ValueError, match=r"unknown prox 'nope'.*nm"):
        get_prox("nope")
    with pytest.raises(ValueError, match="non-empty string"):
        register_prox("")
    with pytest.raises(TypeError, match="callable"):
        register_prox("x")(3)
