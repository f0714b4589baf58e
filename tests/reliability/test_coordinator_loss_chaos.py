"""Worker loss at random moments, over a simulated cluster driving the real coordinator: every
request must succeed with the values its lineage makes, no reader may find a value released or
written by the wrong node, and every value must be released at the end.

The simulation keeps the data plane's rules (a value lives on its producer's worker; a read from a
dead worker fails and names it in ``lost_peers``; a deferred read waits for its producer; abandoned
ids are never written) and the races of the live drivers: a death learnt late (from a reader's
failed pull, or a while after), a completion from a worker already declared lost, a replacement
worker joining mid-recovery, and a second loss during recovery. Pure and fast: no torch.
"""

import random
from collections import deque

import pytest
from PIL import Image

from legodiffusion import sd_txt2img
from legodiffusion.core.coordinator import Coordinator, Request
from legodiffusion.core.graph import FROM_NODE
from legodiffusion.core.messages import PENDING, Completion, ItemResult, TensorRef
from legodiffusion.core.policy import make_policy
from legodiffusion.ops import default_registry
from legodiffusion.workflow.expand import Expander, bind_inputs
from tests.core.test_scheduling_decisions import sd_maker


def sd_maker_cn():
    ex = Expander(sd_txt2img("sd15", name="sd-cn", controlnets=("cn",)), default_registry())
    return lambda **inputs: (ex.template(b := bind_inputs(ex.spec, {"prompt": "x", **inputs})), b)


pytestmark = pytest.mark.reliability
SD, CN = sd_maker(), sd_maker_cn()


class Cluster:
    """Workers as FIFO queues of dispatches, run one at a time in a seeded random order."""

    def __init__(self, rng: random.Random, workers: int, policy: str) -> None:
        self.rng = rng
        self.coord = Coordinator(workers, make_policy(policy))
        self.queues: dict[int, deque] = {w: deque() for w in range(workers)}
        self.dead: set[int] = set()  # killed; the coordinator may not know yet
        self.store: dict[int, tuple[tuple, int]] = {}  # id -> (what made it: request, node, port; holder)
        self.tombstones: set[int] = set()  # released before written, or abandoned: a write is dropped
        self.templates: dict[int, object] = {}
        self.finished: dict[int, object] = {}
        self.values: dict[int, dict] = {}  # request -> its output tags
        self.late: list[Completion] = []  # completions still to arrive from killed workers
        self.joining: list[int] = []
        self.problems: list[str] = []
        self.progress: dict[int, int] = {}  # nodes reported done, by request

    # -- the driver -----------------------------------------------------------------------

    def apply(self, actions) -> None:
        for rid in actions.progressed:
            self.progress[rid] = self.progress.get(rid, 0) + 1
        for o in actions.finished:
            self.finished[o.request_id] = o
            if o.outputs:
                self.values[o.request_id] = {name: self.read_output(ref) for name, ref in o.outputs.items()}
        for ref in actions.frees:
            if self.store.pop(ref.id, None) is None:
                self.tombstones.add(ref.id)
        for tid in actions.abandoned:
            self.store.pop(tid, None)
            self.tombstones.add(tid)
        for d in actions.dispatches:
            if d.worker not in self.dead:
                self.queues[d.worker].append(d)

    def read_output(self, ref: TensorRef):
        tag, holder = self.store.get(ref.id, (None, None))
        if tag is None or holder in self.dead:
            self.problems.append(f"final output {ref.id} is gone")
        return tag

    def submit(self, rid: int, steps: int, controlnet: bool) -> None:
        if controlnet:  # the base model reads the ControlNet's residuals as a deferred input
            tmpl, bound = CN(steps=steps, seed=rid, control_image=Image.new("RGB", (8, 8)), control_scale=0.5)
        else:
            tmpl, bound = SD(steps=steps, seed=rid)
        self.templates[rid] = tmpl
        self.apply(self.coord.submit(Request(rid, tmpl, bound), 0.0))

    def lose(self, worker: int) -> None:
        """The driver learns that ``worker`` died (as Engine.lose_worker)."""
        self.apply(self.coord.on_worker_lost(worker, 0.0))

    def complete(self, c: Completion) -> None:
        for peer in c.lost_peers:  # as Engine._on_completion: learn of the death first
            self.lose(peer)
        self.apply(self.coord.on_complete(c, 0.0))

    # -- the workers ----------------------------------------------------------------------

    def runnable(self) -> list[int]:
        return [w for w, q in self.queues.items() if q and w not in self.dead and self.ready(q[0])]

    def ready(self, d) -> bool:
        """A deferred input not written yet blocks its reader (unless it never will be)."""
        for it in d.items:
            for ref in it.refs.values():
                if ref.worker == PENDING and ref.id not in self.store and ref.id not in self.tombstones and ref.source not in self.dead:
                    return False
        return True

    def execute(self, w: int) -> Completion:
        d = self.queues[w].popleft()
        results, lost_peers = [], []
        for it in d.items:
            tmpl = self.templates[it.request_id]
            port_of = {inp.port: (inp.node, inp.name) for inp in tmpl.nodes[it.node].inputs if inp.kind == FROM_NODE}
            error = None
            for port, ref in it.refs.items():
                holder = ref.source if ref.worker == PENDING else ref.worker
                tag, _ = self.store.get(ref.id, (None, None))
                if holder in self.dead:
                    lost_peers.append(holder)
                    error = f"input {ref.id} was held by worker {holder}, which is lost"
                elif tag is None:
                    error = f"value {ref.id} is not here: released, or its producer failed or was lost"
                elif tag != (it.request_id, *port_of[port]):
                    self.problems.append(f"request {it.request_id} node {it.key} read {tag} for {port_of[port]}")
                if error:
                    break
            if error:
                results.append(ItemResult(error=error))
                continue
            outs = {}
            for port, tid in it.output_ids.items():
                outs[port] = TensorRef(tid, w, 8, (1, 4, 8, 8))
                if tid in self.tombstones:
                    self.tombstones.discard(tid)
                else:
                    self.store[tid] = ((it.request_id, it.node, port), w)
            results.append(ItemResult(outs))
        return Completion(d.id, w, results, lost_peers=sorted(set(lost_peers)))

    def kill(self, w: int) -> None:
        """``w`` dies: its values and queued work are gone; the dispatch it was running may still
        report (a local thread that finished just as it was killed)."""
        self.dead.add(w)
        for tid in [t for t, (_, h) in self.store.items() if h == w]:
            del self.store[tid]
        q = self.queues[w]
        if q and self.rng.random() < 0.3:
            d = q.popleft()
            results = [ItemResult({p: TensorRef(t, w, 8, (1, 4, 8, 8)) for p, t in it.output_ids.items()}) for it in d.items]
            self.late.append(Completion(d.id, w, results))
        q.clear()

    def join(self) -> None:
        """A replacement worker is added (it takes work once activated, a few events later)."""
        wid = self.coord.add_worker()
        self.queues[wid] = deque()
        self.joining.append(wid)


def chaos(seed: int, policy: str, workers: int, requests: int, losses: int) -> Cluster:
    rng = random.Random(seed)
    c = Cluster(rng, workers, policy)
    for rid in range(requests):
        c.submit(rid, steps=rng.choice([2, 3, 4]), controlnet=rng.random() < 0.4)
    kills = sorted(rng.sample(range(1, 60), losses))
    unknown: dict[int, int] = {}  # killed worker -> events until its watch reports it
    events = 0
    while len(c.finished) < requests:
        events += 1
        assert events < 20_000, "the simulation does not end"
        if kills and events >= kills[0]:
            kills.pop(0)
            alive = [w for w in c.queues if w not in c.dead and c.coord.workers[w].alive and not c.coord.workers[w].draining]
            if len(alive) > 1 or c.joining:
                victim = rng.choice(alive)
                c.kill(victim)
                unknown[victim] = rng.choice([0, 0, 1, 3, 8])
                if rng.random() < 0.5:
                    c.join()
        for w, left in list(unknown.items()):
            if left == 0 or not c.coord.workers[w].alive:
                del unknown[w]
                c.lose(w)
            else:
                unknown[w] = left - 1
        if c.late and not c.coord.workers[c.late[0].worker].alive and rng.random() < 0.3:
            c.complete(c.late.pop(0))  # from a worker already declared lost
            continue
        if c.joining and rng.random() < 0.2:
            c.apply(c.coord.activate_worker(c.joining.pop(0), 0.0))
            continue
        ready = c.runnable()
        if not ready:
            if unknown:
                continue
            if c.late and not c.coord.workers[c.late[0].worker].alive:
                c.complete(c.late.pop(0))
                continue
            if c.joining:
                c.apply(c.coord.activate_worker(c.joining.pop(0), 0.0))
                continue
            raise AssertionError(
                f"seed {seed}: stuck with {len(c.finished)}/{requests} finished, queued {[len(q) for q in c.queues.values()]}"
            )
        c.complete(c.execute(rng.choice(ready)))
    return c


@pytest.mark.parametrize("policy", ["default", "fcfs", "bundle"])
@pytest.mark.parametrize("workers,losses", [(2, 1), (3, 2)])
def test_every_request_survives_worker_loss_at_random_moments(policy, workers, losses):
    for seed in range(150):
        c = chaos(seed, policy, workers, requests=5, losses=losses)
        bad = {rid: (o.status, o.error) for rid, o in c.finished.items() if o.status != "succeeded"}
        assert not bad, f"seed {seed}: {bad}"
        assert not c.problems, f"seed {seed}: {c.problems}"
        for rid, tags in c.values.items():
            tmpl = c.templates[rid]
            assert tags == {name: (rid, *k) for name, k in tmpl.outputs.items()}, f"seed {seed}"
        live = {tid: v for tid, v in c.store.items() if v[1] not in c.dead}
        assert not live, f"seed {seed}: values never released: {live}"
        assert not c.coord.requests and not c.coord.inflight
        assert c.coord.stats.violations == 0
        assert all(c.progress[rid] == len(t.nodes) for rid, t in c.templates.items()), "progress counts each node once"
