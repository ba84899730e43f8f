"""Paths inside a run's output folder, and how the lock names them."""

from __future__ import annotations

import dataclasses
import os
import posixpath
import shutil
from collections.abc import Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from ..errors import RequestFailed
from ..provider.images import EXTENSIONS
from .atomic import sha256_file
from .lock import Output


def lock_name_of(folder: Path, lock_folder: Path) -> str:
    """A folder as the lock names paths: from the lock's folder, with `/`, made absolute and
    normalised without resolving symlinks (a symlinked output folder keeps its link's name)."""
    relative = os.path.relpath(os.path.abspath(folder), os.path.abspath(lock_folder))
    return Path(relative).as_posix()


class OutputFolder:
    """Paths inside the run's output folder. A path whose folder (symlinks resolved) lies
    outside is refused; each folder is resolved once per run, not once per image.

    The lock names a file by the output folder as the spec writes it (a symlinked output
    folder keeps its link's name, so the lock does not break when the link's target moves),
    then its path inside."""

    def __init__(self, root: Path, lock_folder: Path) -> None:
        self.root = root.resolve()
        self._written = lock_name_of(root, lock_folder)
        self._folders: dict[str, Path] = {"": self.root}
        self._relative: dict[Path, str] = {}  # folder -> its path from the lock's folder
        self._lock_folder = lock_folder

    def path(self, relative: str) -> Path:
        head, _, name = relative.rpartition("/")
        folder = self._folders.get(head)
        if folder is None:
            folder = (self.root / head).resolve()
            if not folder.is_relative_to(self.root):
                raise RequestFailed(
                    relative, f"refusing to write outside the output folder: {relative}"
                )
            self._folders[head] = folder
        return folder / name

    def lock_path(self, path: Path) -> str:
        """How the lock names a file: relative to the lock's folder, with `/`."""
        folder = self._relative.get(path.parent)
        if folder is None:
            inside = path.parent.relative_to(self.root).as_posix()
            folder = posixpath.normpath(f"{self._written}/{inside}")
            self._relative[path.parent] = folder
        return path.name if folder == "." else f"{folder}/{path.name}"

    def move_in(self, outputs: Sequence[Output], stems: Sequence[Path]) -> list[Output] | None:
        """Move a request's recorded images (from where an earlier `output:` put them) to
        their stems in this folder; their outputs as the lock names them now, or None if one
        is no longer as recorded (then the request is done again)."""
        if len(outputs) != len(stems):
            return None
        pairs = list(zip(stems, outputs, strict=True))
        sources = [self._lock_folder / o.path for o in outputs]
        sound = all(
            p.is_file() and sha256_file(p) == o.sha256
            for p, o in zip(sources, outputs, strict=True)
        )
        if not sound:
            return None
        moved = []
        for source, (stem, output) in zip(sources, pairs, strict=True):
            target = stem.with_name(stem.name + EXTENSIONS[output.format])
            target.parent.mkdir(parents=True, exist_ok=True)
            shutil.move(source, target)
            moved.append(dataclasses.replace(output, path=self.lock_path(target)))
        return moved

    def prune(self, recorded: Iterable[Mapping[str, Any]], keep: Iterable[str]) -> list[str]:
        """Delete the images the lock or the cache recorded (`recorded`: outputs, each with
        the path the lock gave it and its sha256) that are not the images of a request of the
        spec now (`keep`: their stems inside the folder), only if still inside the folder and
        unchanged since; the lock paths deleted."""
        kept = {posixpath.normpath(f"{self._written}/{stem}") for stem in keep}
        deleted = []
        for output in recorded:
            name = str(output["path"])
            if posixpath.splitext(name)[0] in kept or name in deleted:
                continue
            path = self._lock_folder / name
            try:
                if not path.resolve().is_relative_to(self.root) or not path.is_file():
                    continue
                if sha256_file(path) != output["sha256"]:
                    continue  # changed since: the user's file, not the tool's
                path.unlink()
            except OSError:
                continue
            deleted.append(name)
        return sorted(deleted)
