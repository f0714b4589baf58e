"""Tokenize and encode a prompt with the model's CLIP text encoder."""

from __future__ import annotations

import torch

from legodiffusion.ops.base import Item, Operator, Port, Signature


class EncodePrompt(Operator):
    name = "encode_prompt"
    doc = "Tokenize (pad to the tokenizer's max length, truncate) and run the text encoder."
    component = "text_encoder"
    modes = {"default": Signature(inputs={"text": Port("text")}, outputs={"embedding": "embedding"})}

    def run(self, model, mode: str, items: list[Item]):
        texts = [it.inputs["text"] for it in items]
        for it, text in zip(items, texts, strict=True):
            if not isinstance(text, str):
                raise TypeError(f"{it.key}: text must be a string, got {type(text).__name__}")
        tok = model.tokenizer
        ids = tok(texts, padding="max_length", max_length=tok.model_max_length, truncation=True, return_tensors="pt").input_ids
        with torch.inference_mode():
            emb = model.encoder(ids.to(model.encoder.device), attention_mask=None)[0]
        return [{"embedding": e.unsqueeze(0)} for e in emb]

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"text": f"a photo of a cat, number {i}"}) for i in range(batch)]


class FormatText(Operator):
    name = "format_text"
    doc = "Fill a prompt template: `{text}` in `template` is replaced by `text`."
    light = True
    modes = {"default": Signature(inputs={"template": Port("text"), "text": Port("text")}, outputs={"text": "text"})}

    def run(self, model, mode: str, items: list[Item]):
        return [{"text": it.inputs["template"].replace("{text}", it.inputs["text"])} for it in items]

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"template": "a photo of {text}", "text": "a cat"}) for _ in range(batch)]
