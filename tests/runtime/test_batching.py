"""A batched execution returns, per request, the same tensors as unbatched execution."""

from dataclasses import replace

import pytest
import torch

from legodiffusion.models.components import load_component
from legodiffusion.ops import default_registry
from legodiffusion.ops.base import Item


@pytest.mark.parametrize(
    "op_name,mode,component",
    [
        ("denoise", "default", "denoiser"),
        ("vae_decode", "default", "vae"),
        ("encode_prompt", "default", "text_encoder"),
        ("sampler_step", "guided", None),
    ],
)
def test_batched_equals_unbatched(sd15, op_name, mode, component):
    op = default_registry().get(op_name)
    cfg = load_component(sd15, "config")
    model = load_component(sd15, component) if component else None
    torch.manual_seed(0)
    items = op.example_items(cfg, mode, 4, 64, "cpu")
    if op_name == "denoise":  # different steps per request, as in a cross-request batch
        items = [Item({**it.inputs, "sampler": replace(it.inputs["sampler"], step_index=i)}) for i, it in enumerate(items)]
    batched = op.run(model, mode, items)
    for item, out in zip(items, batched, strict=True):
        (alone,) = op.run(model, mode, [item])
        for port, value in alone.items():
            assert_close(out[port], value)


def assert_close(a, b):
    if isinstance(b, dict):
        assert a.keys() == b.keys()
        for k in b:
            assert_close(a[k], b[k])
    elif isinstance(b, torch.Tensor):
        assert a.shape == b.shape and (a - b).abs().max().item() <= 1e-5
    else:
        assert a == b
