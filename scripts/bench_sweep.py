"""Jobs per hour of the local and Ray engines on one sweep grid, and the share of time spent outside the runtimes.

    .venv/bin/python scripts/bench_sweep.py [SWEEP.toml]      # default sweeps/demo.toml (make bench-sweep)

Runs the grid three times into fresh databases: a warm-up on the local engine (it builds any artifact the
content-addressed store lacks; its figures include those builds), then the local engine and a private
local Ray instance on the warm store. Per run it prints wall time (driver start to end, incl. engine
start-up), jobs/hour and:

* runtime time — the wall time of every runtime feature call of the suite and of the bench (which times
  the same open runtime, warm-up included), measured inside the jobs (``runtime_seconds``); model loading,
  worker start, data loading and preprocessing, metrics and bootstrap are *not* runtime time;
* overhead share = 1 - runtime time / (wall x parallel slots): everything outside the runtimes, including
  idle slots (scheduling, engine start-up, the tail of the run);
* in-job share = 1 - runtime time / job time: the part of a job's own wall time outside the runtimes;
* outside-jobs share = 1 - job time / (wall x slots): the sweep machinery itself (driver and engine
  start-up, scheduling, database writes, idle slots at the end).

Figures are printed, never asserted; the machine is shared, so read them as one measurement.
"""
from __future__ import annotations

import json
import sys
import tempfile
import time
from pathlib import Path

from lpmr_edge.manifest import machine_info
from lpmr_edge.sweep.runner import run_sweep
from lpmr_edge.sweep.spec import expand, load_sweep
from lpmr_edge.sweep.store import SweepStore


def measure(sweep_file: Path, engine: str, out: Path) -> dict[str, float]:
    """Run the grid on one engine into ``out``; returns its figures."""
    sweep = load_sweep(sweep_file, out)
    start = time.perf_counter()
    progress = run_sweep(sweep, engine=engine)
    wall = time.perf_counter() - start
    store = SweepStore.open_existing(sweep.db_path)
    try:
        jobs = store.jobs("done")
        slots = store.runs()[-1]["slots"]
        built = store.db.execute("SELECT COALESCE(SUM(seconds), 0) FROM artifacts WHERE reused = 0").fetchone()[0]
        timings = [json.loads(row[0])["timings"] for row in store.db.execute("SELECT manifest FROM manifests")]
    finally:
        store.close()
    parts = {name: sum(timing[name] for timing in timings) for name in timings[0]} if timings else {}
    runtime = sum(job["runtime_seconds"] for job in jobs)
    in_jobs = sum(job["seconds"] for job in jobs)
    return {"jobs": progress.done, "failed": progress.failed, "wall_s": wall, "slots": slots,
            "jobs_per_hour": 3600 * progress.done / wall, "runtime_s": runtime, "job_s": in_jobs,
            "build_s": built, "overhead_share": 1 - runtime / (wall * slots), "in_job_share": 1 - runtime / in_jobs,
            "scheduling_share": 1 - in_jobs / (wall * slots),
            **parts}


def main() -> None:
    sweep_file = Path(sys.argv[1] if len(sys.argv) > 1 else "sweeps/demo.toml")
    sweep = load_sweep(sweep_file)
    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['arch']}, {machine['cores']} cores, {machine['node']})")
    print(f"grid: {sweep_file}: {len(expand(sweep))} jobs = models {list(sweep.models)} x targets "
          f"{[t.name for t in sweep.targets]} x precisions {sweep.precisions} x suites {list(sweep.suites)} x seeds "
          f"{list(sweep.seeds)}; {sweep.max_threads()} thread(s) per job; bench "
          f"{'on' if sweep.bench else 'off'}; artifact store {sweep.artifacts}")
    with tempfile.TemporaryDirectory(prefix="bench-sweep-") as scratch:
        rows = [(label, measure(sweep_file, engine, Path(scratch) / label.split()[0]))
                for label, engine in (("warm-up (local)", "local"), ("local", "local"), ("ray", "ray"))]
    print(f"{'engine':<16} {'jobs':>5} {'slots':>5} {'wall s':>8} {'jobs/hour':>10} {'runtime s':>10} "
          f"{'in-job s':>9} {'builds s':>9} {'overhead':>9} {'in-job':>7} {'outside jobs':>12}")
    for label, row in rows:
        print(f"{label:<16} {row['jobs']:>5} {row['slots']:>5} {row['wall_s']:>8.1f} {row['jobs_per_hour']:>10.0f} "
              f"{row['runtime_s']:>10.1f} {row['job_s']:>9.1f} {row['build_s']:>9.1f} "
              f"{row['overhead_share']:>9.1%} {row['in_job_share']:>7.1%} {row['scheduling_share']:>12.1%}")
    print("overhead = 1 - runtime / (wall x slots); in-job = 1 - runtime / in-job time; outside jobs = 1 - in-job "
          "time / (wall x slots): driver start-up, engine start-up, scheduling, database, idle slots")
    print("in-job time by step, summed over jobs (s): open runtime (jobs that reused their worker's open "
          "runtime) | suite (of it inside the runtime) | bench (of it timed calls)")
    for label, row in rows:
        print(f"{label:<16} {row['open_s']:.1f} ({row['runtime_reused']:.0f} of {row['jobs']} reused) | "
              f"{row['suite_s']:.1f} ({row['suite_runtime_s']:.1f}) | {row['bench_s']:.1f} ({row['bench_runtime_s']:.1f})")


if __name__ == "__main__":
    main()
