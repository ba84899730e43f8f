"""The API's size and range rules, for every model, as the client enforces them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st
from strategies import all_models, models, required_inputs, sides

from flux_pipeline.provider.registry import (
    KONTEXT_SIZES,
    PRESETS,
    ULTRA_SIZES,
    _input_problems,
    _validator,
    check_body,
    is_valid_body,
    registry,
)

EXPECTED_PRESETS = {
    "square_hd": (1024, 1024),
    "square": (512, 512),
    "portrait_4_3": (768, 1024),
    "portrait_16_9": (576, 1024),
    "landscape_4_3": (1024, 768),
    "landscape_16_9": (1024, 576),
}


def body(model: str, **fields: object) -> dict[str, object]:
    """A body of `model` with the input image it requires, if any."""
    return {"model": model, "prompt": "a kettle", **required_inputs(model), **fields}


@given(model=models, width=sides, height=sides)
def test_size_is_accepted_iff_in_range_and_multiple_of_32(
    model: str, width: int, height: int
) -> None:
    low, high = registry()[model].size_range or (0, 0)
    ok = all(low <= side <= high and side % 32 == 0 for side in (width, height))
    errors = check_body(body(model, image_size={"width": width, "height": height}))
    assert (not errors) == ok, errors
    if ok:
        assert registry()[model].size(
            body(model, image_size={"width": width, "height": height})
        ) == (width, height)
    else:
        assert all(e.path.startswith("image_size.") for e in errors)


@given(model=models, width=st.floats(min_value=256, max_value=1440).filter(lambda f: f % 1))
def test_fractional_sizes_are_rejected(model: str, width: float) -> None:
    assert check_body(body(model, image_size={"width": width, "height": 768}))


@pytest.mark.parametrize("model", sorted(m for m in registry() if registry()[m].size_range))
@pytest.mark.parametrize("preset", sorted(EXPECTED_PRESETS))
def test_every_preset_is_accepted_and_resolves(model: str, preset: str) -> None:
    assert check_body(body(model, image_size=preset)) == []
    assert registry()[model].size(body(model, image_size=preset)) == EXPECTED_PRESETS[preset]
    assert PRESETS == EXPECTED_PRESETS


@pytest.mark.parametrize("model", sorted(m for m in registry() if registry()[m].size_range))
def test_default_size_is_landscape_4_3(model: str) -> None:
    assert registry()[model].size(body(model)) == (1024, 768)


@pytest.mark.parametrize("ratio", sorted(ULTRA_SIZES))
def test_ultra_sizes_follow_the_aspect_ratio(ratio: str) -> None:
    ultra = registry()["flux-pro/v1.1-ultra"]
    assert check_body(body(ultra.name, aspect_ratio=ratio)) == []
    width, height = ultra.likely_size(body(ultra.name, aspect_ratio=ratio))
    a, b = map(int, ratio.split(":"))
    assert abs(width / height - a / b) < 0.02
    assert 3_500_000 < width * height < 4_600_000
    # Only the default ratio's size is documented: another is recorded, not checked.
    documented = ultra.size(body(ultra.name, aspect_ratio=ratio))
    assert documented == ((2752, 1536) if ratio == "16:9" else None)


@pytest.mark.parametrize("ratio", sorted(KONTEXT_SIZES))
@pytest.mark.parametrize("kind", ["text-to-image", "image-to-image"])
def test_kontext_checks_only_the_documented_default_sizes(ratio: str, kind: str) -> None:
    kontext = registry()[f"flux/kontext-pro/{kind}"]
    request = body(kontext.name, aspect_ratio=ratio)
    documented = {"text-to-image": ("1:1", (1024, 1024)), "image-to-image": ("16:9", (1184, 880))}
    default_ratio, default_size = documented[kind]
    assert kontext.size(request) == (default_size if ratio == default_ratio else None)
    width, height = kontext.likely_size(request)
    assert 600_000 < width * height < 1_200_000 and width % 16 == height % 16 == 0


def test_ultra_rejects_image_size() -> None:
    errors = check_body(body("flux-pro/v1.1-ultra", image_size="square"))
    assert [e.path for e in errors] == ["image_size"]


OUT_OF_RANGE = [
    ("num_images", 0),
    ("num_images", 5),
    ("num_images", 1.5),
    ("num_inference_steps", 0),
    ("num_inference_steps", 51),
    ("guidance_scale", 0.5),
    ("guidance_scale", 21),
    ("safety_tolerance", "7"),
    ("safety_tolerance", 2),
    ("seed", 0),
    ("seed", -3),
    ("prompt", "x" * 4001),
]


@pytest.mark.parametrize(("field", "value"), OUT_OF_RANGE)
def test_out_of_range_fields_are_rejected_with_their_path(field: str, value: object) -> None:
    errors = check_body(body("flux-pro", **{field: value}))
    assert errors and {e.path for e in errors} == {field}


@given(model=all_models, count=st.integers(min_value=-5, max_value=10))
def test_num_images_range_for_every_model(model: str, count: int) -> None:
    errors = check_body(body(model, num_images=count))
    takes_count = "num_images" in registry()[model].fields  # FLUX.2 pro and max make one
    assert (not errors) == (takes_count and 1 <= count <= 4)


@given(model=all_models, steps=st.integers(min_value=-5, max_value=80))
def test_num_inference_steps_range(model: str, steps: int) -> None:
    schema = registry()[model].request_schema["properties"].get("num_inference_steps")
    errors = check_body(body(model, num_inference_steps=steps))
    if schema is None:
        assert errors and errors[0].path == "num_inference_steps"
    else:
        ok = steps >= schema["minimum"] and steps <= schema.get("maximum", 10**9)
        assert (not errors) == ok


@given(model=all_models, length=st.integers(min_value=0, max_value=4100))
def test_prompt_length_limit(model: str, length: int) -> None:
    errors = check_body(body(model) | {"prompt": "p" * length})
    assert (not errors) == (length <= 4000)


def test_unknown_fields_are_errors_with_a_suggestion() -> None:
    (error,) = check_body(body("flux-pro", num_image=2))
    assert error.path == "num_image"
    assert "did you mean 'num_images'" in error.message


def test_fields_of_other_models_are_errors() -> None:
    (error,) = check_body(body("flux/schnell", output_format="png"))
    assert error.path == "output_format"


def test_embedded_documents_are_the_providers_unchanged() -> None:
    shared = Path(__file__).parents[2] / "shared" / "api"
    if not shared.is_dir():
        pytest.skip("../shared is not beside this checkout")
    from importlib import resources

    # Every embedded document is the provider's, byte for byte. (The provider publishes more
    # models than the tool embeds so far: those are not checked here.)
    embedded = [
        d
        for d in resources.files("flux_pipeline.provider.openapi").iterdir()
        if d.name.endswith(".openapi.json")
    ]
    assert embedded
    for doc in embedded:
        assert doc.read_bytes() == (shared / doc.name).read_bytes(), doc.name


# ----- the compiled fast path agrees with jsonschema -------------------------------------------

field_values = st.one_of(
    st.integers(-10, 2000),
    st.floats(-5, 2000, allow_nan=False),
    st.text(max_size=5),
    st.booleans(),
    st.none(),
    st.sampled_from(["square", "2", "png", "16:9"]),
    st.fixed_dictionaries({"width": st.integers(0, 2000), "height": st.integers(0, 2000)}),
)


@given(model=all_models, data=st.data())
def test_fast_and_precise_validators_agree(model: str, data: st.DataObject) -> None:
    fields = sorted(registry()[model].fields - {"model"}) + ["num_image"]
    extra = data.draw(st.dictionaries(st.sampled_from(fields), field_values, max_size=4))
    candidate = {"model": model, "prompt": "p", **extra}
    # jsonschema leaves `format: uri` unchecked where fastjsonschema checks it (`image_url:
    # ""`): the precise side is jsonschema with the project's own check of image values.
    slow = [*_validator(model).iter_errors(candidate), *_input_problems(candidate)]
    assert is_valid_body(candidate) == (not slow)
    assert (check_body(candidate) == []) == (not slow)


@pytest.mark.parametrize("value", ["", "x", "ftp"])
def test_an_image_value_that_is_no_url_is_refused_by_both_validators(value: str) -> None:
    # Found by the property above in a fresh clone: fastjsonschema checks `format: uri`,
    # jsonschema does not; the project's own check of image values says why.
    body = {"model": "flux/dev/image-to-image", "prompt": "p", "image_url": value}
    assert not is_valid_body(body)
    assert any("image_file" in e.message or "URL" in e.message for e in check_body(body))
