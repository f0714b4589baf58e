"""The Ray backend across two Ray nodes on this machine: equal images to the local backend,
tensors moving worker to worker (never through the engine), and nothing left behind."""

import time

import numpy as np
import pytest

from legodiffusion.config import RayConfig
from tests.helpers import run_requests
from tests.runtime.test_sharing import WORKFLOWS, mix

pytestmark = pytest.mark.ray


def object_store_objects() -> int:
    from ray._private.internal_api import memory_summary

    line = next(x for x in memory_summary(stats_only=True).splitlines() if x.startswith("Plasma memory usage"))
    return int(line.split(",")[1].split()[0])


def wait_store_empty(limit_s: float = 15.0) -> int:
    """Ray frees an object store copy shortly after its last reference goes; wait for that."""
    deadline = time.monotonic() + limit_s
    while (n := object_store_objects()) and time.monotonic() < deadline:
        time.sleep(0.2)
    return n


def test_three_workflow_mix_on_two_ray_nodes_equals_the_local_backend(ray_cluster, sd15):
    requests = mix(12)
    local, _ = run_requests(sd15, requests, workers=2, workflows=WORKFLOWS)
    on_ray, engine = run_requests(sd15, requests, workers=2, workflows=WORKFLOWS, backend="ray")
    assert all(r.ok for r in on_ray), [r.error for r in on_ray if not r.ok]
    for a, b in zip(local, on_ray, strict=True):
        assert np.abs(a.outputs["image"].numpy() - b.outputs["image"].numpy()).max() <= 1e-4
    assert len(set(engine.backend.placement.values())) == 2, "one worker actor on each Ray node"
    assert engine.coordinator.stats.cross_workflow_batches > 0


@pytest.mark.parametrize("transport", ["object_store", "gloo"])
def test_tensors_move_worker_to_worker_and_everything_is_released(ray_cluster, sd15, transport):
    """Through the object store, consumers pull; with Ray's direct tensor transport (GLOO here,
    NCCL on GPUs: the same code path), the engine has each holder push tensors to the consumer."""
    requests = mix(6)
    local, _ = run_requests(sd15, requests, workers=2, workflows=WORKFLOWS)
    results, engine = run_requests(sd15, requests, workers=2, workflows=WORKFLOWS, backend="ray", ray=RayConfig(tensor_transport=transport))
    assert all(r.ok for r in results)
    for a, b in zip(local, results, strict=True):
        assert np.abs(a.outputs["image"].numpy() - b.outputs["image"].numpy()).max() <= 1e-4
    traffic = engine.backend.last_traffic
    assert traffic["transport"] == transport
    assert traffic["pulls"] > 0 and traffic["pulled_bytes"] > 0, "consumers pulled inputs from the other actor"
    if transport == "gloo":
        assert traffic["pushes"] > 0 and traffic["pushed_bytes"] > 0, "plain tensors went actor to actor over the collective group"
    else:
        assert traffic["pushes"] == 0
    assert traffic["engine_held_bytes"] == 0, "the engine never stores a value"
    images = sum(r.outputs["image"].numel() * r.outputs["image"].element_size() for r in results)
    assert traffic["engine_output_bytes"] == images, "the only bytes the engine read are the final images"
    assert wait_store_empty() == 0, "Ray's object store holds none of our objects after the run"

    assert engine.backend.last_counts == [(0, 0), (0, 0)], "every value was released where it was held (and where copies were pulled)"


@pytest.mark.timeout(120)
def test_a_cancelled_request_leaves_the_workers_free_and_empty(ray_cluster, sd15):
    """Cancelling mid-run releases its values while some of its nodes are still queued on the
    actors: those fail at once (nothing waits for a released value) and the next request runs."""
    import asyncio

    from legodiffusion import Engine, EngineConfig, sd_txt2img

    args = {"prompt": "a harbour", "negative_prompt": "fog", "steps": 20, "guidance_scale": 6.0, "seed": 3, "height": 64, "width": 64}

    async def main():
        async with Engine({"sd15": sd15}, EngineConfig(workers=2, device="cpu", backend="ray", autoscale_interval_s=0)) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            first = engine.submit("sd-txt2img", args)
            while first.steps_done < 3:
                await asyncio.sleep(0.01)
            engine.cancel(first.request_id)
            cancelled = await first.future
            after = await engine.run("sd-txt2img", dict(args, steps=4))
            return cancelled, after, engine

    cancelled, after, engine = asyncio.run(main())
    assert cancelled.status == "cancelled"
    assert after.ok, after.error
    assert engine.backend.last_counts == [(0, 0), (0, 0)]
