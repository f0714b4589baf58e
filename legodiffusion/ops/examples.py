"""Synthetic inputs for profiling operators (shapes as the real workflow produces them)."""

from __future__ import annotations

from legodiffusion.ops import family_qwenimage, sampling
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")


def latents(cfg, size: int, device: str) -> torch.Tensor:
    f = cfg.vae_scale_factor
    return torch.randn(1, cfg.latent_channels, size // f, size // f, device=device, dtype=cfg.dtype)


def embedding(cfg, device: str) -> dict:
    if cfg.family == "qwenimage":
        return family_qwenimage.example_embedding(cfg, device)
    emb = {"prompt_embeds": torch.randn(1, cfg.text_length, cfg.text_dim, device=device, dtype=cfg.dtype)}
    if cfg.family not in ("sd", "flux2", "zimage"):  # FLUX.2 and Z-Image read no pooled embedding
        emb["pooled"] = torch.randn(1, cfg.pooled_dim, device=device, dtype=cfg.dtype)
    if cfg.family == "flux":
        emb["text_ids"] = torch.zeros(1, cfg.text_length, 3, device=device, dtype=cfg.dtype)
    return emb


def sampler_state(cfg, steps: int = 20) -> sampling.SamplerState:
    sampler = "flow_euler" if cfg.family in sampling.FLOW_FAMILIES else "euler"
    kwargs = (
        {"sigmas": [1.0 - i / steps for i in range(steps)], "mu": 1.0}
        if cfg.family in (*sampling.PACKED_FAMILIES, "flux2", "zimage")
        else {}
    )
    return sampling.new_state(sampler, cfg.scheduler_config, steps, **kwargs)
