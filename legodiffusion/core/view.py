"""The interface between the coordinator and its policies: what a policy is shown (the
:class:`SchedulerView` protocol and the views inside it; :class:`CoordinatorView`, the
coordinator's implementation of it) and what a plan returns (:class:`Assignment`,
:class:`Prefetch`)."""

from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Protocol

from legodiffusion.core.cost import CostModel

if TYPE_CHECKING:
    from legodiffusion.core.coordinator import Coordinator

BatchKey = tuple  # (op, mode, model, shape signature, scope, pinned worker)


@dataclass(frozen=True, slots=True)
class Assignment:
    worker: int
    key: BatchKey
    count: int  # how many ready nodes of ``key`` to batch into one dispatch


@dataclass(frozen=True, slots=True)
class Prefetch:
    """Load ``comp`` = (model, component, scope) on ``worker`` ahead of demand (no request waits)."""

    worker: int
    comp: tuple


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
    patches: tuple[str, ...] = ()  # the LoRAs its calls attach (a worker without them pays for each)


class WorkerView(Protocol):
    id: int
    alive: bool
    draining: bool
    inflight: int
    slots: int
    reserved_s: float
    resident: set
    used_bytes: int
    pinned: int


class TenantView(Protocol):
    rank: int  # priority class: lower first, strictly
    lead_s: float  # how far the tenant is ahead of its fair share of its class (core/fairness.py)


class RequestView(Protocol):
    workflow: str
    arrival_s: float
    deadline_s: float | None
    solo_s: float  # profiled work of the whole request
    remaining_s: float  # profiled work not yet done
    priority: tuple
    tenant: str
    rank: int  # its tenant's (TenantView)
    lead_s: float


class SchedulerView(Protocol):
    queues: dict  # BatchKey -> queue with __len__, ordered() (its nodes' places, best first) and head_rank()
    classes: dict  # BatchKey -> ClassInfo
    workers: list
    eligible: set  # ids of live workers with a free slot
    cost: CostModel
    queue_threshold_s: float
    idle: list  # sorted ids of live workers with nothing in flight
    idle_set: set
    calm: set  # live workers whose reserved queue is within the threshold (or that are idle)
    free_slots: int
    active: int  # live workers taking work
    drain_factor: float  # profiled work done per worker-second while saturated (measured; 1.0 = the profile)
    holders: dict  # (model, component, scope) -> ids of workers holding it
    stats: object  # CoordinatorStats: work_by_workflow feeds re-allocation

    def held_head(self, workflow: str) -> RequestView | None: ...

    def demand(self) -> dict[tuple, float]: ...  # (model, component, scope) -> recent work, s/s

    def batch_limits(self, op: str) -> tuple[int, int]: ...

    def locality(self, key: BatchKey, n: int) -> dict[int, int]: ...

    def backlog(self) -> list[tuple[tuple, float, float | None]]: ...

    def top_class(self) -> tuple[int, int] | None: ...  # (rank, requests running) of the highest class running

    def kept_for(self, rank: int) -> set[int]: ...  # workers a running request of a higher class than rank last used

    def kept_urgent(self) -> dict[int, tuple]: ...  # workers a running urgent request last used -> its order

    def late_margin(self, rank: int) -> float: ...  # >= 1: admission's margin for a class, raised by its late finishes


class CoordinatorView:
    """What policies see of the coordinator: its ready queues, workers and worker indices, cost
    model and statistics, and a few queries. The objects are the coordinator's own, not copies
    (a plan runs on every event); policies read them and never change them."""

    __slots__ = (
        "_pool",
        "queues",
        "classes",
        "workers",
        "eligible",
        "idle",
        "idle_set",
        "calm",
        "holders",
        "cost",
        "queue_threshold_s",
        "stats",
        "batch_limits",
        "locality",
        "backlog",
        "held_head",
        "demand",
        "top_class",
        "kept_for",
        "kept_urgent",
        "_drain",
        "_late",
    )

    def __init__(self, coord: Coordinator) -> None:
        pool = self._pool = coord.pool
        self.queues, self.classes = coord.queues, coord.classes
        self.workers, self.eligible, self.idle, self.idle_set = pool.workers, pool.eligible, pool.idle, pool.idle_set
        self.calm, self.holders = pool.calm, pool.holders
        self.cost, self.queue_threshold_s, self.stats = coord.cost, coord.queue_threshold_s, coord.stats
        self.batch_limits, self.locality = coord.batch_limits, coord.locality
        self.backlog, self.held_head = coord.backlog, coord.held_head
        self.demand = coord.demand
        self.top_class = coord.fair.top_class
        self.kept_for = coord.kept_for
        self.kept_urgent = coord.kept_urgent
        self._drain, self._late = coord.drain, coord.late_guards

    @property
    def free_slots(self) -> int:
        return self._pool.free_slots

    @property
    def active(self) -> int:
        """Live workers taking work."""
        return self._pool.active

    @property
    def drain_factor(self) -> float:
        """Profiled work the cluster completes per worker-second when saturated, as measured
        (:class:`~legodiffusion.core.drain.DrainRate`)."""
        return self._drain.factor

    def late_margin(self, rank: int) -> float:
        """Admission's margin on its queue estimate for priority class ``rank``, raised by that
        class's admitted requests that finished late (:class:`~legodiffusion.core.drain.LateGuard`;
        per class, since a lower class runs late by design while a higher one is served)."""
        guard = self._late.get(rank)
        return guard.margin if guard is not None else 1.0
