"""ProxAdam + learnable N:M masks under DistributedDataParallel and FSDP2 (``fully_shard``): two CPU processes
on the gloo backend learn the same masks as one process on the whole batch.

The model is float64, so the only difference between the runs (the order of the gradient sums) is ~1e-16 and
no top-n choice can flip: masks and masked weights must be bit-identical, learned weights equal to ~1e-12.
"""
from __future__ import annotations

import os
import socket

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
import torch.nn.functional as F
from torch import nn

from torchprox import ProxAdam
from torchprox.prox import nm_mask, prox_nm
from torchprox.prune import apply_learned_masks, is_nm, learnable_nm_model, nm_fraction, prox_param_groups
from torchprox.prune.parametrization import nm_parametrizations

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="needs torch.distributed with gloo")

WORLD = 2
STEPS = 8
BATCH = 8  # split into WORLD equal halves: mean of the half-batch mean gradients == full-batch mean gradient
SETTINGS = {"identity": {"lam": 1.0, "lr": 1e-2}, "adam": {"lam": 5.0, "lr": 1e-2}}


def build(seed: int = 0) -> nn.Sequential:
    """A float64 MLP; the last layer has 5 rows, so FSDP2 shards it unevenly (3 + 2 rows)."""
    torch.manual_seed(seed)
    model = nn.Sequential(nn.Linear(16, 32), nn.GELU(), nn.Linear(32, 32), nn.GELU(), nn.Linear(32, 5)).double()
    learnable_nm_model(model, n=2, m=4)
    return model


def data():
    g = torch.Generator().manual_seed(1)
    x = torch.randn(STEPS, BATCH, 16, generator=g, dtype=torch.float64)
    y = torch.randn(STEPS, BATCH, 5, generator=g, dtype=torch.float64)
    return x, y


def train(model: nn.Module, metric: str, rank: int = 0, world: int = 1) -> None:
    """STEPS ProxAdam steps; this rank sees its contiguous 1/world of every batch."""
    opt = ProxAdam(prox_param_groups(model, lam=SETTINGS[metric]["lam"], metric=metric),
                   lr=SETTINGS[metric]["lr"])
    x, y = data()
    for t in range(STEPS):
        F.mse_loss(model(x[t].chunk(world)[rank]), y[t].chunk(world)[rank]).backward()
        opt.step()
        opt.zero_grad()


def finish(model: nn.Module) -> dict:
    """Learned W, the chosen masks and the masked weights W0 ⊙ mask of an unsharded learning-state model."""
    learned = {q: pl.original.detach().clone() for q, _, _, pl, _ in nm_parametrizations(model)}
    w0 = {q: p.w0.clone() for q, _, _, _, p in nm_parametrizations(model)}
    masks = {name.removesuffix(".weight"): mask for name, mask in apply_learned_masks(model).items()}
    weights = {q: mod.weight.detach().clone() for q, mod, _, _, _ in nm_parametrizations(model)}
    return {"learned": learned, "w0": w0, "masks": masks, "weights": weights}


def reference(metric: str) -> dict:
    model = build()
    train(model, metric)
    return finish(model)


# ------------------------------------------------------------------------------------------- workers


def _init(rank: int, port: int) -> None:
    os.environ["OMP_NUM_THREADS"] = "1"
    torch.set_num_threads(1)
    dist.init_process_group("gloo", init_method=f"tcp://127.0.0.1:{port}", rank=rank, world_size=WORLD)


def _done() -> None:
    """Leave cleanly: wait for the other rank, tear the group down, and skip interpreter finalization.

    Gloo's worker threads can outlive ``destroy_process_group`` by a moment; when the interpreter is torn down
    under them the process aborts ("terminate called without an active exception", seen once in CI on a
    2-core machine; pytorch/pytorch#179291 describes the race). Both ranks have finished and rank 0 has saved
    its results before the barrier, so ``os._exit(0)`` loses nothing. Called only on success: an exception
    still propagates to ``mp.spawn`` with its traceback.
    """
    dist.barrier()
    dist.destroy_process_group()
    os._exit(0)


def _save(obj, path: str) -> None:
    tmp = f"{path}.tmp"
    torch.save(obj, tmp)
    os.replace(tmp, path)


def _ddp_worker(rank: int, port: int, out: str) -> None:
    from torch.nn.parallel import DistributedDataParallel as DDP

    _init(rank, port)
    try:
        results = {}
        for metric in SETTINGS:
            model = build()
            train(DDP(model), metric, rank, WORLD)
            results[metric] = finish(model)
        if rank == 0:
            _save(results, out)
    except BaseException:
        dist.destroy_process_group()
        raise
    _done()


def _fsdp_worker(rank: int, port: int, out: str) -> None:
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict
    from torch.distributed.device_mesh import init_device_mesh
    from torch.distributed.fsdp import fully_shard
    from torch.distributed.tensor import DTensor, Shard, distribute_tensor

    _init(rank, port)
    try:
        mesh = init_device_mesh("cpu", (WORLD,))
        results = {"local_rows": {}}
        for metric in SETTINGS:
            # The supported order: learnable_nm_model first, then fully_shard (each layer, then the root).
            model = build()
            for layer in model:
                if isinstance(layer, nn.Linear):
                    fully_shard(layer, mesh=mesh)
            fully_shard(model, mesh=mesh)
            for q, _, _, plist, p in nm_parametrizations(model):
                assert isinstance(plist.original, DTensor) and plist.original.placements == (Shard(0),)
                # FSDP2 shards parameters, not buffers: every rank keeps the whole frozen W0.
                assert not isinstance(p.w0, DTensor) and p.w0.shape == plist.original.shape
                results["local_rows"][q] = plist.original.to_local().shape[0]
            train(model, metric, rank, WORLD)
            # Finish on the full (gathered) state: load it into an unsharded copy, then choose the masks.
            full = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True))
            if rank == 0:
                plain = build(seed=1)  # different init: everything must come from the gathered state
                plain.load_state_dict(full)
                results[metric] = finish(plain)
        # Sharding along the group dim: fine when shards hold whole groups, a clear error when they split them.
        y = torch.randn(8, 16, dtype=torch.float64, generator=torch.Generator().manual_seed(2))
        aligned = nn.Parameter(distribute_tensor(y.clone(), mesh, [Shard(1)]))  # 8 + 8 columns: whole groups
        opt = ProxAdam([aligned], lr=0.0, prox="nm", lam=0.5, prox_kwargs={"n": 2, "m": 4, "dim": 1})
        aligned.grad = torch.zeros_like(aligned)
        opt.step()
        results["aligned_shard1"] = aligned.full_tensor().detach()
        split = nn.Parameter(distribute_tensor(torch.randn(8, 12, dtype=torch.float64), mesh, [Shard(1)]))
        opt = ProxAdam([split], lr=0.0, prox="nm", lam=0.5, prox_kwargs={"n": 2, "m": 4, "dim": 1})
        split.grad = torch.zeros_like(split)
        try:
            opt.step()
            results["split_error"] = None
        except ValueError as err:
            results["split_error"] = str(err)
        if rank == 0:
            results["prox_full"] = prox_nm(y, 0.5, n=2, m=4, dim=1)
            _save(results, out)
    except BaseException:
        dist.destroy_process_group()
        raise
    _done()


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def _spawn(worker, tmp_path) -> dict:
    out = str(tmp_path / "result.pt")
    mp.spawn(worker, args=(_free_port(), out), nprocs=WORLD, join=True)
    return torch.load(out, weights_only=True)


def _assert_same_masks(got: dict, want: dict) -> None:
    assert got["masks"].keys() == want["masks"].keys() == {"0", "2", "4"}
    for name, mask in want["masks"].items():
        assert torch.equal(got["w0"][name], want["w0"][name])
        torch.testing.assert_close(got["learned"][name], want["learned"][name], rtol=0, atol=1e-12)
        assert torch.equal(got["masks"][name], mask), name
        assert torch.equal(got["weights"][name], want["weights"][name]), name
        assert is_nm(got["weights"][name], 2, 4, dim=1)
        # The masks were learned: not the magnitude mask of W0 everywhere, and the prox made W mostly N:M.
        assert not torch.equal(mask, nm_mask(want["w0"][name].abs(), 2, 4, dim=1)), name
        assert float(nm_fraction(want["learned"][name], 2, 4, dim=1)) > 0.5, name


@pytest.fixture(scope="module")
def references() -> dict:
    return {metric: reference(metric) for metric in SETTINGS}


def test_ddp_matches_one_process(tmp_path, references):
    got = _spawn(_ddp_worker, tmp_path)
    for metric in SETTINGS:
        _assert_same_masks(got[metric], references[metric])


def test_fsdp2_matches_one_process(tmp_path, references):
    got = _spawn(_fsdp_worker, tmp_path)
    # Each rank really held a row shard (the 5-row layer unevenly: rank 0 holds 3 rows).
    assert got["local_rows"] == {"0": 16, "2": 16, "4": 3}
    for metric in SETTINGS:
        _assert_same_masks(got[metric], references[metric])
    torch.testing.assert_close(got["aligned_shard1"], got["prox_full"], rtol=0, atol=0)
    assert got["split_error"] is not None and "split its groups of 4" in got["split_error"]
    assert "shard_placement_fn" in got["split_error"]
