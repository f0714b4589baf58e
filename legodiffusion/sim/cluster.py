"""A cluster on a virtual clock, driving the real coordinator and policies.

Only the workers and the clock are simulated: each simulated worker runs its dispatches in order,
taking the time the cost model (profiles) gives, plus the load time of components it does not
hold. Scheduling, batching, placement, residency decisions and admission are the serving code's.
"""

from __future__ import annotations

import heapq
import itertools
from collections import OrderedDict
from collections.abc import Callable
from dataclasses import dataclass, field

from legodiffusion.core.coordinator import Coordinator, Request, pixels
from legodiffusion.core.cost import CostModel
from legodiffusion.core.messages import Actions, Completion, Dispatch, ItemResult, RequestOutcome, TensorRef


@dataclass
class SimWorker:
    id: int
    budget_bytes: int | None = None
    busy_until: float = 0.0
    busy_s: float = 0.0
    resident: OrderedDict = field(default_factory=OrderedDict)  # key -> bytes, LRU order
    used_bytes: int = 0
    loads: int = 0
    evictions: int = 0
    patches: set = field(default_factory=set)  # LoRAs attached on this worker

    def admit(self, key: tuple, nbytes: int) -> tuple[bool, list[tuple]]:
        """Make ``key`` resident; returns (was it loaded, what was evicted)."""
        if key in self.resident:
            self.resident.move_to_end(key)
            return False, []
        evicted = []
        while self.budget_bytes is not None and self.resident and self.used_bytes + nbytes > self.budget_bytes:
            old, old_bytes = self.resident.popitem(last=False)
            self.used_bytes -= old_bytes
            evicted.append(old)
        self.resident[key] = nbytes
        self.used_bytes += nbytes
        self.loads += 1
        self.evictions += len(evicted)
        return True, evicted


#: share of a base-model call left to run once its deferred ControlNet residuals arrive (the
#: UNet reads them after its down blocks; DiTs add them block by block)
DEFERRED_TAIL = 0.5


def _sim_ref(tensor_id: int, worker: int, px: int | None) -> TensorRef:
    # stand-in metadata: one fp32 latent with 4 channels at 1/8 of the image side
    px = px or 512 * 512
    return TensorRef(tensor_id, worker, px // 4, (1, px), "float32")


class Simulator:
    """Event-driven: request arrivals and dispatch completions in virtual time."""

    def __init__(self, coordinator: Coordinator, cost: CostModel, budget_bytes: int | None = None, overhead_s: float = 0.0) -> None:
        self.coord = coordinator
        self.cost = cost
        self.overhead_s = overhead_s  # per dispatch: the live runtime's hand-offs
        self.workers = [SimWorker(i, budget_bytes) for i in range(len(coordinator.workers))]
        self.now = 0.0
        self._events: list = []
        self._seq = itertools.count()
        self._px: dict[int, int | None] = {}
        self.outcomes: dict[int, RequestOutcome] = {}
        self.finish_s: dict[int, float] = {}
        self.arrival_s: dict[int, float] = {}
        self._ready_at: dict[int, float] = {}  # when each output exists (for deferred readers)
        self.dispatched_nodes = 0
        self.dispatches = 0
        self.on_finish: Callable[[RequestOutcome, float], None] | None = None

    def submit_at(self, t: float, req: Request) -> None:
        heapq.heappush(self._events, (t, next(self._seq), "arrive", req))

    def _apply(self, actions: Actions) -> None:
        for o in actions.finished:
            self.outcomes[o.request_id] = o
            self.finish_s[o.request_id] = self.now
            if self.on_finish is not None:
                self.on_finish(o, self.now)
        for d in actions.dispatches:
            self._start(d)

    def _start(self, d: Dispatch) -> None:
        w = self.workers[d.worker]
        px = self._px.get(d.items[0].request_id)
        t = self.cost.exec_s(d.op, d.mode, d.model, len(d.items), px) + self.overhead_s
        loaded, evicted = False, []
        if d.component is not None:
            key = (d.model, d.component, d.scope)
            loaded, evicted = w.admit(key, self.cost.weight_bytes(d.model, d.component))
            if loaded:
                t += self.cost.load_s(d.model, d.component)
        patches = d.items[0].values.get("loras")
        if patches and d.component in ("denoiser", "text_encoder"):
            for name in patches.split(","):
                key = (d.model, d.component, name.split(":")[0])
                if key not in w.patches:
                    w.patches.add(key)
                    t += getattr(self.cost, "lora_load_s", 0.3)
        moved = sum(ref.nbytes for it in d.items for ref in it.refs.values() if ref.worker not in (d.worker, -1))
        if moved:
            t += self.cost.transfer_s(moved)
        begin = max(self.now, w.busy_until)
        end = begin + t
        waits = [self._ready_at[ref.id] for it in d.items for ref in it.refs.values() if ref.worker == -1 and ref.id in self._ready_at]
        if waits:  # deferred inputs: the rest of the call (after the down blocks) waits for them
            end = max(end, max(waits) + DEFERRED_TAIL * t)
        w.busy_until = end
        w.busy_s += t
        for it in d.items:
            for tid in it.output_ids.values():
                self._ready_at[tid] = end
        self.dispatches += 1
        self.dispatched_nodes += len(d.items)
        results = [ItemResult({p: _sim_ref(tid, d.worker, px) for p, tid in it.output_ids.items()}) for it in d.items]
        c = Completion(d.id, d.worker, results, begin, w.busy_until, [(d.model, d.component, d.scope)] if loaded else [], evicted)
        heapq.heappush(self._events, (w.busy_until, next(self._seq), "complete", c))

    def run(self, until_s: float = float("inf"), max_events: int | None = None) -> None:
        n = 0
        while self._events and (max_events is None or n < max_events):
            t, _, kind, payload = self._events[0]
            if t > until_s:
                break
            heapq.heappop(self._events)
            self.now = t
            n += 1
            if kind == "arrive":
                req = payload
                self._px[req.id] = pixels(req.inputs)
                self.arrival_s[req.id] = t
                self._apply(self.coord.submit(req, t))
            else:
                self._apply(self.coord.on_complete(payload, t))
