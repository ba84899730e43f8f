"""Input images from local files: `image_file()`, `files:` axes and the `stem` filter; every
bad input is one clear line with its spec line, before any request is sent."""

from __future__ import annotations

import io
import json
import struct
import zlib
from pathlib import Path

import pytest
from helpers import KEY, build_file_tree, invoke, write_spec
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.emulator.config import PNG_SIGNATURE
from flux_pipeline.language.spec import load_spec
from flux_pipeline.provider.inputs import MAX_INPUT_BYTES, InputFiles, parse_reference
from flux_pipeline.provider.registry import check_body
from flux_pipeline.store.planning import plan

EDIT_SPEC = """
version: 1
model: flux/kontext-pro/image-to-image
jobs:
  - name: "{{{{ photo | stem }}}}-{{{{ edit }}}}"
    prompt: "{{{{ edit }}}}"
    matrix:
      photo: {photos}
      edit: [marble, dusk]
    request:
      image_url: "{{{{ image_file(photo) }}}}"
"""


def photo(path: Path, size: tuple[int, int] = (96, 64), colour: tuple[int, ...] = (30, 90, 170)):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)
    return path


def png_claiming(width: int, height: int) -> bytes:
    """A small, sound PNG whose header claims `width` x `height` pixels."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return (
        PNG_SIGNATURE
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"\0" * 64))
        + chunk(b"IEND", b"")
    )


def test_files_axis_gives_sorted_spec_relative_paths_and_image_file_a_reference(
    tmp_path: Path,
) -> None:
    for name in ("b.png", "a.png", "notes.txt"):
        if name.endswith(".png"):
            photo(tmp_path / "photos" / name)
        else:
            (tmp_path / "photos" / name).write_text("x")
    spec = write_spec(tmp_path, EDIT_SPEC.format(photos='{files: "photos/*.png"}'))
    items = plan(load_spec(spec)).items
    assert [i.request.id for i in items] == ["a-marble", "a-dusk", "b-marble", "b-dusk"]
    assert items[0].request.vars == {"photo": "photos/a.png", "edit": "marble"}
    reference = parse_reference(items[0].request.body["image_url"])
    assert reference is not None and reference.path == "photos/a.png"
    assert reference.size == (96, 64)
    # Same bytes, same reference: the request's identity is the input's content.
    assert items[0].request.body["image_url"] == items[1].request.body["image_url"]


BAD_INPUTS = {
    "outside the folder": ("[../outside.png]", "input '../outside.png' is outside the spec's"),
    "missing": ("[photos/none.png]", "input 'photos/none.png' not found"),
    "not an image": ("[photos/notes.png]", "input 'photos/notes.png' is not an image the API"),
    "too many pixels": ("[photos/huge.png]", "more than the 40 megapixels an input may have"),
    "too many bytes": ("[photos/big.jpg]", f"more than the {MAX_INPUT_BYTES:,} an input"),
    "empty files axis": ('{files: "photos/*.webp"}', "files: 'photos/*.webp' matches no file"),
    "files axis outside": ('{files: "../*.png"}', "files: '../*.png' must stay inside"),
}


@pytest.mark.parametrize("case", sorted(BAD_INPUTS))
def test_a_bad_input_is_one_clear_line_and_nothing_is_sent(
    tmp_path: Path, emulator: EmulatorServer, case: str
) -> None:
    photos, message = BAD_INPUTS[case]
    root = tmp_path / "project"
    photo(tmp_path / "outside.png")
    build_file_tree(root, {"photos/notes.png": "not a picture", "photos/ok.png": b""})
    photo(root / "photos/ok.png")
    (root / "photos/huge.png").write_bytes(png_claiming(8000, 6000))
    with (root / "photos/big.jpg").open("wb") as big:
        big.truncate(MAX_INPUT_BYTES + 1)
    spec = write_spec(root, EDIT_SPEC.format(photos=photos))
    before = emulator.emulator.counters.snapshot()["requests"]
    for command in (["validate"], ["run", "--base-url", emulator.url]):
        result = invoke(*command, str(spec), env=KEY)
        assert result.exit_code == 1, result.stdout + result.stderr
        errors = [line for line in result.stderr.splitlines() if line.startswith("error:")]
        assert errors and all(message in line for line in errors), result.stderr
        assert all(f"{spec}:" in line for line in errors)  # file:line of the spec
        assert len({line.split(" {")[0] for line in errors}) == 1
    assert emulator.emulator.counters.snapshot()["requests"] == before


def test_an_input_changed_after_planning_fails_its_request_before_it_is_paid(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    from flux_pipeline.errors import RequestFailed
    from flux_pipeline.provider.inputs import Sender

    image = photo(tmp_path / "photos/a.png")
    spec = write_spec(tmp_path, EDIT_SPEC.format(photos="[photos/a.png]"))
    (item, _) = plan(load_spec(spec)).items
    photo(image, colour=(200, 10, 10))
    with pytest.raises(RequestFailed, match="changed since the request was planned"):
        Sender(tmp_path).wire_body(item.request.id, item.request.body)


def test_a_url_input_is_sent_as_written_and_a_lock_of_edits_holds_no_base64(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    photo(tmp_path / "photos/a.png", size=(640, 480))
    spec = write_spec(
        tmp_path,
        EDIT_SPEC.format(photos="[photos/a.png]")
        .replace(
            'image_url: "{{ image_file(photo) }}"',
            'image_urls: ["{{ image_file(photo) }}", "https://example.com/b.jpg"]',
        )
        .replace("flux/kontext-pro/image-to-image", "blackforestlabs/flux-2-edit"),
    )
    result = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert result.exit_code == 0, result.stderr
    lock = (tmp_path / "spec.lock.json").read_text()
    assert "base64" not in lock and len(lock) < 4_000
    bodies = [e["body"] for e in json.loads(lock)["requests"].values()]
    assert all(b["image_urls"][1] == "https://example.com/b.jpg" for b in bodies)
    assert all(b["image_urls"][0].startswith("file:photos/a.png#sha256=") for b in bodies)


def test_the_emulator_fetches_a_loopback_input_and_refuses_what_it_cannot_read(
    emulator: EmulatorServer,
) -> None:
    import httpx

    from flux_pipeline.provider.registry import API_PATH

    headers = {"Authorization": "Bearer k"}
    with httpx.Client(timeout=30) as http:
        made = http.post(
            emulator.url + API_PATH,
            json={"model": "flux/schnell", "prompt": "source", "image_size": "square"},
            headers=headers,
        ).json()
        source_url = made["data"][0]["url"]
        assert source_url.startswith("http://127.0.0.1")
        edit = {"model": "flux/dev/image-to-image", "prompt": "edit", "image_url": source_url}
        answer = http.post(emulator.url + API_PATH, json=edit, headers=headers)
        assert answer.status_code == 200, answer.text
        edited = http.get(answer.json()["data"][0]["url"]).content
        with Image.open(io.BytesIO(edited)) as image:
            assert image.size == (512, 512)  # flux/dev/image-to-image: the input's size
        for bad, says in (
            (source_url.replace("/files/", "/files/none-"), "cannot fetch the input"),
            ("data:image/png;base64,bm90IGFuIGltYWdl", "an input is not an image"),
        ):
            refused = http.post(
                emulator.url + API_PATH, json={**edit, "image_url": bad}, headers=headers
            )
            assert refused.status_code == 400 and says in refused.json()["message"]


def test_diff_and_body_changes_name_the_input_that_changed(tmp_path: Path) -> None:
    from flux_pipeline.language.bodies import body_changes

    image = photo(tmp_path / "photos/a.png")
    spec = write_spec(tmp_path, EDIT_SPEC.format(photos="[photos/a.png]"))
    before = plan(load_spec(spec)).items[0].request.body
    photo(image, colour=(1, 2, 3))
    after = plan(load_spec(spec)).items[0].request.body
    assert body_changes(before, after) == ["input photos/a.png changed"]
    assert body_changes(before, {**after, "prompt": "other"}) == [
        "prompt",
        "input photos/a.png changed",
    ]
    moved = {**after, "image_url": after["image_url"].replace("photos/a.png", "photos/b.png")}
    assert body_changes(before, moved) == ["image_url"]


# Names a camera, a phone or a screenshot tool makes: spaces, `#`, `%`, `&`, accents, even a
# line break. Not `/` (a folder) nor NUL, which no file name holds.
NAMES = st.text(
    alphabet=st.characters(blacklist_characters="/\0", blacklist_categories=("Cs",)),
    min_size=1,
    max_size=40,
).filter(lambda n: n not in (".", "..") and len(n.encode()) < 200)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(name=NAMES)
def test_any_file_name_round_trips_through_its_reference(tmp_path: Path, name: str) -> None:
    folder = tmp_path / "names"
    path = photo(folder / "photos" / (name + ".png"))
    reference = InputFiles(folder).load(f"photos/{path.name}")
    assert parse_reference(reference.text) == reference
    body = {"model": "flux/kontext-pro/image-to-image", "prompt": "p", "image_url": reference.text}
    assert check_body(body) == []


def test_a_screenshot_with_spaces_and_a_hash_in_its_name_is_edited(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    photo(tmp_path / "photos" / "Screenshot 2024-01-01 at 10.00.00.png")
    photo(tmp_path / "photos" / "a#b.png", colour=(200, 30, 30))
    text = EDIT_SPEC.format(photos='{files: "photos/*.png"}').replace("stem }}", "stem | slug }}")
    spec = write_spec(tmp_path, text)
    assert invoke("validate", str(spec)).exit_code == 0
    result = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert result.exit_code == 0, result.stdout + result.stderr
    assert emulator.emulator.counters.snapshot()["paid"] == 4
    lock = json.loads(spec.with_name("spec.lock.json").read_text())["requests"]
    assert "file:photos/Screenshot%202024-01-01%20at%2010.00.00.png#sha256=" in json.dumps(lock)
