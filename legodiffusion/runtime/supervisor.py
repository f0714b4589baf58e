"""Supervision of the live engine: which call each worker runs and since when, calls that run far
past their profile (stuck), and requests that nothing is working on (stalled).

The supervisor only keeps time and decides; the engine acts (asks a call to stop, declares its
worker lost, fails a request), on a periodic task (``EngineConfig.supervise_interval_s``).

What it guarantees, together with the engine:

- **Per-call timeout.** Dispatches reach a worker in order and run there one at a time, so a
  dispatch starts when the one sent before it to the same worker reports (or when it is sent, if
  the worker was idle); from then it may run ``max(call_timeout_factor x its profiled cost,
  call_timeout_floor_s)`` (its cost as the coordinator reserved it: execution plus a load when
  the component was not resident). Past that it is stuck: the engine asks it to stop and declares
  its worker lost, so its requests re-run elsewhere from lineage; a node that already timed out
  once fails its request with a ``timed out`` reason instead (no endless re-runs of a node that
  is simply too big). A dispatch waiting on a worker behind a stuck one is thereby covered too.
- **Watchdog.** A request is *attended* while one of its nodes is queued centrally, held for a
  replica, or sent to a live worker (where the timeout above bounds it). A request that is not
  attended and has finished no node for ``stall_floor_s`` has been dropped by the mechanics (a
  lost input, an invariant broken by a bug) and nothing would ever wake it: the engine fails it
  with ``stalled: no progress for N s``. Requests merely queued behind others are attended and
  never fire; how long they may queue is admission's business.
"""

from __future__ import annotations

import logging
import time
from collections import deque
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from legodiffusion.core.messages import Dispatch

if TYPE_CHECKING:
    from legodiffusion.config import EngineConfig
    from legodiffusion.runtime.engine import Engine

log = logging.getLogger("legodiffusion.engine")


@dataclass
class Call:
    """A dispatch sent to a worker and not reported yet."""

    dispatch: Dispatch
    est_s: float  # profiled cost (execution, plus a load if one was planned)
    sent_s: float
    started_s: float | None = None  # when it reached the head of its worker's queue
    timeouts: int = 0  # 1: past its limit, asked to stop; 2: still running drain_s later


class Supervisor:
    def __init__(self, config: EngineConfig) -> None:
        self.config = config
        self._queues: dict[int, deque[Call]] = {}  # worker -> its calls in send order
        self._calls: dict[int, Call] = {}  # dispatch id -> call
        self._progress_s: dict[int, float] = {}  # request id -> when it last finished a node (or arrived)
        self._timed_out: dict[int, set[int]] = {}  # request -> its nodes that timed out once
        self.timeouts = 0
        self.stalls = 0

    # -- events ------------------------------------------------------------------------------

    def sent(self, d: Dispatch, est_s: float, now: float) -> None:
        call = self._calls[d.id] = Call(d, est_s, now)
        q = self._queues.setdefault(d.worker, deque())
        q.append(call)
        if len(q) == 1:
            call.started_s = now

    def done(self, dispatch_id: int, now: float) -> None:
        call = self._calls.pop(dispatch_id, None)
        if call is None:
            return
        q = self._queues[call.dispatch.worker]
        head = q[0] is call
        q.remove(call)
        if head and q:
            q[0].started_s = now

    def lost(self, worker: int) -> None:
        for call in self._queues.pop(worker, ()):
            self._calls.pop(call.dispatch.id, None)

    def arrived(self, request_id: int, now: float) -> None:
        self._progress_s[request_id] = now

    progressed = arrived

    def ended(self, request_id: int) -> None:
        self._progress_s.pop(request_id, None)
        self._timed_out.pop(request_id, None)

    def note_timeout(self, d: Dispatch) -> set[tuple[int, int]]:
        """Record that ``d``'s nodes timed out; returns the (request, node) pairs that had
        timed out before."""
        again = set()
        for it in d.items:
            nodes = self._timed_out.setdefault(it.request_id, set())
            if it.node in nodes:
                again.add((it.request_id, it.node))
            nodes.add(it.node)
        return again

    # -- decisions ---------------------------------------------------------------------------

    def limit_s(self, call: Call) -> float:
        return max(self.config.call_timeout_factor * call.est_s, self.config.call_timeout_floor_s)

    def overdue(self, now: float) -> list[Call]:
        """Running calls past their limit (reported with ``timeouts`` 1), and those still running
        ``drain_s`` after that (reported again with ``timeouts`` 2: they ignore their stop)."""
        out = []
        for q in self._queues.values():
            call = q[0] if q else None
            if call is None or call.started_s is None or call.timeouts > 1:
                continue
            over_s = now - call.started_s - self.limit_s(call)
            if (call.timeouts == 0 and over_s > 0) or (call.timeouts == 1 and over_s > self.config.drain_s):
                call.timeouts += 1
                self.timeouts += call.timeouts == 1
                out.append(call)
        return out

    def stalled(self, now: float, live: list[int], attended: set[int]) -> list[tuple[int, float]]:
        """(request, seconds without progress) of the ``live`` requests not ``attended`` for
        longer than the floor."""
        out = []
        for rid in live:
            idle = now - self._progress_s.get(rid, now)
            if rid not in attended and idle > self.config.stall_floor_s:
                out.append((rid, idle))
        self.stalls += len(out)
        return out

    def running(self, now: float) -> dict[int, dict]:
        """Per worker, the call it runs: op, model, dispatch, items, since when (Unix time) and
        for how long, its limit, whether it is stuck (past the limit), and how many dispatches
        wait behind it there."""
        out = {}
        for worker, q in self._queues.items():
            if q and q[0].started_s is not None:
                call = q[0]
                d = call.dispatch
                running_s = now - call.started_s
                out[worker] = {
                    "op": d.op,
                    "model": d.model,
                    "dispatch": d.id,
                    "items": len(d.items),
                    "since_unix_s": round(time.time() - running_s, 3),
                    "running_s": round(running_s, 3),
                    "limit_s": round(self.limit_s(call), 3),
                    "stuck": running_s > self.limit_s(call),
                    "queued": len(q) - 1,
                }
        return out


# -- what the engine does with the decisions ----------------------------------------------


def check(engine: Engine, now: float) -> None:
    """Time out stuck calls and fail stalled requests (see :mod:`legodiffusion.runtime.supervisor`)."""
    for call in engine.supervisor.overdue(now):
        _time_out(engine, call, now)
    attended = {it.request_id for d in engine._sent.values() for it in d.items}
    attended.update(live.req.id for q in engine.coordinator.held.values() for live in q)
    attended.update(rid for rid, live in engine.coordinator.requests.items() if live.queued)
    for rid, idle_s in engine.supervisor.stalled(now, list(engine.coordinator.requests), attended):
        log.warning("request %d stalled: no progress for %.0f s", rid, idle_s)
        engine.fail(rid, f"stalled: no progress for {idle_s:.0f} s")


def _time_out(engine: Engine, call: Call, now: float) -> None:
    """A call ran past its limit: stop it; its worker is lost and its requests re-run
    elsewhere, except those whose node already timed out once (failed); a worker whose
    call ignores its stop past another ``drain_s`` is lost too."""
    d = call.dispatch
    ran_s, limit_s = now - call.started_s, engine.supervisor.limit_s(call)
    engine.stop_call(d)
    orphaned = d.items and not any(it.request_id in engine.coordinator.requests for it in d.items)
    if orphaned and call.timeouts == 1:  # already asked to stop (its requests ended): give it drain_s
        return
    if call.timeouts > 1:
        log.warning("worker %d: %s call %d ignored its stop for %.1f s; worker lost", d.worker, d.op, d.id, ran_s - limit_s)
        engine.lose_worker(d.worker)
        return
    again = engine.supervisor.note_timeout(d)
    for it in d.items:
        if (it.request_id, it.node) in again:
            engine.fail(it.request_id, f"node {it.key} timed out twice: ran {ran_s:.1f} s, limit {limit_s:.1f} s")
    if len(again) < len(d.items) or not d.items:
        log.warning("worker %d: %s call %d ran %.1f s, limit %.1f s: stuck, worker lost", d.worker, d.op, d.id, ran_s, limit_s)
        engine.lose_worker(d.worker)


def health_of(engine: Engine) -> dict:
    """Whether the engine can take work, and per worker: its state (live, joining, draining,
    lost) and the call it runs (op, since when, its limit, stuck or not). ``ready`` needs a
    live, active worker that is not stuck, and no preload under way (``warming`` meanwhile:
    requests are still taken)."""
    running = engine.supervisor.running(engine._now())
    workers = []
    for w in engine.coordinator.workers:
        state = "lost" if not w.alive else "joining" if w.id in engine.scaling.joining else "draining" if w.draining else "live"
        entry: dict[str, Any] = {"worker": w.id, "state": state}
        if w.id in running:
            entry["call"] = running[w.id]
        workers.append(entry)
    usable = [e for e in workers if e["state"] == "live" and not e.get("call", {}).get("stuck", False)]
    return {
        "status": ("warming" if engine.preloading else "ready") if usable else "degraded",
        "busy": sum("call" in e for e in workers),
        "stuck": sum(e.get("call", {}).get("stuck", False) for e in workers),
        "lost": sum(e["state"] == "lost" for e in workers),
        "dispatches_in_flight": len(engine._sent),
        "workers": workers,
        **({} if engine.preloaded is None else {"preloaded": engine.preloaded.summary()}),
    }
