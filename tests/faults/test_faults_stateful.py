"""A state machine that interleaves runs, interrupted runs, spec edits, deleted and damaged
images, and checks the promise that holds through all of it: after a clean final run `check`
passes, and the emulator was paid at most once per distinct request body, plus once per image
the user deleted or damaged, plus what an interruption can leave paid but unkept."""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import tempfile
from collections import Counter
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, rule

from flux_pipeline import load_spec
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.language.bodies import body_hash
from flux_pipeline.provider.client import make_http_client
from flux_pipeline.review.compare import check
from flux_pipeline.running.parts import Endpoint
from flux_pipeline.running.runner import RunOptions, run, run_async
from flux_pipeline.store.atomic import sha256_file
from flux_pipeline.store.planning import plan

CONCURRENCY = 2
# An interruption can leave this many images paid and unkept: the generations under way and
# the deliveries waiting for their images.
LOST_PER_STOP = CONCURRENCY * 3
STYLES = ["minimal", "retro", "neon", "noir"]
SERVER = EmulatorServer()


@pytest.fixture(scope="module", autouse=True)
def _server() -> Iterator[None]:
    """One emulator for every example, stopped with the module: a server thread still
    running while the interpreter exits can crash it (a segfault seen once in a few runs)."""
    SERVER.start()
    yield
    SERVER.stop()


def write(folder: Path, styles: list[str], wording: str) -> Path:
    path = folder / "spec.yaml"
    path.write_text(
        "version: 1\nname: s\nmodel: flux/schnell\n"
        "defaults: {image_size: {width: 64, height: 64}}\n"
        "jobs:\n"
        '  - name: "{{ product }}-{{ style }}"\n'
        f'    prompt: "{wording} {{{{ style }}}} {{{{ product }}}}"\n'
        f"    matrix: {{product: [kettle, lamp], style: {json.dumps(styles)}}}\n"
    )
    return path


class Pipeline(RuleBasedStateMachine):
    def __init__(self) -> None:
        super().__init__()
        self.folder = Path(tempfile.mkdtemp(prefix="flux-state-"))
        self.spec = write(self.folder, STYLES[:2], "A")
        self.paid_before = Counter(SERVER.emulator.counters.paid_bodies)
        self.allowed: Counter[str] = Counter()  # extra payments a user's action justifies
        self.stops = 0
        self.touched: set[Path] = set()  # images the user damaged since the last run
        # False after an interrupted run: an image being replaced may be on disk before its
        # new entry is in the lock (it is in the write-ahead record; the next run adopts it).
        self.settled = True

    def teardown(self) -> None:
        shutil.rmtree(self.folder, ignore_errors=True)

    def _run(self) -> None:
        run(
            load_spec(self.spec),
            base_url=SERVER.url,
            api_key="k",
            options=RunOptions(concurrency=CONCURRENCY, retries=0),
        )
        self.touched.clear()  # a whole run puts back what the user damaged
        self.settled = True

    @rule()
    def run_spec(self) -> None:
        self._run()

    @rule(after=st.integers(min_value=0, max_value=5))
    def interrupted_run(self, after: int) -> None:
        """A run stopped as Ctrl-C stops it, after `after` requests finished."""
        spec = load_spec(self.spec)
        the_plan = plan(spec)

        async def go() -> None:
            main = asyncio.current_task()
            assert main is not None
            finished = 0

            def listen(result: object) -> None:
                nonlocal finished
                finished += 1
                if finished > after:
                    main.cancel()

            async with make_http_client(CONCURRENCY, 30) as http:
                await run_async(
                    spec,
                    the_plan,
                    Endpoint(http, SERVER.url, "k"),
                    options=RunOptions(concurrency=CONCURRENCY, retries=0),
                    listener=listen,
                )

        with contextlib.suppress(asyncio.CancelledError):
            asyncio.run(go())
        self.stops += 1
        self.settled = False

    @rule(
        styles=st.lists(st.sampled_from(STYLES), min_size=1, max_size=4, unique=True),
        wording=st.sampled_from(["A", "One"]),
    )
    def edit_spec(self, styles: list[str], wording: str) -> None:
        write(self.folder, styles, wording)

    def _images(self) -> list[Path]:
        return sorted((self.folder / "out/s").glob("*.png"))  # the user's, not the cache's

    @rule(pick=st.integers(min_value=0, max_value=15), damage=st.booleans())
    def touch_an_image(self, pick: int, damage: bool) -> None:
        # Which images exist depends on timing (interrupted runs), so draw an index, not a
        # path; and no precondition on them, which hypothesis would find flaky on replay.
        images = self._images()
        if not images:
            return
        image = images[pick % len(images)]
        lock = json.loads(self.spec.with_name("spec.lock.json").read_text())["requests"]
        for entry in lock.values():
            if any(self.folder / o["path"] == image for o in entry["outputs"]):
                self.allowed[entry["body_sha256"]] += 1
        self.touched.add(image)
        if damage:
            image.write_bytes(image.read_bytes()[:-10] + b"0123456789")
        else:
            image.unlink()

    @invariant()
    def lock_names_only_sound_files(self) -> None:
        """Every entry of the lock is whole, and every file it names is on disk with its
        recorded hash once a run has completed (but those the user damaged since)."""
        path = self.spec.with_name("spec.lock.json")
        if not path.exists():
            return
        for entry in json.loads(path.read_text())["requests"].values():
            assert entry["body_sha256"] == body_hash(entry["body"])
            for output in entry["outputs"]:
                image = self.folder / output["path"]
                if self.settled and image not in self.touched:
                    assert sha256_file(image) == output["sha256"], output["path"]

    def check_final(self) -> None:
        self._run()
        report = check(load_spec(self.spec))
        assert report.ok, report.findings
        paid = SERVER.emulator.counters.paid_bodies - self.paid_before
        extra = sum(max(0, n - 1 - self.allowed[body]) for body, n in paid.items())
        assert extra <= LOST_PER_STOP * self.stops, (extra, dict(paid), self.allowed, self.stops)


class Checked(Pipeline):
    def teardown(self) -> None:
        try:
            self.check_final()
        finally:
            super().teardown()


Checked.TestCase.settings = settings(max_examples=200, stateful_step_count=5, deadline=None)
TestPipeline = Checked.TestCase
