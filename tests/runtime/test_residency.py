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


def test_activation_memory_evicts_weights_to_make_room(sd15):
    host = HostCache(ModelCatalog({"a": sd15}))
    unet = host.get("a", "denoiser")[1]
    vae = host.get("a", "vae")[1]
    res = ResidentModels(host, "cpu", budget_bytes=unet + vae + 1000)
    res.acquire("a", "denoiser")
    assert res.acquire("a", "vae", activation_bytes=1000).evicted == []  # both fit beside 1000 bytes
    got = res.acquire("a", "vae", activation_bytes=unet)  # a large call: the cold UNet makes way
    assert got.loaded == [] and got.evicted == [("a", "denoiser", None)]
    assert res.keys() == [("a", "vae", None)] and res.used_bytes == vae
    with pytest.raises(MemoryError, match="activations"):
        res.acquire("a", "vae", activation_bytes=unet + 2000)  # cannot fit even beside the VAE alone
    assert res.keys() == [("a", "vae", None)]  # nothing evicted by the refusal


def test_profiled_activation_peaks_travel_with_dispatches_and_make_room_live(sd15, tmp_path):
    """With a profile saying each denoiser call needs the VAE's worth of working memory, and a
    budget that holds every weight but not that as well, the worker evicts to make room, and every
    request still succeeds."""
    from legodiffusion.models.precision import Precision
    from legodiffusion.profiles.book import ModelProfile, OpPoint
    from legodiffusion.profiles.profiler import device_name, profile_path

    host = HostCache(ModelCatalog({"sd15": sd15}))
    weights = {c: host.get("sd15", c)[1] for c in ("text_encoder", "denoiser", "vae")}
    peak = weights["vae"] + weights["text_encoder"]
    prof = ModelProfile("k", device_name("cpu"), {}, [OpPoint("denoise", "default", b, 64 * 64, 0.01, peak) for b in (1, 2)])
    prof.save(profile_path(sd15, "cpu", tmp_path, Precision()))
    requests = [dict(prompt=f"p{i}", steps=2, seed=i, height=64, width=64) for i in range(2)]
    budget = sum(weights.values()) + 1000
    evictions = {}
    for name, where in (("profiled", tmp_path), ("unprofiled", tmp_path / "none")):
        results, engine = run_requests(sd15, requests, sequential=True, memory_budget_bytes=budget, profile_dir=where)
        assert all(r.ok for r in results), [r.error for r in results]
        evictions[name] = engine.workers[0].models.evictions
    # the encoders and the VAE make way for the UNet's working memory (each request), and come back
    assert evictions["unprofiled"] == 0 and evictions["profiled"] >= 3


def test_the_scheduler_plans_with_device_memory_once_models_are_profiled(sd15, tmp_path):
    """Prefetching and eviction costs need weight sizes: the engine gives the cost model the
    worker budget only when every pipeline model has a profile."""
    from legodiffusion import Engine, EngineConfig
    from legodiffusion.profiles.book import ComponentProfile, ModelProfile
    from legodiffusion.profiles.profiler import device_name, profile_path

    def memory(**config):
        return Engine({"sd15": sd15}, EngineConfig(device="cpu", profile_dir=tmp_path, **config)).cost.memory_bytes

    assert memory(memory_budget_bytes=10**9) is None  # not profiled: no plan with memory
    prof = ModelProfile("k", device_name("cpu"), {}, [], {"denoiser": ComponentProfile(0.1, 0.01, 4 * 10**6)})
    prof.save(profile_path(sd15, "cpu", tmp_path))
    assert memory(memory_budget_bytes=10**9) == 10**9
    assert memory() is None  # unlimited on CPU: nothing to plan around
