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
"""
from __future__ import annotations

import os
import threading
import time
from collections.abc import Callable
from concurrent.futures import Future, ProcessPoolExecutor
from multiprocessing import get_context
from pathlib import Path
from typing import Any, Protocol

from lpmr_edge.errors import UserError

ENGINES = ("local", "ray")
Task = Callable[[Any], dict[str, Any]]


class Engine(Protocol):
    """Runs tasks and says how many at once."""

    name: str
    slots: int

    def submit(self, fn: Task, task: Any) -> Future: ...

    def recover(self, failed: Future) -> None: ...

    def close(self) -> None: ...


def _exit_with_parent(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(1.0)
    os._exit(1)


def _init_worker(threads: int, parent: int, log: str) -> None:
    """Pool worker start-up: output to the sweep's log, quiet libraries, cap threads before torch loads,
    die with the driver."""
    import logging
    import warnings

    output = os.open(log, os.O_WRONLY | os.O_CREAT | os.O_APPEND, 0o644)
    for stream in (1, 2):  # progress bars and native-library chatter would garble the live display
        os.dup2(output, stream)
    os.close(output)
    logging.getLogger().setLevel(logging.ERROR)
    warnings.filterwarnings("ignore")
    os.environ["OMP_NUM_THREADS"] = str(threads)
    os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")
    threading.Thread(target=_exit_with_parent, args=(parent,), daemon=True).start()


class LocalEngine:
    """A spawn process pool sized so that ``slots x threads`` does not exceed the cores."""

    name = "local"

    def __init__(self, threads: int, log: Path, workers: int | None = None) -> None:
        cores = os.cpu_count() or 1
        self.threads = threads
        self.log = log
        self.slots = workers or max(1, cores // threads)
        self._pool = self._new_pool()

    def _new_pool(self) -> ProcessPoolExecutor:
        return ProcessPoolExecutor(self.slots, mp_context=get_context("spawn"), initializer=_init_worker,
                                   initargs=(self.threads, os.getpid(), str(self.log)))

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
