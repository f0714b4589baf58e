"""The workers as the coordinator sees them, and the indices over them that must agree.

Placement reads several views of the same workers: which may take a model call now (a free slot),
which run nothing, which have little queued work, how many slots are free in all, and which
hold each model. :class:`WorkerPool` owns them together and changes them only in its methods, so
no caller can leave one out of step with another.
"""

from __future__ import annotations

import bisect
from dataclasses import dataclass, field


@dataclass
class WorkerState:
    id: int
    slots: int = 2  # model-call dispatches in flight: one running, the rest queued on the worker
    inflight: int = 0
    reserved_s: float = 0.0  # estimated work assigned and not yet completed
    alive: bool = True
    draining: bool = False  # takes no new work: still starting, or being retired once it holds nothing
    resident: set = field(default_factory=set)  # (model, component, scope) the worker holds
    used_bytes: int = 0  # weight bytes of what it holds
    pinned: int = 0  # live requests pinned to this worker (a monolithic replica runs one at a time)
    patches: set = field(default_factory=set)  # (model, component, scope, LoRA) attached to what it holds


class WorkerPool:
    """Workers and their indices: ``eligible`` (live, taking work, with a free slot), ``idle``
    (sorted, and ``idle_set``: taking work with nothing in flight), ``active`` (how many take
    work), ``calm`` (taking work with a reserved queue within ``threshold_s``, or idle),
    ``free_slots`` (over eligible workers) and ``holders`` ((model, component, scope) -> workers holding it)."""

    def __init__(self, n_workers: int, slots: int, threshold_s: float) -> None:
        self.workers = [WorkerState(i, slots) for i in range(n_workers)]
        self.threshold_s = threshold_s
        self.eligible: set[int] = set(range(n_workers))
        self.idle: list[int] = list(range(n_workers))
        self.idle_set: set[int] = set(self.idle)
        self.calm: set[int] = set(self.idle)
        self.free_slots = n_workers * slots
        self.active = n_workers  # live workers taking work
        self.holders: dict[tuple, set[int]] = {}
        self._bytes: dict[tuple[int, tuple], int] = {}  # (worker, component) -> its weight bytes

    def add(self, slots: int | None = None) -> int:
        """A worker joins, taking no work until :meth:`activate`; returns its id."""
        wid = len(self.workers)
        self.workers.append(WorkerState(wid, slots or (self.workers[0].slots if self.workers else 2), draining=True))
        return wid

    def activate(self, wid: int) -> bool:
        """A joined worker takes work from now on; False when it cannot (lost, or already active)."""
        w = self.workers[wid]
        if not (w.alive and w.draining):
            return False
        w.draining = False
        self.active += 1
        self.free_slots += max(0, w.slots - w.inflight)
        if w.inflight < w.slots:
            self.eligible.add(wid)
        if w.inflight == 0:
            bisect.insort(self.idle, wid)
            self.idle_set.add(wid)
            self.calm.add(wid)
        return True

    def withdraw(self, wid: int) -> None:
        """``wid`` takes no new work (it is leaving, or lost)."""
        w = self.workers[wid]
        if not w.draining:
            w.draining = True
            self.active -= 1
            self.free_slots -= max(0, w.slots - w.inflight)
        self.eligible.discard(wid)
        self.calm.discard(wid)
        self.idle_set.discard(wid)
        if wid in self.idle:
            self.idle.remove(wid)

    def lose(self, wid: int) -> bool:
        """``wid`` died: it takes nothing more and holds nothing; False when already lost."""
        w = self.workers[wid]
        if not w.alive:
            return False
        w.alive = False
        self.withdraw(wid)
        for holders in self.holders.values():
            holders.discard(wid)
        w.resident.clear()
        w.patches.clear()
        w.used_bytes = 0
        self._bytes = {k: v for k, v in self._bytes.items() if k[0] != wid}
        w.inflight, w.reserved_s = 0, 0.0
        return True

    def take_slot(self, wid: int) -> None:
        """A model-call dispatch was sent to ``wid``."""
        w = self.workers[wid]
        if w.inflight == 0:
            self.idle.remove(wid)
            self.idle_set.discard(wid)
        w.inflight += 1
        self.free_slots -= 1
        if w.inflight >= w.slots:
            self.eligible.discard(wid)

    def reserve(self, wid: int, est_s: float, light: bool) -> None:
        """``est_s`` of work was queued on ``wid``."""
        w = self.workers[wid]
        w.reserved_s += est_s
        if w.reserved_s > self.threshold_s and (w.inflight > 0 or not light):
            self.calm.discard(wid)

    def complete(self, wid: int, reserved_s: float, light: bool) -> None:
        """A dispatch that reserved ``reserved_s`` on ``wid`` finished."""
        w = self.workers[wid]
        w.reserved_s = max(0.0, w.reserved_s - reserved_s)
        if (w.reserved_s <= self.threshold_s or w.inflight <= (0 if light else 1)) and not w.draining:
            self.calm.add(wid)
        if light:
            return
        w.inflight -= 1
        if w.alive and not w.draining:
            self.free_slots += 1
            self.eligible.add(wid)
            if w.inflight == 0:
                bisect.insort(self.idle, wid)
                self.idle_set.add(wid)

    def note_resident(self, wid: int, comp: tuple, nbytes: int = 0) -> None:
        """``wid`` holds (or is about to load) ``comp`` = (model, component, scope), ``nbytes``
        of weights."""
        w = self.workers[wid]
        if comp not in w.resident:
            w.resident.add(comp)
            w.used_bytes += nbytes
            self._bytes[(wid, comp)] = nbytes
        self.holders.setdefault(comp, set()).add(wid)

    def patched(self, wid: int, comp: tuple, names: tuple[str, ...]) -> None:
        """``wid`` has (or is about to have) LoRAs ``names`` attached to its ``comp``."""
        self.workers[wid].patches.update(comp + (n,) for n in names)

    def evicted(self, wid: int, comp: tuple) -> None:
        w = self.workers[wid]
        if comp in w.resident:
            w.resident.discard(comp)
            w.used_bytes -= self._bytes.pop((wid, comp), 0)
            if w.patches:  # its LoRAs went with it
                w.patches = {p for p in w.patches if p[:3] != comp}
        self.holders.get(comp, set()).discard(wid)
