"""What the coordinator does with an approximate-cache hit: the iterations past the end of the
shortened schedule pass their values on without running anywhere, the request's remaining and whole work, its place
in the order and the queue's work lose what they would have cost, admission expects the skips a
workflow's lookups have made, and a lookup re-run after a worker loss keeps its answer."""

import pytest

from legodiffusion.core.messages import Completion, ItemResult, TensorRef
from legodiffusion.core.policy import MicroServingPolicy
from tests.core.harness import LATENT, Harness
from tests.core.test_scheduling_decisions import sd_maker

STEPS, SKIPPED = 10, 4
HIT = {"skipped": SKIPPED, "steps": STEPS, "state": 7, "from_request": 99, "similarity": 0.97}


class CacheHarness(Harness):
    """Every lookup answers ``answer``."""

    answer = HIT

    def complete(self, d):
        if d.op != "approx_lookup":
            return super().complete(d)
        results = []
        for it in d.items:
            outs = {p: TensorRef(tid, d.worker, 8, LATENT) for p, tid in it.output_ids.items()}
            self.made.update(r.id for r in outs.values())
            results.append(ItemResult(outs, notes={"approx": dict(self.answer)}))
        self.apply(self.coord.on_complete(Completion(d.id, d.worker, results), 0.0))

    def run_until(self, op):
        while self.pending:
            d = self.pending.pop(0)
            self.complete(d)
            if d.op == op:
                return d
        raise AssertionError(f"no {op} dispatch")


def items(h, op):
    return sum(len(d.items) for d in h.dispatches if d.op == op)


def test_a_hit_passes_the_last_iterations_through_and_takes_their_work_off():
    make = sd_maker()
    h = CacheHarness(workers=1)
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS)
    live = h.coord.requests[1]
    solo = live.solo_s
    iteration = [live.costs[n] for n in live.req.template.skips[next(iter(live.req.template.skips))][0]]
    h.run_until("approx_lookup")
    assert live.solo_s == pytest.approx(solo - SKIPPED * sum(iteration))
    left = [c for n, c in enumerate(live.costs) if n not in live.finished]
    assert live.remaining_s == pytest.approx(sum(left)) and h.coord.work_s == pytest.approx(live.remaining_s)
    h.drain()
    assert h.finished[1].status == "succeeded" and sorted(h.freed) == sorted(h.made)
    assert h.coord.stats.passed == SKIPPED * 4  # both branches, the step and the insert of each skipped iteration
    assert items(h, "denoise") == 2 * (STEPS - SKIPPED) and items(h, "sampler_step") == STEPS - SKIPPED
    assert items(h, "approx_insert") == STEPS - SKIPPED
    assert h.coord.approx.hit_rate("sd-txt2img") == 1.0 and h.coord.work_s == pytest.approx(0.0, abs=1e-12)


def test_a_miss_changes_nothing():
    make = sd_maker()
    h = CacheHarness(workers=1)
    h.answer = {"skipped": 0, "steps": STEPS}
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS)
    solo = h.coord.requests[1].solo_s
    h.run_until("approx_lookup")
    assert h.coord.requests[1].solo_s == solo
    h.drain()
    assert h.coord.stats.passed == 0 and items(h, "denoise") == 2 * STEPS


@pytest.mark.parametrize("ordering,work", [("laxity", "remaining_s"), ("slack", "solo_s")])
def test_ordering_knows_a_hit_shortens_a_request(ordering, work):
    make = sd_maker()
    h = CacheHarness(workers=1, policy=MicroServingPolicy("default", ordering=ordering))
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS, deadline_s=100.0)
    live = h.coord.requests[1]
    before = live.priority
    h.run_until("approx_lookup")
    assert live.priority[1] == pytest.approx(100.0 - getattr(live, work)) and live.priority[1] > before[1]  # it may start later now


@pytest.mark.parametrize("answer,admitted", [(HIT, True), ({"skipped": 0, "steps": STEPS}, False)])
def test_admission_counts_the_work_a_hit_took_off_an_admitted_request(answer, admitted):
    """A request fits behind an admitted one only because that one's lookup hit; a newcomer
    itself is weighed whole (a miss must fit)."""
    make = sd_maker()
    h = CacheHarness(workers=1, policy=MicroServingPolicy("default"))
    h.answer = answer
    costs = h.coord.node_costs(make(approx_cache=True, steps=STEPS)[0], None)
    solo = sum(costs)
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS, deadline_s=solo + 0.05)
    h.run_until("approx_lookup")
    ahead = h.coord.requests[1].remaining_s
    plain = sum(h.coord.node_costs(make(steps=STEPS)[0], None))
    saved = sum(costs[n] for it in h.coord.requests[1].req.template.skips[2][-SKIPPED:] for n in it)
    slack = (ahead if answer["skipped"] else ahead - saved) + saved / 2  # between the work ahead with and without the hit
    h.submit(2, make, workflow="sd-txt2img", steps=STEPS, deadline_s=plain + slack)
    assert (2 not in h.finished) == admitted
    if not admitted:
        assert h.finished[2].status == "rejected"


def test_a_lookup_rerun_after_a_worker_loss_keeps_its_answer():
    make = sd_maker()
    h = CacheHarness(workers=2)
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS)
    lookup = h.run_until("approx_lookup")
    h.answer = {"skipped": 0, "steps": STEPS}  # what a fresh lookup would now say
    h.apply(h.coord.on_worker_lost(lookup.worker, 0.0))
    again = h.run_until("approx_lookup")
    assert again.items[0].values["pinned"] == HIT["state"]
    h.drain()
    assert h.finished[1].status == "succeeded"
    assert sorted(h.freed) == sorted(h.made) and h.coord.approx.counts["sd-txt2img"].lookups == 1
    assert items(h, "denoise") >= 2 * (STEPS - SKIPPED) and h.coord.stats.passed == SKIPPED * 4


def test_values_passed_on_are_redone_from_lineage_when_their_worker_is_lost():
    """The decoder reads the last real step's latents through the passed iterations; losing them
    re-runs that step (and passes its value on again), each value made is freed once."""
    make = sd_maker()
    h = CacheHarness(workers=2)
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS)
    while items(h, "sampler_step") < STEPS - SKIPPED:
        last = h.run_until("sampler_step")
    assert h.coord.stats.passed == SKIPPED * 4 and [d.op for d in h.pending] == ["approx_insert", "vae_decode"]
    h.apply(h.coord.on_worker_lost(last.worker, 0.0))
    h.drain()
    assert h.finished[1].status == "succeeded" and sorted(set(h.freed)) == sorted(h.freed) == sorted(h.made)
    assert h.coord.stats.recoveries == 1 and h.coord.stats.passed >= SKIPPED * 4
