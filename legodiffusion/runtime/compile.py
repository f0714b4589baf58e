"""Optional ``torch.compile`` of a worker's denoiser, with shapes bucketed by batch and resolution.

A compiled graph is specialised to its input shapes (``dynamic=False``), so every batch size the
coordinator happens to form would compile anew. Batches are therefore padded up to a bucket (1, 2,
4, 8, then multiples of 8) with copies of their last row, and the output is sliced back: rows are
independent in inference (GroupNorm normalises within a sample, attention attends within a
sample), so padding does not change the real rows. Each resolution (latent shape) is its own
bucket and compiles once.

Calls the compiled graph would not fit run eager instead, unpadded:

* with ControlNet residuals: the UNet reads them lazily (:class:`~legodiffusion.ops.controlnet.LazyResiduals`
  blocks on a deferred input where the first block needs it), which a traced graph cannot do,
  and their shapes would multiply the buckets;
* once LoRA adapters are injected: their set and weights change per batch, and each change would
  be a guard failure and a recompile.

Every first call of a bucket is recorded as a :class:`CompileEvent` with its wall time (tracing,
code generation and the call itself), in the worker's :class:`CompileLog`.
"""

from __future__ import annotations

import dataclasses
import threading
import time
from dataclasses import dataclass
from typing import Any

import torch
import torch._dynamo

from legodiffusion.models.components import Denoiser

#: Denoiser keyword arguments that carry ControlNet residuals (their calls run eager).
RESIDUAL_ARGS = (
    "down_block_additional_residuals",
    "mid_block_additional_residual",
    "controlnet_block_samples",
    "controlnet_single_block_samples",
    "block_controlnet_hidden_states",
)
#: Flux's position ids: per token, not per row, so never padded.
UNBATCHED_ARGS = frozenset({"txt_ids", "img_ids"})
#: Each bucket is one cache entry of the denoiser's ``forward``; beyond dynamo's default limit of
#: 8 entries a new bucket would silently run eager.
RECOMPILE_LIMIT = 64


def batch_bucket(n: int) -> int:
    """The padded batch size for ``n`` rows: 1, 2, 4, 8, then the next multiple of 8."""
    if n < 1:
        raise ValueError(f"batch size must be >= 1, got {n}")
    if n <= 8:
        return 1 << (n - 1).bit_length()
    return -(-n // 8) * 8


@dataclass(frozen=True)
class CompileEvent:
    """One bucket's first call: ``shape`` is the padded sample (latents, or Flux's packed tokens)."""

    model: str
    shape: tuple[int, ...]
    seconds: float


class CompileLog:
    """A worker's compile events, appended by its compiled denoisers, read by stats."""

    def __init__(self) -> None:
        self._events: list[CompileEvent] = []
        self._lock = threading.Lock()
        self.eager_calls = 0  # calls that bypassed the compiled graph (ControlNet residuals, LoRA)

    def record(self, event: CompileEvent) -> None:
        with self._lock:
            self._events.append(event)

    def events(self) -> list[CompileEvent]:
        with self._lock:
            return list(self._events)

    def seconds(self) -> float:
        """Wall time spent in first calls of buckets, summed."""
        return sum(e.seconds for e in self.events())


def _pad(value: Any, rows: int, padded: int, name: str = "") -> Any:
    if name in UNBATCHED_ARGS:
        return value
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == rows:
        return torch.cat([value, value[-1:].expand(padded - rows, *value.shape[1:])])
    if isinstance(value, dict):
        return {k: _pad(v, rows, padded, k) for k, v in value.items()}
    return value


def _unpad(value: Any, rows: int, padded: int) -> Any:
    if isinstance(value, torch.Tensor) and value.dim() and value.shape[0] == padded:
        return value[:rows]
    if isinstance(value, (tuple, list)):
        return type(value)(_unpad(v, rows, padded) for v in value)
    return value


def _signature(value: Any) -> Any:
    """What the compiled graph is specialised to: tensor shapes and dtypes, other values as is."""
    if isinstance(value, torch.Tensor):
        return (tuple(value.shape), value.dtype, value.device)
    if isinstance(value, dict):
        return tuple((k, _signature(v)) for k, v in value.items())
    if isinstance(value, (tuple, list)):
        return tuple(_signature(v) for v in value)
    return value


class CompiledDenoiser(torch.nn.Module):
    """A denoiser module whose calls run through ``torch.compile`` on bucketed shapes.

    Attributes it does not have (``config``, ``dtype``, LoRA methods) are the wrapped module's,
    so callers and LoRA injection see the module they expect."""

    def __init__(self, module: torch.nn.Module, log: CompileLog, model: str) -> None:
        super().__init__()
        self.inner = module
        # not a registered submodule: its parameters are the inner module's, counted once
        object.__setattr__(self, "_compiled", torch.compile(module, dynamic=False))
        self._log = log
        self._model = model
        self._seen: set = set()

    def __getattr__(self, name: str) -> Any:
        try:
            return super().__getattr__(name)
        except AttributeError:
            if name == "inner":
                raise
            return getattr(self._modules["inner"], name)

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        if any(kwargs.get(k) is not None for k in RESIDUAL_ARGS) or getattr(self.inner, "peft_config", None):
            self._log.eager_calls += 1
            return self.inner(*args, **kwargs)
        sample = args[0] if args else kwargs.get("sample", kwargs.get("hidden_states"))
        rows = sample.shape[0]
        padded = batch_bucket(rows)
        if padded != rows:
            args = tuple(_pad(a, rows, padded) for a in args)
            kwargs = {k: _pad(v, rows, padded, k) for k, v in kwargs.items()}
        key = (_signature(args), _signature(kwargs))
        if key in self._seen:
            return _unpad(self._compiled(*args, **kwargs), rows, padded)
        t0 = time.perf_counter()
        out = self._compiled(*args, **kwargs)
        if sample.device.type == "cuda":
            torch.cuda.synchronize(sample.device)
        self._log.record(CompileEvent(self._model, (padded, *sample.shape[1:]), time.perf_counter() - t0))
        self._seen.add(key)
        return _unpad(out, rows, padded)


def compile_denoiser(denoiser: Denoiser, log: CompileLog, model: str) -> Denoiser:
    """A copy of ``denoiser`` whose module runs compiled on bucketed shapes (the weights are
    shared, not copied); ``model`` names it in ``log``'s events."""
    torch._dynamo.config.recompile_limit = max(torch._dynamo.config.recompile_limit, RECOMPILE_LIMIT)
    return dataclasses.replace(denoiser, module=CompiledDenoiser(denoiser.module, log, model))
