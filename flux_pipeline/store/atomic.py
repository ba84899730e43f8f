"""Atomic file writing: a temporary file in the target's folder, then one rename.

A reader (or a run killed at any instant) sees either the old file or the new one, never a
half-written one. Temporary files are named after their writer (`.flux-tmp-HOST-PID-N`): a
later run sweeps up those of writers that are gone, and never another live process's file
(another spec's run writing its lock in the same folder, a gallery writing a thumbnail).
"""

from __future__ import annotations

import contextlib
import hashlib
import itertools
import os
import re
import socket
from pathlib import Path

TEMP_PREFIX = ".flux-tmp-"
#: This host's part of a temporary file's name: a process is known alive or gone only here.
HOST = re.sub(r"[^A-Za-z0-9]", "", socket.gethostname())[:32] or "host"
_OWNED = re.compile(re.escape(TEMP_PREFIX) + r"(?P<host>[A-Za-z0-9]+)-(?P<pid>\d+)-")

_counter = itertools.count()


def temp_name(tag: str = "") -> str:
    """A temporary file name unique to this process, that says which process owns it."""
    return f"{TEMP_PREFIX}{HOST}-{os.getpid()}-{next(_counter)}{tag}"


def _writer_is_gone(name: str) -> bool:
    """Whether the process that made a temporary file has ended (False when unknown: a file
    of another host, or of an older naming, is left alone)."""
    match = _OWNED.match(name)
    if match is None or match["host"] != HOST:
        return False
    pid = int(match["pid"])
    if pid == os.getpid():
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return True
    except OSError:  # EPERM: alive, another user's
        return False
    return False


class PendingFile:
    """A file being written in `folder` under a temporary name.

    `commit` renames it to its final name in one step; `discard` removes it. Nothing ever
    sees a partial file under a final name. `durable=True` also fsyncs the data and the
    folder, so the file survives a power loss, not only a killed process.
    """

    def __init__(self, folder: Path) -> None:
        # O_EXCL on a name unique to this process: no clash, and the mode follows the umask
        # (mkstemp's random names and 0600 would cost two more system calls per file, which
        # are slow on some virtual machines). The folder is made only when it is missing.
        while True:
            self.path = folder / temp_name()
            try:
                self.fd = os.open(self.path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
                return
            except FileExistsError:
                continue
            except FileNotFoundError:
                folder.mkdir(parents=True, exist_ok=True)

    def write(self, data: bytes | bytearray | memoryview) -> None:
        view = memoryview(data)
        while view:
            view = view[os.write(self.fd, view) :]

    def commit(self, target: Path, *, durable: bool) -> None:
        try:
            if durable:
                os.fsync(self.fd)
            os.close(self.fd)
            self.fd = -1
            os.replace(self.path, target)
        except BaseException:
            self.discard()
            raise
        if durable:
            _fsync_folder(target.parent)

    def discard(self) -> None:
        if self.fd >= 0:
            os.close(self.fd)
            self.fd = -1
        with contextlib.suppress(FileNotFoundError):
            self.path.unlink()


class Spool:
    """Bytes bound for a new file in `folder`, held in memory up to `threshold` and then on
    disk, so a small file costs one trip to a thread and a large one bounded memory."""

    def __init__(self, folder: Path, threshold: int) -> None:
        self.folder = folder
        self.threshold = threshold
        self.buffer = bytearray()
        self.file: PendingFile | None = None

    @property
    def must_spill(self) -> bool:
        """Whether the file must be opened (`spill`, in a thread) before more is written."""
        return self.file is None and len(self.buffer) > self.threshold

    def spill(self) -> PendingFile:
        """Open the file and move what is held in memory into it."""
        if self.file is None:
            self.file = PendingFile(self.folder)
            self.file.write(self.buffer)
            self.buffer = bytearray()
        return self.file

    def write(self, data: bytes) -> None:
        if self.file is None:
            self.buffer += data
        else:
            self.file.write(data)

    def discard(self) -> None:
        if self.file is not None:
            self.file.discard()


def write_atomic(target: Path, data: bytes, *, durable: bool = True) -> None:
    """Replace `target` with `data` whole, and durably unless told otherwise (the lock)."""
    pending = PendingFile(target.parent)
    try:
        pending.write(data)
    except BaseException:
        pending.discard()
        raise
    pending.commit(target, durable=durable)


def _fsync_folder(folder: Path) -> None:
    # The rename is durable only once the folder's entry is on disk (POSIX); not on Windows.
    with contextlib.suppress(OSError):
        fd = os.open(folder, os.O_RDONLY)
        try:
            os.fsync(fd)
        finally:
            os.close(fd)


def sweep_temp_files(folder: Path, *, below: bool = True) -> int:
    """Remove the temporary files that writers now gone (a killed run) left in `folder`, and
    below it unless told not to; how many were removed. Live writers' files stay."""
    removed = 0
    if not folder.is_dir():
        return 0
    for path in (folder.rglob if below else folder.glob)(TEMP_PREFIX + "*"):
        if not _writer_is_gone(path.name):
            continue
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
