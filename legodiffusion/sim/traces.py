"""Request arrival traces: Poisson, bursty, Gamma (with a coefficient of variation), CSV replay."""

from __future__ import annotations

import csv
import random
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any


@dataclass(frozen=True)
class Arrival:
    t: float
    workflow: str
    inputs: dict[str, Any] = field(default_factory=dict)


def _pick(rng: random.Random, mix: dict[str, float]) -> str:
    names = list(mix)
    return rng.choices(names, weights=[mix[n] for n in names])[0]


def poisson(rate: float, duration_s: float, mix: dict[str, float], seed: int = 0) -> list[Arrival]:
    rng = random.Random(seed)
    out, t = [], 0.0
    while rate > 0:
        t += rng.expovariate(rate)
        if t >= duration_s:
            break
        out.append(Arrival(t, _pick(rng, mix)))
    return out


def bursty(
    base_rate: float, multiplier: float, burst_start_s: float, burst_s: float, duration_s: float, mix: dict[str, float], seed: int = 0
) -> list[Arrival]:
    """Poisson at ``base_rate``, and ``multiplier`` times that rate from ``burst_start_s`` for ``burst_s``."""
    rng = random.Random(seed)
    out, t = [], 0.0
    while True:
        # thinning against the peak rate keeps the process exact across the rate change
        peak = base_rate * max(1.0, multiplier)
        t += rng.expovariate(peak)
        if t >= duration_s:
            return out
        rate = base_rate * (multiplier if burst_start_s <= t < burst_start_s + burst_s else 1.0)
        if rng.random() < rate / peak:
            out.append(Arrival(t, _pick(rng, mix)))


def gamma(rate: float, cv: float, duration_s: float, mix: dict[str, float], seed: int = 0) -> list[Arrival]:
    """Renewal process with Gamma inter-arrival times of mean 1/rate and coefficient of variation cv."""
    rng = random.Random(seed)
    shape = 1.0 / (cv * cv)
    scale = 1.0 / (rate * shape)
    out, t = [], 0.0
    while True:
        t += rng.gammavariate(shape, scale)
        if t >= duration_s:
            return out
        out.append(Arrival(t, _pick(rng, mix)))


def from_csv(path: str | Path) -> list[Arrival]:
    """``timestamp_s,workflow`` and optional columns, each an input of that request (numbers are
    parsed; empty cells are skipped). Rows are sorted by time."""
    out = []
    with open(path, newline="") as f:
        reader = csv.DictReader(f)
        if reader.fieldnames is None or not {"timestamp_s", "workflow"} <= set(reader.fieldnames):
            raise ValueError(f"{path}: the header must include timestamp_s and workflow, got {reader.fieldnames}")
        for line, row in enumerate(reader, start=2):
            try:
                t = float(row.pop("timestamp_s"))
            except ValueError:
                raise ValueError(f"{path}:{line}: timestamp_s is not a number") from None
            workflow = row.pop("workflow").strip()
            inputs = {k: _number(v) for k, v in row.items() if k and v not in (None, "")}
            out.append(Arrival(t, workflow, inputs))
    out.sort(key=lambda a: a.t)
    if out:
        t0 = out[0].t
        out = [Arrival(a.t - t0, a.workflow, a.inputs) for a in out]
    return out


def _number(text: str):
    for cast in (int, float):
        try:
            return cast(text)
        except ValueError:
            pass
    return text
