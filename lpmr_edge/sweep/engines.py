"""Where sweep tasks run: a local process pool or a Ray cluster, behind one small interface.

An engine runs ``fn(task)`` somewhere and hands back a ``concurrent.futures.Future``; ``slots`` is how
many tasks it runs at once (the driver keeps no more than that in flight, so ``running`` in the database
means running). ``fn`` is ``build_artifact`` or ``run_job`` from ``lpmr_edge.sweep.jobs``.

* ``local``: a 'spawn' process pool (torch and fork do not mix) of ``cores // threads`` workers; each
  worker caps its threads, writes its output to ``<out>/workers.log`` and exits if the driver dies.
* ``ray``: Ray tasks, each asking for ``num_cpus = threads``; ``slots`` is the cluster's CPUs // threads.
  With an address it joins that cluster (``ray start --head`` ...); without, it starts a private one on
  this machine. Workers must be able to import lpmr_edge (same install on every node) and read and write
  the sweep's ``out`` and ``artifacts`` directories (a shared filesystem on a real cluster).
* ``InlineEngine``: each task runs in this process when submitted (one slot): the serial case.

``run_steps`` runs a dependency graph of ``Step``s on an engine within a thread budget (``lpmr-edge run``).
"""
from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from lpmr_edge.errors import UserError
from lpmr_edge.lifetime import exit_with_parent

ENGINES = ("local", "ray")
Task = Callable[[Any], dict[str, Any]]


class Engine(Protocol):
    """Runs tasks and says how many at once."""

    name: str
    slots: int

    def submit(self, fn: Task, task: Any) -> Future: ...

    def recover(self, failed: Future) -> None: ...

    def close(self) -> None: ...


def _init_worker(threads: int, parent: int, log: str | None) -> None:
    """Pool worker start-up: output to ``log`` (None: the driver's streams, inherited), quiet libraries, cap
    threads before torch loads, die with the driver."""
    import logging
    import warnings

    if log is not None:
        output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
        for stream in (1, 2):  # progress bars and native-library chatter would garble the live display
            os.dup2(output, stream)
        os.close(output)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    exit_with_parent(parent)


class LocalEngine:
    """A spawn process pool sized so that ``slots x threads`` does not exceed the cores; the workers' output
    goes to ``log`` (None: wherever the driver's goes)."""

    name = "local"

    def __init__(self, threads: int, log: Path | None, workers: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.threads = threads
        self.log = log
        self.slots = workers or max(1, cores // threads)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.threads, os.getpid(), None if self.log is None else str(self.log)))

    def submit(self, fn: Task, task: Any) -> Future:
        """Run ``fn(task)`` in a worker."""
        future = self._pool.submit(fn, task)
        future.pool = self._pool  # type: ignore[attr-defined]
        return future

    def recover(self, failed: Future) -> None:
        """Replace the pool a dead worker broke (all its in-flight tasks fail), once: a failure reported
        from an already replaced pool leaves the new one alone."""
        if getattr(failed, "pool", None) is self._pool:
            self._pool.shutdown(wait=False, cancel_futures=True)
            self._pool = self._new_pool()

    def close(self) -> None:
        """Stop the workers."""
        self._pool.shutdown(wait=True, cancel_futures=True)


class InlineEngine:
    """Runs each task in this process as it is submitted: one slot, nothing to start or stop."""

    name = "inline"
    slots = 1

    def submit(self, fn: Task, task: Any) -> Future:
        """Run ``fn(task)`` now; its value or exception is in the returned (finished) future."""
        future: Future = Future()
        try:
            future.set_result(fn(task))
        except Exception as error:  # noqa: BLE001 - handed over like a worker's failure
            future.set_exception(error)
        return future

    def recover(self, failed: Future) -> None:
        """Nothing to do: no worker can die."""

    def close(self) -> None:
        """Nothing to stop."""


class RayEngine:
    """Ray tasks with ``num_cpus = threads``; results come back to the driver as futures."""

    name = "ray"

    def __init__(self, threads: int, address: str | None = None) -> None:
        import ray

        env = {"OMP_NUM_THREADS": str(threads), "OMP_WAIT_POLICY": "PASSIVE", "RAY_USAGE_STATS_ENABLED": "0"}
        os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
        try:
            ray.init(address=address or "local", include_dashboard=False, log_to_driver=False,
                     logging_level="ERROR", runtime_env={"env_vars": env},
                     **({} if address else {"num_cpus": os.cpu_count() or 1}))
        except (ConnectionError, RuntimeError, ValueError, ray.exceptions.RayError) as error:
            raise UserError(f"cannot connect to the Ray cluster at {address or 'a new local instance'} "
                            f"({str(error).splitlines()[0] if str(error) else type(error).__name__}); start one "
                            "with `ray start --head` and pass --address HOST:PORT (a cluster with token "
                            "authentication also needs RAY_AUTH_MODE=token and its RAY_AUTH_TOKEN)") from None
        self._ray = ray
        cpus = ray.cluster_resources().get("CPU", 0)
        if cpus < threads:
            ray.shutdown()
            raise UserError(f"the Ray cluster at {address} has {cpus:g} CPUs, fewer than the {threads} threads a "
                            "job needs; add nodes or lower the sweep's 'threads'")
        self.threads = threads
        self.slots = int(cpus // threads)
        self._remote: dict[Task, Any] = {}

    def submit(self, fn: Task, task: Any) -> Future:
        """Run ``fn(task)`` as a Ray task (no Ray-level retries: the sweep's policy decides)."""
        if fn not in self._remote:
            self._remote[fn] = self._ray.remote(fn).options(num_cpus=self.threads, max_retries=0)
        return self._remote[fn].remote(task).future()

    def recover(self, failed: Future) -> None:
        """Nothing to do: Ray replaces dead workers itself."""

    def close(self) -> None:
        """Disconnect from (or stop the private) Ray instance."""
        self._ray.shutdown()


def check_engine(name: str, address: str | None) -> None:
    """A one-line error for an unknown engine or an address given to the local one."""
    if name not in ENGINES:
        raise UserError(f"unknown engine '{name}'; use {' or '.join(ENGINES)}")
    if name == "local" and address:
        raise UserError("--address is for --engine ray; drop it or add --engine ray")


def open_engine(name: str, threads: int, log: Path, address: str | None = None, workers: int | None = None) -> Engine:
    """The engine called ``name`` (local or ray); local workers write their output to ``log``."""
    check_engine(name, address)
    return LocalEngine(threads, log, workers) if name == "local" else RayEngine(threads, address)


@dataclass(frozen=True)
class Step:
    """One node of a dependency graph: ``call(inputs)`` runs once every step named in ``after`` has succeeded,
    with ``inputs`` their values by name. It counts as ``threads`` threads; an ``exclusive`` step runs with
    nothing else in flight (e.g. a latency benchmark). ``call`` and the values must pickle for a process pool."""

    name: str
    call: Callable[[Mapping[str, Any]], Any]
    threads: int = 1
    after: tuple[str, ...] = ()
    exclusive: bool = False


@dataclass(frozen=True)
class StepOutcome:
    """A finished step: its value, or a one-line ``error`` (None: it succeeded)."""

    name: str
    value: Any = None
    error: str | None = None
    skipped: bool = False  # not run because a step it comes after failed


def _call_step(work: tuple[Callable[[Mapping[str, Any]], Any], Mapping[str, Any]]) -> Any:
    call, inputs = work
    return call(inputs)


def _error_line(error: BaseException) -> str:
    """The first line of the error's message (after its type's name unless it is a UserError)."""
    lines = str(error).strip().splitlines()
    if not lines:
        return type(error).__name__
    return lines[0] if isinstance(error, UserError) else f"{type(error).__name__}: {lines[0]}"


def _check_graph(steps: Sequence[Step]) -> None:
    """A ValueError for a repeated name, an unknown dependency or a step that comes after a later one (the
    order given must be one in which every step follows what it needs: no cycle can hide in it)."""
    seen: set[str] = set()
    for step in steps:
        if step.name in seen:
            raise ValueError(f"step '{step.name}' is listed twice")
        missing = [name for name in step.after if name not in seen]
        if missing:
            raise ValueError(f"step '{step.name}' comes after '{missing[0]}', which is not listed before it")
        seen.add(step.name)


@dataclass
class _Flight:
    """The steps running now and the threads they hold."""

    budget: int
    slots: int
    steps: dict[Future, Step] = field(default_factory=dict)

    def cost(self, step: Step) -> int:
        return self.budget if step.exclusive else min(step.threads, self.budget)

    def fits(self, step: Step) -> bool:
        used = sum(self.cost(running) for running in self.steps.values())
        return len(self.steps) < self.slots and used + self.cost(step) <= self.budget


def run_steps(engine: Engine, steps: Sequence[Step], budget: int,
              on_start: Callable[[Step], None] | None = None,
              on_finish: Callable[[Step, StepOutcome], None] | None = None) -> dict[str, StepOutcome]:
    """Run every step on ``engine`` once the steps it comes after have succeeded: at most ``engine.slots`` at
    once, with the threads in flight at most ``budget`` (a step wanting more than the budget runs alone, and
    so does an exclusive step). Ready steps start in the order given; a later one that fits starts while an
    earlier one waits for threads. A failed step (its worker dying included) gets a one-line error and the
    steps after it are skipped; every other step still runs. Returns every step's outcome by name, in the
    order they finished; ``on_start``/``on_finish`` are called in the driver as steps start and finish."""
    _check_graph(steps)
    started, finished = on_start or (lambda step: None), on_finish or (lambda step, outcome: None)
    outcomes: dict[str, StepOutcome] = {}
    waiting = list(steps)
    flight = _Flight(budget=max(1, budget), slots=engine.slots)
    while waiting or flight.steps:
        for step in list(waiting):
            failed = next((name for name in step.after if name in outcomes and outcomes[name].error), None)
            if failed is not None:
                waiting.remove(step)
                reason = "was not run" if outcomes[failed].skipped else "failed"
                outcomes[step.name] = StepOutcome(step.name, error=f"'{failed}' {reason}", skipped=True)
                finished(step, outcomes[step.name])
            elif all(name in outcomes for name in step.after) and flight.fits(step):
                waiting.remove(step)
                started(step)
                inputs = {name: outcomes[name].value for name in step.after}
                flight.steps[engine.submit(_call_step, (step.call, inputs))] = step
        if not flight.steps:
            continue  # only skipped steps were left this round
        done, _ = wait(list(flight.steps), return_when=FIRST_COMPLETED)
        for future in [future for future in flight.steps if future in done]:  # in the order they started
            step = flight.steps.pop(future)
            try:
                outcome = StepOutcome(step.name, value=future.result())
            except Exception as error:  # noqa: BLE001 - the step failed or its worker died: one line, go on
                engine.recover(future)
                outcome = StepOutcome(step.name, error=_error_line(error))
            outcomes[step.name] = outcome
            finished(step, outcome)
    return outcomes
