"""Static checks of a workflow spec against the operator registry, before anything loads."""

from __future__ import annotations

from dataclasses import dataclass

from legodiffusion.core.images import is_image
from legodiffusion.ops.base import DATA_TYPES, REQUEST_TYPES, SCALAR_TYPES, BadValue, OperatorRegistry
from legodiffusion.workflow.errors import SpecIssue, WorkflowError
from legodiffusion.workflow.spec import (
    COMPARATORS,
    CarryRef,
    CondNode,
    InputRef,
    Literal,
    LoopNode,
    Node,
    NodeRef,
    OpNode,
    Source,
    WorkflowSpec,
)


@dataclass
class _Where:
    node: Node
    path: str  # e.g. "nodes.denoise.body.unet_cond"
    scope: tuple[str, ...]  # ids of the enclosing loop/cond nodes, outermost first
    loops: tuple[LoopNode, ...]  # enclosing loops, innermost last


def literal_type(value) -> str | None:
    if isinstance(value, bool):
        return "bool"
    if is_image(value):
        return "image"
    if isinstance(value, int):
        return "int"
    if isinstance(value, float):
        return "float"
    if isinstance(value, str):
        return "text"
    return None


def _null(src) -> bool:
    return isinstance(src, Literal) and src.value is None


def assignable(src_type: str | None, port_type: str) -> bool:
    if src_type is None:
        return False
    return src_type == port_type or port_type == "any" or (src_type == "int" and port_type == "float")


class _Checker:
    def __init__(self, spec: WorkflowSpec, registry: OperatorRegistry) -> None:
        self.spec = spec
        self.registry = registry
        self.issues: list[SpecIssue] = []
        self.where: dict[str, _Where] = {}
        self._types: dict[str, dict[str, str]] = {}
        self._typing: set[str] = set()

    def fail(self, code: str, path: str, message: str) -> None:
        issue = SpecIssue(code, path, message)
        if issue not in self.issues:
            self.issues.append(issue)

    def check_default_from(self, name: str, spec) -> None:
        path = f"inputs.{name}.default_from"
        source = self.spec.inputs.get(spec.default_from)
        if source is None:
            self.fail("unknown_request_input", path, f"input {name!r} defaults to {spec.default_from!r}, which is not declared")
        elif source.default_from is not None:
            self.fail("bad_default", path, f"input {name!r} defaults to {spec.default_from!r}, which defaults to another input itself")
        elif not assignable(source.type, spec.type):
            self.fail("type_mismatch", path, f"input {name!r} ({spec.type}) cannot default to {spec.default_from!r} ({source.type})")
        elif spec.default is not None:
            self.fail(
                "bad_default", f"inputs.{name}.default", f"input {name!r} takes {spec.default_from!r}'s value when left out: no default"
            )

    # -- index -----------------------------------------------------------------------------

    def index(self, nodes: list[Node], path: str, scope: tuple[str, ...], loops: tuple[LoopNode, ...]) -> None:
        for node in nodes:
            here = f"{path}.{node.id}"
            if node.id in self.where:
                self.fail("duplicate_id", here, f"node id {node.id!r} is used more than once")
                continue
            self.where[node.id] = _Where(node, here, scope, loops)
            if isinstance(node, LoopNode):
                self.index(node.body, here + ".body", scope + (node.id,), loops + (node,))
            elif isinstance(node, CondNode):
                self.index(node.then.nodes, here + ".then", scope + (node.id,), loops)
                self.index(node.otherwise.nodes, here + ".else", scope + (node.id,), loops)

    # -- output types of nodes, inferred on demand -----------------------------------------

    def outputs_of(self, node_id: str) -> dict[str, str]:
        if node_id in self._types:
            return self._types[node_id]
        if node_id in self._typing:  # a cycle; reported by the cycle check
            return {}
        self._typing.add(node_id)
        w = self.where[node_id]
        node = w.node
        out: dict[str, str] = {}
        if isinstance(node, OpNode):
            if node.op in self.registry and node.mode in self.registry.get(node.op).modes:
                out = dict(self.registry.get(node.op).modes[node.mode].outputs)
        elif isinstance(node, LoopNode):
            for name, src in node.carry.items():
                t = self.type_of(src, w, check=False)
                if t:
                    out[name] = t
        else:
            inner = _Where(node, w.path, w.scope + (node.id,), w.loops)
            for name, src in node.then.outputs.items():
                if _null(src):  # a branch giving null takes the other branch's type
                    src = node.otherwise.outputs.get(name, src)
                t = None if _null(src) else self.type_of(src, inner, check=False)
                if t:
                    out[name] = t
        self._typing.discard(node_id)
        self._types[node_id] = out
        return out

    def type_of(self, src: Source, w: _Where, path: str = "", check: bool = True, port=None) -> str | None:
        """The type a source yields, seen from the node at ``w``; reports problems when ``check``."""
        report = self.fail if check else (lambda *a: None)
        if isinstance(src, InputRef):
            spec = self.spec.inputs.get(src.name)
            if spec is None:
                report("unknown_request_input", path, f"request input {src.name!r} is not declared in the workflow's inputs")
                return None
            return spec.type
        if isinstance(src, Literal):
            if port is not None and port.per_request:
                report(
                    "literal_not_allowed", path, "a literal is given where a request input is required (this port must vary per request)"
                )
                return None
            t = literal_type(src.value)
            if t is None and src.value is None and port is not None and port.optional:
                return port.type
            if t is None:
                report("type_mismatch", path, f"literal {src.value!r} is not a text, int, float or bool")
            return t
        if isinstance(src, CarryRef):
            for loop in reversed(w.loops):
                if src.name in loop.carry:
                    return self.type_of(loop.carry[src.name], self.where[loop.id], check=False)
            report("unknown_carry", path, f"no enclosing loop carries {src.name!r}")
            return None
        target = self.where.get(src.node)
        if target is None:
            report("unknown_node", path, f"no node has id {src.node!r}")
            return None
        if target.scope != w.scope[: len(target.scope)]:
            report("not_visible", path, f"node {src.node!r} is inside a loop or branch that this node is not in")
            return None
        outputs = self.outputs_of(src.node)
        if src.port not in outputs:
            if outputs or not isinstance(target.node, OpNode):  # an unknown op is reported once, elsewhere
                report("unknown_output_port", path, f"node {src.node!r} has no output {src.port!r}; it has {sorted(outputs)}")
            return None
        return outputs[src.port]

    # -- per node checks -------------------------------------------------------------------

    def check_op(self, node: OpNode, w: _Where) -> None:
        if node.op not in self.registry:
            self.fail("unknown_op", w.path + ".op", f"unknown operator {node.op!r}; known: {self.registry.names()}")
            return
        op = self.registry.get(node.op)
        if node.mode not in op.modes:
            self.fail("unknown_mode", w.path + ".mode", f"operator {node.op!r} has no mode {node.mode!r}; modes: {sorted(op.modes)}")
            return
        sig = op.modes[node.mode]
        for port_name, src in node.inputs.items():
            path = f"{w.path}.inputs.{port_name}"
            port = sig.inputs.get(port_name)
            if port is None:
                self.fail(
                    "unknown_port", path, f"operator {node.op!r} ({node.mode}) has no input {port_name!r}; inputs: {sorted(sig.inputs)}"
                )
                continue
            t = self.type_of(src, w, path, port=port)
            if t is not None and not assignable(t, port.type):
                self.fail("type_mismatch", path, f"port {port_name!r} takes {port.type}, got {t}")
            elif t is not None and isinstance(src, Literal):  # its range and form, before anything loads
                try:
                    port.check(port_name, src.value)
                except BadValue as exc:
                    self.fail(exc.code, path, str(exc))
        for port_name, port in sig.inputs.items():
            if port_name not in node.inputs and not port.optional:
                self.fail("missing_input", f"{w.path}.inputs.{port_name}", f"required input {port_name!r} ({port.type}) is not connected")
        if op.component is not None:
            if node.model is None:
                self.fail("missing_model", w.path + ".model", f"operator {node.op!r} needs a model slot; slots: {sorted(self.spec.models)}")
            elif node.model not in self.spec.models:
                self.fail(
                    "unknown_model_slot", w.path + ".model", f"model slot {node.model!r} is not declared; slots: {sorted(self.spec.models)}"
                )

    def check_structural(self, src: Source, w: _Where, path: str, want: set[str]) -> None:
        """Loop counts and predicates shape the graph, so they must be known on arrival."""
        if isinstance(src, Literal):
            t = literal_type(src.value)
        elif isinstance(src, InputRef):
            t = self.type_of(src, w, path)
            if t is None:
                return
        else:
            self.fail("not_static", path, "must be a request input or a literal (it decides the graph's shape on arrival)")
            return
        if t not in want:
            self.fail("type_mismatch", path, f"expected {'/'.join(sorted(want))}, got {t}")

    def check_loop(self, node: LoopNode, w: _Where) -> None:
        self.check_structural(node.count, w, w.path + ".count", {"int"})
        if node.strength is not None:
            self.check_structural(node.strength, w, w.path + ".strength", {"float", "int"})
        for name, src in node.carry.items():
            self.type_of(src, w, f"{w.path}.carry.{name}")
        inner = _Where(node, w.path, w.scope + (node.id,), w.loops + (node,))
        if set(node.next) != set(node.carry):
            self.fail(
                "carry_mismatch", w.path + ".next", f"next must set exactly the carried names {sorted(node.carry)}, got {sorted(node.next)}"
            )
        for name, src in node.next.items():
            t = self.type_of(src, inner, f"{w.path}.next.{name}")
            want = self.outputs_of(node.id).get(name)
            if t and want and t != want:
                self.fail("type_mismatch", f"{w.path}.next.{name}", f"carry {name!r} is {want}, next gives {t}")

    def check_cond(self, node: CondNode, w: _Where) -> None:
        p = node.predicate
        if p.cmp not in COMPARATORS:
            self.fail("bad_predicate", w.path + ".if.cmp", f"comparator must be one of {sorted(COMPARATORS)}, got {p.cmp!r}")
        self.check_structural(InputRef(p.input), w, w.path + ".if.input", SCALAR_TYPES)
        spec = self.spec.inputs.get(p.input)
        if p.cmp in ORDERINGS and spec is not None and spec.type in SCALAR_TYPES and not _orderable(spec.type, literal_type(p.value)):
            self.fail("type_mismatch", w.path + ".if.value", f"{p.input} ({spec.type}) cannot be compared with {p.value!r} by {p.cmp!r}")
        inner = _Where(node, w.path, w.scope + (node.id,), w.loops)
        if set(node.then.outputs) != set(node.otherwise.outputs):
            self.fail(
                "branch_mismatch",
                w.path + ".else.outputs",
                f"both branches must output the same names: {sorted(node.then.outputs)} vs {sorted(node.otherwise.outputs)}",
            )
        for name, src in node.then.outputs.items():
            # a null on one side is "nothing" of the other side's type (a stage a request skips)
            t1 = None if _null(src) else self.type_of(src, inner, f"{w.path}.then.outputs.{name}")
            other = node.otherwise.outputs.get(name)
            t2 = None if other is None or _null(other) else self.type_of(other, inner, f"{w.path}.else.outputs.{name}")
            if t1 and t2 and t1 != t2:
                self.fail("type_mismatch", f"{w.path}.else.outputs.{name}", f"branches disagree on {name!r}: {t1} vs {t2}")

    # -- cycles ----------------------------------------------------------------------------

    def deps(self, node: Node) -> set[str]:
        """Ids of nodes that ``node`` (including anything nested in it) reads from."""
        if isinstance(node, OpNode):
            srcs = list(node.inputs.values())
            nested: list[Node] = []
        elif isinstance(node, LoopNode):
            srcs = [node.count, *node.carry.values(), *node.next.values(), *([node.strength] if node.strength else [])]
            nested = node.body
        else:
            srcs = [*node.then.outputs.values(), *node.otherwise.outputs.values()]
            nested = node.then.nodes + node.otherwise.nodes
        out = {s.node for s in srcs if isinstance(s, NodeRef)}
        for n in nested:
            out |= self.deps(n)
        return out

    def check_cycles(self, nodes: list[Node]) -> None:
        ids = {n.id for n in nodes}
        graph = {}
        for n in nodes:
            edges = set()
            for d in self.deps(n):
                sib = self._sibling(d, ids)
                if sib is not None and (sib != n.id or d == n.id):  # reads from inside itself are no cycle
                    edges.add(sib)
            graph[n.id] = sorted(edges)
            if isinstance(n, LoopNode):
                self.check_cycles(n.body)
            elif isinstance(n, CondNode):
                self.check_cycles(n.then.nodes)
                self.check_cycles(n.otherwise.nodes)
        cycle = find_cycle(graph)
        if cycle:
            self.fail("cycle", self.where[cycle[0]].path, "cycle: " + " -> ".join(cycle))

    def _sibling(self, node_id: str, siblings: set[str]) -> str | None:
        """The sibling that is ``node_id`` or contains it, if any."""
        w = self.where.get(node_id)
        if w is None:
            return None
        if node_id in siblings:
            return node_id
        return next((s for s in w.scope if s in siblings), None)

    def run(self) -> list[SpecIssue]:
        for name, spec in self.spec.inputs.items():
            if spec.type not in REQUEST_TYPES:
                self.fail("bad_input_type", f"inputs.{name}.type", f"request inputs are {sorted(REQUEST_TYPES)}, got {spec.type!r}")
            elif not spec.required and spec.default is not None and not assignable(literal_type(spec.default), spec.type):
                self.fail("type_mismatch", f"inputs.{name}.default", f"default {spec.default!r} is not a {spec.type}")
            if spec.default_from is not None:
                self.check_default_from(name, spec)
        self.index(self.spec.nodes, "nodes", (), ())
        for w in list(self.where.values()):
            if isinstance(w.node, OpNode):
                self.check_op(w.node, w)
            elif isinstance(w.node, LoopNode):
                self.check_loop(w.node, w)
            else:
                self.check_cond(w.node, w)
        top = _Where(None, "outputs", (), ())  # type: ignore[arg-type]
        if not self.spec.outputs:
            self.fail("no_outputs", "outputs", "a workflow must declare at least one output")
        for name, src in self.spec.outputs.items():
            t = self.type_of(src, top, f"outputs.{name}")
            if t in SCALAR_TYPES:
                self.fail("type_mismatch", f"outputs.{name}", f"outputs carry data from nodes, got {t}")
        self.check_cycles(self.spec.nodes)
        return self.issues


ORDERINGS = frozenset({">", ">=", "<", "<="})


def _orderable(a: str | None, b: str | None) -> bool:
    """Whether Python orders values of these literal types: numbers among numbers, text among text."""
    numbers = {"int", "float"}
    return a is not None and b is not None and (a == b or {a, b} <= numbers)


def find_cycle(graph: dict[str, list[str]]) -> list[str] | None:
    """A cycle in ``graph`` (node -> dependencies) as a closed path, or None."""
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(n: str) -> list[str] | None:
        state[n] = 1
        stack.append(n)
        for d in graph.get(n, ()):
            if state.get(d) == 1:
                return stack[stack.index(d) :] + [d]
            if d not in state:
                found = visit(d)
                if found:
                    return found
        stack.pop()
        state[n] = 2
        return None

    for n in graph:
        if n not in state:
            found = visit(n)
            if found:
                return found
    return None


def validate(spec: WorkflowSpec, registry: OperatorRegistry) -> WorkflowSpec:
    """Return ``spec`` if it is valid, else raise :class:`WorkflowError` listing every issue."""
    issues = _Checker(spec, registry).run()
    if issues:
        raise WorkflowError(issues)
    return spec


__all__ = ["validate", "find_cycle", "DATA_TYPES"]
