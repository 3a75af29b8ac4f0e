import pytest
import torch

from torchprox.prox import (available_prox, get_prox, prox_group_lasso, prox_grouping, prox_l1, prox_nm,
                             register_prox)
from torchprox.prox import registry


@pytest.fixture
def clean_registry():
    tables = (registry._REGISTRY, registry._CHECKS, registry._GROUPINGS)
    before = [dict(t) for t in tables]
    yield
    for table, saved in zip(tables, before):
        table.clear()
        table.update(saved)


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


def test_builtins_declare_their_grouping():
    assert prox_grouping("nm", (8, 16), n=2, m=4, dim=1) == (1, 4)
    assert prox_grouping("nm", (8, 16)) == (-1, 4)  # the operator's defaults: m=4 along the last dim
    assert prox_grouping("nm_projection", (8, 24), n=1, m=8, dim=-1) == (-1, 8)
    assert prox_grouping("group_lasso", (8, 16), group_size=2, dim=0) == (0, 2)
    assert prox_grouping("group_lasso", (8, 16), dim=0) == (0, 8)  # group_size None: the whole dim
    assert prox_grouping("l1", (8, 16)) is None  # elementwise
    with pytest.raises(ValueError, match="unknown prox 'nope'"):
        prox_grouping("nope", (8, 16))


def test_user_grouping_is_declared_looked_up_and_replaced(clean_registry):
    def prox_pairs(y, lam, *, step=1.0, size=2):  # hard threshold on the norm of each group of `size` columns
        g = y.unflatten(-1, (-1, size))
        return (g * (g.norm(dim=-1, keepdim=True) > lam)).flatten(-2)

    register_prox("pairs", grouping=lambda shape, size=2: (len(shape) - 1, size))(prox_pairs)
    assert prox_grouping("pairs", (3, 12), size=3) == (1, 3)
    register_prox("pairs", overwrite=True)(prox_pairs)  # re-registered without one: elementwise
    assert prox_grouping("pairs", (3, 12), size=3) is None
    with pytest.raises(TypeError, match=r"grouping=\.\.\.\) needs a callable"):
        register_prox("pairs2", grouping=3)(prox_pairs)


@pytest.fixture
def fake_mesh():
    """A 2-rank device mesh in this one process (torch's fake process group): DTensors hold rank 0's shard."""
    dist = pytest.importorskip("torch.distributed")
    if not dist.is_available():
        pytest.skip("needs torch.distributed")
    from torch.distributed.device_mesh import init_device_mesh
    from torch.testing._internal.distributed.fake_pg import FakeStore

    dist.init_process_group("fake", store=FakeStore(), rank=0, world_size=2)
    try:
        yield init_device_mesh("cpu", (2,))
    finally:
        dist.destroy_process_group()


def test_sharded_optimizer_uses_the_declared_grouping_of_a_user_operator(clean_registry, fake_mesh):
    from torch.distributed.tensor import Shard, distribute_tensor

    from torchprox import ProxAdam

    def prox_pairs(y, lam, *, step=1.0, size=2):
        g = y.unflatten(-1, (-1, size))
        return (g * (g.norm(dim=-1, keepdim=True) > lam)).flatten(-2)

    register_prox("pairs", grouping=lambda shape, size=2: (len(shape) - 1, size))(prox_pairs)
    y = torch.randn(4, 12, dtype=torch.float64, generator=torch.Generator().manual_seed(0))

    def step(size):  # one ProxAdam step (lr 0: only the prox) on y sharded column-wise, 6 + 6 columns
        p = torch.nn.Parameter(distribute_tensor(y.clone(), fake_mesh, [Shard(1)]))
        opt = ProxAdam([p], lr=0.0, prox="pairs", lam=1.0, metric="identity", prox_kwargs={"size": size})
        p.grad = torch.zeros_like(p)
        opt.step()
        return p.to_local()

    # groups of 3: each 6-column shard holds whole groups, and rank 0's shard is the prox of its columns.
    assert torch.equal(step(3), prox_pairs(y, 1.0, size=3)[:, :6])
    # groups of 4 straddle the shard boundary at column 6: the declared grouping makes this an error.
    with pytest.raises(ValueError, match=r"sharded along dim 1.*split its groups of 4.*shard_placement_fn"):
        step(4)
    # "l1" declares no grouping (elementwise): any sharding is fine, e.g. 5 + 5 columns.
    p = torch.nn.Parameter(distribute_tensor(y[:, :10].clone(), fake_mesh, [Shard(1)]))
    opt = ProxAdam([p], lr=0.0, prox="l1", lam=0.5, metric="identity")
    p.grad = torch.zeros_like(p)
    opt.step()
    assert torch.equal(p.to_local(), prox_l1(y[:, :5], 0.5))
