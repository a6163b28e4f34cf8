"""Child processes that do not outlive their parent.

A worker (a run step's spawn pool worker, an export's isolated worker) keeps running when its parent is
killed (SIGKILL, OOM killer, a closed terminal): it would go on exporting or evaluating for nobody. Each
worker starts ``exit_with_parent`` in its initializer. The parent is watched through a pidfd (no polling), not
through ``os.getppid()``, so the watched process need not be the OS parent (e.g. a forkserver child's is the
fork server).
"""
from __future__ import annotations

import os
import select
import threading


def _watch(parent: int) -> None:
    try:
        watched = os.pidfd_open(parent)
    except ProcessLookupError:  # already gone
        os._exit(1)
    select.select([watched], [], [])  # a pidfd becomes readable when its process ends
    os._exit(1)


def exit_with_parent(parent: int) -> None:
    """Start a daemon thread that ends this process (exit status 1) as soon as the process ``parent`` (the pid
    the parent passed in) is gone, whether or not it is this process's parent. Call it in a worker's
    initializer. Linux only (pidfd)."""
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="exit-with-parent").start()
