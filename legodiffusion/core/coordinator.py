"""The coordinator: a deterministic state machine over requests, ready nodes and tensor metadata.

It never reads a clock, sleeps, spawns threads or does I/O. A driver feeds it events
(:meth:`submit`, :meth:`on_complete`, :meth:`cancel`) with the current time and carries out the
:class:`Actions` each returns. The live asyncio driver and the simulator drive this same code.
"""

from __future__ import annotations

import math
from collections import Counter, deque
from dataclasses import dataclass, field
from typing import Any

from legodiffusion.core.approx import ApproxIndex
from legodiffusion.core.cost import CostModel, DefaultCost
from legodiffusion.core.dispatching import Dispatching, _Inflight
from legodiffusion.core.drain import DrainRate, LateGuard
from legodiffusion.core.fairness import DEFAULT_PRIORITY, DEFAULT_TENANT, FairShare, TenantAccount
from legodiffusion.core.graph import Template, known_size
from legodiffusion.core.lineage import Lineage
from legodiffusion.core.messages import (
    CANCELLED,
    FAILED,
    REJECTED,
    RUNNING,
    SUCCEEDED,
    Actions,
    Completion,
    RequestOutcome,
    TensorRef,
)
from legodiffusion.core.policy import SchedulingPolicy
from legodiffusion.core.pool import WorkerPool
from legodiffusion.core.ready import ReadyQueue
from legodiffusion.core.recovery import Orphans
from legodiffusion.core.shortening import Shortening
from legodiffusion.core.view import BatchKey, ClassInfo, CoordinatorView

#: how the error of a request failed by a broken coordinator invariant begins
INVARIANT = "internal error (coordinator invariant)"
#: how long a worker stays kept for the urgent request its last call served once that call is
#: done (:meth:`Coordinator.kept_urgent`): the glue between two of its calls (a sampler step and
#: the hand-offs) takes far less, so a worker idle for longer is not where its next call goes
KEEP_GAP_S = 0.1


@dataclass
class Request:
    id: int
    template: Template
    inputs: dict[str, Any]
    workflow: str = ""
    arrival_s: float = 0.0
    deadline_s: float | None = None  # absolute, on the driver's clock
    #: profiled solo seconds of each node, where the driver costed them already (else computed here)
    costs: list[float] | None = None
    #: who sent it: strict priority between classes (``priority``: a rank, lower first), weighted
    #: fair sharing of profiled work between tenants inside one (:mod:`legodiffusion.core.fairness`)
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY
    weight: float = 1.0


class _Live:
    """Coordinator-side state of one running request."""

    __slots__ = (
        "req",
        "priority",
        "indegree",
        "dwait",
        "uses",
        "refs",
        "out_ids",
        "pending",
        "done",
        "status",
        "pin",
        "costs",
        "remaining_s",
        "solo_s",
        "finished",
        "queued",
        "px",
        "making",
        "seq",
        "peak",
        "account",
        "passthrough",
        "approx",
        "holders",
    )

    def __init__(self, req: Request, costs: list[float], px: int | None, account: TenantAccount) -> None:
        self.req = req
        self.indegree = list(req.template.indegree)
        self.dwait = list(req.template.deferred_deps)
        self.uses = dict(req.template.uses)
        self.refs: dict[tuple[int, str], TensorRef] = {}
        self.out_ids: dict[tuple[int, str], int] = {}  # data-plane ids, assigned on first need
        self.pending: set[int] = set()  # ids handed to deferred readers before they exist
        self.done = 0
        self.status = RUNNING
        self.pin: int | None = None
        self.costs = costs
        self.remaining_s = self.solo_s = sum(costs)
        self.finished: set[int] = set()  # nodes whose outputs were recorded
        self.queued: set[int] = set()  # nodes in a ready queue (stale heap entries are skipped)
        self.px = px
        self.priority: tuple = ()
        self.making: dict[int, int] = {}  # output id -> the worker its producer was sent to
        self.seq = 0  # admission order
        self.peak = 0  # the most nodes ever done at once: progress, which a recovery's re-runs do not repeat
        self.account = account  # its tenant's share of its priority class
        self.passthrough: set[int] = set()  # nodes past the end of a schedule an approximate-cache hit shortened
        self.approx: dict[int, dict] = {}  # lookup node -> what it reported (kept for a re-run after a loss)
        self.holders: dict[int, int] = {}  # value id -> outputs holding it, where a pass-through made it more than one

    # RequestView for policies
    @property
    def workflow(self) -> str:
        return self.req.workflow

    @property
    def arrival_s(self) -> float:
        return self.req.arrival_s

    @property
    def deadline_s(self) -> float | None:
        return self.req.deadline_s

    @property
    def tenant(self) -> str:
        return self.req.tenant

    @property
    def rank(self) -> int:
        return self.req.priority

    @property
    def lead_s(self) -> float:
        return self.account.lead_s


@dataclass
class CoordinatorStats:
    nodes_by_op: Counter = field(default_factory=Counter)
    dispatches_by_op: Counter = field(default_factory=Counter)
    items_by_worker: Counter = field(default_factory=Counter)
    requests: Counter = field(default_factory=Counter)  # by final status
    batch_sizes: Counter = field(default_factory=Counter)  # (op, size) -> dispatches
    cross_request_batches: int = 0
    cross_workflow_batches: int = 0
    loads_by_worker: Counter = field(default_factory=Counter)
    recoveries: int = 0  # requests that re-ran lost work after a worker died
    violations: int = 0  # broken invariants (each failed its request with the reason)
    evictions_by_worker: Counter = field(default_factory=Counter)
    work_by_workflow: Counter = field(default_factory=Counter)  # profiled solo seconds of admitted requests
    admitted: int = 0
    prefetches: int = 0  # loads started ahead of demand (dispatches with no items)
    passed: int = 0  # nodes past the end of a schedule an approximate-cache hit shortened, run nowhere


class Coordinator(Lineage, Shortening, Dispatching):
    def __init__(
        self,
        n_workers: int,
        policy: SchedulingPolicy,
        cost: CostModel | None = None,
        latency_batch: dict[str, int] | None = None,
        throughput_batch: dict[str, int] | None = None,
        default_latency_batch: int = 1,
        default_throughput_batch: int = 8,
        slots_per_worker: int = 2,
        queue_threshold_s: float = 0.05,
    ) -> None:
        self.policy = policy
        self.cost: CostModel = cost or DefaultCost()
        self._activation_bytes = getattr(self.cost, "activation_bytes", None)  # per call, where profiled
        self.pool = WorkerPool(n_workers, slots_per_worker, queue_threshold_s)
        self.workers = self.pool.workers
        self.queue_threshold_s = queue_threshold_s
        self.queues: dict[BatchKey, ReadyQueue] = {}
        self.classes: dict[BatchKey, ClassInfo] = {}
        self.requests: dict[int, _Live] = {}
        self.inflight: dict[int, _Inflight] = {}
        self.stats = CoordinatorStats()
        self._latency_batch = dict(latency_batch or {})
        self._throughput_batch = dict(throughput_batch or {})
        self._default_batches = (default_latency_batch, default_throughput_batch)
        self._node_costs: dict[tuple[int, int | None], tuple[Template, list[float]]] = {}
        self._seq = 0
        self._next_tensor = 0
        self._next_dispatch = 0
        self._light: list[tuple[_Live, int]] = []
        self._passing: list[tuple[_Live, int]] = []  # pass-through nodes ready to be recorded
        self._woken = False
        self._orphans = Orphans()  # in-flight items whose result a recovery discards
        self._broken: dict[int, str] = {}  # request -> the invariant it broke: failed as the event ends
        #: admitted requests waiting for a replica of their workflow (gated policies), by workflow,
        #: oldest first; ended ones are skipped lazily
        self.held: dict[str, deque[_Live]] = {}
        self._freed: set[int] = set()  # workers whose pinned request ended: start held work there
        #: recent work per (model, component, scope): (seconds of work per second, as of when),
        #: decaying with time constant ``demand_window_s``
        self._demand: dict[tuple, tuple[float, float]] = {}
        self.demand_window_s = 10.0
        self._now = 0.0  # the latest event's time
        #: profiled work not yet done of every admitted request (seconds; kept as work is done)
        self.work_s = 0.0
        #: priority classes' virtual clocks and tenants' shares of them (read through ``lead_s``)
        self.fair = FairShare()
        #: worker -> the request its last model call served first (the highest class in it)
        self._served: dict[int, int] = {}
        self._served_done: dict[int, float] = {}  # worker -> when its last model call finished
        self._urgent: dict[int, int] = {}  # worker -> the urgent request its last model call served
        #: what the approximate cache holds and how often lookups hit, from its nodes' notes
        self.approx = ApproxIndex()
        #: profiled work done per worker-second while saturated: admission's measured drain rate
        self.drain = DrainRate()
        #: priority class -> a margin on that estimate, raised by its admitted requests that finish late
        self.late_guards: dict[int, LateGuard] = {}
        self.view = CoordinatorView(self)

    # -- the view policies read ------------------------------------------------------------

    def batch_limits(self, op: str) -> tuple[int, int]:
        return (self._latency_batch.get(op, self._default_batches[0]), self._throughput_batch.get(op, self._default_batches[1]))

    def locality(self, key: BatchKey, n: int) -> dict[int, int]:
        """Bytes of the first ``n`` queued nodes' inputs, by the worker holding them."""
        where: dict[int, int] = {}
        for _, node, rid in self.queues[key].first(n):
            live = self.requests.get(rid)
            if live is None:
                continue
            refs = live.refs
            for k in live.req.template.reads[node]:
                ref = refs.get(k)
                if ref is not None:
                    where[ref.worker] = where.get(ref.worker, 0) + ref.nbytes
        return where

    def note_resident(self, worker: int, comp: tuple) -> None:
        """Record that ``worker`` holds (or is about to load) ``comp`` = (model, component, scope)."""
        self.pool.note_resident(worker, comp, self.cost.weight_bytes(comp[0], comp[1]))

    def demand(self) -> dict[tuple, float]:
        """Recent work per (model, component, scope), in seconds of work per second: what
        arrived, decayed with time constant ``demand_window_s`` to the latest event's time."""
        tau = self.demand_window_s
        return {k: rate * math.exp(-(self._now - t) / tau) for k, (rate, t) in self._demand.items()}

    def _observe(self, live: _Live, now: float) -> None:
        tau = self.demand_window_s
        work: dict[tuple, float] = {}
        scope = live.req.workflow if self.policy.isolate_workflows else None
        for node, cost in zip(live.req.template.nodes, live.costs):
            if node.component is not None:
                k = (node.model, node.component, scope)
                work[k] = work.get(k, 0.0) + cost
        for k, w in work.items():
            rate, t = self._demand.get(k, (0.0, now))
            self._demand[k] = (rate * math.exp(-(now - t) / tau) + w / tau, now)

    def kept_for(self, rank: int) -> set[int]:
        """Workers whose last model call served a request of a higher class than ``rank`` that is
        still running: its next call (after glue that runs in no time) would find them warm and
        free, so a lower class should not slip a call in between."""
        out = set()
        for wid, rid in self._served.items():
            live = self.requests.get(rid)
            if live is not None and live.account.rank < rank:
                out.add(wid)
        return out

    def kept_urgent(self) -> dict[int, tuple]:
        """Workers whose last model call (running, or finished within :data:`KEEP_GAP_S`) served a
        request that was urgent when the call was sent (less slack than the policy's ``urgent_s``:
        deadline - now - its remaining profiled work) and still runs, each with that request's
        place in the order ((share key, priority), as a queue's head): its next call would find
        the worker warm, and a call of a request after it slipped in between would cost it the
        whole call."""
        out = {}
        idle, now = self.pool.idle_set, self._now
        for wid, rid in self._urgent.items():
            if wid in idle and now - self._served_done.get(wid, -math.inf) > KEEP_GAP_S:
                continue  # idle for longer than the glue between two calls: its next call went elsewhere
            live = self.requests.get(rid)
            if live is not None and live.status == RUNNING:
                out[wid] = (self.policy.share_key(live.account), live.priority)
        return out

    def backlog(self) -> list[tuple[tuple, float, float | None]]:
        """(order key, profiled remaining work, deadline) of every in-flight request, in order
        (:meth:`SchedulingPolicy.order_key`)."""
        key = self.policy.order_key
        return sorted((key(r), r.remaining_s, r.req.deadline_s) for r in self.requests.values())

    # -- events ----------------------------------------------------------------------------

    def submit(self, req: Request, now: float) -> Actions:
        if req.id in self.requests:
            raise ValueError(f"request {req.id} is already running")
        self._now = max(self._now, now)
        actions = Actions()
        live = self._live(req)
        solo = live.remaining_s  # a miss must fit: what a lookup skips is taken off once known
        if not any(w.alive for w in self.workers):
            actions.finished.append(RequestOutcome(req.id, FAILED, error="no live worker can run this request"))
            self.stats.requests[FAILED] += 1
            return actions
        reason = self.policy.admit(self.view, live, solo, now)
        if reason is not None:
            actions.finished.append(RequestOutcome(req.id, REJECTED, error=reason))
            self.stats.requests[REJECTED] += 1
            return actions
        self._seq += 1
        live.seq = self._seq
        self.fair.join(live.account)
        live.priority = self.policy.priority(live, self._seq, solo)
        self.stats.work_by_workflow[req.workflow] += solo
        self.stats.admitted += 1
        self.work_s += solo
        self._observe(live, now)
        self.requests[req.id] = live
        pin = self.policy.pin(self.view, live)
        if pin is None and self.policy.gated:
            self.held.setdefault(req.workflow, deque()).append(live)
        else:
            self._start(live, pin)
        self._dispatch(actions)
        return self._finish(actions)

    def _live(self, req: Request) -> _Live:
        px = pixels(req.inputs, req.template)
        account = self.fair.account(req.tenant, req.priority, req.weight)
        return _Live(req, req.costs if req.costs is not None else self.node_costs(req.template, px), px, account)

    def refusal(self, req: Request, now: float) -> str | None:
        """Why the policy's admission would refuse ``req`` now, or None; changes nothing."""
        live = self._live(req)
        return self.policy.admit(self.view, live, live.remaining_s, now)

    def _start(self, live: _Live, pin: int | None) -> None:
        live.pin = pin
        if pin is not None:
            self.workers[pin].pinned += 1
        for node in live.req.template.sources:
            self._make_ready(live, node)

    def _start_held(self) -> None:
        """Freed replicas take the oldest held request the policy gives them."""
        freed, self._freed = self._freed, set()
        for wid in sorted(freed):
            w = self.workers[wid]
            while w.alive and not w.draining and w.pinned == 0:
                workflow = self.policy.next_held(self.view, wid)
                if workflow is None:
                    break
                self._start(self.held[workflow].popleft(), wid)

    def held_head(self, workflow: str) -> _Live | None:
        """The oldest request of ``workflow`` waiting for a replica (dropping ended ones)."""
        q = self.held.get(workflow)
        while q and q[0].status != RUNNING:
            q.popleft()
        return q[0] if q else None

    def tick(self, now: float) -> Actions:
        """A periodic event for policies that re-plan on a timer (the monolithic baseline's
        re-allocation); every idle replica may then take held work."""
        actions = Actions()
        if self.policy.on_tick(self.view, now):
            self._freed.update(w.id for w in self.workers if w.pinned == 0)
            self._dispatch(actions)
        return self._finish(actions)

    def on_complete(self, c: Completion, now: float) -> Actions:
        self._now = max(self._now, now)
        actions = Actions()
        record = self.inflight.pop(c.dispatch_id, None)
        if record is None:  # from a worker declared lost: its work is being redone elsewhere
            actions.frees.extend(ref for res in c.results for ref in (res.outputs or {}).values())
            return actions
        d = record.dispatch
        w = self.workers[d.worker]
        self.pool.complete(w.id, record.reserved_s, d.light)
        if not d.light:
            self._served_done[w.id] = now
        for key in c.evicted:
            self.pool.evicted(w.id, key)
            self.stats.evictions_by_worker[w.id] += 1
        self.stats.loads_by_worker[w.id] += len(c.loaded)
        self.stats.dispatches_by_op[d.op] += 1
        if len(c.results) != len(d.items):
            for item in d.items:
                self._orphans.settle((d.id, item.request_id, item.node))
                self._violation(item.request_id, f"dispatch {d.id} ({d.op}) reported {len(c.results)} results for {len(d.items)} items")
            actions.frees.extend(ref for res in c.results for ref in (res.outputs or {}).values())
            self._dispatch(actions)
            return self._finish(actions)
        requests, recorded = self.requests, 0
        orphans = self._orphans if self._orphans else None  # only a recovery adds any
        for item, res in zip(d.items, c.results):
            live = requests.get(item.request_id)
            orphan = orphans is not None and orphans.settle((d.id, item.request_id, item.node))
            if live is None or live.status != RUNNING or orphan:
                actions.frees.extend((res.outputs or {}).values())
                continue
            if item.node in live.finished:
                actions.frees.extend((res.outputs or {}).values())
                self._violation(live.req.id, f"node {item.key} completed again, but it was not running")
                continue
            if res.error is not None:
                self._end(live, FAILED, actions, error=res.error, node=item.key)
                continue
            if res.notes and ("approx" in res.notes or "approx_saved" in res.notes):
                self._approx_noted(live, item.node, res.notes)  # before its readers become ready
            recorded += 1
            self._record(live, item.node, res.outputs or {}, actions)
        if recorded:
            self.stats.nodes_by_op[d.op] += recorded
            self.stats.items_by_worker[d.worker] += recorded
        self._dispatch(actions)
        return self._finish(actions)

    def add_worker(self, slots: int | None = None) -> int:
        """A new worker joins (scale-up) and returns its id; it holds nothing and takes no work
        until :meth:`activate_worker` (it may still be starting)."""
        return self.pool.add(slots)

    def activate_worker(self, worker: int, now: float) -> Actions:
        """A joined worker is up: it takes work from now on."""
        actions = Actions()
        if self.pool.activate(worker):
            self._freed.add(worker)
            self._dispatch(actions)
        return self._finish(actions)

    def drain_worker(self, worker: int) -> None:
        """Send ``worker`` no new model calls (scale-down); :meth:`drained` says when it may go."""
        if self.workers[worker].alive:
            self.pool.withdraw(worker)

    def drained(self, worker: int) -> bool:
        """Nothing runs on ``worker`` and no live request needs a tensor it holds."""
        if any(rec.dispatch.worker == worker for rec in self.inflight.values()):
            return False
        return not any(ref.worker == worker for live in self.requests.values() for ref in live.refs.values())

    def cancel(self, request_id: int, now: float) -> Actions:
        return self._stop(request_id, CANCELLED, "cancelled")

    def fail(self, request_id: int, reason: str, now: float) -> Actions:
        """The driver could not carry out an event for this request: it fails with ``reason``."""
        return self._stop(request_id, FAILED, reason)

    def _stop(self, request_id: int, status: str, error: str) -> Actions:
        actions = Actions()
        live = self.requests.get(request_id)
        if live is not None and live.status == RUNNING:
            self._end(live, status, actions, error=error)
            self._dispatch(actions)
        return self._finish(actions)

    # -- mechanics -------------------------------------------------------------------------

    def _violation(self, request_id: int, what: str) -> None:
        """A broken invariant: the request fails with ``what`` as the event ends (never raises)."""
        self.stats.violations += 1
        if request_id in self.requests:
            self._broken.setdefault(request_id, what)

    def _missing_input(self, live: _Live, node: int) -> bool:
        """Does ``node``, about to be queued or sent, lack an input that must be present (a
        broken invariant)?"""
        refs = live.refs
        for k in live.req.template.needs[node]:
            if k not in refs:
                self._violation(live.req.id, f"node {live.req.template.nodes[node].key} became ready without its input {k[1]!r}")
                return True
        return False

    def _finish(self, actions: Actions) -> Actions:
        """The end of every event: requests that broke an invariant fail with the reason; a
        deferred value released while an orphan may still wait for it is also abandoned, so that
        the orphan fails at once rather than blocking its worker until the wait limit."""
        while self._broken:
            broken, self._broken = self._broken, {}
            for rid, what in broken.items():
                live = self.requests.get(rid)
                if live is not None and live.status == RUNNING:
                    self._end(live, FAILED, actions, error=f"{INVARIANT}: {what}")
            self._dispatch(actions)
        if self._orphans:
            actions.abandoned.extend(ref.id for ref in actions.frees if self._orphans.waited(ref.id))
        self.drain.tick(self._now, not self.pool.idle, self.pool.active)
        return actions

    def node_costs(self, tmpl: Template, px: int | None) -> list[float]:
        """Profiled solo execution time of each node of ``tmpl`` at ``px`` pixels."""
        key = (id(tmpl), px)
        hit = self._node_costs.get(key)
        if hit is None or hit[0] is not tmpl:  # the entry holds its template: its id cannot be reused
            if len(self._node_costs) > 1024:
                self._node_costs.clear()
            hit = self._node_costs[key] = (tmpl, [self.cost.exec_s(n.op, n.mode, n.model, 1, px) for n in tmpl.nodes])
        return hit[1]

    def _record(self, live: _Live, node: int, outputs: dict[str, TensorRef], actions: Actions, passed: bool = False) -> None:
        """``node`` finished with ``outputs``; ``passed``: it passed its inputs on as them (the
        values stay where they are, now held by one more output)."""
        tmpl = live.req.template
        uses, refs, pending = live.uses, live.refs, live.pending
        for port, ref in outputs.items():
            if pending:
                pending.discard(ref.id)
            if uses.get((node, port), 0) > 0:
                refs[(node, port)] = ref
                if passed:
                    live.holders[ref.id] = live.holders.get(ref.id, 1) + 1
            elif not passed:
                actions.frees.append(ref)
        for k in tmpl.reads[node]:
            left = uses[k] = uses[k] - 1
            if left == 0:
                ref = refs.pop(k, None)
                if ref is not None:  # else a deferred input whose producer reports later: freed on arrival
                    self._release(live, ref, actions)
        live.done += 1
        live.finished.add(node)
        cost = live.costs[node]
        live.remaining_s -= cost
        self.work_s -= cost
        if not passed:
            self.drain.credit(cost)
        live.priority = self.policy.priority(live, live.seq, live.remaining_s)  # laxity grows as work is done
        if live.done > live.peak:
            live.peak = live.done
            actions.progressed.append(live.req.id)
        if live.done == len(tmpl.nodes):
            missing = [name for name, k in tmpl.outputs.items() if k not in live.refs]
            if missing:
                self._violation(live.req.id, f"finished without its output(s) {missing}")
                return
            outs = {name: live.refs[k] for name, k in tmpl.outputs.items()}
            self._end(live, SUCCEEDED, actions, outputs=outs)
            return
        indegree, dwait = live.indegree, live.dwait
        for consumer in tmpl.consumers[node]:
            left = indegree[consumer] = indegree[consumer] - 1
            if left == 0 and dwait[consumer] == 0:
                self._make_ready(live, consumer)

    def _end(self, live: _Live, status: str, actions: Actions, outputs=None, error=None, node=None) -> None:
        live.status = status
        if live.pin is not None:
            self.workers[live.pin].pinned -= 1
            if self.workers[live.pin].pinned == 0:
                self._freed.add(live.pin)
        actions.finished.append(RequestOutcome(live.req.id, status, outputs, error, node))
        if status == SUCCEEDED and live.req.deadline_s is not None:
            guard = self.late_guards.get(live.rank)
            if guard is None:
                guard = self.late_guards[live.rank] = LateGuard()
            guard.finished(self._now > live.req.deadline_s)
        actions.frees.extend({ref.id: ref for ref in live.refs.values()}.values())  # a passed-on value once
        actions.abandoned.extend(sorted(live.pending))
        live.refs.clear()
        live.pending.clear()
        self.stats.requests[status] += 1
        del self.requests[live.req.id]
        self.fair.leave(live.account)
        # what is left of its work leaves the queue (rounding cannot build up past an empty queue)
        self.work_s = self.work_s - live.remaining_s if self.requests else 0.0


def pixels(inputs: dict[str, Any], template: Template | None = None) -> int | None:
    """Image pixels of a request (height x width), or None when it asks for the native size: the
    largest size reaching a node of ``template`` through its size ports, whatever the request
    inputs feeding them are named; without a template, the inputs named ``height`` and ``width``."""
    pairs = (
        [known_size(entry, inputs) for entry in template.sizes] if template is not None else [(inputs.get("height"), inputs.get("width"))]
    )
    sizes = [h * w for h, w in pairs if isinstance(h, int) and isinstance(w, int)]
    return max(sizes) if sizes else None
