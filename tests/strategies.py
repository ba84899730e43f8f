"""Hypothesis strategies shared by the property tests."""

from __future__ import annotations

import base64
import io
from typing import Any

from hypothesis import strategies as st
from PIL import Image

from flux_pipeline.provider.registry import registry

models = st.sampled_from(sorted(m for m in registry() if registry()[m].size_range))
all_models = st.sampled_from(sorted(registry()))
sides = st.integers(min_value=-64, max_value=4096)
axis_names = st.sampled_from(["a", "b", "c", "d"])
axis_values = st.lists(
    st.sampled_from(["x", "y", "z", "1", "2"]), min_size=1, max_size=3, unique=True
)
matrices = st.dictionaries(axis_names, axis_values, min_size=1, max_size=3)


def _tiny_png() -> str:
    image = Image.new("RGB", (64, 48), (200, 90, 30))
    out = io.BytesIO()
    image.save(out, format="PNG")
    return "data:image/png;base64," + base64.b64encode(out.getvalue()).decode()


TINY_PNG = _tiny_png()
#: Input images as a request may give them: a data: URI, or a URL (not fetched offline).
image_uris = st.sampled_from([TINY_PNG, "https://example.com/photos/mug.jpg"])


def required_inputs(model: str) -> dict[str, Any]:
    """The input image fields `model` requires, each with one small image."""
    required = registry()[model].request_schema["required"]
    image = TINY_PNG
    inputs: dict[str, Any] = {}
    if "image_url" in required:
        inputs["image_url"] = image
    if "image_urls" in required:
        inputs["image_urls"] = [image]
    return inputs


def from_schema(schema: dict[str, Any]) -> st.SearchStrategy[Any]:
    """Values valid under the subset of JSON Schema the provider's documents use: objects with
    optional properties, enums, bounded numbers (with multipleOf), strings with maxLength or
    format uri (input images), arrays with bounded lengths, booleans and anyOf. Follows the
    documents, so a new keyword there fails loudly here."""
    if "anyOf" in schema:
        return st.one_of([from_schema(s) for s in schema["anyOf"]])
    if "enum" in schema:
        return st.sampled_from(schema["enum"])
    kind = schema.get("type")
    if kind == "object":
        required = set(schema.get("required", ()))
        props = schema.get("properties", {})
        return st.fixed_dictionaries(
            {k: from_schema(v) for k, v in props.items() if k in required},
            optional={k: from_schema(v) for k, v in props.items() if k not in required},
        )
    if kind == "integer":
        step = schema.get("multipleOf", 1)
        low = -(-schema.get("minimum", -(2**31)) // step)
        high = schema.get("maximum", 2**31 - 1) // step
        return st.integers(low, high).map(lambda k: k * step)
    if kind == "number":
        return st.floats(
            schema.get("minimum"), schema.get("maximum"), allow_nan=False, allow_infinity=False
        )
    if kind == "array":
        return st.lists(
            from_schema(schema["items"]),
            min_size=schema.get("minItems", 0),
            max_size=schema.get("maxItems", 3),
        )
    if kind == "string" and schema.get("format") == "uri":
        return image_uris
    if kind == "string":
        return st.text(max_size=min(schema.get("maxLength", 50), 300))
    if kind == "boolean":
        return st.booleans()
    raise NotImplementedError(f"no strategy for {schema}")
