"""The approximate cache on the Ray backend: one actor shared by the worker actors, its latents in
Ray's object store; the same hits and images as on the local backend, and nothing left behind."""

import numpy as np
import pytest

from tests.helpers import run_requests
from tests.ray.test_ray_backend import wait_store_empty

pytestmark = pytest.mark.ray


def test_hits_on_ray_equal_the_local_backend(ray_cluster, sd15):
    base = dict(approx_cache=True, steps=6, height=64, width=64)
    requests = [dict(base, prompt="a red fox", seed=1), dict(base, prompt="a red fox", seed=2), dict(base, prompt="a red fox", seed=3)]
    local, _ = run_requests(sd15, requests, sequential=True)
    on_ray, engine = run_requests(sd15, requests, sequential=True, workers=2, backend="ray")
    assert all(r.ok for r in on_ray), [r.error for r in on_ray]
    assert [r.notes for r in on_ray] == [r.notes for r in local]
    assert on_ray[1].notes["approx_cache"]["used"] and on_ray[2].notes["approx_cache"]["from_request"] == on_ray[0].request_id
    for a, b in zip(local, on_ray, strict=True):
        assert np.abs(a.outputs["image"].numpy() - b.outputs["image"].numpy()).max() <= 1e-4
    assert engine.coordinator.stats.passed > 0
    assert wait_store_empty() == 0, "the cache's objects went with its actor when the engine stopped"
