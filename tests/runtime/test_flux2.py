"""FLUX.2-klein decomposed into nodes reproduces Flux2KleinPipeline for the same seed: step-distilled
and with classifier-free guidance, batched across prompts, with LoRAs, and through the CLI."""

import json
import shutil
from functools import lru_cache

import numpy as np
import pytest
import torch
from diffusers import Flux2KleinPipeline
from PIL import Image
from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.models.components import load_component
from legodiffusion.models.tiny_flux2 import write_tiny_flux2_lora
from legodiffusion.ops import default_registry
from legodiffusion.ops.base import Item
from legodiffusion.server.catalog import txt2img_for
from legodiffusion.workflow.flux2 import flux2_klein_txt2img
from tests.helpers import as_hwc, reference_pipeline, run_alone, run_requests

ARGS = dict(prompt="a castle", steps=2, seed=2, height=64, width=96, max_sequence_length=32)


def _pipeline_kwargs(args: dict) -> dict:
    kw = {k: v for k, v in args.items() if k not in ("steps", "seed")}
    return dict(kw, num_inference_steps=args["steps"])


@lru_cache(maxsize=8)
def _reference(folder: str, lora: str | None = None, lora_weight: float = 1.0, **args):
    """Flux2KleinPipeline's image for ``args`` (our request inputs), cached: several tests compare with the same one."""
    args = dict(ARGS, **args)
    return reference_pipeline(Flux2KleinPipeline, folder, seed=args["seed"], lora=lora, lora_weight=lora_weight, **_pipeline_kwargs(args))


@pytest.fixture(scope="module")
def klein(tiny_models):
    return str(tiny_models["flux2-klein"])


@pytest.fixture(scope="module")
def klein_base(klein, tmp_path_factory):
    """The same weights as a base (not step-distilled) checkpoint, as ``model_index.json`` says."""
    folder = tmp_path_factory.mktemp("klein") / "flux2-klein-base"
    shutil.copytree(klein, folder)
    index = json.loads((folder / "model_index.json").read_text())
    (folder / "model_index.json").write_text(json.dumps(dict(index, is_distilled=False)))
    return str(folder)


def test_distilled_klein_equals_the_pipeline_which_ignores_guidance(klein):
    spec = txt2img_for(klein, "flux2-klein")
    assert "guidance_scale" not in spec.inputs, "a step-distilled klein runs no guidance"
    got = run_alone("flux2-klein", klein, spec, ARGS)
    assert np.abs(got - _reference(klein)).max() <= 1e-4  # the pipeline's default guidance_scale=4.0, ignored


@pytest.mark.parametrize("guidance_scale", [3.0, 1.0])
def test_base_klein_with_and_without_cfg_equals_the_pipeline(klein_base, guidance_scale):
    spec = txt2img_for(klein_base, "klein-base")
    args = dict(ARGS, prompt="a red fox", guidance_scale=guidance_scale)
    got = run_alone("klein-base", klein_base, spec, args)
    ref = _reference(klein_base, **args)
    assert np.abs(got - ref).max() <= 1e-4
    if guidance_scale > 1:
        assert np.abs(got - _reference(klein_base, **dict(args, guidance_scale=1.0))).max() > 1e-3, "guidance changes the image"


def test_two_prompts_batched_in_one_denoiser_call_each_equal_their_solo_run(klein):
    spec = flux2_klein_txt2img("flux2-klein")
    reqs = [dict(ARGS, workflow=spec.name), dict(ARGS, prompt="a lighthouse at dusk", workflow=spec.name)]
    # one slot: while a denoiser call runs, the other request's step waits and joins the next one
    batching = dict(slots_per_worker=1, latency_batch={"denoise": 8})
    results, engine = run_requests(klein, reqs, models={"flux2-klein": klein}, workflows=[spec], **batching)
    assert all(r.ok for r in results), [r.error for r in results]
    assert engine.coordinator.stats.batch_sizes[("denoise", 2)] > 0, "the two requests' steps shared denoiser calls"
    for r, prompt in zip(results, ("a castle", "a lighthouse at dusk")):
        assert np.abs(as_hwc(r.outputs["image"]) - _reference(klein, prompt=prompt)).max() <= 1e-4


def test_prompts_of_different_lengths_in_one_denoise_call_each_equal_alone(klein):
    """The transformer reads no text mask: embeddings of different lengths in one call run apart."""
    registry = default_registry()
    cfg = load_component(klein, "config")
    encoder, denoiser = load_component(klein, "text_encoder"), load_component(klein, "denoiser")
    encode, denoise = registry.get("encode_prompt"), registry.get("denoise")
    texts = [("a castle", 32), ("a lighthouse at dusk", 48), ("a red fox", 32)]
    embs = [encode.run(encoder, "default", [Item({"text": t, "max_sequence_length": n})])[0]["embedding"] for t, n in texts]
    batched = encode.run(encoder, "default", [Item({"text": t, "max_sequence_length": n}) for t, n in texts])
    for out, emb in zip(batched, embs):
        assert (out["embedding"]["prompt_embeds"] - emb["prompt_embeds"]).abs().max() <= 1e-5
    torch.manual_seed(0)
    items = []
    for i, emb in enumerate(embs):
        base = denoise.example_items(cfg, "default", 1, 64, "cpu")[0].inputs
        items.append(Item({**base, "embedding": emb, "sampler": base["sampler"].advanced() if i == 1 else base["sampler"]}))
    together = denoise.run(denoiser, "default", items)
    for item, out in zip(items, together):
        (alone,) = denoise.run(denoiser, "default", [item])
        assert (out["noise"] - alone["noise"]).abs().max() <= 1e-5


@pytest.fixture(scope="module")
def klein_loras(klein, tmp_path_factory):
    root = tmp_path_factory.mktemp("klein-loras")
    return {name: str(write_tiny_flux2_lora(root / f"{name}.safetensors", klein, seed=seed)) for name, seed in (("ka", 3), ("kb", 4))}


def test_loras_on_one_resident_base_each_equal_load_lora_weights(klein, klein_loras):
    spec = flux2_klein_txt2img("flux2-klein")
    reqs = [dict(ARGS, loras="ka", workflow=spec.name), dict(ARGS, loras="kb:0.5", workflow=spec.name), dict(ARGS, workflow=spec.name)]
    models = {"flux2-klein": klein, **klein_loras}
    results, engine = run_requests(klein, reqs, models=models, workflows=[spec])
    assert all(r.ok for r in results), [r.error for r in results]
    (w,) = engine.workers
    assert w.models.load_counts[("flux2-klein", "denoiser", None)] == 1, "one copy of the base weights"
    assert w.models.patch_loads == 2, "each LoRA injected once into the transformer (it adapts nothing else)"
    refs = [_reference(klein, klein_loras["ka"]), _reference(klein, klein_loras["kb"], 0.5), _reference(klein)]
    for r, ref in zip(results, refs):
        assert np.abs(as_hwc(r.outputs["image"]) - ref).max() <= 1e-4
    assert np.abs(refs[0] - refs[2]).max() > 1e-3, "the LoRA changes the image"


def test_generate_writes_the_pipelines_image(klein, tmp_path):
    out = tmp_path / "klein.png"
    args = ["generate", "--model", klein, "--prompt", "a castle", "--steps", "2", "--seed", "2", "--height", "64", "--width", "96"]
    result = CliRunner().invoke(app, [*args, "-o", str(out)])
    assert result.exit_code == 0, result.output
    assert "flux2" in result.output
    ours = np.asarray(Image.open(out), dtype=np.int16)
    ref = _reference(klein, max_sequence_length=512)
    assert np.abs(ours - (ref * 255).round()).max() <= 1
    bad = CliRunner().invoke(app, [*args[:-4], "--height", "40", "--width", "96", "-o", str(tmp_path / "bad.png")])
    assert bad.exit_code == 2 and "multiples of 16 for a flux2 model" in " ".join(bad.output.split())


@pytest.mark.parametrize("flag", [["--guidance", "3"], ["--negative-prompt", "blurry"], ["--sampler", "flow_euler"]])
def test_generate_refuses_a_flag_the_distilled_workflow_has_no_input_for_naming_it(klein, tmp_path, flag):
    args = ["generate", "--model", klein, "--prompt", "a castle", "--steps", "1", *flag, "-o", str(tmp_path / "x.png")]
    result = CliRunner().invoke(app, args)
    output = " ".join(result.output.split())
    assert result.exit_code == 2 and f"{flag[0]}: the flux2-klein-txt2img workflow takes no" in output, output


def test_the_profiler_measures_every_operator_of_the_family(klein_base):
    from legodiffusion.cli.profile import workflow_ops
    from legodiffusion.profiles.profiler import measure

    ops = workflow_ops(txt2img_for(klein_base, "klein-base"))  # the CFG workflow: both sampler_step modes
    prof = measure(klein_base, default_registry(), ops, batches=(2,), sizes=(32,), repeats=1)
    assert {(p.op, p.mode) for p in prof.ops} == set(ops)
    assert all(p.latency_s > 0 for p in prof.ops)
