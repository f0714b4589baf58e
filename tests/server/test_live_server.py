"""A real uvicorn server on loopback: auth, the official OpenAI client, SSE, metrics, the Python
client and `legodiffusion run`."""

import base64
import io
import socket
import threading
import time

import pytest
import uvicorn
from PIL import Image
from typer.testing import CliRunner

from legodiffusion import Client
from legodiffusion.cli.main import app as cli
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.limits import Limits
from legodiffusion.workflow.catalog import sd_txt2img

KEY = "secret-key"


@pytest.fixture(scope="module")
def server(tiny_models):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu"),
        [sd_txt2img("sd15")],
        api_keys={KEY},
        limits=Limits(max_steps=50),
    )
    srv = uvicorn.Server(uvicorn.Config(app, host="127.0.0.1", port=port, log_level="warning"))
    thread = threading.Thread(target=srv.run, daemon=True)
    thread.start()
    for _ in range(200):
        if srv.started:
            break
        time.sleep(0.05)
    yield f"http://127.0.0.1:{port}"
    srv.should_exit = True
    thread.join(timeout=10)


def test_auth_closes_everything_but_health(server):
    import httpx

    assert httpx.get(server + "/healthz").status_code == 200
    r = httpx.get(server + "/v1/models")
    assert r.status_code == 401 and r.json()["error"]["code"] == "unauthorized"
    assert httpx.get(server + "/v1/models", headers={"authorization": f"Bearer {KEY}"}).json() == {"models": ["sd15"]}


def test_the_official_openai_client_works_unchanged(server):
    import openai

    client = openai.OpenAI(base_url=server + "/v1", api_key=KEY)
    result = client.images.generate(
        model="sd-txt2img", prompt="a red fox", n=1, size="64x64", response_format="b64_json", extra_body={"steps": 2, "seed": 1}
    )
    assert Image.open(io.BytesIO(base64.b64decode(result.data[0].b64_json))).size == (64, 64)
    with pytest.raises(openai.BadRequestError):
        client.images.generate(model="sd-txt2img", prompt="x", size="64x64", extra_body={"steps": 500})


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
