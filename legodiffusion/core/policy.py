"""Scheduling policies: pure decisions over a read-only view of the coordinator.

A policy never mutates what it is shown. It orders requests (:meth:`priority`), admits or rejects
them on arrival (:meth:`admit`), may pin a request to one worker (:meth:`pin`, for the monolithic
baseline) and plans dispatches (:meth:`plan`); the coordinator carries the decisions out.
Policies are chosen by name: :data:`POLICIES`.
"""

from __future__ import annotations

import heapq
import itertools
import math
import random
from dataclasses import dataclass
from typing import Protocol

from legodiffusion.core.cost import CostModel

BatchKey = tuple  # (op, mode, model, shape signature, scope, pinned worker)


@dataclass(frozen=True, slots=True)
class Assignment:
    worker: int
    key: BatchKey
    count: int  # how many ready nodes of ``key`` to batch into one dispatch


@dataclass(frozen=True, slots=True)
class ClassInfo:
    """What is known about one batch class (every node in it can share one dispatch)."""

    op: str
    mode: str
    model: str | None
    component: str | None
    px: int | None
    scope: str | None  # workflow name when workflows are isolated (bundle), else None
    pin: int | None  # the only worker allowed, or None


class WorkerView(Protocol):
    id: int
    alive: bool
    draining: bool
    inflight: int
    slots: int
    reserved_s: float
    resident: set
    pinned: int


class RequestView(Protocol):
    workflow: str
    arrival_s: float
    deadline_s: float | None
    priority: tuple


class SchedulerView(Protocol):
    queues: dict  # BatchKey -> queue with __len__ and head_priority()
    classes: dict  # BatchKey -> ClassInfo
    workers: list
    eligible: set  # ids of live workers with a free slot
    cost: CostModel
    queue_threshold_s: float
    idle: list  # sorted ids of live workers with nothing in flight
    idle_set: set
    calm: set  # live workers whose reserved queue is within the threshold (or that are idle)
    free_slots: int
    holders: dict  # (model, component, scope) -> ids of workers holding it
    stats: object  # CoordinatorStats: work_by_workflow feeds re-allocation

    def held_head(self, workflow: str) -> RequestView | None: ...

    def batch_limits(self, op: str) -> tuple[int, int]: ...

    def locality(self, key: BatchKey, n: int) -> dict[int, int]: ...

    def work_ahead(self, priority: tuple) -> float: ...


class SchedulingPolicy:
    name = "base"
    #: Bundle semantics: no model or batch is shared across workflows.
    isolate_workflows = False
    #: A request starts only once :meth:`pin` (or :meth:`next_held`) gives it a worker; until
    #: then it waits, admitted, in its workflow's held queue.
    gated = False
    #: Seconds between :meth:`on_tick` calls the driver makes (None: never).
    tick_s: float | None = None

    def priority(self, req: RequestView, seq: int, solo_s: float) -> tuple:
        return (seq,)

    def admit(self, view: SchedulerView, req: RequestView, solo_s: float, now: float) -> str | None:
        """None to admit, else the reason for rejecting."""
        return None

    def pin(self, view: SchedulerView, req: RequestView) -> int | None:
        return None

    def next_held(self, view: SchedulerView, worker: int) -> str | None:
        """Gated policies: the workflow whose oldest held request ``worker`` (now free) starts."""
        return None

    def on_tick(self, view: SchedulerView, now: float) -> bool:
        """A timer event; True when the decision changed what held requests may start where."""
        return False

    def plan(self, view: SchedulerView) -> list[Assignment]:
        raise NotImplementedError


_NONE: frozenset = frozenset()


class _Slots:
    """Free slots during one plan: the coordinator's counts minus what this plan has taken."""

    def __init__(self, view: SchedulerView) -> None:
        self.view = view
        self.taken: dict[int, int] = {}
        self.left = view.free_slots

    def has(self, wid: int) -> bool:
        if wid not in self.view.eligible:
            return False
        if not self.taken:
            return True
        w = self.view.workers[wid]
        return w.slots - w.inflight - self.taken.get(wid, 0) > 0

    def take(self, wid: int) -> None:
        self.taken[wid] = self.taken.get(wid, 0) + 1
        self.left -= 1

    def any(self) -> bool:
        return self.left > 0


class MicroServingPolicy(SchedulingPolicy):
    """The paper's decisions, each switchable for baselines and ablations.

    - ordering ``slack``: earliest deadline first, then arrival; ``fcfs``: arrival only.
    - admission: reject on arrival when sum W_r / N > slack, where W_r is the profiled remaining
      work of in-flight requests, N the live workers and slack = deadline - now - solo latency.
    - batching: a small latency-mode batch when there are enough free workers for every ready
      class, a larger throughput-mode batch otherwise (``adaptive=False``: always throughput).
      Latency mode spreads independent nodes of one request (the guidance branches) over idle
      workers; throughput mode packs them into one batch on one worker.
    - placement ``cost``: minimise reserved queue + input transfer + load (if not resident) +
      execution; ``random``: any eligible worker (seeded).
    """

    def __init__(
        self,
        name: str = "default",
        ordering: str = "slack",
        admission: bool = True,
        placement: str = "cost",
        adaptive: bool = True,
        seed: int = 0,
        share: bool = True,
        cross_request: bool = True,
        partition: list[set] | None = None,
    ) -> None:
        if ordering not in ("slack", "fcfs"):
            raise ValueError(f"ordering must be slack or fcfs, got {ordering!r}")
        if placement not in ("cost", "random"):
            raise ValueError(f"placement must be cost or random, got {placement!r}")
        self.name = name
        self.ordering = ordering
        self.admission = admission
        self.placement = placement
        self.adaptive = adaptive
        self._rng = random.Random(seed)
        #: ablations: ``share=False`` gives every workflow its own model copies and batches;
        #: ``cross_request=False`` batches only nodes of one request; ``partition`` fixes, per
        #: worker, the models (or, with ``share=False``, the workflows) it may run: a static
        #: split in place of per-model scaling
        self.isolate_workflows = not share
        self.cross_request = cross_request
        self.partition = [set(p) for p in partition] if partition else None

    def priority(self, req, seq, solo_s):
        if self.ordering == "slack" and req.deadline_s is not None:
            return (0, req.deadline_s - solo_s, seq)
        return (1 if self.ordering == "slack" else 0, 0.0, seq)

    def admit(self, view, req, solo_s, now):
        if not self.admission or req.deadline_s is None:
            return None
        slack = req.deadline_s - now - solo_s
        workers = max(1, sum(1 for w in view.workers if w.alive))
        # Work that runs before this request: with slack ordering, only requests of higher
        # priority (earlier latest-start time); with arrival order, everything in flight. DiFlow
        # also rejects when the longest in-flight request exceeds the slack; with per-node
        # scheduling on N workers one long request does not block a new one, and that term
        # rejected most short requests of a mixed workload at low load.
        mine = self.priority(req, float("inf"), solo_s)
        wait = view.work_ahead(mine) / workers
        if slack < 0 or wait > slack:
            return f"SLO_REJECTED: needs {solo_s:.3f}s of work plus ~{wait:.3f}s of queue, {req.deadline_s - now:.3f}s left before its deadline"
        return None

    def _allowed(self, info: ClassInfo, wid: int) -> bool:
        if self.partition is None or wid >= len(self.partition):
            return True
        owner = info.scope if self.isolate_workflows else info.model
        return owner is None or owner in self.partition[wid]

    def _candidates(self, view, info: ClassInfo, slots: _Slots, comp, where: dict[int, int]) -> list[int]:
        """Workers worth costing: the emptiest idle ones, those holding the inputs and those
        holding the model; O(candidates), not O(workers). Busy workers (reserved queue over the
        threshold) are skipped so work waits centrally where it can still batch and move, except
        a busy holder when every calm candidate would have to load the model."""
        calm = view.calm & view.eligible
        if not calm:
            return []

        def usable(w: int) -> bool:
            return slots.has(w) and self._allowed(info, w)

        picked = []
        for w in view.idle:
            if usable(w):
                picked.append(w)
                if len(picked) == 2:
                    break
        if self.partition is not None and not picked:  # the idle ones may all belong to others
            picked += [w for w in sorted(calm) if usable(w)][:2]
        picked += [w for w in where if w in calm and usable(w)]
        held = view.holders.get(comp, _NONE) & view.eligible if comp is not None else _NONE
        if held:
            idle_held = held & view.idle_set
            if idle_held:  # an idle holder costs only its execution
                picked += [w for w in sorted(idle_held)[:4] if usable(w)]
            else:
                picked += heapq.nsmallest(3, (w for w in held & calm if usable(w)), key=lambda w: (view.workers[w].reserved_s, w))
        ready = list(dict.fromkeys(picked))
        if held and ready and not any(w in held for w in ready):
            busy = itertools.islice((w for w in held - calm if usable(w)), 16)  # a sample bounds the cost
            ready += heapq.nsmallest(2, busy, key=lambda w: (view.workers[w].reserved_s, w))
        return ready

    def _choose(self, view, key, info: ClassInfo, n: int, slots: _Slots, reserved: dict[int, float]) -> int | None:
        comp = (info.model, info.component, info.scope) if info.component else None
        where = view.locality(key, n)
        candidates = self._candidates(view, info, slots, comp, where)
        if len(candidates) <= 1:
            return candidates[0] if candidates else None
        if self.placement == "random":
            return self._rng.choice(sorted(candidates))
        cost = view.cost
        exec_s = cost.exec_s(info.op, info.mode, info.model, n, info.px)
        load_s = cost.load_s(info.model, info.component) if info.component else 0.0
        total_bytes = sum(where.values())
        best, best_cost = -1, math.inf
        for wid in candidates:
            w = view.workers[wid]
            c = reserved.get(wid, w.reserved_s) + exec_s
            if comp is not None and comp not in w.resident:
                c += load_s
            missing = total_bytes - where.get(wid, 0)
            if missing > 0:
                c += cost.transfer_s(missing)
            if c < best_cost or (c == best_cost and wid < best):
                best, best_cost = wid, c
        reserved[best] = best_cost
        return best

    def plan(self, view):
        if not view.eligible:
            return []
        queues = view.queues
        keys = sorted(queues, key=lambda k: queues[k].head_priority()) if len(queues) > 1 else list(queues)
        limits = {k: view.batch_limits(view.classes[k].op) for k in keys}
        # latency mode while there are enough workers that may take work now (calm ones) to give
        # every ready class its small batches, each on its own worker; throughput mode packs larger
        # batches when there are not (two slots of one worker are no parallelism)
        latency_mode = self.adaptive and sum(math.ceil(len(view.queues[k]) / limits[k][0]) for k in keys) <= len(view.calm & view.eligible)
        plan = []
        slots = _Slots(view)
        reserved: dict[int, float] = {}
        for key in keys:
            info = view.classes[key]
            pending = len(view.queues[key])
            limit = limits[key][0] if latency_mode else limits[key][1]
            while pending and slots.any():
                n = min(pending, limit)
                if info.pin is not None:
                    if not slots.has(info.pin):
                        break
                    wid = info.pin
                else:
                    wid = self._choose(view, key, info, n, slots, reserved)
                    if wid is None:
                        break
                plan.append(Assignment(wid, key, n))
                pending -= n
                slots.take(wid)
            if not slots.any():
                break
        return plan


POLICIES = {
    "default": lambda: MicroServingPolicy("default"),
    "fcfs": lambda: MicroServingPolicy("fcfs", ordering="fcfs", admission=False),
    "random": lambda: MicroServingPolicy("random", placement="random"),
    "bundle": lambda: _bundle(),
}


def _bundle() -> SchedulingPolicy:
    from legodiffusion.core.bundle import BundlePolicy  # it builds on MicroServingPolicy

    return BundlePolicy()


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
