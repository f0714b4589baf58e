"""The monolithic baseline's semantics: whole requests on one replica, one FCFS queue per workflow."""

from legodiffusion.core.bundle import BundlePolicy, allocate, sticky
from legodiffusion.core.coordinator import Coordinator, Request
from legodiffusion.core.messages import Completion, ItemResult, TensorRef
from tests.core.test_scheduling_decisions import sd_maker


class Driver:
    def __init__(self, workers, policy):
        self.coord = Coordinator(workers, policy, slots_per_worker=2)
        self.pending, self.dispatches, self.finished = [], [], {}

    def apply(self, actions):
        self.pending.extend(actions.dispatches)
        self.dispatches.extend(actions.dispatches)
        self.finished.update({o.request_id: o for o in actions.finished})

    def submit(self, rid, workflow, make, **inputs):
        tmpl, bound = make(**inputs)
        self.apply(self.coord.submit(Request(rid, tmpl, bound, workflow, float(rid)), float(rid)))

    def complete_on(self, worker=None):
        """Complete the oldest pending dispatch (of ``worker``, when given); False when none."""
        d = next((d for d in self.pending if worker is None or d.worker == worker), None)
        if d is None:
            return False
        self.pending.remove(d)
        results = [ItemResult({p: TensorRef(t, d.worker, 8, (1, 4, 8, 8)) for p, t in it.output_ids.items()}) for it in d.items]
        self.apply(self.coord.on_complete(Completion(d.id, d.worker, results), 0.0))
        return True


def test_a_replica_runs_one_request_at_a_time_to_completion():
    drv = Driver(2, BundlePolicy(replicas={"wf": [0, 1]}))
    make = sd_maker("wf")
    for rid in range(1, 6):
        drv.submit(rid, "wf", make, steps=3)
    while drv.complete_on():
        pass
    assert {o.status for o in drv.finished.values()} == {"succeeded"} and len(drv.finished) == 5
    for w in (0, 1):
        order = [it.request_id for d in drv.dispatches if d.worker == w for it in d.items]
        runs = [r for i, r in enumerate(order) if i == 0 or order[i - 1] != r]
        assert len(runs) == len(set(runs)), f"worker {w} interleaved requests step by step: {runs}"
    guided = [d for d in drv.dispatches if d.op == "denoise"]
    assert all(len(d.items) == 2 and len({it.request_id for it in d.items}) == 1 for d in guided), (
        "both guidance branches of a step in one call, as inside a pipeline call"
    )


def test_a_request_waits_in_a_shared_queue_for_the_first_free_replica():
    drv = Driver(2, BundlePolicy(replicas={"wf": [0, 1]}))
    make = sd_maker("wf")
    for rid in (1, 2, 3):
        drv.submit(rid, "wf", make, steps=2)
    started = {it.request_id for d in drv.dispatches for it in d.items}
    assert started == {1, 2}, "the third request is held, not pinned to a busy replica"
    while 2 not in drv.finished:  # worker 1's request finishes first
        assert drv.complete_on(worker=1 if any(d.worker == 1 for d in drv.pending) else None)
    assert 1 not in drv.finished
    third = {d.worker for d in drv.dispatches for it in d.items if it.request_id == 3}
    assert third == {1}, "the held request starts on the replica that freed first"


def test_shared_gpu_serves_the_oldest_request_of_its_workflows():
    policy = BundlePolicy(replicas={"a": [0], "b": [0, 1]})
    drv = Driver(2, policy)
    ma, mb = sd_maker("a"), sd_maker("b")
    drv.submit(1, "b", mb, steps=2)  # worker 0 (first free replica of b)
    drv.submit(2, "b", mb, steps=2)  # worker 1
    drv.submit(3, "a", ma, steps=2)  # held: a's only replica is busy
    drv.submit(4, "b", mb, steps=2)  # held
    while 1 not in drv.finished:
        drv.complete_on(worker=0)
    after = [it.request_id for d in drv.dispatches if d.worker == 0 for it in d.items if it.request_id in (3, 4)]
    assert after and after[0] == 3, "worker 0 takes the older held request (a's), not b's"


def test_sticky_reallocation_moves_the_fewest_gpus():
    old = [{"a"}, {"a"}, {"b"}, {"c", "d"}]
    new = [{"b"}, {"b"}, {"a"}, {"c", "d"}]
    laid = sticky(old, new)
    assert sorted(map(sorted, laid)) == sorted(map(sorted, new))
    assert sum(1 for x, y in zip(old, laid) if x != y) == 1, "only one 'a' GPU becomes a 'b' GPU"


def test_allocation_is_proportional_with_largest_shares_first():
    bins = allocate({"big": 3.0, "mid": 1.5, "small": 0.5}, 5)
    count = {k: sum(1 for b in bins if k in b) for k in ("big", "mid", "small")}
    assert count["big"] == 3 and count["mid"] == 2 and count["small"] == 1
    assert {"mid", "small"} in bins, "the remainders 0.5 + 0.5 share one GPU"
