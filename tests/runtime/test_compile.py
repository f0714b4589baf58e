"""Compiled denoisers (``EngineConfig.compile``): the same images as eager, batches padded to
shape buckets without changing their rows, and each bucket compiled once.

Inductor compiles on the CPU here: one bucket of the tiny UNet takes 30-45 s on two busy cores
with a cold cache (a few seconds from inductor's on-disk cache), so the default tests compile one
UNet bucket (batch 1) and share it (dynamo keeps graphs per module class, across workers' copies);
padding to a larger bucket, the transformers and the engine-formed batches are ``slow``."""

from dataclasses import replace

import numpy as np
import pytest
import torch
from PIL import Image
from torch._dynamo.utils import counters

from legodiffusion.models.components import load_component
from legodiffusion.ops import default_registry
from legodiffusion.ops.base import Item
from legodiffusion.runtime.compile import CompileLog, batch_bucket, compile_denoiser
from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img, sd_txt2img
from tests.helpers import run_requests

TOLERANCE = 1e-3
#: one denoiser call per step and per dispatch: every call of a request is the batch-1 bucket
SOLO = dict(default_latency_batch=1, default_throughput_batch=1)


def graphs() -> int:
    """Graphs dynamo has compiled in this process."""
    return counters["stats"]["unique_graphs"]


def max_diff(a: torch.Tensor, b: torch.Tensor) -> float:
    assert a.shape == b.shape
    return (a - b).abs().max().item()


def test_batch_buckets():
    assert [batch_bucket(n) for n in range(1, 11)] == [1, 2, 4, 4, 8, 8, 8, 8, 16, 16]
    assert [batch_bucket(n) for n in (16, 17, 24, 25)] == [16, 24, 24, 32]
    with pytest.raises(ValueError):
        batch_bucket(0)


@pytest.mark.slow  # a bucket of 4 to compile: 30-57 s on two cores, the longest test of the suite
@pytest.mark.parametrize("family", ["sd15", "flux"])
def test_padding_leaves_every_row_as_it_was_alone(tiny_models, family):
    """A batch of 3 runs as a bucket of 4 (the last row repeated); each row equals its eager solo
    call, and a batch of 4 reuses the bucket. The UNet normalises groups and the transformer
    attends within a row; Flux's position ids are per token and stay unpadded."""
    op = default_registry().get("denoise")
    cfg = load_component(tiny_models[family], "config")
    eager = load_component(tiny_models[family], "denoiser")
    log = CompileLog()
    compiled = compile_denoiser(eager, log, family)
    torch.manual_seed(0)
    items = op.example_items(cfg, "default", 4, 64, "cpu")
    items = [Item({**it.inputs, "sampler": replace(it.inputs["sampler"], step_index=i)}) for i, it in enumerate(items)]
    batched = op.run(compiled, "default", items[:3])
    diffs = [max_diff(out["noise"], op.run(eager, "default", [it])[0]["noise"]) for it, out in zip(items, batched)]
    (event,) = log.events()
    print(f"{family}: compiled batch of 3 (bucket {event.shape}, {event.seconds:.1f} s) vs eager solo rows: max abs diff {max(diffs):.2e}")
    assert len(batched) == 3 and max(diffs) <= TOLERANCE
    assert event.model == family and event.shape[0] == 4 and event.seconds > 0
    before = graphs()
    op.run(compiled, "default", items)
    assert graphs() == before and len(log.events()) == 1


def test_compiled_requests_give_the_eager_images_and_a_second_of_the_same_shape_compiles_nothing(sd15):
    requests = [dict(prompt=p, steps=2, seed=s, height=64, width=64) for p, s in (("a cat", 0), ("a dog", 3))]
    eager, _ = run_requests(sd15, requests, sequential=True, **SOLO)
    before = graphs()
    compiled, engine = run_requests(sd15, requests, sequential=True, compile=True, **SOLO)
    diffs = [max_diff(c.outputs["image"], e.outputs["image"]) for c, e in zip(compiled, eager, strict=True)]
    (event,) = engine.workers[0].models.compile_events()  # one bucket seen, compiled once
    print(f"compiled vs eager images (sd15, 64px, 2 guided steps): max abs diff {max(diffs):.2e}; first call {event.seconds:.2f} s")
    assert all(r.ok for r in compiled) and max(diffs) <= TOLERANCE
    assert event.model == "sd15" and event.shape == (1, 4, 8, 8) and event.seconds > 0
    # at most one graph made (none if an earlier test compiled it: dynamo's cache is per module
    # class, shared by every worker's copy): the second request reused the first's
    assert graphs() - before <= 1


def test_controlnet_and_lora_calls_run_eager(tiny_models):
    """Lazily read ControlNet residuals and injected LoRA adapters bypass the compiled graph:
    nothing compiles and the images are the eager ones."""
    models = {"sd15": tiny_models["sd15"], "cn": tiny_models["controlnet-sd15"], "lora-a": tiny_models["lora-sd15-a"]}
    workflows = [sd_txt2img("sd15"), sd_txt2img("sd15", name="sd-cn", controlnets=("cn",))]
    control = Image.fromarray(np.random.default_rng(0).integers(0, 255, (64, 64, 3), dtype=np.uint8))
    base = dict(prompt="a house", steps=2, seed=9, height=64, width=64)
    requests = [dict(base, workflow="sd-cn", control_image=control), dict(base, loras="lora-a")]
    kwargs = dict(models=models, workflows=workflows, sequential=True, **SOLO)
    eager, _ = run_requests(models["sd15"], requests, **kwargs)
    compiled, engine = run_requests(models["sd15"], requests, compile=True, **kwargs)
    assert all(r.ok for r in compiled)
    assert max(max_diff(a.outputs["image"], b.outputs["image"]) for a, b in zip(compiled, eager)) <= TOLERANCE
    log = engine.workers[0].models.compile_log
    assert log.events() == [] and log.eager_calls == 2 * 2 * 2  # 2 requests x 2 steps x 2 branches


@pytest.mark.slow
def test_requests_batched_together_equal_their_solo_images(sd15):
    """Three unguided requests at once, batched as the coordinator forms batches (sizes 1 to 3:
    buckets 1, 2 and 4)."""
    requests = [dict(prompt=f"p{i}", steps=2, seed=i, height=64, width=64, guidance_scale=1.0) for i in range(3)]
    solo, _ = run_requests(sd15, requests, sequential=True, **SOLO)
    batch = dict(default_latency_batch=4, default_throughput_batch=4)
    together, engine = run_requests(sd15, requests, compile=True, **batch)
    diffs = [max_diff(a.outputs["image"], b.outputs["image"]) for a, b in zip(together, solo)]
    print(f"batched compiled vs solo eager: max abs diff {max(diffs):.2e}; buckets {engine.workers[0].models.compile_events()}")
    assert all(r.ok for r in together) and max(diffs) <= TOLERANCE


@pytest.mark.slow
@pytest.mark.parametrize("family", ["sd3", "flux"])
def test_transformer_denoisers_compile(tiny_models, family):
    folder = tiny_models[family]
    workflow = {"sd3": sd3_txt2img, "flux": flux_txt2img}[family](family)
    request = dict(workflow=workflow.name, prompt="a castle", steps=2, seed=2, height=64, width=64, max_sequence_length=32)
    kwargs = dict(models={family: folder}, workflows=[workflow], **SOLO)
    (eager,), _ = run_requests(folder, [request], **kwargs)
    (compiled,), engine = run_requests(folder, [request], compile=True, **kwargs)
    diff = max_diff(compiled.outputs["image"], eager.outputs["image"])
    events = engine.workers[0].models.compile_events()
    print(f"{family}: compiled vs eager max abs diff {diff:.2e}; {events}")
    assert compiled.ok and diff <= TOLERANCE and len(events) == 1
