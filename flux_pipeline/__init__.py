"""flux-pipeline: version-controlled YAML specs to images from the FLUX text-to-image API.

The pipeline, one module per stage: `spec` (load) -> `expand` -> `validate` -> `plan` ->
`runner` (with `client` and `emulator`) -> `lock`. The public names are importable from here
lazily, so that `flux-pipeline --help` does not pay for jsonschema, jinja2 or httpx.
"""

from __future__ import annotations

from typing import Any

__all__ = ["expand", "load_spec", "plan", "run", "validate"]


def __getattr__(name: str) -> Any:
    if name in __all__:
        from . import library

        return getattr(library, name)
    raise AttributeError(f"module 'flux_pipeline' has no attribute {name!r}")
