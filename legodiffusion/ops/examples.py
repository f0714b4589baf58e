"""Synthetic tensors for profiling operators (shapes as the real workflow produces them)."""

from __future__ import annotations

import torch

from legodiffusion.ops import sampling


def latents(cfg, size: int, device: str) -> torch.Tensor:
    f = cfg.vae_scale_factor
    return torch.randn(1, cfg.latent_channels, size // f, size // f, device=device)


def embedding(cfg, device: str) -> torch.Tensor:
    return torch.randn(1, cfg.text_length, cfg.text_dim, device=device)


def sampler_state(cfg, steps: int = 20) -> sampling.SamplerState:
    return sampling.new_state("euler", cfg.scheduler_config, steps)
