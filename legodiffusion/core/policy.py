"""Scheduling policies: pure decisions over a read-only view of the coordinator.

A policy never mutates what it is shown; it returns :class:`Assignment` s and the coordinator
carries them out. Policies are chosen by name (:data:`POLICIES`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Protocol

BatchKey = tuple  # (op, mode, model, shape signature)


@dataclass(frozen=True, slots=True)
class Assignment:
    worker: int
    key: BatchKey
    count: int  # how many ready nodes of ``key`` to batch into one dispatch


class QueueView(Protocol):
    def __len__(self) -> int: ...

    def head_priority(self) -> tuple: ...


class WorkerView(Protocol):
    id: int
    alive: bool
    inflight: int
    slots: int
    resident: set


class SchedulerView(Protocol):
    queues: dict[BatchKey, QueueView]
    workers: list[WorkerView]

    def max_batch(self, op: str) -> int: ...

    def component_of(self, key: BatchKey) -> tuple[str, str] | None: ...


class SchedulingPolicy:
    name = "base"

    def plan(self, view: SchedulerView) -> list[Assignment]:
        raise NotImplementedError


class GreedyFifoPolicy(SchedulingPolicy):
    """Oldest work first; batch everything of one class that is ready (up to the op's limit);
    place on a free worker that already holds the model, else the least loaded one."""

    name = "fifo"

    def plan(self, view: SchedulerView) -> list[Assignment]:
        free = {w.id: w.slots - w.inflight for w in view.workers if w.alive and w.inflight < w.slots}
        if not free:
            return []
        plan = []
        by_id = {w.id: w for w in view.workers}
        for key in sorted(view.queues, key=lambda k: view.queues[k].head_priority()):
            pending = len(view.queues[key])
            limit = view.max_batch(key[0])
            component = view.component_of(key)
            while pending and free:
                wid = min(free, key=lambda i: (component not in by_id[i].resident, by_id[i].inflight + (by_id[i].slots - free[i]), i))
                n = min(pending, limit)
                plan.append(Assignment(wid, key, n))
                pending -= n
                free[wid] -= 1
                if free[wid] == 0:
                    del free[wid]
            if not free:
                break
        return plan


POLICIES: dict[str, type[SchedulingPolicy]] = {p.name: p for p in (GreedyFifoPolicy,)}


def make_policy(name: str) -> SchedulingPolicy:
    try:
        return POLICIES[name]()
    except KeyError:
        raise ValueError(f"unknown policy {name!r}; choose one of {sorted(POLICIES)}") from None
