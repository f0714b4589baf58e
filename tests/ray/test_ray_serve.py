"""`legodiffusion serve --backend ray --address ADDRESS` joins a running Ray cluster and serves;
with `--preload`, its worker actors hold the model before /readyz says ready."""

import base64
import io
import os
import socket
import subprocess
import sys
import time

import httpx
import pytest
from PIL import Image

pytestmark = pytest.mark.ray


def test_serve_on_the_ray_backend_joins_the_cluster(ray_cluster, tiny_models, tmp_path):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    root = tiny_models["sd15"].parent
    cmd = [sys.executable, "-m", "legodiffusion.cli.main", "serve", "--backend", "ray", "--address", ray_cluster.address]
    cmd += ["--model-root", str(root), "--port", str(port), "--workers", "2", "--device", "cpu", "--preload", "sd15"]
    env = dict(os.environ, LEGODIFFUSION_HOME=str(tmp_path))
    proc = subprocess.Popen(cmd, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        ready = None
        for _ in range(600):
            try:
                ready = httpx.get(url + "/readyz")
                if ready.status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert proc.poll() is None, proc.stdout.read()
            time.sleep(0.1)
        held = ["sd15/config", "sd15/denoiser", "sd15/text_encoder", "sd15/vae"]
        assert ready.json()["preloaded"]["loaded"] == 8 and ready.json()["preloaded"]["held"] == {"0": held, "1": held}, ready.text
        body = {"workflow": "sd15-txt2img", "inputs": {"prompt": "a lighthouse", "steps": 3, "height": 64, "width": 64}}
        r = httpx.post(url + "/v1/runs", json=dict(body, wait=True), timeout=120)
        assert r.status_code == 200, r.text
        run = r.json()
        assert run["status"] == "succeeded"
        png = base64.b64decode(run["images"][0])
        assert Image.open(io.BytesIO(png)).size == (64, 64)
        metrics = httpx.get(url + "/metrics").text
        assert 'legodiffusion_workers{state="live"} 2.0' in metrics
    finally:
        proc.terminate()
        proc.wait(timeout=30)
