"""Writing files and folders so that neither a reader nor a crash ever sees half of them.

* :func:`atomic_write_text` / :func:`atomic_write_bytes` / :func:`open_atomic`: the data goes to a
  temporary file in the same folder, is ``fsync``-ed, and is renamed over the target; the folder is
  ``fsync``-ed after the rename. A failure (or a kill) before the rename leaves the old file as it was.
* :func:`staged_directory`: a folder is written as a temporary sibling and then put in place of the
  old one with :func:`replace_directory`, so that a save that fails midway leaves the old folder (a
  checkpoint, an export) complete and loadable.

:func:`replace_directory` swaps the two folders in one step where the system offers it (Linux
``renameat2(RENAME_EXCHANGE)``); elsewhere the old folder is first renamed aside (``.NAME.old``) and
the next :func:`replace_directory` or :func:`recover_directory` of the same target puts it back if a
crash came between the two renames.
"""

from __future__ import annotations

import contextlib
import ctypes
import errno
import os
import secrets
import shutil
from pathlib import Path
from typing import IO, Callable, Iterator, Optional, Union

PathLike = Union[str, os.PathLike]

_AT_FDCWD = -100
_RENAME_EXCHANGE = 2


def fsync_directory(path: PathLike) -> None:
    """Make the entries of folder ``path`` (creations, renames) durable. A no-op where folders cannot be
    opened (Windows)."""
    try:
        fd = os.open(os.fspath(path), os.O_RDONLY)
    except OSError:
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


def fsync_tree(root: PathLike) -> None:
    """``fsync`` every file and folder under ``root`` (``root`` included)."""
    for folder, _, files in os.walk(os.fspath(root)):
        for name in files:
            path = os.path.join(folder, name)
            if os.path.islink(path):
                continue
            with open(path, "rb") as handle:
                os.fsync(handle.fileno())
        fsync_directory(folder)


@contextlib.contextmanager
def open_atomic(path: PathLike, mode: str = "w", encoding: Optional[str] = "utf-8") -> Iterator[IO]:
    """Open a temporary file beside ``path`` for writing; on a clean exit it is flushed, ``fsync``-ed and
    renamed to ``path``. On an exception it is removed and ``path`` is left as it was.

    Args:
        mode: "w" (text) or "wb" (bytes).
    """
    if mode not in ("w", "wb"):
        raise ValueError(f"mode must be 'w' or 'wb', got {mode!r}")
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = _sibling(path, "tmp")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)  # the umask applies, as for open()
    try:
        with os.fdopen(fd, mode, encoding=None if "b" in mode else encoding) as handle:
            yield handle
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fsync_directory(path.parent)


def atomic_write_text(path: PathLike, text: str, encoding: str = "utf-8") -> None:
    """Write ``text`` to ``path`` atomically (see :func:`open_atomic`)."""
    with open_atomic(path, "w", encoding=encoding) as handle:
        handle.write(text)


def atomic_write_bytes(path: PathLike, data: bytes) -> None:
    """Write ``data`` to ``path`` atomically (see :func:`open_atomic`)."""
    with open_atomic(path, "wb") as handle:
        handle.write(data)


def _sibling(path: Path, kind: str) -> Path:
    """A fresh hidden name beside ``path`` (unique per process and call)."""
    return path.with_name(f".{path.name}.{kind}-{os.getpid()}-{secrets.token_hex(4)}")


def _aside(target: Path) -> Path:
    return target.with_name(f".{target.name}.old")


def _exchange(a: Path, b: Path) -> bool:
    """Swap ``a`` and ``b`` in one step (Linux ``renameat2``); False where the system cannot."""
    try:
        renameat2 = ctypes.CDLL(None, use_errno=True).renameat2
    except (AttributeError, OSError):
        return False
    renameat2.argtypes = [ctypes.c_int, ctypes.c_char_p, ctypes.c_int, ctypes.c_char_p, ctypes.c_uint]
    renameat2.restype = ctypes.c_int
    if renameat2(_AT_FDCWD, os.fsencode(a), _AT_FDCWD, os.fsencode(b), _RENAME_EXCHANGE) == 0:
        return True
    code = ctypes.get_errno()
    if code in (errno.EINVAL, errno.ENOSYS, errno.ENOTSUP, errno.EOPNOTSUPP, errno.EPERM):
        return False  # a file system (or kernel) without the exchange
    raise OSError(code, f"cannot exchange '{a}' and '{b}': {os.strerror(code)}")


def recover_directory(target: PathLike) -> None:
    """Put back the old folder a crash left aside (``.NAME.old``) between the two renames of
    :func:`replace_directory`, when ``target`` itself is missing."""
    target = Path(target)
    aside = _aside(target)
    if not target.exists() and aside.is_dir():
        os.replace(aside, target)
        fsync_directory(target.parent)


def replace_directory(staging: PathLike, target: PathLike) -> None:
    """Put the complete folder ``staging`` in place of ``target`` (created or replaced), after making
    every file under ``staging`` durable. ``staging`` must be a sibling of ``target`` (same file system).
    The old content of ``target`` is deleted."""
    staging, target = Path(staging), Path(target)
    recover_directory(target)
    fsync_tree(staging)
    if not target.exists():
        os.replace(staging, target)
        fsync_directory(target.parent)
        return
    if _exchange(staging, target):
        fsync_directory(target.parent)
        shutil.rmtree(staging, ignore_errors=True)  # it holds the old content now
        return
    aside = _aside(target)
    shutil.rmtree(aside, ignore_errors=True)
    os.replace(target, aside)
    os.replace(staging, target)
    fsync_directory(target.parent)
    shutil.rmtree(aside, ignore_errors=True)


def _link_or_copy(src: str, dst: str) -> None:
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


@contextlib.contextmanager
def staged_directory(target: PathLike, keep: Optional[Callable[[str], bool]] = None) -> Iterator[Path]:
    """Yield an empty temporary folder beside ``target``; on a clean exit it replaces ``target``
    (:func:`replace_directory`), on an exception it is deleted and ``target`` stays as it was.

    Args:
        keep: entries of the old ``target`` (by name) for which ``keep(name)`` is true and that the new
            folder does not have are carried over into it (hard links where possible), so that a save
            replaces only its own files in a folder that holds others.
    """
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    recover_directory(target)
    staging = _sibling(target, "staging")
    staging.mkdir()
    try:
        yield staging
        if keep is not None and target.is_dir():
            for entry in target.iterdir():
                if not keep(entry.name) or (staging / entry.name).exists():
                    continue
                if entry.is_dir() and not entry.is_symlink():
                    shutil.copytree(entry, staging / entry.name, symlinks=True, copy_function=_link_or_copy)
                elif entry.is_symlink():
                    os.symlink(os.readlink(entry), staging / entry.name)
                else:
                    _link_or_copy(os.fspath(entry), os.fspath(staging / entry.name))
        replace_directory(staging, target)
    except BaseException:
        shutil.rmtree(staging, ignore_errors=True)
        raise


__all__ = ["atomic_write_bytes", "atomic_write_text", "fsync_directory", "fsync_tree", "open_atomic",
           "recover_directory", "replace_directory", "staged_directory"]
