"""Sweep files, grid expansion, the results store, scheduling, one-line errors and a worker's kept runtime
(fast: nothing is exported; the jobs run the torch stand-in in process on a few images)."""
from __future__ import annotations

import sqlite3
import sys
from dataclasses import dataclass, field
from pathlib import Path

import pytest

from lpmr_edge.errors import UserError
from lpmr_edge.schema import parse_table, require
from lpmr_edge.suite import EvalSettings, suite_from_mapping
from lpmr_edge.sweep import jobs as worker
from lpmr_edge.sweep.jobs import JobTask, flatten_metrics, run_job
from lpmr_edge.sweep.runner import ReadyJobs
from lpmr_edge.sweep.spec import HOST_TARGET, expand, load_sweep
from lpmr_edge.sweep.store import SweepStore

GRID = """
models = ["lpmr-tiny-fmnist", "random:lpmr-tiny-fmnist"]
runtimes = ["openvino", "executorch", "torch"]
suites = ["basic"]
seeds = [0, 1]
threads = 1
[precisions]
openvino = ["fp32", "int8"]
executorch = ["fp32", "int8-dyn", "int4-w"]
torch = ["fp32"]
[[calibrations]]
subset_size = 300
[[calibrations]]
subset_size = 100
"""


def write(tmp_path: Path, text: str, name: str = "grid.toml") -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def test_grid_expands_to_stable_unique_jobs(tmp_path: Path):
    sweep = load_sweep(write(tmp_path, GRID), out=tmp_path / "out")
    jobs = expand(sweep)
    # per model: (2 OpenVINO + 3 ExecuTorch precisions) x 2 calibrations x 2 seeds, plus torch x 2 seeds
    assert len(jobs) == 2 * (5 * 2 * 2 + 2)
    assert len({job.id for job in jobs}) == len(jobs)
    assert [job.position for job in jobs] == list(range(len(jobs)))
    torch_jobs = [job for job in jobs if job.runtime == "torch"]
    assert {job.target for job in torch_jobs} == {HOST_TARGET} and {job.calibration for job in torch_jobs} == {None}
    assert [job.id for job in expand(load_sweep(write(tmp_path, GRID)))] == [job.id for job in jobs]
    assert sweep.db_path == tmp_path / "out" / "sweep.db" and sweep.job_threads(jobs[0]) == 1
    changed = expand(load_sweep(write(tmp_path, GRID.replace("seeds = [0, 1]", "seeds = [0, 2]"), "other.toml")))
    assert len({job.id for job in changed} & {job.id for job in jobs}) == len(jobs) // 2


@pytest.mark.parametrize(("text", "expected"), [
    ("models = [", "not valid TOML"),
    (GRID + "colour = 1\n", "unknown key 'colour'"),
    (GRID.replace('"torch"]', '"tensorrt"]'), "unknown runtime 'tensorrt'"),
    (GRID.replace('torch = ["fp32"]', 'torch = ["int8"]'), "runtime torch has no precision int8"),
    (GRID.replace("[precisions]\nopenvino", "[precisions]\nopenvinox"), "one entry per runtime"),
    (GRID.replace("seeds = [0, 1]", "seeds = [0, 0]"), "'seeds' lists an entry twice"),
    (GRID.replace("threads = 1", "threads = 0"), "'threads' is 0"),
    (GRID.replace("threads = 1", "threads = 1\nworker_cache_mb = -1"), "'worker_cache_mb' is -1"),
    (GRID.replace("subset_size = 100", "subset_sise = 100"), "unknown key 'subset_sise' in [[calibrations]]"),
    (GRID + "[bench]\nrepeat = 3\n", "unknown key 'repeat' in [bench]"),
    (GRID.replace('suites = ["basic"]', 'suites = ["nope"]'), "unknown suite 'nope'"),
    ('precisions = ["fp32", "int8"]\n' + GRID.split("[precisions]")[0],
     "runtime torch has no precision int8"),
])
def test_bad_sweep_files_are_one_line_errors(tmp_path: Path, text: str, expected: str):
    with pytest.raises(UserError) as error:
        load_sweep(write(tmp_path, text))
    assert expected in str(error.value) and "\n" not in str(error.value)


def test_store_rejects_other_databases_and_another_grid(tmp_path: Path):
    (tmp_path / "notes.db").write_text("not a database")
    with pytest.raises(UserError, match="not an SQLite database"):
        SweepStore.open_existing(tmp_path / "notes.db")
    sqlite3.connect(tmp_path / "other.db").execute("CREATE TABLE t (x)")
    with pytest.raises(UserError, match="not an lpmr-edge sweep database"):
        SweepStore.open_existing(tmp_path / "other.db")
    rows = [{"id": f"j{i}", "position": i, "model": "m", "target": "x86", "runtime": "openvino",
             "precision": "fp32", "calibration": 0, "suite": "basic", "seed": i, "threads": 1} for i in range(3)]
    SweepStore.create(tmp_path / "sweep.db", {"name": "t"}, rows).close()
    with pytest.raises(UserError, match="different grid"):
        SweepStore.resume(tmp_path / "sweep.db", ["j0", "j1", "j9"], "grid.toml")


def test_a_job_is_done_once_with_all_its_metrics_or_not_at_all(tmp_path: Path):
    rows = [{"id": "j0", "position": 0, "model": "m", "target": "x86", "runtime": "openvino", "precision": "fp32",
             "calibration": 0, "suite": "basic", "seed": 0, "threads": 1}]
    store = SweepStore.create(tmp_path / "sweep.db", {"name": "t"}, rows)
    outcome = {"seconds": 1.0, "runtime_seconds": 0.5, "worker": "w", "results_dir": "r", "manifest": {},
               "metrics": [("accuracy/top1", 0.9, 0.8, 1.0), ("accuracy/top1", 0.9, 0.8, 1.0)]}
    store.job_started("j0")
    with pytest.raises(sqlite3.IntegrityError):  # a duplicated metric rolls the whole job back
        store.job_done("j0", outcome, None)
    assert store.counts()["running"] == 1 and store.db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 0
    store.job_done("j0", {**outcome, "metrics": outcome["metrics"][:1]}, None)
    with pytest.raises(RuntimeError, match="not running"):
        store.job_done("j0", {**outcome, "metrics": outcome["metrics"][:1]}, None)
    assert store.counts()["done"] == 1 and store.db.execute("SELECT COUNT(*) FROM metrics").fetchone()[0] == 1
    assert store.job_failed("j0", "E: boom", "trace", max_attempts=2) is False
    assert store.job_failed("j0", "E: boom", "trace", max_attempts=2) is True
    assert store.counts()["failed"] == 1


def test_flatten_metrics_reads_values_with_their_intervals():
    metrics = {"accuracy": {"top1": 0.9, "n": 10, "ci": {"top1": [0.8, 0.95]}},
               "calibration": {"reliability_diagram": {"bins": [1, 2]}, "ok": True, "ece": 0.1, "ci": {}}}
    assert flatten_metrics(metrics) == [("accuracy/top1", 0.9, 0.8, 0.95), ("accuracy/n", 10.0, None, None),
                                        ("calibration/ece", 0.1, None, None)]


def run_cli(monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """``lpmr-edge ARGS`` in this process; returns (exit status, stderr)."""
    from lpmr_edge.cli import main

    monkeypatch.setattr(sys, "argv", ["lpmr-edge", *args])
    with pytest.raises(SystemExit) as exited:
        main()
    return exited.value.code or 0, capsys.readouterr().err


def test_cli_errors_are_one_line(tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture):
    (tmp_path / "x.db").write_bytes(b"junk")
    bad = write(tmp_path, GRID + "colour = 1\n")
    good = write(tmp_path, GRID, "good.toml")
    unknown_model = write(tmp_path, GRID.replace('"random:lpmr-tiny-fmnist"', '"random:NoSuchArch"'), "unknown.toml")
    for args, expected in ((["sweep", "status", str(tmp_path / "x.db")], "not an SQLite database"),
                           (["sweep", str(bad)], "unknown key 'colour'"),
                           (["sweep", "run", str(good), "--resume", "--out", str(tmp_path / "o")], "nothing to resume"),
                           (["sweep", str(good), "--engine", "slurm", "--out", str(tmp_path / "o")],
                            "unknown engine 'slurm'"),
                           (["sweep", "export", str(tmp_path / "missing.db")], "does not exist; give an existing file"),
                           (["sweep", str(unknown_model), "--out", str(tmp_path / "new")], "NoSuchArch")):
        status, err = run_cli(monkeypatch, capsys, *args)
        assert status == 2 and err.startswith("error: ") and expected in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "new" / "sweep.db").exists()  # a bad model fails before the database is created


def test_one_driver_per_database(tmp_path: Path):
    from lpmr_edge.sweep.runner import run_sweep
    from lpmr_edge.sweep.store import driver_lock

    sweep = load_sweep(write(tmp_path, GRID), out=tmp_path / "out")
    with driver_lock(sweep.db_path), pytest.raises(UserError, match="another `lpmr-edge sweep` is running"):
        run_sweep(sweep)
    assert not sweep.db_path.exists()


def test_ready_jobs_prefer_the_freed_workers_runtime_then_one_nobody_has_open():
    ready = ReadyJobs()
    for runtime, job in [("a", "a0"), ("b", "b0"), ("a", "a1"), ("c", "c0"), ("b", "b1")]:
        ready.add(runtime, job)
    assert ready.take(None, avoid=set()) == ("a", "a0")  # nothing freed or open: the oldest group
    assert ready.take(None, avoid={"a"}) == ("b", "b0")  # a second slot: not the runtime the first has open
    assert ready.take("a", avoid={"b"}) == ("a", "a1")  # the worker that ran a0 keeps 'a' open
    assert ready.take("a", avoid={"b"}) == ("c", "c0")  # no 'a' left: a runtime no running job has open
    assert ready.only_on({"b"}) and not ready.only_on({"b"}, unless="b") and not ready.only_on({"c"})
    assert ready.take("c", avoid={"b"}) == ("b", "b1")  # only 'b' is left
    assert not ready


def tiny_job(tmp_path: Path, name: str, seed: int, ood: str = "digits") -> JobTask:
    suite = suite_from_mapping({"limit": 40, "bootstrap_resamples": 20, "ood": {"sets": [ood]}}, "tiny suite")
    return JobTask(job_id=name, model="lpmr-tiny-fmnist", runtime="torch", artifact=None,
                   results_dir=str(tmp_path / name), suite=suite, settings=EvalSettings(seed=seed),
                   threads=1, bench=None, cache_bytes=64 << 20)


def test_a_worker_reuses_its_open_runtime_for_the_next_job_on_it_and_drops_it_after_a_failure(tmp_path: Path):
    try:
        first, again = run_job(tiny_job(tmp_path, "first", seed=0)), run_job(tiny_job(tmp_path, "again", seed=0))
        assert first["ok"] and again["ok"], (first.get("error"), again.get("error"))
        assert [run["manifest"]["timings"]["runtime_reused"] for run in (first, again)] == [False, True]
        assert again["metrics"] == first["metrics"]  # the kept runtime and preprocessed sets: the same numbers
        assert 0 < again["runtime_seconds"] < again["seconds"]  # its own calls only, not the first job's
        failed = run_job(tiny_job(tmp_path, "failed", seed=0, ood=f"folder:{tmp_path / 'missing'}"))
        assert not failed["ok"] and "missing" in failed["error"]
        assert worker._kept == {}  # a failed job closes the runtime: a retry starts afresh
        retried = run_job(tiny_job(tmp_path, "retried", seed=1))
        assert retried["ok"] and retried["manifest"]["timings"]["runtime_reused"] is False
    finally:
        worker.close_kept_runtime()


@dataclass(frozen=True)
class RuntimeTable:
    precisions: tuple[str, ...]
    ratio: float = 1.0

    def __post_init__(self) -> None:
        require(0 < self.ratio <= 1, "ratio must be in (0, 1]")


@dataclass(frozen=True)
class TargetFile:
    name: str
    threads: int | None = None
    runtimes: dict[str, RuntimeTable] = field(default_factory=dict)


def test_the_generic_schema_reads_nested_tables_and_names_the_bad_key():
    parsed = parse_table(TargetFile, {"name": "x", "runtimes": {"ov": {"precisions": ["fp32"], "ratio": 1}}})
    assert parsed == TargetFile("x", None, {"ov": RuntimeTable(("fp32",), 1.0)})
    for table, message in (({"threads": 2}, "missing key 'name' in the top level"),
                           ({"name": "x", "threads": True}, "threads must be an integer, got True"),
                           ({"name": "x", "runtimes": {"ov": {"precision": []}}},
                            "unknown key 'precision' in [runtimes.ov]; valid keys: precisions, ratio"),
                           ({"name": "x", "runtimes": {"ov": {"precisions": ["a"], "ratio": 2}}},
                            "[runtimes.ov] ratio must be in (0, 1]")):
        with pytest.raises(UserError) as error:
            parse_table(TargetFile, table)
        assert str(error.value) == message
