"""The step cache (:mod:`legodiffusion.ops.step_cache`) in a transformer family's sampling graph,
per request: off by default, and a request without one carries no node for it."""

from __future__ import annotations

from legodiffusion.ops import step_cache
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.starts import Start


def step_cache_start(wf: WorkflowBuilder, family: str, start: Start):
    """Transformer families: the request's step cache, its state started from the loop's first
    sampler state; None for the others."""
    if family not in step_cache.FAMILIES:
        return None
    spec = wf.input(
        "step_cache",
        "text",
        default=None,
        doc='skip most of the denoiser on steps whose input barely changed: JSON, {"kind": "first_block", "threshold": 0.05} '
        'or {"kind": "mag", "mag_ratios": [...] or "flux", "threshold": 0.06, ...} (diffusers\' FirstBlockCache and MagCache); null: off',
    )
    # a request without one carries no init node: the loop starts from a null cache
    on = wf.cond(
        spec.ne(None),
        lambda: {"cache": wf.call("init_step_cache", model="base", step_cache=spec, sampler=start.sampler, id="step_cache").cache},
        lambda: {"cache": None},
        id="step_cache_on",
    )
    return on.cache
