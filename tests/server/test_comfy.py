"""ComfyUI API-format prompts: /prompt, /history, /view, mapped onto the built-in workflow."""

import copy
import io
import time

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from tests.helpers import reference_image

PROMPT = {
    "4": {"class_type": "CheckpointLoaderSimple", "inputs": {"ckpt_name": "sd15.safetensors"}},
    "5": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 2}},
    "6": {"class_type": "CLIPTextEncode", "inputs": {"text": "a lighthouse", "clip": ["4", 1]}},
    "7": {"class_type": "CLIPTextEncode", "inputs": {"text": "blurry", "clip": ["4", 1]}},
    "3": {
        "class_type": "KSampler",
        "inputs": {
            "seed": 5,
            "steps": 3,
            "cfg": 6.0,
            "sampler_name": "ddim",
            "scheduler": "normal",
            "denoise": 1.0,
            "model": ["4", 0],
            "positive": ["6", 0],
            "negative": ["7", 0],
            "latent_image": ["5", 0],
        },
    },
    "8": {"class_type": "VAEDecode", "inputs": {"samples": ["3", 0], "vae": ["4", 2]}},
    "9": {"class_type": "SaveImage", "inputs": {"filename_prefix": "x", "images": ["8", 0]}},
}


@pytest.fixture(scope="module")
def client(tiny_models):
    models = {"sd15": str(tiny_models["sd15"])}
    with TestClient(create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))) as c:
        yield c


def test_a_comfy_txt2img_prompt_runs_and_matches_diffusers(client, sd15):
    r = client.post("/prompt", json={"prompt": PROMPT, "client_id": "t"})
    assert r.status_code == 200, r.text
    body = r.json()
    assert body["node_errors"] == {} and "number" in body
    for _ in range(400):
        history = client.get(f"/history/{body['prompt_id']}").json()
        if history:
            break
        time.sleep(0.02)
    entry = history[body["prompt_id"]]
    assert entry["status"]["completed"] is True
    images = entry["outputs"]["9"]["images"]
    assert len(images) == 2
    png = client.get("/view", params={"filename": images[1]["filename"], "subfolder": "", "type": "output"})
    ours = np.asarray(Image.open(io.BytesIO(png.content)), dtype=np.int16)
    ref = (
        reference_image(sd15, sampler="ddim", prompt="a lighthouse", negative_prompt="blurry", steps=3, guidance_scale=6.0, seed=6) * 255
    ).round()
    assert np.abs(ours - ref).max() <= 1, "batch item i runs with seed + i (ComfyUI draws one batch tensor from the seed)"


def test_unsupported_nodes_are_refused_naming_the_node(client):
    prompt = copy.deepcopy(PROMPT)
    prompt["10"] = {"class_type": "UpscaleModelLoader", "inputs": {}}
    r = client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400
    assert r.json()["node_errors"]["10"]["class_type"] == "UpscaleModelLoader"
    assert r.json()["error"]["path"] == "prompt.10"
    prompt = copy.deepcopy(PROMPT)
    prompt["3"]["inputs"]["sampler_name"] = "dpmpp_sde"
    r = client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 400 and "3" in r.json()["node_errors"]


def test_import_comfy_converts_offline(tmp_path):
    import json

    from typer.testing import CliRunner

    from legodiffusion.cli.main import app
    from legodiffusion.ops import default_registry
    from legodiffusion.workflow.spec import spec_from_json
    from legodiffusion.workflow.validate import validate

    src = tmp_path / "prompt.json"
    src.write_text(json.dumps({"prompt": PROMPT}))
    out = tmp_path / "spec.json"
    r = CliRunner().invoke(app, ["import-comfy", str(src), "-o", str(out)])
    assert r.exit_code == 0, r.output
    spec = json.loads(out.read_text())
    assert spec["inputs"]["prompt"]["default"] == "a lighthouse" and spec["inputs"]["sampler"]["default"] == "ddim"
    validate(spec_from_json(spec), default_registry())
    bad = tmp_path / "bad.json"
    bad.write_text(json.dumps({"1": {"class_type": "UpscaleModelLoader", "inputs": {}}}))
    r = CliRunner().invoke(app, ["import-comfy", str(bad)])
    assert r.exit_code == 2 and "UpscaleModelLoader" in r.output


@pytest.fixture(scope="module")
def adapter_client(tiny_models):
    models = {k: str(tiny_models[k]) for k in ("sd15", "controlnet-sd15", "lora-sd15-a")}
    with TestClient(create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))) as c:
        yield c


def _wait(client, prompt_id):
    for _ in range(500):
        history = client.get(f"/history/{prompt_id}").json()
        if history:
            return history[prompt_id]
        time.sleep(0.02)
    raise AssertionError("prompt did not finish")


def test_comfy_graph_with_a_lora_and_a_controlnet_equals_our_native_run(adapter_client, tiny_models):
    from legodiffusion.workflow.catalog import sd_txt2img
    from tests.helpers import run_requests

    control = Image.fromarray(np.random.default_rng(1).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    buf = io.BytesIO()
    control.save(buf, format="PNG")
    up = adapter_client.post("/upload/image", files={"image": ("edges.png", buf.getvalue(), "image/png")})
    assert up.status_code == 200 and up.json()["name"] == "edges.png"
    prompt = copy.deepcopy(PROMPT)
    prompt["5"]["inputs"]["batch_size"] = 1
    prompt["10"] = {
        "class_type": "LoraLoader",
        "inputs": {
            "model": ["4", 0],
            "clip": ["4", 1],
            "lora_name": "lora-sd15-a.safetensors",
            "strength_model": 0.7,
            "strength_clip": 0.7,
        },
    }
    prompt["11"] = {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "controlnet-sd15.safetensors"}}
    prompt["12"] = {"class_type": "LoadImage", "inputs": {"image": "edges.png"}}
    prompt["13"] = {
        "class_type": "ControlNetApply",
        "inputs": {"conditioning": ["6", 0], "control_net": ["11", 0], "image": ["12", 0], "strength": 0.8},
    }
    prompt["3"]["inputs"].update(model=["10", 0], positive=["13", 0])
    r = adapter_client.post("/prompt", json={"prompt": prompt})
    assert r.status_code == 200, r.text
    entry = _wait(adapter_client, r.json()["prompt_id"])
    assert entry["status"]["completed"], entry
    png = adapter_client.get("/view", params={"filename": entry["outputs"]["9"]["images"][0]["filename"]}).content
    ours = np.asarray(Image.open(io.BytesIO(png)), dtype=np.int16)
    models = {k: tiny_models[k] for k in ("sd15", "controlnet-sd15", "lora-sd15-a")}
    wf = sd_txt2img("sd15", name="native", controlnets=("controlnet-sd15",))
    inputs = dict(
        prompt="a lighthouse",
        negative_prompt="blurry",
        steps=3,
        guidance_scale=6.0,
        sampler="ddim",
        seed=5,
        height=64,
        width=64,
        loras="lora-sd15-a:0.7",
        control_image=control,
        control_scale=0.8,
    )
    (native,), _ = run_requests(tiny_models["sd15"], [dict(inputs, workflow="native")], models=models, workflows=[wf])
    assert native.ok, native.error
    ref = (native.outputs["image"][0].permute(1, 2, 0).numpy() * 255).round()
    assert np.abs(ours - ref).max() <= 1


@pytest.mark.parametrize(
    "sampler_name,scheduler,ours",
    [("euler_ancestral", "normal", "euler_ancestral"), ("dpmpp_2m", "karras", "dpmpp_2m_karras"), ("euler", "karras", "euler_karras")],
)
def test_comfy_samplers_and_schedulers_map_onto_ours(sampler_name, scheduler, ours):
    from legodiffusion.server.comfy import parse

    prompt = copy.deepcopy(PROMPT)
    prompt["3"]["inputs"].update(sampler_name=sampler_name, scheduler=scheduler)
    assert parse(prompt, {"sd15"}).inputs["sampler"] == ours
