"""Model residency under a memory budget: evict cold models, never crash the worker."""

import pytest

from legodiffusion.models.components import component_bytes, load_component
from legodiffusion.models.store import HostCache, ModelCatalog, ResidentModels
from legodiffusion.models.tiny import write_tiny_models
from legodiffusion.workflow.catalog import sd_txt2img
from tests.helpers import run_requests


@pytest.fixture(scope="module")
def two_models(tmp_path_factory, sd15):
    other = write_tiny_models(tmp_path_factory.mktemp("other"), seed=1)["sd15"]
    return sd15, other


def model_bytes(folder):
    return sum(component_bytes(load_component(folder, c)) for c in ("text_encoder", "denoiser", "vae"))


def test_lru_evicts_the_coldest_and_refuses_what_cannot_fit(sd15):
    host = HostCache(ModelCatalog({"a": sd15}))
    unet = host.get("a", "denoiser")[1]
    vae = host.get("a", "vae")[1]
    res = ResidentModels(host, "cpu", budget_bytes=unet + vae)
    assert res.acquire("a", "denoiser").loaded == [("a", "denoiser", None)]
    res.acquire("a", "vae")
    assert res.acquire("a", "denoiser").loaded == []  # hit; unet is now the most recently used
    got = res.acquire("a", "text_encoder")
    assert got.evicted == [("a", "vae", None)]
    assert res.evictions == 1 and res.used_bytes <= res.budget_bytes
    with pytest.raises(MemoryError, match="budget"):
        ResidentModels(host, "cpu", budget_bytes=vae).acquire("a", "denoiser")


def test_alternating_models_complete_through_evictions(two_models):
    a, b = two_models
    budget = max(model_bytes(a), model_bytes(b))  # one model fits, two do not
    workflows = [sd_txt2img("sd15", name="on-a"), sd_txt2img("other", name="on-b")]
    requests = [dict(workflow="on-a" if i % 2 == 0 else "on-b", prompt=f"p{i}", steps=2, seed=i, height=64, width=64) for i in range(6)]
    results, engine = run_requests(
        a, requests, models={"sd15": a, "other": b}, workflows=workflows, sequential=True, memory_budget_bytes=budget
    )
    assert all(r.ok for r in results), [r.error for r in results]
    (worker,) = engine.workers
    assert worker.models.evictions > 0 and worker.models.loads > 3
    assert engine.coordinator.stats.evictions_by_worker[0] == worker.models.evictions
    assert worker.models.used_bytes <= budget


def test_a_model_too_big_for_the_budget_fails_its_request_not_the_worker(sd15):
    results, engine = run_requests(sd15, [dict(prompt="x", steps=1, height=64, width=64)] * 2, sequential=True, memory_budget_bytes=1000)
    assert [r.status for r in results] == ["failed", "failed"]
    assert "budget" in results[0].error
    assert engine.plane.live_count() == 0
