"""Assets (issue 26): slots, picks, renditions delivered make-like for no credit, stale picks
that leave approved files untouched, hand edits never overwritten without --force — against
the emulator, with its bill counted."""

from __future__ import annotations

import json
from pathlib import Path

import jsonschema
import pytest
from helpers import invoke, write_spec
from hypothesis import given
from hypothesis import strategies as st
from PIL import Image

from flux_pipeline import library
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.language.assets import Transform
from flux_pipeline.store.renditions import render

ICONS = """
    version: 1
    name: icons
    model: flux/schnell
    defaults: {image_size: {width: 512, height: 512}}
    jobs:
      - name: "icon-{{ subject }}-{{ model | slug }}"
        prompt: a flat icon of a {{ subject }}
        matrix: {subject: [gear, star], model: [flux/schnell, flux/dev]}
        request: {model: "{{ model }}"}
        repeat: 2
        assets:
          per: [subject]
          files:
            - {path: "assets/icons/{{ subject }}-64.png", resize: 64x64}
            - {path: "assets/icons/{{ subject }}-256.webp", resize: 256x256, quality: 80}
            - {path: "assets/icons/{{ subject }}.jpg"}
"""
FILES = ["gear-64.png", "gear-256.webp", "gear.jpg", "star-64.png", "star-256.webp", "star.jpg"]


def run(url: str, spec: Path, *args: str) -> object:
    return invoke("run", "--base-url", url, *args, str(spec), env={"AIMLAPI_KEY": "k"})


def paid(server: EmulatorServer) -> int:
    return int(server.emulator.counters.snapshot()["paid"])


def asset_bytes(root: Path) -> dict[str, bytes]:
    return {name: (root / "assets/icons" / name).read_bytes() for name in FILES}


def mtimes(root: Path) -> dict[str, int]:
    return {name: (root / "assets/icons" / name).stat().st_mtime_ns for name in FILES}


@pytest.fixture
def icons(tmp_path: Path, emulator: EmulatorServer) -> Path:
    """The icon spec, run once and both slots picked (nothing delivered yet)."""
    spec = write_spec(tmp_path, ICONS, "icons.yaml")
    first = run(emulator.url, spec)
    assert first.exit_code == 0, first.output  # type: ignore[attr-defined]
    assert "slot gear: 4 candidates, no pick" in first.stdout  # type: ignore[attr-defined]
    assert not (tmp_path / "assets").exists()
    for slot, candidate in [
        ("gear", "icon-gear-flux-dev-r2"),
        ("star", "icon-star-flux-schnell-r1"),
    ]:
        picked = invoke("pick", str(spec), slot, candidate)
        assert picked.exit_code == 0, picked.output
    return spec


def test_picked_slots_are_delivered_at_their_sizes_and_formats_then_left_alone(
    icons: Path, emulator: EmulatorServer
) -> None:
    root = icons.parent
    bill = paid(emulator)
    delivered = run(emulator.url, icons)
    assert delivered.exit_code == 0, delivered.output  # type: ignore[attr-defined]
    assert paid(emulator) == bill  # delivery costs nothing
    for name, (fmt, size) in {
        "gear-64.png": ("PNG", (64, 64)),
        "gear-256.webp": ("WEBP", (256, 256)),
        "gear.jpg": ("JPEG", (512, 512)),
    }.items():
        with Image.open(root / "assets/icons" / name) as image:
            assert (image.format, image.size) == (fmt, size)
    lock = json.loads((root / "icons.lock.json").read_text())
    record = lock["assets"]["assets/icons/gear-64.png"]
    assert record["source"]["candidate"] == "icon-gear-flux-dev-r2"
    assert record["transform"] == {"format": "png", "resize": "64x64", "fit": "cover"}
    # A rerun pays nothing and rewrites nothing.
    before, times = asset_bytes(root), mtimes(root)
    again = run(emulator.url, icons)
    assert again.exit_code == 0 and "delivered" not in again.stdout  # type: ignore[attr-defined]
    assert (asset_bytes(root), mtimes(root), paid(emulator)) == (before, times, bill)
    # A deleted rendition comes back, for no credit and no request.
    requests = emulator.emulator.counters.snapshot()["requests"]
    (root / "assets/icons/star-64.png").unlink()
    restored = run(emulator.url, icons)
    assert "delivered assets/icons/star-64.png" in restored.stdout  # type: ignore[attr-defined]
    assert asset_bytes(root) == before
    assert emulator.emulator.counters.snapshot()["requests"] == requests
    assert invoke("check", str(icons)).exit_code == 0


def test_a_stale_pick_leaves_the_assets_untouched_until_picked_again(
    icons: Path, emulator: EmulatorServer
) -> None:
    root = icons.parent
    run(emulator.url, icons)
    before = asset_bytes(root)
    icons.write_text(icons.read_text().replace("a flat icon of a", "a round icon of a"))
    rerun = run(emulator.url, icons)
    assert rerun.exit_code == 0, rerun.output  # type: ignore[attr-defined]
    assert "8 done" in rerun.stdout  # type: ignore[attr-defined]
    assert asset_bytes(root) == before  # approved files survive the prompt edit
    assert "pick icon-gear-flux-dev-r2 is stale (prompt (" in rerun.stdout  # type: ignore[attr-defined]
    check = invoke("check", str(icons))
    assert check.exit_code == 1
    assert "assets/icons/gear-64.png: pick icon-gear-flux-dev-r2 is stale" in check.stdout
    assert "pick again" in check.stdout
    for slot, candidate in [
        ("gear", "icon-gear-flux-schnell-r1"),
        ("star", "icon-star-flux-dev-r1"),
    ]:
        assert invoke("pick", str(icons), slot, candidate).exit_code == 0
    delivered = run(emulator.url, icons)
    assert "delivered assets/icons/gear-64.png" in delivered.stdout  # type: ignore[attr-defined]
    assert asset_bytes(root) != before
    assert invoke("check", str(icons)).exit_code == 0


def test_a_file_changed_by_hand_is_kept_unless_forced(
    icons: Path, emulator: EmulatorServer
) -> None:
    root = icons.parent
    run(emulator.url, icons)
    edited = root / "assets/icons/gear-64.png"
    Image.new("RGB", (64, 64), "red").save(edited)
    mine = edited.read_bytes()
    kept = run(emulator.url, icons)
    assert kept.exit_code == 3  # type: ignore[attr-defined]
    assert "kept assets/icons/gear-64.png: changed by hand" in kept.stdout  # type: ignore[attr-defined]
    assert edited.read_bytes() == mine
    check = invoke("check", str(icons))
    assert check.exit_code == 1 and "gear-64.png: changed by hand" in check.stdout
    refused = invoke("deliver", str(icons))
    assert refused.exit_code == 3 and edited.read_bytes() == mine
    forced = invoke("deliver", "--force", str(icons))
    assert forced.exit_code == 0, forced.output
    assert "delivered assets/icons/gear-64.png" in forced.stdout
    assert edited.read_bytes() != mine
    assert invoke("check", str(icons)).exit_code == 0


def test_per_across_a_model_axis_gathers_every_models_images(icons: Path) -> None:
    found = library.assets(icons)
    assert [s.slot.name for s in found.slots] == ["gear", "star"]
    assert [c.name for c in found.slots[0].slot.candidates] == [
        "icon-gear-flux-schnell-r1",
        "icon-gear-flux-schnell-r2",
        "icon-gear-flux-dev-r1",
        "icon-gear-flux-dev-r2",
    ]


ONE_EACH = """
    version: 1
    model: flux/schnell
    defaults: {image_size: {width: 256, height: 256}}
    jobs:
      - name: "hero-{{ mood }}"
        prompt: a {{ mood }} hero image
        matrix: {mood: [calm, bold]}
        assets:
          files: [{path: "site/{{ mood }}.webp", resize: 128x64, fit: contain}]
      - name: "badge"
        prompt: a badge
        request: {num_images: 2}
        assets:
          files: [{path: "site/badge.png"}]
"""


def test_a_slot_with_one_candidate_needs_no_pick_and_one_with_more_is_reported(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(tmp_path, ONE_EACH)
    result = run(emulator.url, spec)
    assert result.exit_code == 0, result.output  # type: ignore[attr-defined]
    assert "delivered site/calm.webp" in result.stdout  # type: ignore[attr-defined]
    with Image.open(tmp_path / "site/bold.webp") as image:
        assert image.size == (128, 64)
    assert "slot badge: 2 candidates, no pick" in result.stdout  # type: ignore[attr-defined]
    assert not (tmp_path / "site/badge.png").exists()
    check = invoke("check", str(spec))
    assert check.exit_code == 1 and "slot badge: 2 candidates, no pick" in check.stdout
    assert invoke("check", "--allow-unpicked", str(spec)).exit_code == 0
    assert invoke("pick", str(spec), "badge", "badge:2").exit_code == 0
    assert "delivered site/badge.png" in run(emulator.url, spec).stdout  # type: ignore[attr-defined]
    lock = json.loads((tmp_path / "spec.lock.json").read_text())
    assert lock["assets"]["site/badge.png"]["source"]["image"] == 1


def test_the_picks_file_is_the_same_whatever_the_order_of_the_picks(icons: Path) -> None:
    picks = icons.with_name("icons.picks.yaml")
    first = picks.read_text()
    picks.unlink()
    for slot, candidate in [
        ("star", "icon-star-flux-schnell-r1"),
        ("gear", "icon-gear-flux-dev-r2"),
    ]:
        assert invoke("pick", str(icons), slot, candidate).exit_code == 0
    assert picks.read_text() == first
    assert "version: 1\nslots:\n  gear:\n    pick: icon-gear-flux-dev-r2\n" in first


def test_a_typo_in_a_hand_edited_picks_file_is_an_error_at_its_line(icons: Path) -> None:
    picks = icons.with_name("icons.picks.yaml")
    text = picks.read_text().replace("  star:", "  stra:")
    picks.write_text(text)
    line = text.splitlines().index("  stra:") + 1
    result = invoke("check", str(icons))
    assert result.exit_code == 1
    assert f"icons.picks.yaml:{line}: no slot 'stra' in icons.yaml (did you mean 'star'?)" in (
        result.stderr
    )


@pytest.mark.parametrize(
    ("files", "line", "message"),
    [
        (
            ['{path: "a/{{ subject }}.png"}', '{path: "a/{{ subject }}.png", resize: 8x8}'],
            10,
            "slot 'gear' writes 'a/gear.png' too (line 9)",
        ),
        (['{path: "../../elsewhere/{{ subject }}.png"}'], 9, "is outside the spec's folder"),
        (['{path: "a/{{ subject }}.gif"}'], 9, "unknown image extension '.gif'"),
        (['{path: "a/{{ subject }}.png", resize: 64xx}'], 9, "resize '64xx' is not WxH"),
        (['{path: "a/{{ subject }}-{{ style }}.png"}'], 9, "undefined variable 'style'"),
    ],
    ids=["same-path", "outside", "extension", "resize", "not-in-per"],
)
def test_asset_declarations_are_checked_at_their_spec_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, files: list[str], line: int, message: str
) -> None:
    listed = "".join(f"\n                - {f}" for f in files)
    write_spec(
        tmp_path / "project",
        """
        version: 1
        jobs:
          - name: "icon-{{ subject }}-{{ style }}"
            prompt: an icon of a {{ subject }}
            matrix: {subject: [gear], style: [flat, line]}
            assets:
              per: [subject]
              files:FILES
        """.replace("FILES", listed),
    )
    monkeypatch.chdir(tmp_path / "project")
    result = invoke("validate", "spec.yaml")
    assert result.exit_code == 1
    assert f"spec.yaml:{line} " in result.stderr and message in result.stderr, result.stderr


SIDES = st.integers(min_value=1, max_value=96)


@given(
    source=st.tuples(SIDES, SIDES),
    target=st.tuples(SIDES, SIDES),
    fit=st.sampled_from(["cover", "contain", "stretch"]),
)
def test_a_rendition_has_exactly_the_asked_size_cover_never_pads_contain_never_crops(
    tmp_path_factory: pytest.TempPathFactory,
    source: tuple[int, int],
    target: tuple[int, int],
    fit: str,
) -> None:
    folder = tmp_path_factory.mktemp("rendition")
    path = folder / "source.png"
    Image.new("RGBA", source, (200, 30, 30, 255)).save(path)
    (folder / "made.png").write_bytes(render(path, Transform("png", target, fit)))
    with Image.open(folder / "made.png") as out:
        assert out.size == target
        alpha = out.convert("RGBA").getchannel("A")
        if fit != "contain":
            assert alpha.getextrema() == (255, 255)  # every pixel is the image: no padding
            return
        box = alpha.point(lambda a: 255 if a > 127 else 0).getbbox()
        assert box is not None
        width, height = box[2] - box[0], box[3] - box[1]
        # Nothing cropped: the whole image fits, touching two opposite sides, its shape kept.
        assert width == target[0] or height == target[1]
        scale = min(target[0] / source[0], target[1] / source[1])
        assert abs(width - source[0] * scale) <= 1.5 and abs(height - source[1] * scale) <= 1.5


def test_the_json_of_plan_check_and_pick_describes_slots_and_files_as_documented(
    icons: Path, emulator: EmulatorServer
) -> None:
    run(emulator.url, icons)
    docs = Path(__file__).parent.parent / "docs" / "json"
    for command, args in [
        ("plan", ["plan", "--json"]),
        ("check", ["check", "--json"]),
        ("pick", ["pick", "--list", "--json"]),
    ]:
        data = json.loads(invoke(*args, str(icons)).stdout)
        jsonschema.validate(data, json.loads((docs / f"{command}.schema.json").read_text()))
        (entry,) = data["specs"]
        assert [s["slot"] for s in entry["slots"]] == ["gear", "star"]
        assert entry["slots"][0]["pick"] == "icon-gear-flux-dev-r2"
        assert {a["status"] for a in entry["assets"]} == {"up to date"}


def test_the_gallery_marks_each_pick_and_lists_the_asset_files(
    icons: Path, emulator: EmulatorServer
) -> None:
    run(emulator.url, icons)
    made = invoke("gallery", str(icons))
    assert made.exit_code == 0, made.output
    page = (icons.parent / "out/icons/.flux-cache/gallery/gallery.html").read_text()
    assert page.count("★ picked for") == 2
    assert '<figure class="picked"><a href="../../icon-gear-flux-dev-r2.' in page
    assert page.count('<img class="asset"') == len(FILES)
    assert "assets/icons/gear-256.webp</td><td>gear</td><td>icon-gear-flux-dev-r2" in page


def test_diff_lists_the_asset_files_delivered_and_made_again(
    icons: Path, emulator: EmulatorServer
) -> None:
    before = icons.with_name("before.lock.json")
    before.write_text(icons.with_name("icons.lock.json").read_text())  # nothing delivered yet
    run(emulator.url, icons)
    delivered = invoke("diff", str(icons), "--against", str(before))
    assert "asset    assets/icons/gear-64.png: delivered from icon-gear-flux-dev-r2" in (
        delivered.stdout
    )
    before.write_text(icons.with_name("icons.lock.json").read_text())
    assert invoke("pick", str(icons), "gear", "icon-gear-flux-schnell-r1").exit_code == 0
    run(emulator.url, icons)
    again = json.loads(invoke("diff", str(icons), "--against", str(before), "--json").stdout)
    assert again["assets"]["assets/icons/gear.jpg"] == (
        "made again from icon-gear-flux-dev-r2 → icon-gear-flux-schnell-r1"
    )
    assert not any(path.startswith("assets/icons/star") for path in again["assets"])


def test_prune_removes_the_asset_files_the_spec_no_longer_declares(
    icons: Path, emulator: EmulatorServer
) -> None:
    root = icons.parent
    run(emulator.url, icons)
    lines = icons.read_text().splitlines(keepends=True)
    icons.write_text("".join(line for line in lines if "{{ subject }}.jpg" not in line))
    kept = run(emulator.url, icons)  # without --prune, an undeclared file stays, still recorded
    assert (root / "assets/icons/gear.jpg").is_file()
    assert "assets/icons/gear.jpg" in json.loads((root / "icons.lock.json").read_text())["assets"]
    assert kept.exit_code == 0  # type: ignore[attr-defined]
    Image.new("RGB", (8, 8), "blue").save(root / "assets/icons/star.jpg")  # changed by hand
    pruned = run(emulator.url, icons, "--prune")
    assert "pruned assets/icons/gear.jpg" in pruned.stdout  # type: ignore[attr-defined]
    assert not (root / "assets/icons/gear.jpg").exists()
    assert (root / "assets/icons/star.jpg").is_file()  # not as delivered: never deleted
    lock = json.loads((root / "icons.lock.json").read_text())
    assert not any(path.endswith(".jpg") for path in lock["assets"])


def test_a_rendition_drops_metadata_and_keeps_the_colour_profile(tmp_path: Path) -> None:
    from PIL import ImageCms, PngImagePlugin

    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    source = tmp_path / "source.png"
    info = PngImagePlugin.PngInfo()
    info.add_text("Comment", "prompt: a secret prompt")
    exif = Image.Exif()
    exif[0x010E] = "camera notes"
    Image.new("RGB", (40, 20), "green").save(source, pnginfo=info, icc_profile=profile, exif=exif)
    for fmt, ext in [("png", "png"), ("jpeg", "jpg"), ("webp", "webp")]:
        made = tmp_path / f"made.{ext}"
        made.write_bytes(render(source, Transform(fmt, (20, 20), "cover", quality=80)))
        with Image.open(made) as image:
            assert image.info.get("icc_profile") == profile
            assert "Comment" not in image.info and not image.getexif()
            assert b"secret prompt" not in made.read_bytes()


def test_the_python_api_picks_and_lists_the_delivered_assets(tmp_path: Path) -> None:
    import flux_pipeline

    spec = write_spec(tmp_path, ONE_EACH)
    first = flux_pipeline.run(spec, emulator=True)
    assert sorted(first.assets) == ["site/bold.webp", "site/calm.webp"]
    slots = {s.slot.name: s for s in flux_pipeline.assets(spec).slots}
    assert str(slots["badge"].status) == "unpicked"
    picks = flux_pipeline.pick(spec, "badge", "badge:1", note="the round one")
    assert picks.get("badge").note == "the round one"
    second = flux_pipeline.run(spec, emulator=True)
    assert second.assets == ("site/badge.png",) and second.ok


def test_a_run_with_nothing_to_deliver_does_not_wait_for_the_folders_writer(
    icons: Path, emulator: EmulatorServer
) -> None:
    from flux_pipeline.store.writer_lock import hold_output_folder

    run(emulator.url, icons)  # delivered
    spec = icons
    output = icons.parent / "out/icons"
    with hold_output_folder(
        output, command="run", spec=spec, lock_path=icons.with_name("icons.lock.json")
    ):
        again = run(emulator.url, icons)  # another writer holds the folder: nothing to do
        assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
        (icons.parent / "assets/icons/gear-64.png").unlink()
        busy = run(emulator.url, icons)  # now a file is to be written: the folder is needed
        assert busy.exit_code == 2  # type: ignore[attr-defined]
