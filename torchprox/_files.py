"""Files written whole or not at all, and the cache root: a base module below every layer (stdlib only).

- `atomic_write`: a file appears complete at its path or not at all (temporary sibling, fsync,
  ``os.replace``, fsync of the directory; the temporary file is removed on any failure).
- `replace_dir`: a complete directory renamed over another, the old one moved back if that fails.
- `cache_root`: ``$TORCHPROX_CACHE`` (``~`` expanded) or ``~/.cache/torchprox``.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import re
import shutil
from collections.abc import Callable, Iterator
from pathlib import Path

__all__ = ["cache_root", "fsync", "fsync_tree", "atomic_write", "atomic_write_text", "replace_dir", "sha256_file",
           "pid_alive", "remove_stale_temporaries", "output_lock"]

logger = logging.getLogger(__name__)


def cache_root() -> Path:
    """The root folder of torchprox's caches: ``$TORCHPROX_CACHE`` when set and non-empty (``~`` expanded),
    else ``~/.cache/torchprox``.

    Examples:
        >>> from unittest import mock
        >>> with mock.patch.dict("os.environ", {"TORCHPROX_CACHE": "~/tp-cache", "HOME": "/home/me"}):
        ...     print(cache_root())
        /home/me/tp-cache
    """
    root = os.environ.get("TORCHPROX_CACHE")
    return Path(root).expanduser() if root else Path.home() / ".cache" / "torchprox"


def fsync(path) -> None:
    """fsync a file or a directory's entries (skipped where a directory cannot be opened, e.g. Windows)."""
    try:
        fd = os.open(path, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(path) -> None:
    """fsync every file under the directory ``path``, then every directory, deepest first."""
    for root, _dirs, files in os.walk(path, topdown=False):
        for name in files:
            fsync(os.path.join(root, name))
        fsync(root)


def atomic_write(path, write: Callable[[Path], None]) -> None:
    """Write the file ``path`` atomically: ``write(tmp)`` fills ``.{name}.tmp-PID`` in the same directory,
    which is fsynced and renamed over ``path`` (``os.replace``); the directory is then fsynced. On any
    failure the temporary file is removed and ``path`` is as it was.

    Examples:
        >>> import tempfile
        >>> from pathlib import Path
        >>> path = Path(tempfile.mkdtemp()) / "note.txt"
        >>> atomic_write(path, lambda tmp: tmp.write_text("done"))
        >>> path.read_text(), [p.name for p in path.parent.iterdir()]
        ('done', ['note.txt'])
    """
    path = Path(path)
    tmp = path.with_name(f".{path.name}.tmp-{os.getpid()}")
    try:
        write(tmp)
        fsync(tmp)
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    fsync(path.parent)


def atomic_write_text(path, text: str) -> None:
    """`atomic_write` of a UTF-8 text."""
    atomic_write(path, lambda tmp: tmp.write_text(text, encoding="utf-8"))


def replace_dir(tmp: Path, out: Path) -> None:
    """Rename the complete directory ``tmp`` to ``out``; an existing ``out`` is moved aside to
    ``.{out}.old-PID`` first and moved back if the rename fails, else deleted. The parent is fsynced."""
    if not (out.exists() or out.is_symlink()):
        os.replace(tmp, out)  # fails (ENOTEMPTY) if some other program created a non-empty out meanwhile
    else:
        old = out.with_name(f".{out.name}.old-{os.getpid()}")
        shutil.rmtree(old, ignore_errors=True)
        os.replace(out, old)
        try:
            os.replace(tmp, out)
        except BaseException:
            os.replace(old, out)
            raise
        fsync(out.parent)
        shutil.rmtree(old)
    fsync(out.parent)


def sha256_file(path, chunk: int = 1 << 23) -> str:
    """Hex sha256 of a file's bytes, read in 8 MiB chunks."""
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def pid_alive(pid: int) -> bool:
    """Whether a process ``pid`` exists on this machine (``os.kill(pid, 0)``)."""
    if pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except (PermissionError, OSError):
        return True
    return True


#: ``.{name}.{kind}-{pid}[-{hex}]``: what an atomic write leaves next to ``name`` while it runs.
_TEMPORARY = re.compile(r"^\.(?P<name>.+)\.(?P<kind>tmp|old|stale|probe)-(?P<pid>\d+)(?:-[0-9a-f]+)?$")


def remove_stale_temporaries(path) -> list[str]:
    """Clean what killed processes left next to ``path`` (a file or directory written atomically here).

    Only entries ``.{name}.{kind}-PID`` whose PID is no running process are touched: ``tmp`` (an unfinished
    write), ``stale``, ``probe`` are deleted; ``old`` (the previous ``path``, moved aside during a replacement)
    is moved back if ``path`` is missing (the newest one, when there are several), else deleted. Each action
    is logged as a warning and returned as a line.
    """
    path = Path(path)
    parent = path.parent
    if not parent.is_dir():
        return []
    dead: list[tuple[str, Path]] = []
    for entry in parent.iterdir():
        match = _TEMPORARY.match(entry.name)
        if match and match["name"] == path.name and not pid_alive(int(match["pid"])):
            dead.append((match["kind"], entry))
    done = []
    olds = sorted((e for k, e in dead if k == "old"), key=lambda e: e.lstat().st_mtime, reverse=True)
    if olds and not (path.exists() or path.is_symlink()):
        os.replace(olds.pop(0), path)
        done.append(f"restored {path} from a save that was interrupted")
    for entry in olds + [e for k, e in dead if k != "old"]:
        if entry.is_dir() and not entry.is_symlink():
            shutil.rmtree(entry, ignore_errors=True)
        else:
            entry.unlink(missing_ok=True)
        done.append(f"removed {entry}, left by a process that no longer runs")
    for line in done:
        logger.warning("%s", line)
    return done


_LOCKS_HELD: dict[str, int] = {}


@contextlib.contextmanager
def output_lock(out) -> Iterator[None]:
    """Hold the exclusive right to write ``out``: ``flock`` on ``.{out}.lock`` next to it (the parent must
    exist). The OS releases it if the process dies; the lock file is removed on exit. Re-entrant within a
    process; a no-op where ``fcntl`` is missing (Windows).

    Raises:
        FileExistsError: another process holds it.
    """
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        yield
        return
    out = Path(out).expanduser().absolute()
    key = str(out)
    if key in _LOCKS_HELD:
        _LOCKS_HELD[key] += 1
        try:
            yield
        finally:
            _LOCKS_HELD[key] -= 1
        return
    lock = out.with_name(f".{out.name}.lock")
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            os.close(fd)
            raise FileExistsError(f"another process is writing {out} (it holds {lock}); wait for it to finish or "
                                  "choose another output") from None
        try:
            current = os.stat(lock).st_ino
        except FileNotFoundError:
            current = None
        if current == os.fstat(fd).st_ino:
            break
        os.close(fd)  # its previous holder removed the file after we opened it: lock the new one
    _LOCKS_HELD[key] = 1
    try:
        yield
    finally:
        del _LOCKS_HELD[key]
        lock.unlink(missing_ok=True)
        os.close(fd)
