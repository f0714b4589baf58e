"""The dashboard on a live server: its JSON and SSE endpoints, a run's node timeline, auth, and the
page itself rendered by a headless Chromium (``browser`` marker) while load runs."""

import io
import json
import threading
from pathlib import Path

import httpx
import pytest
from PIL import Image

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.limits import Limits
from legodiffusion.workflow.catalog import sd_txt2img
from tests.browser import INSTALL, chromium, find_chromium, open_page
from tests.server.live import load, serve

KEY = "dash-key"
AUTH = {"authorization": f"Bearer {KEY}"}
SHOT = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "dashboard_test.png"


def run(i: int, steps: int = 2, slo_s: float | None = None) -> dict:
    body = {"workflow": "sd-txt2img", "inputs": {"prompt": f"a boat {i}", "steps": steps, "height": 64, "width": 64, "seed": i}}
    return body if slo_s is None else dict(body, slo_s=slo_s)


@pytest.fixture(scope="module")
def server(tiny_models):
    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=2, device="cpu"),
        [sd_txt2img("sd15")],
        api_keys={KEY},
        limits=Limits(max_steps=50),
    )
    with serve(app) as url:
        yield url


def succeeded_in_metrics(url: str) -> int:
    text = httpx.get(url + "/metrics", headers=AUTH).text
    return sum(
        int(float(line.rsplit(" ", 1)[1]))
        for line in text.splitlines()
        if line.startswith("legodiffusion_requests_total{") and 'status="succeeded"' in line
    )


def test_snapshot_timeline_and_images_of_finished_runs(server):
    answers = load(server, KEY, [run(i) for i in range(3)] + [run(9, slo_s=600.0)])
    assert [a["status"] for a in answers] == ["succeeded"] * 4
    snap = httpx.get(server + "/v1/dashboard", headers=AUTH).json()
    assert [w["worker"] for w in snap["workers"]] == [0, 1] and all(w["state"] == "live" for w in snap["workers"])
    assert any("sd15/denoiser" in w["resident"] and w["used_bytes"] > 0 for w in snap["workers"])
    assert snap["requests"]["succeeded"] == succeeded_in_metrics(server)
    assert snap["requests_in_flight"] == 0 and snap["batches"] == [] and {"encode_prompt", "sampler_step"} <= set(snap["queues"])
    series = snap["workflows"]["sd-txt2img"]
    assert series["succeeded"] >= 4 and series["slo_runs"] >= 1 and series["slo_attainment"] == 1.0
    assert snap["tenants"]["default"]["requests"]["succeeded"] >= 4 and snap["tenants"]["default"]["gpu_s"] > 0
    recent = {r["id"]: r for r in snap["runs"]}
    last = recent[answers[-1]["id"]]
    # its timeline holds every node of the run exactly once, each on a worker of the pool
    timeline = httpx.get(server + last["timeline"], headers=AUTH).json()
    assert timeline["status"] == "succeeded" and timeline["request_id"] is not None
    assert sum(s["nodes"] for s in timeline["spans"]) == answers[-1]["progress"]["nodes_total"]
    assert {s["worker"] for s in timeline["spans"]} <= {0, 1}
    assert {"encode_prompt", "sampler_step"} <= {s["op"] for s in timeline["spans"]}
    assert all(s["sent_s"] <= s["start_s"] <= s["end_s"] and s["work_s"] >= 0 for s in timeline["spans"])
    png = httpx.get(server + last["images"][0], headers=AUTH)
    assert png.headers["content-type"] == "image/png" and Image.open(io.BytesIO(png.content)).size == (64, 64)
    missing = httpx.get(server + f"/v1/runs/{last['id']}/images/5", headers=AUTH)
    assert missing.status_code == 404 and missing.json()["error"]["code"] == "unknown_image"


def test_events_stream_snapshots(server):
    with httpx.stream("GET", server + "/v1/dashboard/events?interval_s=0.2", headers=AUTH, timeout=30) as r:
        assert r.headers["content-type"].startswith("text/event-stream")
        events = []
        for line in r.iter_lines():
            if line.startswith("data: "):
                events.append(json.loads(line[6:]))
                if len(events) == 2:
                    break
    assert all(len(e["workers"]) == 2 and "queues" in e for e in events)
    bad = httpx.get(server + "/v1/dashboard/events?interval_s=0", headers=AUTH)
    assert bad.status_code == 400 and bad.json()["error"]["path"] == "query.interval_s"


def test_dashboard_is_behind_the_api_key_and_documented(server):
    page = httpx.get(server + "/dashboard")
    assert page.status_code == 401 and "Basic" in page.headers["www-authenticate"]  # a browser asks for the key
    assert httpx.get(server + "/v1/dashboard").status_code == 401
    assert httpx.get(server + "/dashboard", auth=("anyone", "wrong")).status_code == 401
    page = httpx.get(server + "/dashboard", auth=("anyone", KEY))
    assert page.status_code == 200 and "/dashboard/dashboard.js" in page.text
    assert httpx.get(server + "/dashboard/dashboard.js", auth=("", KEY)).headers["content-type"].startswith("text/javascript")
    assert httpx.get(server + "/dashboard/nope.js", headers=AUTH).status_code == 404
    paths = httpx.get(server + "/openapi.json", headers=AUTH).json()["paths"]
    assert {"/v1/dashboard", "/v1/dashboard/events", "/v1/runs/{run_id}/timeline", "/v1/runs/{run_id}/images/{index}"} <= set(paths)
    schema = paths["/v1/dashboard"]["get"]["responses"]["200"]["content"]["application/json"]["schema"]
    assert schema["$ref"].endswith("/Snapshot")


@pytest.mark.browser
def test_chromium_renders_the_dashboard_under_load(server):
    binary = find_chromium()
    if binary is None:
        pytest.skip(f"no Chromium found for the browser test: {INSTALL}")
    with chromium(binary) as page:
        open_page(page, server + "/dashboard", KEY)
        loader = threading.Thread(target=load, args=(server, KEY, [run(20 + i, steps=4) for i in range(6)]))
        loader.start()  # the page loads while the runs go on
        page.wait_for("document.querySelectorAll('#workers tr.worker').length")
        loader.join()
        expected = succeeded_in_metrics(server)
        # the page follows the events stream until it shows what /metrics counts
        page.wait_for(f"document.querySelector('#total-succeeded').textContent === '{expected}'")
        assert page.evaluate("[...document.querySelectorAll('#workers tr.worker')].map(r => r.dataset.worker)") == ["0", "1"]
        assert page.evaluate("document.querySelector('#in-flight').textContent") == "0"
        # the timeline of a finished run: a bar per dispatch, on worker rows, labelled by operator
        spans = page.wait_for("document.querySelectorAll('#timeline g.span').length")
        run_id = page.evaluate("document.querySelector('.run.selected').dataset.run")
        timeline = httpx.get(server + f"/v1/runs/{run_id}/timeline", headers=AUTH).json()
        assert spans == len(timeline["spans"]) > 0
        ops = page.evaluate("[...new Set([...document.querySelectorAll('#timeline g.span')].map(g => g.dataset.op))]")
        assert set(ops) == {s["op"] for s in timeline["spans"]} and "sampler_step" in ops
        assert "sampler_step: ran" in page.evaluate("document.querySelector('#timeline g.span[data-op=sampler_step] title').textContent")
        assert page.evaluate("document.querySelectorAll('#runs .run img').length") > 0
        assert page.evaluate("document.querySelector('#tenants tr.tenant td').textContent") == "default"
        page.screenshot(SHOT)
    assert Image.open(SHOT).size[0] >= 1000
