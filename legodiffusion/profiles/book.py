"""Profiles: measured latency and memory per (operator, mode, batch, resolution), and per-model
component load times and weight memory. Stored as JSON, keyed by model, device and library versions."""

from __future__ import annotations

import json
from dataclasses import asdict, dataclass, field
from pathlib import Path

from legodiffusion.core.cost import DefaultCost, interpolate


@dataclass(frozen=True)
class OpPoint:
    op: str
    mode: str
    batch: int
    px: int  # image pixels (height * width); 0 where resolution does not matter
    latency_s: float
    peak_bytes: int  # activation memory high-water mark during the call (beyond weights)


@dataclass(frozen=True)
class ComponentProfile:
    load_disk_s: float  # disk -> host memory
    load_device_s: float  # host memory -> device
    weight_bytes: int


@dataclass
class ModelProfile:
    model_key: str  # content hash of the model folder's configs and weight files
    device: str
    versions: dict[str, str]
    ops: list[OpPoint] = field(default_factory=list)
    components: dict[str, ComponentProfile] = field(default_factory=dict)
    source: str = "measured by `legodiffusion profile`"

    def to_json(self) -> dict:
        return {
            "model_key": self.model_key,
            "device": self.device,
            "versions": self.versions,
            "source": self.source,
            "ops": [asdict(p) for p in self.ops],
            "components": {k: asdict(v) for k, v in self.components.items()},
        }

    @classmethod
    def from_json(cls, d: dict) -> ModelProfile:
        return cls(
            d["model_key"],
            d["device"],
            dict(d["versions"]),
            [OpPoint(**p) for p in d["ops"]],
            {k: ComponentProfile(**v) for k, v in d["components"].items()},
            d.get("source", ""),
        )

    def save(self, path: Path) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(json.dumps(self.to_json(), indent=1) + "\n")

    @classmethod
    def load(cls, path: Path) -> ModelProfile:
        return cls.from_json(json.loads(Path(path).read_text()))

    def latency(self, op: str, mode: str, batch: int, px: int | None) -> float | None:
        points = self._points(op, mode)
        return interpolate(points, batch, px, lambda p: p.latency_s) if points else None

    def peak_bytes(self, op: str, mode: str, batch: int, px: int | None) -> int | None:
        points = self._points(op, mode)
        return int(interpolate(points, batch, px, lambda p: p.peak_bytes)) if points else None

    def _points(self, op: str, mode: str) -> list[OpPoint]:
        return [p for p in self.ops if p.op == op and p.mode == mode] or [p for p in self.ops if p.op == op]


class ProfileCost(DefaultCost):
    """Cost model answering from per-model profiles; unknown ops and models use the defaults."""

    def __init__(self, profiles: dict[str, ModelProfile] | None = None, **defaults) -> None:
        super().__init__(**defaults)
        self.profiles = dict(profiles or {})
        self._memo: dict[tuple, float] = {}

    def exec_s(self, op, mode, model, batch, px) -> float:
        key = (op, mode, model, batch, px)
        hit = self._memo.get(key)
        if hit is None:
            hit = self._memo[key] = self._lookup(op, mode, model, batch, px)
        return hit

    def _lookup(self, op, mode, model, batch, px) -> float:
        prof = self.profiles.get(model) if model is not None else None
        if prof is None and model is None and self.profiles:  # model-free glue: any profile measured it
            prof = next(iter(self.profiles.values()))
        found = prof.latency(op, mode, batch, px) if prof is not None else None
        return found if found is not None else super().exec_s(op, mode, model, batch, px)

    def profiled_px(self, op, mode, model) -> int | None:
        key = ("px", op, mode, model)
        if key not in self._memo:
            prof = self.profiles.get(model) if model is not None else None
            points = prof._points(op, mode) if prof is not None else []
            self._memo[key] = max(p.px for p in points) if points else None
        return self._memo[key]

    def load_s(self, model, component) -> float:
        """Host memory -> device: the cost of a load once a host copy exists (host copies are
        kept, so this is the steady state); :meth:`disk_load_s` is the first read."""
        c = self._component(model, component)
        return c.load_device_s if c is not None else super().load_s(model, component)

    def disk_load_s(self, model, component) -> float:
        """Disk -> host memory, paid when no host copy of the component exists."""
        c = self._component(model, component)
        return c.load_disk_s if c is not None else 0.0

    def weight_bytes(self, model, component) -> int:
        c = self._component(model, component)
        return c.weight_bytes if c is not None else 0

    def activation_bytes(self, op, mode, model, batch, px) -> int:
        """Peak activation memory of a call beside the weights (0 where not profiled)."""
        key = ("peak", op, mode, model, batch, px)
        hit = self._memo.get(key)
        if hit is None:
            prof = self.profiles.get(model) if model is not None else None
            hit = self._memo[key] = (prof.peak_bytes(op, mode, batch, px) if prof is not None else None) or 0
        return hit

    def _component(self, model, component) -> ComponentProfile | None:
        prof = self.profiles.get(model)
        return prof.components.get(component) if prof is not None else None
