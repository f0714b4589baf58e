"""SDXL's added conditioning, read by its UNet and its ControlNets alike."""

from __future__ import annotations

from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")


def added_cond(embs: list[dict], sizes_px: list[tuple[int, int]], device) -> dict | None:
    """``added_cond_kwargs`` for a batch: each item's pooled text embeds and its time ids
    (original size, crop (0, 0), target size: the generated size, as the pipelines default them);
    None where the embeddings carry no pooled part (SD 1.x/2.x)."""
    if "pooled" not in embs[0]:
        return None
    ids = [torch.tensor([[h, w, 0, 0, h, w]], dtype=e["prompt_embeds"].dtype) for e, (h, w) in zip(embs, sizes_px)]
    return {"text_embeds": torch.cat([e["pooled"] for e in embs]), "time_ids": torch.cat(ids).to(device)}
