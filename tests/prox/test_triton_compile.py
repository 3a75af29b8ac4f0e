"""The Triton kernels compile for real GPUs, without one.

Triton's interpreter (test_triton.py) checks what the kernels compute, but it accepts programs that the compiler
rejects (a type mismatch between the branches of a uniform ``if``, a loop-carried value whose type changes).
Here every kernel variant that ``prox_nm`` launches is compiled ahead of time, through Triton's whole pipeline
and NVIDIA's ``ptxas`` (shipped in Triton's wheel), to a cubin for an A100 (sm_80) and an H100/H200 (sm_90), with
the argument types ``_launch`` passes; the cubin must keep every value in registers (no local memory: a spill
would multiply the kernel's memory traffic).
"""
from __future__ import annotations

import inspect
import os
import re
import subprocess

import pytest
import torch

triton = pytest.importorskip("triton")
compiler = pytest.importorskip("triton.compiler")
GPUTarget = pytest.importorskip("triton.backends.compiler").GPUTarget

from torchprox.prox import _triton  # noqa: E402

_NVIDIA_BIN = os.path.join(os.path.dirname(triton.__file__), "backends", "nvidia", "bin")
pytestmark = [
    pytest.mark.skipif(
        not os.path.exists(os.path.join(_NVIDIA_BIN, "ptxas")), reason="Triton's wheel ships no ptxas here"
    ),
    pytest.mark.skipif(  # ASTSource(fn, signature, constexprs) with "constexpr" signature entries (newer Triton)
        "constexprs" not in inspect.signature(compiler.ASTSource.__init__).parameters,
        reason="this Triton's ahead-of-time API predates ASTSource(constexprs=...)",
    ),
]

_TYPE = {torch.float32: "fp32", torch.float64: "fp64", torch.bfloat16: "bf16", torch.float16: "fp16"}


def _compile(n: int, m: int, dtype: torch.dtype, metric: bool, lam_on_device: bool, capability: int, launch: str):
    """Compile the kernel ``_launch`` would run for (G, m) ``dtype`` groups, as it would launch it: "single"
    (one block), "first" or "list" (the two launches of several blocks)."""
    compute = torch.float64 if dtype == torch.float64 else torch.float32
    kernel = _triton._kernel(n, m, compute, interpret=False, metric=metric)
    block, warps = _triton._config(m, compute, 1 << 20, interpret=False)
    signature = {"y_ptr": "*" + _TYPE[dtype]}
    if metric:
        signature["s_ptr"] = "*" + _TYPE[compute]  # the step is cast to the compute dtype
    signature.update(
        out_ptr="*" + _TYPE[dtype],
        lam_ptr="*" + _TYPE[compute if lam_on_device else dtype],  # a float λ: `out` stands in, unread
        lam_bits="i64" if compute == torch.float64 else "i32",
        G="i32",
        list_ptr="*i32",
        count_ptr="*i32",
        LAM_PTR="constexpr",
        BLOCK="constexpr",
        COMPACT="constexpr",
        FROM_LIST="constexpr",
    )
    constexprs = {"LAM_PTR": lam_on_device, "BLOCK": block, "COMPACT": launch != "single", "FROM_LIST": launch == "list"}
    source = compiler.ASTSource(fn=kernel, signature=signature, constexprs=constexprs)
    options = {"num_warps": warps, "enable_fp_fusion": _triton._FP_FUSION}
    return triton.compile(source, target=GPUTarget("cuda", capability, 32), options=options)


def _local_memory_bytes(cubin: bytes, tmp_path) -> int | None:
    tool = os.path.join(_NVIDIA_BIN, "cuobjdump")
    if not os.path.exists(tool):
        return None
    path = tmp_path / "kernel.cubin"
    path.write_bytes(cubin)
    usage = subprocess.run([tool, "--dump-resource-usage", str(path)], capture_output=True, text=True, check=True)
    return int(re.search(r"LOCAL:(\d+)", usage.stdout).group(1))


VARIANTS = [  # (GPU capability, n, m, input dtype, metric, λ a CUDA tensor, launch): each compile costs seconds
    (90, 2, 4, torch.float32, False, True, "first"),
    (90, 2, 4, torch.float32, False, True, "list"),
    (90, 2, 4, torch.float32, False, False, "single"),
    (90, 1, 4, torch.bfloat16, False, True, "first"),
    (90, 2, 4, torch.float64, False, True, "first"),
    (90, 2, 4, torch.float32, True, True, "first"),
    (90, 2, 4, torch.float32, True, True, "list"),
    (90, 1, 4, torch.bfloat16, True, True, "first"),
    (90, 3, 4, torch.float64, True, False, "first"),
    (90, 4, 8, torch.float32, False, True, "first"),
    (90, 4, 8, torch.float32, False, True, "list"),
    (80, 2, 4, torch.float32, False, True, "first"),
    (80, 2, 4, torch.float32, True, True, "first"),
]


@pytest.mark.parametrize(
    "capability,n,m,dtype,metric,lam_on_device,launch", VARIANTS, ids=lambda v: str(v).replace("torch.", "")
)
def test_kernel_compiles_to_a_cubin_without_spills(tmp_path, capability, n, m, dtype, metric, lam_on_device, launch):
    compiled = _compile(n, m, dtype, metric, lam_on_device, capability, launch)
    assert f".target sm_{capability}" in compiled.asm["ptx"]
    assert len(compiled.asm["cubin"]) > 0
    local = _local_memory_bytes(compiled.asm["cubin"], tmp_path)
    if local is not None:
        assert local == 0, f"the {n}:{m} kernel ({dtype}, metric={metric}) spills {local} bytes to local memory"


@pytest.mark.parametrize("metric", [False, True])
def test_fast_newton_variant_compiles_without_spills(tmp_path, monkeypatch, metric):
    if not _triton._approx_division():
        pytest.skip("this Triton's tl.fdiv has no approx=")
    monkeypatch.setattr(_triton, "_FAST_NEWTON", True)
    compiled = _compile(2, 4, torch.float32, metric, True, 90, "first")
    assert "div.approx.f32" in compiled.asm["ptx"] and "sqrt.approx" in compiled.asm["ptx"]
    local = _local_memory_bytes(compiled.asm["cubin"], tmp_path)
    if local is not None:
        assert local == 0
