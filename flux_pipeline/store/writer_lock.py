"""One writer per output folder.

`run`, `merge` and `run --prune` hold an OS lock on the output folder (`OUT/.flux-cache/
writer.lock`, through the `filelock` library: `flock` on POSIX, released by the kernel however
the process ends) for their whole duration. Two runs of one spec at once would pay for every
request twice; the second one waits (`--wait SECONDS`) or stops at once, naming the holder.
Readers (`plan`, `check`, `gallery`, `diff`) never take it: every file they read is replaced
atomically, so they always see a whole one.

An output folder belongs to one spec: the first writer notes its lock's path in
`OUT/.flux-cache/owner.json`, and a writer for another spec whose lock still exists is refused
(two specs in one folder overwrite each other's images).
"""

from __future__ import annotations

import contextlib
import json
import os
import socket
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import filelock

from ..errors import ConfigError, OutputFolderBusy, OutputFolderTaken
from .atomic import write_atomic

FOLDER = ".flux-cache"
LOCK_FILE = "writer.lock"
HOLDER_FILE = "writer.json"  # who holds the lock: beside it, as filelock truncates its file
OWNER_FILE = "owner.json"  # the spec whose output folder it is: the path of its lock
JOURNAL = ".journal.jsonl"  # the diagnosis journal, in the output folder
THUMBS = ".thumbs"  # the gallery's thumbnails, in the output folder
# The tool's own files and folders: in the output folder, and in its FOLDER.
OWN_NAMES = (FOLDER, JOURNAL, THUMBS)
OWN_IN_FOLDER = (
    LOCK_FILE,
    HOLDER_FILE,
    OWNER_FILE,
    "objects",
    "bodies.jsonl",
    "hashes.json",
    "pending.jsonl",
    "unusable.jsonl",
)


def refuse_links(output: Path) -> None:
    """ConfigError if one of the tool's own files or folders in `output` is a symbolic link:
    what the tool writes there would land wherever the link points (a victim file appended
    to, a folder filled). The output folder itself may be a link; what the tool keeps in it
    may not."""
    paths = [output / n for n in OWN_NAMES] + [output / FOLDER / n for n in OWN_IN_FOLDER]
    for path in paths:
        if path.is_symlink():
            raise ConfigError(
                f"{path} is a symbolic link (to {os.readlink(path)}); flux-pipeline keeps its "
                "own files there and does not follow links: remove the link"
            )


def _holder(root: Path) -> str:
    """Who holds the lock, in words, from the note it left."""
    try:
        note = json.loads((root / HOLDER_FILE).read_text(encoding="utf-8"))
        since = time.strftime("%H:%M:%S", time.localtime(float(note["since"])))
        return (
            f"flux-pipeline {note['command']} (pid {note['pid']} on {note['host']}, "
            f"spec {note['spec']}, since {since})"
        )
    except (OSError, ValueError, KeyError, TypeError):
        return "another flux-pipeline process"


@contextlib.contextmanager
def hold_output_folder(
    output: Path,
    *,
    command: str,
    spec: Path,
    lock_path: Path,
    wait: float = 0.0,
    on_wait: Callable[[str], None] | None = None,
) -> Iterator[None]:
    """Hold the output folder's writer lock for the duration of the block, for the spec
    whose lock is `lock_path`.

    If another process holds it: wait up to `wait` seconds (telling `on_wait` who is waited
    for), then raise OutputFolderBusy naming the holder. If the folder is another spec's
    (its lock still exists), raise OutputFolderTaken."""
    root = output / FOLDER
    refuse_links(output)
    root.mkdir(parents=True, exist_ok=True)
    lock = filelock.FileLock(root / LOCK_FILE)
    try:
        lock.acquire(timeout=0)
    except filelock.Timeout:
        holder = _holder(root)
        if wait <= 0:
            raise OutputFolderBusy(
                f"{output} is being written by {holder}; "
                "wait for it to finish, or pass --wait SECONDS to wait for it"
            ) from None
        if on_wait is not None:
            on_wait(f"waiting up to {wait:g} s for {holder} to finish with {output}")
        try:
            lock.acquire(timeout=wait)
        except filelock.Timeout:
            raise OutputFolderBusy(
                f"{output} is still being written by {_holder(root)} after {wait:g} s"
            ) from None
    try:
        _claim(output, lock_path)
        note = {
            "command": command,
            "pid": os.getpid(),
            "host": socket.gethostname(),
            "spec": str(spec),
            "since": time.time(),
        }
        with contextlib.suppress(OSError):  # the note is a courtesy; the lock is the guard
            write_atomic(root / HOLDER_FILE, json.dumps(note).encode(), durable=False)
        yield
    finally:
        with contextlib.suppress(OSError):
            (root / HOLDER_FILE).unlink()
        lock.release()


def _claim(output: Path, lock_path: Path) -> None:
    """Note that the folder is the spec's; refuse it if it is another's whose lock exists."""
    owner_file = output / FOLDER / OWNER_FILE
    mine = os.path.relpath(os.path.abspath(lock_path), os.path.abspath(output))
    try:
        owner = json.loads(owner_file.read_text(encoding="utf-8"))["lock"]
    except (OSError, ValueError, KeyError, TypeError):
        owner = None
    if isinstance(owner, str) and owner != mine:
        theirs = output / owner
        same = theirs.exists() and lock_path.exists() and theirs.samefile(lock_path)
        if theirs.exists() and not same:
            raise OutputFolderTaken(
                f"{output} is the output folder of another spec (its lock: "
                f"{os.path.normpath(theirs)}); two specs in one folder overwrite each other's "
                "images: give this spec its own `output:` (or, if that spec is gone, delete "
                "its lock)"
            )
    if owner != mine:
        with contextlib.suppress(OSError):
            write_atomic(owner_file, json.dumps({"lock": mine}).encode(), durable=False)
