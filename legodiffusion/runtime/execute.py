"""Running one dispatch on a worker: the part every backend's worker shares."""

from __future__ import annotations

import time

from legodiffusion.core.messages import Completion, Dispatch, ItemResult
from legodiffusion.models.store import ResidentModels
from legodiffusion.ops.base import Item, OperatorRegistry
from legodiffusion.runtime.dataplane import DataPlane


def _reason(exc: BaseException) -> str:
    return f"{type(exc).__name__}: {exc}"


def execute(d: Dispatch, worker: int, registry: OperatorRegistry, models: ResidentModels, plane: DataPlane) -> Completion:
    start = time.perf_counter()
    loads_before = models.loads
    op = registry.get(d.op)
    try:
        model = models.get(d.model, d.component) if d.component is not None else None
    except Exception as exc:  # a model that cannot load fails its requests, not the worker
        err = f"loading {d.model}/{d.component}: {_reason(exc)}"
        return Completion(d.id, worker, [ItemResult(error=err) for _ in d.items], start, time.perf_counter())
    results: list[ItemResult] = []
    try:
        items = [Item({**it.values, **{p: plane.get(r, worker) for p, r in it.refs.items()}}, it.key) for it in d.items]
        outs = op.run(model, d.mode, items)
        if len(outs) != len(items):
            raise RuntimeError(f"operator {d.op} returned {len(outs)} results for {len(items)} items")
        for it, out in zip(d.items, outs):
            results.append(ItemResult({p: plane.put(it.output_ids[p], worker, out[p]) for p in it.output_ids}))
    except Exception as exc:
        plane.free(r for res in results for r in (res.outputs or {}).values())
        if len(d.items) == 1:
            results = [ItemResult(error=_reason(exc))]
        else:  # isolate the culprit: one bad request must not fail its batch-mates
            results = []
            for it in d.items:
                single = Dispatch(d.id, d.worker, d.op, d.mode, d.model, d.component, [it], d.light)
                results.extend(execute(single, worker, registry, models, plane).results)
    loaded = [(d.model, d.component)] if models.loads > loads_before else []
    return Completion(d.id, worker, results, start, time.perf_counter(), loaded)
