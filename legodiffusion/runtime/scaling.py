"""Acting on autoscaling targets: the engine's worker count follows the per-model replica
targets on a backend that can grow (Ray), within its configured worker range.

The wanted worker count is the sum of the models' targets (a replica is a worker keeping that
model resident), clamped to [min_workers, max_workers]. New workers join paused and take work
once their actor is up; surplus workers are drained (no new work) and stopped once nothing runs
on them and no live request needs a tensor they hold. Every change is logged and kept as a
:class:`ScaleEvent` for metrics.
"""

from __future__ import annotations

import asyncio
import logging
from dataclasses import dataclass, field

log = logging.getLogger("legodiffusion.autoscale")


@dataclass
class ScaleEvent:
    at_s: float
    action: str  # add | drain | retire
    worker: int
    workers: int  # live workers after the event, joining ones included
    reason: str


@dataclass
class Scaling:
    joining: set[int] = field(default_factory=set)
    retiring: set[int] = field(default_factory=set)
    events: list[ScaleEvent] = field(default_factory=list)
    wanted: int | None = None

    def step(self, engine, targets: dict[str, int], now: float) -> None:
        backend, coord = engine.backend, engine.coordinator
        self._retire_drained(engine, now)
        if not backend.scalable:
            return
        active = [w.id for w in coord.workers if w.alive and w.id not in self.retiring]
        want = max(backend.min_workers, min(backend.max_workers, sum(targets.values())))
        reason = f"targets {dict(sorted(targets.items()))} ask for {sum(targets.values())} worker(s), range [{backend.min_workers}, {backend.max_workers}]"
        for _ in range(want - len(active)):
            active.append(self._add(engine, now, len(active) + 1, reason))
        if want < len(active):
            spare = sorted((w for w in active if w not in self.joining), key=lambda w: (coord.workers[w].inflight, -w))
            for i, w in enumerate(spare[: len(active) - want], start=1):
                coord.drain_worker(w)
                self.retiring.add(w)
                self._event(now, "drain", w, len(active) - i, reason)
            self._retire_drained(engine, now)
        if want != self.wanted:
            self.wanted = want
            backend.request_resources(want)

    def replace(self, engine, lost: int, now: float) -> None:
        """``lost`` died: if that leaves fewer workers than the floor, start replacements now, so
        that the requests it affected wait for them rather than fail for want of a worker."""
        backend, coord = engine.backend, engine.coordinator
        if not (backend.scalable or backend.replaces_lost):
            return
        if lost in self.joining:  # one that never came up is not replaced at once (the next step may)
            return
        active = [w.id for w in coord.workers if w.alive and w.id != lost and w.id not in self.retiring]
        for _ in range(backend.min_workers - len(active)):
            active.append(self._add(engine, now, len(active) + 1, f"worker {lost} lost, floor {backend.min_workers}"))

    def _add(self, engine, now: float, count: int, reason: str) -> int:
        worker = engine.backend.add_worker(len(engine.coordinator.workers))  # spawn first: a failure adds nothing
        wid = engine.coordinator.add_worker()
        worker.start(engine._completion_from_thread, engine._lost_from_thread)
        self.joining.add(wid)
        self._event(now, "add", wid, count, reason)
        asyncio.get_running_loop().create_task(self._activate(engine, worker))
        return wid

    async def _activate(self, engine, worker) -> None:
        try:
            timeout = engine.config.ray.start_timeout_s
            await asyncio.get_running_loop().run_in_executor(None, worker.wait_ready, timeout)
        except Exception as exc:  # it never came up: treat it as lost
            log.warning("worker %d failed to start: %s", worker.id, exc)
            engine.lose_worker(worker.id)
            return
        if worker.id in self.joining:
            self.joining.discard(worker.id)
            engine.backend.worker_up(worker.id)
            engine._apply(engine.coordinator.activate_worker(worker.id, engine._now()))

    def _retire_drained(self, engine, now: float) -> None:
        coord = engine.coordinator
        for w in sorted(self.retiring):
            if coord.drained(w):
                self.retiring.discard(w)
                engine.backend.retire_worker(w)
                engine._apply(coord.on_worker_lost(w, now))
                live = sum(1 for x in coord.workers if x.alive and x.id not in self.retiring)
                self._event(now, "retire", w, live, "drained")

    def _event(self, now: float, action: str, worker: int, workers: int, reason: str) -> None:
        self.events.append(ScaleEvent(now, action, worker, workers, reason))
        log.info("autoscale: %s worker %d -> %d worker(s) (%s)", action, worker, workers, reason)
