"""Per-model replica targets follow a step increase of load, with delays, and fall back after."""

from legodiffusion.core.autoscale import AutoscaleConfig, ReplicaAutoscaler


def drive(scaler, model, start, end, rate_per_s, work_s, tick=1.0):
    t, history = start, []
    while t < end:
        for i in range(int(rate_per_s)):
            scaler.observe(model, t - i / max(1, rate_per_s), work_s)  # arrivals in (t - 1, t]
        history.append((t, scaler.update(t).get(model, 0)))
        t += tick
    return history


def test_step_load_raises_the_hot_models_target_and_it_falls_back():
    scaler = ReplicaAutoscaler(
        AutoscaleConfig(min_replicas=1, max_replicas=6, target_utilisation=0.5, upscale_delay_s=3, downscale_delay_s=10, window_s=5)
    )
    calm = drive(scaler, "flux-dev", 0, 20, 1, 0.5)  # 0.5 s of work per second: 1 replica
    assert {n for _, n in calm[8:]} == {1}
    busy = drive(scaler, "flux-dev", 20, 60, 4, 0.5)  # 2 s of work per second: 4 replicas
    assert busy[-1][1] == 4
    first_up = next(t for t, n in busy if n > 1)
    assert first_up >= 20 + 3, "no rise before the upscale delay"
    quiet = drive(scaler, "flux-dev", 60, 120, 0, 0.5)
    assert quiet[-1][1] == 1, "back to the minimum after the load ends"
    first_down = next(t for t, n in quiet if n < 4)
    assert first_down >= 60 + 10, "no fall before the downscale delay"
    ups = [d for d in scaler.decisions if d.new > d.old]
    downs = [d for d in scaler.decisions if d.new < d.old]
    assert ups and downs and all(d.model == "flux-dev" for d in scaler.decisions)


def test_cold_models_scale_to_zero_and_a_blip_does_not_scale():
    scaler = ReplicaAutoscaler(AutoscaleConfig(min_replicas=0, upscale_delay_s=5, downscale_delay_s=5, window_s=5))
    scaler.observe("sd3-medium", 0.0, 0.1)
    assert scaler.update(0.0) == {"sd3-medium": 0}
    assert scaler.update(1.0) == {"sd3-medium": 0}, "a one-second blip is shorter than the upscale delay"
    drive(scaler, "sd3-medium", 2, 30, 2, 1.0)
    assert scaler.targets["sd3-medium"] >= 2
    drive(scaler, "sd3-medium", 30, 60, 0, 0.0)
    assert scaler.targets["sd3-medium"] == 0
