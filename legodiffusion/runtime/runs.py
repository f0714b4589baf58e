"""What the embedded runtime hands back: a request prepared for submission (:class:`Prepared`),
submitted (:class:`Run`, with its progress and notes), and ended (:class:`RunResult`)."""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from legodiffusion.core.fairness import DEFAULT_PRIORITY, DEFAULT_TENANT
from legodiffusion.core.graph import Template
from legodiffusion.workflow.bounds import RequestCost


@dataclass
class RunResult:
    request_id: int
    workflow: str
    status: str  # succeeded | failed | cancelled | rejected (error starts with SLO_REJECTED)
    outputs: dict[str, Any] = field(default_factory=dict)
    error: str | None = None
    node: str | None = None
    latency_s: float = 0.0
    nodes: int = 0
    notes: dict = field(default_factory=dict)  # e.g. lora_active_from_step

    @property
    def ok(self) -> bool:
        return self.status == "succeeded"


@dataclass(frozen=True)
class Prepared:
    """A request expanded, checked and costed (:meth:`Engine.prepare`), ready to submit."""

    workflow: str
    template: Template
    inputs: dict[str, Any]  # bound: defaults applied
    slo_s: float | None
    cost: RequestCost
    tenant: str = DEFAULT_TENANT
    priority: int = DEFAULT_PRIORITY  # class rank: lower first (core/fairness.py)
    weight: float = 1.0  # the tenant's share of its class


@dataclass
class Run:
    """A submitted request: await :attr:`future` for its :class:`RunResult`."""

    request_id: int
    workflow: str
    nodes_total: int
    future: asyncio.Future
    submitted_s: float
    nodes_done: int = 0
    on_progress: Callable[[Run], None] | None = None
    notes: dict = field(default_factory=dict)
    step_nodes: set[int] = field(default_factory=set, repr=False)  # the sampler_step nodes finished
    #: denoise node -> whether its step cache skipped its blocks after the first (a re-run counts once)
    cached_nodes: dict[int, bool] = field(default_factory=dict, repr=False)
    started: bool = False  # a model call of this request has finished (before: queued)

    @property
    def steps_done(self) -> int:
        """Sampling steps finished (a re-run after a loss counts once)."""
        return len(self.step_nodes)
