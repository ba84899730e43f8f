"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

from hypothesis import strategies as st

from flux_pipeline.models import registry

models = st.sampled_from(sorted(m for m in registry() if registry()[m].size_range))
all_models = st.sampled_from(sorted(registry()))
sides = st.integers(min_value=-64, max_value=4096)
axis_names = st.sampled_from(["a", "b", "c", "d"])
axis_values = st.lists(st.sampled_from(["x", "y", "z", "1", "2"]), min_size=1, max_size=3,
                       unique=True)
matrices = st.dictionaries(axis_names, axis_values, min_size=1, max_size=3)
