"""The little of git the tool needs: a file as it was at a revision (`diff --against REF`,
`gallery --changed REF`)."""

from __future__ import annotations

import subprocess
from pathlib import Path


class GitError(Exception):
    """git cannot give the file at that revision (an unknown revision); the message is git's."""


class NoRepository(GitError):
    """git is missing, or the folder is not in a repository."""


def show(path: Path, ref: str) -> bytes | None:
    """The bytes of `path` at revision `ref`, or None if the file did not exist there.
    Raises NoRepository without git or a repository, GitError for a bad revision."""
    folder = path.parent
    try:
        top = subprocess.run(
            ["git", "rev-parse", "--show-toplevel"],
            cwd=folder,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
        relative = path.resolve().relative_to(Path(top).resolve()).as_posix()
        shown = subprocess.run(
            ["git", "show", f"{ref}:{relative}"], cwd=folder, capture_output=True
        )
    except (OSError, subprocess.CalledProcessError, ValueError) as exc:
        raise GitError(f"{ref!r} is not a git revision here: {exc}") from exc
    if shown.returncode == 0:
        return shown.stdout
    message = shown.stderr.decode("utf-8", "replace").strip()
    last = message.splitlines()[-1] if message else ""
    if "exists on disk, but not in" in last or "does not exist in" in last:
        return None
    raise GitError(last)
