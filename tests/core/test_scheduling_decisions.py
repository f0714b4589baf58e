"""Scheduling decisions, checked on the dispatches the coordinator emits (no models, no threads)."""

from legodiffusion.core.cost import DefaultCost
from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.expand import Expander, bind_inputs
from tests.core.harness import Harness


def sd_maker(name="sd-txt2img", model="sd15"):
    ex = Expander(sd_txt2img(model, name=name), default_registry())

    def make(**inputs):
        bound = bind_inputs(ex.spec, {"prompt": "x", **inputs})
        return ex.template(bound), bound

    return make


def first_step_branches(h, rid):
    return [
        d
        for d in h.dispatches
        if d.op == "denoise" and any(i.request_id == rid and i.key.startswith("guidance.denoise[0].") for i in d.items)
    ]


def test_idle_workers_spread_the_two_guidance_branches():
    h = Harness(workers=2, policy="default")
    h.submit(1, sd_maker(), steps=2)
    h.drain()
    branches = first_step_branches(h, 1)
    assert len(branches) == 2, "latency mode: one branch per dispatch"
    assert {d.worker for d in branches} == {0, 1}, "the branches run on different workers"
    assert h.finished[1].status == "succeeded"


def test_saturated_workers_batch_the_two_branches_together():
    h = Harness(workers=2, policy="default", slots_per_worker=1)
    make = sd_maker()
    for rid in range(12):
        h.submit(rid, make, steps=2)
    h.drain()
    packed = [d for d in h.dispatches if d.op == "denoise" and len(d.items) > 1]
    assert packed, "throughput mode batches"
    same_request_pairs = [
        d
        for d in packed
        if any(
            {f"{k}.unet_cond", f"{k}.unet_uncond"} <= {i.key for i in d.items if i.request_id == r}
            for r in {i.request_id for i in d.items}
            for k in ("guidance.denoise[0]", "guidance.denoise[1]")
        )
    ]
    assert same_request_pairs, "both branches of one step in one batch on one worker"
    assert {o.status for o in h.finished.values()} == {"succeeded"}


def test_placement_prefers_the_worker_holding_the_model():
    h = Harness(workers=3, policy="default", cost=DefaultCost(load_s=5.0))
    h.coord.note_resident(2, ("sd15", "denoiser", None))
    h.coord.note_resident(2, ("sd15", "text_encoder", None))
    h.submit(1, sd_maker(), steps=1, guidance_scale=1.0)
    h.drain()
    heavy = [d for d in h.dispatches if d.op in ("denoise", "encode_prompt")]
    assert heavy and {d.worker for d in heavy} == {2}


def test_busy_workers_are_skipped_so_work_waits_centrally():
    h = Harness(workers=2, policy="default", cost=DefaultCost(heavy_s=1.0), queue_threshold_s=0.5, slots_per_worker=4)
    make = sd_maker()
    for rid in range(6):
        h.submit(rid, make, steps=2)
    heavy_per_worker = {w.id: w.inflight for w in h.coord.workers}
    # each worker took one 1 s dispatch, then its reserved queue was over the threshold
    assert heavy_per_worker == {0: 1, 1: 1}
    assert sum(len(q) for q in h.coord.queues.values()) > 0


def test_bundle_pins_each_request_to_one_replica_and_never_mixes_workflows():
    h = Harness(workers=2, policy="bundle", slots_per_worker=1)
    a, b = sd_maker("wf-a"), sd_maker("wf-b")
    for rid in range(8):
        h.submit(rid, a if rid % 2 else b, workflow="wf-a" if rid % 2 else "wf-b", steps=2)
    h.drain()
    worker_of = {}
    for d in h.dispatches:
        for it in d.items:
            worker_of.setdefault(it.request_id, set()).add(d.worker)
        assert len({it.request_id % 2 for it in d.items}) == 1, "a batch never mixes workflows"
        assert d.scope in ("wf-a", "wf-b"), "each workflow uses its own model copy"
    assert all(len(ws) == 1 for ws in worker_of.values())
    assert {next(iter(worker_of[r])) for r in range(0, 8, 2)} != {next(iter(worker_of[r])) for r in range(1, 8, 2)}


def test_random_placement_completes_everything():
    h = Harness(workers=3, policy="random")
    make = sd_maker()
    for rid in range(5):
        h.submit(rid, make, steps=2)
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    assert sorted(h.freed) == sorted(h.made)


def test_admission_rejects_impossible_deadlines_and_admits_loose_ones():
    h = Harness(workers=2, policy="default", cost=DefaultCost(heavy_s=0.1))
    make = sd_maker()
    h.submit(1, make, deadline_s=0.5, now=0.0, steps=10)  # ~2.3 s of work
    h.submit(2, make, deadline_s=3.0, now=0.0, steps=10)
    assert h.finished[1].status == "rejected" and h.finished[1].error.startswith("SLO_REJECTED")
    assert 2 not in h.finished
    # request 2 (2.3 s of work, latest start 0.7 s) runs before request 3 (0.5 s of work, latest
    # start 0.7 s, later arrival): 1.15 s of work per worker ahead of it is more than its slack
    h.submit(3, make, deadline_s=1.2, now=0.0, steps=1)
    assert h.finished[3].status == "rejected"
    # with a later deadline, request 3 would be ordered after request 2 and still fit
    h.submit(4, make, deadline_s=5.0, now=0.0, steps=1)
    assert 4 not in h.finished
    h.drain()
    assert h.finished[2].status == h.finished[4].status == "succeeded"


def test_fcfs_never_rejects():
    h = Harness(workers=1, policy="fcfs")
    h.submit(1, sd_maker(), deadline_s=1e-9, steps=2)
    h.drain()
    assert h.finished[1].status == "succeeded"


def test_slack_ordering_serves_the_tighter_deadline_first():
    h = Harness(workers=1, policy="default", slots_per_worker=1, cost=DefaultCost(heavy_s=0.001))
    make = sd_maker()
    h.submit(1, make, deadline_s=1000.0, steps=1, guidance_scale=1.0)  # occupies the worker
    h.submit(2, make, deadline_s=900.0, steps=1, guidance_scale=1.0, seed=2)
    h.submit(3, make, deadline_s=5.0, steps=1, guidance_scale=1.0, seed=3)
    h.drain()
    encodes = [i.request_id for d in h.dispatches if d.op == "encode_prompt" for i in d.items]  # in dispatch order
    assert encodes.index(3) < encodes.index(2)
