"""ComfyUI editing graphs: img2img (VAEEncode, ImageScale), KSamplerAdvanced's start_at_step, a
hires fix (KSampler -> LatentUpscale(By) -> KSampler) as one request of ``<model>-hires``, and
inpainting graphs mapped onto ``<model>-inpaint``; each run through ``/prompt`` on a live app and
compared with our native run of the workflow it maps to, or refused naming the node."""

import copy
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image, ImageOps

from legodiffusion.config import EngineConfig
from legodiffusion.ops.sampling import STRENGTH_ROUNDS, kept_steps
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.comfy import ComfyError, parse
from legodiffusion.server.comfy_images import ImageSource, image_for
from legodiffusion.workflow.catalog import sd_img2img
from legodiffusion.workflow.hires import sd_hires
from tests.helpers import as_hwc, run_requests
from tests.server.test_comfy import PROMPT

CKPT = {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}}


def _ksampler(latent, seed=5, steps=4, denoise=1.0, cfg=6.0, sampler="euler", positive=("6", 0)):
    return {
        "class_type": "KSampler",
        "inputs": {
            "seed": seed,
            "steps": steps,
            "cfg": cfg,
            "sampler_name": sampler,
            "scheduler": "normal",
            "denoise": denoise,
            "model": ["4", 0],
            "positive": list(positive),
            "negative": ["7", 0],
            "latent_image": latent,
        },
    }


def img2img_prompt(denoise=0.6, scale=None) -> dict:
    """LoadImage [-> ImageScale] -> VAEEncode -> KSampler(denoise) -> VAEDecode -> SaveImage."""
    prompt = {k: copy.deepcopy(v) for k, v in PROMPT.items() if k != "5"}
    prompt["10"] = {"class_type": "LoadImage", "inputs": {"image": "photo.png"}}
    pixels = ["10", 0]
    if scale is not None:
        w, h, method = scale
        prompt["12"] = {
            "class_type": "ImageScale",
            "inputs": {"image": pixels, "upscale_method": method, "width": w, "height": h, "crop": "disabled"},
        }
        pixels = ["12", 0]
    prompt["11"] = {"class_type": "VAEEncode", "inputs": {"pixels": pixels, "vae": ["4", 2]}}
    prompt["3"] = _ksampler(["11", 0], denoise=denoise, steps=3, sampler="ddim")
    return prompt


def hires_prompt(batch=1, upscale=None, second=None) -> dict:
    """KSampler (EmptyLatentImage 64x64) -> LatentUpscaleBy 1.5 -> KSampler(denoise 0.5) -> VAEDecode."""
    prompt = copy.deepcopy(PROMPT)
    prompt["5"]["inputs"]["batch_size"] = batch
    prompt["3"] = _ksampler(["5", 0], seed=5, steps=3)
    prompt["20"] = upscale or {
        "class_type": "LatentUpscaleBy",
        "inputs": {"samples": ["3", 0], "upscale_method": "bilinear", "scale_by": 1.5},
    }
    prompt["21"] = second or _ksampler(["20", 0], seed=9, steps=4, denoise=0.5)
    prompt["8"]["inputs"]["samples"] = ["21", 0]
    return prompt


def _photo(w=72, h=64, alpha=False) -> Image.Image:
    rng = np.random.default_rng(3)
    image = Image.fromarray(rng.integers(0, 256, (h, w, 4 if alpha else 3), dtype=np.uint8), "RGBA" if alpha else "RGB")
    return image


def _png(image: Image.Image) -> bytes:
    buf = io.BytesIO()
    image.save(buf, format="PNG")
    return buf.getvalue()


@pytest.fixture(scope="module")
def client(tiny_models):
    models = {"sd15": str(tiny_models["sd15"])}
    with TestClient(create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))) as c:
        assert c.post("/upload/image", files={"image": ("photo.png", _png(_photo()), "image/png")}).status_code == 200
        yield c


def _images(client, prompt) -> tuple[str, list[np.ndarray]]:
    r = client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    prompt_id = r.json()["prompt_id"]
    for _ in range(1000):
        history = client.get(f"/history/{prompt_id}").json()
        if history:
            break
        time.sleep(0.02)
    entry = history[prompt_id]
    assert entry["status"]["completed"], entry
    pngs = [client.get("/view", params={"filename": i["filename"]}).content for i in entry["outputs"]["9"]["images"]]
    return prompt_id, [np.asarray(Image.open(io.BytesIO(p)), dtype=np.int16) for p in pngs]


def _native(sd15, workflow, **inputs) -> np.ndarray:
    (result,), _ = run_requests(sd15, [dict(inputs, workflow=workflow.name)], workflows=[workflow])
    assert result.ok, result.error
    return (as_hwc(result.outputs["image"]) * 255).round()


@pytest.mark.parametrize("scale", [None, (48, 40, "bilinear")])
def test_a_comfy_img2img_graph_runs_as_our_img2img(client, sd15, scale):
    _, (ours,) = _images(client, img2img_prompt(denoise=0.6, scale=scale))
    image = _photo() if scale is None else _photo().resize(scale[:2], Image.Resampling.BILINEAR)
    # KSampler: 3 steps at denoise 0.6 run the last 3 of an int(3 / 0.6) = 5-step schedule
    strength = parse(img2img_prompt(denoise=0.6), {"sd15": "sd"}).inputs["strength"]
    assert kept_steps(5, strength) == 3
    ref = _native(
        sd15,
        sd_img2img("sd15"),
        prompt="a lighthouse",
        negative_prompt="blurry",
        image=image,
        steps=5,
        strength=strength,
        sampler="ddim",
        guidance_scale=6.0,
        seed=5,
    )
    assert ours.shape == ref.shape == (image.height, image.width, 3)
    assert np.abs(ours - ref).max() <= 1


def test_a_hires_fix_graph_is_one_request_of_the_hires_workflow(client, sd15):
    prompt_id, (ours,) = _images(client, hires_prompt())
    job, records = client.app.state.server.runs.prompt(prompt_id)
    assert [r.workflow for r in records] == ["sd15-hires"]
    assert job.inputs["hires_steps"] == 8 and kept_steps(8, job.inputs["strength"]) == 4  # 4 steps at denoise 0.5
    ref = _native(
        sd15,
        sd_hires("sd15"),
        prompt="a lighthouse",
        negative_prompt="blurry",
        steps=3,
        seed=5,
        guidance_scale=6.0,
        height=64,
        width=64,
        scale=1.5,
        upscale_mode="bilinear",
        hires_steps=8,
        strength=job.inputs["strength"],
        hires_seed=9,
    )
    assert ours.shape == ref.shape == (96, 96, 3)
    assert np.abs(ours - ref).max() <= 1


def test_a_hires_batch_offsets_both_seeds(client):
    prompt_id, images = _images(
        client,
        hires_prompt(
            batch=2,
            upscale={
                "class_type": "LatentUpscale",
                "inputs": {"samples": ["3", 0], "upscale_method": "nearest-exact", "width": 128, "height": 128, "crop": "disabled"},
            },
        ),
    )
    job, records = client.app.state.server.runs.prompt(prompt_id)
    assert len(records) == 2 and job.inputs["scale"] == 2.0
    assert [job.inputs_for(i)["seed"] for i in (0, 1)] == [5, 6] and [job.inputs_for(i)["hires_seed"] for i in (0, 1)] == [9, 10]
    assert images[0].shape == (128, 128, 3) and np.abs(images[0] - images[1]).max() > 0


def test_ksampler_advanced_start_at_step_is_the_strength_that_runs_the_same_steps():
    prompt = img2img_prompt()
    prompt["3"] = {
        "class_type": "KSamplerAdvanced",
        "inputs": {
            **{k: v for k, v in prompt["3"]["inputs"].items() if k not in ("seed", "denoise")},
            "noise_seed": 4,
            "steps": 22,
            "start_at_step": 7,
            "end_at_step": 10000,
            "add_noise": "enable",
            "return_with_leftover_noise": "disable",
        },
    }
    for family in ("sd", "sd3"):
        job = parse(prompt, {"sd15": family})
        assert job.workflow == "sd15-img2img" and job.inputs["steps"] == 22 and job.inputs["seed"] == 4
        assert kept_steps(22, job.inputs["strength"], STRENGTH_ROUNDS[family]) == 15


@pytest.mark.parametrize("steps,denoise", [(7, 0.3), (20, 0.5), (3, 0.99995), (13, 0.77)])
def test_denoise_is_the_strength_that_runs_the_steps_comfy_runs(steps, denoise):
    prompt = img2img_prompt(denoise=denoise)
    prompt["3"]["inputs"]["steps"] = steps
    for family in ("sd", "flux"):
        inputs = parse(prompt, {"sd15": family}).inputs
        total = steps if denoise > 0.9999 else int(steps / denoise)
        assert inputs["steps"] == total
        assert kept_steps(total, inputs["strength"], STRENGTH_ROUNDS[family]) == steps


def _refusal(prompt, node, match, models=None):
    with pytest.raises(ComfyError, match=match) as info:
        parse(prompt, models or {"sd15": "sd"})
    assert node in info.value.node_errors(), info.value.node_errors()


def _advanced(**inputs):
    prompt = img2img_prompt()
    base = {k: v for k, v in prompt["3"]["inputs"].items() if k not in ("seed", "denoise")}
    prompt["3"] = {"class_type": "KSamplerAdvanced", "inputs": {**base, "noise_seed": 1, **inputs}}
    return prompt


def test_what_cannot_be_mapped_is_refused_naming_the_node():
    _refusal(_advanced(end_at_step=2, steps=3), "3", "end_at_step 2 < steps 3")
    _refusal(_advanced(add_noise="disable"), "3", "add_noise=disable")
    _refusal(_advanced(start_at_step=3, steps=3), "3", "start_at_step must be within 0-2")
    _refusal(img2img_prompt(denoise=0.0), "3", r"denoise must be in \(0, 1\]")
    txt = copy.deepcopy(PROMPT)
    txt["3"]["inputs"]["denoise"] = 0.5
    _refusal(txt, "3", "needs latents to start from")
    _refusal(img2img_prompt(scale=(48, 40, "bislerp")), "12", "upscale_method 'bislerp' is not supported")
    bad_vae = img2img_prompt()
    bad_vae["11"]["inputs"]["vae"] = ["4", 1]
    _refusal(bad_vae, "4", "VAE output")
    squash = {
        "class_type": "LatentUpscale",
        "inputs": {"samples": ["3", 0], "upscale_method": "bilinear", "width": 128, "height": 96, "crop": "disabled"},
    }
    _refusal(hires_prompt(upscale=squash), "20", "changes the aspect ratio")
    _refusal(
        hires_prompt(
            upscale={"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "bislerp", "scale_by": 2}}
        ),
        "20",
        "bislerp",
    )
    _refusal(hires_prompt(second=_ksampler(["20", 0], cfg=3.0, denoise=0.5)), "21", "cfg 3.0 differs from the first sampler's")
    _refusal(hires_prompt(second=_ksampler(["20", 0], sampler="ddim", denoise=0.5)), "21", "sampler 'ddim' differs")
    other_text = hires_prompt(second=_ksampler(["20", 0], denoise=0.5, positive=("22", 0)))
    other_text["22"] = {"class_type": "CLIPTextEncode", "inputs": {"text": "a boat", "clip": ["4", 1]}}
    _refusal(other_text, "21", r"prompt 'a boat' differs from the first sampler's \(node 3: 'a lighthouse'\)")
    twice = hires_prompt()
    twice["3"]["inputs"]["latent_image"] = ["11", 0]
    twice.update(
        {
            "10": {"class_type": "LoadImage", "inputs": {"image": "photo.png"}},
            "11": {"class_type": "VAEEncode", "inputs": {"pixels": ["10", 0], "vae": ["4", 2]}},
        }
    )
    _refusal(twice, "11", "first sampler must start from EmptyLatentImage")


def test_bad_graphs_are_refused_on_the_server_with_node_errors(client):
    unknown = img2img_prompt()
    unknown["10"]["inputs"]["image"] = "never-uploaded.png"
    r = client.post("/prompt", json={"prompt": unknown})
    assert r.status_code == 400 and r.json()["node_errors"]["10"]["class_type"] == "LoadImage"
    assert "was not uploaded" in r.json()["error"]["message"]
    r = client.post("/prompt", json={"prompt": hires_prompt(second=_ksampler(["20", 0], cfg=3.0, denoise=0.5))})
    assert r.status_code == 400 and r.json()["node_errors"]["21"]["class_type"] == "KSampler"
    # a scale off the size factor reaches the workflow's own check, naming the input
    r = client.post(
        "/prompt",
        json={
            "prompt": hires_prompt(
                upscale={"class_type": "LatentUpscaleBy", "inputs": {"samples": ["3", 0], "upscale_method": "bilinear", "scale_by": 1.1}}
            )
        },
    )
    assert r.status_code == 400 and "multiple of 8" in r.text and r.json()["error"]["path"] == "inputs.scale"


def inpaint_prompt(kind="SetLatentNoiseMask", mask_from="LoadImageMask") -> dict:
    prompt = img2img_prompt(denoise=0.8)
    prompt["13"] = (
        {"class_type": "LoadImageMask", "inputs": {"image": "mask.png", "channel": "alpha"}} if mask_from == "LoadImageMask" else None
    )
    mask = ["13", 0] if mask_from == "LoadImageMask" else ["10", 1]
    if prompt["13"] is None:
        del prompt["13"]
    if kind == "SetLatentNoiseMask":
        prompt["14"] = {"class_type": "SetLatentNoiseMask", "inputs": {"samples": ["11", 0], "mask": mask}}
    else:
        del prompt["11"]
        prompt["14"] = {
            "class_type": "VAEEncodeForInpaint",
            "inputs": {"pixels": ["10", 0], "vae": ["4", 2], "mask": mask, "grow_mask_by": 4},
        }
    prompt["3"]["inputs"]["latent_image"] = ["14", 0]
    return prompt


@pytest.mark.parametrize("kind,mask_from", [("SetLatentNoiseMask", "LoadImageMask"), ("VAEEncodeForInpaint", "LoadImage")])
def test_inpaint_graphs_map_onto_the_inpaint_workflow(kind, mask_from):
    job = parse(inpaint_prompt(kind, mask_from), {"sd15": "sd"})
    assert job.workflow == "sd15-inpaint" and job.kind == "inpaint" and job.origin == ("14", kind)
    assert set(job.images) == {"image", "mask"} and job.images["image"].upload == "photo.png"
    mask = job.images["mask"]
    assert (mask.upload, mask.channel, mask.grow) == (
        "mask.png" if mask_from == "LoadImageMask" else "photo.png",
        "alpha",
        4 if kind == "VAEEncodeForInpaint" else 0,
    )
    assert job.inputs["steps"] == 3 and kept_steps(3, job.inputs["strength"]) == 3  # denoise 0.8 of 3 steps: int(3 / 0.8) = 3


def _mask_png(w=72, h=64) -> Image.Image:
    """An RGBA mask: a transparent rectangle (what to repaint) in an opaque image."""
    alpha = np.full((h, w), 255, dtype=np.uint8)
    alpha[16:40, 20:52] = 0
    return Image.fromarray(np.dstack([np.zeros((h, w, 3), np.uint8), alpha]), "RGBA")


@pytest.mark.parametrize("kind", ["SetLatentNoiseMask", "VAEEncodeForInpaint"])
def test_a_comfy_inpaint_graph_runs_as_our_inpaint(client, sd15, kind):
    from legodiffusion.workflow.catalog import sd_inpaint

    assert client.post("/upload/image", files={"image": ("mask.png", _png(_mask_png()), "image/png")}).status_code == 200
    _, (ours,) = _images(client, inpaint_prompt(kind))
    mask = np.asarray(ImageOps.invert(_mask_png().getchannel("A"))) > 127  # white where transparent
    if kind == "VAEEncodeForInpaint":  # grow_mask_by 4: ComfyUI's 4x4 kernel padded by 2 reaches rows/cols i-2 .. i+1
        h, w = mask.shape
        padded, grown = np.pad(mask, ((2, 1), (2, 1))), np.zeros_like(mask)
        for dy in range(4):
            for dx in range(4):
                grown |= padded[dy : dy + h, dx : dx + w]
        mask = grown
    mask = Image.fromarray(mask.astype(np.uint8) * 255, "L")
    strength = parse(inpaint_prompt(kind), {"sd15": "sd"}).inputs["strength"]
    inputs = dict(prompt="a lighthouse", negative_prompt="blurry", image=_photo(), steps=3, strength=strength, sampler="ddim")
    ref = _native(sd15, sd_inpaint("sd15"), mask=mask, guidance_scale=6.0, seed=5, **inputs)
    assert ours.shape == ref.shape == (64, 72, 3)
    assert np.abs(ours - ref).max() <= 1


def test_an_inpaint_graph_without_the_inpaint_workflow_is_refused_naming_its_node(tiny_models):
    models = {"sd15": str(tiny_models["sd15"])}
    workflows = [wf for wf in builtin_workflows(models) if not wf.name.endswith("-inpaint")]
    with TestClient(create_app(models, EngineConfig(workers=1, device="cpu"), workflows)) as c:
        for name, image in (("photo.png", _photo()), ("mask.png", _mask_png())):
            assert c.post("/upload/image", files={"image": (name, _png(image), "image/png")}).status_code == 200
        r = c.post("/prompt", json={"prompt": inpaint_prompt()})
    assert r.status_code == 400, r.text
    assert r.json()["node_errors"]["14"]["class_type"] == "SetLatentNoiseMask" and "sd15-inpaint" in r.json()["error"]["message"]


def test_masks_are_read_as_comfy_reads_them_white_where_to_repaint():
    rgba = np.zeros((8, 8, 4), dtype=np.uint8)
    rgba[..., 3] = 255
    rgba[2, 5, 3] = 0  # one transparent pixel: the one to repaint
    rgba[..., 0] = 200
    uploads = {"m": Image.fromarray(rgba, "RGBA")}
    alpha = np.asarray(image_for(ImageSource("m", "13", "LoadImageMask", channel="alpha"), uploads))
    assert alpha.dtype == np.uint8 and alpha[2, 5] == 255 and alpha.sum() == 255
    red = np.asarray(image_for(ImageSource("m", "13", "LoadImageMask", channel="red"), uploads))
    assert (red == 200).all()
    # grow_mask_by 3: a 3x3 square around the pixel, as ComfyUI's kernel over the rounded mask
    grown = np.asarray(image_for(ImageSource("m", "13", "LoadImageMask", channel="alpha", grow=3), uploads))
    assert grown[1:4, 4:7].min() == 255 and grown.sum() == 9 * 255


def test_import_comfy_converts_a_hires_fix_graph_offline():
    from legodiffusion.ops import default_registry
    from legodiffusion.server.comfy import to_spec
    from legodiffusion.workflow.spec import spec_from_json
    from legodiffusion.workflow.validate import validate

    spec = to_spec(hires_prompt(), "sd")
    assert spec["name"] == "sd15-hires"
    assert {k: spec["inputs"][k]["default"] for k in ("steps", "hires_steps", "scale", "upscale_mode", "hires_seed")} == {
        "steps": 3,
        "hires_steps": 8,
        "scale": 1.5,
        "upscale_mode": "bilinear",
        "hires_seed": 9,
    }
    validate(spec_from_json(spec), default_registry())
