"""Preloading: a model's components made resident on the workers before the first request asks
for them, so that no early request waits for a load (``legodiffusion serve --preload``).

Each load is an ordinary prefetch dispatch of the coordinator (a dispatch with no items), so the
scheduler's view of what each worker holds stays exact and a worker's memory budget still rules:
a worker that cannot hold everything listed evicts its least recently used component, and the
report says what each worker holds at the end. One component at a time on every worker live
while it runs (a worker added later, by autoscaling or as a replacement, loads on demand), in
the order given; a worker busy with both its call slots (a request that came in meanwhile) is
skipped for that component, which then loads on demand there as it always does. Under a policy
that keeps each workflow's models apart (``bundle``) a model is preloaded once per registered
workflow that uses it. A load's time limit includes the component's first read from disk.
"""

from __future__ import annotations

import time
from collections import Counter
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from legodiffusion.models.components import is_pipeline
from legodiffusion.models.store import ModelCatalog

if TYPE_CHECKING:
    from legodiffusion.runtime.engine import Engine

#: the components a pipeline model's workflows load (``config``: the facts its light nodes read,
#: such as the scheduler's and the sizes)
PIPELINE_COMPONENTS = ("config", "text_encoder", "denoiser", "vae")
STATUSES = ("loaded", "resident", "failed", "busy", "lost", "stopped")


@dataclass
class PreloadReport:
    """What a preload did: per (worker, model, component, scope), ``loaded``, ``resident``
    (already), ``failed`` (the load raised: the first call that needs it retries and fails its
    requests with the reason), ``busy`` (no free call slot), ``lost`` (the worker died
    meanwhile) or ``stopped`` (the engine stopped first); and what each worker holds at the end.
    On a GPU, ``loaded`` means the copy to the device was issued; the worker's next call on it
    waits for it to land."""

    rows: list[dict] = field(default_factory=list)
    seconds: float = 0.0
    held: dict[int, list[str]] = field(default_factory=dict)

    def count(self, status: str) -> int:
        return sum(r["status"] == status for r in self.rows)

    def summary(self) -> dict:
        """Counts by status, the seconds it took, and what each worker holds."""
        counts = Counter(r["status"] for r in self.rows)
        return {
            "seconds": round(self.seconds, 3),
            **{s: counts[s] for s in STATUSES if counts[s]},
            "held": {str(w): h for w, h in self.held.items()},
        }


def components(catalog: ModelCatalog, models: list[str]) -> list[tuple[str, str]]:
    """(model, component) pairs to preload for ``models``, each once (``all`` stands for every
    pipeline model of the catalog, not its ControlNets); raises ValueError naming what cannot be
    preloaded."""
    names: list[str] = []
    for name in models:
        names += [m for m in catalog.names() if is_pipeline(catalog.folder(m))] if name == "all" else [name]
    out = []
    for name in dict.fromkeys(names):
        if name not in catalog:
            raise ValueError(f"preload: unknown model {name!r}; known: {catalog.names()} (or all)")
        folder = catalog.folder(name)
        if is_pipeline(folder):
            out += [(name, c) for c in PIPELINE_COMPONENTS]
        elif folder.is_dir():  # a model saved on its own: a ControlNet
            out.append((name, "controlnet"))
        elif folder.is_file():
            raise ValueError(f"preload: {name!r} is a LoRA file; LoRAs are attached to a resident base when a request asks")
        else:
            raise ValueError(f"preload: model {name!r}: nothing at {folder}")
    return out


def _scopes(engine: Engine, model: str) -> list[str | None]:
    """Where a component is kept: shared (None), or, under a policy that isolates workflows, per
    registered workflow that uses the model."""
    if not getattr(engine.coordinator.policy, "isolate_workflows", False):
        return [None]
    return [name for name, ex in engine.workflows.items() if model in ex.spec.models.values()]


async def preload(engine: Engine, models: list[str]) -> PreloadReport:
    """Make ``models``' components resident on every live worker (see the module); the engine's
    health says ``warming`` meanwhile."""
    pairs = components(engine.catalog, models)
    report, t0 = PreloadReport(), time.perf_counter()
    engine.preloading += 1
    try:
        for model, component in pairs:
            for scope in _scopes(engine, model):
                await _one(engine, report, (model, component, scope))
    finally:
        engine.preloading -= 1
    report.seconds = time.perf_counter() - t0
    report.held = {
        w.id: sorted(f"{m}/{c}" + (f"@{s}" if s else "") for m, c, s in w.resident)
        for w in engine.coordinator.workers
        if w.alive and not w.draining
    }
    engine.preloaded = report
    return report


async def _one(engine: Engine, report: PreloadReport, comp: tuple) -> None:
    """``comp`` on every live worker at once; a row per worker."""
    model, component, scope = comp

    def row(wid: int, status: str) -> None:
        report.rows.append({"worker": wid, "model": model, "component": component, "scope": scope, "status": status})

    sent = {}
    for w in engine.coordinator.workers:
        if not w.alive or w.draining:
            continue
        if comp in w.resident:
            row(w.id, "resident")
        elif (done := engine.prefetch(w.id, comp)) is not None:
            sent[w.id] = done
        else:
            row(w.id, "stopped" if engine.stopping else "busy")
    for wid, done in sent.items():
        c = await done
        if c is None:
            row(wid, "stopped" if engine.stopping else "lost")
        else:
            row(wid, "loaded" if comp in engine.coordinator.workers[wid].resident else "failed")
