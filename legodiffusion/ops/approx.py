"""Approximate caching as nodes (NIRVANA, NSDI 2024; :mod:`legodiffusion.core.approx`).

``approx_lookup`` runs once at the start of a request that opts in: it finds the nearest cached
prompt of the same key and returns that state's latents and the request's own sampler state
positioned at the cached step (a miss returns its inputs unchanged), so the loop runs the rest of
the schedule from the cached latents exactly as a diffusers pipeline started there does. ``approx_insert`` follows
every sampling step and saves the latents after the configured steps. Both are light glue using
the data plane's store (``service``); neither loads a model.

A key holds everything that must match for a state to be reused as it is: the base model, the
latent shape and dtype (so the resolution), the sampler's schedule (sampler, steps, scheduler
config, timestep arguments) and the adapter set (LoRAs with their weights, ControlNets with their
scales and a digest of their control inputs). The prompt is compared by the cosine similarity of
its embedding: the pooled text embedding where the family has one (SDXL, SD3, Flux), else (SD
1.x/2.x) the mean of the token embeddings.
"""

from __future__ import annotations

import hashlib
from dataclasses import replace

from legodiffusion.core.patchset import parse_patches
from legodiffusion.ops.base import CONTROL_SCALE_MAX, NOTES, PATCH_PORTS, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")

#: the adapter ports both nodes read (up to 3 ControlNets, as the workflows have)
ADAPTER_PORTS = {
    "loras": PATCH_PORTS["loras"],
    "controlnets": Port("text", optional=True, doc="the ControlNet models, comma-separated, in control_i order"),
    **{f"control_{i}": Port("control", optional=True, doc=f"ControlNet {i}'s prepared control input") for i in range(3)},
    **{f"control_scale_{i}": Port("float", optional=True, ge=0, le=CONTROL_SCALE_MAX) for i in range(3)},
}
_STATE_PORTS = {"embedding": Port("embedding"), "latents": Port("latent"), "sampler": Port("sampler")}


def prompt_vector(embedding: dict) -> torch.Tensor:
    """The unit vector a prompt is compared by: its pooled embedding, else its mean token embedding."""
    v = embedding["pooled"] if "pooled" in embedding else embedding["prompt_embeds"].mean(dim=-2)
    return torch.nn.functional.normalize(v.detach().reshape(-1).float().cpu(), dim=0)


def _digest(value) -> str:
    if isinstance(value, dict):  # an SD3 control: latents with the VAE's factors
        return _digest(
            torch.cat(
                [v.reshape(-1).float() if isinstance(v, torch.Tensor) else torch.tensor([float(v)]) for _, v in sorted(value.items())]
            )
        )
    t = value.detach().cpu().contiguous()
    return hashlib.sha256(t.reshape(-1).view(torch.uint8).numpy().tobytes()).hexdigest()[:16]


def cache_key(model: str | None, inputs: dict) -> tuple:
    """The key a node's state is cached and looked up under (see the module doc)."""
    latents, state = inputs["latents"], inputs["sampler"]
    schedule = hashlib.sha256(f"{state.config_json}|{state.timesteps_json}".encode()).hexdigest()[:16]
    names = [n.strip() for n in (inputs.get("controlnets") or "").split(",") if n.strip()]
    controls = []
    for i in range(3):
        control = inputs.get(f"control_{i}")
        if control is not None:
            scale = inputs.get(f"control_scale_{i}")
            controls.append((names[i] if i < len(names) else f"#{i}", 1.0 if scale is None else float(scale), _digest(control)))
    shape = tuple(latents.shape[1:])
    return (model, shape, str(latents.dtype), state.sampler, state.num_steps, schedule, parse_patches(inputs.get("loras")), tuple(controls))


class ApproxLookup(Operator):
    name = "approx_lookup"
    doc = (
        "Approximate cache (NIRVANA): start from the latents cached for the nearest similar prompt with the same model, "
        "resolution, schedule and adapters, at the largest step its similarity allows; a miss passes its inputs through."
    )
    light = True
    service = "approx_cache"
    advances_loop = True
    modes = {
        "default": Signature(
            inputs={
                **_STATE_PORTS,
                **ADAPTER_PORTS,
                "pinned": Port("int", optional=True, doc="set by the coordinator on a re-run: the state chosen before (0: a miss)"),
            },
            outputs={"latents": "latent", "sampler": "sampler"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        return [self._one(model, it.inputs) for it in items]

    def _one(self, view, args: dict) -> dict:
        state = args["sampler"]
        pinned = args.get("pinned")
        if pinned is None:
            hit = view.store.lookup(cache_key(view.model, args), prompt_vector(args["embedding"]), state.num_steps)
        else:  # a re-run after a lost worker keeps the decision the coordinator acted on
            hit = view.store.get(pinned) if pinned else None
            if pinned and hit is None:
                raise RuntimeError(f"the cached state {pinned} this request started from was evicted before its lookup re-ran")
        if hit is None:
            return {"latents": args["latents"], "sampler": state, NOTES: {"approx": {"skipped": 0, "steps": state.num_steps}}}
        # the request's own state (its generator) at the cached step, started afresh there (no
        # multistep history) as a diffusers pipeline started mid-schedule is (denoising_start)
        start = replace(state, step_index=hit.step)
        note = {"skipped": hit.step, "steps": state.num_steps, "state": hit.id, "from_request": hit.request, "similarity": hit.similarity}
        return {"latents": hit.latents, "sampler": start, NOTES: {"approx": note}}


class ApproxInsert(Operator):
    name = "approx_insert"
    doc = "Approximate cache (NIRVANA): after a sampling step, save the latents if the step is one the cache keeps."
    light = True
    service = "approx_cache"
    modes = {"default": Signature(inputs={**_STATE_PORTS, **ADAPTER_PORTS}, outputs={"saved": "any"})}

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            state = it.inputs["sampler"]
            if state.step_index not in model.store.config.saved_steps(state.num_steps):
                out.append({"saved": None})
                continue
            args = it.inputs
            key = cache_key(model.model, args)
            latents = args["latents"].detach().to("cpu")  # kept in host memory, shared by every worker
            saved = model.store.insert(key, prompt_vector(args["embedding"]), it.request, state.step_index, latents)
            note = {"id": saved.id, "key": key, "step": state.step_index, "bytes": saved.nbytes, "request": it.request}
            out.append({"saved": saved.id, NOTES: {"approx_saved": {**note, "evicted": list(saved.evicted)}}})
        return out
