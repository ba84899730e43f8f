"""How fast a spec is loaded, expanded and validated: a grid of 100,000 requests, with the
share of each stage, against the naive way (a fresh Jinja template and `jsonschema.validate`
per request, measured on a sample and given per request). Then an edit spec: 1,000 edits of
10 photos (1024x768 JPEGs) planned end to end, and how many times the photos were read.

    python bench/expand.py [--requests 100000] [--edits 1000] [--photos 10]
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import jinja2
import jsonschema
import yaml
from _common import report

from flux_pipeline.language.expansion import expand_collect
from flux_pipeline.language.spec import load_spec
from flux_pipeline.language.validation import check_requests
from flux_pipeline.provider import inputs
from flux_pipeline.provider.registry import registry
from flux_pipeline.store.planning import plan

NAIVE_SAMPLE = 2000


def write_spec(folder: Path, count: int) -> Path:
    styles = ["minimal", "retro", "neon", "studio", "film", "noir", "pastel", "bold", "soft", "raw"]
    products = [f"product {i}" for i in range(count // 100)]
    steps = list(range(11, 21))
    spec = {
        "version": 1,
        "name": "big",
        "vars": {"brand": "Acme"},
        "defaults": {"output_format": "png", "image_size": "landscape_4_3"},
        "jobs": [
            {
                "name": "{{ product | slug }}-{{ style }}-{{ steps }}",
                "prompt": "A {{ style }} studio photograph of a {{ product }} by {{ brand }}",
                "matrix": {"product": products, "style": styles, "steps": steps},
                "request": {"num_inference_steps": "{{ steps }}", "guidance_scale": 3.5},
            }
        ],
    }
    path = folder / "big.yaml"
    path.write_text(yaml.safe_dump(spec))
    return path


def naive(requests: list[dict[str, object]]) -> float:
    """Seconds per request the way a hand-written script would do it."""
    schema = registry()["flux-pro"].request_schema
    started = time.perf_counter()
    for combo in requests:
        env = jinja2.Environment()
        prompt = env.from_string(
            "A {{ style }} studio photograph of a {{ product }} by {{ brand }}"
        ).render(brand="Acme", **combo)
        body = {
            "model": "flux-pro",
            "prompt": prompt,
            "output_format": "png",
            "image_size": "landscape_4_3",
            "num_inference_steps": combo["steps"],
        }
        jsonschema.validate(body, schema)
    return (time.perf_counter() - started) / len(requests)


def edit_plan(edits: int, photos: int) -> None:
    """Plan a spec of `edits` Kontext edits over `photos` photos: seconds, and file reads."""
    from PIL import Image

    reads = 0
    check = inputs.InputFiles._check

    def counted(self: inputs.InputFiles, *args: object) -> inputs.Reference:
        nonlocal reads
        reads += 1
        return check(self, *args)  # type: ignore[arg-type]

    inputs.InputFiles._check = counted  # type: ignore[method-assign]
    with tempfile.TemporaryDirectory() as name:
        folder = Path(name)
        (folder / "photos").mkdir()
        for k in range(photos):
            image = Image.effect_noise((1024, 768), 40 + k).convert("RGB")
            image.save(folder / f"photos/p{k:02}.jpg", quality=90)
        spec = {
            "version": 1,
            "name": "edits",
            "model": "flux/kontext-pro/image-to-image",
            "jobs": [
                {
                    "name": "{{ photo | stem }}-{{ edit }}",
                    "prompt": "variation {{ edit }}, keep the product unchanged",
                    "matrix": {
                        "photo": {"files": "photos/*.jpg"},
                        "edit": list(range(edits // photos)),
                    },
                    "request": {"image_url": "{{ image_file(photo) }}", "aspect_ratio": "1:1"},
                }
            ],
        }
        path = folder / "edits.yaml"
        path.write_text(yaml.safe_dump(spec))
        started = time.perf_counter()
        planned = plan(load_spec(path))
        seconds = time.perf_counter() - started
    report(
        f"plan an edit spec ({len(planned.items):,} edits of {photos} photos)",
        ["measure", "value"],
        [["seconds", round(seconds, 3)], ["photos read", reads]],
        {"edits": len(planned.items), "seconds": seconds, "photo_reads": reads},
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--requests", type=int, default=100_000)
    parser.add_argument("--edits", type=int, default=1000)
    parser.add_argument("--photos", type=int, default=10)
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as folder:
        path = write_spec(Path(folder), args.requests)
        t0 = time.perf_counter()
        spec = load_spec(path)
        t1 = time.perf_counter()
        requests, problems = expand_collect(spec)
        t2 = time.perf_counter()
        problems += check_requests(spec, requests)
        t3 = time.perf_counter()
    assert not problems and len(requests) == args.requests, problems[:3]
    sample = [dict(r.vars) for r in requests[:NAIVE_SAMPLE]]
    naive_per_request = naive(sample)
    total = t3 - t0
    rate = len(requests) / total
    naive_rate = 1 / naive_per_request
    stages = {"load": t1 - t0, "expand": t2 - t1, "validate": t3 - t2}
    rows = [[name, seconds, f"{seconds / total:.0%}"] for name, seconds in stages.items()]
    rows += [
        ["total", total, "100%"],
        ["requests/s", round(rate), ""],
        ["naive requests/s", round(naive_rate), ""],
        ["speed-up", f"{rate / naive_rate:.1f}x", ""],
    ]
    report(
        f"expand + validate ({len(requests):,} requests)",
        ["stage", "seconds", "share"],
        rows,
        {
            "requests": len(requests),
            "seconds": stages,
            "requests_per_second": rate,
            "naive_requests_per_second": naive_rate,
        },
    )
    edit_plan(args.edits, args.photos)


if __name__ == "__main__":
    main()
