"""Preloading: a model's components made resident on every worker before the first request asks
for them, so that no early request waits for a load (``legodiffusion serve --preload``).

Each load is an ordinary prefetch dispatch of the coordinator (a dispatch with no items), so the
scheduler's view of what each worker holds stays exact and a worker's memory budget still rules:
a worker that cannot hold everything listed evicts its least recently used component, and the
report says what each worker holds at the end. One component at a time on every worker, in the
order given; a worker busy with both its call slots (a request that came in meanwhile) is skipped
for that component, which then loads on demand there as it always does.
"""

from __future__ import annotations

import asyncio
import time
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from legodiffusion.models.components import is_pipeline
from legodiffusion.models.store import ModelCatalog

if TYPE_CHECKING:
    from legodiffusion.runtime.engine import Engine

#: the components a pipeline model's workflows load (``config``: the facts its light nodes read,
#: such as the scheduler's and the sizes)
PIPELINE_COMPONENTS = ("config", "text_encoder", "denoiser", "vae")


@dataclass
class PreloadReport:
    """What a preload did: per (worker, model, component), ``loaded``, ``resident`` (already),
    ``failed`` (the load raised: the first call that needs it retries and fails its requests with
    the reason), ``busy`` (no free call slot) or ``lost`` (the worker died meanwhile); and what
    each worker holds at the end."""

    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    held: dict[int, list[str]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    def summary(self) -> dict:
        """Counts by status, the seconds it took, and what each worker holds."""
        counts = {s: self.count(s) for s in ("loaded", "resident", "failed", "busy", "lost") if self.count(s)}
        return {"seconds": round(self.seconds, 3), **counts, "held": {str(w): h for w, h in self.held.items()}}


def components(catalog: ModelCatalog, models: list[str]) -> list[tuple[str, str]]:
    """(model, component) pairs to preload for ``models`` (``["all"]``: every pipeline model of
    the catalog); raises ValueError naming what cannot be preloaded."""
    if list(models) == ["all"]:
        models = [m for m in catalog.names() if is_pipeline(catalog.folder(m))]
    out = []
    for name in models:
        if name not in catalog:
            raise ValueError(f"preload: unknown model {name!r}; known: {catalog.names()}")
        folder = catalog.folder(name)
        if is_pipeline(folder):
            out += [(name, c) for c in PIPELINE_COMPONENTS]
        elif folder.is_dir():  # a model saved on its own: a ControlNet
            out.append((name, "controlnet"))
        else:
            raise ValueError(f"preload: {name!r} is a LoRA file; LoRAs are attached to a resident base when a request asks")
    return out


async def preload(engine: Engine, models: list[str]) -> PreloadReport:
    """Make ``models``' components resident on every live worker (see the module); the engine's
    health says ``warming`` meanwhile."""
    pairs = components(engine.catalog, models)
    report, t0 = PreloadReport(), time.perf_counter()
    engine.preloading += 1
    try:
        for model, component in pairs:
            comp = (model, component, None)
            sent: dict[int, asyncio.Future] = {}
            for w in engine.coordinator.workers:
                if not w.alive or w.draining:
                    continue
                if comp in w.resident:
                    report.rows.append({"worker": w.id, "model": model, "component": component, "status": "resident"})
                    continue
                dispatch = engine.prefetch(w.id, comp)
                if dispatch is None:
                    report.rows.append({"worker": w.id, "model": model, "component": component, "status": "busy"})
                else:
                    sent[w.id] = dispatch
            for wid, done in sent.items():
                c = await done
                status = "lost" if c is None else "loaded" if comp in engine.coordinator.workers[wid].resident else "failed"
                report.rows.append({"worker": wid, "model": model, "component": component, "status": status})
    finally:
        engine.preloading -= 1
    report.seconds = time.perf_counter() - t0
    report.held = {w.id: sorted(f"{m}/{c}" for m, c, _ in w.resident) for w in engine.coordinator.workers if w.alive and not w.draining}
    engine.preloaded = report
    return report
