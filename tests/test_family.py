"""The whole FLUX family: every model's document plus the prose overlay, as `validate` applies
them — bodies generated from each document are accepted; sizes at the edges, aspect ratios,
input image list lengths and lora scales are accepted or rejected exactly as documented."""

from __future__ import annotations

from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st
from strategies import TINY_PNG, all_models, from_schema, required_inputs

from flux_pipeline.cli.reports import models_table
from flux_pipeline.provider.registry import check_body, registry

RATIOS = ["21:9", "16:9", "4:3", "3:2", "1:1", "2:3", "3:4", "9:16", "9:21"]
FLUX2 = sorted(m for m in registry() if m.startswith("blackforestlabs/flux-2"))
KONTEXT_EDITS = ["flux/kontext-pro/image-to-image", "flux/kontext-max/image-to-image"]
EDITS = [m for m in FLUX2 if m.endswith("-edit")]
LORAS = [m for m in FLUX2 if "lora" in m]


def body(model: str, **fields: Any) -> dict[str, Any]:
    return {"model": model, "prompt": "a teapot", **required_inputs(model), **fields}


def test_the_family_has_twenty_models_each_from_its_document() -> None:
    assert len(registry()) == 20
    assert {m.document for m in registry().values()} == {
        f"{name}.openapi.json"
        for name in [
            "flux-pro",
            "flux-pro-v1.1",
            "flux-pro-v1.1-ultra",
            "flux-dev",
            "flux-schnell",
            "flux-realism",
            "flux-dev-image-to-image",
            "flux-kontext-pro-text-to-image",
            "flux-kontext-max-text-to-image",
            "flux-kontext-pro-image-to-image",
            "flux-kontext-max-image-to-image",
            "flux-srpo",
            "flux-srpo-image-to-image",
            "flux-2",
            "flux-2-pro",
            "flux-2-max",
            "flux-2-edit",
            "flux-2-pro-edit",
            "flux-2-lora",
            "flux-2-lora-edit",
        ]
    }
    table = models_table(registry().values())
    assert all(name in table for name in registry())
    assert "flux/dev/image-to-image" in table and "the input's size" in table


@settings(max_examples=200)
@given(data=st.data(), model=all_models)
def test_bodies_generated_from_each_document_are_accepted(model: str, data: st.DataObject) -> None:
    generated = data.draw(from_schema(dict(registry()[model].request_schema)))
    assert check_body(generated) == [], generated


@pytest.mark.parametrize("model", FLUX2)
@pytest.mark.parametrize("side", [448, 480, 512, 544, 2016, 2048, 2080, 1000])
def test_flux2_sizes_are_512_to_2048_in_multiples_of_32(model: str, side: int) -> None:
    errors = check_body(body(model, image_size={"width": side, "height": 1024}))
    assert (not errors) == (512 <= side <= 2048 and side % 32 == 0), errors
    assert all(e.path == "image_size.width" for e in errors)


@pytest.mark.parametrize("model", sorted(m for m in registry() if "kontext" in m))
@pytest.mark.parametrize("ratio", [*RATIOS, "5:4", "1:2", "16:10"])
def test_kontext_takes_the_documented_aspect_ratios_and_no_image_size(
    model: str, ratio: str
) -> None:
    errors = check_body(body(model, aspect_ratio=ratio))
    assert (not errors) == (ratio in RATIOS)
    refused = check_body(body(model, image_size="square_hd"))
    assert [e.path for e in refused] == ["image_size"]
    assert "unknown field" in refused[0].message


@pytest.mark.parametrize("model", EDITS)
@given(count=st.integers(0, 6))
def test_flux2_edits_take_one_to_three_images(model: str, count: int) -> None:
    errors = check_body(body(model, image_urls=[TINY_PNG] * count))
    assert (not errors) == (1 <= count <= 3), errors


@pytest.mark.parametrize("model", KONTEXT_EDITS)
@given(count=st.integers(0, 7))
def test_kontext_edits_take_one_uri_or_a_list_of_up_to_four(model: str, count: int) -> None:
    assert check_body(body(model, image_url="https://example.com/a.jpg")) == []
    errors = check_body(body(model, image_url=["https://example.com/a.jpg"] * count))
    assert (not errors) == (1 <= count <= 4), errors


@pytest.mark.parametrize("model", ["flux/dev/image-to-image", "flux/srpo/image-to-image"])
def test_single_image_models_take_one_uri_only(model: str) -> None:
    errors = check_body(body(model, image_url=["https://example.com/a.jpg"]))
    assert errors and errors[0].path == "image_url"
    missing = {"model": model, "prompt": "p"}
    assert any("image_url" in e.message for e in check_body(missing))


@pytest.mark.parametrize("model", LORAS)
@given(
    count=st.integers(0, 5),
    scale=st.floats(-1, 5, allow_nan=False),
)
def test_loras_up_to_three_with_scales_from_0_to_4(model: str, count: int, scale: float) -> None:
    loras = [{"path": f"owner/lora-{k}", "scale": scale} for k in range(count)]
    errors = check_body(body(model, loras=loras))
    assert (not errors) == (count <= 3 and (count == 0 or 0 <= scale <= 4)), errors
    assert all(e.path.startswith("loras") for e in errors)


@pytest.mark.parametrize("model", LORAS)
def test_a_lora_takes_path_and_scale_only(model: str) -> None:
    errors = check_body(body(model, loras=[{"path": "owner/repo", "weight": 1}]))
    assert errors and "weight" in errors[0].path


@pytest.mark.parametrize("model", sorted(registry()))
def test_webp_only_where_the_document_allows_it(model: str) -> None:
    formats = registry()[model].request_schema["properties"].get("output_format", {})
    errors = check_body(body(model, output_format="webp"))
    assert (not errors) == ("webp" in formats.get("enum", ()))
    if model == "blackforestlabs/flux-2-max":
        assert errors  # "webp on the FLUX.2 models except flux-2-max"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("photos/mug.jpg", "image_file('photos/mug.jpg')"),
        ("file:photos/mug.jpg", "not a reference image_file() made"),
        ("ftp://example.com/a.jpg", "not an https:// URL or a data: URI"),
    ],
)
def test_an_input_that_is_no_url_says_to_use_image_file(value: str, says: str) -> None:
    errors = check_body(body("flux/kontext-pro/image-to-image", image_url=value))
    assert [e.path for e in errors] == ["image_url"]
    assert says in errors[0].message
    listed = check_body(body("blackforestlabs/flux-2-edit", image_urls=["https://a/b.png", value]))
    assert [e.path for e in listed] == ["image_urls.1"]


def test_a_wrong_model_name_lists_the_close_ones() -> None:
    (error,) = check_body({"model": "flux-2-pro", "prompt": "p"})
    assert "close ones: blackforestlabs/flux-2-pro" in error.message
    assert "`flux-pipeline models` lists all 20" in error.message
    (error,) = check_body({"model": "flux/kontext-pro/img2img", "prompt": "p"})
    assert "flux/kontext-pro/image-to-image" in error.message
