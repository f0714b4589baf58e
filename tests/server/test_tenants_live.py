"""Tenants on a real server: two keys of a keys file, one flooding up to its cap while the
other is served; per-tenant caps and rate limits answered 429 with Retry-After naming the tenant;
per-tenant metrics."""

import json

import httpx
import pytest

from legodiffusion import config
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.workflow.catalog import sd_txt2img
from tests.server.live import serve

KEYS = [
    "# a bare key: the default tenant",
    "plain-key",
    json.dumps({"key": "key-a", "tenant": "alpha", "max_in_flight": 4}),
    json.dumps({"key": "key-b", "tenant": "beta", "slo_s": 600}),
    json.dumps({"key": "key-c", "tenant": "gamma", "priority": "low", "rate_per_s": 0.01, "burst": 1}),
]


@pytest.fixture(scope="module")
def server(tiny_models, tmp_path_factory):
    keys_file = tmp_path_factory.mktemp("keys") / "keys.txt"
    keys_file.write_text("\n".join(KEYS) + "\n")
    # one call at a time, one node per call: every dispatch is a choice between the tenants (with
    # batches and a second slot, a lockstep flood leaves gaps another tenant would use anyway)
    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu", slots_per_worker=1, default_throughput_batch=1),
        [sd_txt2img("sd15")],
        api_keys=config.tenant_keys(keys_file),
    )
    with serve(app) as url:
        yield url


def _run(url, key, steps, wait=False):
    body = {"workflow": "sd-txt2img", "inputs": {"prompt": "x", "steps": steps, "height": 64, "width": 64}, "wait": wait}
    return httpx.post(url + "/v1/runs", json=body, headers={"authorization": f"Bearer {key}"}, timeout=120)


def _metrics(url) -> dict[str, float]:
    out = {}
    for line in httpx.get(url + "/metrics", headers={"authorization": "Bearer plain-key"}).text.splitlines():
        if line.startswith("legodiffusion_tenant_"):
            name, value = line.rsplit(" ", 1)
            out[name] = float(value)
    return out


def test_a_flood_up_to_its_cap_does_not_starve_another_tenant(server):
    # long runs (cancelled once beta is served), so alpha is still busy however slow the machine
    # is to answer beta's request: first come first served, beta would wait for all of them
    flood = [_run(server, "key-a", 30) for _ in range(4)]
    assert all(r.status_code == 200 for r in flood), [r.text for r in flood]
    refused = _run(server, "key-a", 30)
    assert refused.status_code == 429 and int(refused.headers["retry-after"]) >= 1
    err = refused.json()["error"]
    assert err["tenant"] == "alpha" and "max_in_flight=4" in err["message"] and err["retryable"] is True

    served = _run(server, "key-b", 2, wait=True).json()
    assert served["status"] == "succeeded"
    auth = {"authorization": "Bearer key-a"}
    states = [httpx.get(f"{server}/v1/runs/{r.json()['id']}", headers=auth).json()["status"] for r in flood]
    assert states.count("succeeded") <= 1, f"beta was served beside alpha's flood, not behind it: {states}"

    for r in flood:  # end the flood: its runs leave the tenant's count
        httpx.post(f"{server}/v1/runs/{r.json()['id']}/cancel", headers=auth)
    m = _metrics(server)
    assert m['legodiffusion_tenant_refusals_total{reason="concurrency",tenant="alpha"}'] == 1
    assert m['legodiffusion_tenant_in_flight{tenant="alpha"}'] == 0
    assert m['legodiffusion_tenant_requests_total{status="succeeded",tenant="beta"}'] == 1
    assert m['legodiffusion_tenant_slo_requests_total{tenant="beta"}'] == 1, "the tenant's default deadline applied"
    assert m['legodiffusion_tenant_slo_met_total{tenant="beta"}'] == 1
    assert m['legodiffusion_tenant_gpu_seconds_total{tenant="beta"}'] > 0
    assert m['legodiffusion_tenant_gpu_seconds_total{tenant="alpha"}'] > 0
    assert _run(server, "key-a", 1, wait=True).json()["status"] == "succeeded", "room again once its runs ended"


def test_a_rate_limit_answers_429_with_retry_after_naming_the_tenant(server):
    assert _run(server, "key-c", 1).status_code == 200
    r = _run(server, "key-c", 1)
    assert r.status_code == 429, r.text
    err = r.json()["error"]
    assert err["tenant"] == "gamma" and "0.01 runs/s" in err["message"]
    assert 1 <= int(r.headers["retry-after"]) <= 100 and err["retry_after_s"] == int(r.headers["retry-after"])
    assert _metrics(server)['legodiffusion_tenant_refusals_total{reason="rate",tenant="gamma"}'] == 1
    assert _run(server, "plain-key", 1, wait=True).json()["status"] == "succeeded", "a bare key: the default tenant, unlimited"


def test_a_bad_keys_file_names_the_line(tmp_path):
    bad = tmp_path / "keys.txt"
    bad.write_text("ok-key\n" + json.dumps({"key": "k", "tenant": "t", "priority": "urgent"}) + "\n")
    with pytest.raises(ValueError, match=r"keys.txt:2: priority must be one of"):
        config.tenant_keys(bad)
    bad.write_text(json.dumps({"key": "k", "tenant": "t", "max_in_flight": 2}) + "\n" + json.dumps({"key": "j", "tenant": "t"}) + "\n")
    with pytest.raises(ValueError, match=r"keys.txt:2: tenant 't' has other settings"):
        config.tenant_keys(bad)
    bad.write_text(json.dumps({"key": "k", "rate": 2}) + "\n")
    with pytest.raises(ValueError, match=r"unknown field\(s\) \['rate'\]"):
        config.tenant_keys(bad)
