"""Applying a batch's LoRA patch set on a worker, with bounded asynchronous loading.

A request's LoRA that is not in host memory yet is read in the background; while the request's
step is below its bound K (``lora_k``) the batch runs without it, and from step K on it waits for
it. K = 0 therefore always waits, which reproduces ``load_lora_weights`` exactly.
"""

from __future__ import annotations

from contextlib import contextmanager

from legodiffusion.core.messages import Dispatch
from legodiffusion.core.patchset import PATCHABLE, parse_patches
from legodiffusion.models.patches import activate, inject
from legodiffusion.models.store import ResidentModels
from legodiffusion.ops.base import Item


def _step(item: Item) -> int:
    state = item.inputs.get("sampler")
    return getattr(state, "step_index", 0)


@contextmanager
def lora_patches(models: ResidentModels, d: Dispatch, obj, items: list[Item]):
    """Yields None (no patches), True (applied) or False (skipped while loading)."""
    patches = parse_patches(items[0].inputs.get("loras")) if d.component in PATCHABLE else ()
    if not patches:
        yield None
        return
    family = obj.family
    host = models.host
    step = min(_step(it) for it in items)
    bound = int(items[0].inputs.get("lora_k") or 0)
    if step < bound and not all(host.lora_ready(n, family) for n, _ in patches):
        for n, _ in patches:
            host.prefetch_lora(n, family)
        yield False
        return
    injected = models.patches.setdefault((d.model, d.component, d.scope), set())
    for name, _ in patches:
        if name not in injected:
            if inject(obj, name, host.lora(name, family), family):
                models.patch_loads += 1
            injected.add(name)
    activate(obj, patches)
    try:
        yield True
    finally:
        activate(obj, ())
