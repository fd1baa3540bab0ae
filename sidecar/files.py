"""Atomic, change-only file writes: temp file in the same directory, fsync, chmod, rename."""

from __future__ import annotations

import contextlib
import os
import secrets

_TEMP_MARK = ".sidecar-tmp-"


def _temp_prefix(path: str) -> str:
    # A leading dot keeps the temp file out of `*` globs of readers watching the directory.
    return "." + os.path.basename(path) + _TEMP_MARK


def remove_stale_temp_files(path: str) -> list[str]:
    """Delete temp files a crashed predecessor left beside `path`; returns their names."""
    directory = os.path.dirname(path) or "."
    prefix = _temp_prefix(path)
    removed = []
    try:
        names = os.listdir(directory)
    except OSError:
        return removed
    for name in names:
        if name.startswith(prefix):
            with contextlib.suppress(FileNotFoundError):
                os.unlink(os.path.join(directory, name))
                removed.append(name)
    return removed


def read_current(path: str) -> bytes | None:
    """The bytes on disk now, or None when there is no readable file."""
    try:
        with open(path, "rb") as f:
            return f.read()
    except OSError:
        return None


def write_atomic(path: str, data: bytes, mode: int) -> None:
    """Replace `path` with `data` so that a reader sees the old or the new file, never a mix.
    Raises OSError; on failure the old file is untouched and no temp file is left behind."""
    directory = os.path.dirname(path) or "."
    temp = os.path.join(directory, _temp_prefix(path) + secrets.token_hex(4))
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, 0o600)
    try:
        try:
            view = memoryview(data)
            while view:
                written = os.write(fd, view)
                view = view[written:]
            # fchmod rather than the umask-filtered open mode, so --file-mode is exact.
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
        os.replace(temp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(temp)
        raise
    # Make the rename itself durable; failure here does not undo the (visible) replacement.
    with contextlib.suppress(OSError):
        dir_fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)
