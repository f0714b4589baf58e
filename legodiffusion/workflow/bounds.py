"""Bounding a request's cost before it is accepted, from its expanded graph, not its input names.

What a request costs is read off the template it expands to: how many nodes, the image size
reaching each node through its size ports (:data:`~legodiffusion.core.graph.SIZE_PORTS`, times
its :data:`~legodiffusion.core.graph.SCALE_PORT` where it has one: a hires stage), the
sampling steps reaching ``steps`` ports, its profiled work (seconds, the cost model's solo time of
every node at that size) and its largest tensor. A workflow whose loop count is called ``iters``
and whose sizes are ``h`` and ``w`` is bounded like the built-in ones. Where a model call is not
profiled, the work bound cannot be computed and the structural bounds (nodes, pixels, sides,
steps) stand alone; profile the models you serve (``legodiffusion profile``).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from legodiffusion.core.cost import CostModel
from legodiffusion.core.graph import CONSTANT, FROM_INPUT, Template, known_size, known_value
from legodiffusion.workflow.errors import SpecIssue, WorkflowError

#: bytes of a float32 RGB pixel: a decoded image, the largest tensor every text-to-image request holds
IMAGE_BYTES_PER_PX = 3 * 4


@dataclass(frozen=True)
class RequestBounds:
    """The most one request may cost; each is named in the error that enforces it. The defaults
    suit a GPU serving SD1.5/SDXL/SD3/Flux at up to 2048x2048 (a 50-step SDXL image at 1024x1024 is
    ~5-10 s of work on an A100/H100) and stop the tiny CPU test models from taking minutes per
    call; tighten ``max_request_work_s`` to what a client may make one server spend."""

    max_nodes: int = 4096
    """Most nodes a request may expand to (a guided step is 3; 3 ControlNets make it 9)."""
    max_steps: int = 200
    """Largest value reaching a node's ``steps`` port."""
    max_pixels: int = 2048 * 2048
    """Largest height x width reaching a node's size ports."""
    max_side: int = 4096
    """Largest height or width reaching a node's size ports (``100000x8`` is within max_pixels)."""
    max_unprofiled_pixels: int = 1024 * 1024
    """Largest height x width for a model call not profiled at that size or a larger one (its cost
    there is a guess): a call profiled up to 256x256 takes up to 1024x1024 here, one profiled at
    2048x2048 up to 2048x2048. Profile the sizes you serve (``legodiffusion profile --sizes``)."""
    max_request_work_s: float = 60.0
    """Most profiled solo work (seconds, summed over the request's nodes); applies where every
    model call of the request is profiled."""
    max_tensor_bytes: int = 8 * 2**30
    """Largest tensor one node may make: its profiled activation peak, or the decoded image."""


@dataclass(frozen=True)
class RequestCost:
    """What one request costs, from its template."""

    nodes: int
    px: int | None  # largest pixels reaching a node (None: the models' native sizes only)
    work_s: float  # profiled solo work (cost-model guesses where not profiled)
    profiled: bool  # every model call's time is measured, so ``work_s`` bounds the request
    tensor_bytes: int
    costs: list[float]  # each node's solo seconds, in template order


def request_cost(
    template: Template, inputs: dict[str, Any], cost: CostModel, bounds: RequestBounds, native_px: Callable[[str], int | None]
) -> RequestCost:
    """Check ``template`` with bound ``inputs`` against ``bounds`` and return its cost; raise
    :class:`WorkflowError` (``limit_exceeded``, naming the bound and the input at fault) when a
    bound is exceeded. ``native_px(model)`` is a model's native height x width (None if unknown),
    what a node asked for no size works at."""
    issues: list[SpecIssue] = []
    if len(template.nodes) > bounds.max_nodes:
        issues.append(_over("inputs", f"the request expands to {len(template.nodes)} nodes, beyond max_nodes={bounds.max_nodes}"))
    px = None
    for entry in template.sizes:
        node, h_in, w_in, _, scale_in = entry
        scaled = _scaled(scale_in, inputs)
        # a scaled size of the native one (a hires stage at the model's size) is bounded too
        model = template.nodes[node].model
        native = _native_side(native_px(model)) if scaled and model is not None else None
        h, w = known_size(entry, inputs, native)
        if not (isinstance(h, int) and isinstance(w, int)):
            continue
            continue
        path = _path(template, node, scale_in if scaled else h_in if h >= w else w_in)
        if max(h, w) > bounds.max_side:
            issues.append(_over(path, f"{w}x{h} has a side beyond max_side={bounds.max_side}"))
        elif h * w > bounds.max_pixels:
            issues.append(_over(path, f"{w}x{h} exceeds max_pixels={bounds.max_pixels}"))
        px = max(px or 0, h * w)
    for i, node in enumerate(template.nodes):
        for inp in node.inputs:
            if inp.port == "steps" and inp.kind in (FROM_INPUT, CONSTANT):
                steps = known_value(inp, inputs)
                if isinstance(steps, int) and steps > bounds.max_steps:
                    issues.append(_over(_path(template, i, inp), f"steps={steps} exceeds max_steps={bounds.max_steps}"))
    issues = list(dict.fromkeys(issues))  # one input feeding many nodes is reported once
    if issues:
        raise WorkflowError(issues)
    profiled = True
    for op, mode, model in dict.fromkeys((n.op, n.mode, n.model) for n in template.nodes if n.component is not None):
        measured = cost.profiled_px(op, mode, model)
        profiled = profiled and measured is not None
        if px is not None and measured != 0 and px > max(measured or 0, bounds.max_unprofiled_pixels):
            where = f"profiled up to {measured} pixels" if measured else "not profiled"
            message = f"{px} pixels: {op} of {model} is {where}, beyond max_unprofiled_pixels={bounds.max_unprofiled_pixels} (profile this size to serve it)"
            raise WorkflowError([_over(_size_path(template, inputs), message)])
    costs = [cost.exec_s(n.op, n.mode, n.model, 1, px) for n in template.nodes]
    work_s = sum(costs)
    if profiled and work_s > bounds.max_request_work_s:
        raise WorkflowError(
            [_over("inputs", f"the request is {work_s:.1f}s of profiled work, beyond max_request_work_s={bounds.max_request_work_s:g}")]
        )
    tensor_bytes = _largest_tensor(template, px, cost, native_px)
    if tensor_bytes > bounds.max_tensor_bytes:
        raise WorkflowError([_over("inputs", f"a node would make {tensor_bytes} bytes, beyond max_tensor_bytes={bounds.max_tensor_bytes}")])
    return RequestCost(len(template.nodes), px, work_s, profiled, tensor_bytes, costs)


def _largest_tensor(template: Template, px: int | None, cost: CostModel, native_px: Callable[[str], int | None]) -> int:
    peak = getattr(cost, "activation_bytes", None)  # profiled cost models only
    largest = 0
    for op, mode, model in dict.fromkeys(
        (n.op, n.mode, n.model) for n in template.nodes if n.model is not None and n.component is not None
    ):
        at = px or native_px(model) or 0
        largest = max(largest, at * IMAGE_BYTES_PER_PX, peak(op, mode, model, 1, px) if peak is not None else 0)
    return largest


def _size_path(template: Template, inputs: dict[str, Any]) -> str:
    """Where the largest size reaching a node comes from."""
    node, h_in, _, _, scale_in = max(template.sizes, key=lambda s: _area(*known_size(s, inputs)))
    return _path(template, node, scale_in if _scaled(scale_in, inputs) else h_in)


def _area(h, w) -> int:
    return h * w if isinstance(h, int) and isinstance(w, int) else -1


def _scaled(scale_in, inputs: dict[str, Any]) -> bool:
    """Whether a size entry's scale (a hires stage's upscale) changes its size."""
    return scale_in is not None and known_value(scale_in, inputs) not in (None, 1)


def _native_side(px: int | None) -> int | None:
    """The side of a model's native (square) size."""
    return None if px is None else math.isqrt(px)


def _path(template: Template, node: int, inp) -> str:
    return f"inputs.{inp.name}" if inp.kind == FROM_INPUT else f"nodes.{template.nodes[node].key}.inputs.{inp.port}"


def _over(path: str, message: str) -> SpecIssue:
    return SpecIssue("limit_exceeded", path, message)
