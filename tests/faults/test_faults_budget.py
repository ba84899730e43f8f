"""Budgets hold against a server that bills at receipt: `--max-credits` and `--max-requests`
count the requests in flight, in both answer shapes, before and after the first answers have
shown what a model costs. (The table of budget runs is bench/budget.py's.)"""

from __future__ import annotations

import asyncio
import json
from pathlib import Path

import pytest
from helpers import invoke, schnell_spec

from flux_pipeline.emulator import EmulatorServer
from flux_pipeline.provider.prices import estimate
from flux_pipeline.running.budget import Budget, Charge, Cost, Reservation
from flux_pipeline.store.costs import learned_ratios

KEY = {"AIMLAPI_KEY": "test-key"}


def run_capped(server: EmulatorServer, spec: Path, *args: str) -> tuple[float, str]:
    """Run with the arguments; the credits the emulator billed, and the run's stdout."""
    before = server.emulator.counters.snapshot()["credits"]
    result = invoke("run", "--base-url", server.url, "-j", "16", *args, str(spec), env=KEY)
    assert result.exit_code in (0, 3), result.stdout + result.stderr
    return server.emulator.counters.snapshot()["credits"] - before, result.stdout


@pytest.mark.parametrize("shape", ["data", "images"])
def test_max_credits_holds_with_requests_in_flight(
    tmp_path: Path, emulator: EmulatorServer, shape: str
) -> None:
    emulator.emulator.configure(shape=shape, latency=(0.05, 0.05))
    spec = schnell_spec(tmp_path, 40, size=512)
    spent, stdout = run_capped(emulator, spec, "--partial-budget", "--max-credits", "5")
    assert spent == 5  # the table's estimate is right here: exactly the cap, not 16+
    assert "5 done" in stdout and "35 not sent" in stdout
    assert "--max-credits 5 reached (spent 5, the next request would cost 1)" in stdout
    if shape == "images":  # no usage in the answers: charged at the estimate, and said so
        assert "credits 5 (5 estimated: the answers did not say)" in stdout
    else:
        assert "; credits 5;" in stdout


def test_a_cost_the_table_gets_wrong_is_learned_from_the_first_answer(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    # The provider charges 3 where the table says 1: one request goes first, its answer shows
    # the cost, and the cap holds from then on.
    emulator.emulator.configure(price_factor=3.0, latency=(0.05, 0.05))
    spec = schnell_spec(tmp_path, 40, size=512)
    spent, stdout = run_capped(emulator, spec, "--partial-budget", "--max-credits", "10")
    assert spent == 9 and "3 done" in stdout
    assert "the next request would cost 3" in stdout


def test_the_next_run_knows_the_cost_from_the_lock(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(price_factor=2.0, latency=(0.05, 0.05))
    spec = schnell_spec(tmp_path, 12, size=512)
    assert run_capped(emulator, spec, "--partial-budget", "--max-credits", "4")[0] == 4  # 2 done
    # The lock says flux/schnell costs 2 at 512x512: the plan says so, and the cap holds
    # with every slot in use from the first request.
    (plan,) = json.loads(invoke("plan", "--json", str(spec)).stdout)["specs"]
    todo = [r for r in plan["requests"] if r["state"] != "up to date"]
    assert {(r["credits"], r["credits_from_table"]) for r in todo} == {(2.0, False)}
    spent, stdout = run_capped(emulator, spec, "--partial-budget", "--max-credits", "7")
    assert spent == 6 and "3 done" in stdout


def test_an_answer_without_an_image_is_charged_what_it_reports(
    tmp_path: Path, emulator: EmulatorServer
) -> None:
    emulator.emulator.configure(mangle="no-images", latency=(0.05, 0.05))
    spec = schnell_spec(tmp_path, 40, size=512)
    spent, stdout = run_capped(emulator, spec, "--partial-budget", "--max-credits", "3")
    assert spent == 3 and "3 failed" in stdout


def test_max_requests_counts_requests_in_flight(tmp_path: Path, emulator: EmulatorServer) -> None:
    emulator.emulator.configure(latency=(0.05, 0.05))
    spec = schnell_spec(tmp_path, 40, size=512)
    run_capped(emulator, spec, "--max-requests", "6")
    assert emulator.emulator.counters.snapshot()["paid"] == 6


def test_plan_estimates_a_first_run_from_the_price_table(tmp_path: Path) -> None:
    spec = schnell_spec(tmp_path, 3, size=1440)  # 2.07 megapixels: 3 started
    (plan,) = json.loads(invoke("plan", "--json", str(spec)).stdout)["specs"]
    assert plan["totals"]["credits"] == 9 == 3 * estimate("flux/schnell", 1440, 1440, 1)
    assert plan["totals"]["credits_from_table"] == ["flux/schnell"]


# ----- the budget's rules, one by one -------------------------------------------------------


def test_a_reservation_waits_for_requests_in_flight_and_then_fits() -> None:
    budget = Budget(max_credits=2, ratios={"m": 1.0})
    cost = Cost("m", 1.0)
    first, second = budget.take(cost), budget.take(cost)
    assert isinstance(first, Reservation) and isinstance(second, Reservation)
    assert budget.take(cost) is None  # spent 0 + reserved 2 + 1 > 2: wait for an answer
    budget.settle(first, Charge(billed=False, reported=None))  # refused: it cost nothing
    assert isinstance(budget.take(cost), Reservation)
    budget.settle(second, Charge(billed=True, reported=1.0))
    assert budget.take(cost) is None  # one still in flight
    assert budget.spent == 1


def test_a_model_of_unknown_cost_goes_one_request_at_a_time() -> None:
    budget = Budget(max_credits=100)
    probe = budget.take(Cost("new", 1.0))
    assert isinstance(probe, Reservation)
    assert budget.take(Cost("new", 1.0)) is None
    assert isinstance(budget.take(Cost("other", 1.0)), Reservation)
    budget.settle(probe, Charge(billed=True, reported=4.0))
    again = budget.take(Cost("new", 1.0))
    assert isinstance(again, Reservation) and again.credits == 4.0


def test_the_cap_is_reached_only_when_nothing_is_in_flight() -> None:
    budget = Budget(max_credits=1.5, ratios={"m": 1.0})
    reservation = budget.take(Cost("m", 1.0))
    assert isinstance(reservation, Reservation)
    budget.settle(reservation, Charge(billed=True, reported=None))  # no usage: the estimate
    reason = budget.take(Cost("m", 1.0))
    assert reason == "--max-credits 1.5 reached (spent 1, the next request would cost 1)"


def test_waiting_requests_are_woken_by_a_settled_one() -> None:
    async def scenario() -> list[str]:
        budget = Budget(max_credits=1, ratios={"m": 1.0})
        held = budget.take(Cost("m", 1.0))
        assert isinstance(held, Reservation)
        seen: list[str] = []

        async def waiter() -> None:
            while (taken := budget.take(Cost("m", 1.0))) is None:
                await budget.changed()
            seen.append(taken if isinstance(taken, str) else "reserved")

        task = asyncio.ensure_future(waiter())
        await asyncio.sleep(0)
        budget.settle(held, Charge(billed=False, reported=None))
        await task
        return seen

    assert asyncio.run(scenario()) == ["reserved"]


def test_ratios_are_learned_from_the_journal_and_ignore_garbage(tmp_path: Path) -> None:
    journal = tmp_path / "journal.jsonl"
    journal.write_text(
        "\n".join(
            [
                json.dumps({"event": "cost", "model": "m", "credits": 6, "table": 2}),
                json.dumps({"event": "cost", "model": "m", "credits": 2, "table": 2}),
                json.dumps({"event": "cost", "model": "m", "credits": "9", "table": 1}),
                json.dumps({"event": "cost", "model": "n", "credits": 1, "table": 0}),
                '{"event": "cost", torn',
            ]
        )
    )
    assert learned_ratios([], journal) == {"m": 3.0}
