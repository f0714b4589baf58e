"""What the coordinator does with an approximate-cache hit: the iterations past the end of the
shortened schedule run as pass-through glue, the request's remaining and whole work, its place
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
    glue = h.coord.cost.exec_s("passthrough", "default", None, 1, None)
    assert live.solo_s == pytest.approx(solo - SKIPPED * (sum(iteration) - len(iteration) * glue))
    left = [c for n, c in enumerate(live.costs) if n not in live.finished]
    assert live.remaining_s == pytest.approx(sum(left)) and h.coord.work_s == pytest.approx(live.remaining_s)
    h.drain()
    assert h.finished[1].status == "succeeded" and sorted(h.freed) == sorted(h.made)
    assert items(h, "passthrough") == SKIPPED * 4  # both branches, the step and the insert of each skipped iteration
    assert items(h, "denoise") == 2 * (STEPS - SKIPPED) and items(h, "sampler_step") == STEPS - SKIPPED
    assert all(d.light and d.component is None for d in h.dispatches if d.op == "passthrough")
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
    assert items(h, "passthrough") == 0 and items(h, "denoise") == 2 * STEPS


def test_ordering_and_admission_know_a_hit_shortens_a_request():
    make = sd_maker()
    h = CacheHarness(workers=1, policy=MicroServingPolicy("default"))
    h.submit(1, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS, deadline_s=100.0)
    live = h.coord.requests[1]
    before = live.priority
    h.run_until("approx_lookup")
    assert live.priority[1] == pytest.approx(100.0 - live.solo_s) and live.priority[1] > before[1]  # it may start later now
    h.drain()
    # the next request's work is what it needs less what this workflow's lookups skip on average
    template = make(approx_cache=True, steps=STEPS)[0]
    costs = h.coord.node_costs(template, None)
    full, loop = sum(costs), sum(costs[n] for it in template.skips[2] for n in it)
    expected = full - SKIPPED / STEPS * loop
    deadline = (full + expected) / 2  # too soon for all of it, enough for what it is expected to need
    cold = CacheHarness(workers=1, policy=MicroServingPolicy("default"))
    cold.submit(2, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS, deadline_s=deadline)
    assert cold.finished[2].status == "rejected"
    h.submit(2, make, workflow="sd-txt2img", approx_cache=True, steps=STEPS, deadline_s=deadline)
    assert 2 not in h.finished and h.coord.requests[2].remaining_s == pytest.approx(full)


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
    assert items(h, "passthrough") >= SKIPPED * 4 and h.coord.approx.counts["sd-txt2img"].lookups == 1
