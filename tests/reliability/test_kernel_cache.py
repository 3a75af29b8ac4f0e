"""A corrupted, truncated or foreign kernel in the cache: a one-line warning and a rebuild, never a crash.

The rebuilds use a stand-in "compiler" that copies the library built for this session (the real build takes
about 30 s), so every case runs in well under a second, except the truncated file, whose old failure was a
SIGBUS that killed the process: that case runs in a subprocess.
"""
import _ctypes
import hashlib
import logging
import os
import shutil
import signal
import stat
import subprocess
import sys
import time
from pathlib import Path

import pytest
import torch

from torchprox.prox import _native, nm_mask

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def kernel_so():
    """The path of a complete kernel library built for the current source (the session's cache)."""
    if os.environ.get("TORCHPROX_NATIVE", "1") == "0" or _native.library() is None:
        pytest.skip("no C++ compiler: fused kernel unavailable")
    return Path(_native.library()._name)


def _script(path: Path, body: str) -> str:
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return str(path)


@pytest.fixture
def cache(tmp_path, monkeypatch, kernel_so):
    """A fresh TORCHPROX_CACHE whose "compiler" copies the real library to its ``-o`` argument."""
    monkeypatch.setenv("TORCHPROX_CACHE", str(tmp_path / "cache"))
    monkeypatch.delenv("TORCHPROX_NATIVE", raising=False)
    cxx = _script(tmp_path / "fake-cxx", f'for a; do out=$a; done\ncp "{kernel_so}" "$out"\n')
    monkeypatch.setenv("CXX", cxx)
    monkeypatch.setattr(_native, "_LIB", False)
    target = _native._build(cxx)
    monkeypatch.setattr(_native, "_LIB", False)
    return target


def _digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def _reload(monkeypatch):
    monkeypatch.setattr(_native, "_LIB", False)
    return _native.library()


def _assert_rebuilt(target: Path, lib, caplog):
    assert lib is not None and Path(lib._name) == target
    assert (target.parent / (target.name + ".sha256")).read_text().strip() == _digest(target)
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1 and "rebuilding" in warnings[0] and "\n" not in warnings[0], warnings
    mask = nm_mask(torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 8), 2, 4)
    assert mask[0].tolist() == [False, True, False, True]


def test_complete_build_writes_its_hash_and_loads_silently(cache, monkeypatch, caplog):
    assert (cache.parent / (cache.name + ".sha256")).read_text().strip() == _digest(cache)
    with caplog.at_level(logging.WARNING, logger=_native.__name__):
        lib = _reload(monkeypatch)
    assert lib is not None and not caplog.records
    assert not [p for p in cache.parent.iterdir() if p.is_dir()]  # no temporary build folder left


@pytest.mark.parametrize("case", ["garbage", "unrelated_so", "unrelated_so_with_its_hash", "no_hash", "wrong_hash"])
def test_bad_cache_entry_is_rebuilt_with_one_warning(cache, monkeypatch, caplog, case):
    digest = cache.parent / (cache.name + ".sha256")
    if case == "garbage":
        cache.write_bytes(os.urandom(4096))
    elif case.startswith("unrelated_so"):  # a valid shared object without the kernel's symbols
        shutil.copyfile(_ctypes.__file__, cache)
        if case == "unrelated_so_with_its_hash":
            digest.write_text(_digest(cache) + "\n")
    elif case == "no_hash":
        digest.unlink()
    else:
        digest.write_text("0" * 64 + "\n")
    with caplog.at_level(logging.WARNING, logger=_native.__name__):
        lib = _reload(monkeypatch)
    _assert_rebuilt(cache, lib, caplog)


def test_truncated_kernel_is_rebuilt_not_a_crash(cache):
    # Loading a truncated library used to end the process with SIGBUS ("Bus error", exit 135), whatever it ran.
    data = cache.read_bytes()
    cache.write_bytes(data[: len(data) // 2])
    code = (
        "import torch; from torchprox.prox import _native, nm_mask\n"
        "print(nm_mask(torch.tensor([[0.0, 3.0, 1.0, 2.0]] * 8), 2, 4)[0].tolist())\n"
        "print(_native.library() is not None)\n"
    )
    env = {**os.environ, "PYTHONPATH": str(ROOT)}
    run = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True, timeout=120)
    assert run.returncode == 0, (run.returncode, run.stderr[-2000:])
    assert run.stdout.split() == ["[False,", "True,", "False,", "True]", "True"]
    assert "rebuilding" in run.stderr
    assert cache.read_bytes() == data


def _dead_pid() -> int:
    proc = subprocess.Popen(["true"])
    proc.wait()
    return proc.pid


def test_stale_build_folders_of_dead_processes_are_removed(cache, monkeypatch):
    stale = cache.parent / f".build-{_dead_pid()}-abc"
    live = cache.parent / f".build-{os.getppid()}-def"  # a running process's build: kept
    for folder in (stale, live):
        folder.mkdir()
        (folder / "partial.so").write_bytes(b"\x7fELF")
    cache.unlink()  # the next load builds, and cleans up first
    assert _reload(monkeypatch) is not None
    assert not stale.exists() and live.exists()


def _running(pid: int) -> bool:
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
    except (OSError, IndexError):
        return False
    return state not in ("Z", "X")


@pytest.mark.skipif(not Path("/proc").is_dir(), reason="needs /proc to watch the processes")
def test_compiler_does_not_outlive_a_killed_builder(tmp_path):
    # A "compiler" that starts a child of its own (as g++ starts cc1plus) and runs for a minute: killing the
    # building process with SIGKILL must take both down.
    pids = tmp_path / "pids"
    cxx = _script(tmp_path / "slow-cxx", f'sleep 60 &\necho $$ $! > "{pids}.tmp"\nmv "{pids}.tmp" "{pids}"\nwait\n')
    code = "from torchprox.prox import _native; _native._build(%r)" % cxx
    env = {**os.environ, "PYTHONPATH": str(ROOT), "TORCHPROX_CACHE": str(tmp_path / "cache")}
    builder = subprocess.Popen([sys.executable, "-c", code], env=env)
    try:
        deadline = time.monotonic() + 60
        while not pids.exists():
            assert builder.poll() is None and time.monotonic() < deadline, "the stand-in compiler never started"
            time.sleep(0.05)
        compiler = [int(p) for p in pids.read_text().split()]
        assert all(_running(p) for p in compiler)
        os.kill(builder.pid, signal.SIGKILL)
        builder.wait()
        deadline = time.monotonic() + 5
        while any(_running(p) for p in compiler) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not [p for p in compiler if _running(p)], "the compiler kept running after its builder was killed"
    finally:
        if builder.poll() is None:
            builder.kill()
        for p in [int(p) for p in pids.read_text().split()] if pids.exists() else []:
            if _running(p):
                os.kill(p, signal.SIGKILL)
