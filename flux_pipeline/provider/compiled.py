"""Compiled validators (fastjsonschema), kept between processes as Python keeps `.pyc` files.

fastjsonschema writes Python source for a schema and compiles it: 10-20 ms a schema, paid by
every command at start-up (a spec's structure, each model's body, the lock). The compiled
code is kept in the user's cache folder (`$XDG_CACHE_HOME/flux-pipeline/validators`, else
`~/.cache/...`), named by a hash of the schema, the options, fastjsonschema's version and the
interpreter's bytecode magic, so a change to any of them compiles afresh. A folder that cannot
be read or written only costs the compilation.
"""

from __future__ import annotations

import contextlib
import hashlib
import importlib.util
import json
import marshal
import os
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Any

CACHE_ENV = "XDG_CACHE_HOME"


def cache_folder() -> Path:
    root = os.environ.get(CACHE_ENV) or str(Path.home() / ".cache")
    return Path(root) / "flux-pipeline" / "validators"


def compiled_validator(schema: Mapping[str, Any], **options: Any) -> Callable[[Any], Any]:
    """`fastjsonschema.compile(schema, **options)`, its code read from the cache when there."""
    import fastjsonschema
    from fastjsonschema.ref_resolver import RefResolver

    key = json.dumps([schema, options, fastjsonschema.VERSION], sort_keys=True, default=dict)
    digest = hashlib.sha256(key.encode() + importlib.util.MAGIC_NUMBER).hexdigest()
    path = cache_folder() / f"{digest[:32]}.marshal"
    kept = _read(path)
    if kept is None:
        plain = json.loads(key)[0]  # a deep copy: fastjsonschema may change what it reads
        resolver = RefResolver.from_schema(plain, store={})
        source = fastjsonschema.compile_to_code(plain, **options)
        kept = (resolver.get_scope_name(), compile(source, f"<validator {digest[:12]}>", "exec"))
        _write(path, marshal.dumps(kept))
    name, code = kept
    namespace: dict[str, Any] = {}
    exec(code, namespace)  # noqa: S102 - code fastjsonschema generated from our own schema
    validate: Callable[[Any], Any] = namespace[name]
    return validate


def _read(path: Path) -> tuple[str, Any] | None:
    try:
        name, code = marshal.loads(path.read_bytes())
    except (OSError, ValueError, EOFError, TypeError):
        return None
    return (name, code) if isinstance(name, str) else None


def _write(path: Path, data: bytes) -> None:
    temp = path.with_name(f"{path.name}.{os.getpid()}.tmp")
    with contextlib.suppress(OSError):
        path.parent.mkdir(parents=True, exist_ok=True)
        temp.write_bytes(data)
        os.replace(temp, path)
    with contextlib.suppress(OSError):
        temp.unlink()
