"""Qwen-Image decomposed into nodes reproduces QwenImagePipeline for the same seed: with and without
true CFG, prompts of different lengths batched in one transformer call, LoRAs on a shared base,
and through ``legodiffusion generate``."""

import numpy as np
import pytest
from diffusers import QwenImagePipeline
from PIL import Image
from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.models.components import load_component
from legodiffusion.models.tiny_qwenimage import write_tiny_qwenimage_lora
from legodiffusion.ops import default_registry
from legodiffusion.ops.base import Item
from legodiffusion.server.catalog import workflows_for
from legodiffusion.workflow.qwenimage import qwenimage_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_alone, run_requests

# 32 x 48 px: 8 x 12 latents, 24 packed tokens; prompts of a few tokens keep every call small
ARGS = dict(steps=2, seed=3, height=32, width=48, max_sequence_length=64)


def reference(folder, prompt, negative_prompt=None, true_cfg_scale=4.0, lora=None, lora_weight=1.0, seed=3, **kwargs):
    kw = dict(ARGS, **kwargs)
    return reference_pipeline(
        QwenImagePipeline,
        folder,
        seed=seed,
        lora=lora,
        lora_weight=lora_weight,
        prompt=prompt,
        negative_prompt=negative_prompt,
        true_cfg_scale=true_cfg_scale,
        num_inference_steps=kw["steps"],
        height=kw["height"],
        width=kw["width"],
        max_sequence_length=kw["max_sequence_length"],
    )


@pytest.mark.parametrize(
    "negative_prompt, true_cfg_scale",
    # true CFG with its norm rescaling; none without a negative prompt, nor at a scale <= 1
    [("blurry, dark", 4.0), (None, 4.0), ("blurry", 1.0)],
)
def test_equals_the_pipeline(tiny_models, negative_prompt, true_cfg_scale):
    folder = tiny_models["qwen-image"]
    inputs = dict(ARGS, prompt="a red house", negative_prompt=negative_prompt, true_cfg_scale=true_cfg_scale)
    got = run_alone("qwen-image", folder, qwenimage_txt2img(), inputs)
    ref = reference(folder, "a red house", negative_prompt, true_cfg_scale)
    assert np.abs(got - ref).max() <= 1e-4


def test_prompts_of_different_lengths_batched_in_every_call_each_equal_the_pipeline(tiny_models):
    """Two requests' nodes run as one batch each (prompts encoded together, one transformer call per
    step with the embeddings padded and masked): each image equals its request's pipeline run, and
    each batched prediction the one made alone."""
    folder = tiny_models["qwen-image"]
    ops = default_registry()
    cfg, encoders, denoiser, vae = (load_component(folder, c) for c in ("config", "text_encoder", "denoiser", "vae"))
    prompts = ["a cat", "a blue tree in the rain beside a house"]
    texts = [Item({"text": p, "max_sequence_length": ARGS["max_sequence_length"]}) for p in prompts]
    embeddings = [out["embedding"] for out in ops.get("encode_prompt").run(encoders, "default", texts)]
    assert embeddings[0]["prompt_embeds"].shape[1] < embeddings[1]["prompt_embeds"].shape[1]
    starts = [Item(dict(seed=i, steps=ARGS["steps"], sampler="flow_euler", height=ARGS["height"], width=ARGS["width"])) for i in range(2)]
    states = ops.get("init_latents").run(cfg, "default", starts)
    for _ in range(ARGS["steps"]):
        items = [Item({"latents": s["latents"], "sampler": s["sampler"], "embedding": e}) for s, e in zip(states, embeddings)]
        noise = [out["noise"] for out in ops.get("denoise").run(denoiser, "default", items)]
        for item, batched in zip(items, noise):
            (alone,) = ops.get("denoise").run(denoiser, "default", [item])
            assert (alone["noise"] - batched).abs().max() <= 1e-5
        steps = [Item({"latents": s["latents"], "sampler": s["sampler"], "noise": n}) for s, n in zip(states, noise)]
        states = ops.get("sampler_step").run(None, "unguided", steps)
    images = ops.get("vae_decode").run(vae, "default", [Item({"latents": s["latents"]}) for s in states])
    for i, p in enumerate(prompts):
        assert np.abs(as_hwc(images[i]["image"]) - reference(folder, p, seed=i)).max() <= 1e-4


@pytest.fixture(scope="module")
def loras(tiny_models, tmp_path_factory):
    """Two diffusers-format LoRAs on the tiny transformer's attention projections."""
    folder = tmp_path_factory.mktemp("qwen-loras")
    base = tiny_models["qwen-image"]
    return {name: write_tiny_qwenimage_lora(folder / f"{name}.safetensors", base, seed) for name, seed in (("qa", 5), ("qb", 6))}


def test_loras_on_one_resident_base_each_equal_load_lora_weights(tiny_models, loras):
    folder = tiny_models["qwen-image"]
    models = {"qwen-image": folder, **loras}
    reqs = [
        dict(ARGS, prompt="a castle", seed=1, loras="qa", workflow="qwenimage-txt2img"),
        dict(ARGS, prompt="a castle", negative_prompt="fog", seed=2, loras="qb:0.5", workflow="qwenimage-txt2img"),
    ]
    results, engine = run_requests(folder, reqs, models=models, workflows=[qwenimage_txt2img()])
    assert all(r.ok for r in results), [r.error for r in results]
    (w,) = engine.workers
    assert w.models.load_counts[("qwen-image", "denoiser", None)] == 1, "one copy of the base weights"
    assert w.models.patch_loads == 2, "each LoRA injected once into the transformer"
    ref_a = reference(folder, "a castle", lora=loras["qa"], seed=1)
    ref_b = reference(folder, "a castle", "fog", lora=loras["qb"], lora_weight=0.5, seed=2)
    assert np.abs(as_hwc(results[0].outputs["image"]) - ref_a).max() <= 1e-4
    assert np.abs(as_hwc(results[1].outputs["image"]) - ref_b).max() <= 1e-4
    assert np.abs(as_hwc(results[0].outputs["image"]) - reference(folder, "a castle", seed=1)).max() > 1e-3, "the LoRA changes the image"


def test_the_template_tokenizes_as_with_the_real_tokenizer(tiny_models):
    """The tiny tokenizer makes the template's system turn the 34 tokens the pipeline drops."""
    from transformers import AutoTokenizer

    from legodiffusion.ops.family_qwenimage import DROP_IDX, PROMPT_TEMPLATE

    tok = AutoTokenizer.from_pretrained(tiny_models["qwen-image"] / "tokenizer")
    kept = tok.convert_ids_to_tokens(tok(PROMPT_TEMPLATE.format("a cat")).input_ids)[DROP_IDX:]
    assert kept[:4] == ["a", "Ġca", "t", "<|im_end|>"]


def test_served_and_generated_from_the_cli(tiny_models, tmp_path):
    folder = tiny_models["qwen-image"]
    assert [wf.name for wf in workflows_for(folder, "qwen-image")] == ["qwen-image-txt2img"]
    out = tmp_path / "q.png"
    args = ["generate", "--model", str(folder), "--prompt", "a boat", "--negative-prompt", "rain", "--guidance", "2.5"]
    result = CliRunner().invoke(app, [*args, "--steps", "2", "--height", "32", "--width", "32", "--seed", "1", "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "qwenimage" in result.output
    ref = reference(folder, "a boat", "rain", 2.5, seed=1, height=32, width=32, max_sequence_length=512)
    got = np.asarray(Image.open(out), dtype=np.float32) / 255
    assert got.shape == (32, 32, 3)
    assert np.abs(got - ref).max() <= 1 / 255 + 1e-4  # the PNG rounds to 8 bits


def test_sizes_must_fit_the_packing(tiny_models):
    from legodiffusion.workflow.errors import WorkflowError

    folder = tiny_models["qwen-image"]
    with pytest.raises(WorkflowError, match="multiples of 8"):
        run_requests(
            folder,
            [dict(ARGS, prompt="x", height=36, workflow="qwenimage-txt2img")],
            models={"qwen-image": folder},
            workflows=[qwenimage_txt2img()],
        )
