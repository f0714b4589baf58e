"""How often the garbage collector runs in a process that hosts the coordinator.

Every event of the coordinator and its policy allocates short-lived containers (dispatches, their
items and tensor references, plans, per-event dicts and tuples), and a thousand requests in
flight keep a large set of long-lived ones (their state, queues and refs). CPython's default
collector pace (a young-generation pass every 700 net allocations, the whole heap every 100 of
those) then spends about a tenth of the coordinator's time walking objects that reference
counting frees anyway: ``benchmarks/scheduler.py`` measures both paces side by side. The server
and the benchmarks that time the coordinator call :func:`pace_for_control_plane` once at start;
a library user's process keeps the interpreter's default.
"""

from __future__ import annotations

import gc

#: (young generation, middle, old): a young pass every 50,000 net container allocations instead
#: of 700, so most short-lived objects are freed by reference counting before a pass sees them
CONTROL_PLANE_THRESHOLDS = (50_000, 20, 10)


def pace_for_control_plane() -> tuple[int, int, int]:
    """Run the collector at :data:`CONTROL_PLANE_THRESHOLDS`; returns the thresholds it replaced."""
    before = gc.get_threshold()
    gc.set_threshold(*CONTROL_PLANE_THRESHOLDS)
    return before
