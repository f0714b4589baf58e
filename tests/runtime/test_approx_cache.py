"""The approximate cache across requests (NIRVANA): a hit starts the loop at the cached step and
equals the rest of the schedule run from those latents by the diffusers pipeline; a miss equals
the uncached run exactly; eviction is LCBFU under the byte budget; entries never cross models,
resolutions, schedules or adapter sets."""

import json

import numpy as np
import pytest
import torch

from legodiffusion.core.approx import ApproxConfig, StateInfo, lcbfu_victims
from legodiffusion.ops.denoise import pack
from legodiffusion.runtime.approx_cache import ApproxStore
from legodiffusion.workflow.catalog import flux_txt2img, sd_txt2img, sdxl_txt2img
from tests.helpers import REFERENCE_SCHEDULERS, as_hwc, run_requests


def cached_latents(engine, request: int, step: int) -> torch.Tensor:
    """The latents ``request`` saved after ``step`` steps, as the cache holds them."""
    store = engine.plane.stores["approx_cache"]
    (entry,) = [e for e in store.entries() if e["request"] == request and e["step"] == step]
    return store.get(entry["id"]).latents


def two_requests(name, folder, workflow, first: dict, second: dict, **config):
    """``first`` then ``second`` (both with the cache on) on one engine: their results and it."""
    requests = [dict(first, approx_cache=True, workflow=workflow.name), dict(second, approx_cache=True, workflow=workflow.name)]
    (a, b), engine = run_requests(folder, requests, sequential=True, models={name: folder}, workflows=[workflow], **config)
    assert a.ok and b.ok, (a.error, b.error)
    assert engine.plane.live_count() == 0
    return a, b, engine


@pytest.mark.parametrize("sampler", ["euler_ancestral", "dpmpp_2m"])
def test_a_miss_equals_the_uncached_run_exactly(sd15, sampler):
    args = dict(prompt="a red fox", steps=4, sampler=sampler, seed=3, height=64, width=64)
    (plain, cached), engine = run_requests(sd15, [args, dict(args, approx_cache=True)], sequential=True)
    assert plain.ok and cached.ok
    assert cached.notes["approx_cache"] == {"used": False}
    assert "approx_cache" not in plain.notes and plain.nodes < cached.nodes  # off: not one node more
    assert torch.equal(plain.outputs["image"], cached.outputs["image"])
    assert engine.coordinator.stats.passed == 0


@pytest.mark.parametrize("sampler", ["euler", "dpmpp_2m"])
def test_sdxl_hit_equals_the_pipeline_started_at_the_cached_step(tiny_models, sampler):
    from diffusers import StableDiffusionXLImg2ImgPipeline

    folder = tiny_models["sdxl"]
    args = dict(prompt="a lighthouse", steps=10, sampler=sampler, height=64, width=64)
    first, hit, engine = two_requests("sdxl", folder, sdxl_txt2img("sdxl"), dict(args, seed=1), dict(args, seed=2))
    assert first.notes["approx_cache_saved"] == [1, 2, 3, 4, 5]  # 5, 10, ..., 25 of 50 steps
    # the same prompt: similarity 1 allows 25 of 50 steps, the largest cached
    assert hit.notes["approx_cache"] == {"used": True, "from_step": 5, "of_steps": 10, "from_request": first.request_id, "similarity": 1.0}
    assert engine.coordinator.stats.passed == 5 * 4  # 5 iterations of 2 branches, a step and an insert, run nowhere
    assert engine.coordinator.stats.nodes_by_op["denoise"] == 2 * (10 + 5)
    latents = cached_latents(engine, first.request_id, 5)

    pipe = StableDiffusionXLImg2ImgPipeline.from_pretrained(folder)
    cls, overrides = REFERENCE_SCHEDULERS[sampler]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a lighthouse",
        image=latents,
        denoising_start=0.5,  # 5 of 10 steps: the pipeline runs the rest from these latents, adding no noise
        num_inference_steps=10,
        guidance_scale=5.0,
        generator=torch.Generator("cpu").manual_seed(2),
        output_type="np",
    ).images[0]
    assert np.abs(as_hwc(hit.outputs["image"]) - ref).max() <= 1e-4


@pytest.mark.parametrize("step_cache", [None, {"kind": "first_block", "threshold": 0.3}])
def test_flux_hit_equals_the_pipeline_on_the_rest_of_the_schedule(tiny_models, tmp_path, step_cache):
    """With a step cache too, started for the steps left (diffusers' FirstBlockCache on the call
    that runs them): deeper transformers make its skips real, as in test_step_cache.py."""
    from diffusers import FluxPipeline
    from diffusers.hooks import FirstBlockCacheConfig

    from tests.runtime.test_step_cache import _deeper

    folder = (
        tiny_models["flux"] if step_cache is None else _deeper(tiny_models["flux"], tmp_path / "flux", num_layers=2, num_single_layers=3)
    )
    args = dict(prompt="a castle", steps=6, guidance=3.5, height=64, width=96, max_sequence_length=32)
    later = dict(args, seed=2) if step_cache is None else dict(args, seed=2, step_cache=json.dumps(step_cache))
    first, hit, engine = two_requests("flux", folder, flux_txt2img("flux"), dict(args, seed=1), later)
    assert first.notes["approx_cache_saved"] == [1, 2, 3]
    assert hit.notes["approx_cache"]["from_step"] == 3 and hit.notes["approx_cache"]["from_request"] == first.request_id
    latents = cached_latents(engine, first.request_id, 3)

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    if step_cache is not None:
        pipe.transformer.enable_cache(FirstBlockCacheConfig(threshold=0.3))
        assert hit.notes["step_cache_calls"] == 3  # the calls it ran, the passed ones not counted
        assert hit.notes["step_cache_skipped"] >= 1  # and the cache did skip
    ref = pipe(
        "a castle",
        latents=pack(latents),
        sigmas=np.linspace(1.0, 1 / 6, 6)[3:].tolist(),  # the pipeline's 6-step sigmas from step 3 on
        num_inference_steps=3,
        guidance_scale=3.5,
        height=64,
        width=96,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(2),
        output_type="np",
    ).images[0]
    assert np.abs(as_hwc(hit.outputs["image"]) - ref).max() <= 1e-4


def test_a_closer_prompt_skips_more_and_an_unrelated_one_nothing(sd15):
    """The largest step the similarity allows: thresholds chosen around the tiny model's similarities."""
    config = ApproxConfig(thresholds=((0.999, 25), (0.5, 10)))
    requests = [
        dict(prompt="a red fox in the snow", approx_cache=True, steps=10, seed=1, height=64, width=64),
        dict(prompt="a red fox in the snow", approx_cache=True, steps=10, seed=2, height=64, width=64),
        dict(prompt="a red fox in deep snow", approx_cache=True, steps=10, seed=3, height=64, width=64),
    ]
    (first, same, close), _ = run_requests(sd15, requests, sequential=True, approx=config)
    assert same.notes["approx_cache"]["from_step"] == 5
    assert 0.5 <= close.notes["approx_cache"]["similarity"] < 0.999
    assert close.notes["approx_cache"]["from_step"] == 2  # 10 of 50


def test_lcbfu_evicts_the_least_benefit_times_frequency():
    states = [StateInfo(1, 5, 100, 1, 0), StateInfo(2, 10, 100, 1, 1), StateInfo(3, 2, 100, 4, 2), StateInfo(4, 4, 100, 1, 3)]
    assert lcbfu_victims(states, 300) == [4]  # scores 5, 10, 8, 4
    assert lcbfu_victims(states, 200) == [4, 1]
    assert lcbfu_victims(states[:3] + [StateInfo(4, 5, 100, 1, 3)], 300) == [1]  # a tie: the older goes


def test_the_store_evicts_by_lcbfu_under_its_budget():
    latents = torch.zeros(1, 4, 8, 8)  # 1024 bytes
    store = ApproxStore(ApproxConfig(budget_bytes=3 * 1024))
    v = torch.nn.functional.normalize(torch.ones(8), dim=0)
    a, b, c = (store.insert((name,), v, request, step, latents).id for name, request, step in (("a", 1, 5), ("b", 2, 10), ("c", 3, 2)))
    for _ in range(3):  # three hits on c: it has served 4 requests
        assert store.lookup(("c",), v, 50).id == c
    new = store.insert(("d",), v, 4, 4, latents)
    assert new.id is None and new.evicted == (c + 1,)  # ids count up; scores a 5, b 10, c 2 x 4, d 4: the newcomer goes
    assert [e["id"] for e in store.entries()] == [a, b, c]
    again = store.insert(("e",), v, 5, 6, latents)
    assert again.evicted == (a,) and store.nbytes == 3 * 1024  # a 5 < e 6
    assert [e["id"] for e in store.entries()] == [b, c, again.id]
    assert store.lookup(("a",), v, 50) is None and store.lookup(("d",), v, 50) is None


def test_hits_count_as_uses_for_eviction(sd15):
    """A hit raises its state's frequency: under pressure the state that served requests stays."""
    one = 4 * 8 * 8 * 4  # a 64x64 SD latent
    config = ApproxConfig(budget_bytes=2 * one, save_at=(25,), thresholds=((0.9999, 25),))  # only the same prompt hits
    base = dict(approx_cache=True, steps=4, height=64, width=64)
    requests = [dict(base, prompt="a red fox", seed=1), dict(base, prompt="a red fox", seed=2), dict(base, prompt="a blue bird", seed=3)]
    requests.append(dict(base, prompt="a green tree", seed=4))
    results, engine = run_requests(sd15, requests, sequential=True, approx=config)
    assert results[1].notes["approx_cache"]["from_request"] == results[0].request_id
    store = engine.plane.stores["approx_cache"]
    left = {e["request"]: e["uses"] for e in store.entries()}
    # the fox's state (2 uses) outlives the bird's (1 use, older than the tree's)
    assert left == {results[0].request_id: 2, results[3].request_id: 1}
    assert store.nbytes <= config.budget_bytes
    index = engine.coordinator.approx  # the coordinator's index agrees, without a tensor
    assert sorted(s[3] for s in index.states.values()) == sorted(left) and index.nbytes == store.nbytes


def test_entries_never_cross_models_resolutions_schedules_or_adapters(tiny_models):
    sd15 = tiny_models["sd15"]
    models = {"sd15": sd15, "sd15-copy": sd15, "lora-a": tiny_models["lora-sd15-a"], "cn": tiny_models["controlnet-sd15"]}
    workflows = [sd_txt2img("sd15"), sd_txt2img("sd15-copy", name="copy"), sd_txt2img("sd15", name="cn-wf", controlnets=("cn",))]
    rng = np.random.default_rng(0)
    edges, other_edges = (rng.integers(0, 256, (64, 64, 3), dtype=np.uint8) for _ in range(2))
    base = dict(prompt="a red fox", approx_cache=True, steps=4, height=64, width=64)
    requests = [
        dict(base, seed=1),  # saves
        dict(base, seed=2, workflow="copy"),  # the same weights under another model name
        dict(base, seed=3, height=72),  # another resolution
        dict(base, seed=4, steps=5),  # another schedule
        dict(base, seed=5, sampler="ddim"),  # another sampler
        dict(base, seed=6, loras="lora-a"),  # another adapter set
        dict(base, seed=7, workflow="cn-wf", control_image=edges),
        dict(base, seed=8, workflow="cn-wf", control_image=other_edges),  # another control input
        dict(base, seed=9, workflow="cn-wf", control_image=edges, control_scale=0.5),  # another control scale
        dict(base, seed=10, workflow="cn-wf", control_image=edges),  # as the 7th: a hit on it
        dict(base, seed=11, loras="lora-a:1.0"),  # as the 6th: a hit on it
        dict(base, seed=12),  # as the first: a hit on it
    ]
    results, _ = run_requests(sd15, requests, sequential=True, models=models, workflows=workflows)
    assert all(r.ok for r in results), [r.error for r in results]
    used = [r.notes["approx_cache"] for r in results]
    assert [u["used"] for u in used] == [False] * 9 + [True] * 3
    ids = [r.request_id for r in results]
    assert [u["from_request"] for u in used[9:]] == [ids[6], ids[5], ids[0]]


def test_the_server_takes_the_opt_in_and_returns_what_was_used(sd15):
    """``"approx_cache": true`` as a JSON boolean in a run's inputs; a non-boolean is a 400 naming it."""
    from fastapi.testclient import TestClient

    from legodiffusion.config import EngineConfig
    from legodiffusion.server.app import create_app

    app = create_app({"sd15": str(sd15)}, EngineConfig(workers=1, device="cpu"), [sd_txt2img("sd15")])
    inputs = {"prompt": "a red fox", "steps": 4, "height": 64, "width": 64, "approx_cache": True}
    with TestClient(app) as client:
        first = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": inputs, "wait": True}).json()
        second = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {**inputs, "seed": 1}, "wait": True}).json()
        bad = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {**inputs, "approx_cache": 1}})
    assert first["notes"]["approx_cache"] == {"used": False} and first["notes"]["approx_cache_saved"] == [1, 2]
    assert second["notes"]["approx_cache"]["used"] and second["notes"]["approx_cache"]["from_step"] == 2
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "inputs.approx_cache"
