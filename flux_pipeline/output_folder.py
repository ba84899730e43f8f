"""Paths inside a run's output folder, and how the lock names them."""

from __future__ import annotations

import os
from pathlib import Path

from .errors import RequestFailed


class OutputFolder:
    """Paths inside the run's output folder. A path whose folder (symlinks resolved) lies
    outside is refused; each folder is resolved once per run, not once per image."""

    def __init__(self, root: Path, lock_folder: Path) -> None:
        self.root = root.resolve()
        self._lock_folder = lock_folder.resolve()
        self._folders: dict[str, Path] = {"": self.root}
        self._relative: dict[Path, str] = {}  # folder -> its path from the lock's folder

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
            folder = Path(os.path.relpath(path.parent, self._lock_folder)).as_posix()
            self._relative[path.parent] = folder
        return path.name if folder == "." else f"{folder}/{path.name}"
