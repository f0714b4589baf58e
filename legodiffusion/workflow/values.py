"""Checking a request's values at submission, before anything is queued.

Every node of the expanded request is checked with the values known on arrival (request inputs
and literals; what nodes produce is not known yet): each value against its port's declared type
and range (:meth:`Port.check`), then the node's values together against its model's cheap facts
(:meth:`Operator.check`). So a run never fails later, or "succeeds" with a black image, for a
value that could have been refused at once. Nodes that differ only in where they sit (the steps
of a loop) are checked once.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

from legodiffusion.core.graph import FROM_INPUT, FROM_NODE, Template, TNode
from legodiffusion.ops.base import BadValue, OperatorRegistry
from legodiffusion.workflow.errors import SpecIssue, WorkflowError


def check_values(template: Template, inputs: dict[str, Any], registry: OperatorRegistry, config_of: Callable[[str], Any]) -> None:
    """Raise :class:`WorkflowError` listing every value of ``inputs`` (bound) or of the workflow's
    literals that a node of ``template`` would fail on. ``config_of(model)`` is the model's
    ``PipelineConfig``, or None where it is no pipeline (a ControlNet); it is asked only for
    models of nodes that have one."""
    issues: list[SpecIssue] = []
    seen: set = set()
    for node in template.nodes:
        key = _identity(node)
        if key is not None:
            if key in seen:
                continue
            seen.add(key)
        for issue in _check_node(node, inputs, registry, config_of):
            if issue not in issues:  # one input feeding many nodes is reported once
                issues.append(issue)
    if issues:
        raise WorkflowError(issues)


def _identity(node: TNode) -> tuple | None:
    """What the checks of ``node`` depend on: its operator, mode, model and where its known values
    come from (None if a literal cannot be hashed: then it is checked every time)."""
    known = tuple(
        (i.port, i.kind, i.name if i.kind == FROM_INPUT else (type(i.value), i.value)) for i in node.inputs if i.kind != FROM_NODE
    )
    key = (node.op, node.mode, node.model, known)
    try:
        hash(key)
    except TypeError:
        return None
    return key


def _check_node(node: TNode, inputs: dict[str, Any], registry: OperatorRegistry, config_of) -> list[SpecIssue]:
    op = registry.get(node.op)
    ports = op.modes[node.mode].inputs
    values: dict[str, Any] = {}
    paths: dict[str, str] = {}
    for i in node.inputs:
        if i.kind == FROM_NODE:
            continue
        values[i.port] = inputs.get(i.name) if i.kind == FROM_INPUT else i.value
        paths[i.port] = f"inputs.{i.name}" if i.kind == FROM_INPUT else f"nodes.{node.key}.inputs.{i.port}"
    issues = []
    for port, value in list(values.items()):
        try:
            ports[port].check(port, value)
        except BadValue as exc:
            issues.append(SpecIssue(exc.code, paths[port], str(exc)))
            del values[port]  # the operator's checks see only values of their port's type and range
    cfg = config_of(node.model) if node.model is not None and op.component is not None else None
    try:
        op.check(node.mode, values, cfg)
    except BadValue as exc:
        issues.append(SpecIssue(exc.code, paths.get(exc.port, f"nodes.{node.key}.inputs.{exc.port}"), str(exc)))
    return issues
