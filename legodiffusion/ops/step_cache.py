"""Step caching: skip most of the denoiser on steps whose input barely changed, per sample.

A request opts in with its ``step_cache`` input, a JSON object naming a kind and its settings.
Each kind reproduces one of diffusers' cache hooks, its decision and update rules exactly:

* ``first_block`` (``FirstBlockCacheConfig``, diffusers/hooks/first_block_cache.py): the first
  transformer block always runs; when the relative mean change of its residual since the last
  computed step is at most ``threshold``, the other blocks are skipped and their last residuals
  (image and text streams) are added to the first block's output instead.
* ``mag`` (``MagCacheConfig``, diffusers/hooks/mag_cache.py): from the ``retention_ratio``'th
  step on, the per-step magnitude ratios (``mag_ratios``, calibrated per model; ``"flux"`` names
  diffusers' ``FLUX_MAG_RATIOS``) accumulate an error estimate; while it stays within
  ``threshold`` and at most ``max_skip_steps`` steps in a row, every block is skipped and the
  last residual of the whole block stack is added to its input. One difference: diffusers'
  ``num_inference_steps`` defaults to 28 whatever the pipeline runs; here it defaults to the steps
  the request's loop runs (pass it to match a diffusers config relying on 28).

The state (the cached residuals, and MagCache's step counter and accumulators) travels with the
request as data, through the loop's ``cache`` carry, like the sampler state: consecutive steps may
run on different workers, and each guidance branch carries its own. Every item of a batch keeps
its own state and decision (:mod:`legodiffusion.ops.block_cache` applies them per sample).

Where a pipeline batches its guidance branches in one denoiser call (diffusers' SD3 with
classifier-free guidance), FirstBlockCache decides once for both from their joint mean; here each
branch is its own call and decides on its own residual. MagCache's decisions do not depend on the
tensors, so they agree either way.
"""

from __future__ import annotations

import json
import math
from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Any

from legodiffusion.ops import block_cache, examples
from legodiffusion.ops.base import NOTES, BadValue, Item, Operator, Port, Signature
from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
mag_cache = lazy_module("diffusers.hooks.mag_cache")

#: denoisers with a list of transformer blocks, which diffusers' cache hooks apply to
FAMILIES = frozenset({"flux", "sd3"})
_EXAMPLE = '{"kind": "first_block", "threshold": 0.08}'


def _number(raw: dict, key: str, default: float, lo: float = 0.0, hi: float = math.inf) -> float:
    value = raw.get(key, default)
    if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value) or not lo <= value <= hi:
        raise ValueError(f"{key} must be a finite number in [{lo:g}, {hi:g}], got {value!r}")
    return float(value)


def _count(raw: dict, key: str, default: int | None, lo: int) -> int | None:
    value = raw.get(key, default)
    if value is not None and (isinstance(value, bool) or not isinstance(value, int) or value < lo):
        raise ValueError(f"{key} must be an integer >= {lo}, got {value!r}")
    return value


@dataclass(frozen=True)
class FirstBlockConfig:
    """diffusers' ``FirstBlockCacheConfig``."""

    #: the largest relative change of the first block's residual at which the other blocks are skipped
    threshold: float = 0.05

    @classmethod
    def parse(cls, raw: dict) -> FirstBlockConfig:
        return cls(_number(raw, "threshold", cls.threshold))


@dataclass(frozen=True)
class MagConfig:
    """diffusers' ``MagCacheConfig`` (without calibration, which only prints ratios)."""

    #: the largest accumulated error at which a step is skipped
    threshold: float = 0.06
    #: most steps skipped in a row (K in the paper)
    max_skip_steps: int = 3
    #: the fraction of the steps, from the first, that always compute
    retention_ratio: float = 0.2
    #: the steps ``mag_ratios`` are interpolated to; None: the steps the request's loop runs
    num_inference_steps: int | None = None
    #: the model's per-step magnitude ratios, or "flux" for diffusers' FLUX_MAG_RATIOS
    mag_ratios: tuple[float, ...] | str = ()

    @classmethod
    def parse(cls, raw: dict) -> MagConfig:
        ratios = raw.get("mag_ratios")
        if ratios != "flux":
            ok = isinstance(ratios, list) and ratios and all(not isinstance(r, bool) and isinstance(r, (int, float)) for r in ratios)
            if not ok or not all(math.isfinite(r) for r in ratios):
                raise ValueError(
                    f'mag_ratios must be a non-empty list of finite numbers (calibrated for the model) or "flux", got {ratios!r}'
                )
            ratios = tuple(float(r) for r in ratios)
        return cls(
            _number(raw, "threshold", cls.threshold),
            _count(raw, "max_skip_steps", cls.max_skip_steps, 0),
            _number(raw, "retention_ratio", cls.retention_ratio, 0.0, 1.0),
            _count(raw, "num_inference_steps", None, 1),
            ratios,
        )


KINDS = {"first_block": FirstBlockConfig, "mag": MagConfig}


def parse_step_cache(text: str | None) -> FirstBlockConfig | MagConfig | None:
    """The step cache a request asks for (None: off, as are null and an empty text); raises
    ValueError saying what is wrong."""
    if text is None or not text.strip():
        return None
    try:
        raw = json.loads(text)
    except json.JSONDecodeError:
        raw = None
    if not isinstance(raw, dict):
        raise ValueError(f"expected a JSON object such as {_EXAMPLE}, got {text!r}")
    kind = raw.get("kind")
    if kind not in KINDS:
        raise ValueError(f"kind must be one of {sorted(KINDS)}, got {kind!r}")
    cls = KINDS[kind]
    unknown = sorted(set(raw) - {"kind"} - set(cls.__dataclass_fields__))
    if unknown:
        raise ValueError(f"unknown setting(s) {unknown} for kind {kind!r}; settings: {sorted(cls.__dataclass_fields__)}")
    return cls.parse(raw)


def _tensor_bytes(*tensors) -> int:
    return sum(t.numel() * t.element_size() for t in tensors if t is not None)


@dataclass(frozen=True)
class FirstBlockState:
    """One guidance branch's FirstBlockCache state (diffusers' ``FBCSharedBlockState``)."""

    threshold: float
    #: the first block's residual (output - input) at the last computed step
    head_residual: Any = None
    #: the other blocks' residuals at the last computed step: (image stream, text stream or None)
    tail_residuals: tuple | None = None

    def __sizeof__(self) -> int:  # what the data plane counts for this value
        return 64 + _tensor_bytes(self.head_residual, *(self.tail_residuals or ()))


@dataclass(frozen=True)
class MagState:
    """One guidance branch's MagCache state (diffusers' ``MagCacheState``)."""

    threshold: float
    max_skip_steps: int
    num_inference_steps: int
    retention_step: int
    #: the magnitude ratios, interpolated to ``num_inference_steps`` (float32 values)
    ratios: tuple[float, ...]
    #: denoiser calls made, modulo ``num_inference_steps`` (diffusers counts calls, not steps)
    step_index: int = 0
    accumulated_ratio: float = 1.0
    accumulated_err: float = 0.0
    accumulated_steps: int = 0
    #: the whole block stack's residual (image stream) at the last computed step
    residual: Any = None

    def __sizeof__(self) -> int:
        return 64 + 8 * len(self.ratios) + _tensor_bytes(self.residual)


def new_state(config: FirstBlockConfig | MagConfig, steps: int) -> FirstBlockState | MagState:
    """A fresh state for a loop of ``steps`` denoiser calls per branch."""
    if isinstance(config, FirstBlockConfig):
        return FirstBlockState(config.threshold)
    n = config.num_inference_steps or steps
    ratios = mag_cache.FLUX_MAG_RATIOS if config.mag_ratios == "flux" else torch.tensor(config.mag_ratios, dtype=torch.float32)
    if len(ratios) != n:  # as MagCacheConfig.__post_init__
        ratios = mag_cache.nearest_interp(ratios, n)
    retention = int(config.retention_ratio * n + 0.5)
    return MagState(config.threshold, config.max_skip_steps, n, retention, tuple(ratios.tolist()))


class _FirstBlockRule:
    """One item's call under FirstBlockCache: FBCHeadBlockHook's decision and both hooks' updates."""

    def __init__(self, state: FirstBlockState) -> None:
        self.state = state
        self.head_residual, self.tail_residuals = state.head_residual, state.tail_residuals
        self.head_out: tuple | None = None

    def early(self) -> bool | None:
        return None  # decided on the first block's output

    def head(self, h_in, e_in, h_out, e_out):
        residual = h_out - h_in
        prev = self.state.head_residual
        if prev is not None:
            prev = prev.to(residual.device)
            diff = ((residual - prev).abs().mean() / prev.abs().mean()).item()
            if not diff > self.state.threshold:
                th, te = (None if t is None else t.to(h_out.device) for t in self.tail_residuals)
                return th + h_out, e_out if te is None else te + e_out, False
        self.head_out, self.head_residual = (h_out, e_out), residual
        return h_out, e_out, True

    def tail(self, h_out, e_out) -> None:
        h_head, e_head = self.head_out
        # SD3's last block returns no text stream (diffusers' hook fails there); nothing reads it after
        self.tail_residuals = (h_out - h_head, None if e_out is None else e_out - e_head)

    def finish(self) -> FirstBlockState:
        return replace(self.state, head_residual=self.head_residual, tail_residuals=self.tail_residuals)


class _MagRule:
    """One item's call under MagCache: MagCacheHeadHook's decision and the tail hook's updates."""

    def __init__(self, state: MagState) -> None:
        self.state = state
        self.compute = True
        self.acc = (state.accumulated_ratio, state.accumulated_err, state.accumulated_steps)
        self.residual = state.residual
        self.head_input = None

    def early(self) -> bool:
        s = self.state
        if s.step_index >= s.retention_step:
            # float32 tensor arithmetic, as the hook's on its tensor of ratios
            ratio = torch.tensor(s.accumulated_ratio, dtype=torch.float32) * torch.tensor(s.ratios[s.step_index], dtype=torch.float32)
            err = torch.tensor(s.accumulated_err, dtype=torch.float32) + (1.0 - ratio).abs()
            steps = s.accumulated_steps + 1
            if s.residual is not None and bool(err <= s.threshold) and steps <= s.max_skip_steps:
                self.compute, self.acc = False, (ratio.item(), err.item(), steps)
            else:
                self.acc = (1.0, 0.0, 0)
        return self.compute

    def head(self, h_in, e_in, h_out, e_out):
        if not self.compute:
            return h_in + self.state.residual.to(h_in.device), e_in, False
        self.head_input = h_in
        return h_out, e_out, True

    def tail(self, h_out, e_out) -> None:
        self.residual = h_out - self.head_input

    def finish(self) -> MagState:
        s = self.state
        step = s.step_index + 1
        if step >= s.num_inference_steps:  # the hook's end of a run: everything starts over
            return replace(s, step_index=0, accumulated_ratio=1.0, accumulated_err=0.0, accumulated_steps=0, residual=None)
        ratio, err, steps = self.acc
        return replace(s, step_index=step, accumulated_ratio=ratio, accumulated_err=err, accumulated_steps=steps, residual=self.residual)


class _Uncached:
    """An item without a step cache: every block runs for it."""

    def early(self) -> bool:
        return True

    def head(self, h_in, e_in, h_out, e_out):
        return h_out, e_out, True

    def tail(self, h_out, e_out) -> None:
        pass

    def finish(self) -> None:
        return None


def _rule(state):
    if state is None:
        return _Uncached()
    return _FirstBlockRule(state) if isinstance(state, FirstBlockState) else _MagRule(state)


class CachedCall:
    """One denoiser call of a batch under the items' step caches: ``model`` is what to call, and
    after the call :meth:`outputs` gives each item's next state (and, where cached, whether its
    blocks after the head were skipped)."""

    def __init__(self, model, rules: list, blocks: block_cache.BatchCall | None) -> None:
        self.model = model
        self._rules = rules
        self._blocks = blocks

    def outputs(self) -> list[dict]:
        out = []
        for i, rule in enumerate(self._rules):
            state = rule.finish()
            out.append({"cache": state} if state is None else {"cache": state, NOTES: {"step_cache_skipped": not self._blocks.compute[i]}})
        return out


@contextmanager
def cached_call(model, states: list, sizes: list[int]):
    """Within it, ``call.model``'s denoiser applies each item's step cache (an item with state None
    computes every block); ``sizes``: each item's rows in the batch."""
    rules = [_rule(s) for s in states]
    if all(s is None for s in states):
        yield CachedCall(model, rules, None)
        return
    if model.family not in FAMILIES:
        raise ValueError(f"step caching applies to transformer denoisers ({', '.join(sorted(FAMILIES))}), not {model.family}")
    # a compiled denoiser (runtime/compile.py) holds its eager module as ``inner``: per-sample
    # decisions are Python control flow a traced graph cannot hold, so cached calls run eager
    eager = getattr(model.module, "inner", None)
    if eager is not None:
        model = replace(model, module=eager)
    with block_cache.cached_blocks(model.module, rules, sizes) as blocks:
        yield CachedCall(model, rules, blocks)


_STEP_CACHE_DOC = 'JSON, e.g. {"kind": "first_block", "threshold": 0.08} or {"kind": "mag", "mag_ratios": "flux"}; null: off'


class InitStepCache(Operator):
    name = "init_step_cache"
    doc = "A request's step cache, empty, or None where its step_cache input is off; it travels beside the sampler state."
    component = "config"
    light = True
    modes = {
        "default": Signature(
            inputs={
                "step_cache": Port("text", optional=True, doc=_STEP_CACHE_DOC, form=parse_step_cache),
                "sampler": Port("sampler", doc="the loop's first sampler state: its steps left are the loop's"),
            },
            outputs={"cache": "cache"},
        )
    }

    def check(self, mode, values, cfg):
        if cfg is not None and cfg.family not in FAMILIES and parse_step_cache(values.get("step_cache")) is not None:
            raise BadValue(
                "step_cache", f"step caching applies to transformer denoisers ({', '.join(sorted(FAMILIES))}), not a {cfg.family} UNet"
            )

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            self.check(mode, it.inputs, model)
            config, sampler = parse_step_cache(it.inputs.get("step_cache")), it.inputs["sampler"]
            out.append({"cache": None if config is None else new_state(config, sampler.num_steps - sampler.step_index)})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"step_cache": _EXAMPLE, "sampler": examples.sampler_state(cfg)}) for _ in range(batch)]
