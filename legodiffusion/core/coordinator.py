"""The coordinator: a deterministic state machine over requests, ready nodes and tensor metadata.

It never reads a clock, sleeps, spawns threads or does I/O. A driver feeds it events
(:meth:`submit`, :meth:`on_complete`, :meth:`cancel`) with the current time and carries out the
:class:`Actions` each returns. The live asyncio driver and the simulator drive this same code.
"""

from __future__ import annotations

import heapq
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

from legodiffusion.core.graph import FROM_INPUT, FROM_NODE, Template
from legodiffusion.core.messages import (
    Actions,
    Completion,
    Dispatch,
    DispatchItem,
    RequestOutcome,
    TensorRef,
)
from legodiffusion.core.policy import BatchKey, SchedulingPolicy

RUNNING, SUCCEEDED, FAILED, CANCELLED = "running", "succeeded", "failed", "cancelled"


@dataclass
class Request:
    id: int
    template: Template
    inputs: dict[str, Any]
    workflow: str = ""
    arrival_s: float = 0.0
    deadline_s: float | None = None


class _Live:
    """Coordinator-side state of one running request."""

    __slots__ = ("req", "seq", "indegree", "uses", "refs", "done", "status")

    def __init__(self, req: Request, seq: int) -> None:
        self.req = req
        self.seq = seq
        self.indegree = list(req.template.indegree)
        self.uses = dict(req.template.uses)
        self.refs: dict[tuple[int, str], TensorRef] = {}
        self.done = 0
        self.status = RUNNING


class ReadyQueue:
    """Ready nodes of one batch class, oldest request first."""

    __slots__ = ("heap",)

    def __init__(self) -> None:
        self.heap: list[tuple[int, int, int]] = []  # (request seq, node, request id)

    def __len__(self) -> int:
        return len(self.heap)

    def push(self, seq: int, node: int, request_id: int) -> None:
        heapq.heappush(self.heap, (seq, node, request_id))

    def pop(self) -> tuple[int, int, int]:
        return heapq.heappop(self.heap)

    def head_priority(self) -> tuple:
        return self.heap[0][:2]


@dataclass
class WorkerState:
    id: int
    slots: int = 2  # heavy dispatches in flight: one running, one queued so it never idles
    inflight: int = 0
    alive: bool = True
    resident: set = field(default_factory=set)


@dataclass
class CoordinatorStats:
    nodes_by_op: Counter = field(default_factory=Counter)
    dispatches_by_op: Counter = field(default_factory=Counter)
    items_by_worker: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)  # by final status


class Coordinator:
    def __init__(
        self,
        n_workers: int,
        policy: SchedulingPolicy,
        max_batch: dict[str, int] | None = None,
        default_max_batch: int = 8,
        slots_per_worker: int = 2,
    ) -> None:
        self.policy = policy
        self.workers = [WorkerState(i, slots_per_worker) for i in range(n_workers)]
        self.queues: dict[BatchKey, ReadyQueue] = {}
        self.requests: dict[int, _Live] = {}
        self.inflight: dict[int, Dispatch] = {}
        self.stats = CoordinatorStats()
        self._max_batch = dict(max_batch or {})
        self._default_max_batch = default_max_batch
        self._components: dict[BatchKey, tuple[str, str] | None] = {}
        self._seq = 0
        self._next_tensor = 0
        self._next_dispatch = 0
        self._light: list[tuple[_Live, int]] = []

    # -- views for policies ----------------------------------------------------------------

    def max_batch(self, op: str) -> int:
        return self._max_batch.get(op, self._default_max_batch)

    def component_of(self, key: BatchKey) -> tuple[str, str] | None:
        return self._components.get(key)

    def live_tensor_count(self) -> int:
        return sum(len(live.refs) for live in self.requests.values())

    # -- events ----------------------------------------------------------------------------

    def submit(self, req: Request, now: float) -> Actions:
        if req.id in self.requests:
            raise ValueError(f"request {req.id} is already running")
        actions = Actions()
        self._seq += 1
        live = _Live(req, self._seq)
        self.requests[req.id] = live
        for node in req.template.sources:
            self._make_ready(live, node)
        self._dispatch(actions)
        return actions

    def on_complete(self, c: Completion, now: float) -> Actions:
        actions = Actions()
        d = self.inflight.pop(c.dispatch_id)
        w = self.workers[d.worker]
        if not d.light:
            w.inflight -= 1
        if d.component is not None:
            w.resident.add((d.model, d.component))
        self.stats.dispatches_by_op[d.op] += 1
        for item, res in zip(d.items, c.results):
            live = self.requests.get(item.request_id)
            if live is None or live.status != RUNNING:
                actions.frees.extend((res.outputs or {}).values())
                continue
            if res.error is not None:
                self._end(live, FAILED, actions, error=res.error, node=item.key)
                continue
            self.stats.nodes_by_op[d.op] += 1
            self.stats.items_by_worker[d.worker] += 1
            self._record(live, item, res.outputs or {}, actions)
        self._dispatch(actions)
        return actions

    def cancel(self, request_id: int, now: float) -> Actions:
        actions = Actions()
        live = self.requests.get(request_id)
        if live is not None and live.status == RUNNING:
            self._end(live, CANCELLED, actions, error="cancelled")
            self._dispatch(actions)
        return actions

    # -- mechanics -------------------------------------------------------------------------

    def _record(self, live: _Live, item: DispatchItem, outputs: dict[str, TensorRef], actions: Actions) -> None:
        tmpl = live.req.template
        node = item.node
        for port, ref in outputs.items():
            if live.uses.get((node, port), 0) > 0:
                live.refs[(node, port)] = ref
            else:
                actions.frees.append(ref)
        for inp in tmpl.nodes[node].inputs:
            if inp.kind == FROM_NODE:
                k = (inp.node, inp.name)
                live.uses[k] -= 1
                if live.uses[k] == 0:
                    actions.frees.append(live.refs.pop(k))
        live.done += 1
        actions.progressed.append(live.req.id)
        if live.done == len(tmpl.nodes):
            outs = {name: live.refs[k] for name, k in tmpl.outputs.items()}
            self._end(live, SUCCEEDED, actions, outputs=outs)
            return
        for consumer in tmpl.consumers[node]:
            live.indegree[consumer] -= 1
            if live.indegree[consumer] == 0:
                self._make_ready(live, consumer)

    def _end(self, live: _Live, status: str, actions: Actions, outputs=None, error=None, node=None) -> None:
        live.status = status
        actions.finished.append(RequestOutcome(live.req.id, status, outputs, error, node))
        actions.frees.extend(live.refs.values())
        live.refs.clear()
        self.stats.requests[status] += 1
        del self.requests[live.req.id]

    def _make_ready(self, live: _Live, node: int) -> None:
        tn = live.req.template.nodes[node]
        if tn.light:
            self._light.append((live, node))
            return
        sig = None
        if tn.concat_batch:
            sig = tuple(
                (inp.port, live.refs[(inp.node, inp.name)].shape[1:] if live.refs[(inp.node, inp.name)].shape else None)
                for inp in tn.inputs
                if inp.kind == FROM_NODE
            )
        key = (tn.op, tn.mode, tn.model, sig)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = ReadyQueue()
            self._components[key] = (tn.model, tn.component) if tn.component else None
        q.push(live.seq, node, live.req.id)

    def _item(self, live: _Live, node: int) -> DispatchItem:
        tn = live.req.template.nodes[node]
        refs, values = {}, {}
        for inp in tn.inputs:
            if inp.kind == FROM_NODE:
                refs[inp.port] = live.refs[(inp.node, inp.name)]
            elif inp.kind == FROM_INPUT:
                values[inp.port] = live.req.inputs[inp.name]
            else:
                values[inp.port] = inp.value
        out_ids = {}
        for port in live.req.template.out_ports[node]:
            self._next_tensor += 1
            out_ids[port] = self._next_tensor
        return DispatchItem(live.req.id, node, tn.key, refs, values, out_ids)

    def _new_dispatch(self, worker: int, tn, items: list[DispatchItem], actions: Actions) -> None:
        self._next_dispatch += 1
        d = Dispatch(self._next_dispatch, worker, tn.op, tn.mode, tn.model, tn.component, items, tn.light)
        self.inflight[d.id] = d
        actions.dispatches.append(d)

    def _dispatch(self, actions: Actions) -> None:
        self._dispatch_light(actions)
        if not self.queues:
            return
        for a in self.policy.plan(self):
            q = self.queues.get(a.key)
            if q is None:
                continue
            items: list[DispatchItem] = []
            tn = None
            while q and len(items) < a.count:
                _, node, rid = q.pop()
                live = self.requests.get(rid)
                if live is None:  # failed or cancelled meanwhile
                    continue
                tn = live.req.template.nodes[node]
                items.append(self._item(live, node))
            if not q:
                del self.queues[a.key]
            if items:
                self.workers[a.worker].inflight += 1
                self._new_dispatch(a.worker, tn, items, actions)

    def _dispatch_light(self, actions: Actions) -> None:
        """Glue runs where its inputs already are; same-op glue for one worker goes as one batch."""
        if not self._light:
            return
        groups: dict[tuple, list[tuple[_Live, int]]] = {}
        for live, node in self._light:
            if live.status != RUNNING:
                continue
            tn = live.req.template.nodes[node]
            weight: Counter = Counter()
            for inp in tn.inputs:
                if inp.kind == FROM_NODE:
                    ref = live.refs[(inp.node, inp.name)]
                    weight[ref.worker] += ref.nbytes + 1
            alive = [w for w in self.workers if w.alive]
            if weight:
                wid = max(weight, key=lambda i: (weight[i], -i))
            else:
                wid = min(alive, key=lambda w: (w.inflight, w.id)).id
            groups.setdefault((wid, tn.op, tn.mode, tn.model), []).append((live, node))
        self._light.clear()
        for (wid, *_), members in groups.items():
            tn = members[0][0].req.template.nodes[members[0][1]]
            self._new_dispatch(wid, tn, [self._item(live, node) for live, node in members], actions)
