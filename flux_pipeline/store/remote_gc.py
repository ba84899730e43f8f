"""Garbage collection of the shared remote cache: by reachability from the locks a user
names (and every lock in the git revisions they name), never "what this branch does not use".
The one place the remote is listed."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from .remote import LAYOUT, Remote, RemoteError


def reachable(locks: Sequence[Path], refs: Sequence[str]) -> set[str]:
    """The body hashes the named lock files, and every lock file in the named git
    revisions, hold."""
    from .lock import parse_lock, read_lock

    keep: set[str] = set()
    for path in locks:
        lock = read_lock(path)
        keep |= {e.body_sha256 for e in (lock.entries.values() if lock else ())}
    for ref in refs:
        for name, text in _locks_at(ref):
            keep |= {e.body_sha256 for e in parse_lock(text, f"{ref}:{name}").entries.values()}
    return keep


def _locks_at(ref: str) -> list[tuple[str, str]]:
    import subprocess

    def git(*args: str) -> str:
        done = subprocess.run(["git", *args], capture_output=True, text=True, check=False)
        if done.returncode != 0:
            raise RemoteError(f"--keep-ref {ref}: {done.stderr.strip() or 'git failed'}")
        return done.stdout

    names = [n for n in git("ls-tree", "-r", "--name-only", ref).splitlines()]
    return [(n, git("show", f"{ref}:{n}")) for n in names if n.endswith(".lock.json")]


def collect_garbage(remote: Remote, keep: set[str], *, delete: bool) -> list[str]:
    """The keys of every request folder not in `keep` (listed: gc is the one place that
    lists); deleted when `delete`."""
    import obstore

    doomed = []
    for batch in obstore.list(remote.store, prefix=f"{LAYOUT}/"):
        for meta in batch:
            parts = str(meta["path"]).split("/")  # relative to the store's prefix, or not
            parts = parts[parts.index(LAYOUT) :] if LAYOUT in parts else parts
            if len(parts) >= 3 and parts[0] == LAYOUT and parts[2] not in keep:
                doomed.append("/".join(parts))
    if delete and doomed:
        obstore.delete(remote.store, doomed)
    return doomed
