"""SDXL and SD3 ControlNets as their own nodes: equal to StableDiffusionXLControlNetPipeline and
StableDiffusion3ControlNetPipeline (one ControlNet and several, guess mode, CFG on), and two
requests' ControlNet nodes sharing one call.

SD3 is compared in fp32 only: in bf16 its CPU kernels round differently at batch 1 and 2, and
the engine's batches (each guidance branch's transformer call on its own when it reads
residuals) are not the pipeline's two-row ones."""

import asyncio

import numpy as np
import pytest
import torch

from legodiffusion import Engine, EngineConfig
from legodiffusion.models.tiny import write_tiny_models
from legodiffusion.workflow.catalog import sd3_txt2img, sdxl_txt2img
from tests.helpers import as_hwc, random_image, reference_pipeline, run_requests

PROMPT = dict(prompt="a house", negative_prompt="fog", steps=2, guidance_scale=6.0, height=64, width=64)


def _sdxl_reference(tiny_models, controlnets: list[str], seed: int, torch_dtype=torch.float32, **kwargs) -> np.ndarray:
    from diffusers import ControlNetModel, StableDiffusionXLControlNetPipeline

    nets = [ControlNetModel.from_pretrained(tiny_models[n], torch_dtype=torch_dtype) for n in controlnets]
    return reference_pipeline(
        StableDiffusionXLControlNetPipeline,
        tiny_models["sdxl"],
        seed=seed,
        torch_dtype=torch_dtype,
        components={"controlnet": nets[0] if len(nets) == 1 else nets},  # a list: MultiControlNetModel
        prompt=PROMPT["prompt"],
        negative_prompt=PROMPT["negative_prompt"],
        num_inference_steps=PROMPT["steps"],
        guidance_scale=PROMPT["guidance_scale"],
        height=64,
        width=64,
        **kwargs,
    )


def _sd3_reference(tiny_models, controlnets: list[str], seed: int, base=None, **kwargs) -> np.ndarray:
    """The pipeline's image; it encodes the control images with torch's global generator, which
    our encode node's generator, seeded with the request's seed, stands for."""
    from diffusers import SD3ControlNetModel, StableDiffusion3ControlNetPipeline

    nets = [SD3ControlNetModel.from_pretrained(tiny_models[n]) for n in controlnets]
    pipe = StableDiffusion3ControlNetPipeline.from_pretrained(base or tiny_models["sd3"], controlnet=nets[0] if len(nets) == 1 else nets)
    pipe.set_progress_bar_config(disable=True)
    torch.manual_seed(seed)
    out = pipe(
        prompt=PROMPT["prompt"],
        negative_prompt=PROMPT["negative_prompt"],
        num_inference_steps=PROMPT["steps"],
        guidance_scale=PROMPT["guidance_scale"],
        height=64,
        width=64,
        max_sequence_length=32,
        generator=torch.Generator("cpu").manual_seed(seed),
        output_type="np",
        **kwargs,
    )
    return out.images[0]


def _run(tiny_models, family: str, controlnets: tuple[str, ...], inputs: list[dict], dtype: str = "fp32"):
    build = sdxl_txt2img if family == "sdxl" else sd3_txt2img
    wf = build(family, name=f"{family}-cn", controlnets=tuple(f"cn{i}" for i in range(len(controlnets))))
    models = {family: tiny_models[family], **{f"cn{i}": tiny_models[n] for i, n in enumerate(controlnets)}}
    extra = {"max_sequence_length": 32} if family == "sd3" else {}
    results, engine = run_requests(
        tiny_models[family], [dict(PROMPT, **extra, **r, workflow=wf.name) for r in inputs], models=models, workflows=[wf], dtype=dtype
    )
    for r in results:
        assert r.ok, r.error
    assert engine.plane.live_count() == 0
    return [as_hwc(r.outputs["image"]) for r in results]


@pytest.mark.parametrize("dtype", ["fp32", "bf16"])
def test_sdxl_controlnet_matches_the_reference_pipeline(tiny_models, dtype):
    image = random_image(64, 64, seed=1)
    (ours,) = _run(tiny_models, "sdxl", ("controlnet-sdxl",), [dict(seed=9, control_image=image, control_scale=0.7)], dtype)
    torch_dtype = {"fp32": torch.float32, "bf16": torch.bfloat16}[dtype]
    ref = _sdxl_reference(tiny_models, ["controlnet-sdxl"], 9, torch_dtype, image=image, controlnet_conditioning_scale=0.7)
    assert np.abs(ours - ref).max() <= 1e-4


def test_two_sdxl_controlnets_in_guess_mode_match_multicontrolnet(tiny_models):
    a, b = random_image(64, 64, seed=1), random_image(64, 64, seed=2)
    inputs = dict(seed=3, control_image=a, control_image_1=b, control_scale=0.7, control_scale_1=0.4, guess_mode=True)
    (ours,) = _run(tiny_models, "sdxl", ("controlnet-sdxl", "controlnet-sdxl"), [inputs])
    ref = _sdxl_reference(tiny_models, ["controlnet-sdxl"] * 2, 3, image=[a, b], controlnet_conditioning_scale=[0.7, 0.4], guess_mode=True)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = _sdxl_reference(tiny_models, ["controlnet-sdxl"] * 2, 3, image=[a, b], controlnet_conditioning_scale=[0.7, 0.4])
    assert np.abs(plain - ref).max() > 1e-3, "guess mode made no difference: the test would not see it ignored"


def test_sd3_controlnet_matches_the_reference_pipeline(tiny_models):
    """An SD3.5-style ControlNet: the prompt's pooled projection, VAE-shifted control latents."""
    image = random_image(64, 64, seed=1)
    (ours,) = _run(tiny_models, "sd3", ("controlnet-sd3",), [dict(seed=9, control_image=image, control_scale=0.7)])
    ref = _sd3_reference(tiny_models, ["controlnet-sd3"], 9, control_image=image, controlnet_conditioning_scale=0.7)
    assert np.abs(ours - ref).max() <= 1e-4
    other = _sd3_reference(
        tiny_models, ["controlnet-sd3"], 9, control_image=random_image(64, 64, seed=2), controlnet_conditioning_scale=0.7
    )
    assert np.abs(other - ref).max() > 1e-3, "the control image made no difference: the test would not see it ignored"


def test_sd35_8b_controlnet_matches_the_reference_pipeline(tiny_models):
    """An SD3.5-large-style 8b ControlNet (no patch embedding of its own, no text): it reads the
    latents through the base transformer's patch embedding, which the pipeline lends it and our
    graph hands it once per request."""
    image = random_image(64, 64, seed=1)
    (ours,) = _run(tiny_models, "sd3", ("controlnet-sd35",), [dict(seed=4, control_image=image, control_scale=0.8)])
    ref = _sd3_reference(tiny_models, ["controlnet-sd35"], 4, control_image=image, controlnet_conditioning_scale=0.8)
    assert np.abs(ours - ref).max() <= 1e-4
    plain = _sd3_reference(tiny_models, ["controlnet-sd35"], 4, control_image=image, controlnet_conditioning_scale=0.0)
    assert np.abs(plain - ref).max() > 1e-3, "the ControlNet made no difference: the test would not see it ignored"


def test_one_8b_controlnet_steers_two_bases_each_through_its_own_patch_embedding(tiny_models, tmp_path):
    """One resident copy of the ControlNet serves two bases whose patch embeddings differ (another
    seed); each request reads its own base's, as its own pipeline lends it."""
    other = write_tiny_models(tmp_path, seed=1, families=("sd3",), extras=())["sd3"]
    wfs = [sd3_txt2img(base, name=f"{base}-cn", controlnets=("cn",)) for base in ("sd3", "sd3b")]
    models = {"sd3": tiny_models["sd3"], "sd3b": other, "cn": tiny_models["controlnet-sd35"]}
    image = random_image(64, 64, seed=1)
    inputs = dict(PROMPT, max_sequence_length=32, seed=4, control_image=image, control_scale=0.8)
    results, engine = run_requests(None, [dict(inputs, workflow=wf.name) for wf in wfs], models=models, workflows=wfs)
    (worker,) = engine.workers
    assert sum(n for (model, _, _), n in worker.models.load_counts.items() if model == "cn") == 1
    for r, base in zip(results, (tiny_models["sd3"], other)):
        assert r.ok, r.error
        ref = _sd3_reference(tiny_models, ["controlnet-sd35"], 4, base=base, control_image=image, controlnet_conditioning_scale=0.8)
        assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4


def test_an_8b_controlnet_without_the_base_patch_embedding_is_refused_naming_it(tiny_models):
    from legodiffusion.models.components import load_component, pipeline_config
    from legodiffusion.ops import default_registry

    op = default_registry().get("controlnet")
    items = op.example_items(pipeline_config(tiny_models["sd3"]), "default", 1, 64, "cpu")
    with pytest.raises(ValueError, match="patch_embed"):
        op.run(load_component(tiny_models["controlnet-sd35"], "controlnet"), "default", items)


def test_two_sd3_controlnets_match_sd3_multicontrolnet(tiny_models):
    """InstantX-style ControlNets (zero pooled projection, no VAE shift); the second image's noise
    continues the first's generator, as the pipeline's global one."""
    a, b = random_image(64, 64, seed=1), random_image(64, 64, seed=2)
    nets = ("controlnet-sd3-instantx", "controlnet-sd3-instantx")
    (ours,) = _run(tiny_models, "sd3", nets, [dict(seed=5, control_image=a, control_image_1=b, control_scale=0.8, control_scale_1=0.5)])
    ref = _sd3_reference(tiny_models, list(nets), 5, control_image=[a, b], controlnet_conditioning_scale=[0.8, 0.5])
    assert np.abs(ours - ref).max() <= 1e-4


def test_two_requests_share_one_sd3_controlnet_call(tiny_models):
    """Requests arriving together while the worker is busy with an earlier one run their
    ControlNet nodes as one batch, and each image is still its own pipeline's."""
    wf = sd3_txt2img("sd3", name="sd3-cn", controlnets=("cn",))
    requests = [(s, random_image(64, 64, seed=s), sc) for s, sc in ((1, 0.9), (2, 0.6), (3, 0.8))]
    shared = []

    async def main():
        async with Engine(
            {"sd3": tiny_models["sd3"], "cn": tiny_models["controlnet-sd3"]}, EngineConfig(workers=1, device="cpu")
        ) as engine:
            engine.add_workflow(wf)
            engine.on_dispatch_done = lambda d, c: shared.append(len({i.request_id for i in d.items})) if d.op == "controlnet" else None
            # submitted in one go: the first request's nodes take the worker, the others' queue together
            runs = [
                engine.submit("sd3-cn", dict(PROMPT, max_sequence_length=32, seed=s, control_image=im, control_scale=sc))
                for s, im, sc in requests
            ]
            return [await r.future for r in runs], engine.plane.live_count()

    results, live = asyncio.run(main())
    assert max(shared) >= 2, f"no ControlNet call served two requests: {shared}"
    assert live == 0
    for r, (s, im, sc) in zip(results, requests):
        assert r.ok, r.error
        ref = _sd3_reference(tiny_models, ["controlnet-sd3"], s, control_image=im, controlnet_conditioning_scale=sc)
        assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4


def test_a_comfy_sdxl_controlnet_graph_runs_the_sdxl_pipeline_and_refuses_an_sd15_controlnet(tiny_models):
    import io
    import time

    from fastapi.testclient import TestClient
    from PIL import Image

    from legodiffusion.server.app import create_app
    from legodiffusion.server.catalog import builtin_workflows

    models = {k: str(tiny_models[k]) for k in ("sdxl", "controlnet-sdxl", "controlnet-sd15")}
    control = random_image(64, 64, seed=1)
    buf = io.BytesIO()
    control.save(buf, format="PNG")

    def prompt(controlnet: str) -> dict:
        return {
            "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sdxl.safetensors"}},
            "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
            "6": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT["prompt"], "clip": ["4", 1]}},
            "7": {"class_type": "CLIPTextEncode", "inputs": {"text": PROMPT["negative_prompt"], "clip": ["4", 1]}},
            "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": f"{controlnet}.safetensors"}},
            "12": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
            "13": {
                "class_type": "ControlNetApplyAdvanced",
                "inputs": {"positive": ["6", 0], "negative": ["7", 0], "control_net": ["11", 0], "image": ["12", 0], "strength": 0.7},
            },
            "3": {
                "class_type": "KSampler",
                "inputs": {
                    **dict(
                        seed=9, steps=PROMPT["steps"], cfg=PROMPT["guidance_scale"], sampler_name="euler", scheduler="normal", denoise=1.0
                    ),
                    **{"model": ["4", 0], "positive": ["13", 0], "negative": ["13", 1], "latent_image": ["5", 0]},
                },
            },
            "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
            "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
        }

    with TestClient(create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))) as client:
        assert client.post("/upload/image", files={"image": ("edges.png", buf.getvalue(), "image/png")}).status_code == 200
        refused = client.post("/prompt", json={"prompt": prompt("controlnet-sd15")})
        assert refused.status_code == 400 and "'controlnet-sd15' steers sd models, not 'sdxl' (sdxl)" in refused.text
        r = client.post("/prompt", json={"prompt": prompt("controlnet-sdxl")})
        assert r.status_code == 200, r.text
        prompt_id = r.json()["prompt_id"]
        for _ in range(1500):
            history = client.get(f"/history/{prompt_id}").json()
            if history:
                break
            time.sleep(0.02)
        entry = history[prompt_id]
        assert entry["status"]["completed"], entry
        png = client.get("/view", params={"filename": entry["outputs"]["9"]["images"][0]["filename"]}).content
    ours = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)
    ref = (_sdxl_reference(tiny_models, ["controlnet-sdxl"], 9, image=control, controlnet_conditioning_scale=0.7) * 255).round()
    assert np.abs(ours - ref).max() <= 1  # the PNG's rounding
