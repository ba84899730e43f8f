"""The gallery page (checked in headless Chromium) and the PNG contact sheet."""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest
from helpers import ARTIFACTS, invoke, write_spec
from PIL import Image

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.review.sheet import LABEL_CHARS, LINE_H, _lines

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")
KEY = {"AIMLAPI_KEY": "test-key"}
SPEC = """
    version: 1
    name: grid
    defaults: {{output_format: png, image_size: {{width: 256, height: 256}}}}
    jobs:
      - name: "{{{{ product }}}}-{{{{ style }}}}"
        prompt: "{prompt}"
        matrix:
          product: [kettle, toaster, lamp]
          style: [minimal, retro]
"""


def spec_run(
    root: Path, server: EmulatorServer, prompt: str = "A {{ style }} {{ product }}"
) -> Path:
    return run_text(root, server, SPEC.format(prompt=prompt))


def run_text(root: Path, server: EmulatorServer, text: str, *args: str) -> Path:
    """Write a spec and run it against the emulator, which must succeed."""
    spec = write_spec(root, text)
    result = invoke("run", "--base-url", server.url, *args, str(spec), env=KEY)
    assert result.exit_code == 0, result.stdout + result.stderr
    return spec


def chromium(*args: str, profile: Path) -> str:
    assert CHROMIUM
    result = subprocess.run(
        [
            CHROMIUM,
            "--headless",
            "--no-sandbox",
            "--disable-gpu",
            "--no-first-run",
            "--disable-background-networking",
            "--disable-component-update",
            "--disable-sync",
            f"--user-data-dir={profile}",
            "--virtual-time-budget=10000",
            *args,
        ],
        capture_output=True,
        text=True,
        timeout=60,
    )
    return result.stdout


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_page_shows_every_image_and_the_axes_in_chromium(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = spec_run(tmp_path, emulator)
    result = invoke("gallery", str(spec))
    assert result.exit_code == 0
    page = tmp_path / "out/grid/.flux-cache/gallery/gallery.html"
    assert result.stdout == f"{page}: 6 images\n"
    url = page.as_uri()
    dom = chromium("--window-size=1600,4000", "--dump-dom", url, profile=tmp_path / "p1")
    assert re.search(r'<body data-loaded="6" data-images="6"', dom), dom[:500]
    assert 'class="broken"' not in dom
    for label in (
        "product = kettle",
        "product = toaster",
        "product = lamp",
        "style = minimal",
        "style = retro",
    ):
        assert label in dom
    shot = tmp_path / "gallery-screenshot.png"
    chromium("--window-size=1400,1200", f"--screenshot={shot}", url, profile=tmp_path / "p2")
    with Image.open(shot) as image:
        assert image.size == (1400, 1200)
        colours = image.convert("RGB").getcolors(maxcolors=1 << 20) or []
        assert len(colours) > 50  # images, not a blank page


def test_page_is_self_contained_with_relative_links(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = spec_run(tmp_path, emulator)
    page = tmp_path / "site/index.html"
    assert invoke("gallery", str(spec), "-o", str(page)).exit_code == 0
    text = page.read_text()
    assert "http://" not in text and "https://" not in text
    links = re.findall(r'(?:src|href)="([^"]+)"', text)
    assert len(links) == 12  # a thumbnail and a full-size link per image
    for link in links:
        assert not link.startswith("/") and (page.parent / link).is_file(), link
    assert text.count("<figure>") == 6
    assert "A retro kettle" in text and "seed " in text and "256x256" in text


def test_thumbnails_are_made_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = spec_run(tmp_path, emulator)
    assert invoke("gallery", str(spec)).exit_code == 0
    thumbs = sorted((tmp_path / "out/grid/.thumbs").iterdir())
    assert len(thumbs) == 6
    stamps = [t.stat().st_mtime_ns for t in thumbs]
    assert invoke("gallery", str(spec)).exit_code == 0
    assert [t.stat().st_mtime_ns for t in thumbs] == stamps


def test_rows_and_cols_choose_the_axes(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = spec_run(tmp_path, emulator)
    invoke("gallery", str(spec), "--rows", "product", "--cols", "style")
    text = (tmp_path / "out/grid/.flux-cache/gallery/gallery.html").read_text()
    assert "<th>product \\ style</th><th>style = minimal</th><th>style = retro</th>" in text


def test_contact_sheet_matches_the_grid(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = spec_run(tmp_path, emulator)
    result = invoke("gallery", str(spec), "--png")
    assert result.exit_code == 0
    sheet = tmp_path / "out/grid/.flux-cache/gallery/gallery.png"
    head, caption = LINE_H + 8, 3 * LINE_H + 4  # one line of column labels; 3 of captions
    with Image.open(sheet) as image:
        # label column + 3 columns of 256; title band + column labels + 2 rows of 256 + caption
        assert image.size == (160 + 3 * 256, 32 + head + 2 * (256 + caption))
        rgb = image.convert("RGB")
        filled = [
            rgb.getpixel((160 + c * 256 + 128, 32 + head + r * (256 + caption) + 128))
            != (250, 250, 250)
            for r in range(2)
            for c in range(3)
        ]
    assert filled == [True] * 6


def test_contact_sheet_labels_wrap_instead_of_being_cut() -> None:
    label = "product = Espresso Machine with a Steam Wand"
    lines = _lines(label, LABEL_CHARS, most=12)
    assert " ".join(lines) == label and all(len(line) <= LABEL_CHARS for line in lines)


def test_changed_shows_old_and_new_side_by_side(tmp_path: Path, emulator: EmulatorServer) -> None:
    def git(*args: str) -> None:
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
            cwd=tmp_path,
            check=True,
            capture_output=True,
        )

    git("init", "-q")
    spec = spec_run(tmp_path, emulator)
    git("add", "-A")
    git("commit", "-qm", "first")
    spec_run(tmp_path, emulator, prompt="A {{ style }} {{ product }} at dawn")
    assert invoke("gallery", str(spec)).exit_code == 0
    full = tmp_path / "out/grid/.flux-cache/gallery/gallery.html"
    before = full.read_bytes()
    made = invoke("gallery", str(spec), "--changed", "HEAD")
    assert made.exit_code == 0
    page = tmp_path / "out/grid/.flux-cache/gallery/gallery-changed.html"
    assert made.stdout == f"{page}: 6 images\n"  # the 6 changed requests
    assert full.read_bytes() == before  # its own file: the full gallery is left alone
    text = page.read_text()
    assert "Changed since HEAD" in text and "6 changed requests from" in text
    assert text.count('class="pair"') == 6
    assert text.count(' before"') == 6  # every old image came out of git
    # The prompts, old beside new.
    assert '<p class="prompt old">A retro kettle</p>' in text
    assert '<p class="prompt new">A retro kettle at dawn</p>' in text
    for link in re.findall(r'src="([^"]+)"', text):
        assert (page.parent / link).is_file()


def test_changed_shows_edits_not_run_yet_beside_the_old_images(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    spec = spec_run(tmp_path, emulator)
    for args in (["add", "-A"], ["commit", "-qm", "first"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True
        )
    text = spec.read_text().replace('{{ product }}"', '{{ product }} at dusk"')
    spec.write_text(text)  # edited, not run
    assert invoke("gallery", str(spec), "--changed", "HEAD").exit_code == 0
    text = (tmp_path / "out/grid/.flux-cache/gallery/gallery-changed.html").read_text()
    assert "Changed since HEAD: the spec's edits, not run yet" in text
    assert text.count('class="pair"') == 6 and text.count("not run yet</div>") == 6
    assert '<p class="prompt new">A retro kettle at dusk</p>' in text


def test_gallery_before_any_run_says_so(tmp_path: Path) -> None:
    spec = write_spec(tmp_path, SPEC.format(prompt="p"))
    result = invoke("gallery", str(spec))
    assert result.exit_code == 2
    assert result.stderr == f"error: {spec}: no lock yet; run the spec first\n"


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_an_edit_shows_its_input_beside_it_on_a_files_axis_grid(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    examples = Path(__file__).parents[1] / "examples"
    shutil.copytree(examples / "photos", tmp_path / "photos")
    spec = tmp_path / "product-edits.yaml"
    shutil.copy(examples / "product-edits.yaml", spec)
    assert invoke("run", "--base-url", emulator.url, str(spec), env=KEY).exit_code == 0
    assert invoke("gallery", str(spec)).exit_code == 0
    page = tmp_path / "out/product-edits/.flux-cache/gallery/gallery.html"
    text = page.read_text()
    inputs = re.findall(
        r'<a href="([^"]+)"><img src="([^"]+)" alt="input (photos/[a-z]+\.jpg)"', text
    )
    assert len(inputs) == 9  # one beside each edit
    for href, thumb, path in inputs:
        assert (page.parent / href).resolve() == (tmp_path / path).resolve()
        assert (page.parent / thumb).is_file()
    # The files: axis goes down, as a rows: axis does; its edits go across.
    assert '<th class="row">photo = photos/mug.jpg</th>' in text
    assert "<th>edit = on a marble table</th>" in text
    dom = chromium("--window-size=1600,4000", "--dump-dom", page.as_uri(), profile=tmp_path / "p")
    # 9 edits counted (their input photos shown beside them are not images of the spec)
    assert re.search(r'<body data-loaded="9" data-images="9"', dom), dom[:500]


@pytest.mark.skipif(CHROMIUM is None, reason="Debian's chromium is not installed")
def test_every_image_of_repeats_and_num_images_is_shown_with_rendered_titles(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = run_text(
        tmp_path,
        emulator,
        """
        version: 1
        model: flux/schnell
        defaults: {image_size: {width: 64, height: 64}, num_images: 2}
        jobs:
          - {name: "lantern-{{ repeat }}", prompt: a lantern, repeat: 4}
        """,
    )
    result = invoke("gallery", "--png", str(spec))
    assert result.exit_code == 0 and ": 8 images" in result.stdout
    page = tmp_path / "out/spec/.flux-cache/gallery/gallery.html"
    text = page.read_text()
    assert "{{" not in text and "<h2>lantern-‹repeat› (4 requests)" in text  # the job's name
    assert all(f"lantern-{r}-{k}" in text for r in range(1, 5) for k in (1, 2))
    dom = chromium("--window-size=1600,3000", "--dump-dom", page.as_uri(), profile=tmp_path / "p")
    assert re.search(r'<body data-loaded="8" data-images="8"', dom), dom[:500]
    with Image.open(tmp_path / "out/spec/.flux-cache/gallery/gallery.png") as sheet:
        assert sheet.width >= 8 * 256  # eight images side by side in one cell row


def test_rows_and_cols_are_checked_against_the_axes(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = spec_run(tmp_path, emulator)
    result = invoke("gallery", str(spec), "--rows", "prodcut")
    assert result.exit_code == 2
    assert "--rows 'prodcut' is no axis of the spec (did you mean 'product'?)" in result.stderr


def test_a_large_gallery_reports_progress_on_stderr(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = run_text(
        tmp_path,
        emulator,
        """
        version: 1
        model: flux/schnell
        defaults: {image_size: {width: 64, height: 64}}
        jobs:
          - {name: "n-{{ i }}-{{ j }}", prompt: "p {{ i }} {{ j }}",
             matrix: {i: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11], j: [0, 1, 2, 3, 4, 5, 6, 7, 8, 9]}}
        """,
        "-j",
        "16",
    )
    result = invoke("gallery", str(spec))
    assert result.exit_code == 0
    assert "gallery: 100/120 images" in result.stderr and "gallery: 120/120 images" in result.stderr


WIDE = """
    version: 1
    name: wide
    model: flux/schnell
    defaults: {image_size: {width: 512, height: 256}}
    jobs:
      - name: "{{ size }}-{{ style }}"
        prompt: an icon, {{ style }}, a very long description of the row {{ size }}
        matrix:
          size: [gear-64, gear-128, gear-256]
          style: [flat, line, glyph, outline]
"""


def test_a_self_contained_page_shows_every_image_wherever_it_is_copied_and_fits_1400px(
    tmp_path: Path, emulator: EmulatorServer, browser: object
) -> None:
    spec = run_text(tmp_path / "project", emulator, WIDE)
    elsewhere = tmp_path / "published" / "page.html"
    made = invoke("gallery", "--self-contained", "-o", str(tmp_path / "page.html"), str(spec))
    assert made.exit_code == 0, made.output
    elsewhere.parent.mkdir()
    shutil.copy(tmp_path / "page.html", elsewhere)  # alone: no thumbnails, no images beside it
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page.goto(elsewhere.as_uri())
    page.wait_for_function("document.body.dataset.loaded === '12'")
    widths = page.eval_on_selector_all("img", "els => els.map(e => e.naturalWidth)")
    assert len(widths) == 12 and all(w > 0 for w in widths)
    assert page.locator("img.broken").count() == 0
    # Four columns and a long row label fit a 1400 px window: nothing scrolls sideways.
    assert page.evaluate("document.documentElement.scrollWidth") <= 1400
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=str(ARTIFACTS / "gallery-1400x900.png"))


def test_changed_rows_sort_as_numbers_and_the_sheet_leaves_no_gap_under_wide_images(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    subprocess.run(["git", "init", "-q"], cwd=tmp_path, check=True)
    spec = run_text(tmp_path, emulator, WIDE)
    for args in (["add", "-A"], ["commit", "-qm", "first"]):
        subprocess.run(
            ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=tmp_path, check=True
        )
    spec.write_text(spec.read_text().replace("an icon,", "a round icon,"))
    assert invoke("gallery", "--changed", "HEAD", str(spec)).exit_code == 0
    text = (tmp_path / "out/wide/.flux-cache/gallery/gallery-changed.html").read_text()
    order = re.findall(r'<th class="row">(gear-\d+)-flat<', text)
    assert order == ["gear-64", "gear-128", "gear-256"]
    assert invoke("gallery", "--png", str(spec)).exit_code == 0
    with Image.open(tmp_path / "out/wide/.flux-cache/gallery/gallery.png") as sheet:
        # 4 rows (styles) of 512x256 images: each row as tall as its images (124 px and
        # margins), not a square cell of 256 with half of it empty.
        assert sheet.height == 32 + (LINE_H + 8) + 4 * (124 + 8 + 3 * LINE_H + 4)
        image_bottom = 32 + (LINE_H + 8) + 4 + 124  # title, column labels, the image
        below = sheet.crop((160, image_bottom + 2, 160 + 248, image_bottom + 2 + LINE_H))
        assert below.convert("L").getextrema()[0] < 128  # the caption's text, right there
