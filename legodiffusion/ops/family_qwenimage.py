"""Qwen-Image's model calls, exactly as ``QwenImagePipeline`` makes them; registered in the
family-keyed tables of ops/text.py, ops/denoise.py, ops/latents.py, ops/sampler_step.py and ops/vae.py.

* The prompt is written into a fixed chat template and read by Qwen2.5-VL; the last layer's hidden
  states of the real (unpadded) tokens are kept, less the template's first ``DROP_IDX`` tokens, so
  each prompt's embedding has its own length.
* The transformer reads 2x2-packed latents (kept unpacked between nodes, as Flux's: a permutation)
  and the prompts of a batch padded to the longest, with a mask; a batch of equal lengths passes
  no mask, as the pipeline does for one prompt.
* True CFG rescales the combined prediction to the norm of the conditional one, per packed token.
* The VAE is 3D (one frame here) and its latents are normalised per channel by ``latents_mean``
  and ``latents_std``.
"""

from __future__ import annotations

import numpy as np

from legodiffusion.ops import sampling
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
denoise_ops = lazy_module("legodiffusion.ops.denoise")  # pack/_unpack; that module registers this one's call

# QwenImagePipeline.__init__'s prompt_template_encode, prompt_template_encode_start_idx and
# tokenizer_max_length (instance attributes there, so copied).
PROMPT_TEMPLATE = (
    "<|im_start|>system\nDescribe the image by detailing the color, shape, size, texture, quantity, text, spatial relationships of "
    "the objects and background:<|im_end|>\n<|im_start|>user\n{}<|im_end|>\n<|im_start|>assistant\n"
)
DROP_IDX = 34
TOKENIZER_MAX_LENGTH = 1024
#: the pipeline's default ``max_sequence_length``
DEFAULT_MAX_SEQ = 512


def encode(m, texts: list[str], device, max_seq: int) -> list[dict]:
    """One ``{"prompt_embeds": (1, L_i, D)}`` per text, ``L_i`` its own length (at most ``max_seq``)."""
    tok, enc = m.pairs[0]
    tokens = tok(
        [PROMPT_TEMPLATE.format(t) for t in texts],
        max_length=TOKENIZER_MAX_LENGTH + DROP_IDX,
        padding=True,
        truncation=True,
        return_tensors="pt",
    ).to(device)
    hidden = enc(input_ids=tokens.input_ids, attention_mask=tokens.attention_mask, output_hidden_states=True).hidden_states[-1]
    masks = tokens.attention_mask.bool()
    return [{"prompt_embeds": h[mask][DROP_IDX:][:max_seq].unsqueeze(0)} for h, mask in zip(hidden, masks)]


def _padded(embeds: list[torch.Tensor], sizes: list[int]) -> tuple[torch.Tensor, torch.Tensor | None]:
    """The prompts of a batch zero-padded to the longest (each repeated over its item's rows), and
    their mask; None where all are as long, as the pipeline passes for a single prompt."""
    longest = max(e.shape[1] for e in embeds)
    rows = [torch.nn.functional.pad(e, (0, 0, 0, longest - e.shape[1])).expand(n, -1, -1) for e, n in zip(embeds, sizes)]
    if all(e.shape[1] == longest for e in embeds):
        return torch.cat(rows), None
    mask = [(torch.arange(longest, device=e.device) < e.shape[1]).long().expand(n, -1) for e, n in zip(embeds, sizes)]
    return torch.cat(rows), torch.cat(mask)


def denoise(model, items, xs, embs, ts, extra):
    """The transformer's prediction for a batch, unpacked to the latents' shape."""
    x = torch.cat(xs)
    b, _, h, w = x.shape
    sizes = [x.shape[0] for x in xs]
    tvec = torch.cat([t.reshape(1).expand(n) for t, n in zip(ts, sizes)]).to(x.dtype)
    embeds, mask = _padded([e["prompt_embeds"] for e in embs], sizes)
    out = model.module(
        hidden_states=denoise_ops.pack(x),
        timestep=tvec / 1000,
        guidance=None,
        encoder_hidden_states_mask=mask,
        encoder_hidden_states=embeds,
        img_shapes=[[(1, h // 2, w // 2)]] * b,
        attention_kwargs={},
        return_dict=False,
    )[0]
    return denoise_ops._unpack(out, h, w)


def true_cfg(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance rescaled to the conditional prediction's norm over each packed token."""
    h, w = cond.shape[-2:]
    cond, uncond = denoise_ops.pack(cond), denoise_ops.pack(uncond)
    comb = uncond + scale * (cond - uncond)
    comb = comb * (torch.norm(cond, dim=-1, keepdim=True) / torch.norm(comb, dim=-1, keepdim=True))
    return denoise_ops._unpack(comb, h, w)


def timestep_kwargs(cfg, steps: int, latent_h: int, latent_w: int) -> dict:
    """``set_timesteps`` arguments: linear sigmas and the shift ``mu`` of the packed sequence length."""
    mu = sampling.image_shift(cfg.scheduler_config, (latent_h // 2) * (latent_w // 2))
    return {"sigmas": np.linspace(1.0, 1 / steps, steps).tolist(), "mu": mu}


def decode(vae, latents: torch.Tensor) -> torch.Tensor:
    """Latents (B, C, H, W) in the VAE's dtype to images (B, 3, H', W') in [-1, 1]: one frame of the 3D VAE."""
    cfg = vae.config
    mean = torch.tensor(cfg.latents_mean).view(1, cfg.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    # divided by 1 / std rather than multiplied by std: the pipeline's rounding
    inv_std = 1.0 / torch.tensor(cfg.latents_std).view(1, cfg.z_dim, 1, 1, 1).to(latents.device, latents.dtype)
    return vae.decode(latents.unsqueeze(2) / inv_std + mean, return_dict=False)[0][:, :, 0]


def example_embedding(cfg, device: str) -> dict:
    return {"prompt_embeds": torch.randn(1, cfg.text_length, cfg.text_dim, device=device, dtype=cfg.dtype)}
