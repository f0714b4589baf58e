"""The approximate cache in simulation: how often a request's lookup hits and how many steps it
skips, drawn per request; the serving code does the rest (the coordinator passes the skipped
iterations through and takes their work off, as it does live).

Two sources for the figures:

- ``nirvana``: NIRVANA (Agarwal et al., NSDI 2024, arXiv 2312.04429) reports 21% GPU compute
  saved on average on two production workloads (abstract), with states cached at K = 5, 10, 15,
  20, 25 of 50 steps. Its per-K hit shares are not transcribed here: this model assumes a 70% hit
  rate with K spread evenly over the five values, which saves 0.7 x 15 / 50 = 21% of the steps,
  NIRVANA's average; only that average is the paper's.
- ``benchmark``: the hit rate and K distribution ``benchmarks/less_work.py`` measured with the
  cache's default thresholds (on the tiny random-weight models: the mechanism's figures, whose
  similarities say nothing of real prompts).
"""

from __future__ import annotations

import json
import random
from dataclasses import dataclass
from pathlib import Path

from legodiffusion.core.approx import NIRVANA_REFERENCE_STEPS

#: benchmarks/less_work.py's results
BENCHMARK_RESULTS = Path(__file__).resolve().parents[2] / "benchmarks" / "results" / "less_work.json"
MODELS = ("nirvana", "benchmark")


@dataclass(frozen=True)
class CacheModel:
    """Per request: a hit with probability ``hit_rate``, then K (of ``reference_steps``) drawn from
    ``k_shares`` and scaled to the request's steps."""

    hit_rate: float
    k_shares: tuple[tuple[int, float], ...]  # (K, share of hits)
    source: str
    reference_steps: int = NIRVANA_REFERENCE_STEPS
    seed: int = 0

    def skipped(self, request: int, steps: int) -> int:
        """Steps the lookup of ``request`` (of a ``steps``-step schedule) skips: the same for a
        request id whatever order events come in."""
        rng = random.Random(self.seed * 1_000_003 + request)
        if rng.random() >= self.hit_rate or not self.k_shares:
            return 0
        ks, weights = zip(*self.k_shares)
        k = rng.choices(ks, weights=weights)[0]
        return min(max(int(k * steps / self.reference_steps + 0.5), 0), steps - 1)

    @property
    def mean_share(self) -> float:
        """Expected share of a schedule skipped per request."""
        total = sum(w for _, w in self.k_shares) or 1.0
        return self.hit_rate * sum(k * w for k, w in self.k_shares) / total / self.reference_steps


def nirvana() -> CacheModel:
    return CacheModel(0.7, tuple((k, 0.2) for k in (5, 10, 15, 20, 25)), "NIRVANA's 21% average saving (arXiv 2312.04429); split assumed")


def from_benchmark(path: Path = BENCHMARK_RESULTS) -> CacheModel:
    """The hit rate and K shares of benchmarks/less_work.py's cached stream."""
    data = json.loads(Path(path).read_text())
    cached = data["detail"]["cached"]
    shares = tuple((int(label.split("k=")[1].split(" ")[0]), row["hits"]) for label, row in cached["per_k"].items() if "k=" in label)
    return CacheModel(cached["hit_rate"], shares, f"benchmarks/less_work.py ({data['summary']['models']})")


def make_cache_model(name: str | None) -> CacheModel | None:
    if name in (None, "off"):
        return None
    if name == "nirvana":
        return nirvana()
    if name == "benchmark":
        return from_benchmark()
    raise ValueError(f"unknown cache model {name!r}; choose one of {MODELS} or off")
