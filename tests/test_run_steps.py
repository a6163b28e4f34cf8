"""The dependency scheduler of `lpmr-edge run` (``lpmr_edge.sweep.engines.run_steps``): order, thread budget,
exclusive steps and failures, on an engine whose tasks finish as they are submitted (deterministic, no timings)."""
from __future__ import annotations

import functools
import os
from collections.abc import Callable, Mapping
from typing import Any

import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.sweep.engines import InlineEngine, LocalEngine, Step, StepOutcome, run_steps


class Recorder:
    """Starts and finishes as ``run_steps`` reports them, checking at every start what runs beside the step."""

    def __init__(self, budget: int, slots: int, steps: list[Step]) -> None:
        self.budget, self.slots = budget, slots
        self.by_name = {step.name: step for step in steps}
        self.running: list[str] = []
        self.started: list[str] = []
        self.finished: dict[str, StepOutcome] = {}

    def cost(self, name: str) -> int:
        step = self.by_name[name]
        return self.budget if step.exclusive else min(step.threads, self.budget)

    def start(self, step: Step) -> None:
        assert all(self.finished[name].error is None for name in step.after), f"{step.name} started too early"
        self.running.append(step.name)
        self.started.append(step.name)
        assert len(self.running) <= self.slots
        assert sum(self.cost(name) for name in self.running) <= self.budget, self.running
        assert not any(self.by_name[name].exclusive for name in self.running) or len(self.running) == 1

    def finish(self, step: Step, outcome: StepOutcome) -> None:
        if not outcome.skipped:
            self.running.remove(step.name)
        self.finished[step.name] = outcome


def _engine(slots: int) -> InlineEngine:
    """An engine whose tasks finish when submitted, but that ``run_steps`` may fill up to ``slots`` at once."""
    engine = InlineEngine()
    engine.slots = slots  # type: ignore[misc]
    return engine


def _value(name: str) -> Callable[[Mapping[str, Any]], Any]:
    return lambda inputs: (name, sorted(inputs))


def _failing(inputs: Mapping[str, Any]) -> Any:
    raise UserError("the export process for openvino-int8 died (out of memory?)\nsecond line")


def _pipeline(failing: str | None = None, suite_threads: int = 1) -> list[Step]:
    """A run's shape: a reference, three exports, parity over them, a suite per export, an exclusive bench,
    a report after everything."""
    exports = ("export a", "export b", "export c")
    steps = [Step("reference", _value("reference"), threads=2)]
    steps += [Step(name, _failing if name == failing else _value(name), threads=1) for name in exports]
    steps += [Step("parity", _value("parity"), threads=2, after=exports)]
    steps += [Step(f"suite {n}", _value(f"suite {n}"), threads=suite_threads, after=(f"export {n}",)) for n in "abc"]
    steps += [Step("bench", _value("bench"), threads=1, after=exports, exclusive=True)]
    return steps + [Step("report", _value("report"), after=tuple(step.name for step in steps))]


def test_steps_start_after_what_they_need_within_the_thread_budget_and_benches_alone():
    steps = _pipeline()
    recorder = Recorder(budget=2, slots=2, steps=steps)
    outcomes = run_steps(_engine(2), steps, 2, recorder.start, recorder.finish)
    assert recorder.started == ["reference", "export a", "export b", "export c", "suite a", "parity", "suite b",
                                "suite c", "bench", "report"]
    assert all(outcome.error is None for outcome in outcomes.values())
    assert outcomes["parity"].value == ("parity", ["export a", "export b", "export c"])  # inputs: what it came after


def test_one_slot_runs_the_steps_in_the_order_given():
    steps = _pipeline()
    recorder = Recorder(budget=2, slots=1, steps=steps)
    run_steps(_engine(1), steps, 2, recorder.start, recorder.finish)
    assert recorder.started == [step.name for step in steps]


def test_a_step_wanting_more_threads_than_the_budget_runs_alone():
    steps = _pipeline(suite_threads=4)
    recorder = Recorder(budget=2, slots=2, steps=steps)
    run_steps(_engine(2), steps, 2, recorder.start, recorder.finish)
    assert recorder.started == ["reference", "export a", "export b", "export c", "parity", "suite a", "suite b",
                                "suite c", "bench", "report"]  # each suite alone (checked at its start)


def test_a_failure_skips_only_what_needs_its_output_with_a_one_line_error():
    steps = [*_pipeline(failing="export b"), Step("plots", _value("plots"), after=("parity",))]
    recorder = Recorder(budget=2, slots=2, steps=steps)
    outcomes = run_steps(_engine(2), steps, 2, recorder.start, recorder.finish)
    assert outcomes["export b"].error == "the export process for openvino-int8 died (out of memory?)"
    assert not outcomes["export b"].skipped
    skipped = {name for name, outcome in outcomes.items() if outcome.skipped}
    assert skipped == {"parity", "suite b", "bench", "report", "plots"}
    assert outcomes["suite b"].error == "'export b' failed" and outcomes["plots"].error == "'parity' was not run"
    assert all(outcomes[name].error is None for name in ("reference", "export a", "export c", "suite a", "suite c"))


def test_a_step_listed_before_what_it_needs_is_refused():
    steps = [Step("suite", _value("suite"), after=("export",)), Step("export", _value("export"))]
    with pytest.raises(ValueError, match="comes after 'export'"):
        run_steps(_engine(2), steps, 2)


def _die(inputs: Mapping[str, Any]) -> Any:
    os._exit(3)


def _echo(word: str, inputs: Mapping[str, Any]) -> str:
    return word


def test_a_worker_that_dies_fails_its_step_in_one_line_and_the_next_steps_run_on_a_new_pool(tmp_path):
    steps = [Step("dies", _die, threads=2), Step("next", functools.partial(_echo, "fine"), threads=1),
             Step("after", functools.partial(_echo, "also fine"), threads=1, after=("next",))]
    engine = LocalEngine(1, tmp_path / "workers.log", workers=2)
    try:
        outcomes = run_steps(engine, steps, 2)
    finally:
        engine.close()
    assert outcomes["dies"].error is not None and outcomes["dies"].error.startswith("BrokenProcessPool: ")
    assert "\n" not in outcomes["dies"].error
    assert (outcomes["next"].value, outcomes["after"].value) == ("fine", "also fine")
