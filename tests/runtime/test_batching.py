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
        ("denoise", "default", "unet"),
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
            if isinstance(value, torch.Tensor):
                assert (out[port] - value).abs().max().item() <= 1e-5
            else:
                assert out[port] == value
