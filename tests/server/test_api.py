"""The native v1 API and the OpenAI-compatible images endpoint, through FastAPI's test client."""

import base64
import io

import pytest
from fastapi.testclient import TestClient
from PIL import Image

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.workflow.catalog import sd_txt2img


@pytest.fixture(scope="module")
def client(tiny_models):
    app = create_app({"sd15": str(tiny_models["sd15"])}, EngineConfig(workers=1, device="cpu"), [sd_txt2img("sd15")])
    with TestClient(app) as c:
        yield c


def test_health_catalogue_and_errors_are_stable_json(client):
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/v1/catalog/models").json() == {"models": ["sd15"]}
    names = [op["name"] for op in client.get("/v1/operators").json()["operators"]]
    assert "denoise" in names and "encode_prompt" in names
    r = client.post("/v1/runs", json={"workflow": "nope", "inputs": {}})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_workflow"
    r = client.post("/v1/runs", content=b"{not json", headers={"content-type": "application/json"})
    assert r.status_code == 400 and set(r.json()["error"]) >= {"code", "message", "path", "retryable"}
    r = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": 3}})
    assert r.status_code == 400 and r.json()["error"] == {**r.json()["error"], "code": "type_mismatch", "path": "inputs.prompt"}


def test_v1_models_lists_the_workflows_in_openai_shape(client):
    """What a client passes as ``model`` to /v1/images/generations, as OpenAI lists models."""
    body = client.get("/v1/models").json()
    assert body["object"] == "list" and "sd-txt2img" in [m["id"] for m in body["data"]]
    for m in body["data"]:
        assert set(m) == {"id", "object", "created", "owned_by"}
        assert m["object"] == "model" and m["owned_by"] == "legodiffusion" and isinstance(m["created"], int)
    reg = client.post("/v1/workflows", json={"spec": sd_txt2img("sd15", name="listed").to_json()}).json()
    assert reg["id"] in [m["id"] for m in client.get("/v1/models").json()["data"]]
    one = client.get(f"/v1/models/{reg['id']}")
    assert one.status_code == 200 and one.json()["id"] == reg["id"] and one.json()["object"] == "model"
    missing = client.get("/v1/models/nope")
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_model"


def test_register_is_content_addressed_and_validation_names_the_path(client):
    spec = sd_txt2img("sd15", name="mine").to_json()
    first = client.post("/v1/workflows", json={"spec": spec}).json()
    again = client.post("/v1/workflows", json={"spec": spec}).json()
    assert first["created"] is True and again == {"id": first["id"], "created": False}
    spec["nodes"][0]["op"] = "encode_promt"
    r = client.post("/v1/workflows/validate", json={"spec": spec})
    assert r.status_code == 400 and r.json()["error"]["code"] == "unknown_op" and r.json()["error"]["path"] == "nodes.encode_prompt.op"


def test_run_sync_async_poll_and_reject(client):
    inputs = {"prompt": "a boat", "steps": 2, "height": 64, "width": 64}
    done = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": inputs, "wait": True}).json()
    assert done["status"] == "succeeded"
    assert Image.open(io.BytesIO(base64.b64decode(done["images"][0]))).size == (64, 64)
    started = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": inputs}).json()
    assert started["status"] in ("queued", "running", "succeeded") and "images" not in started
    for _ in range(200):
        polled = client.get(f"/v1/runs/{started['id']}").json()
        if polled["status"] == "succeeded":
            break
    assert polled["status"] == "succeeded" and polled["images"]
    rejected = client.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": inputs, "slo_s": 1e-6, "wait": True}).json()
    assert rejected["status"] == "rejected" and rejected["error"]["code"] == "SLO_REJECTED"
    assert client.get("/v1/runs/run-999").status_code == 404


def test_openai_images_endpoint(client):
    r = client.post(
        "/v1/images/generations",
        json={"model": "sd-txt2img", "prompt": "a fox", "n": 2, "size": "64x64", "response_format": "b64_json", "steps": 2, "seed": 3},
    )
    assert r.status_code == 200, r.text
    data = r.json()["data"]
    assert len(data) == 2 and all(Image.open(io.BytesIO(base64.b64decode(d["b64_json"]))).size == (64, 64) for d in data)
    bad = client.post("/v1/images/generations", json={"model": "sd-txt2img", "prompt": "x", "size": "big"})
    assert bad.status_code == 400 and bad.json()["error"]["code"] == "invalid_size"


def test_serve_catalogue_registers_a_workflow_per_base_model(tiny_models):
    from legodiffusion.server.catalog import builtin_workflows, models_under

    models = models_under(tiny_models["sd15"].parent)
    assert {"sd15", "sdxl", "sd3", "flux", "controlnet-sd15", "lora-sd15-a"} <= set(models)
    names = {spec.name for spec in builtin_workflows(models)}
    assert {"sd15-txt2img", "sdxl-txt2img", "sd3-txt2img", "flux-txt2img", "flux-schnell-txt2img"} <= names


def test_structured_logs_carry_the_run_id(client, caplog):
    import json
    import logging

    from legodiffusion.server.logs import JsonFormatter

    with caplog.at_level(logging.INFO, logger="legodiffusion.server"):
        done = client.post(
            "/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "x", "steps": 1, "height": 64, "width": 64}, "wait": True}
        ).json()
    lines = [json.loads(JsonFormatter().format(r)) for r in caplog.records]
    assert {"run submitted", "run succeeded"} <= {line["msg"] for line in lines}
    assert all(line["run_id"] == done["id"] for line in lines)
    assert done["progress"]["steps_done"] == 1


def test_limits_name_themselves(tiny_models):
    from legodiffusion.server.limits import Limits

    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu"),
        [sd_txt2img("sd15")],
        limits=Limits(max_body_bytes=200, max_steps=3, max_pixels=64 * 64),
    )
    with TestClient(app) as c:
        r = c.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "x" * 300}})
        assert r.status_code == 413 and "max_body_bytes" in r.json()["error"]["message"]
        r = c.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "x", "steps": 9}})
        assert r.status_code == 400 and r.json()["error"]["path"] == "inputs.steps" and "max_steps" in r.json()["error"]["message"]
        r = c.post("/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "x", "height": 128, "width": 128}})
        assert r.status_code == 400 and "max_pixels" in r.json()["error"]["message"]


def test_api_keys_come_from_a_file_and_the_environment(tmp_path, monkeypatch):
    from legodiffusion import config

    keys = tmp_path / "keys.txt"
    keys.write_text("# ops\nalpha\n\nbeta\n")
    monkeypatch.setenv("LEGODIFFUSION_API_KEYS", "gamma, delta")
    assert config.api_keys(keys) == {"alpha", "beta", "gamma", "delta"}
    monkeypatch.delenv("LEGODIFFUSION_API_KEYS")
    assert config.api_keys() == set()
