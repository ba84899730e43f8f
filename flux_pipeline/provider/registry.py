"""The FLUX models the API serves, read from the provider's OpenAPI documents shipped in `openapi/`.

The documents are embedded unchanged. What they state only in prose, or leave loose, is added
here as an *overlay* on the request schema, each rule with its reason:

- `image_size.width` / `.height` must be multiples of 32 (the schema's `description` and the
  model page say so; the schema itself does not);
- a request may not carry fields the model's document does not define (`num_image: 2` would be
  sent and silently ignored), nor `image_size` keys other than `width` and `height`;
- `num_images` must be a whole number (the documents type it as `number`; a fraction of an
  image is meaningless and the tool names one file per image).

- `loras` items may not carry keys other than `path` and `scale`, and there are at most 3 (the
  description says "maximum 3");
- input image fields hold an `https://` URL, a `data:` URI, or a reference to a local file
  made by `image_file()` (`inputs.py`), which the client turns into a `data:` URI when it sends.

Preset sizes, and the output sizes of aspect ratios and image-to-image models, are stated only
in prose (`openapi/README.md`, `openapi/pages/`), so they are written out here. Where the
documents state no size, the image's size is recorded, not checked.
"""

from __future__ import annotations

import copy
import difflib
import functools
import json
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from importlib import resources
from typing import TYPE_CHECKING, Any

from ..errors import did_you_mean
from .compiled import compiled_validator
from .inputs import IMAGE_FIELDS, references, value_problem
from .schema_errors import FieldError, error_order, explain

if TYPE_CHECKING:  # jsonschema explains the rare invalid body; fastjsonschema decides
    from jsonschema import Draft7Validator

API_PATH = "/v1/images/generations"
OPENAPI = "flux_pipeline.provider.openapi"  # the embedded documents, byte for byte
DEFAULT_MODEL = "flux-pro"
SIZE_MULTIPLE = 32

#: Preset names of `image_size`, as width x height (`openapi/README.md`).
PRESETS: dict[str, tuple[int, int]] = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}

#: Likely output sizes of FLUX 1.1 ultra's aspect ratios (about 4 megapixels).
ULTRA_SIZES: dict[str, tuple[int, int]] = {
    "21:9": (3136, 1344),
    "16:9": (2752, 1536),
    "4:3": (2368, 1792),
    "3:2": (2496, 1664),
    "1:1": (2048, 2048),
    "2:3": (1664, 2496),
    "3:4": (1792, 2368),
    "9:16": (1536, 2752),
    "9:21": (1344, 3136),
}
#: Likely output sizes of Kontext's aspect ratios (about 1 megapixel).
KONTEXT_SIZES: dict[str, tuple[int, int]] = {
    "21:9": (1568, 672),
    "16:9": (1392, 752),
    "4:3": (1184, 880),
    "3:2": (1248, 832),
    "1:1": (1024, 1024),
    "2:3": (832, 1248),
    "3:4": (880, 1184),
    "9:16": (752, 1392),
    "9:21": (672, 1568),
}
#: The output sizes the documents state for an aspect ratio (`openapi/README.md`, the model
#: pages). Another ratio's size is not documented: the image's size is recorded, not checked.
DOCUMENTED_RATIO_SIZES: dict[str, dict[str, tuple[int, int]]] = {
    "flux-pro/v1.1-ultra": {"16:9": (2752, 1536)},
    "flux/kontext-pro/text-to-image": {"1:1": (1024, 1024)},
    "flux/kontext-max/text-to-image": {"1:1": (1024, 1024)},
    "flux/kontext-pro/image-to-image": {"16:9": (1184, 880)},
    "flux/kontext-max/image-to-image": {"16:9": (1184, 880)},
}
#: Models whose image is the size of their input ("Fixed size: matches the dimensions of the
#: reference image", the model's page).
SIZE_OF_INPUT = frozenset({"flux/dev/image-to-image"})
#: The size assumed for an estimate where neither the request nor the documents give one.
FALLBACK_SIZE = (1024, 768)
#: The most loras a request takes ("maximum 3", in the documents' description only).
MAX_LORAS = 3


@dataclass(frozen=True, slots=True)
class Model:
    """One model of the FLUX family: its name, its embedded document and the derived schemas."""

    name: str
    document: str
    request_schema: Mapping[str, Any]
    response_schema: Mapping[str, Any]

    @property
    def fields(self) -> frozenset[str]:
        return frozenset(self.request_schema["properties"])

    @property
    def size_range(self) -> tuple[int, int] | None:
        """The (minimum, maximum) of width and height, or None if the model takes no size."""
        obj = _image_size_object(self.request_schema)
        if obj is None:
            return None
        width = obj["properties"]["width"]
        return int(width["minimum"]), int(width["maximum"])

    def default(self, field: str) -> Any:
        return self.request_schema["properties"].get(field, {}).get("default")

    @property
    def takes_images(self) -> bool:
        """Whether requests carry input images (`image_url` or `image_urls`)."""
        return bool(self.fields & {"image_url", "image_urls"})

    @property
    def ratios(self) -> tuple[str, ...]:
        return tuple(self.request_schema["properties"].get("aspect_ratio", {}).get("enum", ()))

    def size(self, body: Mapping[str, Any]) -> tuple[int, int] | None:
        """The width and height the documents say the API makes for a (valid) request body, or
        None where they do not say (the image's size is then recorded, never rejected)."""
        if self.name in SIZE_OF_INPUT:
            inputs = references(body)
            return inputs[0].size if inputs else None  # an input by URL: its size is unknown
        if "aspect_ratio" in self.fields:
            ratio = body.get("aspect_ratio", self.default("aspect_ratio"))
            return DOCUMENTED_RATIO_SIZES.get(self.name, {}).get(ratio)
        if "image_size" not in self.fields:
            return None
        size = body.get("image_size", self.default("image_size"))
        if isinstance(size, str):
            return PRESETS[size]
        obj = _image_size_object(self.request_schema)
        assert obj is not None  # a model with image_size has its object form
        props = obj["properties"]
        width = size.get("width", props["width"]["default"])
        height = size.get("height", props["height"]["default"])
        return int(width), int(height)

    def likely_size(
        self, body: Mapping[str, Any], input_size: tuple[int, int] | None = None
    ) -> tuple[int, int]:
        """The documented size, or where there is none a likely one: for estimates, and the
        size the emulator draws. A model without a size of its own makes its input's size
        (`input_size`: the first input's, if known otherwise than from a reference)."""
        if "aspect_ratio" in self.fields or "image_size" in self.fields:
            documented = self.size(body)
            if documented is not None:
                return documented
            ratio = body.get("aspect_ratio", self.default("aspect_ratio"))
            return (ULTRA_SIZES if self.name == "flux-pro/v1.1-ultra" else KONTEXT_SIZES)[ratio]
        inputs = references(body)
        return input_size or (inputs[0].size if inputs else FALLBACK_SIZE)

    def output_format(self, body: Mapping[str, Any]) -> str | None:
        """`png` or `jpeg` when the model lets the request choose; None when it does not say."""
        if "output_format" not in self.fields:
            return None
        return str(body.get("output_format", self.default("output_format")))

    def num_images(self, body: Mapping[str, Any]) -> int:
        return int(body.get("num_images", self.default("num_images") or 1))


def _image_size_object(schema: Mapping[str, Any]) -> dict[str, Any] | None:
    image_size = schema["properties"].get("image_size")
    if image_size is None:
        return None
    for branch in image_size.get("anyOf", []):
        if branch.get("type") == "object":
            return branch  # type: ignore[no-any-return]
    return None


def _overlay(schema: dict[str, Any]) -> dict[str, Any]:
    """The request schema with the rules the documents state only in prose (module docstring)."""
    schema = copy.deepcopy(schema)
    schema["additionalProperties"] = False
    obj = _image_size_object(schema)
    if obj is not None:
        obj["additionalProperties"] = False
        for side in ("width", "height"):
            obj["properties"][side]["multipleOf"] = SIZE_MULTIPLE
    if "num_images" in schema["properties"]:
        schema["properties"]["num_images"]["type"] = "integer"
    image_url = schema["properties"].get("image_url", {})
    for branch in image_url.get("anyOf", []):
        if branch.get("type") == "array":
            branch["minItems"] = 1  # "up to 4" images: an empty list is none
    loras = schema["properties"].get("loras")
    if loras is not None:
        loras["items"]["additionalProperties"] = False
        loras["maxItems"] = MAX_LORAS
    return schema


def _nullable_to_json_schema(node: Any) -> Any:
    """Turn OpenAPI 3.0's `nullable: true` into JSON Schema's `type: [T, "null"]`."""
    if isinstance(node, dict):
        out = {k: _nullable_to_json_schema(v) for k, v in node.items() if k != "nullable"}
        if node.get("nullable") and "type" in node:
            out["type"] = [node["type"], "null"]
        return out
    if isinstance(node, list):
        return [_nullable_to_json_schema(v) for v in node]
    return node


def _load(document: str) -> Model:
    raw = resources.files(OPENAPI).joinpath(document).read_text(encoding="utf-8")
    operation = json.loads(raw)["paths"][API_PATH]["post"]
    request = operation["requestBody"]["content"]["application/json"]["schema"]
    response = operation["responses"]["200"]["content"]["application/json"]["schema"]
    (name,) = request["properties"]["model"]["enum"]
    return Model(
        name=name,
        document=document,
        request_schema=_overlay(request),
        response_schema=_nullable_to_json_schema(response),
    )


@functools.cache
def registry() -> dict[str, Model]:
    """Every model with an embedded document, by name (`flux-pro`, `flux/dev`, ...)."""
    docs = resources.files(OPENAPI).iterdir()
    models = (_load(d.name) for d in docs if d.name.endswith(".openapi.json"))
    return {m.name: m for m in sorted(models, key=lambda m: m.name)}


def get_model(name: str) -> Model | None:
    return registry().get(name)


@functools.cache
def _validator(name: str) -> Draft7Validator:
    from jsonschema import Draft7Validator

    return Draft7Validator(registry()[name].request_schema)


@functools.cache
def _fast_check(name: str) -> Callable[[Any], Any]:
    """A compiled validator (fastjsonschema, much faster: docs/benchmarks.md) that only
    answers yes or no; jsonschema explains the rare no. Both are built once per model."""
    return compiled_validator(registry()[name].request_schema, use_default=False)


def is_valid_body(body: Mapping[str, Any]) -> bool:
    """Whether `body` is valid for its model: the fast path of `check_body`."""
    import fastjsonschema

    model = body.get("model")
    if not isinstance(model, str) or model not in registry():
        return False
    try:
        _fast_check(model)(body)
    except fastjsonschema.JsonSchemaException:
        return False
    return True


def check_body(body: Mapping[str, Any]) -> list[FieldError]:
    """Every way `body` breaks the schema of the model it names, most precise message first."""
    model = body.get("model")
    if not isinstance(model, str) or model not in registry():
        return [FieldError("model", _unknown_model(model))]
    inputs = _input_problems(body)
    if not inputs and is_valid_body(body):
        return []
    validator = _validator(model)
    errors = [f for e in sorted(validator.iter_errors(body), key=error_order) for f in explain(e)]
    errors += inputs
    if not errors:  # the fast validator checks formats that jsonschema leaves unchecked
        errors.append(FieldError("", "the body does not match the model's schema"))
    return errors


def _unknown_model(model: Any) -> str:
    """An unknown model's message, naming the close ones (model names share "flux")."""
    names = list(registry())
    short = {n.rsplit("/", 1)[-1] if n.startswith("blackforestlabs/") else n: n for n in names}
    close: list[str] = []
    hint = ""
    if isinstance(model, str):
        close = [short[c] for c in difflib.get_close_matches(model, list(short), n=4, cutoff=0.6)]
        hint = did_you_mean(model, names, cutoff=0.8)
    listing = f"`flux-pipeline models` lists all {len(names)}"
    if close:
        return f"unknown model {model!r}{hint}; close ones: {', '.join(close)} ({listing})"
    return f"unknown model {model!r}; {listing}: {', '.join(names)}"


def _input_problems(body: Mapping[str, Any]) -> list[FieldError]:
    """Input image values that are neither a URL, a `data:` URI nor an image_file() reference."""
    problems = []
    for field in IMAGE_FIELDS:
        value = body.get(field)
        values = enumerate(value) if isinstance(value, list) else [(None, value)]
        for index, each in values:
            reason = value_problem(each)
            if reason:
                problems.append(FieldError(field if index is None else f"{field}.{index}", reason))
    return problems
