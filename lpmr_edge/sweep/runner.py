"""The sweep driver: expands the grid, schedules artifact builds before the jobs that need them, applies
the retry policy and is the only writer of the database.

Each needed artifact is built (or found up to date) once, by one task, in the content-addressed store
``<artifacts>/<key[:16]>/<target>/<runtime>-<precision>``; its jobs are released when it is ready. A
task that fails — or whose worker dies — is recorded with its error and tried again up to ``retries``
more times; a failure never stops the sweep. A failed build fails the jobs that need it.

Workers keep their last job's runtime open, so the driver hands a freed slot a job on the runtime that
slot just ran (with every slot busy, the freed worker is the one that takes the next task), and otherwise
prefers a runtime no running job has open. A guess that misses (two slots freed at once, Ray placing a
task elsewhere) costs one model load, never a wrong result.
"""
from __future__ import annotations

import contextlib
import time
from collections import deque
from collections.abc import Callable
from concurrent.futures import FIRST_COMPLETED, Future, wait
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from lpmr_edge.errors import UserError
from lpmr_edge.suite import EvalSettings
from lpmr_edge.suite.settle import SETTLING_FILE
from lpmr_edge.sweep import spec as grid
from lpmr_edge.sweep.engines import Engine, check_engine, open_engine
from lpmr_edge.sweep.jobs import (
    BuildTask,
    JobTask,
    SettleTask,
    build_artifact,
    prepare_worker,
    run_job,
    run_settle_group,
    runtime_key,
)
from lpmr_edge.sweep.spec import Job, Sweep
from lpmr_edge.sweep.store import SweepStore, driver_lock

if TYPE_CHECKING:
    from lpmr_edge.export import ExportRequest

RESULTS_DIR = "results"
SETTLING_DIR = "settling"  # <out>/settling/<group>/settling.json with --until-settled
WORKER_LOG = "workers.log"
GROUP = "settle:"  # prefix of a settling group's entry in the ready queue (its id and its runtime key)


@dataclass
class Progress:
    """What the live display shows."""

    total: int
    done: int
    failed: int
    running: int = 0
    slots: int = 0
    started: float = field(default_factory=time.time)
    finished_here: int = 0  # jobs finished (done or failed) in this invocation, for the ETA

    def eta_seconds(self) -> float | None:
        """Remaining time at this invocation's pace (None before the first job finishes)."""
        remaining = self.total - self.done - self.failed
        if not self.finished_here:
            return None
        return remaining * (time.time() - self.started) / self.finished_here


OnProgress = Callable[[Progress], None]


def _job_rows(sweep: Sweep, jobs: list[Job]) -> list[dict[str, Any]]:
    return [{"id": job.id, "position": job.position, "model": job.model, "target": job.target,
             "runtime": job.runtime, "precision": job.precision, "calibration": job.calibration,
             "suite": job.suite, "seed": job.seed, "threads": sweep.job_threads(job)} for job in jobs]


def resume_store(sweep: Sweep, jobs: list[Job]) -> SweepStore:
    """The sweep's existing database, after checking that it holds this grid."""
    if not sweep.db_path.is_file():
        raise UserError(f"nothing to resume: {sweep.db_path} does not exist; run without --resume to start the sweep")
    return SweepStore.resume(sweep.db_path, [job.id for job in jobs], sweep.source)


def check_new_store(sweep: Sweep) -> None:
    """A one-line error when a new sweep would overwrite an existing database."""
    if sweep.db_path.exists():
        raise UserError(f"{sweep.db_path} already exists; pass --resume to continue that sweep, or choose a new --out")


def create_store(sweep: Sweep, jobs: list[Job]) -> SweepStore:
    """A new database for the sweep."""
    check_new_store(sweep)
    return SweepStore.create(sweep.db_path, sweep.describe(), _job_rows(sweep, jobs))


class ReadyJobs:
    """Jobs ready to run, grouped by the runtime they open, groups in order of arrival."""

    def __init__(self) -> None:
        self.by_runtime: dict[str, deque[str]] = {}

    def __bool__(self) -> bool:
        return bool(self.by_runtime)

    def add(self, runtime: str, job_id: str) -> None:
        """Queue a job that opens ``runtime``."""
        self.by_runtime.setdefault(runtime, deque()).append(job_id)

    def only_on(self, runtimes: set[str], unless: str | None = None) -> bool:
        """Whether every ready job opens one of ``runtimes`` and none opens ``unless``."""
        return unless not in self.by_runtime and self.by_runtime.keys() <= runtimes

    def take(self, preferred: str | None, avoid: set[str]) -> tuple[str, str]:
        """(runtime, job id) of the next job: on ``preferred`` if any, else on a runtime not in ``avoid``,
        else the oldest group's."""
        runtime = preferred if preferred in self.by_runtime else next(
            (key for key in self.by_runtime if key not in avoid), next(iter(self.by_runtime)))
        jobs = self.by_runtime[runtime]
        job_id = jobs.popleft()
        if not jobs:
            del self.by_runtime[runtime]
        return runtime, job_id


class Scheduler:
    """Runs the pending jobs of a store on an engine."""

    def __init__(self, sweep: Sweep, jobs: list[Job], store: SweepStore, engine: Engine,
                 on_progress: OnProgress | None = None) -> None:
        self.sweep, self.store, self.engine = sweep, store, engine
        self.jobs = {job.id: job for job in jobs}
        self.on_progress = on_progress or (lambda progress: None)
        counts = store.counts()
        self.progress = Progress(total=len(jobs), done=counts["done"], failed=counts["failed"], slots=engine.slots)
        self.ready = ReadyJobs()
        self.builds: deque[str] = deque()
        self.waiting: dict[str, list[str]] = {}  # artifact key -> job ids
        self.requests: dict[str, ExportRequest] = {}
        self.artifacts: dict[str, dict[str, Any]] = {}  # key -> successful build outcome
        self.build_attempts: dict[str, int] = {}
        self.job_artifact: dict[str, str] = {}
        self.cell_keys: dict[tuple, str] = {}  # (model, target, runtime, precision, calibration) -> key
        self.in_flight: dict[Future, tuple[str, str]] = {}
        self.running_runtimes: dict[Future, str] = {}  # the runtime each running job has open
        self.freed_runtimes: deque[str] = deque()  # runtimes of jobs that just finished: their workers are free
        # --until-settled: groups of jobs settled together, run as one task once every member's artifact is built
        groups = grid.settle_groups(jobs) if sweep.settle else {}
        self.groups = {key: [job.id for job in members] for key, members in groups.items()}
        self.group_of = {job_id: key for key, members in self.groups.items() for job_id in members}
        # the torch reference of a model, suite and seed covers the images its groups' candidates saw: it waits
        self.reference_of = grid.reference_groups(jobs, groups) if sweep.settle else {}
        self.blocked: dict[str, set[str]] = {}  # reference job -> groups it still waits for
        self.group_unbuilt: dict[str, set[str]] = {}  # group -> members whose artifact is not built yet
        self.group_pending: dict[str, list[str]] = {}  # group -> the members this invocation runs and stores
        self.failed_groups: set[str] = set()

    def _runtime(self, job_id: str) -> str:
        """The runtime a ready job opens in its worker (its ``runtime_key``)."""
        return runtime_key(self._job_task(self.jobs[job_id]))

    def _queue(self, job_ids: list[str]) -> None:
        for job_id in sorted(job_ids, key=lambda job_id: job_id not in self.group_of):  # groups first
            group = self.group_of.get(job_id)
            if group is None:
                self._queue_job(job_id)
                continue
            if group not in self.group_pending:  # every member is a candidate, also those done before a kill
                self.group_pending[group], self.group_unbuilt[group] = [], set(self.groups[group])
                for member in self.groups[group]:
                    self._queue_job(member)
            self.group_pending[group].append(job_id)

    def _queue_job(self, job_id: str) -> None:
        """Queue a job: ready if it needs no artifact, else waiting for its artifact's build."""
        job = self.jobs[job_id]
        waits = {group for group in self.reference_of.get(job_id, ()) if group in self.group_pending}
        if waits:
            self.blocked[job_id] = waits
        elif not job.needs_artifact:
            self.ready.add(self._runtime(job_id), job_id)
        else:
            cell = (job.model, job.target, job.runtime, job.precision, job.calibration)
            if cell not in self.cell_keys:
                self.cell_keys[cell] = grid.artifact_key(grid.export_request(self.sweep, job))
            key = self.job_artifact[job_id] = self.cell_keys[cell]
            if key not in self.waiting:
                self.waiting[key] = []
                self.requests[key] = grid.export_request(self.sweep, job)
                self.builds.append(key)
            self.waiting[key].append(job_id)

    def _release(self, job_id: str) -> None:
        """A job's artifact is built: the job is ready, or its group once every member's artifact is."""
        group = self.group_of.get(job_id)
        if group is None:
            self.ready.add(self._runtime(job_id), job_id)
            return
        self.group_unbuilt[group].discard(job_id)
        if not self.group_unbuilt[group]:
            self.ready.add(GROUP + group, GROUP + group)

    def _group_ended(self, group: str) -> None:
        """A group is done (or failed for good): the references waiting for it may run."""
        for job_id, waits in list(self.blocked.items()):
            waits.discard(group)
            if not waits:
                del self.blocked[job_id]
                self.ready.add(self._runtime(job_id), job_id)

    def _record(self, group: str) -> str:
        return str((self.sweep.out / SETTLING_DIR / group / SETTLING_FILE).resolve())

    def _settle_task(self, group: str) -> SettleTask:
        settle = self.sweep.settle
        assert settle is not None
        return SettleTask(group, tuple(self._job_task(self.jobs[job_id]) for job_id in self.groups[group]),
                          self._record(group), settle.objective, settle.margin, settle.shard_size, settle.ends_at)

    def _job_task(self, job: Job) -> JobTask:
        key = self.job_artifact.get(job.id)
        return JobTask(job_id=job.id, model=job.model, runtime=job.runtime,
                       artifact=self.artifacts[key]["path"] if key else None,
                       results_dir=str((self.sweep.out / RESULTS_DIR / job.id).resolve()),
                       suite=self.sweep.suites[job.suite],
                       settings=EvalSettings(limit=self.sweep.limit, seed=job.seed, suite=job.suite),
                       threads=self.sweep.job_threads(job), bench=self.sweep.bench_settings(job),
                       cache_bytes=self.sweep.worker_cache_mb << 20,
                       covers=tuple(self._record(group) for group in self.reference_of.get(job.id, ())))

    def _submit_next(self) -> bool:
        """Submit a ready job, else an artifact build (results come early; builds still fill idle slots) —
        but a build first when every ready job would open a runtime another worker has open: the build
        makes jobs on a new runtime ready instead."""
        freed = self.freed_runtimes[0] if self.freed_runtimes else None
        elsewhere = {*self.running_runtimes.values(), *list(self.freed_runtimes)[1:]}
        if self.ready and not (self.builds and self.ready.only_on(elsewhere, unless=freed)):
            if self.freed_runtimes:
                self.freed_runtimes.popleft()
            runtime, entry = self.ready.take(freed, elsewhere)
            group = entry.removeprefix(GROUP) if entry.startswith(GROUP) else None
            started = self.group_pending[group] if group else [entry]
            for job_id in started:
                self.store.job_started(job_id)
            future = self.engine.submit(run_settle_group, self._settle_task(group)) if group else \
                self.engine.submit(run_job, self._job_task(self.jobs[entry]))
            self.in_flight[future] = ("group", group) if group else ("job", entry)
            self.running_runtimes[future] = runtime
            self.progress.running += len(started)
            return True
        if self.builds:
            key = self.builds.popleft()
            if self.freed_runtimes:  # that freed worker builds now
                self.freed_runtimes.popleft()
            task = BuildTask(key, self.requests[key], str((self.sweep.artifacts / key[:16]).resolve()),
                             self.sweep.max_threads())
            self.in_flight[self.engine.submit(build_artifact, task)] = ("build", key)
            return True
        return False

    def _job_failed(self, job_id: str, error: str, traceback: str | None, max_attempts: int) -> None:
        if self.store.job_failed(job_id, error, traceback, max_attempts):
            self.progress.failed += 1
            self.progress.finished_here += 1
        else:
            self.ready.add(self._runtime(job_id), job_id)

    def _group_failed(self, group: str, error: str, traceback: str | None, max_attempts: int) -> None:
        """A group's task (or a member's artifact build) failed: each member this invocation runs is failed,
        and the group is queued again while they have attempts left."""
        if group in self.failed_groups:
            return
        retry = False
        for job_id in self.group_pending[group]:
            if self.store.job_failed(job_id, error, traceback, max_attempts):
                self.progress.failed += 1
                self.progress.finished_here += 1
            else:
                retry = True
        if retry:
            self.ready.add(GROUP + group, GROUP + group)
        else:
            self.failed_groups.add(group)
            self._group_ended(group)

    def _finished_group(self, group: str, outcome: dict[str, Any]) -> None:
        if not outcome["ok"]:
            self.progress.running -= len(self.group_pending[group])
            self._group_failed(group, outcome["error"], outcome.get("traceback"), self.sweep.retries + 1)
            return
        for job_id in self.group_pending[group]:
            self._finished_job(job_id, {"ok": True, **outcome["jobs"][job_id]})
        self._group_ended(group)

    def _finished_job(self, job_id: str, outcome: dict[str, Any]) -> None:
        self.progress.running -= 1
        if not outcome["ok"]:
            self._job_failed(job_id, outcome["error"], outcome.get("traceback"), self.sweep.retries + 1)
            return
        key = self.job_artifact.get(job_id)
        if key:
            built = self.artifacts[key]
            outcome["manifest"]["artifact"] = {"key": key, "path": built["path"],
                                               "manifest_sha256": built["manifest_sha256"]}
        self.store.job_done(job_id, outcome, key)
        self.progress.done += 1
        self.progress.finished_here += 1

    def _finished_build(self, key: str, outcome: dict[str, Any]) -> None:
        self.store.artifact_result(key, self.requests[key].name, outcome)
        if outcome["ok"]:
            self.artifacts[key] = outcome
            for job_id in self.waiting.pop(key):
                self._release(job_id)
            return
        self.build_attempts[key] = self.build_attempts.get(key, 0) + 1
        if self.build_attempts[key] <= self.sweep.retries:
            self.builds.append(key)
            return
        for job_id in self.waiting.pop(key):
            error = f"artifact build failed: {outcome['error']}"
            if job_id in self.group_of:
                self._group_failed(self.group_of[job_id], f"{error} (of {self.jobs[job_id].label()}, a candidate of "
                                   "this job's settling group)", outcome.get("traceback"), 0)
            else:
                self._job_failed(job_id, error, outcome.get("traceback"), 0)

    def _collect(self, future: Future) -> dict[str, Any]:
        try:
            return future.result()
        except Exception as error:  # noqa: BLE001 - the worker died or the engine lost the task
            self.engine.recover(future)
            return {"ok": False, "error": f"worker lost: {type(error).__name__}: {error}".splitlines()[0],
                    "traceback": None}

    def run(self, job_ids: list[str]) -> Progress:
        """Run the given pending jobs to completion (done or failed)."""
        self._queue(job_ids)
        self.on_progress(self.progress)
        while True:
            while len(self.in_flight) < self.engine.slots and self._submit_next():
                pass
            if not self.in_flight:
                return self.progress
            finished, _ = wait(list(self.in_flight), timeout=1.0, return_when=FIRST_COMPLETED)
            for future in finished:
                kind, name = self.in_flight.pop(future)
                if future in self.running_runtimes:
                    self.freed_runtimes.append(self.running_runtimes.pop(future))
                outcome = self._collect(future)
                if kind == "build":
                    self._finished_build(name, outcome)
                elif kind == "group":
                    self._finished_group(name, outcome)
                else:
                    self._finished_job(name, outcome)
            self.on_progress(self.progress)


def _warm_up(runner: Engine) -> list[Future]:
    """Have every worker import the suite and the runtimes now, while the driver loads the sweep's models."""
    return [runner.submit(prepare_worker, None) for _ in range(runner.slots)]


def _warmed_up(runner: Engine, warming: list[Future]) -> None:
    wait(warming)
    for future in warming:
        if future.exception() is not None:  # a worker died importing: its job would fail the same way
            runner.recover(future)


def run_sweep(sweep: Sweep, engine: str = "local", address: str | None = None, resume: bool = False,
              retry_failed: bool = False, workers: int | None = None,
              on_progress: OnProgress | None = None) -> Progress:
    """Run (or resume) a sweep; returns the final counts. Failed jobs are in the database, not raised.

    The engine starts first, so that its workers import their libraries while the driver loads every model
    of the grid (a bad model spec still fails before a new database is created).
    """
    check_engine(engine, address)
    jobs = grid.expand(sweep)
    with driver_lock(sweep.db_path), contextlib.ExitStack() as cleanup:
        store = cleanup.enter_context(contextlib.closing(resume_store(sweep, jobs))) if resume else None
        if store is None:
            check_new_store(sweep)
        elif retry_failed:
            store.requeue_failed()
        if store and not store.job_ids("pending"):
            counts = store.counts()
            return Progress(total=len(jobs), done=counts["done"], failed=counts["failed"])
        runner = open_engine(engine, sweep.max_threads(), sweep.out / WORKER_LOG, address, workers)
        cleanup.callback(runner.close)
        warming = _warm_up(runner)
        grid.check_models(sweep)
        if store is None:
            store = cleanup.enter_context(contextlib.closing(create_store(sweep, jobs)))
        _warmed_up(runner, warming)
        run_id = store.start_run(runner.name, runner.slots)
        try:
            return Scheduler(sweep, jobs, store, runner, on_progress).run(store.job_ids("pending"))
        finally:
            store.finish_run(run_id)
