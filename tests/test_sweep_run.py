"""Real sweeps on the stand-in and a random-weight model: a 24-job grid killed with SIGKILL and resumed on
the local engine, the same grid on a local Ray cluster, a failing job with retries, and report / pick /
export reading the database. Artifacts are built once per session in a shared content-addressed store."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from lpmr_edge.sweep.store import SweepStore

pytest_plugins = ["ray_fixtures"]

LPMR_EDGE = Path(sys.executable).with_name("lpmr-edge")
TINY_SUITE = "limit = 200\nbootstrap_resamples = 100\n[ood]\nsets = [\"digits\"]\n"
GRID = """
name = "grid"
artifacts = "{artifacts}"
models = ["lpmr-tiny-fmnist"]
runtimes = ["openvino", "executorch"]
suites = ["{suite}"]
seeds = [0, 1]
threads = 1
retries = 0
[precisions]
openvino = ["fp32", "fp16", "int8-w"]
executorch = ["fp32", "int8-dyn", "int4-w"]
[bench]
enabled = false
"""
ARTIFACTS = 1 * (3 + 3)  # models x runtime-precisions
JOBS = ARTIFACTS * 2  # x seeds


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Sweep files and the artifact store shared by this module's sweeps."""
    root = tmp_path_factory.mktemp("sweeps")
    (root / "tiny.toml").write_text(TINY_SUITE)
    (root / "grid.toml").write_text(GRID.format(artifacts=root / "artifacts", suite=root / "tiny.toml"))
    return root


def sweep_cli(*args: str, cwd: Path, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    return subprocess.run([str(LPMR_EDGE), "sweep", *map(str, args)], capture_output=True, text=True, cwd=cwd,
                          check=False, timeout=900, env=env)


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute(sql).fetchall()


def counts(db: Path) -> dict[str, int]:
    try:
        return dict(query(db, "SELECT status, COUNT(*) FROM jobs GROUP BY status"))
    except sqlite3.Error:  # not created yet
        return {}


def assert_complete_and_unique(db: Path, jobs: int) -> None:
    """Every job done once: one manifest, the same full set of metrics, no duplicated metric rows."""
    assert counts(db) == {"done": jobs}
    per_job = dict(query(db, "SELECT job_id, COUNT(*) FROM metrics GROUP BY job_id"))
    assert len(per_job) == jobs and len(set(per_job.values())) == 1 and min(per_job.values()) > 20
    assert query(db, "SELECT job_id, metric FROM metrics GROUP BY job_id, metric HAVING COUNT(*) > 1") == []
    assert query(db, "SELECT COUNT(*), COUNT(DISTINCT job_id) FROM manifests") == [(jobs, jobs)]


@pytest.fixture(scope="module")
def killed_and_resumed(workspace: Path) -> dict:
    """Run the grid locally, SIGKILL the driver and its workers mid-way, then resume it."""
    out = workspace / "local"
    db = out / "sweep.db"
    with (workspace / "killed.log").open("w") as log:
        driver = subprocess.Popen([str(LPMR_EDGE), "sweep", "grid.toml", "--out", str(out)], cwd=workspace,
                                  stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 600
        while counts(db).get("done", 0) < 4 and driver.poll() is None and time.time() < deadline:
            time.sleep(0.2)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its pool workers
        driver.wait()
    at_kill = counts(db)
    done_at_kill = query(db, "SELECT id, finished, worker FROM jobs WHERE status = 'done'")
    orphans = query(db, "SELECT COUNT(*) FROM metrics m JOIN jobs j ON j.id = m.job_id WHERE j.status != 'done'")
    status_at_kill = json.loads(sweep_cli("status", db, "--json", cwd=workspace).stdout)
    resumed = sweep_cli("grid.toml", "--out", out, "--resume", cwd=workspace)
    return {"db": db, "at_kill": at_kill, "done_at_kill": done_at_kill, "orphans": orphans, "resumed": resumed,
            "status_at_kill": status_at_kill}


def test_killed_sweep_resumes_with_every_job_done_exactly_once(killed_and_resumed: dict, workspace: Path):
    at_kill, db = killed_and_resumed["at_kill"], killed_and_resumed["db"]
    assert 4 <= at_kill.get("done", 0) < JOBS, at_kill  # killed mid-way
    assert killed_and_resumed["orphans"] == [(0,)]  # no half-written job at the moment of the kill
    status_at_kill = killed_and_resumed["status_at_kill"]
    assert not status_at_kill["active"] and status_at_kill["runs"][0]["state"] == "killed"
    assert status_at_kill["interrupted"] == at_kill.get("running", 0)
    assert killed_and_resumed["resumed"].returncode == 0, killed_and_resumed["resumed"].stderr
    assert_complete_and_unique(db, JOBS)
    # jobs finished before the kill were not run again; 'running' ones were (not counted as done)
    still = query(db, "SELECT id, finished, worker FROM jobs WHERE id IN ({})".format(
        ",".join(f"'{row[0]}'" for row in killed_and_resumed["done_at_kill"])))
    assert sorted(still) == sorted(killed_and_resumed["done_at_kill"])
    assert query(db, "SELECT COUNT(*) FROM failures") == [(0,)]
    assert len(query(db, "SELECT id FROM runs")) == 2
    # every artifact built once in the content-addressed store
    # (a build killed mid-way may leave a hidden staging directory; it is never used)
    assert len([p for p in (workspace / "artifacts").glob("*/x86/*") if not p.name.startswith(".")]) == ARTIFACTS
    assert query(db, "SELECT COUNT(DISTINCT artifact_key) FROM jobs") == [(ARTIFACTS,)]
    manifest = json.loads(query(db, "SELECT manifest FROM manifests LIMIT 1")[0][0])
    assert manifest["threads"] == 1 and len(manifest["artifact"]["manifest_sha256"]) == 64
    assert manifest["results"]["tool_versions"]["openvino"] and manifest["results"]["machine"]["cores"]
    status = sweep_cli("status", db, "--json", cwd=workspace)
    assert json.loads(status.stdout)["done"] == JOBS and json.loads(status.stdout)["failed_jobs"] == []


def test_ray_engine_gives_the_same_metrics(killed_and_resumed: dict, workspace: Path,
                                          ray_cluster: tuple[str, dict[str, str]]):
    address, env = ray_cluster
    result = sweep_cli("grid.toml", "--out", workspace / "ray", "--engine", "ray", "--address", address,
                       cwd=workspace, env=env)
    assert result.returncode == 0, result.stderr
    db = workspace / "ray" / "sweep.db"
    assert_complete_and_unique(db, JOBS)
    assert query(db, "SELECT engine, slots FROM runs") == [("ray", 2)]
    local = {(job, metric): (value, low, high) for job, metric, value, low, high in
             query(killed_and_resumed["db"], "SELECT * FROM metrics")}
    remote = {(job, metric): (value, low, high) for job, metric, value, low, high in query(db, "SELECT * FROM metrics")}
    assert local.keys() == remote.keys()
    def same(a: tuple, b: tuple) -> bool:  # value, ci_low, ci_high (None where there is no CI)
        return all(x is y is None or (None not in (x, y) and x == pytest.approx(y, rel=1e-6, abs=1e-9))
                   for x, y in zip(a, b))

    assert all(same(remote[key], local[key]) for key in local)
    # built by the local sweep, only reused here
    assert query(db, "SELECT COUNT(*), SUM(reused) FROM artifacts") == [(ARTIFACTS, ARTIFACTS)]


FAILING = """
name = "failing"
artifacts = "{artifacts}"
models = ["lpmr-tiny-fmnist"]
runtimes = ["openvino", "torch"]
suites = ["{suite}", "{bad}"]
retries = 1
threads = 1
[precisions]
openvino = ["fp32"]
torch = ["fp32"]
[bench]
repeats = 10
max_seconds = 1.0
rounds = 2
"""


def test_failing_jobs_are_retried_recorded_and_the_rest_feeds_report_pick_and_export(workspace: Path):
    # an OOD folder that does not exist on the worker fails at run time, not when the file is read
    (workspace / "bad.toml").write_text('limit = 50\nbootstrap_resamples = 20\n[ood]\nsets = ["folder:/nonexistent-ood"]\n')
    (workspace / "failing.toml").write_text(FAILING.format(artifacts=workspace / "artifacts", suite=workspace / "tiny.toml",
                                                           bad=workspace / "bad.toml"))
    result = sweep_cli("failing.toml", "--out", "failing", cwd=workspace)
    assert result.returncode == 1 and "2 job(s) failed" in result.stderr
    db = workspace / "failing" / "sweep.db"
    assert counts(db) == {"done": 2, "failed": 2}
    failed = query(db, "SELECT attempts, error, traceback FROM jobs WHERE status = 'failed'")
    assert all(attempts == 2 and "nonexistent-ood" in error and "\n" not in error and "Traceback" in trace
               for attempts, error, trace in failed)
    assert query(db, "SELECT COUNT(*) FROM failures") == [(4,)]
    assert query(db, "SELECT COUNT(*) FROM metrics m JOIN jobs j ON j.id = m.job_id WHERE j.status = 'failed'") == [(0,)]
    assert query(db, "SELECT COUNT(*) FROM metrics WHERE metric = 'bench/median_ms'") == [(2,)]
    status = json.loads(sweep_cli("status", db, "--json", cwd=workspace).stdout)
    assert [job["attempts"] for job in status["failed_jobs"]] == [2, 2]

    picked = subprocess.run([str(LPMR_EDGE), "pick", str(db), "--objective", "accuracy", "--json"], cwd=workspace,
                            capture_output=True, text=True, check=False)
    assert picked.returncode == 0, picked.stderr
    (choice,) = json.loads(picked.stdout)
    assert choice["target"] == "x86" and choice["recommended"]["variant"] == "openvino fp32"
    assert choice["recommended"]["latency_ms"] > 0
    report = subprocess.run([str(LPMR_EDGE), "report", str(db), "--out", "report", "--json"], cwd=workspace,
                            capture_output=True, text=True, check=False)
    assert report.returncode == 0, report.stderr
    assert (workspace / "report" / "report.html").is_file()

    for fmt, read in (("csv", pd.read_csv), ("parquet", pd.read_parquet)):
        exported = sweep_cli("export", db, "--format", fmt, "--out", f"export-{fmt}", cwd=workspace)
        assert exported.returncode == 0, exported.stderr
        jobs, metrics = read(workspace / f"export-{fmt}" / f"jobs.{fmt}"), read(workspace / f"export-{fmt}" / f"metrics.{fmt}")
        assert len(jobs) == 4 and len(metrics) == query(db, "SELECT COUNT(*) FROM metrics")[0][0]
        assert {"runtime", "precision", "seed", "metric", "value", "ci_low", "ci_high"} <= set(metrics.columns)


def test_a_sweep_with_several_seeds_needs_a_selection_for_report(killed_and_resumed: dict):
    from lpmr_edge.errors import UserError
    from lpmr_edge.results import find_inputs

    db = killed_and_resumed["db"]
    with pytest.raises(UserError, match=r"select one set, e.g. '.*sweep.db\?seed=0'"):
        find_inputs([db])
    results, benches = find_inputs([Path(f"{db}?seed=1")])
    assert len(results) == JOBS // 2 and benches == []
    assert SweepStore.open_existing(db).counts()["done"] == JOBS
