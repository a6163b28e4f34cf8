"""`lpmr-edge sweep --until-settled`: the artifacts of each model x target x suite x seed settle together (on an
OOD objective, so the ID and OOD sets are visited shard by shard), the sweep is killed in the middle of a
group's settling and resumed to the end, the summary states per job where its group stopped and the images
it saw, and the torch reference covers the images its group's candidates saw. Exports real artifacts: slow."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from lpmr_edge.sequential import EvaluationRecord, shard_order
from lpmr_edge.suite.settle_plan import set_seed

pytestmark = pytest.mark.slow

LPMR_EDGE = Path(sys.executable).with_name("lpmr-edge")
SUITE = "limit = 400\nbootstrap_resamples = 50\n[ood]\nsets = [\"digits\"]\nclass_split = false\n"
GRID = """
name = "settle"
artifacts = "{root}/artifacts"
models = ["lpmr-tiny-fmnist"]
runtimes = ["openvino", "torch"]
suites = ["{root}/tiny.toml"]
seeds = [0, 1]
threads = 1
retries = 0
[precisions]
openvino = ["fp32", "int8-w"]
torch = ["fp32"]
[bench]
enabled = false
"""
SETTLE = ["--until-settled", "--objective", "auroc:worst", "--shard-size", "20", "--json"]


def query(db: Path, sql: str) -> list[tuple]:
    with sqlite3.connect(f"file:{db}?mode=ro", uri=True) as connection:
        return connection.execute(sql).fetchall()


def recorded_shards(out: Path) -> dict[Path, int]:
    """Shards recorded per group's settling.json (ID set)."""
    shards = {}
    for path in out.glob("settling/*/settling.json"):
        try:
            shards[path] = len(json.loads(path.read_text())["records"]["id"]["shards"])
        except (json.JSONDecodeError, KeyError):
            continue
    return shards


def test_sweep_until_settled_killed_mid_group_resumes_and_states_each_job(tmp_path: Path):
    (tmp_path / "tiny.toml").write_text(SUITE)
    (tmp_path / "grid.toml").write_text(GRID.format(root=tmp_path))
    out, db = tmp_path / "out", tmp_path / "out" / "sweep.db"
    command = [str(LPMR_EDGE), "sweep", "grid.toml", "--out", str(out), *SETTLE]
    with (tmp_path / "killed.log").open("w") as log:
        driver = subprocess.Popen(command, cwd=tmp_path, stdout=log, stderr=log, start_new_session=True)
        deadline = time.time() + 900
        while not any(recorded_shards(out).values()):  # kill once a group has recorded a shard
            assert driver.poll() is None, (tmp_path / "killed.log").read_text()
            assert time.time() < deadline, "no group started settling"
            time.sleep(0.02)
        os.killpg(driver.pid, signal.SIGKILL)  # the driver and its pool workers
        driver.wait()
    at_kill = recorded_shards(out)
    shard_files = {path: path.stat().st_mtime_ns for path in out.glob("results/*/settling/*/shard-*.npy")}

    resumed = subprocess.run([*command, "--resume"], cwd=tmp_path, capture_output=True, text=True, check=False,
                             timeout=900)
    assert resumed.returncode == 0, resumed.stderr
    assert query(db, "SELECT status, COUNT(*) FROM jobs GROUP BY status") == [("done", 6)]
    assert query(db, "SELECT job_id, metric FROM metrics GROUP BY job_id, metric HAVING COUNT(*) > 1") == []
    final = recorded_shards(out)
    assert len(final) == 2 and any(at_kill.get(path, 0) < n for path, n in final.items()), \
        "the sweep was not killed in the middle of a group's settling"

    summary = json.loads(resumed.stdout)
    rows = summary["settling"]
    # the shards a group had recorded at the kill are not evaluated again (a shard in progress is)
    recorded_at_kill = {row["id"]: at_kill.get(out / "settling" / row["group"] / "settling.json", 0) for row in rows}
    kept = {path: mtime for path, mtime in shard_files.items()
            if int(path.stem.split("-")[1]) < recorded_at_kill[path.parents[2].name]}
    assert kept, "no shard was recorded at the kill"
    assert {path: path.stat().st_mtime_ns for path in kept} == kept, "a shard recorded before the kill was redone"
    assert len(rows) == 4 and {row["runtime"] for row in rows} == {"openvino"}
    for seed in (0, 1):
        group = [row for row in rows if row["seed"] == seed]
        assert len({row["group"] for row in group}) == 1
        assert {row["state"] for row in group} <= {"recommended", "equivalent", "worse", "undecided"}
        assert "recommended" in {row["state"] for row in group}
        assert {row["stopped"] for row in group} <= {"settled", "images"}
        record_path = out / "settling" / group[0]["group"] / "settling.json"
        records = {name: EvaluationRecord.from_json(data)
                   for name, data in json.loads(record_path.read_text())["records"].items()}
        assert set(records) == {"id", "ood-digits"}
        for name, record in records.items():  # each set in its own order, seeded by the job's seed
            order = shard_order(400, set_seed(seed, name))[:record.position].tolist()
            assert [i for shard in record.shards for i in shard["indices"]] == order
        for row in group:
            seen = records["id"].seen(f"openvino-{row['precision']}")
            assert row["images"] == len(seen) and row["of"] == 400
            assert row["sets"] == {"ood-digits": {"images": len(records["ood-digits"].seen(
                f"openvino-{row['precision']}")), "of": 400}}
            metrics = dict(query(db, f"SELECT metric, value FROM metrics WHERE job_id = '{row['id']}'"))
            assert metrics["accuracy/n"] == metrics["sequential/images"] == len(seen)
            assert metrics["ood/sets/digits/n"] == metrics["sequential/sets/ood-digits/images"]
        # the torch reference of the seed covers the images any candidate of its group saw, as in `run`
        (reference,) = query(db, f"SELECT id FROM jobs WHERE runtime = 'torch' AND seed = {seed}")
        metrics = dict(query(db, f"SELECT metric, value FROM metrics WHERE job_id = '{reference[0]}'"))
        assert metrics["accuracy/n"] == records["id"].position
        assert metrics["ood/sets/digits/n"] == records["ood-digits"].position
