"""LoRA as a patch on the shared base model, with bounded asynchronous loading."""

import numpy as np
from diffusers import StableDiffusionPipeline

from tests.helpers import as_hwc, reference_pipeline, run_requests


def reference(base, lora, weight=1.0, **kwargs):
    return reference_pipeline(StableDiffusionPipeline, base, lora=lora, lora_weight=weight, **kwargs)


def models(tiny):
    return {"sd15": tiny["sd15"], "lora-a": tiny["lora-sd15-a"], "lora-b": tiny["lora-sd15-b"]}


ARGS = dict(prompt="a portrait", negative_prompt="blur", steps=3, guidance_scale=6.0, height=64, width=64)


def test_two_loras_share_one_base_copy_and_each_equals_load_lora_weights(tiny_models):
    reqs = [dict(ARGS, seed=1, loras="lora-a"), dict(ARGS, seed=2, loras="lora-b:0.5")]
    results, engine = run_requests(tiny_models["sd15"], reqs, models=models(tiny_models))
    assert all(r.ok for r in results), [r.error for r in results]
    (w,) = engine.workers
    assert w.models.load_counts[("sd15", "denoiser", None)] == 1, "one copy of the base weights"
    assert w.models.patch_loads == 4, "each LoRA injected once into the UNet and once into the text encoder"
    ref_a = reference(
        tiny_models["sd15"], tiny_models["lora-sd15-a"], seed=1, **{k: v for k, v in ARGS.items() if k != "steps"}, num_inference_steps=3
    )
    ref_b = reference(
        tiny_models["sd15"],
        tiny_models["lora-sd15-b"],
        0.5,
        seed=2,
        **{k: v for k, v in ARGS.items() if k != "steps"},
        num_inference_steps=3,
    )
    assert np.abs(as_hwc(results[0].outputs["image"]) - ref_a).max() <= 1e-4
    assert np.abs(as_hwc(results[1].outputs["image"]) - ref_b).max() <= 1e-4
    assert results[0].notes["lora_active_from_step"] == 0
    # batches never mix patch sets
    plain, _ = run_requests(tiny_models["sd15"], [dict(ARGS, seed=1)], models=models(tiny_models))
    assert np.abs(plain[0].outputs["image"].numpy() - results[0].outputs["image"].numpy()).max() > 1e-3, "the LoRA changes the image"


def test_bounded_async_loading_applies_the_lora_by_step_k(tiny_models, monkeypatch):
    import time

    from legodiffusion.models import store

    slow = store.load_lora_file

    def slow_load(path, family):
        time.sleep(1.0)
        return slow(path, family)

    monkeypatch.setattr(store, "load_lora_file", slow_load)
    warm = dict(ARGS, steps=1, seed=0)  # the base model resident first, so only the LoRA is slow
    (_, r), _ = run_requests(
        tiny_models["sd15"], [warm, dict(ARGS, steps=6, seed=1, loras="lora-a", lora_k=2)], models=models(tiny_models), sequential=True
    )
    assert r.ok, r.error
    assert 0 < r.notes["lora_active_from_step"] <= 2


def test_unknown_lora_is_refused_before_any_work(tiny_models):
    import pytest

    from legodiffusion.workflow.errors import WorkflowError

    with pytest.raises(WorkflowError, match="unknown LoRA 'nope'"):
        run_requests(tiny_models["sd15"], [dict(ARGS, seed=1, loras="nope:0.3")], models=models(tiny_models))


def test_flux_lora_matches_load_lora_weights(tiny_models, tmp_path):
    from diffusers import FluxPipeline

    from legodiffusion.models.tiny import write_tiny_flux_lora
    from legodiffusion.workflow.catalog import flux_txt2img

    base = tiny_models["flux"]
    lora = write_tiny_flux_lora(tmp_path / "flux-lora.safetensors", base, seed=3)
    args = dict(prompt="a castle", steps=2, guidance=3.5, seed=2, height=64, width=64, max_sequence_length=32)
    (r,), engine = run_requests(
        base, [dict(args, workflow="flux-txt2img", loras="fl:0.8")], models={"flux": base, "fl": lora}, workflows=[flux_txt2img("flux")]
    )
    assert r.ok, r.error
    ref = reference_pipeline(
        FluxPipeline,
        base,
        seed=2,
        lora=lora,
        lora_weight=0.8,
        prompt="a castle",
        num_inference_steps=2,
        guidance_scale=3.5,
        height=64,
        width=64,
        max_sequence_length=32,
    )
    assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4
    (w,) = engine.workers
    assert w.models.patch_loads == 1
