"""Surviving worker loss on the local backend: the lost worker's in-flight nodes and tensors are
redone from lineage on the live workers, and the image equals the undisturbed run."""

import asyncio

import numpy as np
import pytest

from legodiffusion import Engine, EngineConfig, sd_txt2img
from tests.core.harness import Harness
from tests.core.test_scheduling_decisions import sd_maker

ARGS = {"prompt": "a harbour", "negative_prompt": "fog", "steps": 20, "guidance_scale": 6.0, "seed": 3, "height": 64, "width": 64}


def run_with_loss(folder, op, at_step):
    """Kill the worker that a dispatch of ``op`` is sent to, once the run reached ``at_step``."""

    async def main():
        async with Engine({"sd15": folder}, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            state = {"run": None, "lost": None}
            loop = asyncio.get_running_loop()

            def sent(d):
                run = state["run"]
                if state["lost"] is None and d.op == op and run is not None and run.steps_done >= at_step:
                    state["lost"] = d.worker
                    loop.call_soon(engine.lose_worker, d.worker)

            engine.on_dispatch_sent = sent
            state["run"] = run = engine.submit("sd-txt2img", ARGS)
            result = await run.future
            return result, engine, state["lost"]

    return asyncio.run(main())


@pytest.mark.parametrize("op,at_step", [("denoise", 10), ("vae_decode", 20)])
def test_a_request_survives_the_loss_of_a_worker(sd15, op, at_step):
    """Mid-way through 20 steps, the worker running the base model dies; or the one decoding."""
    (base,), _ = asyncio.run(_plain(sd15))
    result, engine, lost = run_with_loss(sd15, op, at_step)
    assert lost is not None
    assert result.ok, result.error
    assert np.abs(result.outputs["image"].numpy() - base.outputs["image"].numpy()).max() <= 1e-4
    assert engine.coordinator.stats.recoveries == 1
    assert not engine.coordinator.workers[lost].alive
    assert engine.plane.live_count() == 0


async def _plain(folder):
    async with Engine({"sd15": folder}, EngineConfig(workers=2, device="cpu")) as engine:
        engine.add_workflow(sd_txt2img("sd15"))
        return (await engine.run("sd-txt2img", ARGS),), engine


def test_coordinator_reruns_lost_work_from_lineage_and_frees_everything_once():
    h = Harness(workers=2, policy="default")
    make = sd_maker()
    for rid in range(3):
        h.submit(rid, make, steps=4)
    for _ in range(12):  # some progress on both workers
        h.complete(h.pending.pop(0))
    lost_worker = h.pending[0].worker  # one with work in flight
    dropped = [d for d in h.pending if d.worker == lost_worker]
    h.pending = [d for d in h.pending if d.worker != lost_worker]
    h.apply(h.coord.on_worker_lost(lost_worker, 0.0))
    h.pending = [d for d in h.pending if d.worker != lost_worker]
    assert all(d.worker != lost_worker for d in h.pending)
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
    assert dropped and h.coord.stats.recoveries >= 1
    assert sorted(set(h.freed)) == sorted(h.made)


def test_a_controlnet_request_survives_the_loss_of_the_controlnet_worker(tiny_models):
    """The base model waits on the ControlNet's residuals as a deferred input; when the worker
    running the ControlNet dies, the reader is redone with the re-run ControlNet."""
    from tests.runtime.test_controlnet import control_image

    base, cn = tiny_models["sd15"], tiny_models["controlnet-sd15"]
    wf = sd_txt2img("sd15", name="sd-cn", controlnets=("cn",))
    args = dict(ARGS, steps=6, control_image=control_image(), control_scale=0.7)

    async def main(lose_at_step):
        async with Engine({"sd15": base, "cn": cn}, EngineConfig(workers=2, device="cpu")) as engine:
            engine.add_workflow(wf)
            state = {"run": None, "lost": None}
            loop = asyncio.get_running_loop()

            def sent(d):
                run = state["run"]
                if lose_at_step is not None and state["lost"] is None and d.op == "controlnet" and run.steps_done >= lose_at_step:
                    state["lost"] = d.worker
                    loop.call_soon(engine.lose_worker, d.worker)

            engine.on_dispatch_sent = sent
            state["run"] = run = engine.submit("sd-cn", args)
            return await run.future, engine, state["lost"]

    plain, *_ = asyncio.run(main(None))
    result, engine, lost = asyncio.run(main(3))
    assert lost is not None
    assert result.ok, result.error
    assert np.abs(result.outputs["image"].numpy() - plain.outputs["image"].numpy()).max() <= 1e-4
    assert engine.coordinator.stats.recoveries == 1
    assert engine.plane.live_count() == 0


def test_an_orphan_lost_with_a_second_worker_has_its_late_outputs_dropped():
    """A node running on worker B reads a value held by worker A. A dies: the node is an orphan,
    redone elsewhere, its own result to be dropped whenever it reports. Then B dies too, so that
    result never reports; whatever B's call still writes must be abandoned (dropped by the data
    plane), or it would stay in memory for good."""
    from legodiffusion.core.messages import PENDING
    from legodiffusion.runtime.dataplane import LocalDataPlane

    h = Harness(workers=3, policy="default")
    make = sd_maker()
    for rid in range(4):
        h.submit(rid, make, steps=6)
    orphan = None
    for _ in range(200):
        reads_other = [d for d in h.pending if any(r.worker not in (d.worker, PENDING) for it in d.items for r in it.refs.values())]
        if reads_other:
            orphan = reads_other[0]
            break
        h.complete(h.pending.pop(0))
    assert orphan is not None, "no dispatch read a value held by another worker"
    holder = next(r.worker for it in orphan.items for r in it.refs.values() if r.worker not in (orphan.worker, PENDING))
    h.pending = [d for d in h.pending if d.worker != holder]
    h.apply(h.coord.on_worker_lost(holder, 0.0))
    assert orphan in h.pending  # still running on B, as far as anyone knows
    h.pending = [d for d in h.pending if d.worker != orphan.worker]
    second = h.coord.on_worker_lost(orphan.worker, 0.0)
    h.apply(second)
    late = [tid for it in orphan.items for tid in it.output_ids.values()]
    assert set(late) <= set(second.abandoned)
    plane = LocalDataPlane()
    plane.abandon(second.abandoned)
    for tid in late:  # B's call finishing after all
        plane.put(tid, orphan.worker, b"late")
    assert plane.live_count() == 0
    h.drain()
    assert {o.status for o in h.finished.values()} == {"succeeded"}
