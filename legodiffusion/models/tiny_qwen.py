"""Offline stand-ins for the Qwen tokenizers and Qwen3 text encoders of the newer families
(Z-Image, FLUX.2-klein and Qwen-Image read prompts through Qwen models).

The tokenizer is a byte-level BPE ``Qwen2Tokenizer`` (the class every Qwen checkpoint ships) over
the 256 byte stand-ins, a few merges and Qwen's special tokens, with a chat template that writes
Qwen3's format for the messages these pipelines send (one user turn, a generation prompt, the
``enable_thinking`` switch). Nothing is downloaded; the same seed gives the same files.
"""

from __future__ import annotations

import torch

from legodiffusion.models.tiny import _byte_unicode_alphabet

#: Qwen's control tokens the pipelines' prompts and templates use.
QWEN_SPECIALS = (
    "<|endoftext|>",
    "<|im_start|>",
    "<|im_end|>",
    "<think>",
    "</think>",
    "<|vision_start|>",
    "<|vision_end|>",
    "<|image_pad|>",
    "<|video_pad|>",
)

# Byte-level merges (Ġ is the stand-in for a leading space), so the tokenizer does real BPE work.
_MERGES = ["t h", "th e", "Ġ th", "Ġth e", "a n", "i n", "o n", "e r", "a r", "Ġ a", "Ġ c", "Ġc a", "s t"]

# Qwen3's chat format for a list of plain-text messages: each turn `<|im_start|>role\ncontent<|im_end|>\n`,
# then the assistant's opening; with thinking disabled an empty think block follows it, as in Qwen3's template.
QWEN3_CHAT_TEMPLATE = (
    "{%- for message in messages %}"
    "{{- '<|im_start|>' + message['role'] + '\\n' + message['content'] + '<|im_end|>\\n' }}"
    "{%- endfor %}"
    "{%- if add_generation_prompt %}"
    "{{- '<|im_start|>assistant\\n' }}"
    "{%- if enable_thinking is defined and enable_thinking is false %}"
    "{{- '<think>\\n\\n</think>\\n\\n' }}"
    "{%- endif %}"
    "{%- endif %}"
)


def _spelling_merges(words: tuple[str, ...]) -> list[str]:
    """Merges that build each word (ASCII; a leading space is Ġ) letter by letter from its start."""
    merges = []
    for word in words:
        pieces = word.replace(" ", "Ġ")
        merges += [f"{pieces[:k]} {pieces[k]}" for k in range(1, len(pieces))]
    return merges


def tiny_qwen_tokenizer(max_length: int = 512, words: tuple[str, ...] = ()):
    """A ``Qwen2Tokenizer`` (byte-level BPE) with Qwen's specials and Qwen3's chat template.

    ``words`` (ASCII, a leading space where the text has one) each become one token, as a real
    vocabulary's common words do, so a fixed template tokenizes to as many tokens as with the
    real tokenizer (Qwen-Image drops its template's first 34)."""
    from transformers import Qwen2Tokenizer

    merges = list(dict.fromkeys(_spelling_merges(words) + _MERGES))  # ranked first: they win over the shorter merges
    tokens = _byte_unicode_alphabet() + ["".join(m.split()) for m in merges]
    vocab = {tok: i for i, tok in enumerate(dict.fromkeys(tokens))}
    for special in QWEN_SPECIALS:
        vocab.setdefault(special, len(vocab))
    tok = Qwen2Tokenizer(
        vocab=vocab,
        merges=[tuple(m.split()) for m in merges],
        eos_token="<|im_end|>",
        pad_token="<|endoftext|>",
        model_max_length=max_length,
        additional_special_tokens=list(QWEN_SPECIALS[1:]),
    )
    tok.chat_template = QWEN3_CHAT_TEMPLATE
    return tok


def tiny_qwen3_encoder(tokenizer, seed: int, hidden_size: int = 32, layers: int = 3, causal_lm: bool = False):
    """A small Qwen3 text model (``Qwen3Model``; ``Qwen3ForCausalLM`` with ``causal_lm``), sized so
    the hidden states the pipelines read (a middle or second-to-last layer) are distinct layers."""
    from transformers import Qwen3Config, Qwen3ForCausalLM, Qwen3Model

    config = Qwen3Config(
        vocab_size=len(tokenizer),
        hidden_size=hidden_size,
        intermediate_size=2 * hidden_size,
        num_hidden_layers=layers,
        num_attention_heads=4,
        num_key_value_heads=2,
        head_dim=hidden_size // 4,
        max_position_embeddings=1024,
        pad_token_id=tokenizer.pad_token_id,
        eos_token_id=tokenizer.eos_token_id,
        tie_word_embeddings=False,
    )
    torch.manual_seed(seed)
    return Qwen3ForCausalLM(config) if causal_lm else Qwen3Model(config)
