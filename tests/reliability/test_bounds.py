"""Every request's cost is bounded before it is accepted, from its expanded graph (issue 14, item 1):
a workflow whose loop count is ``iters`` and sizes ``h``/``w`` is bounded like the built-in ones,
a loop count far beyond the node bound is refused before anything is expanded, sizes beyond what
a model call is profiled at are refused, the profiled work is bounded, the template cache stays
within its budget, and a large expansion does not stall the event loop."""

from __future__ import annotations

import asyncio
import threading

import httpx
import pytest
from fastapi.testclient import TestClient

from legodiffusion import Engine, EngineConfig, sd_txt2img
from legodiffusion.ops import default_registry
from legodiffusion.profiles.profiler import measure, profile_path
from legodiffusion.server.app import create_app
from legodiffusion.server.catalog import builtin_workflows
from legodiffusion.server.limits import Limits
from legodiffusion.workflow import expand
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.errors import WorkflowError
from tests.server.live import serve

pytestmark = pytest.mark.reliability


def renamed(name: str = "renamed"):
    """An unguided text-to-image workflow whose step count is ``iters`` and size ``h`` x ``w``."""
    wf = WorkflowBuilder(name, models={"base": "sd15"})
    iters = wf.input("iters", "int", default=2)
    h, w = wf.input("h", "int", default=64), wf.input("w", "int", default=64)
    cond = wf.call("encode_prompt", model="base", text=wf.input("text", "text"))
    init = wf.call("init_latents", model="base", seed=wf.input("seed", "int", default=0), steps=iters, sampler="euler", height=h, width=w)

    def step(latents, state):
        c = wf.call("denoise", model="base", latents=latents, sampler=state, embedding=cond.embedding)
        s = wf.call("sampler_step", mode="unguided", latents=latents, sampler=state, noise=c.noise)
        return s.latents, s.sampler

    loop = wf.denoise_loop(iters, init.latents, init.sampler, step)
    wf.output("image", wf.call("vae_decode", model="base", latents=loop.latents).image)
    return wf.build()


@pytest.fixture(scope="module")
def client(tiny_models, tmp_path_factory):
    models = {"sd15": str(tiny_models["sd15"])}
    config = EngineConfig(workers=1, device="cpu", profile_dir=tmp_path_factory.mktemp("no-profiles"))
    with TestClient(create_app(models, config, [*builtin_workflows(models), renamed()])) as c:
        yield c


def _run(client, workflow, **inputs):
    text = {"prompt": "x"} if workflow == "sd15-txt2img" else {"text": "x"}
    return client.post("/v1/runs", json={"workflow": workflow, "inputs": {**text, **inputs}, "wait": True})


def _refused(r, bound: str, path: str | None = None) -> dict:
    assert r.status_code == 400, r.text
    err = r.json()["error"]
    assert err["code"] == "limit_exceeded" and bound in err["message"] and err["retryable"] is False, err
    if path is not None:
        assert err["path"] == path, err
    return err


def test_a_workflow_with_its_own_input_names_is_bounded_like_the_builtins(client):
    assert _run(client, "renamed", iters=2).json()["status"] == "succeeded"
    _refused(_run(client, "renamed", iters=500), "max_steps=200", "inputs.iters")
    _refused(_run(client, "renamed", h=4096, w=4096), "max_pixels", "inputs.h")
    _refused(_run(client, "renamed", h=8, w=100000), "max_side", "inputs.w")


def test_a_huge_loop_count_is_refused_before_anything_is_expanded(client):
    """10**12 iterations: were they unrolled, this would not return."""
    _refused(_run(client, "renamed", iters=10**12), "max_nodes", "inputs.iters")


def test_sizes_within_max_pixels_but_beyond_reason_are_refused(client):
    r = client.post("/v1/images/generations", json={"model": "sd15-txt2img", "prompt": "x", "size": "100000x8", "steps": 1})
    _refused(r, "max_side", "inputs.width")
    # 2048x2048 is within max_pixels; these models are not profiled at any size, so their cost there is a guess
    _refused(_run(client, "sd15-txt2img", steps=1, height=2048, width=2048), "max_unprofiled_pixels", "inputs.height")


@pytest.fixture(scope="module")
def profiled(sd15, tmp_path_factory):
    """A profile dir holding a real (quick) measurement of the tiny SD1.5 at 64x64."""
    where = tmp_path_factory.mktemp("profiles")
    ops = [("encode_prompt", "default"), ("init_latents", "default"), ("denoise", "default"), ("vae_decode", "default")]
    ops += [("sampler_step", "guided"), ("sampler_step", "unguided")]
    measure(sd15, default_registry(), ops, "cpu", batches=(1,), sizes=(64,), repeats=1).save(profile_path(sd15, "cpu", where))
    return where


def test_profiled_work_is_bounded_and_sizes_beyond_the_profile_only_so_far(sd15, profiled):
    from legodiffusion.workflow.bounds import RequestBounds

    engine = Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu", profile_dir=profiled))
    engine.add_workflow(sd_txt2img("sd15"))
    small = engine.prepare("sd-txt2img", {"prompt": "x", "steps": 2, "height": 64, "width": 64})
    large = engine.prepare("sd-txt2img", {"prompt": "x", "steps": 100, "height": 64, "width": 64})
    assert small.cost.profiled and 0 < small.cost.work_s < large.cost.work_s
    bounds = RequestBounds(max_request_work_s=(small.cost.work_s + large.cost.work_s) / 2)
    assert (
        engine.prepare("sd-txt2img", {"prompt": "x", "steps": 2, "height": 64, "width": 64}, bounds=bounds).cost.work_s == small.cost.work_s
    )
    with pytest.raises(WorkflowError, match="max_request_work_s") as exc:
        engine.prepare("sd-txt2img", {"prompt": "x", "steps": 100, "height": 64, "width": 64}, bounds=bounds)
    assert exc.value.issues[0].code == "limit_exceeded"
    # profiled at 64x64: up to max_unprofiled_pixels beyond it, charged in proportion to the pixels
    wide = engine.prepare("sd-txt2img", {"prompt": "x", "steps": 2, "height": 512, "width": 512})
    assert wide.cost.work_s > small.cost.work_s
    with pytest.raises(WorkflowError, match="profiled up to 4096 pixels"):
        engine.prepare(
            "sd-txt2img", {"prompt": "x", "steps": 2, "height": 1024, "width": 1024}, bounds=RequestBounds(max_unprofiled_pixels=512 * 512)
        )


def test_the_template_cache_stays_within_its_node_budget(sd15):
    engine = Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu", template_cache_nodes=2000))
    engine.add_workflow(sd_txt2img("sd15"))
    engine.add_workflow(renamed())
    for steps in range(1, 201):  # 400 distinct shapes of up to ~600 nodes each
        engine.prepare("sd-txt2img", {"prompt": "x", "steps": steps})
        engine.prepare("renamed", {"text": "x", "iters": steps})
        assert engine.templates.nodes <= 2000
    last = engine.prepare("renamed", {"text": "x", "iters": 200}).template
    assert engine.prepare("renamed", {"text": "x", "iters": 200}).template is last  # the recent one is kept
    assert len(engine.templates) <= 5


def test_healthz_answers_while_a_large_request_is_expanded(tiny_models, monkeypatch):
    """The expansion of the request marked by ``iters=150`` waits (up to 10 s) until /healthz has
    answered. Were expansion on the event loop, /healthz could only answer after it."""
    started, answered, expanded = threading.Event(), threading.Event(), threading.Event()
    unroll = expand._Unroller.run

    def run(self):
        if self.inputs.get("iters") == 150:
            started.set()
            answered.wait(timeout=10)
            try:
                return unroll(self)
            finally:
                expanded.set()
        return unroll(self)

    monkeypatch.setattr(expand._Unroller, "run", run)
    models = {"sd15": str(tiny_models["sd15"])}
    app = create_app(models, EngineConfig(workers=1, device="cpu"), [renamed()], limits=Limits())
    with serve(app) as url:
        result: dict = {}

        def post():
            body = {"workflow": "renamed", "inputs": {"text": "x", "iters": 150, "h": 64, "w": 64}}
            result["r"] = httpx.post(url + "/v1/runs", json=body, timeout=60)

        poster = threading.Thread(target=post)
        poster.start()
        assert started.wait(timeout=30)
        health = httpx.get(url + "/healthz", timeout=60)
        during = not expanded.is_set()
        answered.set()
        poster.join(timeout=60)
        assert health.status_code == 200 and during
        run_id = result["r"].json()["id"]
        httpx.post(f"{url}/v1/runs/{run_id}/cancel", timeout=30)


def test_prepare_is_safe_from_many_threads(sd15):
    """Prepares of distinct and equal shapes from threads at once give the templates one thread does."""
    engine = Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu"))
    engine.add_workflow(sd_txt2img("sd15"))

    async def main():
        inputs = [{"prompt": "x", "steps": 1 + i % 7} for i in range(28)]
        got = await asyncio.gather(*(asyncio.to_thread(engine.prepare, "sd-txt2img", i) for i in inputs))
        return [(len(p.template.nodes), p.cost.work_s) for p in got], inputs

    got, inputs = asyncio.run(main())
    assert got == [(len(p.template.nodes), p.cost.work_s) for p in (engine.prepare("sd-txt2img", i) for i in inputs)]


def test_a_hires_second_stage_is_bounded_at_its_scaled_size(sd15):
    """The second stage runs at height x scale: within the bounds at the first stage's size is not enough."""
    from legodiffusion.workflow.bounds import RequestBounds
    from legodiffusion.workflow.hires import sd_hires

    engine = Engine({"sd15": sd15}, EngineConfig(workers=1, device="cpu"))
    engine.add_workflow(sd_hires("sd15"))
    bounds = RequestBounds(max_pixels=128 * 128, max_unprofiled_pixels=128 * 128)
    base = {"prompt": "x", "steps": 2, "height": 64, "width": 64}
    assert engine.prepare("sd-hires", dict(base, scale=2.0), bounds=bounds).cost.px == 128 * 128
    with pytest.raises(WorkflowError, match=r"inputs\.scale: 192x192 exceeds max_pixels"):
        engine.prepare("sd-hires", dict(base, scale=3.0), bounds=bounds)
    # at the model's native size (64x64 for the tiny model) the scaled size is bounded too
    with pytest.raises(WorkflowError, match=r"inputs\.scale: 256x256 exceeds max_pixels"):
        engine.prepare("sd-hires", {"prompt": "x", "steps": 2, "scale": 4.0}, bounds=bounds)
