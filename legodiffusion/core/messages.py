"""The small typed structs that cross the coordinator/worker boundary.

Tensors never ride in these: a :class:`TensorRef` is metadata, the bytes stay in the data plane of
the worker that produced them.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

RUNNING, SUCCEEDED, FAILED, CANCELLED, REJECTED = "running", "succeeded", "failed", "cancelled", "rejected"
"""A request's status in the coordinator (every one but ``running`` is final)."""

#: TensorRef.worker of a deferred input not produced yet: the reader waits for it
PENDING = -1


@dataclass(frozen=True, slots=True)
class TensorRef:
    id: int
    worker: int  # where the value lives
    nbytes: int
    shape: tuple[int, ...] | None = None  # None for non-tensor values (sampler state, text)
    dtype: str | None = None
    sig: tuple | None = None  # batch signature of a bundle of tensors; tensors use shape[1:]
    source: int = PENDING  # for a deferred input (worker == PENDING): the worker its producer was sent to
    device: str | None = None  # where a tensor's memory is (cpu, cuda:0); None for other values

    @property
    def batch_signature(self) -> tuple | None:
        return self.shape[1:] if self.shape is not None else self.sig


@dataclass(slots=True)
class DispatchItem:
    """One node of one request inside a batch."""

    request_id: int
    node: int
    key: str  # readable node path for errors
    refs: dict[str, TensorRef]  # inputs produced by other nodes
    values: dict[str, Any]  # scalar inputs (request inputs, constants)
    output_ids: dict[str, int]  # data-plane ids to store each output port under


@dataclass(slots=True)
class Dispatch:
    id: int
    worker: int
    op: str
    mode: str
    model: str | None
    component: str | None
    items: list[DispatchItem]
    light: bool = False  # glue: does not take one of the worker's slots
    scope: str | None = None  # model-copy namespace: the workflow under bundle semantics, else shared
    activation_bytes: int = 0  # working memory the call needs beside the weights (profiled peak; 0: unknown)


@dataclass(slots=True)
class ItemResult:
    outputs: dict[str, TensorRef] | None = None
    error: str | None = None
    notes: dict | None = None  # e.g. {"lora_active": True, "step": 3}


@dataclass(slots=True)
class Completion:
    dispatch_id: int
    worker: int
    results: list[ItemResult]
    start_s: float = 0.0  # worker clock, for accounting only
    end_s: float = 0.0
    loaded: list[tuple] = field(default_factory=list)  # (model, component, scope) made resident
    evicted: list[tuple] = field(default_factory=list)  # (model, component, scope) dropped
    lost_peers: list[int] = field(default_factory=list)  # workers found dead while pulling inputs


@dataclass(slots=True)
class RequestOutcome:
    request_id: int
    status: str  # succeeded | failed | cancelled
    outputs: dict[str, TensorRef] | None = None
    error: str | None = None
    node: str | None = None  # the node that failed, if any


@dataclass(slots=True)
class Actions:
    """What the driver must do after an event, in this order: read the outputs of ``finished``
    requests, release ``frees`` and ``abandoned`` ids from the data plane (waking readers of the
    latter with an error), then send ``dispatches``."""

    dispatches: list[Dispatch] = field(default_factory=list)
    finished: list[RequestOutcome] = field(default_factory=list)
    frees: list[TensorRef] = field(default_factory=list)
    progressed: list[int] = field(default_factory=list)  # a request id per node newly finished (a re-run after a loss counts once)
    abandoned: list[int] = field(default_factory=list)  # deferred ids that will never be written
