"""The fused CPU kernels of ``csrc/nm_cpu.cpp``, built once with the system C++ compiler and cached.

The first call compiles the kernel (about 25 s with g++ 12 -O3 -fopenmp on a 2.8 GHz Xeon: every (n, m, dtype)
specialisation of the m = 4 vector paths, the general block solver and its descent engine) into
``$TORCHPROX_CACHE/kernels/`` (default ``~/.cache/torchprox/kernels``), named by a hash of the source and the
compiler command, written atomically; later processes load the cached library at once. Without a compiler
(or with ``TORCHPROX_NATIVE=0``) :func:`library` returns None and the operators use their plain-torch path,
which computes the same minimizer.

The kernels are exposed to torch as custom ops (``torch.ops.torchprox.prox_nm_cpu``, its in-place twin
``prox_nm_cpu_``, the diagonal-metric ``prox_nm_metric_cpu`` and its twin ``prox_nm_metric_cpu_``,
``project_nm4_cpu`` and ``nm_mask_cpu``) so that ``torch.compile`` treats them as opaque calls.
"""
from __future__ import annotations

import ctypes
import hashlib
import logging
import os
import shutil
import subprocess
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

logger = logging.getLogger(__name__)

_SOURCE = Path(__file__).with_name("csrc") / "nm_cpu.cpp"
# -fno-trapping-math: the kernels never read floating-point exception flags, and without it GCC may not turn the
# lane loops' selects (x = c ? a * b : 0) into vector blends where the CPU has no masked vector operations
# (AVX2): such a build ran 1.43x the instructions without it on 4:8 at lam 0.25, 1.28x on 2:4. The same bits,
# but for the 3:4 diagonal-metric kernel: 1-2 ulp apart in ~1% of groups (docs/benchmarks.md).
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17", "-fPIC", "-shared", "-fopenmp"]
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None | bool = False  # False: not tried yet


def cache_dir() -> Path:
    root = os.environ.get("TORCHPROX_CACHE") or os.path.join(os.path.expanduser("~"), ".cache", "torchprox")
    return Path(root) / "kernels"


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("g++") or shutil.which("c++") or shutil.which("clang++")


def _cpu_id() -> bytes:
    """The CPU's model and feature flags: -march=native code is only reused on the same kind of CPU."""
    try:
        lines = Path("/proc/cpuinfo").read_text().splitlines()
    except OSError:
        import platform

        return platform.processor().encode()
    keep = [ln for ln in lines if ln.startswith(("model name", "flags", "Features", "CPU part"))]
    return "\n".join(dict.fromkeys(keep)).encode()


def _build(cxx: str) -> Path:
    source = _SOURCE.read_bytes()
    key = hashlib.sha256(source + " ".join([cxx, *_FLAGS]).encode() + _cpu_id()).hexdigest()[:16]
    target = cache_dir() / f"nm_cpu-{key}.so"
    if target.exists():
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=target.parent) as tmp:
        out = Path(tmp) / target.name
        subprocess.run([cxx, *_FLAGS, str(_SOURCE), "-o", str(out)], check=True, capture_output=True, text=True)
        os.replace(out, target)  # atomic: concurrent builders each write a whole file
    logger.info("torchprox: built the fused N:M kernel into %s", target)
    return target


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when it is disabled or cannot be built (logged once)."""
    global _LIB
    if _LIB is not False:
        return _LIB
    with _LOCK:
        if _LIB is not False:
            return _LIB
        lib = None
        if os.environ.get("TORCHPROX_NATIVE", "1") != "0" and (cxx := _compiler()) is not None:
            try:
                lib = ctypes.CDLL(str(_build(cxx)))
                i64, i32, f64, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_double, ctypes.c_void_p
                for name in ("torchprox_prox_nm_f32", "torchprox_prox_nm_f64"):
                    getattr(lib, name).argtypes = [ptr, ptr, i64, i32, i32, ptr, i32]
                for name in ("torchprox_prox_nm_metric_f32", "torchprox_prox_nm_metric_f64"):
                    getattr(lib, name).argtypes = [ptr, ptr, ptr, i64, i32, ptr, i32]
                for name in ("torchprox_project_nm4_f32", "torchprox_project_nm4_f64"):
                    getattr(lib, name).argtypes = [ptr, ptr, i64, i32, i32]
                for name in ("torchprox_nm_mask_f32", "torchprox_nm_mask_f64"):
                    getattr(lib, name).argtypes = [ptr, ptr, i64, i32, i32, i32]
                lib.torchprox_max_m.restype = i32
            except (OSError, subprocess.CalledProcessError) as err:
                detail = getattr(err, "stderr", "") or err
                logger.warning("torchprox: fused N:M kernel unavailable, using plain torch (%s)", detail)
                lib = None
        _LIB = lib
        return lib


def usable(t: Tensor, m: int) -> bool:
    """Whether the fused kernel can serve ``t`` (CPU, float32/float64, m within the kernel's limit)."""
    return (
        t.device.type == "cpu"
        and t.dtype in (torch.float32, torch.float64)
        and not (t.requires_grad and torch.is_grad_enabled())
        and m <= 32
        and library() is not None
    )


_SUFFIX = {torch.float32: "f32", torch.float64: "f64"}


def _prox_into(y: Tensor, out: Tensor, lam: Tensor, n: int, m: int) -> None:
    """Run the kernel from contiguous ``y`` (G, m) into ``out`` (may be ``y`` itself: each value is read before
    it is written); ``lam`` is a 0-d CPU tensor, read by the kernel itself (no ``.item()``)."""
    lam64 = lam.detach().to(torch.float64).contiguous()
    fn = getattr(library(), f"torchprox_prox_nm_{_SUFFIX[y.dtype]}")
    fn(y.data_ptr(), out.data_ptr(), y.shape[0], n, m, lam64.data_ptr(), torch.get_num_threads())


@torch.library.custom_op("torchprox::prox_nm_cpu", mutates_args=(), device_types="cpu")
def prox_nm_cpu(groups: Tensor, lam: Tensor, n: int, m: int) -> Tensor:
    """argmin_w ½‖w − y‖² + lam e_{n+1}(|w|) for each row of ``groups`` (G, m), float32/float64, on CPU."""
    y = groups.contiguous()
    out = torch.empty_like(y)
    _prox_into(y, out, lam, n, m)
    return out


@torch.library.custom_op("torchprox::prox_nm_cpu_", mutates_args=("groups",), device_types="cpu")
def prox_nm_cpu_(groups: Tensor, lam: Tensor, n: int, m: int) -> None:
    """In-place :func:`prox_nm_cpu` on a contiguous ``groups`` (G, m)."""
    _prox_into(groups, groups, lam, n, m)


@prox_nm_cpu.register_fake
def _(groups: Tensor, lam: Tensor, n: int, m: int) -> Tensor:
    return torch.empty_like(groups)


@torch.library.custom_op("torchprox::prox_nm_metric_cpu", mutates_args=(), device_types="cpu")
def prox_nm_metric_cpu(groups: Tensor, step: Tensor, lam: Tensor, n: int) -> Tensor:
    """argmin_w ½ Σ (w − y)²/s + lam e_{n+1}(|w|) for every row of ``groups`` (G, 4) with steps ``step``
    (G, 4), n < 4: the convex path where lam s (4 − n) max_i e_{n−1}(|y| minus i) ≤ ½ (the regime of mask
    learning), the exact general solver for the other groups, packed 32 (float32) or 16 (float64) at a time."""
    y = groups.contiguous()
    out = torch.empty_like(y)
    _metric_into(y, step.contiguous(), out, lam, n)
    return out


@prox_nm_metric_cpu.register_fake
def _(groups: Tensor, step: Tensor, lam: Tensor, n: int) -> Tensor:
    return torch.empty_like(groups)


@torch.library.custom_op("torchprox::prox_nm_metric_cpu_", mutates_args=("groups",), device_types="cpu")
def prox_nm_metric_cpu_(groups: Tensor, step: Tensor, lam: Tensor, n: int) -> None:
    """In-place :func:`prox_nm_metric_cpu` on a contiguous ``groups`` (G, 4): no output tensor, no copy."""
    _metric_into(groups, step.contiguous(), groups, lam, n)


def _metric_into(y: Tensor, s: Tensor, out: Tensor, lam: Tensor, n: int) -> None:
    """Run the diagonal-metric kernel from contiguous ``y`` and ``s`` (G, 4) into ``out`` (may be ``y``)."""
    lam64 = lam.detach().to(torch.float64).contiguous()
    fn = getattr(library(), f"torchprox_prox_nm_metric_{_SUFFIX[y.dtype]}")
    fn(y.data_ptr(), s.data_ptr(), out.data_ptr(), y.shape[0], n, lam64.data_ptr(), torch.get_num_threads())


@torch.library.custom_op("torchprox::project_nm4_cpu", mutates_args=(), device_types="cpu")
def project_nm4_cpu(groups: Tensor, n: int) -> Tensor:
    """argmin_w ½‖w − y‖² s.t. ≤ n nonzeros in each row of ``groups`` (G, 4): y on the top-n |y|, 0 elsewhere."""
    y = groups.contiguous()
    out = torch.empty_like(y)
    getattr(library(), f"torchprox_project_nm4_{_SUFFIX[y.dtype]}")(
        y.data_ptr(), out.data_ptr(), y.shape[0], n, torch.get_num_threads())
    return out


@project_nm4_cpu.register_fake
def _(groups: Tensor, n: int) -> Tensor:
    return torch.empty_like(groups)


@torch.library.custom_op("torchprox::nm_mask_cpu", mutates_args=(), device_types="cpu")
def nm_mask_cpu(scores: Tensor, n: int, m: int) -> Tensor:
    """Boolean (G, m) mask of the top-n of every row of ``scores`` (G, m); ties: lower index wins."""
    s = scores.contiguous()
    mask = torch.empty(s.shape, dtype=torch.bool)
    fn = getattr(library(), f"torchprox_nm_mask_{_SUFFIX[s.dtype]}")
    fn(s.data_ptr(), mask.data_ptr(), s.shape[0], n, m, torch.get_num_threads())
    return mask


@nm_mask_cpu.register_fake
def _(scores: Tensor, n: int, m: int) -> Tensor:
    return torch.empty(scores.shape, dtype=torch.bool, device=scores.device)
