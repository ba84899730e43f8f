"""`run` end to end against the emulator over loopback: images, the lock, reruns, faults."""

from __future__ import annotations

import asyncio
import json
import shutil
from pathlib import Path
from typing import Any

import httpx
import pytest
from helpers import invoke, schnell_spec, write_spec
from PIL import Image

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.errors import RequestFailed
from flux_pipeline.provider.client import ApiClient, RetryPolicy
from flux_pipeline.provider.limits import Throttle
from flux_pipeline.store.atomic import sha256_file

EXAMPLES = Path(__file__).parents[1] / "examples"
SENTINEL = "sk-SENTINEL-0123456789abcdef"


def run_cli(server: EmulatorServer, *args: str, key: str = SENTINEL) -> Any:
    return invoke("run", "--base-url", server.url, *args, env={"AIMLAPI_KEY": key})


def requests_seen(server: EmulatorServer) -> int:
    return server.emulator.counters.snapshot()["requests"]


def lock_of(spec: Path) -> dict[str, Any]:
    return json.loads(spec.with_name(spec.stem + ".lock.json").read_text())


def grid_spec(root: Path, styles: str = "[minimal, retro]", extra: str = "") -> Path:
    return write_spec(
        root,
        f"""
        version: 1
        name: grid
        defaults: {{output_format: png, image_size: {{width: 256, height: 256}}}}
        jobs:
          - name: "{{{{ product }}}}-{{{{ style }}}}"
            prompt: A {{{{ style }}}} photo of a {{{{ product }}}}
            matrix:
              product: [kettle, toaster]
              style: {styles}
        {extra}
    """,
    )


def test_quickstart_end_to_end(tmp_path: Path, emulator: EmulatorServer) -> None:
    shutil.copy(EXAMPLES / "quickstart.yaml", tmp_path)
    spec = tmp_path / "quickstart.yaml"
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 0, result.stderr
    assert "4 done, 0 skipped, 0 failed" in result.stdout
    lock = lock_of(spec)
    assert sorted(lock["requests"]) == [
        "copper-kettle-minimal",
        "copper-kettle-retro",
        "toaster-minimal",
        "toaster-retro",
    ]
    for entry in lock["requests"].values():
        (output,) = entry["outputs"]
        path = tmp_path / output["path"]
        assert output["path"].startswith("out/quickstart/")
        assert sha256_file(path) == output["sha256"]
        assert path.stat().st_size == output["bytes"]
        with Image.open(path) as image:
            image.load()
            assert (image.format, image.size) == ("PNG", (512, 512))
        assert (output["format"], output["width"], output["height"]) == ("png", 512, 512)
        assert entry["body"]["seed"] == entry["seed"]
    assert requests_seen(emulator) == 4

    before = spec.with_name("quickstart.lock.json").read_bytes()
    again = run_cli(emulator, str(spec))
    assert again.exit_code == 0
    assert "0 done, 4 skipped" in again.stdout
    assert requests_seen(emulator) == 4  # the rerun sent nothing
    assert spec.with_name("quickstart.lock.json").read_bytes() == before


def test_two_runs_give_byte_identical_locks(tmp_path: Path, emulator: EmulatorServer) -> None:
    locks = []
    for name in ("a", "b"):
        spec = grid_spec(tmp_path / name)
        assert run_cli(emulator, str(spec), "-j", "3").exit_code == 0
        locks.append(spec.with_name("spec.lock.json").read_bytes())
    assert locks[0] == locks[1]


@pytest.mark.parametrize("transport", ["aiohttp", "httpx"])
def test_both_shapes_and_deliveries_give_the_same_lock(
    tmp_path: Path, emulator: EmulatorServer, transport: str
) -> None:
    locks = {}
    for shape in ("data", "images"):
        for delivery in ("url", "b64"):
            emulator.emulator.configure(shape=shape, delivery=delivery)
            spec = grid_spec(tmp_path / f"{shape}-{delivery}")
            result = run_cli(emulator, str(spec), "--transport", transport)
            assert result.exit_code == 0, result.stdout + result.stderr
            locks[shape, delivery] = lock_of(spec)
    # What each shape says about a request differs (data[] carries credits, images[] the seed
    # and NSFW flags), so the lock records it as said; everything the inputs determine is equal.
    for lock in locks.values():
        for entry in lock["requests"].values():
            entry.pop("response")
    first = locks["data", "url"]
    assert all(lock == first for lock in locks.values())


def test_response_section_records_what_the_api_said(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(shape="images")
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    for entry in lock_of(spec)["requests"].values():
        assert entry["response"] == {"credits": None, "nsfw": [False], "seed": entry["seed"]}


def test_changing_one_axis_value_regenerates_exactly_the_affected(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    assert requests_seen(emulator) == 4
    grid_spec(tmp_path, styles="[minimal, neon]")
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 0
    assert requests_seen(emulator) == 6  # kettle-neon and toaster-neon only
    assert sorted(lock_of(spec)["requests"]) == [
        "kettle-minimal",
        "kettle-neon",
        "toaster-minimal",
        "toaster-neon",
    ]


def test_changed_body_is_redone_and_plan_says_why(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    spec.write_text(spec.read_text().replace("A {{ style }}", "One {{ style }}"))
    plan = invoke("plan", "--json", str(spec))
    (planned,) = json.loads(plan.stdout)["specs"]
    states = {r["id"]: (r["state"], r["reason"]) for r in planned["requests"]}
    assert states["kettle-retro"] == (
        "changed",
        "changed: prompt ('A retro photo of a kettle' → 'One retro photo of a kettle')",
    )
    assert run_cli(emulator, str(spec)).exit_code == 0
    assert requests_seen(emulator) == 8


def test_deleted_or_altered_image_is_restored(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    (tmp_path / "out/grid/kettle-retro.png").unlink()
    (tmp_path / "out/grid/toaster-retro.png").write_bytes(b"not the image")
    (plan,) = json.loads(invoke("plan", "--json", str(spec)).stdout)["specs"]
    states = {r["id"]: r["state"] for r in plan["requests"]}
    assert states == {
        "kettle-minimal": "up to date",
        "kettle-retro": "missing",
        "toaster-minimal": "up to date",
        "toaster-retro": "corrupt",
    }
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 0
    # Both come back from the cache of earlier outputs (a real copy: overwriting the image
    # did not touch it), without a request or a credit.
    assert "0 done, 2 restored from the cache, 2 skipped" in result.stdout
    assert requests_seen(emulator) == 4
    assert invoke("check", str(spec)).exit_code == 0
    before = (tmp_path / "out/grid/toaster-retro.png").read_bytes()
    assert run_cli(emulator, str(spec), "--force", "--only", "toaster-retro").exit_code == 0
    assert requests_seen(emulator) == 5  # --force bypasses the cache
    assert (tmp_path / "out/grid/toaster-retro.png").read_bytes() == before


def test_a_request_that_comes_back_is_not_paid_twice(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    first = spec.with_name("spec.lock.json").read_bytes()
    grid_spec(tmp_path, styles="[neon]")  # retro and minimal leave the spec and the lock
    assert run_cli(emulator, str(spec)).exit_code == 0
    assert requests_seen(emulator) == 6
    grid_spec(tmp_path)  # and come back
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 0
    assert "0 done, 4 restored from the cache" in result.stdout
    assert requests_seen(emulator) == 6
    assert spec.with_name("spec.lock.json").read_bytes() == first
    assert invoke("check", str(spec)).exit_code == 0


def test_removed_requests_leave_the_lock_and_prune_deletes_files(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = grid_spec(tmp_path)
    assert run_cli(emulator, str(spec)).exit_code == 0
    grid_spec(tmp_path, styles="[minimal]")
    assert run_cli(emulator, str(spec)).exit_code == 0
    assert sorted(lock_of(spec)["requests"]) == ["kettle-minimal", "toaster-minimal"]
    assert (tmp_path / "out/grid/kettle-retro.png").exists()  # kept without --prune
    grid_spec(tmp_path, styles="[retro]")
    assert run_cli(emulator, str(spec)).exit_code == 0
    grid_spec(tmp_path, styles="[minimal]")
    assert run_cli(emulator, str(spec), "--prune").exit_code == 0
    assert not (tmp_path / "out/grid/kettle-retro.png").exists()


def test_force_only_and_budgets(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid_spec(tmp_path)
    result = run_cli(emulator, str(spec), "--max-requests", "1", "-j", "1")
    assert result.exit_code == 3
    assert "1 done, 0 skipped, 0 failed, 3 not sent" in result.stdout
    assert run_cli(emulator, str(spec), "--only", "kettle-*").exit_code == 0
    assert requests_seen(emulator) == 2
    assert run_cli(emulator, str(spec), "--force", "--only", "kettle-minimal").exit_code == 0
    assert requests_seen(emulator) == 3
    result = run_cli(emulator, str(spec), "--max-credits", "0")
    assert result.exit_code == 2 and "no request costs less than" in result.stderr
    assert requests_seen(emulator) == 3


def test_dry_run_prints_bodies_and_sends_nothing(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid_spec(tmp_path)
    result = run_cli(emulator, str(spec), "--dry-run")
    assert result.exit_code == 0
    lines = [json.loads(line) for line in result.stdout.splitlines()]
    assert [line["id"] for line in lines] == [
        "kettle-minimal",
        "kettle-retro",
        "toaster-minimal",
        "toaster-retro",
    ]
    assert requests_seen(emulator) == 0


def test_without_a_key_a_clear_error_says_how_to_set_one(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path)
    result = invoke("run", str(spec))
    assert result.exit_code == 2
    assert result.stderr == (
        "error: no API key: set AIMLAPI_KEY, or use --emulator to run offline\n"
    )


def test_emulator_flag_runs_offline_without_a_key(tmp_path: Path) -> None:
    spec = grid_spec(tmp_path)
    result = invoke("run", "--emulator", str(spec))
    assert result.exit_code == 0, result.stderr
    assert len(lock_of(spec)["requests"]) == 4


# ----- faults ----------------------------------------------------------------------------------


def test_flaky_and_rate_limited_api_still_completes(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(fail_rate=0.3, rate_limit=50.0, seed=3)
    spec = write_spec(
        tmp_path,
        """
        version: 1
        defaults: {image_size: {width: 256, height: 256}}
        jobs:
          - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0,1,2,3,4,5,6,7,8,9,10,11]}}
    """,
    )
    result = run_cli(emulator, str(spec), "-j", "4", "--retries", "8")
    assert result.exit_code == 0, result.stdout
    snap = emulator.emulator.counters.snapshot()
    assert snap["statuses"][200] == 12
    failures = sum(n for status, n in snap["statuses"].items() if status != 200)
    assert failures > 0
    assert snap["requests"] == 12 + failures  # every failed call was retried once, no more
    journal = [
        json.loads(line) for line in (tmp_path / "out/spec/.journal.jsonl").read_text().splitlines()
    ]
    attempts = sum(len(e["attempts"]) for e in journal if e["event"] == "request")
    assert attempts == snap["requests"]


def test_a_429s_retry_after_pauses_sending_until_max_wait(emulator: EmulatorServer) -> None:
    """429s slow the run down (the server's Retry-After, shared by every worker) and do not
    use up --retries: a request told 429 fails only once --max-wait has passed."""
    now = [0.0]
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)
        now[0] += seconds

    async def go() -> None:
        async with httpx.AsyncClient() as http:
            policy = RetryPolicy(retries=0, max_wait=5)
            throttle = Throttle(4, clock=lambda: now[0], sleep=sleep)
            client = ApiClient(
                http,
                emulator.url,
                "k",
                policy,
                throttle=throttle,
                sleep=sleep,
                clock=lambda: now[0],
            )
            emulator.emulator.configure(rate_limit=0.001, retry_after="2")
            client_attempts: list[Any] = []
            # the first call spends the bucket's only token; the rest are answered 429
            await client.generate("a", {"model": "flux-pro", "prompt": "p"}, client_attempts)
            with pytest.raises(RequestFailed) as info:
                await client.generate("b", {"model": "flux-pro", "prompt": "p"}, client_attempts)
            assert "HTTP 429" in info.value.reason and "for 6 s (--max-wait)" in info.value.reason
            assert throttle.overloads == 4

    asyncio.run(go())
    assert waits == [2.0, 2.0, 2.0]
    assert requests_seen(emulator) == 5


def test_400_is_not_retried(emulator: EmulatorServer) -> None:
    async def go() -> None:
        async with httpx.AsyncClient() as http:
            client = ApiClient(http, emulator.url, "k", RetryPolicy(retries=3))
            with pytest.raises(RequestFailed) as info:
                await client.generate("a", {"model": "flux-pro", "prompt": "p", "seed": 0}, [])
            assert info.value.status == 400
            assert "Body validation error: seed: 0 is less than the minimum of 1" in str(info.value)

    asyncio.run(go())
    assert requests_seen(emulator) == 1


def test_out_of_credits_stops_the_run_at_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(credits=2)
    spec = write_spec(
        tmp_path,
        """
        version: 1
        defaults: {image_size: square}
        jobs:
          - {name: "n{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2, 3, 4, 5]}}
    """,
    )
    result = run_cli(emulator, str(spec), "-j", "1")
    assert result.exit_code == 3
    assert "2 done, 0 skipped, 1 failed, 3 not sent" in result.stdout
    assert (
        "stopped: the API refused further work (403): HTTP 403: Forbidden: out of credits"
        in result.stdout
    )
    assert requests_seen(emulator) == 3
    assert len(lock_of(spec)["requests"]) == 2


def test_bad_key_stops_the_run_at_once(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(api_key="the-right-key")
    spec = grid_spec(tmp_path)
    result = run_cli(emulator, str(spec), "-j", "1", key="a-wrong-key")
    assert result.exit_code == 3
    assert "1 failed, 3 not sent" in result.stdout
    assert "the API refused the key (401)" in result.stdout and "Check AIMLAPI_KEY" in result.stdout
    assert "a-wrong-key" not in result.stdout + result.stderr
    assert requests_seen(emulator) == 1


def test_several_images_are_numbered(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - {name: trio, prompt: p, request: {num_images: 3, image_size: square}}
    """,
    )
    assert run_cli(emulator, str(spec)).exit_code == 0
    (entry,) = lock_of(spec)["requests"].values()
    assert [o["path"] for o in entry["outputs"]] == [
        "out/spec/trio-1.jpg",
        "out/spec/trio-2.jpg",
        "out/spec/trio-3.jpg",
    ]
    assert len({o["sha256"] for o in entry["outputs"]}) == 3


def test_models_without_output_format_name_files_by_their_format(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(tmp_path, "version: 1\nmodel: flux/dev\njobs: [{name: d, prompt: p}]\n")
    assert run_cli(emulator, str(spec)).exit_code == 0
    (entry,) = lock_of(spec)["requests"].values()
    assert entry["outputs"][0]["path"] == "out/spec/d.png"


def test_invalid_spec_sends_nothing_and_exits_1(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p, request: {seed: 0}}]\n")
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 1
    assert "seed: 0 is less than the minimum of 1" in result.stderr
    assert requests_seen(emulator) == 0


def test_progress_lines_name_each_result_in_words(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = write_spec(tmp_path, "version: 1\njobs: [{name: a, prompt: p}, {name: b, prompt: q}]\n")
    result = run_cli(emulator, str(spec))
    assert result.exit_code == 0
    counts, words = zip(*(line.split(" ", 1) for line in result.stderr.splitlines()), strict=True)
    assert counts == ("[1/2]", "[2/2]")
    assert sorted(words) == ["done: a", "done: b"]


def test_no_silent_successes_and_words_that_agree(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = grid_spec(tmp_path)
    result = run_cli(emulator, str(spec), "--only", "kettle-retor")
    assert result.exit_code == 2
    assert "--only 'kettle-retor' matches no request of the spec; close: kettle-retro" in (
        result.stderr
    )
    assert requests_seen(emulator) == 0
    result = run_cli(emulator, str(spec), "--only", "kettle-retro")
    assert result.exit_code == 0
    assert f"  images in {tmp_path / 'out/grid'}/, lock {spec.with_name('spec.lock.json')}" in (
        result.stdout
    )
    one = write_spec(tmp_path / "one", "version: 1\njobs: [{name: a, prompt: p}]\n")
    assert run_cli(emulator, str(one)).exit_code == 0
    assert invoke("check", str(one)).stdout == f"{one}: up to date (1 request)\n"
    bad = write_spec(
        tmp_path / "typo", "version: 1\nmodel: flux-prp\njobs: [{name: a, prompt: p}]\n"
    )
    result = invoke("validate", str(bad))
    assert "unknown model 'flux-prp' (did you mean 'flux-pro'?)" in result.stderr
    assert "Port to listen on" in invoke("emulator", "--help").stdout


def test_the_python_api_runs_a_spec_on_the_built_in_emulator(tmp_path: Path) -> None:
    import flux_pipeline
    from flux_pipeline.errors import SpecInvalid

    spec = schnell_spec(tmp_path, 3)
    result = flux_pipeline.run(spec, emulator=True, concurrency=2)
    assert result.ok and [r.status.value for r in result.results] == ["done"] * 3
    assert all(r.credits for r in result.results)
    outputs = result.outputs()
    assert sorted(outputs) == ["n0", "n1", "n2"]
    assert all(
        path.is_file() and path.suffix == ".png" for paths in outputs.values() for path in paths
    )
    again = flux_pipeline.run(str(spec), emulator=True)
    assert [r.status.value for r in again.results] == ["skipped"] * 3
    (tmp_path / "bad.yaml").write_text(
        "version: 1\njobs: [{name: a, prompt: p, request: {seed: 0}}]\n"
    )
    with pytest.raises(SpecInvalid):
        flux_pipeline.run(tmp_path / "bad.yaml", emulator=True)
