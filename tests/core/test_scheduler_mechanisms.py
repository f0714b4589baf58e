"""The scheduler's mechanisms beyond ordering, each checked on the dispatches the coordinator
emits, with its switch off as the contrast: where glue runs, how large a batch grows, what a
placement destroys, when work waits for a holder (and a replica is loaded meanwhile), the worker an
urgent request keeps, replicas ahead of demand, least-laxity re-evaluation (the default order) and admission that
protects admitted requests."""

import random

from legodiffusion.core.cost import DefaultCost
from legodiffusion.core.messages import Dispatch
from legodiffusion.core.policy import MicroServingPolicy
from legodiffusion.core.ready import ReadyQueue
from legodiffusion.models.store import HostCache, ModelCatalog, ResidentModels
from legodiffusion.ops import default_registry
from legodiffusion.runtime.dataplane import LocalDataPlane
from legodiffusion.runtime.execute import execute
from tests.core.harness import Harness
from tests.core.test_scheduling_decisions import sd_maker

SD15 = [("sd15", c, None) for c in ("text_encoder", "denoiser", "vae", "config")]


class LinearCost(DefaultCost):
    """A compute-bound device: a batch of b costs b single calls (the reference H100 profile)."""

    def exec_s(self, op, mode, model, batch, px):
        return super().exec_s(op, mode, model, 1, px) * batch


class MemoryCost(DefaultCost):
    """A device of 100 bytes on which every weighted component takes 30."""

    memory_bytes = 100

    def weight_bytes(self, model, component):
        return 0 if component == "config" else 30


def heavy(h, ops=("encode_prompt", "denoise", "vae_decode")):
    return [d for d in h.dispatches if d.op in ops]


def test_glue_runs_on_the_input_holder_that_can_start_it_first():
    h = Harness(workers=2, policy="default", cost=DefaultCost(heavy_s=1.0))
    h.submit(1, sd_maker(), steps=2, guidance_scale=1.0)
    h.complete(h.pending.pop(0))  # init_latents: the first latents are on worker 0
    h.coord.pool.reserve(0, 10.0, False)  # then worker 0 gets a 10 s queue
    h.drain()
    first_step = next(d for d in h.dispatches if d.op == "sampler_step")
    # its inputs: the latents on busy worker 0, the noise prediction on worker 1, which is free
    assert next(d for d in h.dispatches if d.op == "denoise").worker == 1
    assert first_step.worker == 1
    assert h.finished[1].status == "succeeded"


def saturated(policy, cost):
    h = Harness(workers=2, policy=policy, cost=cost, slots_per_worker=1)
    make = sd_maker()
    for rid in range(12):
        h.submit(rid, make, steps=2)
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    return {len(d.items) for d in heavy(h, ("denoise",))}


def test_a_batch_grows_only_while_it_saves_time_per_item():
    assert saturated(MicroServingPolicy(), LinearCost(heavy_s=1.0)) == {1}, "compute-bound: batching only delays"
    assert max(saturated(MicroServingPolicy(batch_sizing=False), LinearCost(heavy_s=1.0))) > 1
    assert max(saturated(MicroServingPolicy(), DefaultCost(heavy_s=1.0))) > 1, "sublinear: batches still form"


def first_encode_worker(policy):
    h = Harness(workers=2, policy=policy, cost=MemoryCost())
    for comp in (("xl", "text_encoder", None), ("xl", "denoiser", None), ("xl", "vae", None)):
        h.coord.note_resident(0, comp)  # worker 0 is full of another model; worker 1 holds no weights
    for w in (0, 1):
        h.coord.note_resident(w, ("sd15", "config", None))  # (no bytes: the glue loads nothing)
    h.coord.pool.reserve(1, 0.01, False)  # worker 1 has a little queued: more than the glue on worker 0
    h.submit(1, sd_maker(), steps=1, guidance_scale=1.0)
    return next(d for d in h.dispatches if d.op == "encode_prompt").worker


def test_placement_counts_what_a_load_evicts():
    assert first_encode_worker(MicroServingPolicy()) == 1
    assert first_encode_worker(MicroServingPolicy(evictions=False)) == 0  # equal costs: the lower id


def loads_elsewhere(policy, workers=3):
    h = Harness(workers=workers, policy=policy, cost=DefaultCost(heavy_s=0.1, load_s=5.0), slots_per_worker=1)
    for comp in SD15:
        h.coord.note_resident(0, comp)
    make = sd_maker()
    h.submit(1, make, steps=1, guidance_scale=1.0)  # its prompt encoding takes worker 0's one slot
    h.submit(2, make, steps=1, guidance_scale=1.0)
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    return {d.worker for d in heavy(h)} - {0}


def test_work_waits_for_a_busy_holder_rather_than_load_for_longer():
    assert loads_elsewhere(MicroServingPolicy()) == set()
    assert loads_elsewhere(MicroServingPolicy(evictions=False))


def test_the_only_free_worker_does_not_load_what_a_busy_holder_finishes_sooner():
    # one candidate is still weighed against waiting (it once went unweighed: a 0.75 s load
    # between two 0.1 s steps of a sub-second request)
    assert loads_elsewhere(MicroServingPolicy(), workers=2) == set()
    assert loads_elsewhere(MicroServingPolicy(evictions=False), workers=2) == {1}


def test_work_waiting_for_a_busy_holder_gets_a_replica_loaded_meanwhile():
    def prefetched(policy):
        h = Harness(workers=2, policy=policy, cost=MemoryCost(heavy_s=0.1), slots_per_worker=1)
        for comp in SD15:
            h.coord.note_resident(0, comp)
        make = sd_maker()
        h.submit(1, make, steps=1, guidance_scale=1.0)  # its prompt encoding takes worker 0's one slot
        h.submit(2, make, steps=1, guidance_scale=1.0)  # far too little demand for a second replica
        return [(d.worker, d.component) for d in h.dispatches if not d.items]

    assert prefetched(MicroServingPolicy()) == [(1, "text_encoder")], "the idle worker loads what work waits for"
    assert prefetched(MicroServingPolicy(prefetch=False)) == []


def urgent_then_loose(policy):
    """Request 1 (deadline 0.4 s, so little slack) runs its first step; request 2 (loose) arrives:
    which of request 2's calls go to the one worker while request 1's step runs there."""
    h = Harness(workers=1, policy=policy, cost=DefaultCost(heavy_s=0.02))
    for comp in SD15:
        h.coord.note_resident(0, comp)
    make = sd_maker()
    h.submit(1, make, deadline_s=0.4, steps=3, guidance_scale=1.0)
    while not any(d.op == "denoise" for d in h.pending):
        h.complete(h.pending.pop(0))
    h.submit(2, make, deadline_s=1000.0, steps=1, guidance_scale=1.0, seed=2)
    slipped_in = [d.op for d in h.pending if not d.light and any(i.request_id == 2 for i in d.items)]
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    return slipped_in, list(h.finished)


def test_an_urgent_request_keeps_its_worker_free_of_later_requests_calls():
    assert urgent_then_loose(MicroServingPolicy()) == ([], [1, 2]), "request 2 waits; request 1 finishes first"
    assert urgent_then_loose(MicroServingPolicy(urgent_s=0)) == (["encode_prompt"], [2, 1])


def test_idle_workers_prefetch_components_whose_demand_exceeds_their_replicas():
    h = Harness(workers=3, policy="default", cost=MemoryCost(heavy_s=1.0))
    for comp in SD15:
        h.coord.note_resident(0, comp)
    make = sd_maker()
    for rid in range(4):  # 4 x 2 x 10 steps x 1 s of denoiser work in the 10 s window: 8 s/s
        h.submit(rid, make, steps=10)
    prefetches = [d for d in h.dispatches if not d.items]
    assert prefetches and {d.worker for d in prefetches} <= {1, 2}
    assert ("sd15", "denoiser", None) in {(d.model, d.component, d.scope) for d in prefetches}
    assert h.coord.stats.prefetches == len(prefetches)
    h.drain()  # a prefetch completes like any dispatch and the requests still finish
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    assert h.coord.stats.prefetches == len([d for d in h.dispatches if not d.items])

    quiet = Harness(workers=3, policy=MicroServingPolicy(prefetch=False), cost=MemoryCost(heavy_s=1.0))
    for rid in range(4):
        quiet.submit(rid, make, steps=10)
    assert all(d.items for d in quiet.dispatches)


def test_a_live_worker_runs_a_prefetch_as_a_load(sd15):
    models = ResidentModels(HostCache(ModelCatalog({"sd15": sd15})), "cpu")
    d = Dispatch(1, 0, "prefetch", "default", "sd15", "denoiser", [], False, None)
    c = execute(d, 0, default_registry(), models, LocalDataPlane())
    assert c.results == [] and c.loaded == [("sd15", "denoiser", None)]
    assert ("sd15", "denoiser", None) in models.keys()
    missing = Dispatch(2, 0, "prefetch", "default", "nope", "denoiser", [], False, None)
    c = execute(missing, 0, default_registry(), models, LocalDataPlane())
    assert c.evicted == [("nope", "denoiser", None)], "a failed prefetch reports the component not held"


def test_least_laxity_re_evaluates_as_a_request_progresses():
    for ordering, moves in (("laxity", True), ("slack", False)):
        h = Harness(workers=1, policy=MicroServingPolicy(ordering=ordering), cost=DefaultCost(heavy_s=1.0))
        h.submit(1, sd_maker(), deadline_s=1000.0, steps=3, guidance_scale=1.0)
        live = h.coord.requests[1]
        before = live.priority
        for _ in range(3):
            h.complete(h.pending.pop(0))
        assert (live.priority != before) is moves
        assert live.priority[1] == 1000.0 - (live.remaining_s if moves else live.solo_s)


def test_admission_protects_requests_already_admitted():
    h = Harness(workers=1, policy="default", cost=DefaultCost(heavy_s=1.0))
    make = sd_maker()
    h.submit(1, make, deadline_s=12.0, steps=4, guidance_scale=1.0)  # about 6.5 s of work
    assert 1 in h.coord.requests
    # a short request with an earlier latest start fits its own deadline, but the two together
    # cannot both finish by request 1's deadline on one worker
    h.submit(2, make, deadline_s=8.0, steps=4, guidance_scale=1.0)
    assert h.finished[2].status == "rejected"
    assert "would make admitted requests miss" in h.finished[2].error


class LoraCost(DefaultCost):
    lora_load_s = 5.0  # attaching a LoRA a worker does not have yet


def patched_worker(attached_on):
    h = Harness(workers=2, policy="default", cost=LoraCost(heavy_s=0.1))
    for w in (0, 1):
        for comp in SD15:
            h.coord.note_resident(w, comp)
    for comp in SD15[:2]:  # text encoder and denoiser
        h.coord.pool.patched(attached_on, comp, ("style",))
    h.submit(1, sd_maker(), steps=1, guidance_scale=1.0, loras="style")
    h.drain()
    assert h.finished[1].status == "succeeded"
    return {d.worker for d in heavy(h, ("encode_prompt", "denoise"))}


def test_placement_prefers_the_worker_with_the_requests_loras_attached():
    assert patched_worker(0) == {0}
    assert patched_worker(1) == {1}


def test_a_plan_places_nodes_in_priority_order_across_classes():
    """Three prompts wait for one worker's two slots: requests 1 and 3 of one model, request 2 of
    another, deadlines in id order. The slots go to requests 1 and 2: the class whose head is
    first does not also place its second node before the other class's first."""
    h = Harness(workers=1, policy=MicroServingPolicy(admission=False), cost=LinearCost(heavy_s=1.0))
    h.coord.drain_worker(0)
    for rid, model in ((1, "sd15"), (2, "other"), (3, "sd15")):
        h.submit(rid, sd_maker(model=model), deadline_s=10.0 * rid, steps=1, guidance_scale=1.0)
    assert not heavy(h)
    h.apply(h.coord.activate_worker(0, 0.0))
    assert sorted(i.request_id for d in heavy(h) for i in d.items) == [1, 2]
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}


def test_a_ready_queue_walks_its_nodes_in_pop_order_without_popping():
    rng = random.Random(7)
    shares = {"a": (1, 0.5), "b": (1, 0.2), "c": (0, 0.9)}  # rank first, then share
    q = ReadyQueue(lambda account: shares[account])
    for i in range(200):
        q.push((0, rng.random(), i), i, i, rng.choice("abc"))
    walked = list(q.ordered())
    assert len(walked) == 200 and len(q) == 200
    popped = []
    while q:
        account = q._first()
        popped.append((shares[account], *q.pop()[:2]))
    assert popped == walked
