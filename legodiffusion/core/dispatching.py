"""From ready nodes to dispatches, the part of the
:class:`~legodiffusion.core.coordinator.Coordinator` that feeds workers: a node whose inputs exist
joins the ready queue of its batch class (:meth:`Dispatching._make_ready`); each event the policy's
plan turns queue heads into calls on workers, prefetches into loads ahead of demand, and glue runs
where its inputs already are (:meth:`Dispatching._dispatch`). Every call reserves its estimated
time on its worker and charges its work to its tenant's share."""

from __future__ import annotations

import math
from dataclasses import dataclass
from typing import TYPE_CHECKING

from legodiffusion.core.graph import FROM_INPUT, FROM_NODE
from legodiffusion.core.messages import PENDING, RUNNING, Actions, Dispatch, DispatchItem, TensorRef
from legodiffusion.core.patchset import PATCHABLE, parse_patches
from legodiffusion.core.ready import ReadyQueue
from legodiffusion.core.view import ClassInfo, Prefetch

if TYPE_CHECKING:
    from legodiffusion.core.coordinator import _Live


@dataclass
class _Inflight:
    """A dispatch sent and not yet completed, with the time reserved for it on its worker."""

    dispatch: Dispatch
    reserved_s: float


class Dispatching:
    """Mixed into the coordinator, whose state (requests, ready queues and their classes, workers,
    in-flight dispatches, statistics) it reads and changes."""

    def _make_ready(self, live: _Live, node: int) -> None:
        tmpl = live.req.template
        tn = tmpl.nodes[node]
        if live.passthrough and node in live.passthrough:  # runs nowhere (its inputs need not all exist: their makers passed too)
            self._passing.append((live, node))
            return
        if self._missing_input(live, node):
            return
        if tn.light:
            self._light.append((live, node))
            return
        sig = None
        if len(tmpl.reads[node]) != len(tmpl.needs[node]):  # a deferred input (only node outputs are): such nodes run alone
            sig = ("deferred", live.req.id, node)
        elif tn.concat_batch:
            refs = live.refs
            sig = tuple((inp.port, refs[(inp.node, inp.name)].batch_signature) for inp in tn.inputs if inp.kind == FROM_NODE)
        if not getattr(self.policy, "cross_request", True):
            sig = (sig, live.req.id)
        values = {}
        if tn.key_ports:  # e.g. the LoRA patch set: only equal ones share a batch
            values = {
                inp.port: (live.req.inputs.get(inp.name) if inp.kind == FROM_INPUT else inp.value)
                for inp in tn.inputs
                if inp.port in tn.key_ports
            }
            sig = (sig, tuple(sorted(values.items())))
        scope = live.req.workflow if self.policy.isolate_workflows else None
        key = (tn.op, tn.mode, tn.model, sig, scope, live.pin)
        q = self.queues.get(key)
        if q is None:
            q = self.queues[key] = ReadyQueue(self.policy.share_key)
            patches = tuple(n for n, _ in parse_patches(values.get("loras"))) if tn.component in PATCHABLE else ()
            self.classes[key] = ClassInfo(tn.op, tn.mode, tn.model, tn.component, live.px, scope, live.pin, patches)
        q.push(live.priority, node, live.req.id, live.account)
        live.queued.add(node)

    def _item(self, live: _Live, node: int, worker: int) -> DispatchItem:
        tmpl = live.req.template
        tn = tmpl.nodes[node]
        refs, values = {}, {}
        ports = tmpl.out_ports[node]
        held = live.refs
        for inp in tn.inputs:
            if inp.kind == FROM_NODE:
                ref = held.get((inp.node, inp.name))
                if ref is None:  # a deferred input its producer has not written yet
                    tid = self._out_id(live, inp.node, inp.name)
                    live.pending.add(tid)
                    ref = TensorRef(tid, PENDING, 0, source=live.making.get(tid, PENDING))
                refs[inp.port] = ref
            elif inp.kind == FROM_INPUT:
                values[inp.port] = live.req.inputs[inp.name]
            else:
                values[inp.port] = inp.value
        if node in live.approx:  # a lookup re-run after a loss keeps the answer acted on
            values["pinned"] = live.approx[node].get("state", 0)
        out_ids = {port: self._out_id(live, node, port) for port in ports}
        deferred = tmpl.deferred_consumers[node]
        if deferred:
            for tid in out_ids.values():
                live.making[tid] = worker
        for consumer in deferred:  # they may start now
            live.dwait[consumer] -= 1
            if live.dwait[consumer] == 0 and live.indegree[consumer] == 0:
                self._make_ready(live, consumer)
                self._woken = True
        return DispatchItem(live.req.id, node, tn.key, refs, values, out_ids)

    def _out_id(self, live: _Live, node: int, port: str) -> int:
        tid = live.out_ids.get((node, port))
        if tid is None:
            self._next_tensor += 1
            tid = live.out_ids[(node, port)] = self._next_tensor
        return tid

    def _new_dispatch(
        self, worker: int, tn, scope: str | None, members: list[tuple[_Live, int]], actions: Actions, patches: tuple[str, ...] = ()
    ) -> None:
        """Send ``members`` to ``worker`` as one call; ``patches``: the LoRAs its class attaches."""
        self._next_dispatch += 1
        items = [self._item(live, node, worker) for live, node in members]
        for live, node in members:
            self.fair.charge(live.account, live.costs[node])
        d = Dispatch(self._next_dispatch, worker, tn.op, tn.mode, tn.model, tn.component, items, tn.light, scope)
        px = members[0][0].px
        if tn.component is not None and self._activation_bytes is not None:
            d.activation_bytes = self._activation_bytes(tn.op, tn.mode, tn.model, len(items), px)
        w = self.workers[worker]
        est = self.cost.exec_s(tn.op, tn.mode, tn.model, len(items), px)
        if tn.component is not None:
            comp = (tn.model, tn.component, scope)
            if comp not in w.resident:
                est += self.cost.load_s(tn.model, tn.component)
                self.note_resident(worker, comp)
            missing = sum(1 for n in patches if comp + (n,) not in w.patches)
            if missing:
                est += missing * getattr(self.cost, "lora_load_s", 0.0)
                self.pool.patched(worker, comp, patches)
        self.pool.reserve(worker, est, tn.light)
        if not tn.light:
            first = members[0] if len(members) == 1 else min(members, key=lambda m: m[0].account.rank)
            self._served[worker] = first[0].req.id
            self._note_urgent(worker, members)
        self.inflight[d.id] = _Inflight(d, est)
        actions.dispatches.append(d)
        self.stats.batch_sizes[(tn.op, len(items))] += 1
        if len(items) > 1:
            if len({it.request_id for it in items}) > 1:
                self.stats.cross_request_batches += 1
            if len({live.req.workflow for live, _ in members}) > 1:
                self.stats.cross_workflow_batches += 1

    def _note_urgent(self, worker: int, members: list[tuple[_Live, int]]) -> None:
        """Whether the call just sent to ``worker`` serves an urgent request (see :meth:`kept_urgent`)."""
        within = getattr(self.policy, "urgent_s", 0.0)
        most = None
        if within > 0:
            for live, _ in members:
                if live.req.deadline_s is not None:
                    lax = live.req.deadline_s - self._now - live.remaining_s
                    if lax < within:
                        within, most = lax, live.req.id
        if most is None:
            self._urgent.pop(worker, None)
        else:
            self._urgent[worker] = most

    def _dispatch(self, actions: Actions) -> None:
        if self._freed:
            self._start_held()
        self._woken = True
        while self._woken:  # dispatching a producer may free deferred readers to go too
            self._woken = False
            self._dispatch_once(actions)

    def _dispatch_once(self, actions: Actions) -> None:
        self._pass_ready(actions)
        self._dispatch_light(actions)
        if not self.queues or not self.pool.eligible:
            return
        for a in self.policy.plan(self.view):
            if isinstance(a, Prefetch):
                self._prefetch(a, actions)
                continue
            q = self.queues.get(a.key)
            if q is None:
                continue
            members: list[tuple[_Live, int]] = []
            rank = q.head_rank()  # one class per batch: a lower class's items would slow it down
            while q and len(members) < a.count and q.head_rank() == rank:
                _, node, rid = q.pop()
                live = self.requests.get(rid)
                if live is not None and node in live.queued:  # else ended, or reset by a recovery
                    live.queued.discard(node)
                    if not self._missing_input(live, node):
                        members.append((live, node))
            if not q:
                del self.queues[a.key]
                info = self.classes.pop(a.key)
            else:
                info = self.classes[a.key]
            if members:
                self.pool.take_slot(a.worker)
                tn = members[0][0].req.template.nodes[members[0][1]]
                self._new_dispatch(a.worker, tn, info.scope, members, actions, info.patches)

    def prefetch(self, worker: int, comp: tuple) -> Actions:
        """Make ``comp`` = (model, component, scope) resident on ``worker`` ahead of any demand (a
        preload): the prefetch dispatch to send, or none where the worker holds it already, takes
        no work or has no free call slot. Not an event: it ends no drain interval, so workers busy
        only loading a preload never count as a saturated cluster draining nothing."""
        actions = Actions()
        if worker in self.pool.eligible:
            self._prefetch(Prefetch(worker, comp), actions)
        return actions

    def _prefetch(self, a: Prefetch, actions: Actions) -> None:
        """A dispatch with no items: the worker only makes ``a.comp`` resident."""
        w = self.workers[a.worker]
        if a.comp in w.resident or not w.alive or w.draining:
            return
        model, component, scope = a.comp
        self._next_dispatch += 1
        d = Dispatch(self._next_dispatch, a.worker, "prefetch", "default", model, component, [], False, scope)
        est = self.cost.load_s(model, component)
        self.note_resident(a.worker, a.comp)
        self.pool.take_slot(a.worker)
        self.pool.reserve(a.worker, est, False)
        self.inflight[d.id] = _Inflight(d, est)
        actions.dispatches.append(d)
        self.stats.prefetches += 1

    def _dispatch_light(self, actions: Actions) -> None:
        """Glue runs where its inputs already are; same-op glue for one worker goes as one batch."""
        if not self._light:
            return
        groups: dict[tuple, list[tuple[_Live, int]]] = {}
        for live, node in self._light:
            if live.status != RUNNING or self._missing_input(live, node):
                continue
            tn = live.req.template.nodes[node]
            wid = live.pin if live.pin is not None else self._light_home(live, node)
            groups.setdefault((wid, tn.op, tn.mode, tn.model), []).append((live, node))
        self._light.clear()
        scope_of = (lambda live: live.req.workflow) if self.policy.isolate_workflows else (lambda live: None)
        for (wid, *_), members in groups.items():
            tn = members[0][0].req.template.nodes[members[0][1]]
            self._new_dispatch(wid, tn, scope_of(members[0][0]), members, actions)

    def _light_home(self, live: _Live, node: int) -> int:
        """Where glue runs: the holder of its inputs that can start it first (its queued work plus
        pulling the inputs it lacks); glue costs almost nothing, so waiting behind a model call
        on the worker with the most bytes would cost more than moving a latent."""
        weight: dict[int, int] = {}
        refs = live.refs
        for k in live.req.template.reads[node]:
            ref = refs[k]
            weight[ref.worker] = weight.get(ref.worker, 0) + ref.nbytes
        if len(weight) == 1:  # one holder: nothing to weigh
            return next(iter(weight))
        if weight:  # the earliest start, then the most bytes held, then the lowest id
            total = sum(weight.values())
            best, best_key = -1, None
            for i, held in weight.items():
                w = self.workers[i]
                if not w.alive:
                    start = math.inf
                else:
                    missing = total - held
                    start = w.reserved_s + (self.cost.transfer_s(missing) if missing > 0 else 0.0)
                key = (start, -held, i)
                if best_key is None or key < best_key:
                    best, best_key = i, key
            return best
        alive = [w for w in self.workers if w.alive and not w.draining] or [w for w in self.workers if w.alive]
        return min(alive, key=lambda w: (w.reserved_s, w.inflight, w.id)).id
