from tests.helpers import run_requests


def test_impossible_deadline_is_rejected_at_arrival_and_a_loose_one_succeeds(sd15):
    (tight,), _ = run_requests(sd15, [dict(prompt="x", steps=3, height=64, width=64)], slo_s=1e-6)
    assert tight.status == "rejected" and tight.error.startswith("SLO_REJECTED")
    assert tight.nodes and not tight.outputs
    (loose,), engine = run_requests(sd15, [dict(prompt="x", steps=3, height=64, width=64)], slo_s=600.0)
    assert loose.ok
    assert engine.coordinator.stats.requests["rejected"] == 0
