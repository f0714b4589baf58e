"""FLUX.2-klein (family ``flux2``): each model call exactly as ``Flux2KleinPipeline`` makes it.

Latents travel as the pipeline draws them: 2x2-patchified and batch-norm normalised, shaped
(B, 4 x VAE channels, H/16, W/16), so the family's ``PipelineConfig`` counts one latent cell per
16 pixels. The denoiser packs them into tokens (a reshape, so the sampler update is unchanged) and
reads 4-D (T, H, W, L) position ids; the text is several Qwen3 hidden-state layers stacked along
the channel axis. The VAE decode undoes the batch-norm normalisation and the patchification.
Classifier-free guidance, where the checkpoint is not step-distilled, is the plain combination
with the empty prompt's prediction (``sampler_step``'s guided mode).
"""

from __future__ import annotations

import numpy as np

from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
pipeline_flux2_klein = lazy_module("diffusers.pipelines.flux2.pipeline_flux2_klein")

#: Qwen3 hidden-state layers stacked into the prompt embedding (the pipeline's ``text_encoder_out_layers``)
HIDDEN_STATES_LAYERS = (9, 18, 27)
#: the pipeline's ``max_sequence_length`` default
MAX_SEQUENCE_LENGTH = 512


def encode_prompt(m, texts: list[str], device, max_seq: int) -> dict:
    """Chat-templated (thinking disabled), padded to ``max_seq``, the stacked hidden states: the
    pipeline's own function, so tokenisation and layer choice cannot drift from it."""
    tok, enc = m.pairs[0]
    embeds = pipeline_flux2_klein.Flux2KleinPipeline._get_qwen3_prompt_embeds(
        enc, tok, texts, device=device, max_sequence_length=max_seq, hidden_states_layers=HIDDEN_STATES_LAYERS
    )
    return {"prompt_embeds": embeds}


def timestep_kwargs(scheduler_config: dict, steps: int, latent_h: int, latent_w: int) -> dict:
    """``set_timesteps`` arguments: sigmas linear from 1 to 1/steps and the empirical, image-size
    and step-count dependent shift ``mu`` (``latent_h x latent_w`` is the token count)."""
    kwargs = {"mu": pipeline_flux2_klein.compute_empirical_mu(image_seq_len=latent_h * latent_w, num_steps=steps)}
    if not scheduler_config.get("use_flow_sigmas"):
        kwargs["sigmas"] = np.linspace(1.0, 1 / steps, steps).tolist()
    return kwargs


def _position_ids(t: int, h: int, w: int, length: int) -> torch.Tensor:
    """(T, H, W, L) coordinates, one row per token, in the pipeline's order (``cartesian_prod``)."""
    axes = [torch.arange(t), torch.arange(h), torch.arange(w), torch.arange(length)]
    return torch.cartesian_prod(*axes)


def _call(model, xs: list, embs: list[dict], ts: list) -> torch.Tensor:
    x = torch.cat(xs)
    b, c, h, w = x.shape
    text = torch.cat([e["prompt_embeds"] for e in embs])
    tvec = torch.cat([t.reshape(1).expand(xi.shape[0]) for t, xi in zip(ts, xs)]).to(x.dtype)
    out = model.module(
        hidden_states=x.reshape(b, c, h * w).permute(0, 2, 1),
        timestep=tvec / 1000,
        guidance=None,
        encoder_hidden_states=text,
        txt_ids=_position_ids(1, 1, 1, text.shape[1]).to(x.device),
        img_ids=_position_ids(1, h, w, 1).to(x.device),
        return_dict=False,
    )[0]
    return out.permute(0, 2, 1).reshape(b, c, h, w)


def denoise(model, items, xs: list, embs: list[dict], ts: list, extra) -> torch.Tensor:
    """One transformer call for the batch. The transformer reads no text mask and one set of text
    positions, so requests whose prompt embeddings differ in length run as separate calls."""
    lengths = [e["prompt_embeds"].shape[1] for e in embs]
    if len(set(lengths)) == 1:
        return _call(model, xs, embs, ts)
    out: list = [None] * len(xs)
    for length in dict.fromkeys(lengths):
        idx = [i for i, n in enumerate(lengths) if n == length]
        noise = _call(model, [xs[i] for i in idx], [embs[i] for i in idx], [ts[i] for i in idx])
        for i, n in zip(idx, torch.split(noise, [xs[i].shape[0] for i in idx])):
            out[i] = n
    return torch.cat(out)


def is_flux2_vae(vae) -> bool:
    return type(vae).__name__ == "AutoencoderKLFlux2"


def unscale(vae, latents: torch.Tensor) -> torch.Tensor:
    """Normalised patchified latents (B, 4C, h, w) to what the VAE decodes (B, C, 2h, 2w): the
    batch-norm statistics undone, then the 2x2 patches unfolded."""
    mean = vae.bn.running_mean.view(1, -1, 1, 1).to(latents.device, latents.dtype)
    std = torch.sqrt(vae.bn.running_var.view(1, -1, 1, 1) + vae.config.batch_norm_eps).to(latents.device, latents.dtype)
    latents = latents * std + mean
    b, c4, h, w = latents.shape
    return latents.reshape(b, c4 // 4, 2, 2, h, w).permute(0, 1, 4, 2, 5, 3).reshape(b, c4 // 4, h * 2, w * 2)
