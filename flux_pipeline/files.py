"""Atomic file writing: a temporary file in the target's folder, fsync, then rename.

A reader (or a run killed at any instant) sees either the old file or the new one, never a
half-written one. Temporary files carry a recognisable prefix so a later run can sweep up any
that a killed run left behind.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import tempfile
from collections.abc import Iterable, Iterator
from pathlib import Path
from typing import IO

TEMP_PREFIX = ".flux-tmp-"


def _file_mode() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


# mkstemp makes files 0600; finished files get the usual mode, as open() would give them.
FILE_MODE = _file_mode()


class PendingFile:
    """A file being written beside its target under a temporary name.

    `commit` makes it the target in one rename (after an fsync of its data); `discard`
    removes it. Nothing else ever sees a partial file under the target's name.
    """

    def __init__(self, target: Path) -> None:
        target.parent.mkdir(parents=True, exist_ok=True)
        fd, temp = tempfile.mkstemp(prefix=TEMP_PREFIX, dir=target.parent)
        self.target = target
        self.path = Path(temp)
        try:
            os.fchmod(fd, FILE_MODE)
            self.handle: IO[bytes] = os.fdopen(fd, "wb")
        except BaseException:
            os.close(fd)
            self.path.unlink()
            raise

    def write(self, data: bytes) -> None:
        self.handle.write(data)

    def flush(self) -> None:
        self.handle.flush()

    def commit(self, *, sync_folder: bool = True) -> None:
        """Replace the target. `sync_folder=False` leaves the folder's fsync to the caller
        (who batches it, see `sync_folders`), for many files in one folder."""
        try:
            self.handle.flush()
            os.fsync(self.handle.fileno())
            self.handle.close()
            os.replace(self.path, self.target)
        except BaseException:
            self.discard()
            raise
        if sync_folder:
            sync_folders([self.target.parent])

    def discard(self) -> None:
        self.handle.close()
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


@contextlib.contextmanager
def atomic_writer(target: Path) -> Iterator[IO[bytes]]:
    """Yield a binary file; on a clean exit it replaces `target` whole, else it vanishes."""
    pending = PendingFile(target)
    try:
        yield pending.handle
    except BaseException:
        pending.discard()
        raise
    pending.commit()


def write_atomic(target: Path, data: bytes) -> None:
    with atomic_writer(target) as handle:
        handle.write(data)


def sync_folders(folders: Iterable[Path]) -> None:
    """Make renames in these folders durable (POSIX needs the folder's entry on disk)."""
    for folder in folders:
        _fsync_folder(folder)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk (POSIX); not on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_temp_files(folder: Path) -> int:
    """Remove temporary files a killed run left in `folder` and below; how many were removed."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in folder.rglob(TEMP_PREFIX + "*"):
        with contextlib.suppress(OSError):
            path.unlink()
            removed += 1
    return removed


def sha256_file(path: Path) -> str:
    digest = hashlib.sha256()
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()
