"""Names that would write outside the output folder are refused before a credit is spent,
and a symlink inside the folder cannot lead a write outside it."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest
from helpers import invoke, write_spec

from flux_pipeline.emulator import EmulatorServer

HOSTILE = {
    "dotdot": "../x",
    "nested dotdot": "a/../../x",
    "absolute": "/etc/x",
    "drive": "C:\\\\x",
    "unc": "\\\\\\\\host\\\\x",
    "nul byte": "a\\0b",
    "too long": "x" * 300,
}


@pytest.mark.parametrize("case", sorted(HOSTILE))
def test_hostile_names_are_refused_before_any_request(
    tmp_path: Path, emulator: EmulatorServer, case: str
) -> None:
    spec = write_spec(
        tmp_path / "in", f'version: 1\njobs: [{{name: "{HOSTILE[case]}", prompt: p}}]\n'
    )
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert result.exit_code == 1
    assert "name: the name" in result.stderr
    assert emulator.emulator.counters.snapshot()["requests"] == 0
    assert sorted(p.name for p in tmp_path.rglob("*")) == ["in", "spec.yaml"]


def test_a_symlink_in_the_output_folder_cannot_lead_outside(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    outside = tmp_path / "outside"
    outside.mkdir()
    spec = write_spec(
        tmp_path / "project",
        """
        version: 1
        defaults: {image_size: square, output_format: png}
        jobs:
          - {name: "sub/{{ n }}", prompt: p, matrix: {n: [a, b]}}
          - {name: inside, prompt: q}
    """,
    )
    out = tmp_path / "project/out/spec"
    out.mkdir(parents=True)
    os.symlink(outside, out / "sub")
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert result.exit_code == 3
    assert result.stdout.count("refusing to write outside the output folder: sub/") == 2
    assert list(outside.iterdir()) == []
    assert emulator.emulator.counters.snapshot()["requests"] == 1  # nothing paid for sub/
    lock = json.loads(spec.with_name("spec.lock.json").read_text())
    assert list(lock["requests"]) == ["inside"]


# ----- paths the lock records, names that clash, folders two specs share, pruning ----------

KEY = {"AIMLAPI_KEY": "k"}


def run_ok(server: EmulatorServer, *args: str) -> str:
    result = invoke("run", "--base-url", server.url, *args, env=KEY)
    assert result.exit_code == 0, result.stdout + result.stderr
    return result.stderr


def test_a_symlinked_output_folder_keeps_its_name_in_the_lock(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    (tmp_path / "storage" / "images").mkdir(parents=True)
    project = tmp_path / "project"
    project.mkdir()
    (project / "out").symlink_to(tmp_path / "storage" / "images")
    spec = write_spec(project, "version: 1\noutput: out\njobs: [{name: a/b, prompt: p}]\n")
    run_ok(emulator, str(spec))
    lock = json.loads(spec.with_name("spec.lock.json").read_text())
    assert lock["requests"]["a/b"]["outputs"][0]["path"] == "out/a/b.jpg"
    # The link moves to another target with the same files: the lock still holds.
    os.rename(tmp_path / "storage", tmp_path / "moved")
    (project / "out").unlink()
    (project / "out").symlink_to(tmp_path / "moved" / "images")
    assert invoke("check", str(spec)).exit_code == 0


def test_a_name_that_is_another_names_folder_is_refused_before_paying(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - {name: hero, prompt: p}
          - {name: hero.jpg/closeup, prompt: q}
        """,
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert (
        f'{spec}:3 job "hero": name: the image hero.jpg would be the folder of '
        "'hero.jpg/closeup' (job 'hero.jpg/closeup'): rename one of them"
    ) in result.stderr
    assert invoke("run", "--base-url", emulator.url, str(spec), env=KEY).exit_code == 1
    assert emulator.emulator.counters.snapshot()["requests"] == 0


def test_two_specs_on_one_output_folder_are_refused(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    one = write_spec(
        tmp_path, "version: 1\noutput: shared\njobs: [{name: a, prompt: p}]\n", "one.yaml"
    )
    two = write_spec(
        tmp_path,
        "version: 1\nname: two\noutput: shared\njobs: [{name: a, prompt: q}]\n",
        "two.yaml",
    )
    together = invoke("validate", str(one), str(two))
    assert together.exit_code == 1
    assert (
        f"{two}:3: output: {tmp_path}/shared is also the output folder of {one}" in together.stderr
    )
    # Apart, the folder knows whose it is.
    run_ok(emulator, str(one))
    apart = invoke("run", "--base-url", emulator.url, str(two), env=KEY)
    assert apart.exit_code == 2
    assert "is the output folder of another spec (its lock: " in apart.stderr
    assert f"{tmp_path}/one.lock.json" in apart.stderr
    assert emulator.emulator.counters.snapshot()["paid"] == 1
    run_ok(emulator, str(one))  # its own spec is welcome


def test_prune_after_a_plain_run_finds_and_names_what_it_deletes(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    styles = (
        "version: 1\noutput: out\njobs: [{{name: '{{{{ s }}}}', prompt: p, matrix: {{s: [{}]}}}}]\n"
    )
    spec = write_spec(tmp_path, styles.format("a, b, c"))
    run_ok(emulator, str(spec))
    write_spec(tmp_path, styles.format("a"))
    said = run_ok(emulator, str(spec))  # a plain run: b and c leave the lock
    assert "dropping 2 lock entries no longer in the spec (b, c); their images stay" in said
    assert (tmp_path / "out" / "b.jpg").exists()
    (tmp_path / "out" / "c.jpg").write_bytes(b"the user's own file now")
    (tmp_path / "out" / "notes.jpg").write_bytes(b"never the tool's")
    said = run_ok(emulator, "--prune", str(spec))
    assert "pruned out/b.jpg: no longer in the spec" in said
    assert not (tmp_path / "out" / "b.jpg").exists()
    assert (tmp_path / "out" / "c.jpg").exists()  # changed since: not the tool's to delete
    assert (tmp_path / "out" / "notes.jpg").exists() and (tmp_path / "out" / "a.jpg").exists()
    assert "pruned" not in run_ok(emulator, "--prune", str(spec))


@pytest.mark.parametrize(
    ("output", "message"),
    [
        ("/tmp/elsewhere", "/tmp/elsewhere is outside the spec's folder"),
        ("../../../victim", "../../../victim is outside the spec's folder"),
        ("~/x", "`~` is not expanded here: write the folder relative to the spec"),
    ],
)
def test_an_output_outside_the_spec_tree_is_refused_with_its_line(
    tmp_path: Path,
    emulator: EmulatorServer,
    output: str,
    message: str,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.chdir(tmp_path)
    spec = write_spec(
        tmp_path / "specs" / "deep",
        f"version: 1\noutput: '{output}'\njobs: [{{name: a, prompt: p}}]\n",
    )
    result = invoke("validate", str(spec))
    assert result.exit_code == 1
    assert f"{spec}:2: output: {message}" in result.stderr
    assert invoke("run", "--base-url", emulator.url, str(spec), env=KEY).exit_code == 1
    assert emulator.emulator.counters.snapshot()["requests"] == 0
    assert not (tmp_path / "specs" / "deep" / "~").exists()


def test_an_output_outside_is_allowed_when_asked(tmp_path: Path, emulator: EmulatorServer) -> None:
    spec = write_spec(
        tmp_path / "specs", "version: 1\noutput: ../images\njobs: [{name: a, prompt: p}]\n"
    )
    assert invoke("validate", str(spec)).exit_code == 1
    result = invoke("--allow-output-outside", "run", "--base-url", emulator.url, str(spec), env=KEY)
    assert result.exit_code == 0, result.stderr
    assert (tmp_path / "images" / "a.jpg").is_file()
    # The same folder below the current directory (a Makefile one level up) needs no flag.
    import os

    cwd = os.getcwd()
    os.chdir(tmp_path)
    try:
        assert invoke("validate", str(spec)).exit_code == 0
    finally:
        os.chdir(cwd)


def test_prune_never_deletes_outside_the_output_folder(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    victim = tmp_path / "victim.txt"
    victim.write_text("keep me")
    project = tmp_path / "a" / "b"
    spec = write_spec(
        project, "version: 1\noutput: out\njobs: [{name: x, prompt: p}, {name: y, prompt: q}]\n"
    )
    run_ok(emulator, str(spec))
    lock = spec.with_name("spec.lock.json")
    data = json.loads(lock.read_text())
    data["requests"]["y"]["outputs"][0]["path"] = (
        "../../victim.txt"  # the lock's schema allows a leading ..
    )
    data["requests"]["y"]["outputs"][0]["sha256"] = (
        __import__("hashlib").sha256(b"keep me").hexdigest()
    )
    lock.write_text(json.dumps(data))
    write_spec(project, "version: 1\noutput: out\njobs: [{name: x, prompt: p}]\n")
    said = run_ok(emulator, "--prune", str(spec))
    assert victim.read_text() == "keep me" and "victim" not in said


def test_moving_output_moves_the_images_and_prune_never_deletes_current_ones(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        model: flux/schnell
        output: out/s
        defaults: {image_size: {width: 64, height: 64}}
        jobs: [{name: "img-{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2, 3]}}]
        """,
    )
    env = {"AIMLAPI_KEY": "k"}
    assert invoke("run", "--base-url", emulator.url, str(spec), env=env).exit_code == 0
    spec.write_text(spec.read_text().replace("output: out/s", "output: out"))
    planned = invoke("plan", str(spec))
    assert planned.stdout.count("moved") >= 4, planned.stdout
    again = invoke("run", "--prune", "--base-url", emulator.url, str(spec), env=env)
    assert again.exit_code == 0, again.stdout
    assert "pruned" not in again.stdout + again.stderr
    assert "4 moved from out/s/ (output: moved)" in again.stdout
    assert emulator.emulator.counters.snapshot()["paid"] == 4  # nothing paid again
    assert sorted(p.name for p in (tmp_path / "out").glob("img-*")) == [
        f"img-{i}.png" for i in range(4)
    ]
    assert invoke("check", str(spec)).exit_code == 0


@pytest.mark.parametrize("name", [".journal.jsonl", ".flux-cache", ".flux-cache/objects"])
def test_the_tools_own_files_are_never_followed_through_a_link(
    tmp_path: Path, emulator: EmulatorServer, name: str
) -> None:
    spec = write_spec(
        tmp_path / "project",
        """
        version: 1
        model: flux/schnell
        output: out/s
        defaults: {image_size: {width: 64, height: 64}}
        jobs: [{name: a, prompt: p}]
        """,
    )
    victim = tmp_path / "elsewhere"
    victim.mkdir()
    (victim / "journal.txt").write_text("keep me\n")
    link = tmp_path / "project/out/s" / name
    link.parent.mkdir(parents=True, exist_ok=True)
    link.symlink_to(victim / "journal.txt" if name.endswith(".jsonl") else victim)
    result = invoke("run", "--base-url", emulator.url, str(spec), env={"AIMLAPI_KEY": "k"})
    assert result.exit_code == 2
    assert f"{name} is a symbolic link" in result.stderr
    assert sorted(p.name for p in victim.iterdir()) == ["journal.txt"]
    assert (victim / "journal.txt").read_text() == "keep me\n"
    assert emulator.emulator.counters.snapshot()["requests"] == 0


def test_init_writes_only_regular_files_it_creates(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    project, elsewhere = tmp_path / "project", tmp_path / "elsewhere"
    project.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(project)
    (project / "images.flux.yaml").symlink_to(elsewhere / "spec.yaml")  # dangling
    refused = invoke("init")
    assert refused.exit_code == 2 and "already exists" in refused.stderr
    assert not (elsewhere / "spec.yaml").exists()

    (elsewhere / "ignore").write_bytes(b"*.pyc\r\n")
    (project / ".gitignore").symlink_to(elsewhere / "ignore")
    made = invoke("init", "other.flux.yaml")
    assert made.exit_code == 0, made.stderr
    assert "left .gitignore alone" in made.stdout
    assert (elsewhere / "ignore").read_bytes() == b"*.pyc\r\n"  # untouched

    (project / ".gitignore").unlink()
    (project / ".gitignore").write_bytes(b"*.pyc\r\n")
    assert invoke("init", "third.flux.yaml").exit_code == 0
    text = (project / ".gitignore").read_bytes()
    assert text.startswith(b"*.pyc\r\n") and b"**/.flux-cache/\r\n" in text
    assert b"\n" not in text.replace(b"\r\n", b"")  # its own line endings kept


def test_check_lists_images_no_entry_names_and_strict_fails_on_them(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        model: flux/schnell
        defaults: {image_size: {width: 64, height: 64}}
        jobs: [{name: "img-{{ i }}", prompt: "p {{ i }}", matrix: {i: [0, 1, 2]}}]
        """,
    )
    env = {"AIMLAPI_KEY": "k"}
    assert invoke("run", "--base-url", emulator.url, str(spec), env=env).exit_code == 0
    spec.write_text(spec.read_text().replace("[0, 1, 2]", "[0, 1]"))
    assert invoke("run", "--base-url", emulator.url, str(spec), env=env).exit_code == 0
    checked = invoke("check", str(spec))
    assert checked.exit_code == 0
    assert "warning: 1 image in the output folder no lock entry names" in checked.stdout
    assert "out/spec/img-2.png" in checked.stdout
    strict = invoke("check", "--strict", str(spec))
    assert strict.exit_code == 1 and "leftover" in strict.stdout
    assert '"leftovers": [\n' in invoke("check", "--json", str(spec)).stdout
