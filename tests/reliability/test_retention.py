"""Retention with caps: finished runs keep PNG bytes and go oldest first past a TTL, a count or a
byte budget (never one in flight); uploads are sized from their header before decoding and kept
within a byte budget; registered workflows within a count (built-ins stay). The clock is injected."""

import base64
import io
import struct
import zlib

import pytest
from fastapi.testclient import TestClient
from PIL import Image
from prometheus_client.parser import text_string_to_metric_families

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.store import Retention
from legodiffusion.workflow.catalog import sd_txt2img
from tests.server.test_comfy import PROMPT

pytestmark = pytest.mark.reliability
INPUTS = {"prompt": "a boat", "steps": 1, "height": 64, "width": 64}


class Clock:
    def __init__(self) -> None:
        self.now_s = 1000.0

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def serve(tiny_models):
    """A client of a fresh server with the given retention."""
    models = {"sd15": str(tiny_models["sd15"])}
    clients = []

    def make(**retention) -> TestClient:
        app = create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models), retention=Retention(**retention))
        clients.append(TestClient(app).__enter__())
        return clients[-1]

    yield make
    for c in clients:
        c.__exit__(None, None, None)


def metrics(client) -> dict:
    out = {}
    for family in text_string_to_metric_families(client.get("/metrics").text):
        for s in family.samples:
            out[(s.name, tuple(sorted(s.labels.items())))] = s.value
    return out


def run(client, **inputs) -> dict:
    r = client.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {**INPUTS, **inputs}, "wait": True})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.text
    return r.json()


def error_code(client, path: str) -> str | None:
    r = client.get(path)
    return r.json()["error"]["code"] if r.status_code == 404 else None


def test_beyond_the_count_the_oldest_finished_go_and_answer_run_expired(serve):
    client = serve(max_runs=3)
    prompt = client.post("/prompt", json={"prompt": {**PROMPT, "5": {**PROMPT["5"], "inputs": {**PROMPT["5"]["inputs"], "batch_size": 1}}}})
    prompt_id = prompt.json()["prompt_id"]
    ids = [run(client, seed=i)["id"] for i in range(4)]  # the prompt's run ended first: it goes first
    assert [error_code(client, f"/v1/runs/{i}") for i in ids] == ["run_expired", None, None, None]
    assert error_code(client, "/v1/runs/run-1") == "run_expired"  # the prompt's run
    assert error_code(client, f"/history/{prompt_id}") == "run_expired"
    assert error_code(client, "/v1/runs/run-999") == "unknown_run" and client.get("/history/prompt-99").json() == {}
    m = metrics(client)
    assert m[("legodiffusion_retention_evictions_total", (("kind", "runs"), ("reason", "count")))] == 2
    assert m[("legodiffusion_retention_evictions_total", (("kind", "prompts"), ("reason", "count")))] == 1
    assert m[("legodiffusion_retained", (("kind", "runs"),))] == 3


def test_after_the_ttl_finished_runs_go_but_never_one_in_flight(serve):
    clock = Clock()
    client = serve(ttl_s=60, clock=clock)
    first = run(client)["id"]
    clock.now_s += 30
    second = run(client)["id"]
    clock.now_s += 31  # first is 61 s old, second 31 s
    assert error_code(client, f"/v1/runs/{first}") == "run_expired" and error_code(client, f"/v1/runs/{second}") is None
    long = client.post("/v1/runs", json={"workflow": "sd15-txt2img", "inputs": {**INPUTS, "steps": 100}}).json()
    assert long["status"] == "queued"
    clock.now_s += 10_000  # far past every TTL while the long run is in flight
    assert error_code(client, f"/v1/runs/{second}") == "run_expired"
    assert error_code(client, f"/v1/runs/{long['id']}") is None, "a run in flight is never pruned"
    client.post(f"/v1/runs/{long['id']}/cancel")
    m = metrics(client)
    assert m[("legodiffusion_retention_evictions_total", (("kind", "runs"), ("reason", "ttl")))] == 2


def test_finished_runs_hold_png_bytes_within_the_byte_budget(serve):
    budget = 30_000
    client = serve(max_run_bytes=budget)
    ids = [run(client, seed=i)["id"] for i in range(12)]
    kept = [i for i in ids if error_code(client, f"/v1/runs/{i}") is None]
    assert kept == ids[len(ids) - len(kept) :] and 0 < len(kept) < len(ids), "the oldest go first"
    pngs = [base64.b64decode(client.get(f"/v1/runs/{i}").json()["images"][0]) for i in kept]
    assert all(p.startswith(b"\x89PNG\r\n\x1a\n") for p in pngs)
    m = metrics(client)
    held = m[("legodiffusion_retained_bytes", (("kind", "runs"),))]
    assert held == sum(len(p) for p in pngs) <= budget, "what is held is the PNG bytes, within the budget"
    assert m[("legodiffusion_retention_evictions_total", (("kind", "runs"), ("reason", "bytes")))] == len(ids) - len(kept)


def _png(width: int, height: int, idat: bytes | None = None) -> bytes:
    """A grayscale PNG of zeros, compressed row by row (a 12000x12000 one is ~140 KB); ``idat``
    replaces its pixel data."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))

    if idat is None:
        z, row, parts = zlib.compressobj(9), bytes(width + 1), []
        for _ in range(height):
            parts.append(z.compress(row))
        idat = b"".join(parts) + z.flush()
    header = struct.pack(">IIBBBBB", width, height, 8, 0, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", idat) + chunk(b"IEND", b"")


def upload(client, name: str, data: bytes):
    return client.post("/upload/image", files={"image": (name, data, "image/png")})


def test_an_upload_is_sized_from_its_header_before_it_is_decoded(serve):
    client = serve(max_upload_pixels=1024 * 1024)
    huge = _png(12_000, 12_000)
    assert len(huge) < 1_000_000  # small on the wire, 144 MB decoded
    r = upload(client, "bomb.png", huge)
    assert r.status_code == 413 and r.json()["error"]["code"] == "limit_exceeded" and "12000x12000" in r.json()["error"]["message"]
    # pixel data that cannot be decoded: refused for its size all the same, so it was never decoded
    r = upload(client, "bomb.png", _png(12_000, 12_000, idat=b"not zlib"))
    assert r.status_code == 413 and r.json()["error"]["code"] == "limit_exceeded"
    r = upload(client, "broken.png", _png(64, 64, idat=b"not zlib"))
    assert r.status_code == 400 and r.json()["error"]["code"] == "invalid_image"
    assert upload(client, "small.png", _png(64, 64)).status_code == 200


def test_uploads_beyond_the_byte_budget_go_oldest_first(serve):
    one = 64 * 64 * 3
    client = serve(max_upload_bytes=2 * one)
    buf = io.BytesIO()
    Image.new("RGB", (64, 64), (10, 20, 30)).save(buf, format="PNG")
    for name in ("a.png", "b.png", "c.png"):
        assert upload(client, name, buf.getvalue()).status_code == 200
    m = metrics(client)
    assert m[("legodiffusion_retained", (("kind", "uploads"),))] == 2
    assert m[("legodiffusion_retained_bytes", (("kind", "uploads"),))] == 2 * one
    assert m[("legodiffusion_retention_evictions_total", (("kind", "uploads"), ("reason", "bytes")))] == 1


def test_registered_workflows_beyond_the_cap_go_least_recent_first_and_built_ins_stay(serve):
    client = serve(max_workflows=2)

    def register(name: str) -> str:
        return client.post("/v1/workflows", json={"spec": sd_txt2img("sd15", name=name).to_json()}).json()["id"]

    a, b = register("a"), register("b")
    r = client.post("/v1/runs", json={"workflow": a, "inputs": INPUTS, "wait": True})  # a is used: b is now the least recent
    assert r.json()["status"] == "succeeded"
    c = register("c")
    listed = client.get("/v1/workflows").json()["workflows"]
    assert a in listed and c in listed and b not in listed and "sd15-txt2img" in listed
    r = client.post("/v1/runs", json={"workflow": b, "inputs": INPUTS})
    assert r.status_code == 404 and r.json()["error"]["code"] == "unknown_workflow"
    m = metrics(client)
    assert m[("legodiffusion_retention_evictions_total", (("kind", "workflows"), ("reason", "count")))] == 1
    assert m[("legodiffusion_retained", (("kind", "workflows"),))] == 2
