"""Per-sample step caching inside one batched transformer call.

For the length of one call, the denoiser's blocks (every block of its block lists, in order, as
diffusers' cache hooks find them) are wrapped: the first (head) runs for every item that may
compute, then each item's rule (:mod:`legodiffusion.ops.step_cache`) decides, from its own rows
and its own state, whether its remaining blocks run. The middle blocks and the last (tail) run
only on the rows of the items that compute; the other items' rows pass through unchanged, as
diffusers' hooks pass a skipped block's inputs through. So one request's decision never touches
another's rows, and when every item skips, no block after the head runs at all.

The alternative, running every block on the whole batch and then selecting each item's rows, would
keep one batch shape per block but spend the skipped items' compute; here a batch whose items
disagree pays a gather and a scatter of its hidden states per block instead, and its computing
rows run as a smaller batch (which may round differently from the whole batch in the last bits,
as any change of batch does).

The wrappers are set as the blocks' ``forward`` and removed when the call ends: a worker runs one
call at a time on its own copy of the model, and a call without step caching runs untouched.
"""

from __future__ import annotations

import functools
import inspect
from contextlib import contextmanager

from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
hooks_common = lazy_module("diffusers.hooks._common")
hooks_helpers = lazy_module("diffusers.hooks._helpers")

#: block arguments with one row per sample (the rotary embeddings and attention kwargs are shared)
ROW_ARGS = frozenset({"hidden_states", "encoder_hidden_states", "temb"})


def transformer_blocks(module) -> list:
    """The blocks diffusers' cache hooks wrap, in order: every element of the module's block lists."""
    names = hooks_common._ALL_TRANSFORMER_BLOCK_IDENTIFIERS
    return [b for name, lst in module.named_children() if name in names and isinstance(lst, torch.nn.ModuleList) for b in lst]


class BatchCall:
    """One call's per-item decisions: ``rules[i]`` holds item i's cache rules, ``sizes[i]`` its rows;
    ``compute[i]`` says, once the head has run, whether item i's remaining blocks run."""

    def __init__(self, rules: list, sizes: list[int]) -> None:
        self.rules = rules
        self.sizes = sizes
        starts = [sum(sizes[:i]) for i in range(len(sizes))]
        self.rows = [slice(a, a + n) for a, n in zip(starts, sizes)]
        self.compute = [True] * len(rules)

    def head(self, meta, forward, *args, **kwargs):
        kw = _named(forward, args, kwargs)
        h_in, e_in = kw["hidden_states"], kw["encoder_hidden_states"]
        outs = self._run(meta, forward, kw, [rule.early() is not False for rule in self.rules])
        hs, es = [], []
        for i, (rule, rows, out) in enumerate(zip(self.rules, self.rows, outs)):
            h, e, self.compute[i] = rule.head(h_in[rows], e_in[rows], *(out or (None, None)))
            hs.append(h)
            es.append(e)
        return _pack(meta, torch.cat(hs), _cat(es))

    def middle(self, meta, forward, *args, **kwargs):
        if all(self.compute):
            return forward(*args, **kwargs)
        kw = _named(forward, args, kwargs)
        return _pack(meta, *self._merge(kw, self._run(meta, forward, kw, self.compute)))

    def tail(self, meta, forward, *args, **kwargs):
        kw = _named(forward, args, kwargs)
        if all(self.compute):  # the common case: the block's own output, no copies
            out = forward(**kw)
            h, e = _unpack(meta, out)
            for rule, rows in zip(self.rules, self.rows):
                rule.tail(h[rows], None if e is None else e[rows])
            return out
        outs = self._run(meta, forward, kw, self.compute)
        for rule, out in zip(self.rules, outs):
            if out is not None:
                rule.tail(*out)
        return _pack(meta, *self._merge(kw, outs))

    def _run(self, meta, forward, kw: dict, mask: list[bool]) -> list[tuple | None]:
        """Run the block on the rows of the items in ``mask``; each item's (image, text) output
        rows, or None where it did not run."""
        if not any(mask):
            return [None] * len(mask)
        if not all(mask):
            index = torch.cat([torch.arange(r.start, r.stop) for r, m in zip(self.rows, mask) if m]).to(kw["hidden_states"].device)
            kw = {k: v.index_select(0, index) if k in ROW_ARGS and isinstance(v, torch.Tensor) else v for k, v in kw.items()}
        h, e = _unpack(meta, forward(**kw))
        outs, at = [], 0
        for n, m in zip(self.sizes, mask):
            outs.append((h[at : at + n], None if e is None else e[at : at + n]) if m else None)
            at += n if m else 0
        return outs

    def _merge(self, kw: dict, outs: list[tuple | None]):
        """Whole-batch outputs: computed rows where an item ran, its inputs where it passed through."""
        h_in, e_in = kw["hidden_states"], kw["encoder_hidden_states"]
        hs = [h_in[r] if o is None else o[0] for o, r in zip(outs, self.rows)]
        es = [e_in[r] if o is None else o[1] for o, r in zip(outs, self.rows)]
        return torch.cat(hs), _cat(es)


def _cat(parts: list):
    # SD3's last block returns no text stream: where any computed item has none, neither does the batch
    return None if any(p is None for p in parts) else torch.cat(parts)


def _named(forward, args: tuple, kwargs: dict) -> dict:
    """The call's arguments by name (diffusers calls its blocks with keywords; positions are bound)."""
    return inspect.signature(forward).bind(*args, **kwargs).arguments if args else kwargs


def _unpack(meta, out) -> tuple:
    if meta.return_encoder_hidden_states_index is None:
        return out, None
    return out[meta.return_hidden_states_index], out[meta.return_encoder_hidden_states_index]


def _pack(meta, h, e):
    if meta.return_encoder_hidden_states_index is None:
        return h
    out = [None, None]
    out[meta.return_hidden_states_index], out[meta.return_encoder_hidden_states_index] = h, e
    return tuple(out)


@contextmanager
def cached_blocks(module, rules: list, sizes: list[int]):
    """Wrap ``module``'s blocks for one call of a batch with these items' rules; yields the
    :class:`BatchCall` holding their decisions."""
    blocks = transformer_blocks(module)
    if len(blocks) < 2:
        raise ValueError(f"step caching needs at least two transformer blocks; {type(module).__name__} has {len(blocks)}")
    call = BatchCall(rules, sizes)
    roles = [call.head] + [call.middle] * (len(blocks) - 2) + [call.tail]
    saved = []
    try:
        for block, role in zip(blocks, roles):
            meta = hooks_helpers.TransformerBlockRegistry.get(type(block))
            saved.append((block, block.__dict__.get("forward")))
            block.forward = functools.partial(role, meta, block.forward)
        yield call
    finally:
        for block, own in saved:
            if own is None:
                del block.forward
            else:
                block.forward = own
