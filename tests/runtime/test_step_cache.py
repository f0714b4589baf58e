"""Step caching (ops/step_cache.py) equals diffusers' cache hooks applied to the pipeline, counts
the steps it skipped, decides per sample within a batch, and is refused where it does not apply.

The tiny models have one or two blocks per list; these tests use copies with deeper transformers
(random weights) so that the head, middle and tail blocks are all distinct."""

import json
import pickle
import shutil

import numpy as np
import pytest
import torch
from fastapi.testclient import TestClient

from legodiffusion.config import EngineConfig
from legodiffusion.models.components import PipelineConfig, load_component
from legodiffusion.ops import default_registry
from legodiffusion.ops.base import NOTES, Item
from legodiffusion.ops.step_cache import FirstBlockState, MagState
from legodiffusion.server.app import create_app
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.catalog import flux_img2img, flux_txt2img, sd3_txt2img, sd_txt2img
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.expand import Expander, bind_inputs
from legodiffusion.workflow.values import check_values
from tests.helpers import as_hwc, run_requests

FLUX_ARGS = dict(prompt="a castle", steps=8, seed=2, height=64, width=64, max_sequence_length=32)
SD3_ARGS = dict(prompt="a red fox", negative_prompt="dark", steps=6, seed=5, height=64, width=64, max_sequence_length=32)
#: diffusers' FLUX_MAG_RATIOS at 8 steps skip steps 2, 4, 5 and 6 at the default threshold (0.06)
MAG_FLUX = {"kind": "mag", "mag_ratios": "flux"}


def _deeper(folder, out, **layers):
    """A copy of a tiny pipeline folder whose transformer has more blocks (fresh random weights)."""
    from diffusers import FluxTransformer2DModel, SD3Transformer2DModel

    shutil.copytree(folder, out)
    cfg = json.loads((out / "transformer" / "config.json").read_text())
    cls = FluxTransformer2DModel if cfg["_class_name"] == "FluxTransformer2DModel" else SD3Transformer2DModel
    torch.manual_seed(11)
    transformer = cls.from_config({**cfg, **layers})
    shutil.rmtree(out / "transformer")
    transformer.save_pretrained(out / "transformer")
    return out


@pytest.fixture(scope="module")
def deep(tiny_models, tmp_path_factory):
    root = tmp_path_factory.mktemp("deep")
    return {
        "flux": _deeper(tiny_models["flux"], root / "flux", num_layers=2, num_single_layers=3),
        "sd3": _deeper(tiny_models["sd3"], root / "sd3", num_layers=4),
    }


def ours(folder, workflow, args, step_cache):
    name = workflow.name
    (result,), engine = run_requests(
        folder,
        [dict(args, workflow=name, step_cache=json.dumps(step_cache))],
        models={workflow.models["base"]: folder},
        workflows=[workflow],
    )
    assert result.ok, result.error
    assert engine.plane.live_count() == 0
    return as_hwc(result.outputs["image"]), result.notes


class Computes:
    """Counts the calls in which a block really ran (a hooked-out block never calls its leaves)."""

    def __init__(self, leaf: torch.nn.Module) -> None:
        self.n = 0
        leaf.register_forward_hook(self._count)

    def _count(self, *_):
        self.n += 1


def flux_reference(folder, config, args):
    from diffusers import FluxPipeline

    pipe = FluxPipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(config)
    tail = Computes(pipe.transformer.single_transformer_blocks[-1].proj_out)
    image = pipe(
        args["prompt"],
        num_inference_steps=args["steps"],
        guidance_scale=3.5,
        height=args["height"],
        width=args["width"],
        max_sequence_length=args["max_sequence_length"],
        generator=torch.Generator("cpu").manual_seed(args["seed"]),
        output_type="np",
    ).images[0]
    return image, args["steps"] - tail.n


@pytest.mark.parametrize("threshold,skipped", [(0.1, "none"), (0.3, "some"), (10.0, "all but the first")])
def test_flux_first_block_equals_diffusers(deep, threshold, skipped):
    from diffusers.hooks import FirstBlockCacheConfig

    got, notes = ours(deep["flux"], flux_txt2img("flux"), FLUX_ARGS, {"kind": "first_block", "threshold": threshold})
    ref, ref_skipped = flux_reference(deep["flux"], FirstBlockCacheConfig(threshold=threshold), FLUX_ARGS)
    assert np.abs(got - ref).max() <= 1e-4
    assert notes["step_cache_calls"] == FLUX_ARGS["steps"] and notes["step_cache_skipped"] == ref_skipped
    expected = {"none": ref_skipped == 0, "some": 0 < ref_skipped < FLUX_ARGS["steps"] - 1, "all but the first": ref_skipped == 7}
    assert expected[skipped], ref_skipped


@pytest.mark.parametrize(
    "settings,skipped",
    [
        ({}, 4),  # FLUX_MAG_RATIOS interpolated to the 8 steps run
        ({"max_skip_steps": 1, "retention_ratio": 0.5}, 2),
        # a counter of 5 calls wraps after the fifth and everything starts over, as in diffusers' hook:
        # calls 1-3 skip (3 in a row at most), 4 computes, 5 starts over and computes, 6 and 7 skip
        ({"num_inference_steps": 5, "mag_ratios": [1.0, 1.01, 0.99, 1.02, 0.9], "threshold": 0.05}, 5),
    ],
)
def test_flux_mag_equals_diffusers(deep, settings, skipped):
    from diffusers.hooks import MagCacheConfig
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS

    config = {**MAG_FLUX, **settings}
    got, notes = ours(deep["flux"], flux_txt2img("flux"), FLUX_ARGS, config)
    ref_config = {k: v for k, v in config.items() if k != "kind"}
    ref_config["mag_ratios"] = FLUX_MAG_RATIOS if ref_config["mag_ratios"] == "flux" else ref_config["mag_ratios"]
    ref_config.setdefault("num_inference_steps", FLUX_ARGS["steps"])
    ref, ref_skipped = flux_reference(deep["flux"], MagCacheConfig(**ref_config), FLUX_ARGS)
    assert np.abs(got - ref).max() <= 1e-4
    assert notes["step_cache_skipped"] == ref_skipped == skipped


def test_flux_img2img_counts_the_steps_its_edit_runs(deep):
    """MagCache's step count defaults to the steps the loop runs: an edit's kept steps (here 6 of
    10), as FluxImg2ImgPipeline calls its transformer."""
    from diffusers import FluxImg2ImgPipeline
    from diffusers.hooks import MagCacheConfig
    from diffusers.hooks.mag_cache import FLUX_MAG_RATIOS
    from PIL import Image

    image = Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8))
    args = dict(FLUX_ARGS, steps=10, image=image, strength=0.6)
    got, notes = ours(deep["flux"], flux_img2img("flux"), args, MAG_FLUX)
    pipe = FluxImg2ImgPipeline.from_pretrained(deep["flux"])
    pipe.set_progress_bar_config(disable=True)
    pipe.transformer.enable_cache(MagCacheConfig(mag_ratios=FLUX_MAG_RATIOS, num_inference_steps=6))
    ref = pipe(
        "a castle",
        image=image,
        strength=0.6,
        num_inference_steps=10,
        guidance_scale=3.5,
        height=64,
        width=64,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(FLUX_ARGS["seed"]),
        output_type="np",
    ).images[0]
    assert np.abs(got - ref).max() <= 1e-4
    assert notes["step_cache_calls"] == 6 and notes["step_cache_skipped"] > 0


def sd3_reference(folder, apply, guidance_scale):
    """StableDiffusion3Pipeline with a cache hook applied to its transformer (``apply(transformer)``),
    and how many of its transformer calls skipped the last block."""
    from diffusers import StableDiffusion3Pipeline

    pipe = StableDiffusion3Pipeline.from_pretrained(folder)
    pipe.set_progress_bar_config(disable=True)
    apply(pipe.transformer)
    tail = Computes(pipe.transformer.transformer_blocks[-1].ff)
    args = {k: v for k, v in SD3_ARGS.items() if k not in ("steps", "seed")}
    image = pipe(
        **args,
        num_inference_steps=SD3_ARGS["steps"],
        guidance_scale=guidance_scale,
        generator=torch.Generator("cpu").manual_seed(SD3_ARGS["seed"]),
        output_type="np",
    ).images[0]
    return image, SD3_ARGS["steps"] - tail.n


@pytest.mark.parametrize("guidance_scale", [1.0, 7.0])
def test_sd3_mag_equals_diffusers(deep, guidance_scale):
    """MagCache decides from its step counter alone, so diffusers' one call for both guidance
    branches and our call per branch make the same decisions: equal with guidance too."""
    from diffusers.hooks import MagCacheConfig, apply_mag_cache

    ratios = [1.0, 1.02, 0.99, 1.01, 0.97, 0.9]
    got, notes = ours(deep["sd3"], sd3_txt2img("sd3"), dict(SD3_ARGS, guidance_scale=guidance_scale), {"kind": "mag", "mag_ratios": ratios})
    ref, ref_skipped = sd3_reference(
        deep["sd3"], lambda t: apply_mag_cache(t, MagCacheConfig(mag_ratios=ratios, num_inference_steps=SD3_ARGS["steps"])), guidance_scale
    )
    assert np.abs(got - ref).max() <= 1e-4
    branches = 2 if guidance_scale > 1 else 1
    assert ref_skipped > 0 and notes["step_cache_skipped"] == branches * ref_skipped
    assert notes["step_cache_calls"] == branches * SD3_ARGS["steps"]


@pytest.mark.parametrize("threshold", [0.0, 0.3])
def test_sd3_first_block_equals_diffusers_without_guidance(deep, threshold):
    """diffusers' FirstBlockCache fails on SD3 as it stands: SD3's pipeline sets no cache context,
    and its last block returns no text stream (the tail hook subtracts from None). The reference
    sets the context and lets the last block hand its text input through (SD3 discards the text
    stream after its last block, so the uncached image is unchanged). With guidance, diffusers
    would decide once for both branches from their joint mean, ours per branch: compared at
    guidance 1 only."""
    from diffusers.hooks import FirstBlockCacheConfig, apply_first_block_cache
    from diffusers.hooks.hooks import CacheContext, _set_cache_context

    def apply(transformer):
        last = transformer.transformer_blocks[-1]
        forward = last.forward

        def hands_text_through(hidden_states, encoder_hidden_states, temb, joint_attention_kwargs=None):
            e, h = forward(hidden_states=hidden_states, encoder_hidden_states=encoder_hidden_states, temb=temb)
            return encoder_hidden_states if e is None else e, h

        last.forward = hands_text_through
        apply_first_block_cache(transformer, FirstBlockCacheConfig(threshold=threshold))
        _set_cache_context(transformer, CacheContext("cond"))

    got, notes = ours(deep["sd3"], sd3_txt2img("sd3"), dict(SD3_ARGS, guidance_scale=1.0), {"kind": "first_block", "threshold": threshold})
    ref, ref_skipped = sd3_reference(deep["sd3"], apply, 1.0)
    assert np.abs(got - ref).max() <= 1e-4
    assert notes["step_cache_skipped"] == ref_skipped
    assert (ref_skipped > 0) == (threshold > 0)


def _sample(folder, requests: list[dict], batched: bool, model=None) -> list[dict]:
    """Run the 8-step Flux loop of each request (seed, prompt embedding, step cache) with the
    operators alone: with ``batched``, every denoise call takes all requests at once. Each cache
    state is pickled between steps, as moving to another worker would."""
    registry = default_registry()
    denoise, step, init_cache = registry.get("denoise"), registry.get("sampler_step"), registry.get("init_step_cache")
    cfg, model = load_component(folder, "config"), model or load_component(folder, "denoiser")
    starts = registry.get("init_latents").run(
        cfg, "default", [Item({"seed": r["seed"], "steps": 8, "sampler": "flow_euler", "height": 64, "width": 64}) for r in requests]
    )
    caches = init_cache.run(
        cfg, "default", [Item({"step_cache": r["step_cache"], "sampler": s["sampler"]}) for r, s in zip(requests, starts)]
    )
    runs = [{**s, **c, "embedding": r["embedding"], "guidance": 3.5, "skipped": []} for r, s, c in zip(requests, starts, caches)]
    groups = [list(range(len(runs)))] if batched else [[i] for i in range(len(runs))]
    for _ in range(8):
        for group in groups:
            items = [Item({k: runs[i][k] for k in ("latents", "sampler", "embedding", "guidance", "cache")}) for i in group]
            for i, out in zip(group, denoise.run(model, "default", items)):
                run = runs[i]
                (nxt,) = step.run(None, "unguided", [Item({"latents": run["latents"], "sampler": run["sampler"], "noise": out["noise"]})])
                run.update(nxt, cache=pickle.loads(pickle.dumps(out["cache"])))
                run["skipped"].append(out.get(NOTES, {}).get("step_cache_skipped"))
    return runs


def test_each_item_of_a_batch_decides_on_its_own(deep):
    """Four requests share every denoise call: FirstBlockCache at a threshold that skips some
    steps and at one that skips all but the first, MagCache, and no cache; each has its own seed
    and prompt. Each equals its solo run, step for step in what it skipped, although its
    batch-mates decided otherwise on the same call."""
    from legodiffusion.ops import examples

    cfg = load_component(deep["flux"], "config")
    caches = [{"kind": "first_block", "threshold": 0.3}, {"kind": "first_block", "threshold": 10.0}, MAG_FLUX, None]
    requests = []
    for i, cache in enumerate(caches):
        torch.manual_seed(i)
        requests.append({"seed": 10 + i, "embedding": examples.embedding(cfg, "cpu"), "step_cache": cache and json.dumps(cache)})
    together = _sample(deep["flux"], requests, batched=True)
    for run, alone in zip(together, _sample(deep["flux"], requests, batched=False)):
        assert (run["latents"] - alone["latents"]).abs().max().item() <= 1e-5
        assert run["skipped"] == alone["skipped"]
    assert together[1]["skipped"] == [False] + [True] * 7 and together[3]["skipped"] == [None] * 8
    assert together[2]["skipped"] == [False, False, True, False, True, True, True, False]
    assert 0 < sum(together[0]["skipped"]) < 7
    assert isinstance(together[0]["cache"], FirstBlockState) and isinstance(together[2]["cache"], MagState)


def test_concurrent_requests_on_two_workers_each_equal_their_solo_run(deep):
    """Three requests with different step caches run at once on two workers, their steps placed
    by the scheduler (a step may run on another worker than the step before: its cache state is
    read from the data plane there): each image and count of skipped steps equals the request's
    run alone on one worker."""
    caches = [{"kind": "first_block", "threshold": 0.3}, MAG_FLUX, {"kind": "first_block", "threshold": 10.0}]
    requests = [dict(FLUX_ARGS, seed=i, workflow="flux-txt2img", step_cache=json.dumps(c)) for i, c in enumerate(caches)]
    folder, workflows = deep["flux"], [flux_txt2img("flux")]
    together, _ = run_requests(folder, requests, workers=2, models={"flux": folder}, workflows=workflows)
    for request, result in zip(requests, together):
        (alone,), _ = run_requests(folder, [request], models={"flux": folder}, workflows=workflows)
        assert result.ok and alone.ok
        assert (result.outputs["image"] - alone.outputs["image"]).abs().max().item() <= 1e-4
        assert result.notes == alone.notes and result.notes["step_cache_calls"] == FLUX_ARGS["steps"]


def test_a_compiled_denoiser_runs_cached_calls_eager(deep):
    """Per-sample decisions are Python control flow: with torch.compile on, cached calls run the
    eager module (nothing is compiled for them) and equal a plain eager run."""
    from legodiffusion.ops import examples
    from legodiffusion.runtime.compile import CompileLog, compile_denoiser

    cfg = load_component(deep["flux"], "config")
    torch.manual_seed(0)
    requests = [{"seed": 1, "embedding": examples.embedding(cfg, "cpu"), "step_cache": json.dumps(MAG_FLUX)}]
    log = CompileLog()
    compiled = compile_denoiser(load_component(deep["flux"], "denoiser"), log, "flux")
    (got,), (eager,) = _sample(deep["flux"], requests, True, model=compiled), _sample(deep["flux"], requests, True)
    assert log.events() == [] and log.eager_calls == 0
    assert torch.equal(got["latents"], eager["latents"]) and got["skipped"] == eager["skipped"]


# -- what is refused, at submission -------------------------------------------------------------

FLUX_CFG = PipelineConfig("flux", 16, 8, 64, {}, 77, 32)
SD_CFG = PipelineConfig("sd", 4, 8, 64, {}, 77, 32)


def _issues(spec, inputs, cfg):
    expander = Expander(spec, default_registry())
    bound = bind_inputs(spec, inputs)
    with pytest.raises(WorkflowError) as info:
        check_values(expander.template(bound), bound, expander.registry, lambda model: cfg)
    return [(i.code, i.path) for i in info.value.issues], str(info.value)


@pytest.mark.parametrize(
    "value,words",
    [
        ("first_block", "expected a JSON object"),
        ('{"threshold": 0.1}', "kind must be one of ['first_block', 'mag'], got None"),
        ('{"kind": "teacache"}', "got 'teacache'"),
        ('{"kind": "first_block", "threshold": -1}', "threshold must be a finite number in [0, inf]"),
        ('{"kind": "first_block", "treshold": 0.1}', "unknown setting(s) ['treshold']"),
        ('{"kind": "mag"}', "mag_ratios must be a non-empty list"),
        ('{"kind": "mag", "mag_ratios": [1, "x"]}', "mag_ratios must be"),
        ('{"kind": "mag", "mag_ratios": "flux", "max_skip_steps": 1.5}', "max_skip_steps must be an integer >= 0"),
        ('{"kind": "mag", "mag_ratios": "flux", "retention_ratio": 2}', "retention_ratio must be a finite number in [0, 1]"),
    ],
)
def test_a_bad_step_cache_is_refused_naming_it(value, words):
    issues, message = _issues(flux_txt2img("flux"), {"prompt": "x", "steps": 2, "step_cache": value}, FLUX_CFG)
    assert issues == [("bad_value", "inputs.step_cache")]
    assert words in message


def test_unets_refuse_a_step_cache():
    """The built-in UNet workflows have no step_cache input; a workflow that starts a step cache
    for a UNet model is refused at submission with the reason."""
    with pytest.raises(WorkflowError) as info:
        bind_inputs(sd_txt2img("sd15"), {"prompt": "x", "step_cache": '{"kind": "first_block"}'})
    assert [(i.code, i.path) for i in info.value.issues] == [("unknown_request_input", "inputs.step_cache")]
    wf = WorkflowBuilder("unet-cache", models={"base": "sd15"})
    spec = wf.input("step_cache", "text", default=None)
    init = wf.call("init_latents", model="base", seed=wf.input("seed", "int", default=0), steps=2, sampler="euler")
    wf.output("cache", wf.call("init_step_cache", model="base", step_cache=spec, sampler=init.sampler).cache)
    issues, message = _issues(wf.build(), {"step_cache": '{"kind": "first_block"}'}, SD_CFG)
    assert issues == [("bad_value", "inputs.step_cache")] and "transformer denoisers (flux, sd3), not a sd UNet" in message


def test_the_server_answers_400_naming_step_cache(tiny_models):
    app = create_app({"flux": str(tiny_models["flux"])}, EngineConfig(workers=1, device="cpu"), [flux_txt2img("flux")])
    with TestClient(app) as client:
        r = client.post("/v1/runs", json={"workflow": "flux-txt2img", "inputs": {"prompt": "x", "step_cache": '{"kind": "nope"}'}})
        assert (
            r.status_code == 400
            and r.json()["error"]["path"] == "inputs.step_cache"
            and "kind must be one of" in r.json()["error"]["message"]
        )
        r = client.post("/v1/runs", json={"workflow": "flux-txt2img", "inputs": {"prompt": "x", "step_cache": {"kind": "mag"}}})
        assert r.status_code == 400 and r.json()["error"] == {**r.json()["error"], "code": "type_mismatch", "path": "inputs.step_cache"}


def test_off_by_default(tiny_models):
    """Without step_cache, a Flux run records no step cache and carries None between its steps."""
    (result,), _ = run_requests(
        tiny_models["flux"],
        [dict(FLUX_ARGS, steps=2, workflow="flux-txt2img")],
        models={"flux": tiny_models["flux"]},
        workflows=[flux_txt2img("flux")],
    )
    assert result.ok and "step_cache_calls" not in result.notes
