"""The write-ahead record, the lock keeper and the output folder's writer lock, unit by unit
(the end-to-end behaviour is in tests/faults/test_faults_money.py)."""

from __future__ import annotations

import asyncio
import hashlib
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from flux_pipeline.errors import OutputFolderBusy
from flux_pipeline.provider.redaction import Redactor, redact_json
from flux_pipeline.provider.responses import Delivery, Generation
from flux_pipeline.running.keeper import LockKeeper
from flux_pipeline.running.recovery import (
    PendingAnswer,
    WriteAhead,
    answer_line,
    done_line,
    generation_from_json,
    generation_json,
    read_pending,
    rewrite,
    sound,
)
from flux_pipeline.store.lock import Entry, Output, read_lock
from flux_pipeline.store.writer_lock import hold_output_folder

ANSWER = Generation(images=(Delivery(url="https://cdn.example/a.png", width=64, height=64),))


def bh(request_id: str) -> str:
    """A body hash for a test entry (the lock's schema wants a hex sha256)."""
    return hashlib.sha256(request_id.encode()).hexdigest()


def entry(request_id: str, sha256: str = "0" * 64, path: str = "out/a.png") -> Entry:
    return Entry(
        id=request_id,
        job="j",
        vars={},
        body={"model": "flux-pro", "prompt": request_id},
        body_sha256=bh(request_id),
        seed=1,
        outputs=(Output(path=path, sha256=sha256, bytes=1, width=64, height=64, format="png"),),
    )


def test_a_done_record_supersedes_the_answer_and_a_torn_line_is_skipped(tmp_path: Path) -> None:
    path = tmp_path / "pending.jsonl"
    path.write_bytes(
        answer_line("a", bh("a"), generation_json(ANSWER))
        + answer_line("b", bh("b"), generation_json(ANSWER))
        + done_line(entry("a"))
        + b'{"kind": "done", "id": "c", "outp'  # cut by a kill
    )
    found = read_pending(path)
    assert set(found.results) == {"a"}
    assert set(found.answers) == {bh("b")}
    pending = found.answers[bh("b")]
    assert pending.request_id == "b"
    assert generation_from_json(pending.answer) == ANSWER


def test_an_inline_answer_is_recorded_but_not_fetchable() -> None:
    inline = Generation(images=(Delivery(b64="aGVsbG8=", width=64, height=64),))
    record = json.loads(answer_line("a", bh("a"), generation_json(inline)))
    assert "aGVsbG8=" not in json.dumps(record)  # images are not copied into the record
    assert generation_from_json(record["generation"]) is None


def test_rewrite_keeps_only_the_answers_given_or_removes_the_record(tmp_path: Path) -> None:
    path = tmp_path / "pending.jsonl"
    path.write_bytes(done_line(entry("a")) + answer_line("b", bh("b"), generation_json(ANSWER)))
    answer = json.loads(answer_line("b", bh("b"), generation_json(ANSWER)))["generation"]
    rewrite(path, {bh("b"): PendingAnswer("b", answer)})
    assert set(read_pending(path).answers) == {bh("b")} and not read_pending(path).results
    rewrite(path, {})
    assert not path.exists()


def test_records_appended_while_an_fsync_runs_share_the_next_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(os, "fsync", lambda fd: (synced.append(fd), real_fsync(fd)))

    async def main() -> None:
        record = WriteAhead(tmp_path / "pending.jsonl")
        numbers = [record.append(done_line(entry(f"r{i}"))) for i in range(10)]
        await asyncio.gather(*(record.durable(n) for n in numbers))
        assert len(synced) == 1  # ten results, one fsync
        await record.durable(numbers[-1])  # already durable: no more fsync
        assert len(synced) == 1
        record.close()

    asyncio.run(main())
    assert len(read_pending(tmp_path / "pending.jsonl").results) == 10


def test_an_entry_is_sound_only_with_every_file_at_its_hash(tmp_path: Path) -> None:
    image = tmp_path / "out" / "a.png"
    image.parent.mkdir()
    image.write_bytes(b"x")
    x_hash = "2d711642b726b04401627ca9fbac32f5c8530fb1903cc4db02258717921a4881"
    assert sound(entry("a", x_hash).outputs, tmp_path)
    assert not sound(entry("a", "f" * 64).outputs, tmp_path)
    assert not sound(entry("a", x_hash, "out/missing.png").outputs, tmp_path)


def test_the_keeper_saves_what_it_records_and_reports_a_save_that_fails(tmp_path: Path) -> None:
    failures: list[str] = []

    async def main() -> LockKeeper:
        keeper = LockKeeper("s", tmp_path / "s.lock.json", {}, changed=False)
        saver = asyncio.ensure_future(keeper.keep_saved(on_failure=failures.append))
        keeper.record(entry("a"))
        while not keeper.saved:
            await asyncio.sleep(0.001)
        lock = read_lock(tmp_path / "s.lock.json")
        assert lock is not None and set(lock.entries) == {"a"}
        (tmp_path / "s.lock.json").unlink()
        (tmp_path / "s.lock.json").mkdir()  # every save from now on fails
        keeper.record(entry("b"))
        await asyncio.wait_for(saver, 10)  # the saver stops at the first failure
        return keeper

    keeper = asyncio.run(main())
    assert failures and "cannot save the lock" in failures[0]
    with pytest.raises(OSError):
        keeper.save()  # the final save raises it


def test_a_keeper_with_nothing_changed_writes_nothing(tmp_path: Path) -> None:
    async def main() -> None:
        LockKeeper("s", tmp_path / "s.lock.json", {}, changed=False).save()

    asyncio.run(main())
    assert not (tmp_path / "s.lock.json").exists()


HOLD = """
import sys
from pathlib import Path
from flux_pipeline.store.writer_lock import hold_output_folder
spec, lock = Path("s.yaml"), Path("s.lock.json")
with hold_output_folder(Path(sys.argv[1]), command="run", spec=spec, lock_path=lock):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_the_writer_lock_names_its_holder_and_is_free_once_the_holder_is_gone(
    tmp_path: Path,
) -> None:
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(tmp_path)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert holder.stdout is not None and holder.stdout.readline() == "held\n"
    with (
        pytest.raises(OutputFolderBusy) as busy,
        hold_output_folder(
            tmp_path, command="run", spec=Path("t.yaml"), lock_path=tmp_path / "t.lock.json"
        ),
    ):
        pass
    assert f"flux-pipeline run (pid {holder.pid} on " in str(busy.value)
    assert "spec s.yaml" in str(busy.value)
    holder.kill()  # however the holder ends, the OS frees the lock
    holder.communicate()
    with hold_output_folder(
        tmp_path, command="run", spec=Path("t.yaml"), lock_path=tmp_path / "t.lock.json"
    ):
        note = json.loads((tmp_path / ".flux-cache" / "writer.json").read_text())
        assert note["pid"] == os.getpid()
    assert not (tmp_path / ".flux-cache" / "writer.json").exists()


def test_what_the_server_sent_is_redacted_before_it_is_recorded_and_nothing_else() -> None:
    key = "soak"  # a short key that is also part of the request names
    leaky = Generation(images=(Delivery(url=f"https://cdn.example/{key}/a.png"),))
    answer = redact_json(generation_json(leaky), Redactor(key))
    line = answer_line("soak-1", bh("a"), answer)
    record = json.loads(line)
    assert record["id"] == "soak-1"  # ours: untouched
    assert key not in json.dumps(record["generation"])
