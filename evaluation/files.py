"""Atomic file writes: a crash leaves the previous file or none, never half of one.

The temporary file is created with mode 0666 so that the kernel applies the umask, as it does for any file a
program creates (tempfile.mkstemp would force 0600); it is flushed to disk before it replaces the target, and
the folder is synced after, so the rename itself survives a crash.
"""

import fcntl
import glob
import json
import logging
import os
import secrets
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from evaluation.errors import InputError

log = logging.getLogger("quasar.files")


def check_destination(path: Path) -> None:
    """InputError naming `path` unless it can be written as a file: not a folder, in a folder that exists
    (outputs given on the command line never create folders)."""
    if path.is_dir():
        raise InputError(str(path), "is a folder: name a file")
    if not path.parent.is_dir():
        raise InputError(str(path), f"no such folder: {path.parent} (create it first)")


def write_text_atomic(path: Path, text: str, *, create_folders: bool = True) -> None:
    if create_folders:
        path.parent.mkdir(parents=True, exist_ok=True)
    else:
        check_destination(path)
    tmp = path.with_name(f"{_temp_prefix(path)}{secrets.token_hex(6)}{_TEMP_SUFFIX}")
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as handle:
            handle.write(text)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    _sync_folder(path.parent)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}."


_TEMP_SUFFIX = ".tmp"


def remove_stale_temp_files(path: Path) -> None:
    """Remove the temporary files that writes of `path` interrupted by a crash left beside it. Only for a
    file one process owns (a validator's state), called before that process writes it."""
    if not path.parent.is_dir():
        return
    for temp in sorted(path.parent.glob(f"{glob.escape(_temp_prefix(path))}*{_TEMP_SUFFIX}")):
        log.warning("removing %s, left by a write that did not finish", temp)
        temp.unlink(missing_ok=True)


def _sync_folder(folder: Path) -> None:
    """Make a rename in `folder` durable: until its directory entry is on disk, a power loss can undo it."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def write_json_atomic(path: Path, payload: object, indent: int = 2) -> None:
    write_text_atomic(path, json.dumps(payload, ensure_ascii=False, indent=indent))


@contextmanager
def locked_folder(folder: Path) -> Iterator[None]:
    """An exclusive advisory lock on `folder` while the block runs, so that processes that read, update and
    rewrite a file in it (result.json) take turns instead of losing each other's updates."""
    fd = os.open(folder, os.O_RDONLY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)  # closing the descriptor releases the lock
