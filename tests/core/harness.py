"""Drive the coordinator by hand: dispatches "run" instantly when :meth:`Harness.step` says so."""

from legodiffusion.core.coordinator import Coordinator, Request
from legodiffusion.core.messages import Completion, ItemResult, TensorRef
from legodiffusion.core.policy import make_policy

LATENT = (1, 4, 8, 8)


class Harness:
    """Executes dispatches instantly and in order, recording every tensor made and freed."""

    def __init__(self, workers=2, policy="fcfs", **kw):
        self.coord = Coordinator(workers, make_policy(policy) if isinstance(policy, str) else policy, **kw)
        self.pending = []
        self.made, self.freed = set(), []
        self.log = []
        self.finished = {}
        self.dispatches = []

    def apply(self, actions):
        for o in actions.finished:
            self.finished[o.request_id] = o
        self.freed.extend(r.id for r in actions.frees)
        self.pending.extend(actions.dispatches)
        self.log.extend((d.worker, d.op, tuple((i.request_id, i.key) for i in d.items)) for d in actions.dispatches)
        self.dispatches.extend(actions.dispatches)

    def submit(self, rid, make, workflow="", deadline_s=None, now=0.0, tenant="default", priority=1, weight=1.0, **inputs):
        tmpl, bound = make(**inputs)
        req = Request(rid, tmpl, bound, workflow, now, deadline_s, tenant=tenant, priority=priority, weight=weight)
        self.apply(self.coord.submit(req, now))

    def complete(self, d, now=0.0):
        results = []
        for it in d.items:
            if it.values.get("fail"):
                results.append(ItemResult(error="boom"))
                continue
            outs = {p: TensorRef(tid, d.worker, 8, LATENT) for p, tid in it.output_ids.items()}
            self.made.update(r.id for r in outs.values())
            results.append(ItemResult(outs))
        self.apply(self.coord.on_complete(Completion(d.id, d.worker, results), now))

    def drain(self):
        while self.pending:
            self.complete(self.pending.pop(0))
