"""Per-tenant admission (server/tenants.py) on a fake clock: caps, token buckets, all-or-nothing."""

import pytest

from legodiffusion.config import TenantSpec
from legodiffusion.server.errors import ApiError
from legodiffusion.server.tenants import Tenants


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self):
        return self.now


def _refused(tenants, spec, n, work_s=10.0, workers=2):
    with pytest.raises(ApiError) as e:
        tenants.check(spec, n, lambda: work_s, workers)
    return e.value


def test_a_cap_counts_runs_in_flight_and_refuses_a_request_whole():
    t = Tenants(Clock())
    spec = TenantSpec("acme", max_in_flight=3)
    t.check(spec, 2, lambda: 0.0, 1)
    t.admitted(spec, 2, [1, 2])
    err = _refused(t, spec, 2)  # 2 more would make 4: none of them is admitted
    assert err.status == 429 and err.extra == {"tenant": "acme"} and "max_in_flight=3" in err.message
    assert err.retry_after_s == 3, "one run of 10 s of work over 2 workers and 2 runs must end: ~2.5 s"
    t.check(spec, 1, lambda: 0.0, 1)  # one still fits
    t.ended(1)
    t.check(spec, 2, lambda: 0.0, 1)
    assert _refused(t, spec, 4).status == 400, "more runs than the cap can never fit"
    assert t.usage()["acme"]["refused"] == {"concurrency": 1} and t.usage()["acme"]["in_flight"] == 1


def test_a_token_bucket_refills_at_its_rate_and_a_refusal_takes_no_token():
    clock = Clock()
    t = Tenants(clock)
    spec = TenantSpec("acme", rate_per_s=0.5, burst=2)
    t.check(spec, 2, lambda: 0.0, 1)
    t.admitted(spec, 2, [])  # refused at once (SLO): they take tokens, nothing in flight
    err = _refused(t, spec, 1)
    assert err.status == 429 and err.retry_after_s == 2 and "0.5 runs/s" in err.message
    clock.now = 1.0
    assert _refused(t, spec, 1).retry_after_s == 1, "half a token back: one more second"
    clock.now = 2.0
    t.check(spec, 1, lambda: 0.0, 1)
    clock.now = 100.0
    t.check(spec, 2, lambda: 0.0, 1)  # the bucket holds no more than its burst
    assert _refused(t, spec, 3).status == 400
    assert t.usage()["acme"]["refused"] == {"rate": 2} and t.usage()["acme"]["in_flight"] == 0


def test_usage_counts_outcomes_deadlines_and_measured_seconds():
    from types import SimpleNamespace as NS

    t = Tenants(Clock())
    a, b = TenantSpec("a"), TenantSpec("b")
    t.admitted(a, 1, [1])
    t.admitted(b, 1, [2])
    t.on_dispatch(NS(items=[NS(request_id=1), NS(request_id=2)]), NS(start_s=1.0, end_s=2.0))
    t.ended(1)
    t.finished(a, "succeeded", 5.0, 4.0)
    t.finished(b, "failed", 5.0, 1.0)
    u = t.usage()
    assert u["a"]["gpu_s"] == u["b"]["gpu_s"] == 0.5, "a batch's time split over its items"
    assert (u["a"]["slo_met"], u["a"]["slo_total"], u["b"]["slo_met"], u["b"]["slo_total"]) == (1, 1, 0, 1)
    assert u["a"]["requests"] == {"succeeded": 1} and u["a"]["in_flight"] == 0 and u["b"]["in_flight"] == 1
