"""Generated hostile specs (random nesting, tags, anchors, filters, operators, huge literals)
through `validate`: exit 0 or 1, never a traceback or an internal error. A seeded sample here;
`bench/fuzz.py` runs 10,000 and prints the slowest time and the largest memory."""

from __future__ import annotations

import random
from pathlib import Path

from fuzz_specs import spec_text
from helpers import invoke
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(rng=st.randoms(use_true_random=False))
def test_generated_specs_are_valid_or_invalid_never_a_crash(
    tmp_path: Path, rng: random.Random
) -> None:
    path = tmp_path / "spec.yaml"
    path.write_text(spec_text(rng), encoding="utf-8")
    result = invoke("validate", str(path))
    assert result.exit_code in (0, 1), result.stdout + result.stderr
    assert "internal error" not in result.stderr and "Traceback" not in result.stderr
