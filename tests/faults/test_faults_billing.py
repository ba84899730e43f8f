"""What a request costs when the exchange breaks (issue 24, money): against the emulator, which
bills a body when it receives it, counting bills per body.

- a read timeout after the body was sent may have been billed: it is never resent in the same
  run (unless --retry-timeouts), and the budget counts every such send;
- a request that never left (refused connection, DNS, connect timeout) costs nothing.
"""

from __future__ import annotations

import socket
from collections import Counter
from pathlib import Path

from helpers import invoke, schnell_spec

from flux_pipeline.emulator import EmulatorServer


def run(url: str, spec: Path, *args: str) -> object:
    return invoke("run", "--base-url", url, *args, str(spec), env={"AIMLAPI_KEY": "k"})


def bills(server: EmulatorServer) -> Counter[str]:
    return Counter(server.emulator.counters.paid_bodies)


def test_a_request_that_timed_out_after_sending_is_not_sent_again(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(30.0, 30.0))  # billed at receipt, never answered in time
    spec = schnell_spec(tmp_path, 3)
    result = run(emulator.url, spec, "-j", "3", "--timeout", "0.5", "--retries", "3")
    assert result.exit_code == 3, result.output
    paid = bills(emulator)
    assert len(paid) == 3 and set(paid.values()) == {1}  # each body billed once, none resent
    assert "3 timed out after sending: the provider may have billed them" in result.stdout
    assert "rerun to try again" in result.stdout
    assert "credits 3 (3 estimated" in result.stdout  # each send counts as paid


def test_the_budget_counts_every_unanswered_send(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=(30.0, 30.0))
    spec = schnell_spec(tmp_path, 10)
    result = run(
        emulator.url, spec, "-j", "4", "--timeout", "0.5", "--partial-budget", "--max-credits", "3"
    )
    assert result.exit_code == 3
    paid = bills(emulator)
    assert sum(paid.values()) == 3, paid  # the cap of 3 held against the server's bill
    assert "credits 3" in result.stdout


def test_retry_timeouts_resends_and_counts_each_send(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(latency=(30.0, 30.0))
    spec = schnell_spec(tmp_path, 1)
    result = run(emulator.url, spec, "--timeout", "0.3", "--retries", "1", "--retry-timeouts")
    assert result.exit_code == 3
    assert sum(bills(emulator).values()) == 2  # sent twice, as asked
    assert "credits 2 (2 estimated" in result.stdout


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def test_a_request_that_never_left_costs_nothing(tmp_path: Path) -> None:
    spec = schnell_spec(tmp_path, 3)
    url = f"http://127.0.0.1:{_closed_port()}"
    result = run(url, spec, "--retries", "0", "--partial-budget", "--max-credits", "2")
    assert result.exit_code == 3
    assert result.stdout.count("connection refused") == 3  # all three tried: none was paid
    assert "not sent" not in result.stdout
    assert "credits 0;" in result.stdout


def test_an_answer_billed_with_no_usable_image_is_not_sent_again_unasked(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(mangle="html")  # a 200 whose body is not JSON: billed, useless
    spec = schnell_spec(tmp_path, 2)
    first = run(emulator.url, spec)
    assert first.exit_code == 3
    assert sum(bills(emulator).values()) == 2

    emulator.emulator.configure(mangle=None)
    planned = invoke("plan", str(spec))
    assert planned.stdout.count("billed before with an unusable answer") == 2
    assert "--force sends it again" in planned.stdout
    again = run(emulator.url, spec)
    assert again.exit_code == 3
    assert sum(bills(emulator).values()) == 2  # nothing billed twice
    assert "not sent: billed before with an unusable answer" in again.stdout

    forced = run(emulator.url, spec, "--force")
    assert forced.exit_code == 0, forced.stdout
    assert sum(bills(emulator).values()) == 4
    assert "unusable" not in invoke("plan", str(spec)).stdout  # a usable answer forgot it


def test_where_answers_state_no_cost_the_cap_counts_the_users_price(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    """The images[] shape states no cost; the provider charges 2.1x the table. Without the
    real price the run says it counts the table's estimate; with it, the cap holds."""
    emulator.emulator.configure(shape="images", price_factor=2.1)
    spec = schnell_spec(tmp_path, 10)
    told = run(emulator.url, spec, "--max-credits", "2", "--only", "n0")
    assert "flux/schnell: no answer has reported this model's cost yet" in told.stderr
    assert "--price flux/schnell=CREDITS" in told.stderr
    before = emulator.emulator.counters.snapshot()["credits"]
    (tmp_path / "pyproject.toml").write_text('[tool.flux-pipeline.prices]\n"flux/schnell" = 2.1\n')
    capped = run(emulator.url, spec, "-j", "4", "--partial-budget", "--max-credits", "5")
    assert "no answer has reported" not in capped.stderr
    billed = emulator.emulator.counters.snapshot()["credits"] - before
    assert billed <= 5 + 1e-9, billed  # 2 requests (4.2), not 5 (10.5)
    assert billed > 0
    override = run(emulator.url, spec, "--max-credits", "1", "--price", "flux/schnell=2.1")
    assert "no request costs less than 2.1 credits" in override.stderr


def test_a_price_for_an_unknown_model_is_refused(tmp_path: Path) -> None:
    spec = schnell_spec(tmp_path, 1)
    result = invoke("run", "--emulator", "--price", "flux/shnell=2", str(spec))
    assert result.exit_code == 2
    assert "no model 'flux/shnell' (did you mean 'flux/schnell'?)" in result.stderr


def test_a_plan_past_the_cap_stops_before_the_first_request(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    spec = schnell_spec(tmp_path, 3)
    stopped = run(emulator.url, spec, "--max-credits", "2")
    assert stopped.exit_code == 2
    assert "the plan's estimate is 3 credits for 3 requests, more than --max-credits 2" in (
        stopped.stderr
    )
    assert "--partial-budget" in stopped.stderr and "(2 of 3 requests fit)" in stopped.stderr
    assert emulator.emulator.counters.snapshot()["requests"] == 0
    shown = invoke("plan", "--max-credits", "2", str(spec))
    assert shown.stdout.count(" over budget\n") == 1 and "1 over budget: not sent" in shown.stdout
    partial = run(emulator.url, spec, "--max-credits", "2", "--partial-budget")
    assert partial.exit_code == 3 and sum(bills(emulator).values()) == 2
