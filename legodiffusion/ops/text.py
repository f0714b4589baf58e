"""Prompt encoding for every family, and prompt templates.

The output ``embedding`` is a dict of tensors, each with a batch axis of 1:
``prompt_embeds`` always (Z-Image and Qwen-Image: as many tokens as the prompt has); ``pooled``
for SDXL, SD3 and Flux; ``text_ids`` for Flux.
"""

from __future__ import annotations

from legodiffusion.ops import family_flux2, family_qwenimage, family_zimage
from legodiffusion.ops.base import PATCH_PORTS, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")


def _tokens(tokenizer, texts: list[str], max_length: int, device) -> torch.Tensor:
    ids = tokenizer(texts, padding="max_length", max_length=max_length, truncation=True, return_tensors="pt").input_ids
    return ids.to(device)


def _clip_hidden(pair, texts, device, max_length=None):
    """(penultimate hidden states, output[0]) of a CLIP encoder, as SDXL and SD3 use them."""
    tok, enc = pair
    out = enc(_tokens(tok, texts, max_length or tok.model_max_length, device), output_hidden_states=True)
    return out.hidden_states[-2], out[0]


def _encode_sd(m, texts, device, max_seq):
    tok, enc = m.pairs[0]
    return {"prompt_embeds": enc(_tokens(tok, texts, tok.model_max_length, device), attention_mask=None)[0]}


def _encode_sdxl(m, texts, device, max_seq):
    h1, _ = _clip_hidden(m.pairs[0], texts, device)
    h2, pooled = _clip_hidden(m.pairs[1], texts, device)
    return {"prompt_embeds": torch.concat([h1, h2], dim=-1), "pooled": pooled}


def _encode_sd3(m, texts, device, max_seq):
    clip_len = m.pairs[0][0].model_max_length
    h1, p1 = _clip_hidden(m.pairs[0], texts, device, clip_len)
    h2, p2 = _clip_hidden(m.pairs[1], texts, device, clip_len)
    clip = torch.cat([h1, h2], dim=-1)
    if m.pairs[2] is None:
        t5 = torch.zeros((len(texts), max_seq, m.joint_attention_dim), device=device, dtype=clip.dtype)
    else:
        tok, enc = m.pairs[2]
        t5 = enc(_tokens(tok, texts, max_seq, device))[0]
    clip = torch.nn.functional.pad(clip, (0, t5.shape[-1] - clip.shape[-1]))
    return {"prompt_embeds": torch.cat([clip, t5], dim=-2), "pooled": torch.cat([p1, p2], dim=-1)}


def _encode_flux(m, texts, device, max_seq):
    tok, enc = m.pairs[0]
    pooled = enc(_tokens(tok, texts, tok.model_max_length, device), output_hidden_states=False).pooler_output
    tok2, enc2 = m.pairs[1]
    embeds = enc2(_tokens(tok2, texts, max_seq, device), output_hidden_states=False)[0]
    text_ids = torch.zeros(embeds.shape[1], 3, device=device, dtype=embeds.dtype)
    return {"prompt_embeds": embeds, "pooled": pooled, "text_ids": text_ids.expand(len(texts), -1, -1)}


_ENCODERS = {
    "sd": _encode_sd,
    "sdxl": _encode_sdxl,
    "sd3": _encode_sd3,
    "flux": _encode_flux,
    "flux2": family_flux2.encode_prompt,
    "zimage": family_zimage.encode,
    "qwenimage": family_qwenimage.encode,
}
#: default text length (T5; FLUX.2 and Z-Image: Qwen3; Qwen-Image: Qwen2.5-VL), as each pipeline's ``max_sequence_length``
DEFAULT_MAX_SEQ = {
    "sd3": 256,
    "flux": 512,
    "flux2": family_flux2.MAX_SEQUENCE_LENGTH,
    "zimage": 512,
    "qwenimage": family_qwenimage.DEFAULT_MAX_SEQ,
}


class EncodePrompt(Operator):
    name = "encode_prompt"
    doc = (
        "Tokenize and run the family's text encoders exactly as its diffusers pipeline does. A null "
        "text is the pipeline's negative_prompt=None: zeros for SDXL (force_zeros_for_empty_prompt), "
        "the empty prompt elsewhere."
    )
    component = "text_encoder"
    modes = {
        "default": Signature(
            inputs={
                "text": Port("text", optional=True),
                # 512 at most, as the SD3 and Flux pipelines allow
                "max_sequence_length": Port(
                    "int", optional=True, doc="T5 tokens (SD3, Flux); Qwen3 (Z-Image) or Qwen2.5-VL (Qwen-Image) tokens", ge=1, le=512
                ),
                **PATCH_PORTS,
            },
            outputs={"embedding": "embedding"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        texts = []
        for it in items:
            text = it.inputs.get("text")
            if text is not None and not isinstance(text, str):
                raise TypeError(f"{it.key}: text must be a string, got {type(text).__name__}")
            texts.append(text or "")
        lengths = {it.inputs.get("max_sequence_length") or DEFAULT_MAX_SEQ.get(model.family, 0) for it in items}
        if len(lengths) > 1:  # one batch, one length: split by length
            return _split_by(self, model, mode, items, lambda it: it.inputs.get("max_sequence_length"))
        with torch.inference_mode():
            out = _ENCODERS[model.family](model, texts, model.device, lengths.pop())
        zero = [it.inputs.get("text") is None and model.force_zeros_for_empty_prompt for it in items]
        results = []
        for i in range(len(items)):
            # Qwen-Image: one dict per text; Z-Image: a list per key where the texts' shapes differ (unpadded embeddings)
            emb = out[i] if isinstance(out, list) else {k: v[i] if isinstance(v, list) else v[i : i + 1] for k, v in out.items()}
            if zero[i]:
                emb = {k: torch.zeros_like(v) for k, v in emb.items()}
            results.append({"embedding": emb})
        return results

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"text": f"a photo of a cat, number {i}"}) for i in range(batch)]


def _split_by(op, model, mode, items, key):
    groups: dict = {}
    for i, it in enumerate(items):
        groups.setdefault(key(it), []).append(i)
    out: list = [None] * len(items)
    for idx in groups.values():
        for i, res in zip(idx, op.run(model, mode, [items[i] for i in idx]), strict=True):
            out[i] = res
    return out


class FormatText(Operator):
    name = "format_text"
    doc = "Fill a prompt template: `{text}` in `template` is replaced by `text`."
    light = True
    modes = {"default": Signature(inputs={"template": Port("text"), "text": Port("text")}, outputs={"text": "text"})}

    def run(self, model, mode: str, items: list[Item]):
        return [{"text": it.inputs["template"].replace("{text}", it.inputs["text"])} for it in items]

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"template": "a photo of {text}", "text": "a cat"}) for _ in range(batch)]
