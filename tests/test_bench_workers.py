"""``benchmark`` starts every worker before it waits for any (their loads overlap), and a worker that fails
leaves no process behind: the others, still loading or already serving, are ended and reaped."""
from __future__ import annotations

import multiprocessing
from pathlib import Path

import pytest

from lpmr_edge import bench
from lpmr_edge.bench import BenchSettings, RuntimeSource, benchmark
from lpmr_edge.errors import UserError


def test_all_workers_start_before_any_is_awaited_and_a_failure_leaves_no_child(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    events: list[tuple[str, str]] = []
    start, wait_ready = bench._Worker.__init__, bench._Worker.wait_ready

    def recorded_start(worker: bench._Worker, source: RuntimeSource, *args: object) -> None:
        start(worker, source, *args)
        events.append(("started", source.label))

    def recorded_wait(worker: bench._Worker) -> None:
        events.append(("awaited", worker.source.label))
        wait_ready(worker)

    monkeypatch.setattr(bench._Worker, "__init__", recorded_start)
    monkeypatch.setattr(bench._Worker, "wait_ready", recorded_wait)
    missing = str(tmp_path / "no-such-artifact")
    # The failing worker comes first: the torch worker after it would wait for orders forever unless ended.
    sources = [RuntimeSource(artifact=missing), RuntimeSource(model="random:lpmr-tiny-fmnist")]
    with pytest.raises(UserError, match="no-such-artifact") as raised:
        benchmark(sources, BenchSettings(batches=(1,), threads=1, warmup=1, repeats=1, rounds=1))
    assert "\n" not in str(raised.value)
    assert events == [("started", missing), ("started", "torch:random:lpmr-tiny-fmnist"), ("awaited", missing)]
    assert multiprocessing.active_children() == []
