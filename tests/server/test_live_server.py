"""A real uvicorn server on loopback: auth, the official OpenAI client, SSE, metrics, the Python
client and `legodiffusion run`."""

import base64
import io
import time

import pytest
from PIL import Image
from typer.testing import CliRunner

from legodiffusion import Client
from legodiffusion.cli.main import app as cli
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.limits import Limits
from legodiffusion.workflow.catalog import sd_txt2img
from tests.server.live import serve

KEY = "secret-key"


@pytest.fixture(scope="module")
def server(tiny_models):
    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu"),
        [sd_txt2img("sd15")],
        api_keys={KEY},
        limits=Limits(max_steps=50),
    )
    with serve(app) as url:
        yield url


def test_auth_closes_everything_but_health(server):
    import httpx

    assert httpx.get(server + "/healthz").status_code == 200
    for path in ("/v1/models", "/v1/catalog/models"):
        r = httpx.get(server + path)
        assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(server + "/v1/catalog/models", headers={"authorization": f"Bearer {KEY}"}).json() == {"models": ["sd15"]}
    assert Client(server, api_key=KEY).models() == ["sd15"]


def test_the_official_openai_client_works_unchanged(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    result = client.images.generate(
        model="sd-txt2img", prompt="a red fox", n=1, size="64x64", response_format="b64_json", extra_body={"steps": 2, "seed": 1}
    )
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="sd-txt2img", prompt="x", size="64x64", extra_body={"steps": 500})


def test_the_official_openai_client_lists_the_models_it_may_ask_for(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    models = list(client.models.list())
    assert "sd-txt2img" in [m.id for m in models]
    assert all(m.object == "model" and m.owned_by == "legodiffusion" and isinstance(m.created, int) for m in models)
    assert client.models.retrieve("sd-txt2img").id == "sd-txt2img"
    with pytest.raises(openai.NotFoundError):
        client.models.retrieve("nope")
    for m in models:  # every listed id is one images.generate takes
        result = client.images.generate(model=m.id, prompt="a fox", size="64x64", extra_body={"steps": 1})
        assert result.data[0].b64_json


def test_python_client_follows_sse_progress_and_metrics_count_it(server):
    client = Client(server, api_key=KEY)
    seen = []
    result = client.run("sd-txt2img", {"prompt": "a boat", "steps": 3, "height": 64, "width": 64}, on_progress=seen.append)
    assert result["status"] == "succeeded" and Image.open(io.BytesIO(result["png"][0])).size == (64, 64)
    assert seen and seen[-1]["progress"]["nodes_total"] == 13
    import httpx

    text = httpx.get(server + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert 'legodiffusion_requests_total{status="succeeded",workflow="sd-txt2img"}' in text
    assert "legodiffusion_node_seconds_bucket" in text and "legodiffusion_dataplane_bytes 0.0" in text


def test_cli_run_saves_the_image(server, tmp_path):
    out = tmp_path / "x.png"
    r = CliRunner().invoke(
        cli,
        [
            "run",
            "--url",
            server,
            "--api-key",
            KEY,
            "--workflow",
            "sd-txt2img",
            "--prompt",
            "a cat",
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "-o",
            str(out),
        ],
    )
    assert r.exit_code == 0, r.output
    assert Image.open(out).size == (64, 64)
    bad = CliRunner().invoke(cli, ["run", "--url", server, "--workflow", "sd-txt2img", "--prompt", "a cat"])
    assert bad.exit_code == 2 and "unauthorized" in bad.output


def test_end_to_end_register_sync_async_sse_cancel_and_metrics(server):
    import httpx

    from legodiffusion.workflow.catalog import sd_txt2img

    client = Client(server, api_key=KEY)
    reg = client.register(sd_txt2img("sd15", name="e2e").to_json())
    assert reg["created"] is True and client.register(sd_txt2img("sd15", name="e2e").to_json())["created"] is False
    inputs = {"prompt": "a tree", "steps": 2, "height": 64, "width": 64}
    sync = client._json("POST", "/v1/runs", json={"workflow": reg["id"], "inputs": inputs, "wait": True})
    assert sync["status"] == "succeeded" and sync["images"]
    # a burst on one worker: the last run waits behind the others; cancelling it ends it at once,
    # before it has produced anything
    runs = [client.submit(reg["id"], dict(inputs, steps=20, seed=i)) for i in range(6)]
    assert client.get(runs[-1]["id"])["status"] in ("queued", "running")
    cancelled = client.cancel(runs[-1]["id"])
    assert cancelled["progress"]["steps_done"] < 20
    events = list(client.events(runs[-1]["id"]))
    assert events[-1][0] == "cancelled"
    for _ in range(400):
        final = [client.get(r["id"]) for r in runs[:-1]]
        if all(f["status"] == "succeeded" for f in final):
            break
        time.sleep(0.05)
    assert all(f["status"] == "succeeded" for f in final) and cancelled["id"] == runs[-1]["id"]
    text = httpx.get(server + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert f'legodiffusion_requests_total{{status="cancelled",workflow="{reg["id"]}"}} 1.0' in text


def test_without_a_valid_key_nothing_runs(server):
    import httpx

    before = httpx.get(server + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text.count("legodiffusion_requests_total{")
    for headers in ({}, {"authorization": "Bearer wrong"}):
        r = httpx.post(
            server + "/v1/runs", json={"workflow": "sd-txt2img", "inputs": {"prompt": "x", "steps": 1}, "wait": True}, headers=headers
        )
        assert r.status_code == 401
    time.sleep(0.2)
    metrics = httpx.get(server + "/metrics", headers={"authorization": f"Bearer {KEY}"}).text
    assert metrics.count("legodiffusion_requests_total{") == before
    assert "legodiffusion_requests_in_flight 0.0" in metrics
