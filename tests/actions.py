"""A small runner of GitHub Actions workflows and of this project's composite action, as the
runner would run them, for tests: `run:` steps through bash, this action's steps in order
with its inputs, the artifact actions as copies between folders, expressions of the kinds the
files use (`inputs.x`, `env.X`, `matrix.x`, `secrets.X`, `github.event_name`, `==`, `!=`,
`!`, `&&`, `||`, parentheses, and the status functions `success()`, `failure()`, `always()`,
`cancelled()`). A step that fails fails its job: later steps run only if their `if` asks for
it with a status function, as on GitHub. Anything else fails loudly rather than being skipped
unseen."""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

ROOT = Path(__file__).parents[1]
ACTION = "flux-pipeline/flux-pipeline@main"
_EXPRESSION = re.compile(r"\$\{\{(.*?)\}\}")
_NAME = re.compile(r"\b(inputs|env|matrix|secrets|github)\.([A-Za-z_][\w-]*)")
_STATUS = ("success()", "failure()", "always()", "cancelled()")


@dataclass
class Runner:
    """One repository checkout (`workspace`) and the artifacts of a workflow run."""

    workspace: Path
    artifacts: Path
    event: str = "push"
    secrets: dict[str, str] = field(default_factory=dict)
    env: dict[str, str] = field(default_factory=dict)  # the machine's (e.g. the emulator's URL)
    ran: list[str] = field(default_factory=list)  # the commands run, for the test to read
    failed: bool = False  # the current job has a failed step
    failures: list[str] = field(default_factory=list)  # what failed, for the test to read

    def evaluate(self, text: str, scope: dict[str, dict[str, Any]]) -> Any:
        """A GitHub expression, without its `${{ }}`."""

        def value(match: re.Match[str]) -> str:
            kind, name = match.groups()
            if kind == "github":
                return repr({"event_name": self.event}[name])
            return repr(str(scope[kind].get(name, "")))

        python = _NAME.sub(value, text).replace("&&", " and ").replace("||", " or ")
        python = re.sub(r"!(?!=)", " not ", python)
        status = {
            "success": lambda: not self.failed,
            "failure": lambda: self.failed,
            "always": lambda: True,
            "cancelled": lambda: False,
        }
        return eval(python, {"__builtins__": {}, **status})  # noqa: S307 - the test's own files

    def should_run(self, condition: Any, scope: dict[str, dict[str, Any]]) -> bool:
        """A step's (or job's) `if`: without a status function, only while nothing failed."""
        if condition is None:
            return not self.failed
        text = str(condition).strip()
        if text.startswith("${{") and text.endswith("}}"):
            text = text[3:-2]
        if not any(f in text for f in _STATUS):
            return not self.failed and bool(self.evaluate(text, scope))
        return bool(self.evaluate(text, scope))

    def expand(self, text: Any, scope: dict[str, dict[str, Any]]) -> str:
        """A string with its `${{ }}` expressions replaced by their values."""
        return _EXPRESSION.sub(lambda m: str(self.evaluate(m.group(1), scope)), str(text))

    def job(
        self, job: dict[str, Any], workflow_env: dict[str, str], matrix: dict[str, Any]
    ) -> bool:
        """Run a workflow job's steps (checkout is the workspace already there); whether the
        job succeeded."""
        self.failed = False
        scope = {"env": workflow_env, "matrix": matrix, "secrets": self.secrets, "inputs": {}}
        for step in job["steps"]:
            if not self.should_run(step.get("if"), scope):
                continue
            uses = step.get("uses", "")
            if uses.startswith("actions/checkout@"):
                continue
            if uses == ACTION:
                inputs = {k: self.expand(v, scope) for k, v in step.get("with", {}).items()}
                self.action(inputs)
            elif "run" in step:
                self.bash(self.expand(step["run"], scope), workflow_env)
            else:
                raise AssertionError(f"no way to run the step {step}")
        return not self.failed

    def action(self, given: dict[str, str]) -> None:
        """This project's composite action (action.yml), with `given` inputs."""
        action = yaml.safe_load((ROOT / "action.yml").read_text())
        inputs = {name: str(spec.get("default", "")) for name, spec in action["inputs"].items()}
        unknown = set(given) - set(inputs)
        assert not unknown, f"inputs the action does not have: {unknown}"
        inputs.update(given)
        scope: dict[str, dict[str, Any]] = {"inputs": inputs}
        for step in action["runs"]["steps"]:
            if not self.should_run(step.get("if"), scope):
                continue
            env = {k: self.expand(v, scope) for k, v in step.get("env", {}).items()}
            uses = step.get("uses", "")
            if step["name"] == "Install flux-pipeline":
                continue  # installed in the test's own environment already
            if uses.startswith("actions/upload-artifact@"):
                self.upload(
                    self.expand(step["with"]["name"], scope),
                    self.expand(step["with"]["path"], scope),
                )
            elif uses.startswith("actions/download-artifact@"):
                self.download(step["with"]["pattern"])
            else:
                self.bash(step["run"], env)

    def bash(self, script: str, env: dict[str, str]) -> None:
        path = f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}"
        full = {**os.environ, **self.env, **env, "PATH": path, "GITHUB_ACTION_PATH": str(ROOT)}
        done = subprocess.run(
            ["bash", "-e", "-o", "pipefail", "-c", script],
            cwd=self.workspace,
            env=full,
            capture_output=True,
            text=True,
            timeout=300,
        )
        if done.returncode != 0:
            self.failed = True
            self.failures.append(f"{script.strip()[:80]}: exit {done.returncode}: {done.stdout}")
        self.ran += [line.split()[1] for line in re.findall(r"flux-pipeline \w+[^\n]*", script)]
        self.output = done.stdout + done.stderr

    def upload(self, name: str, paths: str) -> None:
        """upload-artifact: the files the globs match (less the `!` ones), by relative path."""
        include = [p for p in paths.split() if not p.startswith("!")]
        exclude = [p[1:] for p in paths.split() if p.startswith("!")]
        for pattern in include:
            for found in self.workspace.glob(pattern):
                files = [found] if found.is_file() else [f for f in found.rglob("*") if f.is_file()]
                for file in files:
                    relative = file.relative_to(self.workspace)
                    if any(relative.match(x) or x.strip("*/") in relative.parts for x in exclude):
                        continue
                    target = self.artifacts / name / relative
                    target.parent.mkdir(parents=True, exist_ok=True)
                    shutil.copy2(file, target)

    def download(self, pattern: str) -> None:
        """download-artifact with merge-multiple: every matching artifact into the workspace."""
        for artifact in sorted(self.artifacts.glob(pattern)):
            shutil.copytree(artifact, self.workspace, dirs_exist_ok=True)
