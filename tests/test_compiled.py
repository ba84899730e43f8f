"""Compiled validators kept between processes (provider/compiled.py): the same answers as
fastjsonschema's own compile, read back from the cache, and a damaged or unwritable cache
only costs the compilation."""

from __future__ import annotations

import os
from pathlib import Path

import fastjsonschema
import pytest

from flux_pipeline.provider import compiled
from flux_pipeline.provider.compiled import cache_folder, compiled_validator

SCHEMA = {
    "type": "object",
    "properties": {"name": {"type": "string", "pattern": "^[a-z]+$"}, "n": {"type": "integer"}},
    "required": ["name"],
    "additionalProperties": False,
}
REFERRING = {"$ref": "#/definitions/entry", "definitions": {"entry": SCHEMA}}


@pytest.fixture(autouse=True)
def cache_home(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.setenv(compiled.CACHE_ENV, str(tmp_path / "cache"))
    return tmp_path / "cache"


def answers(validate: object, data: object) -> str:
    try:
        validate(data)  # type: ignore[operator]
    except fastjsonschema.JsonSchemaValueException as exc:
        return f"no: {exc.message}"
    return "yes"


@pytest.mark.parametrize("schema", [SCHEMA, REFERRING], ids=["plain", "by-ref"])
@pytest.mark.parametrize(
    "data", [{"name": "ok"}, {"name": "Bad"}, {"n": 1}, {"name": "a", "x": 1}, [1]]
)
def test_answers_as_fastjsonschema_does_compiled_and_read_back(schema: dict, data: object) -> None:
    reference = answers(fastjsonschema.compile(schema), data)
    assert answers(compiled_validator(schema), data) == reference  # compiled, then kept
    assert len(list(cache_folder().iterdir())) == 1
    assert answers(compiled_validator(schema), data) == reference  # read back


def test_a_kept_validator_is_read_not_compiled_again(monkeypatch: pytest.MonkeyPatch) -> None:
    compiled_validator(SCHEMA)

    def refuse(*args: object, **kwargs: object) -> str:
        raise AssertionError("compiled again")

    monkeypatch.setattr(fastjsonschema, "compile_to_code", refuse)
    assert answers(compiled_validator(SCHEMA), {"name": "ok"}) == "yes"
    with pytest.raises(AssertionError, match="compiled again"):
        compiled_validator({**SCHEMA, "required": []})  # another schema: another entry


def test_a_damaged_entry_is_compiled_afresh_and_replaced() -> None:
    compiled_validator(SCHEMA)
    (entry,) = cache_folder().iterdir()
    entry.write_bytes(b"\x00not marshal")
    assert answers(compiled_validator(SCHEMA), {"name": "Bad"}).startswith("no:")
    assert answers(compiled_validator(SCHEMA), {"name": "ok"}) == "yes"
    assert entry.read_bytes() != b"\x00not marshal"


def test_a_cache_folder_that_cannot_be_written_only_costs_the_compilation(cache_home: Path) -> None:
    cache_home.write_text("a file where the folder should be")
    assert answers(compiled_validator(SCHEMA), {"name": "ok"}) == "yes"
    assert cache_home.is_file()
    assert not [p for p in cache_home.parent.iterdir() if p.name.endswith(".tmp")]


def test_options_are_part_of_the_key() -> None:
    defaults = {"type": "object", "properties": {"a": {"type": "integer", "default": 7}}}
    filled: dict = {}
    compiled_validator(defaults)(filled)
    untouched: dict = {}
    compiled_validator(defaults, use_default=False)(untouched)
    assert (filled, untouched) == ({"a": 7}, {})
    assert len(os.listdir(cache_folder())) == 2
