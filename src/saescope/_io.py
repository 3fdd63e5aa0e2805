"""Crash-safe file writes shared by every layer: write a temp file beside the target, fsync, then os.replace.

    atomic_write_bytes(path, write, durable=True)   write(fileobj) fills the temp file
    atomic_write_path(path, write, durable=True)    write(temp_path) fills it (libraries that want a path)
    atomic_write_text(path, text, durable=True) / atomic_write_json(path, obj, indent=2)
    disk_errors(path)                     context manager: a full disk inside becomes DiskFullError naming path
    disk_full_cause(exc) -> OSError|None  the disk-full error behind ``exc`` (ENOSPC, EFBIG, EDQUOT), if any

A reader never sees a half-written file; a crash leaves at most a ``.<name>.*.tmp`` beside it. Files get the
mode the user's umask allows (``0o666 & ~umask``, like ``open``), never mkstemp's 0600. A full disk, a file
over the size limit or a full quota is a ``DiskFullError`` (one line naming the file): the temp file is
removed and the previous file is left as it was. ``durable=False`` skips the fsync (many small files that
can be regenerated, e.g. dashboard pages: the replace is still atomic, only a power cut may lose them).
"""
from __future__ import annotations

import errno
import json
import os
import re
import secrets
from contextlib import contextmanager
from pathlib import Path

from .errors import DiskFullError, SaescopeError

DISK_FULL_ERRNOS = frozenset(e for e in (errno.ENOSPC, errno.EFBIG, getattr(errno, "EDQUOT", None)) if e)
# SQLite result codes for a refused write: SQLITE_FULL, SQLITE_IOERR_WRITE, SQLITE_IOERR_FSYNC, SQLITE_IOERR_TRUNCATE
_SQLITE_WRITE_ERRORS = frozenset({13, 778, 1034, 1546})
_RUST_OS_ERROR = re.compile(r"\(os error (\d+)\)")   # safetensors' I/O errors: "... (os error 28)"


def _new_temp(path: Path) -> tuple[str, int]:
    """An empty temp file beside ``path`` created with mode 0o666 (O_EXCL: never an existing file), and the mode
    the kernel gave it (0o666 & ~umask): read back rather than from os.umask(), which is not thread-safe."""
    for _ in range(100):
        tmp = str(path.with_name(f".{path.name}.{secrets.token_hex(4)}.tmp"))
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | getattr(os, "O_CLOEXEC", 0), 0o666)
        except FileExistsError:
            continue
        try:
            return tmp, os.fstat(fd).st_mode & 0o7777
        finally:
            os.close(fd)
    raise FileExistsError(errno.EEXIST, "no free temporary file name", str(path))


def _fsync(tmp: str) -> None:
    fd = os.open(tmp, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def atomic_write_path(path: Path, write, durable: bool = True) -> None:
    """Call ``write(temp_path)`` (it writes the whole file there), fsync, then replace ``path`` with it."""
    path = Path(path)
    with disk_errors(path):
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp, mode = _new_temp(path)
        try:
            write(tmp)
            if os.stat(tmp).st_mode & 0o7777 != mode:   # a library recreated it (safetensors: 0600)
                os.chmod(tmp, mode)
            if durable:
                _fsync(tmp)
            os.replace(tmp, path)
        except BaseException:
            try:
                os.unlink(tmp)
            except OSError:
                pass
            raise


class _Writer:
    """The temp file as a write callback sees it: every write goes through Python's ``file.write``, so a full
    disk is an OSError with its errno (numpy's fast path for real files says only "N requested and M written")."""

    def __init__(self, f):
        self._f = f

    def write(self, data) -> int:
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)


def atomic_write_bytes(path: Path, write, durable: bool = True) -> None:
    """Call ``write(fileobj)`` on a temp file beside ``path``, then replace ``path`` with it."""
    def fill(tmp: str) -> None:
        with open(tmp, "wb") as f:
            write(_Writer(f))
            f.flush()
            if durable:
                os.fsync(f.fileno())

    atomic_write_path(path, fill, durable=False)


def atomic_write_text(path: Path, text: str, durable: bool = True) -> None:
    atomic_write_bytes(path, lambda f: f.write(text.encode("utf-8")), durable)


def atomic_write_json(path: Path, obj, indent: int | None = 2) -> None:
    atomic_write_text(path, json.dumps(obj, indent=indent))


def publish(tmp: Path, path: Path) -> None:
    """Move a finished temp file (or directory) ``tmp`` written beside ``path`` onto it: flushed to disk first,
    so a crash leaves either the old ``path`` or the complete new one. For writers that need a real file to
    write into (SQLite, directory trees); everything else uses ``atomic_write_*``."""
    tmp, path = Path(tmp), Path(path)
    if tmp.is_file():
        with open(tmp, "rb") as f:
            os.fsync(f.fileno())
    os.replace(tmp, path)
    try:
        fd = os.open(path.parent, os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def disk_full_cause(exc: BaseException | None) -> OSError | None:
    """The disk-full ``OSError`` behind ``exc`` (itself, its ``__cause__``/``__context__`` chain, a Rust
    "(os error 28)" message, or an SQLite write error), else None. Libraries wrap the OSError: torch.save raises
    a RuntimeError whose context is the OSError, safetensors a SafetensorError naming the os error."""
    seen = set()
    while exc is not None and id(exc) not in seen and len(seen) < 20:
        seen.add(id(exc))
        if isinstance(exc, OSError) and exc.errno in DISK_FULL_ERRNOS:
            return exc
        m = _RUST_OS_ERROR.search(str(exc)) if not isinstance(exc, SaescopeError) else None
        if m and int(m.group(1)) in DISK_FULL_ERRNOS:
            return OSError(int(m.group(1)), os.strerror(int(m.group(1))))
        if getattr(exc, "sqlite_errorcode", None) in _SQLITE_WRITE_ERRORS:
            return OSError(errno.EIO, str(exc))
        exc = exc.__cause__ or exc.__context__
    return None


def disk_full_message(path, cause: OSError) -> str:
    reason = cause.strerror or str(cause)
    return f"cannot write {path}: {reason} (disk full or file-size limit?); free some space and run again"


@contextmanager
def disk_errors(path):
    """Inside, a full disk (see ``disk_full_cause``) is re-raised as ``DiskFullError`` naming ``path``."""
    try:
        yield
    except SaescopeError:
        raise
    except Exception as exc:
        cause = disk_full_cause(exc)
        if cause is None:
            raise
        raise DiskFullError(disk_full_message(path, cause)) from None


def append_durable(path: Path, data: bytes, keep: int) -> int:
    """Cut ``path`` to its first ``keep`` bytes (dropping a torn earlier append), append ``data``, fsync.

    For append-only logs whose committed length is recorded elsewhere (written after this returns): a crash
    leaves at most bytes beyond the recorded length, which the next call cuts away. Returns the new length.
    """
    path = Path(path)
    with disk_errors(path):
        fd = os.open(str(path), os.O_WRONLY | os.O_CREAT | getattr(os, "O_CLOEXEC", 0), 0o666)
        try:
            os.ftruncate(fd, keep)
            os.lseek(fd, keep, os.SEEK_SET)
            try:
                view = memoryview(data)
                while view:
                    view = view[os.write(fd, view):]
                os.fsync(fd)
            except BaseException:
                try:
                    os.ftruncate(fd, keep)   # leave no partial append behind (best effort)
                except OSError:
                    pass
                raise
        finally:
            os.close(fd)
    return keep + len(data)
