"""How the sweep driver schedules `--until-settled` groups, on a scripted engine (no export, no runtime): a
group runs as one task once all its artifacts are built, a failed group task is retried for all its members,
a failed build fails its group, and the torch reference waits for its groups and covers their records."""
from __future__ import annotations

from concurrent.futures import Future
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from lpmr_edge.sweep import spec as grid
from lpmr_edge.sweep.progress import status
from lpmr_edge.sweep.runner import Scheduler, create_store
from lpmr_edge.sweep.spec import SettleRequest, Sweep, parse_sweep


def _sweep(tmp_path: Path, retries: int) -> Sweep:
    written = {"models": ["lpmr-tiny-fmnist"], "runtimes": ["torch", "openvino"], "suites": ["basic"],
               "precisions": {"torch": ["fp32"], "openvino": ["fp32", "int8-w"]}, "seeds": [0, 1],
               "retries": retries, "out": str(tmp_path / "out"), "artifacts": str(tmp_path / "artifacts"),
               "bench": {"enabled": False}}
    return replace(parse_sweep(written, "test.toml"), settle=SettleRequest("accuracy", 0.005, 50, None))


def _job_result(task: Any, group: str | None = None) -> dict[str, Any]:
    manifest = {} if group is None else {"settling": {"group": group}, "sequential": {
        "state": "undecided", "stopped": "budget", "images": 50, "of": 400, "sets": {}}}
    return {"metrics": [("accuracy/n", 50.0, None, None)], "manifest": manifest, "results_dir": task.results_dir,
            "runtime_seconds": 0.0, "seconds": 0.0, "worker": "scripted"}


class ScriptedEngine:
    """Runs nothing: answers each task at once, failing the first ``group_failures`` group tasks and the
    builds of ``failing_precision``."""

    name, slots = "scripted", 2

    def __init__(self, group_failures: int = 0, failing_precision: str | None = None) -> None:
        self.calls: list[tuple[str, Any]] = []
        self.group_failures, self.failing_precision = group_failures, failing_precision

    def submit(self, fn: Any, task: Any) -> Future:
        self.calls.append((fn.__name__, task))
        future: Future = Future()
        future.set_result(self._answer(fn.__name__, task))
        return future

    def _answer(self, name: str, task: Any) -> dict[str, Any]:
        if name == "build_artifact":
            if task.request.precision == self.failing_precision:
                return {"ok": False, "error": "export failed", "traceback": "tb"}
            return {"ok": True, "path": f"/store/{task.key[:8]}/x86/{task.request.runtime}-{task.request.precision}",
                    "reused": True, "manifest_sha256": "0" * 64, "seconds": 0.0}
        if name == "run_settle_group" and self.group_failures:
            self.group_failures -= 1
            return {"ok": False, "error": "settling failed", "traceback": "tb"}
        if name == "run_settle_group":
            return {"ok": True, "jobs": {job.job_id: _job_result(job, task.group) for job in task.jobs},
                    "settling": {}}
        return {"ok": True, **_job_result(task)}

    def recover(self, failed: Future) -> None:
        pass

    def close(self) -> None:
        pass


def _run(sweep: Sweep, engine: ScriptedEngine) -> tuple[Any, list]:
    jobs = grid.expand(sweep)
    store = create_store(sweep, jobs)
    try:
        Scheduler(sweep, jobs, store, engine).run(store.job_ids("pending"))
        return store.counts(), store.db.execute("SELECT job_id, error FROM failures").fetchall()
    finally:
        store.close()


def test_groups_run_as_one_task_are_retried_together_and_the_reference_waits_for_them(tmp_path: Path):
    sweep = _sweep(tmp_path, retries=1)
    engine = ScriptedEngine(group_failures=1)
    counts, failures = _run(sweep, engine)
    assert counts == {"pending": 0, "running": 0, "done": 6, "failed": 0}
    names = [name for name, _ in engine.calls]
    assert names.count("build_artifact") == 2 and names.count("run_job") == 2
    assert names.count("run_settle_group") == 3  # two groups (one per seed), one of them retried
    groups = [task for name, task in engine.calls if name == "run_settle_group"]
    assert {len(task.jobs) for task in groups} == {2} and {task.objective for task in groups} == {"accuracy"}
    assert len(failures) == 2 and {error for _, error in failures} == {"settling failed"}  # both members
    for index, (name, task) in enumerate(engine.calls):
        if name != "run_job":
            continue
        (record,) = task.covers  # the group of its seed, finished before it was submitted
        finished = [i for i, (other, group) in enumerate(engine.calls) if other == "run_settle_group"
                    and group.record == record]
        assert finished and max(finished) < index
        assert Path(record).parent.parent == (sweep.out / "settling").resolve()
    rows = status(sweep.db_path)["settling"]  # what `sweep status` and the run's summary state per job
    assert len(rows) == 4 and {(row["runtime"], row["stopped"], row["images"], row["of"]) for row in rows} == {
        ("openvino", "budget", 50, 400)}
    assert len({row["group"] for row in rows}) == 2


def test_a_failed_build_fails_its_group_and_the_reference_still_runs(tmp_path: Path):
    engine = ScriptedEngine(failing_precision="int8-w")
    counts, failures = _run(_sweep(tmp_path, retries=0), engine)
    assert counts == {"pending": 0, "running": 0, "done": 2, "failed": 4}
    assert len(failures) == 4 and all("a candidate of this job's settling group" in error for _, error in failures)
    assert [name for name, _ in engine.calls].count("run_settle_group") == 0


def test_without_until_settled_there_are_no_groups(tmp_path: Path):
    engine = ScriptedEngine()
    counts, _ = _run(replace(_sweep(tmp_path, retries=0), settle=None), engine)
    assert counts["done"] == 6 and [name for name, _ in engine.calls].count("run_job") == 6
    assert all(task.covers == () for name, task in engine.calls if name == "run_job")


@pytest.mark.parametrize("objective", ["fpr95", "nope"])
def test_objectives_that_cannot_be_settled_are_refused(tmp_path: Path, objective: str):
    from lpmr_edge.errors import UserError
    from lpmr_edge.sequential import SettleSettings

    with pytest.raises(UserError, match="--until-settled"):
        grid.with_settling(_sweep(tmp_path, retries=0), objective, 0.01, SettleSettings())
