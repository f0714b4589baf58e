"""Concurrent requests on several workers: same images, nothing left behind, failures contained."""

import numpy as np

from tests.helpers import run_requests

REQUESTS = [
    dict(
        prompt=f"prompt number {i}",
        negative_prompt="ugly" if i % 3 else "",
        steps=3 + i % 3,
        guidance_scale=1.0 if i % 4 == 0 else 6.0,
        seed=100 + i,
        height=64,
        width=64 if i % 2 else 96,
        sampler="ddim" if i % 5 == 0 else "euler",
    )
    for i in range(10)
]


def test_ten_concurrent_requests_on_two_workers_equal_sequential_runs(sd15):
    concurrent, engine = run_requests(sd15, REQUESTS, workers=2)
    sequential, _ = run_requests(sd15, REQUESTS, workers=1, sequential=True)
    for c, s in zip(concurrent, sequential):
        assert c.ok and s.ok
        assert np.abs(c.outputs["image"].numpy() - s.outputs["image"].numpy()).max() <= 1e-4
    stats = engine.coordinator.stats
    assert set(stats.items_by_worker) == {0, 1}, "both workers did work"
    assert max(stats.dispatches_by_op.values()) < sum(stats.nodes_by_op.values()), "some nodes were batched"
    assert engine.plane.live_count() == 0


def test_a_failing_request_fails_alone_with_its_node_and_reason(sd15, monkeypatch):
    # a fault no submission check can see (bad values are refused before they are queued),
    # injected into init_latents for one seed: its batch-mates must not fail with it
    from legodiffusion.ops.latents import InitLatents

    run = InitLatents.run

    def faulty(self, model, mode, items):
        if any(it.inputs["seed"] == 13 for it in items):
            raise RuntimeError("injected fault for seed 13")
        return run(self, model, mode, items)

    monkeypatch.setattr(InitLatents, "run", faulty)
    bad = dict(prompt="bad", steps=3, height=64, width=64, seed=13)
    good = dict(prompt="good", steps=3, height=64, width=64)
    results, engine = run_requests(sd15, [good, bad, good], workers=2)
    assert [r.status for r in results] == ["succeeded", "failed", "succeeded"]
    assert results[1].node == "init_latents"
    assert "injected fault for seed 13" in results[1].error
    assert engine.plane.live_count() == 0
    assert engine.coordinator.requests == {}
