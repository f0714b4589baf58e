"""Z-Image (``ZImagePipeline``), one model call per node.

What sets the family apart, each as the pipeline computes it:

* the prompt goes through Qwen3's chat template and a Qwen3 model; the embedding is its
  second-to-last hidden state with the padding dropped, so each prompt has its own length
  (an embedding of shape (1, tokens, width));
* the transformer takes lists (one latent and one caption per sample, of any lengths), time as
  ``(1000 - t) / 1000``, and predicts the negative of the flow the scheduler steps with: each
  branch's prediction is negated here (exact), so the sampler step is the plain flow-Euler one;
* guidance is ``cond + scale * (cond - uncond)`` (not ``uncond + scale * (cond - uncond)``), on
  whenever ``scale > 0``, optionally renormalised to at most ``cfg_normalization`` times the
  conditional prediction's norm and switched off on the steps whose normalised time exceeds
  ``cfg_truncation``;
* the schedule is flow matching with sigmas ``torch.linspace(1, 1/steps, steps)`` and the
  resolution-dependent ``mu``; latents are drawn in fp32 and stay fp32.

The pipeline runs both guidance branches in one transformer call; the ``cfg_batch`` denoise mode
here does the same (and, as the pipeline, runs only the conditional branch on truncated steps).
"""

from __future__ import annotations

from legodiffusion.ops import sampling
from legodiffusion.ops.base import GUIDANCE_MAX, PATCH_PORTS, BadValue, Item, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")

FAMILY = "zimage"


def encode(m, texts: list[str], device, max_seq: int) -> dict:
    """``ZImagePipeline._encode_prompt``: per prompt a (1, its tokens, width) embedding."""
    tok, enc = m.pairs[0]
    chats = [
        tok.apply_chat_template([{"role": "user", "content": t}], tokenize=False, add_generation_prompt=True, enable_thinking=True)
        for t in texts
    ]
    inputs = tok(chats, padding="max_length", max_length=max_seq, truncation=True, return_tensors="pt")
    ids, mask = inputs.input_ids.to(device), inputs.attention_mask.to(device).bool()
    hidden = enc(input_ids=ids, attention_mask=mask, output_hidden_states=True).hidden_states[-2]
    # a list, one tensor per prompt: the lengths differ (EncodePrompt hands item i its entry)
    return {"prompt_embeds": [hidden[i][mask[i]][None] for i in range(len(texts))]}


def transformer_call(module, xs: list, captions: list, ts: list) -> torch.Tensor:
    """One transformer call over samples (latents (1, C, H, W) each, in the transformer's dtype),
    their captions ((tokens, width) each) and timesteps; the negated prediction, fp32, (N, C, H, W)."""
    x = torch.cat(xs)
    t = torch.cat([t.reshape(1).expand(xi.shape[0]) for t, xi in zip(ts, xs)])
    out = module(list(x.unsqueeze(2).unbind(dim=0)), (1000 - t) / 1000, captions, return_dict=False)[0]
    return -torch.stack([o.float() for o in out]).squeeze(2)


def _captions(embs: list[dict]) -> list:
    return [e["prompt_embeds"][0] for e in embs]


def denoise_call(model, items, xs, embs, ts, extra) -> torch.Tensor:
    """The denoise operator's call (``ops/denoise.py`` ``_CALLS``)."""
    return transformer_call(model.module, xs, _captions(embs), ts)


def timestep_kwargs(cfg, steps: int, latent_h: int, latent_w: int) -> dict:
    """What ZImagePipeline passes to ``set_timesteps``: its default sigmas and ``mu``."""
    mu = sampling.image_shift(cfg.scheduler_config, (latent_h // 2) * (latent_w // 2))
    return {"sigmas": torch.linspace(1.0, 1 / steps, steps).tolist(), "mu": mu}


def _guidance(state: sampling.SamplerState, args: dict) -> float:
    """This step's guidance scale: 0 where the pipeline skips guidance (scale 0, or a step past
    ``cfg_truncation``), computed as ZImagePipeline computes it (fp32 timesteps)."""
    scale = float(args["guidance_scale"])
    truncation = args.get("cfg_truncation")
    if scale > 0 and truncation is not None and float(truncation) <= 1:
        t_norm = ((1000 - sampling.timestep(state).float()) / 1000).item()
        if t_norm > float(truncation):
            return 0.0
    return scale


def combine(args: dict) -> torch.Tensor:
    """The guided prediction of one request (negated branches in, negated prediction out: the
    pipeline's sum and rescaling commute exactly with negation)."""
    cond, uncond = args["noise_cond"].float(), args["noise_uncond"].float()
    scale = _guidance(args["sampler"], args)
    if scale <= 0:
        return cond
    pred = cond + scale * (cond - uncond)
    renorm = float(args.get("cfg_normalization") or 0.0)
    if renorm > 0:
        max_norm = torch.linalg.vector_norm(cond) * renorm
        norm = torch.linalg.vector_norm(pred)
        if norm > max_norm:
            pred = pred * (max_norm / norm)
    return pred


_GUIDANCE_PORTS = {
    "guidance_scale": Port("float", ge=0, le=GUIDANCE_MAX, doc="Z-Image guidance: cond + scale * (cond - uncond); 0 disables it"),
    "cfg_truncation": Port("float", optional=True, ge=0, doc="steps whose normalised time (1000 - t) / 1000 exceeds it run unguided"),
}

#: sampler_step's ``zimage_guided`` mode
GUIDED = Signature(
    inputs={
        "latents": Port("latent"),
        "sampler": Port("sampler"),
        "noise_cond": Port("noise"),
        "noise_uncond": Port("noise"),
        **_GUIDANCE_PORTS,
        "cfg_normalization": Port("float", optional=True, ge=0, doc="cap the guided norm at this times the conditional one; 0: off"),
    },
    outputs={"latents": "latent", "sampler": "sampler"},
)

#: denoise's ``cfg_batch`` mode: both guidance branches in one call, as ZImagePipeline makes it
CFG_BATCH = Signature(
    inputs={
        "latents": Port("latent"),
        "sampler": Port("sampler"),
        "embedding": Port("embedding"),
        "negative_embedding": Port("embedding"),
        **_GUIDANCE_PORTS,
        **PATCH_PORTS,
    },
    outputs={"noise_cond": "noise", "noise_uncond": "noise"},
)


def check_cfg_batch(cfg) -> None:
    if cfg is not None and cfg.family != FAMILY:
        raise BadValue("negative_embedding", f"the cfg_batch denoise mode is Z-Image's, not {cfg.family}'s")


def run_cfg_batch(model, items: list[Item], scheds: list, ts: list) -> list[dict]:
    """Each request's conditional and (where this step is guided) unconditional prediction, all
    in one transformer call: conditional samples first, then unconditional ones, as the pipeline
    orders them. An unguided step's ``noise_uncond`` is its ``noise_cond`` (the combine ignores it)."""
    check_cfg_batch(model)
    dtype = model.module.dtype
    xs = [it.inputs["latents"].to(dtype) for it in items]
    guided = [i for i, it in enumerate(items) if _guidance(it.inputs["sampler"], it.inputs) > 0]
    captions = [it.inputs["embedding"]["prompt_embeds"][0].to(dtype) for it in items]
    captions += [items[i].inputs["negative_embedding"]["prompt_embeds"][0].to(dtype) for i in guided]
    with torch.inference_mode():
        out = transformer_call(model.module, xs + [xs[i] for i in guided], captions, ts + [ts[i] for i in guided])
    cond, uncond = out[: len(items)], dict(zip(guided, out[len(items) :]))
    return [{"noise_cond": cond[i : i + 1], "noise_uncond": uncond[i][None] if i in uncond else cond[i : i + 1]} for i in range(len(items))]
