"""Progress of a sweep: the live display while it runs, and the summary ``sweep status`` prints."""
from __future__ import annotations

import contextlib
import json
import time
from collections.abc import Iterator
from datetime import datetime, timedelta
from pathlib import Path
from typing import Any

from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from lpmr_edge.sweep.runner import OnProgress
from lpmr_edge.sweep.runner import Progress as SweepProgress
from lpmr_edge.sweep.store import SweepStore, driver_running


def format_eta(seconds: float | None) -> str:
    """``H:MM:SS``, or ``?`` before anything finished."""
    return "?" if seconds is None else str(timedelta(seconds=round(seconds)))


def _line(progress: SweepProgress) -> str:
    return (f"done {progress.done} · running {progress.running} · failed {progress.failed} · "
            f"pending {progress.total - progress.done - progress.failed - progress.running} · "
            f"{progress.slots} slot(s) · ETA {format_eta(progress.eta_seconds())}")


@contextlib.contextmanager
def live_display(name: str, console: Console) -> Iterator[OnProgress]:
    """A rich progress bar for a running sweep, shown from the scheduler's first update (so that errors
    before the start print alone); yields the callback the scheduler calls."""
    bar = Progress(TextColumn("[bold]{task.description}"), BarColumn(), MofNCompleteColumn(),
                   TextColumn("{task.fields[line]}"), TimeElapsedColumn(), console=console)
    task = bar.add_task(f"sweep {name}", total=None, line="")

    def update(progress: SweepProgress) -> None:
        if not bar.live.is_started:
            bar.start()
        bar.update(task, total=progress.total, completed=progress.done + progress.failed, line=_line(progress))

    try:
        yield update
    finally:
        if bar.live.is_started:
            bar.stop()


def status(path: Path) -> dict[str, Any]:
    """A sweep database's state: counts, timings, ETA of a running sweep, the failed jobs, and (``settling``)
    the jobs run until settled."""
    store = SweepStore.open_existing(path)
    try:
        counts = store.counts()
        total = sum(counts.values())
        runs = store.runs()
        done = store.jobs("done")
        last = runs[-1] if runs else None
        active = last is not None and driver_running(path)
        eta = None
        if active:
            finished_since = [row for row in done if row["finished"] and _epoch(row["finished"]) >= last["started"]]
            if finished_since:
                pace = (time.time() - last["started"]) / len(finished_since)
                eta = pace * (counts["pending"] + counts["running"])
        return {
            "database": str(path), "name": json.loads(store.meta("grid") or "{}").get("name"), "total": total, **counts,
            "active": active, "eta": format_eta(eta) if active else None,
            "job_seconds_mean": sum(row["seconds"] for row in done) / len(done) if done else None,
            "interrupted": 0 if active else counts["running"],  # left running by a driver that was killed
            "runs": [{"engine": run["engine"], "slots": run["slots"],
                      "state": "finished" if run["finished"] else "running" if active and run is last else "killed",
                      "wall_seconds": run["finished"] - run["started"] if run["finished"] else None} for run in runs],
            "failed_jobs": [{"position": row["position"], "id": row["id"], "model": row["model"],
                             "target": row["target"], "runtime": row["runtime"], "precision": row["precision"],
                             "suite": row["suite"], "seed": row["seed"], "attempts": row["attempts"],
                             "error": row["error"]} for row in store.jobs("failed")],
            "settling": _settling(store),
        }
    finally:
        store.close()


def settling(path: Path) -> list[dict[str, Any]]:
    """Per done job of a sweep run ``--until-settled`` in a settling group: its group, state against the
    group's recommendation, why the group stopped (``settled``, ``budget``, ``images``) and the images it saw
    of the ID set (``images`` of ``of``) and of each other visited set (``sets``)."""
    store = SweepStore.open_existing(path)
    try:
        return _settling(store)
    finally:
        store.close()


def _settling(store: SweepStore) -> list[dict[str, Any]]:
    return [{"position": row["position"], "id": row["id"], "model": row["model"], "target": row["target"],
             "runtime": row["runtime"], "precision": row["precision"], "suite": row["suite"], "seed": row["seed"],
             "group": manifest["settling"]["group"],
             **{key: manifest["sequential"].get(key) for key in ("state", "stopped", "images", "of", "sets")}}
            for row, manifest in store.done_manifests() if "settling" in manifest]


def _epoch(iso: str) -> float:
    return datetime.fromisoformat(iso).timestamp()
