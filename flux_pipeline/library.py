"""The library API, one import away: `from flux_pipeline import library`."""

from __future__ import annotations

from .expansion import Request, expand
from .lock import read_lock
from .planning import Plan, plan
from .spec import Spec, load_spec
from .validation import validate

__all__ = ["Plan", "Request", "Spec", "expand", "load_spec", "plan", "read_lock", "validate"]
