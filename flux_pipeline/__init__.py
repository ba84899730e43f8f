"""flux-pipeline: version-controlled YAML specs to images from the FLUX image API.

The pipeline, one folder per stage: `language` (a spec into validated requests) ->
`store` (the lock, the plan) -> `running` (a run, with `provider`'s client) -> `review`.
The public names are importable from here lazily, so that `flux-pipeline --help` does not
pay for jsonschema, jinja2 or httpx: `load_spec`, `expand`, `validate`, `plan`, `run` (and
`await run_async(...)` inside a running event loop, as in a notebook), the assets' `pick`,
`deliver` and `assets`, and the errors.
"""

from __future__ import annotations

from typing import Any

_LIBRARY = (
    "assets",
    "deliver",
    "expand",
    "load_spec",
    "pick",
    "plan",
    "run",
    "run_async",
    "validate",
)
_ERRORS = (
    "BadImage",
    "BadResponse",
    "ConfigError",
    "FluxPipelineError",
    "LockError",
    "NoAnswer",
    "OutputFolderBusy",
    "OutputFolderTaken",
    "Problem",
    "RequestFailed",
    "RunError",
    "RunStopped",
    "SaveFailed",
    "SendingStopped",
    "SpecInvalid",
    "Terminated",
)
__all__ = sorted(_LIBRARY + _ERRORS)


def __getattr__(name: str) -> Any:
    if name in _LIBRARY:
        from . import library

        return getattr(library, name)
    if name in _ERRORS:
        from . import errors

        return getattr(errors, name)
    raise AttributeError(f"module 'flux_pipeline' has no attribute {name!r}")
