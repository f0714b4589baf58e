"""The data-only workflow spec and its JSON form.

A spec names request inputs, model slots, nodes and outputs. Nodes are operator calls, loops
(unrolled per request) and conditions on request inputs (resolved per request). A value flowing
into a port is a *source*: another node's output, a request input, a literal, or a loop carry.

JSON shapes (lossless round trip with :func:`spec_from_json` / :meth:`WorkflowSpec.to_json`)::

    input:   {"type": T, "default": V, "doc": S, "default_from": NAME}  (all but type optional; an
             input with ``default_from`` left out or null takes input NAME's value)
    source:  {"node": ID, "port": P} | {"input": NAME} | {"literal": V} | {"carry": NAME}
    op:      {"id": ID, "op": OP, "mode": M, "model": SLOT, "inputs": {PORT: source}}
    loop:    {"id": ID, "loop": {"count": source, "carry": {NAME: source},
                                 "body": [node...], "next": {NAME: source},
                                 "strength": source, "strength_rounds": "kept" | "skipped"}}

A loop with a ``strength`` (an editing loop) runs only the last part of a ``count``-step schedule,
as diffusers' image-to-image pipelines do: ``"kept"`` keeps floor(count x strength) steps (the UNet
pipelines), ``"skipped"`` skips floor(count x (1 - strength)) (the flow-matching pipelines).
    cond:    {"id": ID, "cond": {"if": {"input": NAME, "cmp": ">", "value": V},
                                 "then": {"nodes": [node...], "outputs": {NAME: source}},
                                 "else": {"nodes": [node...], "outputs": {NAME: source}}}}
"""

from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from typing import Any, Union

from legodiffusion.workflow.errors import SpecIssue, WorkflowError

#: how an editing loop rounds ``count x strength`` (see the module doc)
STRENGTH_ROUNDS = ("kept", "skipped")
REQUIRED = object()  # an input with no default must be given by every request
COMPARATORS = {
    ">": lambda a, b: a > b,
    ">=": lambda a, b: a >= b,
    "<": lambda a, b: a < b,
    "<=": lambda a, b: a <= b,
    "==": lambda a, b: a == b,
    "!=": lambda a, b: a != b,
}


@dataclass(frozen=True)
class NodeRef:
    node: str
    port: str


@dataclass(frozen=True)
class InputRef:
    name: str


@dataclass(frozen=True)
class Literal:
    value: Any


@dataclass(frozen=True)
class CarryRef:
    name: str


Source = Union[NodeRef, InputRef, Literal, CarryRef]


@dataclass
class OpNode:
    id: str
    op: str
    inputs: dict[str, Source] = field(default_factory=dict)
    mode: str = "default"
    model: str | None = None


@dataclass
class LoopNode:
    id: str
    count: Source
    carry: dict[str, Source]
    body: list[Node]
    next: dict[str, Source]
    #: editing loops: run the last part of the schedule (see the module doc)
    strength: Source | None = None
    strength_rounds: str = "kept"


@dataclass(frozen=True)
class Predicate:
    input: str
    cmp: str
    value: Any

    def holds(self, inputs: dict[str, Any]) -> bool:
        return bool(COMPARATORS[self.cmp](inputs[self.input], self.value))


@dataclass
class Branch:
    nodes: list[Node]
    outputs: dict[str, Source]


@dataclass
class CondNode:
    id: str
    predicate: Predicate
    then: Branch
    otherwise: Branch


Node = Union[OpNode, LoopNode, CondNode]


@dataclass
class InputSpec:
    type: str
    default: Any = REQUIRED
    doc: str = ""
    #: an input left out (or null) takes this other input's value: a second stage's step count
    #: defaults to the first's (``default`` is then null)
    default_from: str | None = None

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass
class WorkflowSpec:
    name: str
    inputs: dict[str, InputSpec]
    models: dict[str, str]
    nodes: list[Node]
    outputs: dict[str, Source]

    def to_json(self) -> dict:
        return {
            "name": self.name,
            "inputs": {k: _input_to_json(v) for k, v in self.inputs.items()},
            "models": dict(self.models),
            "nodes": [_node_to_json(n) for n in self.nodes],
            "outputs": {k: _source_to_json(s) for k, s in self.outputs.items()},
        }

    def canonical(self) -> str:
        return json.dumps(self.to_json(), sort_keys=True, separators=(",", ":"))

    @property
    def id(self) -> str:
        """Content address: the same canonical spec always has the same id."""
        return "wf-" + hashlib.sha256(self.canonical().encode()).hexdigest()[:16]


# ---- to JSON -------------------------------------------------------------------------------


def _input_to_json(spec: InputSpec) -> dict:
    out: dict[str, Any] = {"type": spec.type}
    if not spec.required:
        out["default"] = spec.default
    if spec.doc:
        out["doc"] = spec.doc
    if spec.default_from is not None:
        out["default_from"] = spec.default_from
    return out


def _source_to_json(src: Source) -> dict:
    if isinstance(src, NodeRef):
        return {"node": src.node, "port": src.port}
    if isinstance(src, InputRef):
        return {"input": src.name}
    if isinstance(src, CarryRef):
        return {"carry": src.name}
    return {"literal": src.value}


def _branch_to_json(b: Branch) -> dict:
    return {"nodes": [_node_to_json(n) for n in b.nodes], "outputs": {k: _source_to_json(s) for k, s in b.outputs.items()}}


def _node_to_json(node: Node) -> dict:
    if isinstance(node, OpNode):
        out: dict[str, Any] = {"id": node.id, "op": node.op, "mode": node.mode}
        if node.model is not None:
            out["model"] = node.model
        out["inputs"] = {k: _source_to_json(s) for k, s in node.inputs.items()}
        return out
    if isinstance(node, LoopNode):
        loop = {
            "count": _source_to_json(node.count),
            "carry": {k: _source_to_json(s) for k, s in node.carry.items()},
            "body": [_node_to_json(n) for n in node.body],
            "next": {k: _source_to_json(s) for k, s in node.next.items()},
        }
        if node.strength is not None:
            loop.update(strength=_source_to_json(node.strength), strength_rounds=node.strength_rounds)
        return {"id": node.id, "loop": loop}
    p = node.predicate
    return {
        "id": node.id,
        "cond": {
            "if": {"input": p.input, "cmp": p.cmp, "value": p.value},
            "then": _branch_to_json(node.then),
            "else": _branch_to_json(node.otherwise),
        },
    }


# ---- from JSON -----------------------------------------------------------------------------


class _Parser:
    """Strict structural parsing; every complaint names the JSON path it is about."""

    def __init__(self) -> None:
        self.issues: list[SpecIssue] = []

    def fail(self, path: str, message: str) -> None:
        self.issues.append(SpecIssue("malformed", path, message))

    def obj(self, value: Any, path: str) -> dict:
        if not isinstance(value, dict):
            self.fail(path, f"expected an object, got {type(value).__name__}")
            return {}
        return value

    def string(self, value: Any, path: str) -> str:
        if not isinstance(value, str) or not value:
            self.fail(path, "expected a non-empty string")
            return ""
        return value

    def source(self, value: Any, path: str) -> Source:
        d = self.obj(value, path)
        keys = set(d)
        if keys == {"node", "port"}:
            return NodeRef(self.string(d["node"], path + ".node"), self.string(d["port"], path + ".port"))
        if keys == {"input"}:
            return InputRef(self.string(d["input"], path + ".input"))
        if keys == {"literal"}:
            return Literal(d["literal"])
        if keys == {"carry"}:
            return CarryRef(self.string(d["carry"], path + ".carry"))
        if d:
            self.fail(path, 'a source is {"node", "port"}, {"input"}, {"literal"} or {"carry"}; got keys ' + str(sorted(keys)))
        return Literal(None)

    def sources(self, value: Any, path: str) -> dict[str, Source]:
        return {k: self.source(v, f"{path}.{k}") for k, v in self.obj(value, path).items()}

    def nodes(self, value: Any, path: str) -> list[Node]:
        if not isinstance(value, list):
            self.fail(path, "expected a list of nodes")
            return []
        out = []
        for i, raw in enumerate(value):
            d = self.obj(raw, f"{path}[{i}]")
            node_id = d.get("id")
            where = f"{path}.{node_id}" if isinstance(node_id, str) and node_id else f"{path}[{i}]"
            node = self.node(d, where)
            if node is not None:
                out.append(node)
        return out

    def node(self, d: dict, path: str) -> Node | None:
        node_id = self.string(d.get("id"), path + ".id")
        kinds = [k for k in ("op", "loop", "cond") if k in d]
        if len(kinds) != 1:
            self.fail(path, 'a node has exactly one of "op", "loop" or "cond"')
            return None
        kind = kinds[0]
        allowed = {"op": {"id", "op", "mode", "model", "inputs"}, "loop": {"id", "loop"}, "cond": {"id", "cond"}}[kind]
        for extra in sorted(set(d) - allowed):
            self.fail(f"{path}.{extra}", f"unknown field {extra!r} for a {kind} node")
        if kind == "op":
            model = d.get("model")
            if model is not None:
                model = self.string(model, path + ".model")
            return OpNode(
                id=node_id,
                op=self.string(d["op"], path + ".op"),
                mode=self.string(d.get("mode", "default"), path + ".mode"),
                model=model,
                inputs=self.sources(d.get("inputs", {}), path + ".inputs"),
            )
        if kind == "loop":
            loop = self.obj(d["loop"], path + ".loop")
            for extra in sorted(set(loop) - {"count", "carry", "body", "next", "strength", "strength_rounds"}):
                self.fail(f"{path}.loop.{extra}", f"unknown field {extra!r} for a loop")
            rounds = loop.get("strength_rounds", "kept")
            if rounds not in STRENGTH_ROUNDS:
                self.fail(path + ".strength_rounds", f"must be one of {list(STRENGTH_ROUNDS)}, got {rounds!r}")
            return LoopNode(
                id=node_id,
                count=self.source(loop.get("count"), path + ".count"),
                carry=self.sources(loop.get("carry", {}), path + ".carry"),
                body=self.nodes(loop.get("body", []), path + ".body"),
                next=self.sources(loop.get("next", {}), path + ".next"),
                strength=self.source(loop["strength"], path + ".strength") if "strength" in loop else None,
                strength_rounds=str(rounds),
            )
        cond = self.obj(d["cond"], path + ".cond")
        pred = self.obj(cond.get("if"), path + ".if")
        predicate = Predicate(self.string(pred.get("input"), path + ".if.input"), str(pred.get("cmp", "")), pred.get("value"))
        return CondNode(node_id, predicate, self.branch(cond.get("then"), path + ".then"), self.branch(cond.get("else"), path + ".else"))

    def branch(self, value: Any, path: str) -> Branch:
        d = self.obj(value, path)
        return Branch(self.nodes(d.get("nodes", []), path + ".nodes"), self.sources(d.get("outputs", {}), path + ".outputs"))

    def inputs(self, value: Any, path: str) -> dict[str, InputSpec]:
        out = {}
        for name, raw in self.obj(value, path).items():
            d = self.obj(raw, f"{path}.{name}")
            source = d.get("default_from")
            out[name] = InputSpec(
                type=self.string(d.get("type"), f"{path}.{name}.type"),
                default=d["default"] if "default" in d else (None if source is not None else REQUIRED),
                doc=str(d.get("doc", "")),
                default_from=None if source is None else self.string(source, f"{path}.{name}.default_from"),
            )
        return out


def spec_from_json(data: Any) -> WorkflowSpec:
    """Parse a JSON workflow spec; raise :class:`WorkflowError` naming every malformed path."""
    p = _Parser()
    d = p.obj(data, "workflow")
    models = p.obj(d.get("models", {}), "models")
    spec = WorkflowSpec(
        name=p.string(d.get("name"), "name"),
        inputs=p.inputs(d.get("inputs", {}), "inputs"),
        models={k: p.string(v, f"models.{k}") for k, v in models.items()},
        nodes=p.nodes(d.get("nodes", []), "nodes"),
        outputs=p.sources(d.get("outputs", {}), "outputs"),
    )
    for extra in sorted(set(d) - {"name", "inputs", "models", "nodes", "outputs"}, key=str):
        p.fail(str(extra) or "workflow", f"unknown top-level field {extra!r}")
    if p.issues:
        raise WorkflowError(p.issues)
    return spec
