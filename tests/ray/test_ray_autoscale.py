"""Autoscaling on Ray: a step of load raises the hot model's replica target, the engine adds
worker actors (and asks Ray's autoscaler for their resources); when the load ends the target
falls, and the surplus actors are drained and stopped. The load is synthetic, on a synthetic
clock, so the decisions are deterministic."""

import asyncio

import pytest
import ray

from legodiffusion import Engine, EngineConfig, sd_txt2img
from legodiffusion.config import RayConfig
from legodiffusion.core.autoscale import AutoscaleConfig
from legodiffusion.server.metrics import Metrics

pytestmark = pytest.mark.ray

SCALE = AutoscaleConfig(min_replicas=0, max_replicas=4, target_utilisation=0.5, upscale_delay_s=2.0, downscale_delay_s=4.0, window_s=5.0)


def test_a_step_of_load_adds_worker_actors_and_its_end_removes_them(ray_cluster, sd15):
    async def main():
        config = EngineConfig(
            workers=1, device="cpu", backend="ray", ray=RayConfig(min_workers=1, max_workers=3), autoscale=SCALE, autoscale_interval_s=0
        )
        async with Engine({"sd15": sd15}, config) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            t0 = engine._now() + 1000.0  # a synthetic clock, clear of the real requests' observations
            targets = []
            for s in range(6):  # 6 s of load: 1.5 s of sd15 work arriving every second
                engine.autoscaler.observe("sd15", t0 + s, 1.5)
                targets.append(engine.autoscale(t0 + s)["sd15"])
            grown = len([w for w in engine.coordinator.workers if w.alive])
            requested = list(engine.backend.requested)
            while engine.scaling.joining:  # the new actors come up
                await asyncio.sleep(0.05)
            result = await engine.run("sd-txt2img", {"prompt": "x", "steps": 3, "guidance_scale": 5.0, "height": 64, "width": 64})
            used = set(engine.coordinator.stats.items_by_worker)
            for s in range(6, 20):  # the load has ended
                targets.append(engine.autoscale(t0 + s)["sd15"])
            await asyncio.sleep(0)
            live = [w.id for w in engine.coordinator.workers if w.alive]
            gone = [engine.workers[w].handle for w in range(len(engine.workers)) if w not in live]
            return engine, targets, grown, requested, result, used, live, gone, Metrics().render(engine).decode()

    engine, targets, grown, requested, result, used, live, gone, metrics = asyncio.run(main())
    # demand 1.5 s/s over a 5 s window at 50% utilisation: the target climbs once the rise has held 2 s
    assert targets[0] == 0 and max(targets) >= 3 and targets[-1] == 0, targets
    ups = [d for d in engine.autoscaler.decisions if d.new > d.old]
    downs = [d for d in engine.autoscaler.decisions if d.new < d.old]
    assert ups and downs and ups[-1].at_s < downs[0].at_s
    assert grown == 3, "workers follow the target within the configured range [1, 3]"
    assert requested == [{"CPU": 0.25}] * 3, "Ray's autoscaler was asked for three workers' resources"
    assert engine.backend.requested == [{"CPU": 0.25}], "and for one once the load ended"
    assert result.ok and used - {0}, "the added actors took work"
    assert live == [0], "the surplus actors were drained and stopped"
    actions = [e.action for e in engine.scaling.events]
    assert actions.count("add") == 2 and actions.count("drain") == 2 and actions.count("retire") == 2
    for handle in gone:
        with pytest.raises(ray.exceptions.RayActorError):
            ray.get(handle.where.remote(), timeout=10)
    assert 'legodiffusion_scale_events_total{action="add"} 2.0' in metrics
    assert 'legodiffusion_scale_events_total{action="retire"} 2.0' in metrics
    assert 'legodiffusion_replica_target{model="sd15"} 0.0' in metrics
    assert "legodiffusion_workers_lost_total 0.0" in metrics, "retired workers are not counted as lost"
