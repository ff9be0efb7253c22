"""Files: atomic writes with ordinary permissions, run-folder locks, OS errors in one line.

Every file vaelab writes goes through ``atomic_write`` (or ``atomic_path`` for
writers that want a path): the bytes go to a temporary file in the same folder, which
is flushed to disk, given the permissions a plain ``open()`` would give (0666 less the
umask, not mkstemp's 0600) and renamed over the target. A crash or a full disk leaves
the old file or the new one, never a torn one, and no temporary file behind.
"""

from __future__ import annotations

import errno
import json
import os
import re
import shutil
import socket
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any


class FileError(RuntimeError):
    """A file could not be written or a folder not used; the message says what to do."""


def _umask() -> int:
    mask = os.umask(0o022)
    os.umask(mask)
    return mask


def file_mode() -> int:
    """The mode ``open(path, "w")`` would create a file with: 0666 less the umask."""
    return 0o666 & ~_umask()


def dir_mode() -> int:
    """The mode ``mkdir`` would create a folder with: 0777 less the umask."""
    return 0o777 & ~_umask()


def describe(e: OSError, doing: str) -> str:
    """One line for an OS error: what failed, on which path, and what to do."""
    where = f" {e.filename}" if e.filename else ""
    hint = {
        errno.ENOSPC: "the disk is full; free space or write elsewhere",
        errno.EDQUOT: "the disk quota is exceeded; free space or write elsewhere",
        errno.EACCES: "permission denied; choose a folder you can write to",
        errno.EPERM: "permission denied; choose a folder you can write to",
        errno.EROFS: "the file system is read-only; choose another folder",
        errno.ENOENT: "a folder on the way does not exist (or was removed while vaelab ran)",
        errno.EEXIST: "a file of that name is in the way",
        errno.ENOTDIR: "a part of the path is a file, not a folder",
        errno.EISDIR: "that path is a folder, not a file",
    }.get(e.errno or 0, e.strerror or str(e))
    return f"{doing}{where}: {hint}"


def ensure_dir(path: str | Path, what: str = "folder") -> Path:
    """Create folder `path` (and its parents) or raise a one-line FileError."""
    path = Path(path)
    if path.exists() and not path.is_dir():
        raise FileError(f"{what} {path} is a file, not a folder; choose another path")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise FileError(describe(e, f"cannot create {what}")) from None
    if not os.access(path, os.W_OK | os.X_OK):
        raise FileError(f"cannot write to {what} {path}: permission denied; choose a folder you can write to")
    return path


def slug(name: str) -> str:
    """A data set's name as part of a file name: path separators and odd characters as ``_``."""
    return re.sub(r"[^\w.+-]+", "_", name).strip("._")[:60] or "data"


def settings_tag(settings: dict[str, Any], defaults: dict[str, Any]) -> str:
    """The settings that differ from `defaults`, as a file-name part: ``-k10-n500-test``."""
    parts = []
    for key, v in settings.items():
        if v is None or v == defaults.get(key) or v == ():
            continue
        text = "+".join(map(str, v)) if isinstance(v, (list, tuple)) else str(v)
        parts.append(text if key in ("split", "scores", "metrics") else f"{key}{text}")
    return "".join(f"-{slug(p)}" for p in parts)


def writable(path: str | Path, what: str = "output file") -> Path:
    """Check, before any work, that file `path` can be written: not a folder, in a folder that
    exists (created here) and can be written to; else a one-line FileError."""
    path = Path(path)
    if path.is_dir():
        raise FileError(f"{what} {path} is a folder; name a file")
    ensure_dir(path.parent, "output folder")
    return path


@contextmanager
def atomic_path(path: str | Path, suffix: str = "") -> Iterator[Path]:
    """Yield a temporary path beside `path`; when the block ends without an error, the
    file written there is synced, given ordinary permissions and renamed to `path`.
    On any error the temporary file is removed and the error becomes a FileError."""
    path = Path(path)
    if path.is_dir():
        raise FileError(f"cannot write {path}: that path is a folder, not a file")
    try:
        fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix or ".tmp")
        os.close(fd)
    except OSError as e:
        raise FileError(describe(e, f"cannot write {path}")) from None
    try:
        yield Path(tmp)
        with open(tmp, "rb+") as fh:
            os.fsync(fh.fileno())
        os.chmod(tmp, file_mode())
        os.replace(tmp, path)
    except OSError as e:
        raise FileError(describe(e, f"cannot write {path}")) from None
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def atomic_write(path: str | Path, data: bytes | str) -> Path:
    """Write `data` to `path` atomically (see module docstring)."""
    with atomic_path(path) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)
    return Path(path)


def write_json(path: str | Path, obj: Any, indent: int | None = 2) -> Path:
    """Write `obj` as JSON to `path` atomically (a reader sees the old file or the new, never half):
    indented for people to read, or with `indent` None on one line without spaces (large indexes)."""
    return atomic_write(path, json.dumps(obj, indent=indent, separators=None if indent else (",", ":")) + "\n")


# ----------------------------------------------------------------------------- locks


class RunLocked(FileError):
    """Another live process holds the run folder."""


class RunLock:
    """An exclusive lock on a run folder, held while a process trains in it.

    ``RUN/.lock`` is locked with ``flock``, which the kernel releases when the process
    ends in any way (kill -9 included), so a lock left by a dead process is simply taken
    over; the file records the holder's pid, host and start time for the message.
    """

    def __init__(self, run_dir: str | Path) -> None:
        self.path = Path(run_dir) / ".lock"
        self.fd: int | None = None

    def __enter__(self) -> RunLock:
        import fcntl

        try:
            fd = os.open(self.path, os.O_RDWR | os.O_CREAT, file_mode())
        except OSError as e:
            raise FileError(describe(e, "cannot create the run lock")) from None
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except OSError:
            holder = os.pread(fd, 4096, 0).decode(errors="replace").strip() or "another process"
            os.close(fd)
            raise RunLocked(f"{self.path.parent} is in use by {holder}; wait for it to finish, stop it, "
                            "or train into another --out") from None
        note = f"pid {os.getpid()} on {socket.gethostname()} since {time.strftime('%Y-%m-%d %H:%M:%S')}"
        os.ftruncate(fd, 0)
        os.pwrite(fd, note.encode(), 0)
        self.fd = fd
        return self

    def __exit__(self, *exc: object) -> None:
        if self.fd is not None:
            os.ftruncate(self.fd, 0)
            os.close(self.fd)  # closing releases the flock
            self.fd = None


def swap_in(tmp: Path, folder: Path) -> None:
    """Replace `folder` by the finished folder `tmp` with two renames; a crash between them
    leaves `folder`.old, which readers take when `folder` is missing (so a crash at any
    instant leaves the old or the new folder whole)."""
    old = folder.with_name(folder.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if folder.exists():
        os.replace(folder, old)
    os.replace(tmp, folder)
    shutil.rmtree(old, ignore_errors=True)
