"""Grid expansion: matrix semantics (as GitHub Actions), cases, repeat, templates, seeds."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import yaml
from helpers import build_file_tree, write_spec
from hypothesis import given
from hypothesis import strategies as st
from strategies import axis_values, matrices

from flux_pipeline import expand, load_spec
from flux_pipeline.errors import SpecInvalid
from flux_pipeline.language.expansion import derive_seed, matrix_combinations


def spec_with_matrix(
    root: Path, matrix: dict[str, object], name: str = "grid", extra: str = ""
) -> Path:
    axes = sorted(k for k in matrix if k not in ("include", "exclude"))
    name_template = "-".join("{{ " + a + " }}" for a in axes) or "single"
    text = yaml.safe_dump(
        {
            "version": 1,
            "name": name,
            "jobs": [{"name": name_template, "prompt": "p " + name_template, "matrix": matrix}],
        },
        sort_keys=False,
    )
    return write_spec(root, text + extra)


# ----- GitHub Actions semantics, from its documentation --------------------------------------


def test_include_entry_extends_matching_combinations() -> None:
    combos = matrix_combinations(
        {
            "fruit": ["apple", "pear"],
            "animal": ["cat", "dog"],
            "include": [
                {"color": "green"},
                {"color": "pink", "animal": "cat"},
                {"fruit": "apple", "shape": "circle"},
                {"fruit": "banana"},
                {"fruit": "banana", "animal": "cat"},
            ],
        }
    )
    assert combos == [
        {"fruit": "apple", "animal": "cat", "color": "pink", "shape": "circle"},
        {"fruit": "apple", "animal": "dog", "color": "green", "shape": "circle"},
        {"fruit": "pear", "animal": "cat", "color": "pink"},
        {"fruit": "pear", "animal": "dog", "color": "green"},
        {"fruit": "banana"},
        {"fruit": "banana", "animal": "cat"},
    ]


def test_exclude_removes_partial_matches_before_include() -> None:
    combos = matrix_combinations(
        {
            "os": ["macos", "windows"],
            "version": [12, 14, 16],
            "environment": ["staging", "production"],
            "exclude": [
                {"os": "macos", "version": 12, "environment": "production"},
                {"os": "windows", "version": 16},
            ],
            "include": [{"os": "windows", "version": 16, "environment": "staging"}],
        }
    )
    assert len(combos) == 12 - 1 - 2 + 1
    # the include matches no remaining combination, so it is added as a new one
    assert combos[-1] == {"os": "windows", "version": 16, "environment": "staging"}


def test_matrix_with_only_include_gives_one_combination_per_entry() -> None:
    assert matrix_combinations({"include": [{"a": 1}, {"a": 2, "b": 3}]}) == [
        {"a": 1},
        {"a": 2, "b": 3},
    ]


@given(matrix=matrices)
def test_combination_count_is_the_product_of_the_axes(matrix: dict[str, list[str]]) -> None:
    combos = matrix_combinations(matrix)
    assert len(combos) == math.prod(len(v) for v in matrix.values())
    assert len({tuple(sorted(c.items())) for c in combos}) == len(combos)


@given(matrix=matrices, data=st.data())
def test_exclude_removes_exactly_the_matching_combinations(
    matrix: dict[str, list[str]], data: st.DataObject
) -> None:
    axis = data.draw(st.sampled_from(sorted(matrix)))
    value = data.draw(st.sampled_from(matrix[axis]))
    combos = matrix_combinations({**matrix, "exclude": [{axis: value}]})
    full = matrix_combinations(matrix)
    assert combos == [c for c in full if c[axis] != value]


@given(matrix=matrices, data=st.data())
def test_include_never_overwrites_original_values(
    matrix: dict[str, list[str]], data: st.DataObject
) -> None:
    axis = data.draw(st.sampled_from(sorted(matrix)))
    value = data.draw(st.sampled_from(matrix[axis]))
    combos = matrix_combinations({**matrix, "include": [{axis: value, "extra": "e"}]})
    full = matrix_combinations(matrix)
    assert len(combos) == len(full)
    for before, after in zip(full, combos, strict=True):
        assert {k: after[k] for k in before} == before
        assert ("extra" in after) == (before[axis] == value)


# ----- expansion of whole specs ----------------------------------------------------------------


@given(matrix=matrices)
def test_same_spec_expands_to_the_same_requests(
    tmp_path_factory: pytest.TempPathFactory, matrix: dict[str, list[str]]
) -> None:
    path = spec_with_matrix(tmp_path_factory.mktemp("s"), matrix)
    first = expand(load_spec(path))
    second = expand(load_spec(path))
    assert [(r.id, r.body, r.seed) for r in first] == [(r.id, r.body, r.seed) for r in second]
    assert len(first) == math.prod(len(v) for v in matrix.values())


@given(matrix=matrices, data=st.data(), new=axis_values)
def test_adding_an_axis_value_keeps_other_seeds(
    tmp_path_factory: pytest.TempPathFactory,
    matrix: dict[str, list[str]],
    data: st.DataObject,
    new: list[str],
) -> None:
    axis = data.draw(st.sampled_from(sorted(matrix)))
    grown = {**matrix, axis: matrix[axis] + [v + "new" for v in new]}
    before = {
        r.id: r.seed
        for r in expand(load_spec(spec_with_matrix(tmp_path_factory.mktemp("a"), matrix)))
    }
    after = {
        r.id: r.seed
        for r in expand(load_spec(spec_with_matrix(tmp_path_factory.mktemp("b"), grown)))
    }
    assert all(after[name] == seed for name, seed in before.items())
    assert len(after) > len(before)


def test_rewording_a_prompt_keeps_its_seed(tmp_path: Path) -> None:
    one = write_spec(
        tmp_path / "a",
        """
        version: 1
        name: shots
        jobs: [{name: hero, prompt: "a kettle"}]
    """,
    )
    two = write_spec(
        tmp_path / "b",
        """
        version: 1
        name: shots
        jobs: [{name: hero, prompt: "a shiny kettle on a table"}]
    """,
    )
    assert expand(load_spec(one))[0].seed == expand(load_spec(two))[0].seed
    assert expand(load_spec(one))[0].seed == derive_seed("shots", "hero", 1)


def test_seeds_never_change_between_versions_or_machines() -> None:
    # Golden values: a change here would silently change every user's images.
    assert derive_seed("product-shots", "kettle-retro", 1) == 96102878
    assert derive_seed("product-shots", "kettle-retro", 2) != 96102878
    assert all(1 <= derive_seed("s", str(i), 1) <= 2**31 - 1 for i in range(1000))


def test_explicit_seed_wins_and_may_be_a_template(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        version: 1
        defaults: {seed: 7}
        jobs:
          - name: "a-{{ n }}"
            prompt: p
            matrix: {n: [1, 2]}
          - name: b
            prompt: p
            request: {seed: "{{ 1000 + index }}"}
    """,
    )
    assert [r.seed for r in expand(load_spec(path))] == [7, 7, 1000]


def test_repeat_appends_rK_when_the_name_does_not_use_it(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - {name: a, prompt: p, repeat: 2}
          - {name: "b{{ repeat }}", prompt: "p {{ repeat }}", repeat: 2}
    """,
    )
    requests = expand(load_spec(path))
    assert [r.id for r in requests] == ["a-r1", "a-r2", "b1", "b2"]
    assert len({r.seed for r in requests}) == 4
    assert [r.body["prompt"] for r in requests[2:]] == ["p 1", "p 2"]


def test_templates_render_request_fields_to_native_types(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        version: 1
        vars: {size: {width: 512, height: 512}}
        jobs:
          - name: "n{{ index }}"
            prompt: p
            matrix: {tol: ["2", "3"]}
            request:
              num_inference_steps: "{{ 10 + index }}"
              image_size: "{{ size }}"
              safety_tolerance: "{{ tol }}"
              output_format: png
    """,
    )
    first = expand(load_spec(path))[0].body
    assert first["num_inference_steps"] == 10
    assert first["image_size"] == {"width": 512, "height": 512}
    assert first["safety_tolerance"] == "2"


def test_cases_and_cases_file_add_rows(tmp_path: Path) -> None:
    build_file_tree(
        tmp_path,
        {
            "data/rows.csv": "product,steps\nkettle,20\nblender,30\n",
            "data/rows.json": '[{"product": "fan", "steps": 5}]',
        },
    )
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ product }}"
            prompt: "a {{ product }}"
            cases: [{product: toaster, steps: 10}]
            cases_file: data/rows.csv
            request: {num_inference_steps: "{{ steps }}"}
          - name: "{{ product }}"
            prompt: "a {{ product }}"
            cases_file: data/rows.json
            request: {num_inference_steps: "{{ steps }}"}
    """,
    )
    requests = expand(load_spec(path))
    assert [(r.id, r.body["num_inference_steps"]) for r in requests] == [
        ("toaster", 10),
        ("kettle", 20),
        ("blender", 30),
        ("fan", 5),
    ]


def test_prompt_file_and_include_resolve_in_templates_folder(tmp_path: Path) -> None:
    build_file_tree(
        tmp_path,
        {
            "templates/shot.j2": "A {{ style }} shot. {% include 'footer.j2' %}",
            "templates/footer.j2": "By {{ brand }}.",
        },
    )
    path = write_spec(
        tmp_path / "specs",
        """
        version: 1
        vars: {brand: Acme}
        jobs:
          - {name: "s-{{ style }}", prompt_file: shot.j2, matrix: {style: [neon]}}
    """,
    )
    assert expand(load_spec(path))[0].body["prompt"] == "A neon shot. By Acme."


def test_undefined_variable_names_variable_job_and_line(tmp_path: Path) -> None:
    path = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: hero
            prompt: "a {{ prodcut }}"
    """,
    )
    with pytest.raises(SpecInvalid) as info:
        expand(load_spec(path))
    assert str(info.value) == f"{path}:4 job \"hero\": prompt: undefined variable 'prodcut'"


# ----- row axes, strict exclude, fields left out, seeds for comparisons -----------------------

CATALOGUE = """
version: 1
model: flux/schnell
jobs:
  - name: "{{{{ sku }}}}-{{{{ style }}}}"
    prompt: "A {{{{ style }}}} {{{{ product.name }}}} of {{{{ material }}}}"
    matrix:
      product: {{rows: products.csv}}
      style: [studio, flatlay]
      exclude: {exclude}
"""
PRODUCTS = "sku,name,material\nA1,Mug,clay\nA2,Pot,tin\nA3,Cup,glass\n"


def catalogue(root: Path, exclude: str = "[]") -> Path:
    (root / "products.csv").write_text(PRODUCTS)
    return write_spec(root, CATALOGUE.format(exclude=exclude))


def test_a_rows_axis_crosses_with_the_others_and_its_columns_are_variables(
    tmp_path: Path,
) -> None:
    requests = expand(load_spec(catalogue(tmp_path, "[{sku: A2, style: flatlay}]")))
    assert [r.id for r in requests] == [
        "A1-studio",
        "A1-flatlay",
        "A2-studio",
        "A3-studio",
        "A3-flatlay",
    ]
    assert requests[0].body["prompt"] == "A studio Mug of clay"
    assert requests[0].vars == {
        "product": {"sku": "A1", "name": "Mug", "material": "clay"},
        "style": "studio",
    }


@pytest.mark.parametrize(
    ("exclude", "says"),
    [
        ("[{skU: A2}]", "'skU' is no axis or row column (did you mean 'sku'?)"),
        ("[{sku: A9}]", "exclude {sku: A9} matches no combination"),
        ("[{sku: A1, name: Pot}]", "exclude {sku: A1, name: Pot} matches no combination"),
        ("[{style: Studio}]", "style has no value 'Studio' (did you mean 'studio'?)"),
        ("[{colour: red}]", "'colour' is no axis or row column (axes: product, sku, name"),
    ],
)
def test_an_exclude_that_names_nothing_or_matches_nothing_is_an_error(
    tmp_path: Path, exclude: str, says: str
) -> None:
    spec = catalogue(tmp_path, exclude)
    with pytest.raises(SpecInvalid) as caught:
        expand(load_spec(spec))
    (problem,) = caught.value.problems
    lines = spec.read_text().splitlines()
    assert problem.line == next(n for n, text in enumerate(lines, 1) if "exclude:" in text)
    assert says in problem.message and problem.path == "matrix.exclude"


def test_an_include_may_add_variables_but_not_near_misses(tmp_path: Path) -> None:
    spec = spec_with_matrix(
        tmp_path, {"style": ["a", "b"], "include": [{"style": "a", "light": "x"}]}
    )
    assert len(expand(load_spec(spec))) == 2
    typo = spec_with_matrix(tmp_path, {"style": ["a", "b"], "include": [{"styel": "a"}]}, name="t")
    with pytest.raises(SpecInvalid, match="'styel' is no axis or row column .did you mean 'style'"):
        expand(load_spec(typo))


def test_a_null_field_or_a_template_giving_none_is_left_out(tmp_path: Path) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ model | slug }}"
            prompt: p
            matrix: {model: [flux-pro, flux/schnell]}
            request:
              model: "{{ model }}"
              guidance_scale: "{{ 3.5 if model == 'flux-pro' else none }}"
              num_inference_steps: null
        """,
    )
    pro, schnell = expand(load_spec(spec))
    assert pro.body["guidance_scale"] == 3.5 and "guidance_scale" not in schnell.body
    assert "num_inference_steps" not in pro.body


def test_seed_from_makes_requests_that_differ_in_other_variables_share_a_seed(
    tmp_path: Path,
) -> None:
    spec = write_spec(
        tmp_path,
        """
        version: 1
        jobs:
          - name: "{{ subject }}-{{ model | slug }}"
            prompt: "{{ subject }}"
            matrix: {subject: [fox, owl], model: [flux-pro, flux/dev]}
            seed_from: [subject]
            request: {model: "{{ model }}"}
          - name: "x-{{ model | slug }}"
            prompt: x
            matrix: {model: [flux-pro]}
            seed_from: [nosuch]
        """,
    )
    with pytest.raises(SpecInvalid) as caught:
        expand(load_spec(spec))
    (problem,) = caught.value.problems
    assert "seed_from names 'nosuch', which is no variable of this request" in problem.message
    spec.write_text(spec.read_text().split('  - name: "x-')[0])
    seeds = {r.id: r.seed for r in expand(load_spec(spec))}
    assert seeds["fox-flux-pro"] == seeds["fox-flux-dev"] != seeds["owl-flux-pro"]
    assert seeds["owl-flux-pro"] == seeds["owl-flux-dev"]
