"""Child processes that do not outlive their parent.

A spawn worker (a run step's pool worker, an export's isolated worker) keeps running when its parent is
killed (SIGKILL, OOM killer, a closed terminal): it would go on exporting or evaluating for nobody. Each
worker starts ``exit_with_parent`` in its initializer.
"""
from __future__ import annotations

import os
import threading
import time

POLL_SECONDS = 1.0


def _watch(parent: int) -> None:
    while os.getppid() == parent:
        time.sleep(POLL_SECONDS)
    os._exit(1)


def exit_with_parent(parent: int) -> None:
    """Start a daemon thread that ends this process (exit status 1) within ``POLL_SECONDS`` once its parent
    ``parent`` (the pid the parent passed in) is gone. Call it in a worker's initializer."""
    threading.Thread(target=_watch, args=(parent,), daemon=True, name="exit-with-parent").start()
