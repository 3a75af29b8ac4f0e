"""The fused CPU kernels of ``csrc/nm_cpu.cpp``, built once with the system C++ compiler and cached.

The first call compiles the kernel (about 30 s: every (n, m, dtype)
specialisation of the m = 4 vector paths, the general block solver and its descent engine) into
``$TORCHPROX_CACHE/kernels/`` (default ``~/.cache/torchprox/kernels``), named by a hash of the source and the
compiler command, written atomically with a sidecar holding its sha256 (written only after a complete build).
Later processes load the cached library at once, after checking it against that hash (before dlopen: a
truncated library would kill the process) and checking that it has every symbol the operators call; a
library failing either check is rebuilt, with a one-line warning. The compiler runs under a watchdog that
kills it if the building process dies, and the temporary build folders of dead processes are removed. Without a compiler
(or with ``TORCHPROX_NATIVE=0``) [`library`][torchprox.prox._native.library] returns None and the operators use their plain-torch path,
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
import sys
import tempfile
import threading
from pathlib import Path

import torch
from torch import Tensor

from .._files import cache_root

logger = logging.getLogger(__name__)

_CSRC = Path(__file__).with_name("csrc")
_SOURCE = _CSRC / "nm_cpu.cpp"  # the one translation unit; it includes the headers of csrc/
# -fno-trapping-math: the kernels never read floating-point exception flags, and without it GCC may not turn the
# lane loops' selects (x = c ? a * b : 0) into vector blends where the CPU has no masked vector operations
# (AVX2). The outputs are the same bits with and without it, except the 3:4 diagonal-metric kernel's, 1-2 ulp
# apart in some groups (docs/benchmarks.md, Kernel design notes).
_FLAGS = ["-O3", "-march=native", "-fno-math-errno", "-fno-trapping-math", "-std=c++17", "-fPIC", "-shared", "-fopenmp"]


def _defines() -> list[str]:
    """The iteration caps and tolerance of nm._KERNEL_ITERATIONS as -D defines (TP_NEWTON_F32, TP_TOL_F64, ...;
    the tolerances as exact hexadecimal literals of the value in its dtype): the one definition both kernels use."""
    from .nm import _KERNEL_ITERATIONS  # (nm imports this module)

    out = []
    for dtype, suffix in ((torch.float32, "F32"), (torch.float64, "F64")):
        it = _KERNEL_ITERATIONS[dtype]
        tol = torch.tensor(it["tol"], dtype=dtype).item().hex()  # (exact in dtype)
        out += [f"-DTP_NEWTON_{suffix}={it['newton']}", f"-DTP_SWEEPS_{suffix}={it['sweeps']}", f"-DTP_TOL_{suffix}={tol}"]
    return out
_LOCK = threading.Lock()
_LIB: ctypes.CDLL | None | bool = False  # False: not tried yet


def cache_dir() -> Path:
    """Where the compiled kernels are cached: ``kernels/`` under torchprox's one cache root."""
    return cache_root() / "kernels"


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


# Every symbol the operators below call: a cached library lacking one is not this kernel.
_SYMBOLS = {
    "torchprox_prox_nm_f32": "prox", "torchprox_prox_nm_f64": "prox",
    "torchprox_prox_nm_metric_f32": "metric", "torchprox_prox_nm_metric_f64": "metric",
    "torchprox_project_nm4_f32": "project", "torchprox_project_nm4_f64": "project",
    "torchprox_nm_mask_f32": "mask", "torchprox_nm_mask_f64": "mask",
    "torchprox_max_m": "max_m",
}

# Runs the compiler in its own process group and kills that whole group (the compiler driver and the
# compilers it starts) as soon as its stdin, a pipe the building process holds open, reaches end of file: when
# the builder exits or is killed (even with SIGKILL), no orphaned compiler keeps running.
_WATCHDOG = """
import os, signal, subprocess, sys, threading
proc = subprocess.Popen(sys.argv[1:], stdin=subprocess.DEVNULL)
def watch():
    sys.stdin.buffer.read()
    if proc.poll() is None:
        os.killpg(0, signal.SIGKILL)
threading.Thread(target=watch, daemon=True).start()
os._exit(proc.wait())  # (not sys.exit: the watcher thread is blocked in a read)
"""


class CorruptKernel(Exception):
    """A cached kernel file failed its content check (hash or symbols)."""


def _sha256(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _digest_path(target: Path) -> Path:
    """The sidecar holding the sha256 of ``target``, written only after a complete build."""
    return target.with_name(target.name + ".sha256")


def _check_digest(target: Path) -> None:
    """Raise [`CorruptKernel`][torchprox.prox._native.CorruptKernel] unless ``target``'s sha256 equals its sidecar's (checked before dlopen:
    loading a truncated library can kill the process with SIGBUS)."""
    try:
        expected = _digest_path(target).read_text().strip()
    except OSError:
        raise CorruptKernel(f"{target.name} has no readable content hash") from None
    if _sha256(target) != expected:
        raise CorruptKernel(f"{target.name} does not match its content hash (truncated or replaced)")


def _remove_stale_builds(folder: Path) -> None:
    """Delete the temporary build folders (``.build-PID-*``) of processes that no longer run."""
    for tmp in folder.glob(".build-*-*"):
        try:
            pid = int(tmp.name.split("-")[1])
        except ValueError:
            continue
        if pid != os.getpid() and not _alive(pid):
            shutil.rmtree(tmp, ignore_errors=True)


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's live process
        return True
    return True


def _compile(cmd: list[str]) -> None:
    """Run the compiler ``cmd`` under [`_WATCHDOG`][torchprox.prox._native._WATCHDOG]; raise CalledProcessError (with its stderr) on failure."""
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen([sys.executable, "-c", _WATCHDOG, *cmd], stdin=subprocess.PIPE,
                                stdout=subprocess.DEVNULL, stderr=err, start_new_session=True)
        try:
            code = proc.wait()
        finally:
            proc.stdin.close()  # (if we are interrupted, the watchdog kills the compiler)
            proc.wait()
        if code:
            err.seek(0)
            raise subprocess.CalledProcessError(code, cmd, stderr=err.read().decode(errors="replace"))


def _source_bytes() -> bytes:
    """Every file of ``csrc/`` (the translation unit and its headers), each with its name: the cache key's
    source part, so that a change to any header rebuilds the kernel."""
    files = sorted(p for p in _CSRC.iterdir() if p.suffix in (".cpp", ".h"))
    return b"".join(p.name.encode() + b"\0" + p.read_bytes() + b"\0" for p in files)


def _build(cxx: str, force: bool = False) -> Path:
    """The cached library for this source, compiler and CPU: built (atomically, the sha256 sidecar written only
    after a complete build) unless it exists; with ``force`` rebuilt whatever exists."""
    flags = [*_FLAGS, *_defines()]
    key = hashlib.sha256(_source_bytes() + " ".join([cxx, *flags]).encode() + _cpu_id()).hexdigest()[:16]
    target = cache_dir() / f"nm_cpu-{key}.so"
    if target.exists() and not force:
        return target
    target.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_builds(target.parent)
    tmp = Path(tempfile.mkdtemp(prefix=f".build-{os.getpid()}-", dir=target.parent))
    try:
        out = tmp / target.name
        _compile([cxx, *flags, str(_SOURCE), "-o", str(out)])
        digest = tmp / _digest_path(target).name
        digest.write_text(_sha256(out) + "\n")
        os.replace(out, target)  # atomic: concurrent builders each write a whole file
        os.replace(digest, _digest_path(target))
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    logger.info("torchprox: built the fused N:M kernel into %s", target)
    return target


def _load(target: Path) -> ctypes.CDLL:
    """dlopen ``target`` after its content check, with every symbol of [`_SYMBOLS`][torchprox.prox._native._SYMBOLS] typed; a library
    lacking one is closed again and [`CorruptKernel`][torchprox.prox._native.CorruptKernel] raised."""
    _check_digest(target)
    lib = ctypes.CDLL(str(target))
    missing = [name for name in _SYMBOLS if not hasattr(lib, name)]
    if missing:
        _dlclose(lib)
        raise CorruptKernel(f"{target.name} lacks the symbol {missing[0]} (not this kernel)")
    i64, i32, ptr = ctypes.c_int64, ctypes.c_int, ctypes.c_void_p
    argtypes = {
        "prox": [ptr, ptr, i64, i32, i32, ptr, i32], "metric": [ptr, ptr, ptr, i64, i32, ptr, i32],
        "project": [ptr, ptr, i64, i32, i32], "mask": [ptr, ptr, i64, i32, i32, i32],
    }
    for name, kind in _SYMBOLS.items():
        if kind in argtypes:
            getattr(lib, name).argtypes = argtypes[kind]
    lib.torchprox_max_m.restype = i32
    return lib


def _dlclose(lib: ctypes.CDLL) -> None:
    """Unload ``lib`` so that a rebuilt file at the same path is really loaded (dlopen reuses a loaded name)."""
    try:
        from _ctypes import dlclose
    except ImportError:  # (not on Windows; there a rebuild is loaded by the next process)
        return
    dlclose(lib._handle)


def library() -> ctypes.CDLL | None:
    """The loaded kernel library, or None when it is disabled or cannot be built (logged once).

    The cached file is used only if its sha256 matches the sidecar written after its build and it has every
    symbol the operators call; otherwise a one-line warning is logged and the kernel rebuilt (atomically).
    """
    global _LIB
    if _LIB is not False:
        return _LIB
    with _LOCK:
        if _LIB is not False:
            return _LIB
        lib = None
        if os.environ.get("TORCHPROX_NATIVE", "1") != "0" and (cxx := _compiler()) is not None:
            try:
                try:
                    lib = _load(_build(cxx))
                except CorruptKernel as err:
                    logger.warning("torchprox: cached N:M kernel rejected (%s); rebuilding it", err)
                    lib = _load(_build(cxx, force=True))
            except (OSError, subprocess.CalledProcessError, CorruptKernel) as err:
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
    """In-place [`prox_nm_cpu`][torchprox.prox._native.prox_nm_cpu] on a contiguous ``groups`` (G, m)."""
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
    """In-place [`prox_nm_metric_cpu`][torchprox.prox._native.prox_nm_metric_cpu] on a contiguous ``groups`` (G, 4): no output tensor, no copy."""
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
