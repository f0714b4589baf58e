"""Running one dispatch on a worker: the part every backend's worker shares."""

from __future__ import annotations

import functools
import time
from typing import Any

import torch

from legodiffusion.core.messages import PENDING, Completion, Dispatch, ItemResult
from legodiffusion.models.store import ResidentModels
from legodiffusion.ops.base import NOTES, Deferred, Item, OperatorRegistry
from legodiffusion.runtime.dataplane import DataPlane
from legodiffusion.runtime.patching import lora_patches
from legodiffusion.runtime.stopping import STOPPED, CallStopped, StopFlags


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def _pull(plane: DataPlane, ref, worker: int, device: str) -> Any:
    value = plane.get(ref, worker)
    if isinstance(value, torch.Tensor) and str(value.device) != device:
        value = value.to(device)
    return value


def _input(plane: DataPlane, ref, worker: int, device: str) -> Any:
    if ref.worker == PENDING:  # deferred: the operator blocks only where it reads it
        return Deferred(functools.partial(_pull, plane, ref, worker, device))
    return _pull(plane, ref, worker, device)


def execute(
    d: Dispatch, worker: int, registry: OperatorRegistry, models: ResidentModels, plane: DataPlane, stops: StopFlags | None = None
) -> Completion:
    """Run ``d``; a dispatch with no items (a prefetch) only makes its component resident.
    With ``stops``, a dispatch asked to stop (before or while it runs) ends at the next block
    boundary of its model call, its items reported cancelled."""
    start = time.perf_counter()
    if stops is not None and not stops.begin(d.id):
        stops.end()
        unloaded = [] if d.items else [(d.model, d.component, d.scope)]  # a prefetch stopped before it began holds nothing
        return Completion(d.id, worker, [ItemResult(error=STOPPED) for _ in d.items], start, time.perf_counter(), evicted=unloaded)
    try:
        return _execute(d, worker, registry, models, plane, stops, start)
    finally:
        if stops is not None:
            stops.end()


def _execute(
    d: Dispatch, worker: int, registry, models: ResidentModels, plane: DataPlane, stops: StopFlags | None, start: float
) -> Completion:
    if not d.items:
        try:
            res = models.acquire(d.model, d.component, d.scope, use=False)
            return Completion(d.id, worker, [], start, time.perf_counter(), res.loaded, res.evicted)
        except Exception:  # nobody waits on a prefetch: report it not held; the first call retries
            return Completion(d.id, worker, [], start, time.perf_counter(), evicted=[(d.model, d.component, d.scope)])
    op = registry.get(d.op)
    loaded: list[tuple] = []
    evicted: list[tuple] = []
    model = None
    if d.component is not None:
        try:
            res = models.acquire(d.model, d.component, d.scope, d.activation_bytes)
        except Exception as exc:  # a model that cannot load fails its requests, not the worker
            err = f"loading {d.model}/{d.component}: {_reason(exc)}"
            return Completion(d.id, worker, [ItemResult(error=err) for _ in d.items], start, time.perf_counter())
        model, loaded, evicted = res.obj, res.loaded, res.evicted
        if stops is not None and not (models.compile and d.component == "denoiser"):  # hooks would break compiled graphs
            stops.guard(model)
    elif op.service is not None:
        try:
            model = plane.service(op.service, d.model)
        except Exception as exc:  # e.g. a plane without that store: the requests fail, not the worker
            err = f"data-plane store {op.service!r}: {_reason(exc)}"
            return Completion(d.id, worker, [ItemResult(error=err) for _ in d.items], start, time.perf_counter())
    results = _run(d, op, model, worker, models, plane, stops)
    return Completion(d.id, worker, results, start, time.perf_counter(), loaded, evicted)


def _run(d: Dispatch, op, model, worker: int, models: ResidentModels, plane: DataPlane, stops: StopFlags | None) -> list[ItemResult]:
    results: list[ItemResult] = []
    try:
        items = [
            Item({**it.values, **{p: _input(plane, r, worker, models.device) for p, r in it.refs.items()}}, it.key, it.request_id)
            for it in d.items
        ]
        with lora_patches(models, d, model, items) as lora_active:
            outs = op.run(model, d.mode, items)
        if len(outs) != len(items):
            raise RuntimeError(f"operator {d.op} returned {len(outs)} results for {len(items)} items")
        for it, item, out in zip(d.items, items, outs):
            notes = (
                None
                if lora_active is None
                else {"lora_active": lora_active, "step": getattr(item.inputs.get("sampler"), "step_index", None)}
            )
            if out.get(NOTES):
                notes = {**(notes or {}), **out[NOTES]}
            results.append(ItemResult({p: plane.put(it.output_ids[p], worker, out[p]) for p in it.output_ids}, notes=notes))
        return results
    except Exception as exc:
        plane.free(r for res in results for r in (res.outputs or {}).values())
        if isinstance(exc, CallStopped) or (stops is not None and stops.stopping):
            # every request of the batch is gone (and may have taken its inputs along): nobody to isolate
            return [ItemResult(error=STOPPED) for _ in d.items]
        if len(d.items) == 1:
            return [ItemResult(error=_reason(exc))]
        # isolate the culprit: one bad request must not fail its batch-mates
        out = []
        for it in d.items:
            single = Dispatch(d.id, d.worker, d.op, d.mode, d.model, d.component, [it], d.light, d.scope)
            out.extend(_run(single, op, model, worker, models, plane, stops))
        return out
