"""Objects by key, in two homes with the same verbs (`has`, `put`, `get`, `check`), as
dvc-objects' `ObjectDB(fs, path)` is one class over any file system: `LocalObjects` (a folder:
the cache of earlier outputs) and `RemoteObjects` (an obstore store: the shared remote cache).

A local object is a real copy of the file it keeps: a reflink where the file system shares
blocks copy-on-write (Btrfs, XFS), else the bytes, so an image damaged in place leaves its
copy sound; a hard link only when asked (`link="hardlink"`: no extra space, but an image
edited in place edits its copy too). A remote object is written create-only (If-None-Match):
a second writer of the same key is refused by the store, which is no error, the content
being the same. `check` reads an object and compares its sha256; a local one that does not
verify is removed (as DVC's `HashFileDB.check` does), so that the next `put` replaces it.
"""

from __future__ import annotations

import contextlib
import hashlib
import os
import shutil
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

from ..errors import ConfigError
from .atomic import sha256_file, temp_name, write_atomic

LINK_ENV = "FLUX_PIPELINE_CACHE_LINK"
LINKS = ("copy", "hardlink")  # copy: a reflink where possible
FICLONE = 0x40049409  # Linux's ioctl that shares a file's blocks copy-on-write


def link_mode() -> str:
    """How a run keeps local objects: `FLUX_PIPELINE_CACHE_LINK` (copy, the default, or
    hardlink); ConfigError for anything else."""
    link = os.environ.get(LINK_ENV, "copy") or "copy"
    if link not in LINKS:
        raise ConfigError(f"{LINK_ENV}={link!r}: use one of {', '.join(LINKS)}")
    return link


class LocalObjects:
    """Objects in a folder, each a file named by its key."""

    def __init__(self, folder: Path, link: str = "copy") -> None:
        self.folder = folder
        self.hardlink = link == "hardlink"
        self.removed: list[str] = []  # damaged objects removed (by `check`)

    def path(self, key: str) -> Path:
        return self.folder / key

    def has(self, key: str) -> bool:
        return self.path(key).exists()

    def put(self, key: str, source: Path) -> None:
        """Keep a copy of `source` (see the module's note on links), replacing what is there."""
        self.folder.mkdir(parents=True, exist_ok=True)
        place(source, self.path(key), self.hardlink)

    def put_bytes(self, key: str, data: bytes) -> None:
        self.folder.mkdir(parents=True, exist_ok=True)
        write_atomic(self.path(key), data, durable=False)

    def get(self, key: str) -> bytes:
        return self.path(key).read_bytes()

    def check(self, key: str, sha256: str, hashed: Callable[[Path], str] = sha256_file) -> bool:
        """Whether the object is there with its hash; a damaged one is removed."""
        path = self.path(key)
        try:
            if hashed(path) == sha256:
                return True
        except FileNotFoundError:
            return False
        except OSError:
            pass
        with contextlib.suppress(OSError):
            path.unlink()
            self.removed.append(path.name)
        return False


class RemoteObjects:
    """Objects in an obstore store (S3, GCS, Azure, a local folder, memory), by key."""

    def __init__(self, store: Any) -> None:
        self.store = store

    def has(self, key: str) -> bool:
        import obstore

        try:
            obstore.head(self.store, key)
        except FileNotFoundError:
            return False
        return True

    def put(self, key: str, data: bytes) -> bool:
        """Write `data` at `key` unless something is there; whether it was written."""
        import obstore

        try:
            obstore.put(self.store, key, data, mode="create")
        except Exception as exc:
            if type(exc).__name__ == "AlreadyExistsError":
                return False
            raise
        return True

    def get(self, key: str) -> bytes:
        """The object's bytes; FileNotFoundError when there is none."""
        import obstore

        return bytes(obstore.get(self.store, key).bytes())

    def check(self, key: str, sha256: str) -> bool:
        try:
            return hashlib.sha256(self.get(key)).hexdigest() == sha256
        except FileNotFoundError:
            return False


def place(source: Path, target: Path, hardlink: bool = False) -> None:
    """Copy `source` to `target` (a reflink where the file system can; a hard link if asked)
    in one rename, replacing what is there."""
    temp = target.with_name(temp_name("-cache"))
    with contextlib.suppress(FileNotFoundError):
        temp.unlink()
    try:
        if hardlink:
            try:
                os.link(source, temp)
            except OSError:
                shutil.copyfile(source, temp)
        else:
            _copy(source, temp)
        os.replace(temp, target)
    except BaseException:
        with contextlib.suppress(OSError):
            temp.unlink()
        raise


_reflinks = {"possible": sys.platform.startswith("linux")}  # until one is refused


def _copy(source: Path, target: Path) -> None:
    """A real copy: a reflink (shared blocks, copy-on-write) if the file system has them,
    else the bytes (`copyfile` uses the kernel's copy where it can)."""
    if _reflinks["possible"]:
        import fcntl

        with source.open("rb") as src, target.open("wb") as dst:
            try:
                fcntl.ioctl(dst.fileno(), FICLONE, src.fileno())
                return
            except OSError:
                _reflinks["possible"] = False  # this file system (or kernel) cannot
    shutil.copyfile(source, target)
