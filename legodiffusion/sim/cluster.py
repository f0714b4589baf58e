"""A cluster on a virtual clock, driving the real coordinator and policies.

Only the workers, their memory and the clock are simulated. Each simulated worker runs its
dispatches in order, taking the time the cost model gives for the call plus what real hardware
charges around it:

- a load when the component is not resident: disk -> host at disk bandwidth when the node's host
  memory (an LRU under its budget) has no copy, then host -> device;
- device memory: weights in an LRU under the device budget, plus the call's activation memory,
  which can force evictions; the component a call uses is never evicted for it;
- inputs held elsewhere: their real sizes over the link between the two GPUs (same node: peer
  copy; across nodes: the network), a ControlNet's residuals included;
- a fixed per-dispatch overhead (coordinator + runtime hand-offs).

Scheduling, batching, placement and admission are the serving code's, and the LRU is the one
live workers use (:class:`~legodiffusion.core.residency.LRUBudget`).
"""

from __future__ import annotations

import heapq
import itertools
from collections.abc import Callable
from dataclasses import dataclass, field

from legodiffusion.core.coordinator import Coordinator, Request, pixels
from legodiffusion.core.cost import FETCH_BYTES_PER_S, FETCH_FIXED_S, CostModel
from legodiffusion.core.messages import PENDING, Actions, Completion, Dispatch, ItemResult, RequestOutcome, TensorRef
from legodiffusion.core.patchset import PATCHABLE, parse_patches
from legodiffusion.core.residency import LRUBudget
from legodiffusion.sim.approx import CacheModel
from legodiffusion.sim.reference import Link
from legodiffusion.sim.step_skip import StepCacheModel

#: share of a base-model call left to run once its deferred ControlNet residuals arrive (the
#: UNet reads them after its down blocks; DiTs add them block by block)
DEFERRED_TAIL = 0.5


@dataclass
class SimWorker:
    id: int
    node: int = 0
    budget_bytes: int | None = None
    busy_until: float = 0.0
    busy_s: float = 0.0
    patches: set = field(default_factory=set)  # (model, component, scope, LoRA) attached here
    memory: LRUBudget = field(init=False)

    def __post_init__(self) -> None:
        self.memory = LRUBudget(self.budget_bytes)

    @property
    def loads(self) -> int:
        return self.memory.loads

    @property
    def evictions(self) -> int:
        return self.memory.evictions

    def admit(self, key: tuple, nbytes: int, activation_bytes: int = 0) -> tuple[bool, list[tuple]]:
        """Make ``key`` resident beside ``activation_bytes`` of working memory; returns (was it
        loaded, what was evicted). Raises ``MemoryError`` when it cannot fit."""
        loaded, evicted = self.memory.admit(key, nbytes, activation_bytes, in_use=(key,))
        if evicted:
            gone = set(evicted)
            self.patches = {p for p in self.patches if p[:3] not in gone}
        return loaded, evicted


class Topology:
    """Which node each GPU is on, and what moving bytes between two GPUs costs."""

    def __init__(self, gpus_per_node: int, same_node: Link, cross_node: Link) -> None:
        self.gpus_per_node = max(1, gpus_per_node)
        self.same_node = same_node
        self.cross_node = cross_node

    def node(self, worker: int) -> int:
        return worker // self.gpus_per_node

    def link(self, src: int, dst: int) -> tuple[str, Link]:
        """The link between two GPUs, and its kind ("same_node" or "cross_node")."""
        if self.node(src) == self.node(dst):
            return "same_node", self.same_node
        return "cross_node", self.cross_node


class Simulator:
    """Event-driven: request arrivals and dispatch completions in virtual time.

    Defaults come from the cost model where it describes the cluster (``ReferenceCost``): device
    and host memory, GPUs per node, links and per-dispatch overhead; otherwise one node, no memory
    limits, DiFlow's intra-node fetch figures and no overhead."""

    def __init__(
        self,
        coordinator: Coordinator,
        cost: CostModel,
        budget_bytes: int | None = None,
        overhead_s: float | None = None,
        gpus_per_node: int | None = None,
        host_bytes: int | None = None,
        approx: CacheModel | None = None,
        step_cache: StepCacheModel | None = None,
    ) -> None:
        self.coord = coordinator
        self.approx = approx  # what approximate-cache lookups answer (None: every one misses)
        self.step_cache = step_cache  # which denoiser calls of step-cached requests skip (None: none)
        self._step_cached: set[int] = set()  # requests that opted in
        self.step_cache_skips = 0  # samples of denoiser calls that skipped
        self.cost = cost
        n = len(coordinator.workers)
        self.overhead_s = overhead_s if overhead_s is not None else getattr(cost, "dispatch_overhead_s", 0.0)
        same = getattr(cost, "same_node", Link(FETCH_FIXED_S, FETCH_BYTES_PER_S))
        self.topology = Topology(gpus_per_node or getattr(cost, "gpus_per_node", n), same, getattr(cost, "cross_node", same))
        self.workers = [SimWorker(i, self.topology.node(i), budget_bytes) for i in range(n)]
        host_bytes = host_bytes if host_bytes is not None else getattr(cost, "host_memory_bytes", None)
        self.hosts = [LRUBudget(host_bytes) for _ in range(self.topology.node(max(0, n - 1)) + 1)]
        self.now = 0.0
        self._events: list = []
        self._seq = itertools.count()
        self._px: dict[int, int | None] = {}
        self._base: dict[int, str | None] = {}  # request -> its denoiser's model (sizes of glue outputs)
        self._steps: dict[int, int] = {}  # request -> its sampling steps (what a cache hit skips of)
        self._bytes: dict[int, int] = {}  # tensor id -> bytes (deferred readers learn them late)
        self._ready_at: dict[int, float] = {}  # when each output exists (for deferred readers)
        self.outcomes: dict[int, RequestOutcome] = {}
        self.finish_s: dict[int, float] = {}
        self.arrival_s: dict[int, float] = {}
        self.dispatched_nodes = 0
        self.dispatches = 0
        self.disk_loads = 0
        self.bytes_moved = {"same_node": 0, "cross_node": 0}
        self.on_finish: Callable[[RequestOutcome, float], None] | None = None
        #: simulated busy seconds per request (a dispatch's whole time, split over its items):
        #: GPU-seconds by tenant, workflow or size are sums of it
        self.busy_s_by_request: dict[int, float] = {}
        self._ticking = False
        # what the cost model may describe beyond CostModel, read once: it is fixed for the run
        self._activation_bytes = getattr(cost, "activation_bytes", None)
        self._tensor_bytes = getattr(cost, "tensor_bytes", None)

    def warm_hosts(self, components: list[tuple[str, str]]) -> None:
        """Every node starts with host copies of ``components`` (model, component), as a server
        does once it has read its models; what exceeds the host budget stays on disk."""
        for host in self.hosts:
            for model, comp in components:
                try:
                    host.admit((model, comp), self.cost.weight_bytes(model, comp))
                except MemoryError:
                    break

    def preload(self, worker: int, keys: list[tuple]) -> bool:
        """Start ``worker`` with ``keys`` (model, component, scope) resident, as a deployment
        that loaded them before traffic; False (and nothing more loaded) once one does not fit."""
        w = self.workers[worker]
        for key in keys:
            nbytes = self.cost.weight_bytes(key[0], key[1])
            if w.memory.budget_bytes is not None and w.memory.used_bytes + nbytes > w.memory.budget_bytes:
                return False
            w.admit(key, nbytes)
            self.coord.note_resident(worker, key)
        return True

    def submit_at(self, t: float, req: Request) -> None:
        heapq.heappush(self._events, (t, next(self._seq), "arrive", req))
        tick_s = self.coord.policy.tick_s
        if tick_s and not self._ticking:  # timer events for policies that re-plan periodically
            self._ticking = True
            heapq.heappush(self._events, (tick_s, next(self._seq), "tick", None))

    def _apply(self, actions: Actions) -> None:
        for o in actions.finished:
            self.outcomes[o.request_id] = o
            self.finish_s[o.request_id] = self.now
            if self.on_finish is not None:
                self.on_finish(o, self.now)
        known, ready_at = self._bytes, self._ready_at
        for ref in actions.frees:
            known.pop(ref.id, None)
            ready_at.pop(ref.id, None)
        for d in actions.dispatches:
            self._start(d)

    def _load(self, w: SimWorker, d: Dispatch, px: int | None) -> tuple[float, list, list]:
        """Seconds to make the dispatch's component resident (0 when it is), what was loaded and
        evicted. Raises ``MemoryError`` when it cannot fit beside the call's activations."""
        if d.component is None:
            return 0.0, [], []
        key = (d.model, d.component, d.scope)
        act = self._activation_bytes(d.op, d.mode, d.model, len(d.items), px) if self._activation_bytes is not None else 0
        loaded, evicted = w.admit(key, self.cost.weight_bytes(d.model, d.component), act)
        if not loaded:
            return 0.0, [], evicted
        t = self.cost.load_s(d.model, d.component)
        host = self.hosts[w.node]
        if not host.touch((d.model, d.component)):
            host.admit((d.model, d.component), self.cost.weight_bytes(d.model, d.component))
            t += getattr(self.cost, "disk_load_s", lambda *a: 0.0)(d.model, d.component)
            self.disk_loads += 1
        return t, [key], evicted

    def _patch_s(self, w: SimWorker, d: Dispatch) -> float:
        t = 0.0
        for name, _ in parse_patches(d.items[0].values.get("loras")):
            key = (d.model, d.component, d.scope, name)
            if key not in w.patches:
                w.patches.add(key)
                t += getattr(self.cost, "lora_load_s", 0.3)
        return t

    def _transfers(self, d: Dispatch) -> tuple[float, list[float]]:
        """Seconds to pull inputs held elsewhere (one fixed cost per source), and when each
        deferred input arrives here."""
        by_source: dict[int, int] = {}
        arrivals = []
        here = d.worker
        for it in d.items:
            for ref in it.refs.values():
                src = ref.worker
                if src == here:
                    continue
                if src == PENDING:
                    if ref.id in self._ready_at:
                        nbytes = self._bytes.get(ref.id, 0)
                        arrivals.append(self._ready_at[ref.id] + self._move(nbytes, ref.source, here))
                else:
                    by_source[src] = by_source.get(src, 0) + ref.nbytes
        return sum(self._move(n, src, here) for src, n in by_source.items()), arrivals

    def _move(self, nbytes: int, src: int, dst: int) -> float:
        if src in (dst, PENDING) or nbytes <= 0:
            return 0.0
        kind, link = self.topology.link(src, dst)
        self.bytes_moved[kind] += nbytes
        return link.seconds(nbytes)

    def _start(self, d: Dispatch) -> None:
        w = self.workers[d.worker]
        if not d.items:
            self._prefetch(w, d)
            return
        rid = d.items[0].request_id
        px = self._px.get(rid)
        begin = max(self.now, w.busy_until)
        try:
            load_s, loaded, evicted = self._load(w, d, px)
        except MemoryError as e:
            results = [ItemResult(error=f"does not fit on worker {w.id}: {e}") for _ in d.items]
            c = Completion(d.id, d.worker, results, begin, begin)
            heapq.heappush(self._events, (begin, next(self._seq), "complete", c))
            return
        exec_s = self._exec_s(d, px)
        move_s, arrivals = self._transfers(d)
        patch_s = self._patch_s(w, d) if d.component in PATCHABLE else 0.0
        t = self.overhead_s + load_s + patch_s + move_s + exec_s
        end = begin + t
        if arrivals:  # deferred inputs: the rest of the call (after the down blocks) waits for them
            end = max(end, max(arrivals) + DEFERRED_TAIL * exec_s)
        w.busy_until = end
        w.busy_s += t
        share = t / len(d.items)
        busy = self.busy_s_by_request
        for it in d.items:
            busy[it.request_id] = busy.get(it.request_id, 0.0) + share
        model = d.model if d.model is not None else self._base.get(rid)
        tensor_bytes = self._tensor_bytes
        sizes: dict[str, int] = {}  # port -> bytes: the items of one call share model and size
        shape = (1, px or 512 * 512)  # the shape only has to give equal batch signatures to equal requests
        ready_at, known = self._ready_at, self._bytes
        lookup = d.op == "approx_lookup"
        results = []
        for it in d.items:
            outs = {}
            for port, tid in it.output_ids.items():
                nbytes = sizes.get(port)
                if nbytes is None:
                    nbytes = tensor_bytes(port, model, px) if tensor_bytes is not None else None
                    nbytes = sizes[port] = (px or 512 * 512) // 4 if nbytes is None else nbytes
                if port == "cache" and it.request_id not in self._step_cached:
                    nbytes = 0  # step caching off: the carry holds nothing, and moving nothing costs nothing
                ready_at[tid] = end
                known[tid] = nbytes
                outs[port] = TensorRef(tid, d.worker, nbytes, shape, "bfloat16")
            results.append(ItemResult(outs, notes=self._lookup(it.request_id) if lookup else None))
        self.dispatches += 1
        self.dispatched_nodes += len(d.items)
        c = Completion(d.id, d.worker, results, begin, end, loaded, evicted)
        heapq.heappush(self._events, (end, next(self._seq), "complete", c))

    def _lookup(self, request: int) -> dict:
        """An approximate-cache lookup's note, as the live operator reports it."""
        steps = self._steps.get(request, 0)
        k = self.approx.skipped(request, steps) if self.approx is not None and steps > 1 else 0
        note = {"skipped": k, "steps": steps}
        if k:
            note.update(state=request, from_request=0, similarity=1.0)
        return {"approx": note}

    def _exec_s(self, d: Dispatch, px: int | None) -> float:
        """A call's profiled time; a denoiser call whose step-cached samples skip (drawn per sample)
        runs its first block for every sample and the rest only for those that compute."""

        def full(n: int) -> float:
            return self.cost.exec_s(d.op, d.mode, d.model, n, px)

        model = self.step_cache
        if model is None or d.op != "denoise" or not any(it.request_id in self._step_cached for it in d.items):
            return full(len(d.items))
        computing = sum(1 for it in d.items if it.request_id not in self._step_cached or not model.skips(it.request_id, it.node, d.model))
        if computing < len(d.items):
            self.step_cache_skips += len(d.items) - computing
        return model.batch_s(full, len(d.items), computing, d.model)

    def _prefetch(self, w: SimWorker, d: Dispatch) -> None:
        """A dispatch with no items: the worker loads its component, and that is all."""
        begin = max(self.now, w.busy_until)
        try:
            load_s, loaded, evicted = self._load(w, d, None)
        except MemoryError:  # it does not fit: report it not held
            load_s, loaded, evicted = 0.0, [], [(d.model, d.component, d.scope)]
        end = begin + self.overhead_s + load_s
        w.busy_until = end
        w.busy_s += end - begin
        self.dispatches += 1
        c = Completion(d.id, d.worker, [], begin, end, loaded, evicted)
        heapq.heappush(self._events, (end, next(self._seq), "complete", c))

    def run(self, until_s: float = float("inf"), max_events: int | None = None) -> None:
        n = 0
        while self._events and (max_events is None or n < max_events):
            t, _, kind, payload = self._events[0]
            if t > until_s:
                break
            heapq.heappop(self._events)
            self.now = t
            n += 1
            if kind == "tick":
                self._apply(self.coord.tick(t))
                if any(e[2] != "tick" for e in self._events):  # stop ticking once nothing else is left
                    heapq.heappush(self._events, (t + self.coord.policy.tick_s, next(self._seq), "tick", None))
            elif kind == "arrive":
                req = payload
                self._px[req.id] = pixels(req.inputs, req.template)
                if self.step_cache is not None and req.inputs.get("step_cache"):
                    self._step_cached.add(req.id)
                self._base[req.id] = next((n.model for n in req.template.nodes if n.component == "denoiser"), None)
                self._steps[req.id] = int(req.inputs.get("steps") or 0)
                self.arrival_s[req.id] = t
                self._apply(self.coord.submit(req, t))
            else:
                self._apply(self.coord.on_complete(payload, t))
