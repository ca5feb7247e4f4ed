"""Linux's idle scheduling class (SCHED_IDLE), for work that should leave the cores to the web app.

A thread of the idle class runs on a core only while no thread of the
normal class wants it, and gives the core up the moment one wakes. The
normal class lets a busy thread run on to the end of its time slice, which
the kernel checks on its tick, every 4 ms at 250 Hz. A web app that shares
the engine's cores waited up to that long for a core (docs/benchmarks.md,
"Gateway: where the time goes"). Threads of the idle class share the cores
among themselves as normal threads do.
"""

from __future__ import annotations

import contextlib
import os

_IDLE = getattr(os, "SCHED_IDLE", None)


def move_process_to_idle_class() -> bool:
    """Move every thread of this process to the idle class; return False where there is none.

    Threads that exist already, such as OpenBLAS's workers that start when
    numpy is imported, are moved one by one. Threads and processes started
    later inherit the class.
    """
    if _IDLE is None:
        return False
    try:
        for thread in os.listdir("/proc/self/task"):
            with contextlib.suppress(ProcessLookupError):
                os.sched_setscheduler(int(thread), _IDLE, os.sched_param(0))
    except OSError:
        return False
    return True


def move_thread_to_idle_class() -> bool:
    """Move the calling thread to the idle class; return False where there is none.

    Threads and processes that it starts later inherit the class.
    """
    if _IDLE is None:
        return False
    try:
        os.sched_setscheduler(0, _IDLE, os.sched_param(0))
    except OSError:
        return False
    return True
