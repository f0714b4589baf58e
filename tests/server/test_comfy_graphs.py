"""Hostile ComfyUI graphs over a real keep-alive connection: cycles and broken links are 400s that
name the nodes, and no error (expected or not) closes the connection under the client."""

import copy
import http.client
import json
from urllib.parse import urlparse

import pytest

from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from tests.server.live import serve
from tests.server.test_comfy import PROMPT

LORA = {"class_type": "LoraLoader", "inputs": {"clip": ["4", 1], "lora_name": "x.safetensors", "strength_model": 1.0}}
CONTROL = {
    "11": {"class_type": "ControlNetLoader", "inputs": {"control_net_name": "cn.safetensors"}},
    "12": {"class_type": "LoadImage", "inputs": {"image": "edges.png"}},
}


@pytest.fixture(scope="module")
def server(tiny_models):
    models = {"sd15": str(tiny_models["sd15"])}
    app = create_app(models, EngineConfig(workers=1, device="cpu"), builtin_workflows(models))

    async def boom():
        raise RuntimeError("a bug in a handler")

    app.add_api_route("/test/boom", boom)  # an unexpected exception, on the real app and its handlers
    with serve(app) as url:
        yield url


@pytest.fixture
def conn(server):
    """One keep-alive connection for the whole test."""
    c = http.client.HTTPConnection(urlparse(server).netloc, timeout=60)
    yield c
    c.close()


def _call(conn, method: str, path: str, body=None) -> tuple[int, dict]:
    conn.request(method, path, body=None if body is None else json.dumps(body), headers={"content-type": "application/json"})
    r = conn.getresponse()
    return r.status, json.loads(r.read())


def _prompt(**nodes) -> dict:
    """PROMPT with nodes replaced or added (``n3=...`` for node "3"), and node 3's inputs updated by ``ks``."""
    prompt = copy.deepcopy(PROMPT)
    prompt["5"]["inputs"]["batch_size"] = 1
    prompt["3"]["inputs"].update(nodes.pop("ks", {}))
    prompt.update({k[1:]: v for k, v in nodes.items()})
    return prompt


def _lora(model_link) -> dict:
    return {**LORA, "inputs": {**LORA["inputs"], "model": model_link}}


CYCLES = {
    "lora-on-itself": (_prompt(n11=_lora(["11", 0]), ks={"model": ["11", 0]}), {"11"}),
    "two-lora-loop": (_prompt(n10=_lora(["11", 0]), n11=_lora(["10", 0]), ks={"model": ["10", 0]}), {"10", "11"}),
    "controlnet-apply-on-itself": (
        _prompt(
            **{"n" + k: v for k, v in CONTROL.items()},
            n13={
                "class_type": "ControlNetApply",
                "inputs": {"conditioning": ["13", 0], "control_net": ["11", 0], "image": ["12", 0], "strength": 1.0},
            },
            ks={"positive": ["13", 0]},
        ),
        {"13"},
    ),
    "sampler-decoder-loop": (_prompt(ks={"latent_image": ["8", 0]}), {"3", "8"}),
}


@pytest.mark.parametrize("name", sorted(CYCLES))
def test_a_cyclic_graph_is_a_400_naming_the_cycle_and_the_connection_lives_on(conn, name):
    prompt, cycle = CYCLES[name]
    status, body = _call(conn, "POST", "/prompt", {"prompt": prompt})
    assert _call(conn, "GET", "/healthz") == (200, {"status": "ok"})  # same connection
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "cyclic_graph" and err["retryable"] is False
    assert set(body["node_errors"]) == cycle
    assert all(repr(n) in err["message"] for n in cycle), err["message"]


BAD_LINKS = {
    "missing-node": ({"positive": ["99", 0]}, "prompt.3.inputs.positive", "'99'"),
    "output-index-past-the-end": ({"model": ["4", 5]}, "prompt.3.inputs.model", "5"),
    "negative-output-index": ({"model": ["4", -1]}, "prompt.3.inputs.model", "-1"),
    "non-integer-output-index": ({"latent_image": ["5", "0"]}, "prompt.3.inputs.latent_image", "'0'"),
}


@pytest.mark.parametrize("name", sorted(BAD_LINKS))
def test_a_broken_link_is_a_400_naming_the_link(conn, name):
    ks, path, shown = BAD_LINKS[name]
    status, body = _call(conn, "POST", "/prompt", {"prompt": _prompt(ks=ks)})
    assert status == 400, body
    err = body["error"]
    assert err["code"] == "bad_link" and err["path"] == path and err["retryable"] is False
    assert shown in err["message"] and "3" in body["node_errors"]
    assert _call(conn, "GET", "/healthz") == (200, {"status": "ok"})


def test_a_long_acyclic_chain_is_walked_without_recursion(conn):
    depth = 3000  # deeper than Python's recursion limit
    chain = {str(100 + i): _lora(["4", 0] if i == 0 else [str(99 + i), 0]) for i in range(depth)}
    prompt = _prompt(ks={"model": [str(99 + depth), 0]})
    prompt.update(chain)
    status, body = _call(conn, "POST", "/prompt", {"prompt": prompt})
    assert status == 400 and body["error"]["code"] == "unknown_model", body  # the LoRA "x" is not served
    assert _call(conn, "GET", "/healthz") == (200, {"status": "ok"})


def test_an_unexpected_exception_is_a_json_500_not_retryable_and_keeps_the_connection(conn):
    status, body = _call(conn, "GET", "/test/boom")
    assert _call(conn, "GET", "/healthz") == (200, {"status": "ok"})  # same connection, not reset
    assert status == 500
    assert body["error"]["code"] == "internal" and body["error"]["retryable"] is False
    assert "RuntimeError" in body["error"]["message"]
