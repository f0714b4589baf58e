"""The approximate cache (NIRVANA) in a family's text-to-image graph, per request.

With ``approx_cache: true`` a request's sampling loop starts from an ``approx_lookup`` node and
every step is followed by an ``approx_insert`` node (:mod:`legodiffusion.ops.approx`); both sit
in branches on that input, so a request that does not opt in (the default) has exactly the graph
it had without them. The loop is expanded for every step: a hit of ``k`` steps makes its last
``k`` iterations pass-through, which the coordinator learns from the lookup's note.
"""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from legodiffusion.workflow.builder import InputHandle, WorkflowBuilder
from legodiffusion.workflow.starts import Start


def approx_input(wf: WorkflowBuilder) -> InputHandle:
    return wf.input(
        "approx_cache",
        "bool",
        default=False,
        doc="approximate cache across requests (NIRVANA): start from the latents of a similar earlier prompt, skipping steps",
    )


def adapter_inputs(patch: dict, controlnets: tuple[str, ...], controls: list) -> dict[str, Any]:
    """What of a request's adapters the cache keys on: its LoRA set, and each ControlNet with its
    control input and scale (``controls``: (control, scale) pairs in the ControlNets' order)."""
    out: dict[str, Any] = {"loras": patch["loras"]}
    if controlnets:
        out["controlnets"] = ",".join(controlnets)
    for i, (control, scale) in enumerate(controls):
        out.update({f"control_{i}": control, f"control_scale_{i}": scale})
    return out


def approx_start(wf: WorkflowBuilder, opted: InputHandle, start: Start, embedding, adapters: dict) -> Start:
    """``start`` as the loop sees it: with the cache on, the lookup's answer (a cached state, or
    ``start`` itself on a miss)."""

    def lookup() -> dict:
        found = wf.call(
            "approx_lookup",
            model="base",
            embedding=embedding,
            latents=start.latents,
            sampler=start.sampler,
            id="approx_lookup",
            **adapters,
        )
        return {"latents": found.latents, "sampler": found.sampler}

    chosen = wf.cond(opted.eq(True), lookup, lambda: {"latents": start.latents, "sampler": start.sampler}, id="approx")
    return replace(start, latents=chosen.latents, sampler=chosen.sampler)


def approx_save(wf: WorkflowBuilder, opted: InputHandle, latents, sampler, embedding, adapters: dict, tag: str) -> None:
    """After a step: with the cache on, offer its latents to the cache (``tag`` keeps ids unique)."""

    def insert() -> dict:
        wf.call(
            "approx_insert",
            model="base",
            embedding=embedding,
            latents=latents,
            sampler=sampler,
            id=f"approx_insert{tag}",
            **adapters,
        )
        return {}

    wf.cond(opted.eq(True), insert, dict, id=f"approx_save{tag}")
