"""The commands that fit the tool into a project: `init` (a starter spec, the `.gitignore`
entry, a CI workflow) and `completion` (click's shell completion script); and the hint a
first run gives when its folder is not git-ignored."""

from __future__ import annotations

from pathlib import Path

import click

from .app import cli

PROG = "flux-pipeline"
COMPLETE_VAR = "_FLUX_PIPELINE_COMPLETE"
SHELLS = ("bash", "zsh", "fish")

STARTER_SPEC = """\
# yaml-language-server: $schema=https://raw.githubusercontent.com/flux-pipeline/flux-pipeline/main/docs/spec.schema.json
# A starter spec: 2 products x 2 styles = 4 images. Try it offline, then for real:
#   flux-pipeline plan {name}
#   flux-pipeline run --emulator {name}      # the built-in emulator: no key, no credits
#   AIMLAPI_KEY=... flux-pipeline run {name} # the API; {lock} records what was made
version: 1
name: {stem}
model: flux-pro                 # `flux-pipeline models` lists the others
defaults:
  output_format: png
  image_size: square            # 512x512; a preset or {{width: W, height: H}} (multiples of 32)
jobs:
  - name: "{{{{ product | slug }}}}-{{{{ style }}}}"   # the request's id and file name
    prompt: A {{{{ style }}}} studio photograph of a {{{{ product }}}}, soft light
    matrix:                     # every combination of the axes
      product: [copper kettle, toaster]
      style: [minimal, retro]
    assets:                     # what each image becomes, at a path you can commit
      files:                    # (with `repeat: 3`, pick the best: `flux-pipeline pick --list`)
        - {{path: "assets/{{{{ product | slug }}}}-{{{{ style }}}}.webp", resize: 256x256}}
"""

GITIGNORE_LINES = (
    "# flux-pipeline: its working files (keep the lock and the images you commit)",
    "**/.flux-cache/",
    "**/.thumbs/",
    "**/.journal.jsonl",
    ".flux-tmp-*",
)

WORKFLOW = """\
# Generate the images of {spec} on every push to main that changes it; the lock and the
# images are committed back, so the next run pays only for what changed. Pull requests (a
# fork's, or a branch of this repository) run against the emulator: they check everything but
# the API, pay nothing, and commit nothing.
name: images
on:
  push:
    branches: [main]
    paths: ["{spec}", "templates/**", "data/**"]
  pull_request:
    paths: ["{spec}", "templates/**", "data/**"]
concurrency:
  group: images-${{{{ github.ref }}}}
  cancel-in-progress: false   # a cancelled run has paid for its requests
permissions:
  contents: write
jobs:
  images:
    runs-on: ubuntu-latest
    steps:
      - uses: actions/checkout@v4
      - uses: flux-pipeline/flux-pipeline@main
        with:
          specs: {spec}
          # The paid key only on a push to main; without it the action runs the emulator.
          api-key: ${{{{ github.event_name == 'push' && secrets.AIMLAPI_KEY || '' }}}}
      # Even when a request failed, what the others paid for is kept; the job still fails.
      - name: Commit the lock and the images
        if: ${{{{ !cancelled() && github.event_name == 'push' }}}}
        run: |
          git config user.name "github-actions[bot]"
          git config user.email "41898282+github-actions[bot]@users.noreply.github.com"
          git add -A {folder}
          git diff --cached --quiet || git commit -m "images: {spec}" && git push
"""


@cli.command()
@click.argument("shell", type=click.Choice(SHELLS))
def completion(shell: str) -> None:
    """Print the shell completion script for SHELL (bash, zsh or fish).

    Commands, options and spec paths complete; `run --only` completes request names from the
    specs given before it. Load it from your shell's start-up file:

    \b
      bash:  eval "$(flux-pipeline completion bash)"        (~/.bashrc)
      zsh:   eval "$(flux-pipeline completion zsh)"         (~/.zshrc)
      fish:  flux-pipeline completion fish | source         (~/.config/fish/config.fish)

    Exit 0; 2 for another shell.
    """
    from click.shell_completion import get_completion_class

    kind = get_completion_class(shell)
    assert kind is not None  # click ships all three
    click.echo(kind(cli, {}, PROG, COMPLETE_VAR).source())


@cli.command()
@click.argument("spec", default="images.flux.yaml", type=click.Path(dir_okay=False, path_type=Path))
@click.option("--ci", is_flag=True, help="Also write .github/workflows/images.yml (the action).")
def init(spec: Path, ci: bool) -> None:
    """Start a project: a commented spec (SPEC, default images.flux.yaml) that validates and
    runs offline, the tool's working folders in .gitignore, and with --ci a GitHub workflow
    that uses the flux-pipeline action. Nothing is overwritten.

    Exit 0 (what exists already is kept and named); 2 when everything asked for exists.
    """
    from ..errors import ConfigError

    workflow = Path(".github/workflows/images.yml")
    present = [p for p in (spec, *([workflow] if ci else [])) if p.exists() or p.is_symlink()]
    if len(present) == 1 + ci:
        names = " and ".join(map(str, present))
        verb = "exists" if len(present) == 1 else "exist"
        raise ConfigError(f"{names} already {verb}; nothing was written")
    stem = spec.name.split(".")[0]
    lock = spec.with_name(spec.name.removesuffix(".yaml").removesuffix(".yml") + ".lock.json")
    wrote = []
    if spec not in present:
        _write(spec, STARTER_SPEC.format(name=spec, stem=stem, lock=lock.name))
        wrote.append(spec)
    ignored = _add_to_gitignore(spec.parent / ".gitignore")
    if ci and workflow not in present:
        made = f"{lock.as_posix()} {(spec.parent / 'out' / stem).as_posix()}"
        _write(workflow, WORKFLOW.format(spec=spec.as_posix(), folder=made))
        wrote.append(workflow)
    click.echo(f"wrote {' and '.join(map(str, wrote))}")
    if present:
        click.echo(f"kept {' and '.join(map(str, present))} as it was")
    if ignored:
        click.echo(f"added {', '.join(ignored)} to {spec.parent / '.gitignore'}")
    click.echo(f"next: flux-pipeline run --emulator {spec}")


def _write(path: Path, text: str) -> None:
    """Create `path` as a new regular file: never through a symbolic link (even a dangling
    one), never over an existing file."""
    from ..errors import ConfigError

    if path.is_symlink():
        raise ConfigError(f"{path} is a symbolic link; init writes only files it creates")
    path.parent.mkdir(parents=True, exist_ok=True)
    try:
        with path.open("x", encoding="utf-8") as file:
            file.write(text)
    except FileExistsError:
        raise ConfigError(f"{path} already exists; nothing was written") from None


def _add_to_gitignore(path: Path) -> list[str]:
    """Add the tool's folders to a .gitignore (made if need be), in its own line endings;
    the lines added. A .gitignore that is a symbolic link (or not a regular file) is left
    alone."""
    if path.is_symlink() or (path.exists() and not path.is_file()):
        click.echo(
            f"left {path} alone: it is not a regular file (add {GITIGNORE_LINES[1]} yourself)"
        )
        return []
    raw = path.read_bytes().decode("utf-8") if path.exists() else ""
    newline = "\r\n" if "\r\n" in raw else "\n"
    existing = raw.splitlines()
    missing = [line for line in GITIGNORE_LINES[1:] if line not in existing]
    if missing:
        block = [*([""] if existing else []), GITIGNORE_LINES[0], *missing]
        glue = "" if not raw or raw.endswith(("\n", "\r")) else newline
        with path.open("a", encoding="utf-8", newline="") as file:
            file.write(glue + newline.join(block) + newline)
    return missing


def hint_gitignore(folder: Path) -> bool:
    """Say once that the tool's folder a run just made is not git-ignored (inside a git
    repository that does not ignore it); whether it was said."""
    import subprocess

    try:
        done = subprocess.run(
            ["git", "check-ignore", "-q", str(folder.resolve())],
            cwd=folder.resolve().parent,
            capture_output=True,
            timeout=10,
        )
    except (OSError, subprocess.SubprocessError):
        return False
    if done.returncode != 1:  # 0: ignored; 128: not a repository (or no git)
        return False
    click.echo(
        f"hint: {folder}/ is not git-ignored: add **/.flux-cache/ and **/.journal.jsonl to "
        ".gitignore (flux-pipeline init does)",
        err=True,
    )
    return True
