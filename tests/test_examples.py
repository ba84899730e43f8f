"""The shipped examples, exercised as their users would: the Makefile through `make`, and the
GitHub Actions workflow's commands in the order its jobs run, against the emulator."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml
from actions import Runner
from helpers import KEY, invoke
from PIL import Image, ImageChops, ImageStat

from flux_pipeline.emulator import EmulatorServer

EXAMPLES = Path(__file__).parents[1] / "examples"
FLUX = f"{sys.executable} -m flux_pipeline"


def copy_examples(root: Path) -> Path:
    target = root / "examples"
    shutil.copytree(EXAMPLES, target, ignore=shutil.ignore_patterns("out", "*.lock*.json"))
    return target


def make(folder: Path, *targets: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["make", "--no-print-directory", f"FLUX={FLUX}", "EMULATOR=1", *targets],
        cwd=folder,
        capture_output=True,
        text=True,
        timeout=300,
        env={k: v for k, v in os.environ.items() if k != "AIMLAPI_KEY"},
    )


@pytest.mark.skipif(shutil.which("make") is None, reason="make is not installed")
def test_makefile_validates_runs_checks_and_builds_galleries(tmp_path: Path) -> None:
    folder = copy_examples(tmp_path)
    specs = sorted(p.stem for p in folder.glob("*.yaml"))
    assert make(folder, "validate").returncode == 0
    assert make(folder, "check").returncode != 0  # nothing generated yet

    first = make(folder)
    assert first.returncode == 0, first.stdout + first.stderr
    locks = {s: (folder / f"{s}.lock.json").read_bytes() for s in specs}
    assert all(json.loads(lock)["requests"] for lock in locks.values())

    again = make(folder)
    assert again.returncode == 0
    assert "is up to date" in again.stdout or "Nothing to be done" in again.stdout
    assert {s: (folder / f"{s}.lock.json").read_bytes() for s in specs} == locks

    assert make(folder, "check").returncode == 0
    gallery = make(folder, "gallery")
    assert gallery.returncode == 0, gallery.stderr
    for spec in specs:
        assert (folder / "out" / spec / ".flux-cache/gallery/gallery.html").is_file()
        assert (folder / "out" / spec / ".flux-cache/gallery/gallery.png").is_file()

    (folder / "quickstart.yaml").write_text(
        (folder / "quickstart.yaml").read_text().replace("soft light", "hard light")
    )
    rerun = make(folder)
    assert rerun.returncode == 0
    assert "quickstart.yaml: 4 done, 0 skipped" in rerun.stdout
    assert "product-shots" not in rerun.stdout  # the other specs were not touched


def test_github_workflow_with_the_action_works_in_job_order(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """Two pushes, each run as the workflow's jobs would (the action's steps in order, four
    shards then the merge), the first from a repository without images: the second push
    starts from what the first committed back and pays nothing. Then a fork's pull request,
    without a key, runs against the emulator."""
    workflow = yaml.safe_load((EXAMPLES / "ci/github-actions.yml").read_text())
    jobs = workflow["jobs"]
    assert jobs["merge"]["needs"] == "generate"
    assert "secrets.AIMLAPI_KEY" in json.dumps(jobs["generate"])
    # One run per branch at a time, never cancelled half way (its requests are paid for).
    assert workflow["concurrency"]["group"] == "images-${{ github.ref }}"
    assert workflow["concurrency"]["cancel-in-progress"] is False
    assert jobs["merge"]["permissions"] == {"contents": "write"}
    origin, first = pushed_examples(tmp_path)
    ran = run_workflow(workflow, first, emulator, tmp_path / "artifacts-1")
    assert not ran.failures
    assert ran.ran == ["validate", "run"] * 4 + ["merge", "check", "gallery"]
    assert (first / "flux-gallery/product-shots.html").is_file()
    assert (tmp_path / "artifacts-1/gallery/flux-gallery/product-shots.html").is_file()
    assert not list((first / "examples").glob("*.shard-*"))
    paid = emulator.emulator.counters.snapshot()["paid"]
    assert paid > 0
    # The key reached the emulator, and nothing printed it (the action masks it too).
    assert emulator.emulator.counters.authorizations[-1] == "Bearer from-a-secret"
    # The next push: a fresh checkout holds the lock and the images, not the tool's own files.
    second = tmp_path / "second-push"
    git(tmp_path, "clone", "-q", str(origin), str(second))
    kept = sorted(p.name for p in (second / "examples/out/product-shots").iterdir())
    assert "product-shots.lock.json" in os.listdir(second / "examples")
    assert kept and all(name.endswith((".png", ".jpg")) for name in kept)
    assert not run_workflow(workflow, second, emulator, tmp_path / "artifacts-2").failures
    assert emulator.emulator.counters.snapshot()["paid"] == paid  # nothing paid again
    # A fork's pull request: no key, so the emulator, offline; nothing is committed.
    fork = tmp_path / "fork"
    git(tmp_path, "clone", "-q", str(origin), str(fork))
    (fork / "examples/quickstart.yaml").write_text(
        (fork / "examples/quickstart.yaml").read_text().replace("soft light", "hard light")
    )
    pull = Runner(fork, tmp_path / "artifacts-3", event="pull_request")
    pull.action({"specs": "examples/quickstart.yaml"})
    assert not pull.failures
    assert emulator.emulator.counters.snapshot()["paid"] == paid  # the API was not called
    assert (fork / "flux-gallery/quickstart.html").is_file()


def pushed_examples(root: Path) -> tuple[Path, Path]:
    """A bare `origin` and a clone that pushed the examples to it (no images yet)."""
    origin = root / "origin.git"
    git(root, "init", "-q", "--bare", "-b", "main", str(origin))
    first = root / "first-push"
    git(root, "clone", "-q", str(origin), str(first))
    copy_examples(first)
    git(first, "add", "examples")
    git(first, "-c", "user.name=u", "-c", "user.email=u@x", "commit", "-q", "-m", "specs")
    git(first, "push", "-q", "origin", "main")
    return origin, first


def git(cwd: Path, *args: str) -> str:
    done = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True, check=True)
    return done.stdout


def run_workflow(
    workflow: dict[str, Any], root: Path, emulator: EmulatorServer, artifacts: Path
) -> Runner:
    """A push's run of the workflow in `root`: the generate job once per shard, then the
    merge job if its `needs` and `if` let it; the runner holds the commands run, in order,
    and what failed."""
    runner = Runner(
        root,
        artifacts,
        event="push",
        secrets={"AIMLAPI_KEY": "from-a-secret"},
        env={"FLUX_PIPELINE_BASE_URL": emulator.url},
    )
    jobs, env = workflow["jobs"], workflow["env"]
    shards = jobs["generate"]["strategy"]["matrix"]["shard"]
    generated = [runner.job(jobs["generate"], env, {"shard": shard}) for shard in shards]
    runner.failed = not all(generated)  # what `needs: generate` sees
    scope: dict[str, dict[str, Any]] = {"env": env, "matrix": {}, "secrets": {}, "inputs": {}}
    if runner.should_run(jobs["merge"].get("if"), scope):
        runner.job(jobs["merge"], env, {})
    return runner


def run_example(tmp_path: Path, emulator: EmulatorServer, name: str) -> tuple[Path, dict[str, Any]]:
    """Run one example spec (copied with its files) against the emulator: its folder, and
    its lock's entries."""
    folder = copy_examples(tmp_path)
    result = invoke("run", "--base-url", emulator.url, str(folder / f"{name}.yaml"), env=KEY)
    assert result.exit_code == 0, result.stderr
    return folder, json.loads((folder / f"{name}.lock.json").read_text())["requests"]


def mean_difference(a: Image.Image, b: Image.Image) -> float:
    """Mean absolute difference per channel (0..255) of two images at a's size."""
    diff = ImageChops.difference(a.convert("RGB"), b.convert("RGB").resize(a.size))
    return sum(ImageStat.Stat(diff).mean) / 3


def test_product_edits_are_derived_from_their_photos_and_rerun_only_what_changed(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    folder, entries = run_example(tmp_path, emulator, "product-edits")
    spec = folder / "product-edits.yaml"
    assert emulator.emulator.counters.snapshot()["paid"] == 9
    assert len(entries) == 9
    # The lock names each input by path and hash, never its bytes: it stays small.
    text = (folder / "product-edits.lock.json").read_text()
    requests = json.dumps(json.loads(text)["requests"], indent=2)
    assert "base64" not in text and len(requests) < 15_000
    # Each edit is delivered for the web page as WebP at two widths, for no credit.
    for width in (800, 400):
        with Image.open(folder / f"assets/web/mug-on-a-marble-table-{width}.webp") as page:
            assert (page.format, page.size) == ("WEBP", (width, width))
    photos = {
        p: Image.open(folder / p) for p in ("photos/mug.jpg", "photos/lamp.jpg", "photos/vase.jpg")
    }
    for entry in entries.values():
        (output,) = entry["outputs"]
        with Image.open(folder / output["path"]) as image:
            # Above the caption strip, the image is its own photo (resized, lightly tinted),
            # far closer to it than to the other photos.
            top = image.crop((0, 0, image.width, image.height * 3 // 4))
            own = entry["vars"]["photo"]
            distances = {
                p: mean_difference(top, im.crop((0, 0, im.width, im.height * 3 // 4)))
                for p, im in photos.items()
            }
            assert min(distances, key=distances.__getitem__) == own, distances
            assert distances[own] < 40
        reference = entry["body"]["image_url"]
        assert reference.startswith(f"file:{entry['vars']['photo']}#sha256=")
    # Edit one photo: exactly its three requests are stale, and a rerun sends those three.
    with Image.open(folder / "photos/mug.jpg") as mug:
        mug.transpose(Image.Transpose.FLIP_LEFT_RIGHT).save(folder / "photos/mug.jpg")
    check = invoke("check", str(spec))
    assert check.exit_code == 1
    stale = [line for line in check.stdout.splitlines() if "input photos/mug.jpg changed" in line]
    assert len(stale) == 3 and all("mug-" in line for line in stale)
    again = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert again.exit_code == 0, again.stderr
    assert "3 done, 6 skipped" in again.stdout
    assert emulator.emulator.counters.snapshot()["paid"] == 12
    # Kontext's 1:1 edit size is not documented: recorded as delivered, never a mismatch.
    entries = json.loads((folder / "product-edits.lock.json").read_text())["requests"]
    assert all("mismatch" not in o for e in entries.values() for o in e["outputs"])
    # The cache of earlier outputs restores a lost edit for free.
    (folder / entries["vase-on-a-marble-table"]["outputs"][0]["path"]).unlink()
    restored = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert restored.exit_code == 0 and emulator.emulator.counters.snapshot()["paid"] == 12


def test_flux2_comparison_runs_every_model_at_the_same_seed(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    _, entries = run_example(tmp_path, emulator, "flux2-comparison")
    assert {e["body"]["model"] for e in entries.values()} == {
        "flux-pro",
        "blackforestlabs/flux-2-pro",
        "blackforestlabs/flux-2-max",
    }
    assert {e["seed"] for e in entries.values()} == {20261126}
    assert all(e["outputs"][0]["width"] == 1024 for e in entries.values())


@pytest.mark.parametrize("name", ["catalogue", "model-comparison", "seed-experiment"])
def test_the_readme_examples_run_offline_end_to_end(
    tmp_path: Path, emulator: EmulatorServer, name: str
) -> None:
    _, entries = run_example(tmp_path, emulator, name)
    assert all(e["outputs"] for e in entries.values())
    if name == "catalogue":  # 5 CSV rows x 3 styles, one excluded; names from the row
        assert len(entries) == 14 and "A102-teapot-flatlay" not in entries
        assert entries["A101-mug-studio"]["vars"] == {
            "product": {"sku": "A101", "name": "Mug", "material": "ceramic"},
            "style": "studio",
        }
        assert entries["A101-mug-studio"]["body"]["prompt"].endswith("of a ceramic mug")
    if name == "model-comparison":  # one seed per subject; guidance only where it exists
        lighthouse = {k: e for k, e in entries.items() if k.startswith("a-lighthouse")}
        assert len(lighthouse) == 5 and len({e["seed"] for e in lighthouse.values()}) == 1
        for entry in entries.values():
            takes = entry["body"]["model"] in ("flux-pro", "flux/dev")
            assert ("guidance_scale" in entry["body"]) == takes
    if name == "seed-experiment":
        assert {entries[f"lantern-seed-{s}"]["seed"] for s in (101, 202, 303, 404)} == {
            101,
            202,
            303,
            404,
        }
        assert len({entries[f"lantern-steps-{n}"]["seed"] for n in (1, 2, 4)}) == 1


def test_a_failed_request_in_ci_keeps_what_the_others_paid_for(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """One request refused (400, not billed): every shard's partial lock and images are
    uploaded, merged and committed all the same, the run fails, and the next push pays 0."""
    workflow = yaml.safe_load((EXAMPLES / "ci/github-actions.yml").read_text())
    origin, first = pushed_examples(tmp_path)
    emulator.emulator.configure(refuse_prompt="banner of a Kettle")
    ran = run_workflow(workflow, first, emulator, tmp_path / "artifacts-1")
    assert ran.failures, "the refused request fails the run"
    assert "merge" in ran.ran  # the merge job ran all the same
    paid = emulator.emulator.counters.snapshot()["paid"]
    second = tmp_path / "second-push"
    git(tmp_path, "clone", "-q", str(origin), str(second))
    lock = json.loads((second / "examples/product-shots.lock.json").read_text())["requests"]
    assert "banner-kettle" not in lock and len(lock) == paid  # what was paid for is committed
    again = run_workflow(workflow, second, emulator, tmp_path / "artifacts-2")
    assert again.failures  # still refused, and said so
    assert emulator.emulator.counters.snapshot()["paid"] == paid  # the next push pays 0


def test_the_icon_set_is_one_generation_per_subject_delivered_at_three_sizes(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    folder, entries = run_example(tmp_path, emulator, "icons")
    spec = folder / "icons.yaml"
    assert len(entries) == 9 and emulator.emulator.counters.snapshot()["paid"] == 9
    assert invoke("check", str(spec)).exit_code == 1  # 3 slots to pick
    for subject in ("gear", "star", "bell"):
        assert invoke("pick", str(spec), subject, f"icon-{subject}-r2").exit_code == 0
    delivered = invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    assert delivered.exit_code == 0 and emulator.emulator.counters.snapshot()["paid"] == 9
    for size in (64, 128, 256):
        with Image.open(folder / f"assets/icons/bell-{size}.png") as icon:
            assert icon.size == (size, size)
    assert invoke("check", str(spec)).exit_code == 0


def test_the_model_comparison_puts_the_best_image_per_prompt_at_a_stable_path(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    folder, _ = run_example(tmp_path, emulator, "model-comparison")
    spec = folder / "model-comparison.yaml"
    ramen = "a-bowl-of-ramen"
    assert invoke("pick", str(spec), ramen, f"{ramen}-flux-dev").exit_code == 0
    assert invoke("check", "--allow-unpicked", str(spec)).exit_code == 1  # not delivered yet
    invoke("run", "--base-url", emulator.url, str(spec), env=KEY)
    best = folder / f"assets/comparison/{ramen}.png"
    picked = (
        folder
        / json.loads(spec.with_name("model-comparison.lock.json").read_text())["requests"][
            f"{ramen}-flux-dev"
        ]["outputs"][0]["path"]
    )
    with Image.open(best) as image, Image.open(picked) as source:
        assert image.format == "PNG" and mean_difference(image, source) < 1
    assert invoke("check", "--allow-unpicked", str(spec)).exit_code == 0
    assert invoke("check", str(spec)).exit_code == 1  # the lighthouse has no pick yet
