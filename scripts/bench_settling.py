"""Evaluation until settled against the full evaluation: images evaluated, wall and CPU time, recommendation.

    .venv/bin/python scripts/bench_settling.py OUT --model random:ViT-B-32 --target x86 --suite quick \\
        [--objective accuracy --margin top1=5pp ...]     # options after the first three go to both runs

Exports the target's artifacts once into ``OUT/artifacts`` (not timed), then runs ``lpmr-edge run`` twice
in fresh processes on hard links of those artifacts: every image (``OUT/full``), and ``--until-settled``
(``OUT/settled``) with the same objective and margins. For each run it prints the images evaluated (every
result's sets, the host reference included, from ``metrics.json``; a settled run adds the shard images of
candidates that stopped early, from ``settling.json``), the wall time, the CPU time of the run's processes and
the recommendation per target. A run directory that already holds a finished run is resumed, i.e. its
figures are then not a measurement: use a fresh ``OUT``. Figures are printed, never asserted; the machine may
be shared, so state its load (printed before and after each run).
"""
from __future__ import annotations

import json
import os
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

from lpmr_edge.manifest import machine_info


def _children_cpu() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def _lpmr(*arguments: str) -> list[str]:
    return [sys.executable, "-m", "lpmr_edge", *arguments]


def images_evaluated(run_dir: Path) -> int:
    """Images run through a runtime in a run: the sets of every result (``metrics.json``'s ``datasets``), the host
    reference included (a settled candidate's suite covers the images it saw, its shards' features reused)."""
    return sum(dataset["n"] for metrics in (run_dir / "results").rglob("metrics.json")
               for dataset in json.loads(metrics.read_text())["datasets"].values())


def timed_run(run_dir: Path, run_options: list[str]) -> dict[str, Any]:
    """``lpmr-edge run --json`` into ``run_dir``; its wall and CPU time, load before/after, output."""
    load, cpu, start = os.getloadavg()[0], _children_cpu(), time.perf_counter()
    completed = subprocess.run(_lpmr("run", "--out", str(run_dir), "--json", *run_options), check=False, capture_output=True,
                               text=True, env={**os.environ, "LPMR_EDGE_LOG": str(run_dir / "run.log")})
    wall, cpu = time.perf_counter() - start, _children_cpu() - cpu
    if completed.returncode not in (0, 3):  # 3: nothing satisfied the constraints on some target
        sys.exit(f"lpmr-edge run failed ({completed.returncode}): {completed.stderr.strip()[-2000:]}")
    summary = json.loads(completed.stdout)
    return {"wall_s": wall, "cpu_s": cpu, "load": (load, os.getloadavg()[0]), "images": images_evaluated(run_dir),
            "recommended": {choice["target"]: (choice.get("recommended") or {}).get("variant")
                            for choice in summary["recommendations"]},
            "sequential": summary.get("sequential", {})}


def main() -> None:
    if len(sys.argv) < 2 or sys.argv[1].startswith("-"):
        sys.exit(__doc__)
    out, options = Path(sys.argv[1]), sys.argv[2:]
    model = next((options[i + 1] for i, value in enumerate(options[:-1]) if value in ("--model", "-m")), None)
    targets = [options[i + 1] for i, value in enumerate(options[:-1]) if value in ("--target", "-t")] or ["x86"]
    for target in targets:
        subprocess.run(_lpmr("export", "--out", str(out / "artifacts"), "--target", target,
                             *(["--model", model] if model else [])), check=True, stdout=subprocess.DEVNULL)
    machine = machine_info()
    print(f"machine: {machine['cpu']} ({machine['arch']}, {machine['cores']} cores); options: {' '.join(options)}")
    for name, extra in (("full", []), ("settled", ["--until-settled"])):
        run_dir = out / name
        if not (run_dir / "artifacts").exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copytree(out / "artifacts", run_dir / "artifacts", copy_function=os.link)
        figures = timed_run(run_dir, [*options, *extra])
        print(f"{name}: {figures['images']} images evaluated, wall {figures['wall_s'] / 60:.1f} min, CPU "
              f"{figures['cpu_s'] / 60:.1f} min, load average {figures['load'][0]:.2f} -> {figures['load'][1]:.2f}; "
              f"recommended {figures['recommended']}")
        for target, settled in figures["sequential"].items():
            print(f"  settling ({target}): {json.dumps(settled)[:600]}")


if __name__ == "__main__":
    main()
