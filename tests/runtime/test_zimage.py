"""Z-Image and Z-Image-Turbo decomposed into nodes reproduce ZImagePipeline for the same seed:
guided (two branch nodes, or one cfg_batch node), unguided (Turbo), batched prompts of different
lengths, LoRAs on a shared base, and ``legodiffusion generate``."""

import numpy as np
import pytest
import torch
from diffusers import ZImagePipeline
from PIL import Image
from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.models.components import load_component
from legodiffusion.models.tiny_zimage import write_tiny_zimage_lora
from legodiffusion.ops import default_registry, sampling
from legodiffusion.ops.base import BadValue, Item
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.zimage import zimage_turbo_txt2img, zimage_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_requests

SIZE = dict(height=64, width=64, max_sequence_length=64)
# 3 steps at 64 px: normalised times 0, 0.24 and 0.56, so a truncation at 0.5 leaves the last step unguided
GUIDED = dict(prompt="a red fox", negative_prompt="blurry", guidance_scale=4.0, cfg_normalization=1.0, cfg_truncation=0.5, seed=3, **SIZE)


def reference(folder, lora=None, lora_weight=1.0, steps=3, **args):
    args = dict(args)
    seed = args.pop("seed")
    return reference_pipeline(ZImagePipeline, folder, seed, lora=lora, lora_weight=lora_weight, num_inference_steps=steps, **args)


def run(name, folder, workflow, requests, models=None, **config):
    results, engine = run_requests(
        folder, [dict(r, workflow=workflow.name) for r in requests], models=models or {name: folder}, workflows=[workflow], **config
    )
    assert all(r.ok for r in results), [r.error for r in results]
    assert engine.plane.live_count() == 0
    return [as_hwc(r.outputs["image"]) for r in results], engine


@pytest.fixture(scope="module")
def guided_reference(tiny_models):
    ref = reference(tiny_models["z-image"], **GUIDED)
    plain = reference(tiny_models["z-image"], **dict(GUIDED, cfg_normalization=False, cfg_truncation=1.0))
    assert np.abs(ref - plain).max() > 1e-3, "normalisation and truncation change this image"
    return ref


@pytest.mark.parametrize("batch_cfg", [False, True])
def test_guided_equals_the_pipeline_with_branch_nodes_or_one_cfg_batch_node(tiny_models, guided_reference, batch_cfg):
    (got,), engine = run("z-image", tiny_models["z-image"], zimage_txt2img("z-image"), [dict(GUIDED, steps=3, batch_cfg=batch_cfg)])
    assert np.abs(got - guided_reference).max() <= 1e-4
    # one transformer node per step with batch_cfg, one per guidance branch and step without
    assert engine.coordinator.stats.nodes_by_op["denoise"] == (3 if batch_cfg else 6)


def test_turbo_requests_of_different_prompts_batch_and_each_equal_the_pipeline(tiny_models):
    folder = tiny_models["z-image-turbo"]
    # the first keeps the worker busy while the other two queue up, so their nodes meet in batches
    prompts = ("a boat", "a lighthouse at dusk", "a cat")
    requests = [dict(prompt=p, seed=i, **SIZE) for i, p in enumerate(prompts)]
    got, engine = run("z-image-turbo", folder, zimage_turbo_txt2img("z-image-turbo"), requests, default_latency_batch=8)
    assert engine.coordinator.stats.nodes_by_op["denoise"] == 3 * 8  # Turbo: 8 steps, no guidance
    assert engine.coordinator.stats.cross_request_batches > 0
    for image, args in zip(got, requests):
        assert np.abs(image - reference(folder, steps=8, guidance_scale=0.0, **args)).max() <= 1e-4


@pytest.mark.parametrize("mode", ["default", "cfg_batch"])
def test_one_denoise_call_over_prompts_of_different_lengths_equals_each_alone(tiny_models, mode):
    folder = tiny_models["z-image"]
    cfg, text, denoiser = (load_component(folder, c) for c in ("config", "text_encoder", "denoiser"))
    registry = default_registry()
    prompts = [Item({"text": t, "max_sequence_length": 64}) for t in ("a cat", "a very long prompt about a lighthouse", "")]
    embs = [out["embedding"] for out in registry.get("encode_prompt").run(text, "default", prompts)]
    assert len({e["prompt_embeds"].shape[1] for e in embs}) == 3
    torch.manual_seed(0)
    state = sampling.new_state("flow_euler", cfg.scheduler_config, 3, sigmas=[1.0, 0.6, 0.3], mu=0.5)
    items = []
    for i, emb in enumerate(embs[:2]):
        inputs = {"latents": torch.randn(1, 16, 8, 8), "sampler": state, "embedding": emb}
        if mode == "cfg_batch":
            inputs.update(negative_embedding=embs[2], guidance_scale=3.0, cfg_truncation=1.0)
        items.append(Item(inputs, key=str(i)))
    op = registry.get("denoise")
    together = op.run(denoiser, mode, items)
    for item, out in zip(items, together):
        (alone,) = op.run(denoiser, mode, [item])
        for port, value in alone.items():
            if value is not None:  # (the default mode's step cache: off)
                assert (out[port] - value).abs().max().item() <= 1e-5, port


def test_loras_on_one_resident_base_each_equal_load_lora_weights(tiny_models, tmp_path):
    base = tiny_models["z-image-turbo"]
    lora_a = write_tiny_zimage_lora(tmp_path / "zi-a.safetensors", base, seed=5)
    lora_b = write_tiny_zimage_lora(tmp_path / "zi-b.safetensors", base, seed=6)
    args = dict(prompt="a castle", steps=2, **SIZE)
    requests = [dict(args, seed=1, loras="zi-a:0.8"), dict(args, seed=2, loras="zi-b")]
    models = {"z-image-turbo": base, "zi-a": lora_a, "zi-b": lora_b}
    (got_a, got_b), engine = run("z-image-turbo", base, zimage_turbo_txt2img("z-image-turbo"), requests, models=models)
    (w,) = engine.workers
    assert w.models.load_counts[("z-image-turbo", "denoiser", None)] == 1, "one copy of the base weights"
    assert w.models.patch_loads == 2, "each LoRA injected once, into the transformer"
    plain = reference(base, steps=2, guidance_scale=0.0, seed=1, **{k: v for k, v in args.items() if k != "steps"})
    ref_a = reference(base, lora_a, 0.8, steps=2, guidance_scale=0.0, seed=1, **{k: v for k, v in args.items() if k != "steps"})
    ref_b = reference(base, lora_b, 1.0, steps=2, guidance_scale=0.0, seed=2, **{k: v for k, v in args.items() if k != "steps"})
    assert np.abs(ref_a - plain).max() > 1e-3, "the LoRA changes the image"
    assert np.abs(got_a - ref_a).max() <= 1e-4
    assert np.abs(got_b - ref_b).max() <= 1e-4


def test_bad_input_is_refused_naming_the_field(tiny_models):
    folder = tiny_models["z-image-turbo"]
    with pytest.raises(WorkflowError) as refused:  # at submission, before anything runs
        run_requests(
            folder,
            [dict(prompt="x", height=72, workflow="zimage-turbo-txt2img")],
            models={"z-image-turbo": folder},
            workflows=[zimage_turbo_txt2img()],
        )
    assert "inputs.height" in str(refused.value) and "multiples of 16" in str(refused.value)
    with pytest.raises(BadValue) as err:
        default_registry().get("denoise").check("cfg_batch", {}, load_component(tiny_models["sd3"], "config"))
    assert err.value.port == "negative_embedding"


def test_generate_draws_with_a_zimage_folder(tiny_models, tmp_path):
    out = tmp_path / "zimage.png"
    args = ["generate", "--model", str(tiny_models["z-image"]), "--prompt", "a boat", "--steps", "2", "--height", "64", "--width", "32"]
    result = CliRunner().invoke(app, [*args, "--guidance", "3", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "zimage" in result.output and Image.open(out).size == (32, 64)
