"""Priority classes and fair sharing between tenants, on the dispatches the coordinator emits
(a fake clock: the harness runs each dispatch instantly, in order)."""

import pytest

from legodiffusion.core.cost import DefaultCost
from legodiffusion.core.fairness import FairShare, priority_rank
from tests.core.harness import Harness
from tests.core.test_scheduling_decisions import sd_maker


def _one_at_a_time(**kw):
    """One worker with one slot: every dispatch is a scheduling decision."""
    return Harness(workers=1, policy="default", slots_per_worker=1, **kw)


def _run(h, dispatches):
    """Run ``dispatches`` dispatches, in order; returns the profiled work each tenant was given."""
    for _ in range(dispatches):
        h.complete(h.pending.pop(0))
    return h.coord.fair.work_by_tenant()


def test_a_higher_class_goes_first_whatever_arrived_before_it():
    h = _one_at_a_time()
    make = sd_maker()
    for rid in range(1, 6):
        h.submit(rid, make, tenant="batch", priority=priority_rank("low"), steps=3)
    h.submit(99, make, tenant="web", priority=priority_rank("high"), steps=3)
    h.drain()
    assert list(h.finished)[0] == 99, "the high-priority request finishes first"
    assert {o.status for o in h.finished.values()} == {"succeeded"}


def test_tenants_with_small_and_large_requests_get_equal_work():
    h = _one_at_a_time()
    make = sd_maker()
    for rid in range(100):  # the small tenant's requests all arrive first
        h.submit(rid, make, tenant="small", steps=2, guidance_scale=1.0)
    for rid in range(1000, 1030):
        h.submit(rid, make, tenant="large", steps=20, guidance_scale=1.0)
    work = _run(h, 300)  # both still have work queued
    assert work["small"] == pytest.approx(work["large"], rel=0.1), work
    assert h.coord.fair.classes[1].accounts["small"].live and h.coord.fair.classes[1].accounts["large"].live
    h.drain()
    assert len(h.finished) == 130 and {o.status for o in h.finished.values()} == {"succeeded"}


def test_without_tenants_the_same_load_is_served_in_arrival_order():
    # the control for the test above: one tenant, so the earlier (small) requests go first
    h = _one_at_a_time()
    make = sd_maker()
    for rid in range(20):
        h.submit(rid, make, workflow="small", steps=2, guidance_scale=1.0)
    for rid in range(100, 110):
        h.submit(rid, make, workflow="large", steps=20, guidance_scale=1.0)
    for _ in range(60):
        h.complete(h.pending.pop(0))
    ended = set(h.finished)
    assert ended and ended <= set(range(20)), "the large requests waited"


def test_weights_divide_the_work():
    h = _one_at_a_time()
    make = sd_maker()
    for rid in range(80):
        h.submit(rid, make, tenant="gold", weight=3.0, steps=8, guidance_scale=1.0)
        h.submit(100 + rid, make, tenant="basic", weight=1.0, steps=8, guidance_scale=1.0)
    start = dict(_run(h, 200))  # past the first nodes of every request
    work = _run(h, 200)
    assert all(a.live for a in h.coord.fair.classes[1].accounts.values()), "both still have work queued"
    gold, basic = work["gold"] - start["gold"], work["basic"] - start["basic"]
    assert gold == pytest.approx(3 * basic, rel=0.15), (gold, basic)


def test_a_tenant_alone_keeps_its_own_order_and_banks_no_lead():
    h = _one_at_a_time()
    make = sd_maker()
    for rid in range(40):
        h.submit(rid, make, tenant="alone", steps=4, guidance_scale=1.0)
    for _ in range(30):
        assert all(live.lead_s == 0.0 for live in h.coord.requests.values()), "alone in its class: no lead"
        h.complete(h.pending.pop(0))
    before = dict(h.coord.fair.work_by_tenant())
    # a newcomer shares from now on: it neither starves the tenant that ran alone nor waits behind it
    for rid in range(100, 140):
        h.submit(rid, make, tenant="new", steps=4, guidance_scale=1.0)
    work = _run(h, 60)
    assert all(a.live for a in h.coord.fair.classes[1].accounts.values()), "both still have work queued"
    alone, new = work["alone"] - before["alone"], work.get("new", 0.0)
    assert alone == pytest.approx(new, rel=0.25), (alone, new)


def test_deadline_order_holds_inside_a_tenant():
    # with tenants sharing, a tenant's urgent request still goes before its own relaxed ones
    h = _one_at_a_time(cost=DefaultCost(heavy_s=0.01))
    make = sd_maker()
    for rid in range(5):
        h.submit(rid, make, tenant="a", deadline_s=100.0, steps=2, guidance_scale=1.0)
        h.submit(50 + rid, make, tenant="b", deadline_s=100.0, steps=2, guidance_scale=1.0)
    h.submit(9, make, tenant="a", deadline_s=1.0, steps=2, guidance_scale=1.0)
    h.drain()
    order = [rid for rid in h.finished if rid < 50]
    assert order.index(9) < order.index(4), order


def test_a_low_class_flood_does_not_get_a_high_class_request_rejected():
    h = Harness(workers=2, policy="default", cost=DefaultCost(heavy_s=0.05))
    make = sd_maker()
    deadline = 3.0
    for rid in range(40):  # the flood fills its class until admission refuses the deadline
        h.submit(rid, make, tenant="flood", priority=2, deadline_s=deadline, steps=4)
    refused = [rid for rid, o in h.finished.items() if o.status == "rejected"]
    assert refused, "the flooded class refuses requests it cannot finish in time"
    h.submit(99, make, tenant="web", priority=0, deadline_s=deadline, steps=4)
    assert 99 not in h.finished, "admitted: the lower class is not work ahead of it, nor protected from it"
    h.drain()
    assert h.finished[99].status == "succeeded"


def test_fair_share_rejects_a_weight_that_is_not_positive():
    with pytest.raises(ValueError, match="weight must be > 0"):
        FairShare().account("t", 1, 0.0)
    with pytest.raises(ValueError, match="priority must be one of"):
        priority_rank("urgent")


def test_a_lower_class_leaves_room_for_a_running_higher_class():
    h = Harness(workers=4, policy="default")  # two slots per worker
    make = sd_maker()
    for rid in (1, 2):
        h.submit(rid, make, tenant="web", priority=0, steps=6)
    for rid in range(10, 30):
        h.submit(rid, make, tenant="batch", priority=2, steps=6)
    while 1 in h.coord.requests or 2 in h.coord.requests:
        low = [d.worker for d in h.pending if d.items and d.items[0].request_id >= 10 and not d.light]
        assert len(low) == len(set(low)), "one lower-class call per worker: the other slot stays free"
        high_live = sum(rid in h.coord.requests for rid in (1, 2))
        assert len(set(low)) <= 4 - high_live, "an idle worker kept per running higher-class request"
        h.complete(h.pending.pop(0))
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"} and len(h.finished) == 22


def test_a_lower_class_does_not_slip_between_the_steps_of_a_running_higher_class_request():
    """Between a high-class request's model call and its next one runs glue that takes no time;
    the worker it used looks idle then. A low-class call placed there would make every next step
    of the high-class request wait behind it (seen in the flood benchmark), so none is."""
    h = Harness(workers=3, policy="default")
    make = sd_maker()
    h.submit(1, make, tenant="web", priority=0, steps=8)
    for rid in range(10, 40):
        h.submit(rid, make, tenant="batch", priority=2, steps=8)
    last_web = None
    seen = 0
    while 1 in h.coord.requests:
        for d in h.dispatches[seen:]:
            if d.light or not d.items:
                continue
            if any(it.request_id == 1 for it in d.items):
                last_web = d.worker
            elif last_web is not None:
                assert d.worker != last_web, f"low-class {d.op} placed on worker {d.worker}, the web request's"
        seen = len(h.dispatches)
        h.complete(h.pending.pop(0))
    assert last_web is not None
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"} and len(h.finished) == 31
