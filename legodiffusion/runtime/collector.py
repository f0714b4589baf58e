"""How often the garbage collector runs in the server's process, which hosts the coordinator (and,
on the local backend, the worker threads too).

Every event of the coordinator and its policy allocates containers (dispatches, their items and
tensor references, plans, per-event dicts and tuples), and a thousand requests in flight keep a
large set of long-lived ones (their state, queues and refs). At CPython's default pace (a
young-generation pass every 700 net container allocations, older generations every 10 of those)
the passes keep walking that surviving state: ``benchmarks/scheduler.py`` at 1,000 requests in
flight measures 9-10% of the coordinator's time in the collector at the default pace and about 2%
at :data:`CONTROL_PLANE_THRESHOLDS` (it measures its headline point at both paces and prints each
one's share and longest pass). The server calls :func:`pace_for_control_plane` once at start;
other processes importing the package keep the interpreter's pace.

What it costs: a pass is rarer but may walk more objects, so the longest pause can be longer
(86 ms against 57 ms at the default pace in one run of that benchmark; 15-30 ms in others), and
garbage held in reference cycles (an exception's traceback kept with the frames and tensors it
references, say) waits for a pass up to 50,000 allocations away instead of 700. Model calls
allocate steadily, so passes still come often while the server works. In the server chaos soak
(``tests/reliability/test_server_chaos.py``, 12 rounds, which runs at this pace) the process's RSS
grew +28% to +37% against +18% to +26% at the default pace; its live objects still return to
their count after warm-up, and the garbage the rarer passes leave waiting there is the
in-process test clients' (httpx request and response cycles), not the server's.
"""

from __future__ import annotations

import gc

#: (young generation, middle, old): a young pass every 50,000 net container allocations instead
#: of 700, a middle one every 20 of those instead of 10, a full one every 10 middle ones as before
CONTROL_PLANE_THRESHOLDS = (50_000, 20, 10)


def pace_for_control_plane() -> tuple[int, int, int]:
    """Run the collector at :data:`CONTROL_PLANE_THRESHOLDS`; returns the thresholds it replaced."""
    before = gc.get_threshold()
    gc.set_threshold(*CONTROL_PLANE_THRESHOLDS)
    return before
