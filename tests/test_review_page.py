"""`flux-pipeline review` (issue 27): the token and the files it guards (starlette's
TestClient), and the keys in a real browser (Debian's chromium, driven by Playwright), live
while a run works."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from pathlib import Path

import pytest
import yaml
from helpers import ARTIFACTS, KEY, ServedApp, invoke, write_spec
from starlette.testclient import TestClient

from flux_pipeline import library, load_spec
from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.review.server import COOKIE, HEADER, create_app

TOKEN = "t0ken-for-tests"
SPEC = """
    version: 1
    name: shots
    model: flux/schnell
    defaults: {image_size: {width: 256, height: 256}}
    jobs:
      - name: "{{ subject }}"
        prompt: a studio photograph of a {{ subject }}
        matrix: {subject: [kettle, lamp]}
        repeat: 3
        assets:
          files: [{path: "site/{{ subject }}.webp", resize: 128x128}]
"""


@pytest.fixture
def spec(tmp_path: Path, emulator: EmulatorServer) -> Path:
    path = write_spec(tmp_path, SPEC)
    result = invoke("run", "--base-url", emulator.url, str(path), env=KEY)
    assert result.exit_code == 0, result.output
    (tmp_path / "secret.txt").write_text("not for the page")
    return path


@pytest.fixture
def client(spec: Path) -> Iterator[TestClient]:
    with TestClient(create_app(load_spec(spec), token=TOKEN)) as client:
        yield client


ROUTES = ["/", "/api/state", "/images/kettle-r1.png", "/inputs/site/kettle.webp"]


def test_without_the_token_every_route_is_forbidden(client: TestClient) -> None:
    for route in ROUTES:
        assert client.get(route).status_code == 403, route
        assert client.get(route, params={"token": "wrong"}).status_code == 403, route
    assert client.post("/api/slots/kettle", json={"pick": "kettle-r1"}).status_code == 403


def test_the_token_in_the_url_sets_a_cookie_for_the_next_requests(client: TestClient) -> None:
    first = client.get("/", params={"token": TOKEN})
    assert first.status_code == 200 and TOKEN in first.text
    assert client.cookies.get(COOKIE) == TOKEN
    state = client.get("/api/state").json()
    assert [s["name"] for s in state["slots"]] == ["kettle", "lamp"]
    image = client.get(state["slots"][0]["candidates"][1]["url"])
    assert image.status_code == 200 and image.headers["content-type"] == "image/png"
    assert client.get("/api/state", params={"since": state["version"]}).status_code == 204


def test_a_choice_needs_the_token_in_a_header_and_this_servers_origin(
    client: TestClient, spec: Path
) -> None:
    client.get("/", params={"token": TOKEN})
    picks = spec.with_name("spec.picks.yaml")
    decision = {"pick": "kettle-r2", "rejected": ["kettle-r3"], "note": ""}
    here = {"origin": "http://testserver"}
    assert client.post("/api/slots/kettle", json=decision, headers=here).status_code == 403
    other = {HEADER: TOKEN, "origin": "http://evil.example"}
    assert client.post("/api/slots/kettle", json=decision, headers=other).status_code == 403
    assert not picks.exists()
    done = client.post("/api/slots/kettle", json=decision, headers={HEADER: TOKEN, **here})
    assert done.status_code == 200, done.text
    written = yaml.safe_load(picks.read_text())["slots"]["kettle"]
    assert (written["pick"], written["rejected"]) == ("kettle-r2", ["kettle-r3"])
    unknown = client.post(
        "/api/slots/kettle", json={"pick": "kettle-r9"}, headers={HEADER: TOKEN, **here}
    )
    assert unknown.status_code == 409 and "kettle-r9" in unknown.json()["error"]


@pytest.mark.parametrize(
    "path",
    [
        "/images/../spec.yaml",
        "/images/%2e%2e/secret.txt",
        "/images/..%2fspec.yaml",
        "/images//etc/passwd",
        "/images/.flux-cache/hashes.json",
        "/inputs/spec.yaml",
        "/inputs/secret.txt",
        "/inputs/out/shots/.journal.jsonl",
    ],
)
def test_files_outside_the_folders_or_not_images_are_never_served(
    client: TestClient, path: str
) -> None:
    client.get("/", params={"token": TOKEN})
    response = client.get(path)
    assert response.status_code == 404, (path, response.text[:80])


# ----- in the browser ----------------------------------------------------------------------


def open_review(browser: object, spec: Path) -> tuple[ServedApp, object]:
    served = ServedApp(create_app(load_spec(spec), token=TOKEN)).__enter__()
    page = browser.new_page(viewport={"width": 1400, "height": 900})  # type: ignore[attr-defined]
    page.goto(f"{served.url}/?token={TOKEN}")
    page.wait_for_function("document.body.dataset.ready === '1'")
    return served, page


def saved(page: object, count: int) -> None:
    page.wait_for_function(f"Number(document.body.dataset.saved || 0) >= {count}")  # type: ignore[attr-defined]


def test_the_keys_pick_reject_and_undo_and_the_file_has_exactly_that(
    spec: Path, browser: object
) -> None:  # the spec is run before Playwright's loop runs in this thread
    served, page = open_review(browser, spec)
    try:
        page.keyboard.press("2")  # type: ignore[attr-defined]
        saved(page, 1)
        page.keyboard.press("j")  # type: ignore[attr-defined]
        page.keyboard.press("1")  # type: ignore[attr-defined]
        saved(page, 2)
        page.keyboard.press("u")  # type: ignore[attr-defined]
        saved(page, 3)
        page.keyboard.press("x")  # type: ignore[attr-defined]
        saved(page, 4)
        slots = yaml.safe_load(spec.with_name("spec.picks.yaml").read_text())["slots"]
        assert slots == {
            "kettle": {
                "pick": "kettle-r2",
                "body_sha256": slots["kettle"]["body_sha256"],
                "image_sha256": slots["kettle"]["image_sha256"],
            },
            "lamp": {"rejected": ["lamp-r1"]},
        }
        ARTIFACTS.mkdir(parents=True, exist_ok=True)
        page.screenshot(path=str(ARTIFACTS / "review-1400x900.png"))  # type: ignore[attr-defined]
        page.reload()  # type: ignore[attr-defined]
        page.wait_for_function("document.body.dataset.ready === '1'")  # type: ignore[attr-defined]
        shown = page.eval_on_selector_all(  # type: ignore[attr-defined]
            "section.slot", "els => els.map(e => [e.dataset.slot, e.dataset.pick])"
        )
        assert shown == [["kettle", "kettle-r2"], ["lamp", ""]]
        assert page.locator("section[data-slot=kettle] figure.picked").count() == 1  # type: ignore[attr-defined]
        assert page.locator("section[data-slot=lamp] figure.rejected").count() == 1  # type: ignore[attr-defined]
    finally:
        served.__exit__()


def test_new_images_appear_while_a_run_works_without_a_reload(
    browser: object, tmp_path: Path, emulator: EmulatorServer
) -> None:
    path = write_spec(tmp_path, SPEC)
    emulator.emulator.configure(latency=(0.3, 0.6))
    served, page = open_review(browser, path)
    try:
        assert page.evaluate("document.body.dataset.images") == "0"  # type: ignore[attr-defined]
        running = threading.Thread(
            target=library.run, args=(path,), kwargs={"base_url": emulator.url, "api_key": "k"}
        )
        running.start()
        page.wait_for_function(  # type: ignore[attr-defined]
            "Number(document.body.dataset.images) === 6", timeout=60_000
        )
        running.join()
        assert page.locator("section.slot").count() == 2  # type: ignore[attr-defined]
    finally:
        served.__exit__()


def test_the_command_prints_a_url_that_opens_the_page_and_only_with_its_token(
    spec: Path,
) -> None:
    import subprocess
    import sys

    import httpx

    with subprocess.Popen(
        [sys.executable, "-m", "flux_pipeline", "review", "--no-open", str(spec)],
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    ) as served:
        try:
            assert served.stdout is not None
            line = served.stdout.readline()  # printed once the port is listening
            url = line.split(": ", 1)[1].split()[0]
            assert url.startswith("http://127.0.0.1:") and "?token=" in url
            page = httpx.get(url, timeout=30)
            assert page.status_code == 200 and "<title>shots · review</title>" in page.text
            assert httpx.get(url.split("?")[0], timeout=30).status_code == 403
        finally:
            served.terminate()
