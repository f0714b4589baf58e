"""Approximate caching across requests: the pure parts (NIRVANA: Agarwal et al., "Approximate
Caching for Efficiently Serving Text-to-Image Diffusion Models", NSDI 2024, arXiv 2312.04429).

A request that opts in saves its latents at a few steps ``k``; a later request whose prompt
embedding is close enough (cosine similarity) to a cached one starts its sampling loop at step
``k`` from those latents, skipping ``k`` steps. This module holds what needs no tensors: the
configuration (which steps are saved, which similarity allows which ``k``), the eviction policy
(LCBFU), and :class:`ApproxIndex`, the coordinator's index of what is cached and how often
requests hit, kept from the small notes the cache's nodes report (never a tensor). The store
itself lives in the data plane (:mod:`legodiffusion.runtime.approx_cache`); the operators are in
:mod:`legodiffusion.ops.approx`.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, field

#: NIRVANA's defaults (arXiv 2312.04429, section 4): states are saved at K = 5, 10, 15, 20, 25 of
#: 50 steps; the nearest cached prompt's CLIP-text cosine similarity picks how many steps may be
#: skipped, more for a closer prompt, none below the lowest threshold. The thresholds are our
#: transcription of the paper's K-selection mapping (check them against the paper before relying
#: on them); they were tuned for CLIP text embeddings and real weights, so recalibrate them for
#: another embedding or model with benchmarks/less_work.py, which prints the per-k quality curve.
NIRVANA_SAVE_AT = (5, 10, 15, 20, 25)
NIRVANA_THRESHOLDS = ((0.95, 25), (0.90, 20), (0.85, 15), (0.75, 10), (0.65, 5))
NIRVANA_REFERENCE_STEPS = 50


@dataclass(frozen=True)
class ApproxConfig:
    """The approximate cache of one engine (:attr:`EngineConfig.approx`)."""

    budget_bytes: int = 2 * 2**30
    """Bytes of cached states (latents and sampler state) the data plane keeps; LCBFU evicts beyond."""
    save_at: tuple[int, ...] = NIRVANA_SAVE_AT
    """Steps (of ``reference_steps``) after which a request's latents are saved, scaled to its own steps."""
    thresholds: tuple[tuple[float, int], ...] = NIRVANA_THRESHOLDS
    """(least cosine similarity, most steps skipped of ``reference_steps``) pairs: a hit skips the
    largest ``k`` its similarity allows (and a state is cached at)."""
    reference_steps: int = NIRVANA_REFERENCE_STEPS
    """The step count ``save_at`` and ``thresholds`` are given for."""

    def __post_init__(self) -> None:
        if self.budget_bytes < 0:
            raise ValueError(f"approx budget_bytes must be >= 0, got {self.budget_bytes}")
        if self.reference_steps < 1:
            raise ValueError(f"approx reference_steps must be >= 1, got {self.reference_steps}")
        if any(not 0 < k < self.reference_steps for k in self.save_at):
            raise ValueError(f"approx save_at steps must lie in (0, {self.reference_steps}), got {list(self.save_at)}")
        for sim, k in self.thresholds:
            if not -1.0 <= sim <= 1.0 or not 0 < k < self.reference_steps:
                raise ValueError(f"approx thresholds are (similarity in [-1, 1], steps in (0, {self.reference_steps})), got {(sim, k)}")

    def scaled(self, k: int, steps: int) -> int:
        """``k`` of ``reference_steps`` as a step of a ``steps``-step schedule (halves round up)."""
        return int(k * steps / self.reference_steps + 0.5)

    def saved_steps(self, steps: int) -> tuple[int, ...]:
        """The steps of a ``steps``-step schedule after which its latents are saved (at least one
        step skipped, at least one left to run)."""
        return tuple(sorted({s for k in self.save_at if 0 < (s := self.scaled(k, steps)) < steps}))

    def allowed_steps(self, similarity: float, steps: int) -> int:
        """The most steps of a ``steps``-step schedule a prompt this similar to a cached one may
        skip (0: none)."""
        best = max((k for sim, k in self.thresholds if similarity >= sim), default=0)
        return self.scaled(best, steps) if best else 0


@dataclass(frozen=True)
class StateInfo:
    """What eviction knows of one cached state."""

    id: int
    step: int  # steps it skips: the computational benefit of a hit on it
    nbytes: int
    uses: int  # 1 for the request that made it, plus one per hit
    seq: int  # insertion order: older first among equals


def lcbfu_victims(states: Iterable[StateInfo], budget_bytes: int) -> list[int]:
    """Least Computationally Beneficial and Frequently Used (NIRVANA's LCBFU): while the states
    exceed ``budget_bytes``, evict the one whose benefit (steps skipped) x frequency (uses) is
    least, the older first among equals. The incoming state is one of ``states``: it may be the
    one evicted."""
    pool = sorted(states, key=lambda s: (s.step * s.uses, s.seq))
    total = sum(s.nbytes for s in pool)
    out = []
    for s in pool:
        if total <= budget_bytes:
            break
        out.append(s.id)
        total -= s.nbytes
    return out


@dataclass
class _Counts:
    lookups: int = 0
    hits: int = 0
    skipped_share: float = 0.0  # sum over lookups of the share of the schedule skipped


@dataclass
class ApproxIndex:
    """The coordinator's index of the approximate cache, kept from the notes its nodes report:
    each cached state's metadata (id -> (key, step, bytes, the request that made it)), and per
    workflow how often its lookups hit and how much they skipped. Queried without a tensor in
    sight: how many states and bytes are cached, the hit rate, the share of a schedule a lookup
    skips on average."""

    states: dict[int, tuple] = field(default_factory=dict)
    counts: dict[str, _Counts] = field(default_factory=dict)

    @property
    def nbytes(self) -> int:
        return sum(s[2] for s in self.states.values())

    def saved(self, note: dict) -> None:
        """An insert node's note: ``{"id", "key", "step", "bytes", "request", "evicted": [ids]}``."""
        for gone in note.get("evicted", ()):
            self.states.pop(gone, None)
        if note.get("id") is not None:
            self.states[note["id"]] = (note["key"], note["step"], note["bytes"], note["request"])

    def looked_up(self, workflow: str, skipped: int, steps: int) -> None:
        c = self.counts.setdefault(workflow, _Counts())
        c.lookups += 1
        if skipped:
            c.hits += 1
            c.skipped_share += skipped / max(1, steps)

    def expected_skip(self, workflow: str) -> float:
        """Share of a request's schedule its workflow's lookups have skipped on average (0 before
        any). Admission does not count on it: a miss must fit; a hit's saving is taken off once
        its lookup answers."""
        c = self.counts.get(workflow)
        return c.skipped_share / c.lookups if c and c.lookups else 0.0

    def hit_rate(self, workflow: str | None = None) -> float:
        counts = [self.counts[workflow]] if workflow in self.counts else [] if workflow else list(self.counts.values())
        lookups = sum(c.lookups for c in counts)
        return sum(c.hits for c in counts) / lookups if lookups else 0.0
