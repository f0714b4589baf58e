"""Admission's two measured corrections: the rate a saturated cluster really drains profiled work
(:class:`DrainRate`) and the margin late finishes ask for (:class:`LateGuard`), each on its own and
then through the coordinator, whose admission must reject what the measured rate cannot serve."""

import math

import pytest

from legodiffusion.core.cost import DefaultCost
from legodiffusion.core.drain import DrainRate, LateGuard
from legodiffusion.core.policy import MicroServingPolicy
from tests.core.harness import Harness
from tests.core.test_scheduling_decisions import sd_maker


def test_drain_rate_counts_only_saturated_time_and_its_work():
    d = DrainRate(window_s=1e9, prior_s=1e-9)  # no decay, no prior: the plain ratio
    d.tick(0.0, saturated=False, workers=4)
    d.credit(100.0)  # done while workers were idle: not a drain rate
    d.tick(10.0, saturated=True, workers=4)
    assert d.factor == pytest.approx(1.0)  # nothing measured yet: the profile's own answer
    d.credit(20.0)  # 4 workers saturated for 10 s completed 20 s of profiled work
    d.tick(20.0, saturated=False, workers=4)
    assert d.factor == pytest.approx(0.5)
    d.credit(50.0)  # idle again: ignored
    d.tick(30.0, saturated=True, workers=4)
    assert d.factor == pytest.approx(0.5)


def test_drain_rate_starts_at_the_profile_forgets_and_is_clamped():
    d = DrainRate(window_s=10.0, prior_s=2.0, low=0.25, high=4.0)
    d.tick(0.0, saturated=True, workers=2)
    d.credit(1.0)
    d.tick(1.0, saturated=True, workers=2)  # 2 worker-s for 1 s of work, against 4 s of prior at 1.0
    assert d.factor == pytest.approx(5.0 / 6.0)
    for t in range(2, 200):  # then a long spell that batches: 3 s of work per worker-second
        d.credit(6.0)
        d.tick(float(t), saturated=True, workers=2)
    busy = 2.0 / (1.0 - math.exp(-0.1))  # the decayed saturated worker-seconds by now
    assert d.factor == pytest.approx((3.0 * busy + 4.0) / (busy + 4.0))  # the slow start is forgotten
    assert d.factor > 2.6
    d.credit(1e6)
    d.tick(200.0, saturated=True, workers=2)
    assert d.factor == 4.0


def test_late_guard_settles_where_the_target_share_is_late():
    g = LateGuard(target=0.1, step=0.05, high=4.0)
    for _ in range(200):
        g.finished(late=True)
    assert g.margin == pytest.approx(4.0)
    for _ in range(1000):  # one late in ten: theta does not move over a cycle
        for i in range(10):
            g.finished(late=i == 0)
    assert g.margin == pytest.approx(4.0, rel=0.1)
    for _ in range(1000):
        g.finished(late=False)
    assert g.margin == 1.0  # on time: no margin, never below the estimate itself


def run_slow(h, factor):
    """Complete every dispatch ``factor`` times slower than its profiled cost, in order."""
    now = 0.0
    while h.pending:
        d = h.pending.pop(0)
        now += factor * sum(h.coord.requests[i.request_id].costs[i.node] for i in d.items if i.request_id in h.coord.requests)
        h.complete(d, now)
    return now


def admits_after(factor, policy="default"):
    """Run a backlog on one worker at ``factor`` x its profile, then offer a request behind a
    fresh backlog whose deadline fits the profiled wait but not twice it."""
    h = Harness(workers=1, policy=policy, cost=DefaultCost(heavy_s=1.0), slots_per_worker=1)
    make = sd_maker()
    for rid in range(4):
        h.submit(rid, make, steps=4, guidance_scale=1.0)
    now = run_slow(h, factor)
    assert all(h.finished[r].status == "succeeded" for r in range(4))
    solo = sum(h.coord.node_costs(make(steps=4, guidance_scale=1.0)[0], None))
    h.submit(10, make, now=now, deadline_s=now + 1.5 * solo, steps=4, guidance_scale=1.0)  # ordered first
    assert 10 in h.coord.requests
    h.submit(11, make, now=now, deadline_s=now + 2.4 * solo, steps=4, guidance_scale=1.0)
    return h.finished.get(11)


def test_admission_waits_at_the_measured_drain_rate():
    assert admits_after(1.0) is None  # drained at the profile's rate: solo + solo of queue fits
    refused = admits_after(2.0)  # the same backlog took twice its profile: 2 x solo of queue
    assert refused is not None and refused.status == "rejected"
    assert "of queue (the work ahead draining at 0.5" in refused.error  # about half its profiled rate
    # the ablation that trusts the profile admits it all the same
    assert admits_after(2.0, MicroServingPolicy("profile-admission", measured_admission=False)) is None


def test_a_late_lower_class_does_not_raise_the_margin_of_a_higher_one():
    # admission off, so that deadlines no schedule can meet are let in and finish late
    h = Harness(workers=1, policy=MicroServingPolicy("open", admission=False), cost=DefaultCost(heavy_s=1.0), slots_per_worker=1)
    make = sd_maker()
    for rid in range(6):
        h.submit(rid, make, deadline_s=1e-3, priority=2, steps=1, guidance_scale=1.0)  # a low class
    h.submit(6, make, deadline_s=1e6, priority=0, steps=1, guidance_scale=1.0)  # a high one, on time
    run_slow(h, 1.0)
    assert all(h.finished[r].status == "succeeded" for r in range(7))
    assert h.coord.view.late_margin(2) == pytest.approx(math.exp(6 * 0.05 * 0.95))
    assert h.coord.view.late_margin(0) == 1.0
