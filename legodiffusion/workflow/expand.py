"""Per-request expansion: bind a request's inputs, unroll loops, resolve branches.

Expansion depends only on the *structural* inputs (loop counts, predicate inputs), so templates are
cached per (workflow, structural values) and a new request of a known shape costs a dict lookup.
The cache holds a budget of nodes across workflows, least recently used first out; the size of an
expansion is computed from the spec before it is built, so a loop count of 40000 is refused
without building 40000 iterations.
"""

from __future__ import annotations

import math
import threading
from collections import OrderedDict
from typing import Any

from legodiffusion.core.graph import CONSTANT, FROM_INPUT, FROM_NODE, Template, TInput, TNode
from legodiffusion.ops import sampling
from legodiffusion.ops.base import OperatorRegistry
from legodiffusion.workflow.errors import SpecIssue, WorkflowError
from legodiffusion.workflow.spec import (
    CarryRef,
    CondNode,
    InputRef,
    LoopNode,
    Node,
    NodeRef,
    OpNode,
    Source,
    WorkflowSpec,
)
from legodiffusion.workflow.validate import assignable, find_cycle, literal_type, validate

# What a source resolves to while unrolling: a template input without its port name.
_Val = tuple  # (FROM_NODE, idx, port) | (FROM_INPUT, name) | (CONSTANT, value)

#: Most nodes one expansion may have unless the caller bounds it tighter.
MAX_EXPANDED_NODES = 200_000
#: Nodes of expanded templates a :class:`TemplateCache` keeps by default. A node costs about
#: 0.5 KB with its inputs and graph indices, so this is some tens of megabytes.
CACHE_NODES = 100_000


def bind_inputs(spec: WorkflowSpec, given: dict[str, Any]) -> dict[str, Any]:
    """Request inputs with defaults applied and types checked; unknown names are errors."""
    issues = []
    out = {}
    for name in given:
        if name not in spec.inputs:
            issues.append(
                SpecIssue(
                    "unknown_request_input",
                    f"inputs.{name}",
                    f"workflow {spec.name!r} has no input {name!r}; inputs: {sorted(spec.inputs)}",
                )
            )
    for name, ispec in spec.inputs.items():
        if ispec.default_from is not None and given.get(name) is None:
            continue  # bound below, from the input it defaults to
        if name in given:
            value = given[name]
            if value is None and not ispec.required and ispec.default is None:
                out[name] = None
                continue
            if not assignable(literal_type(value), ispec.type):
                issues.append(SpecIssue("type_mismatch", f"inputs.{name}", f"expected {ispec.type}, got {value!r}"))
                continue
            if ispec.type == "float":
                value = _finite_float(value)
                if value is None:
                    issues.append(SpecIssue("type_mismatch", f"inputs.{name}", f"expected a finite float, got {given[name]!r}"))
                    continue
            out[name] = value
        elif ispec.required:
            issues.append(SpecIssue("missing_input", f"inputs.{name}", f"request input {name!r} ({ispec.type}) is required"))
        else:
            out[name] = ispec.default
    for name, ispec in spec.inputs.items():
        if ispec.default_from is not None and given.get(name) is None:
            out[name] = out.get(ispec.default_from)
    if issues:
        raise WorkflowError(issues)
    return out


def _finite_float(value: int | float) -> float | None:
    try:
        value = float(value)
    except OverflowError:  # an int beyond any float
        return None
    return value if math.isfinite(value) else None


def _structural_inputs(nodes: list[Node]) -> set[str]:
    names: set[str] = set()
    for n in nodes:
        if isinstance(n, LoopNode):
            names |= {s.name for s in (n.count, n.strength) if isinstance(s, InputRef)}
            names |= _structural_inputs(n.body)
        elif isinstance(n, CondNode):
            names.add(n.predicate.input)
            names |= _structural_inputs(n.then.nodes) | _structural_inputs(n.otherwise.nodes)
    return names


def _order(nodes: list[Node]) -> list[Node]:
    """Siblings in dependency order (specs may list them in any order)."""
    by_id = {n.id: n for n in nodes}
    contained: dict[str, str] = {}

    def walk(n: Node, top: str) -> None:
        contained[n.id] = top
        kids = n.body if isinstance(n, LoopNode) else (n.then.nodes + n.otherwise.nodes) if isinstance(n, CondNode) else []
        for k in kids:
            walk(k, top)

    for n in nodes:
        walk(n, n.id)

    def refs(n: Node) -> set[str]:
        if isinstance(n, OpNode):
            srcs, kids = list(n.inputs.values()), []
        elif isinstance(n, LoopNode):
            srcs, kids = [n.count, *n.carry.values(), *n.next.values(), *([n.strength] if n.strength else [])], n.body
        else:
            srcs, kids = [*n.then.outputs.values(), *n.otherwise.outputs.values()], n.then.nodes + n.otherwise.nodes
        out = {s.node for s in srcs if isinstance(s, NodeRef)}
        for k in kids:
            out |= refs(k)
        return out

    graph = {n.id: [contained.get(r) for r in refs(n) if contained.get(r) in by_id and contained.get(r) != n.id] for n in nodes}
    assert find_cycle(graph) is None, "validated specs have no cycles"
    seen: set[str] = set()
    ordered: list[Node] = []

    def visit(i: str) -> None:
        if i in seen:
            return
        seen.add(i)
        for d in sorted(graph[i]):
            visit(d)
        ordered.append(by_id[i])

    for n in nodes:
        visit(n.id)
    return ordered


def expanded_size(nodes: list[Node], inputs: dict[str, Any]) -> tuple[int, str | None]:
    """(nodes the expansion of ``nodes`` will have at most, the request input counting the
    largest loop or None), from the spec alone: a loop is its count times its body, a branch its
    larger side."""
    total, worst, worst_n = 0, None, -1
    for n in nodes:
        if isinstance(n, OpNode):
            total += 1
        elif isinstance(n, LoopNode):
            body, inner = expanded_size(n.body, inputs)
            count = inputs.get(n.count.name) if isinstance(n.count, InputRef) else n.count.value  # type: ignore[union-attr]
            size = max(int(count), 0) * body if isinstance(count, (int, float)) else 0
            total += size
            if size > worst_n:
                worst, worst_n = f"inputs.{n.count.name}" if isinstance(n.count, InputRef) else inner, size
        else:
            then, a = expanded_size(n.then.nodes, inputs)
            otherwise, b = expanded_size(n.otherwise.nodes, inputs)
            total += max(then, otherwise)
            if max(then, otherwise) > worst_n:
                worst, worst_n = (a if then >= otherwise else b), max(then, otherwise)
    return total, worst


class TemplateCache:
    """Expanded templates by (expander, structural values), within a budget of nodes; the least
    recently used go first. Thread-safe: requests are expanded off the event loop."""

    def __init__(self, max_nodes: int = CACHE_NODES) -> None:
        self.max_nodes = max_nodes
        self.nodes = 0  # held now
        self._entries: OrderedDict[tuple, Template] = OrderedDict()
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._entries)

    def get(self, key: tuple) -> Template | None:
        with self._lock:
            tmpl = self._entries.get(key)
            if tmpl is not None:
                self._entries.move_to_end(key)
            return tmpl

    def put(self, key: tuple, tmpl: Template) -> None:
        size = len(tmpl.nodes)
        if size > self.max_nodes:
            return  # larger than the whole budget: built for this request only
        with self._lock:
            old = self._entries.pop(key, None)
            self.nodes -= len(old.nodes) if old is not None else 0
            while self._entries and self.nodes + size > self.max_nodes:
                _, gone = self._entries.popitem(last=False)
                self.nodes -= len(gone.nodes)
            self._entries[key] = tmpl
            self.nodes += size


class Expander:
    """Validates a spec once, then turns request inputs into cached templates (in ``cache``,
    which several expanders may share; by default one of its own)."""

    def __init__(self, spec: WorkflowSpec, registry: OperatorRegistry, cache: TemplateCache | None = None) -> None:
        self.spec = validate(spec, registry)
        self.registry = registry
        self.structural = sorted(_structural_inputs(spec.nodes))
        self.cache = cache if cache is not None else TemplateCache()
        self._token = object()  # this expander's part of a shared cache's keys

    def template(self, inputs: dict[str, Any], max_nodes: int = MAX_EXPANDED_NODES) -> Template:
        """The template of bound ``inputs``; a :class:`WorkflowError` (``limit_exceeded``) before
        anything is built when it would have more than ``max_nodes`` nodes."""
        key = (self._token, *(inputs[n] for n in self.structural))
        tmpl = self.cache.get(key)
        if tmpl is None:
            size, path = expanded_size(self.spec.nodes, inputs)
            if size > max_nodes:
                raise WorkflowError(
                    [SpecIssue("limit_exceeded", path or "inputs", f"the request expands to {size} nodes, beyond max_nodes={max_nodes}")]
                )
            tmpl = _Unroller(self.spec, self.registry, inputs).run()
            self.cache.put(key, tmpl)
        if len(tmpl.nodes) > max_nodes:
            raise WorkflowError(
                [SpecIssue("limit_exceeded", "inputs", f"the request expands to {len(tmpl.nodes)} nodes, beyond max_nodes={max_nodes}")]
            )
        return tmpl


class _Unroller:
    def __init__(self, spec: WorkflowSpec, registry: OperatorRegistry, inputs: dict[str, Any]) -> None:
        self.spec = spec
        self.registry = registry
        self.inputs = inputs
        self.nodes: list[TNode] = []
        self.out_ports: list[tuple[str, ...]] = []
        self.skips: dict[int, list[tuple[int, ...]]] = {}  # see Template.skips

    def resolve(self, src: Source, env: dict[str, dict[str, _Val]], carry: dict[str, _Val]) -> _Val:
        if isinstance(src, NodeRef):
            return env[src.node][src.port]
        if isinstance(src, InputRef):
            return (FROM_INPUT, src.name)
        if isinstance(src, CarryRef):
            return carry[src.name]
        return (CONSTANT, src.value)

    def value(self, src: Source) -> Any:
        return self.inputs[src.name] if isinstance(src, InputRef) else src.value  # type: ignore[union-attr]

    def count(self, node: LoopNode) -> int:
        n = self.value(node.count)
        if n < 0:
            raise WorkflowError([SpecIssue("bad_value", "inputs", f"a loop count must be >= 0, got {n}")])
        if node.strength is None:
            return int(n)
        strength = self.value(node.strength)
        where = f"inputs.{node.strength.name}" if isinstance(node.strength, InputRef) else f"nodes.{node.id}.strength"
        try:
            kept = sampling.kept_steps(int(n), strength, node.strength_rounds)
        except (TypeError, ValueError) as exc:
            raise WorkflowError([SpecIssue("bad_value", where, str(exc))]) from None
        if kept < 1 <= n:
            raise WorkflowError(
                [SpecIssue("bad_value", where, f"strength {strength} of {int(n)} steps leaves no step to run; raise steps or strength")]
            )
        return kept

    def emit(self, nodes: list[Node], prefix: str, env: dict, carry: dict) -> None:
        for node in _order(nodes):
            key = prefix + node.id
            if isinstance(node, OpNode):
                op = self.registry.get(node.op)
                ins = []
                ports = op.modes[node.mode].inputs
                for port, src in node.inputs.items():
                    v = self.resolve(src, env, carry)
                    if v[0] == FROM_NODE:
                        ins.append(TInput(port, FROM_NODE, node=v[1], name=v[2], deferred=ports[port].deferred))
                    elif v[0] == FROM_INPUT:
                        ins.append(TInput(port, FROM_INPUT, name=v[1]))
                    else:
                        ins.append(TInput(port, CONSTANT, value=v[1]))
                idx = len(self.nodes)
                model = self.spec.models[node.model] if node.model is not None else None
                key_ports = tuple(p for p in node.inputs if ports[p].batch_key)
                tnode = TNode(key, node.op, node.mode, model, tuple(ins), op.light, op.concat_batch, op.component, key_ports, op.sized_by)
                self.nodes.append(tnode)
                outs = tuple(op.modes[node.mode].outputs)
                self.out_ports.append(outs)
                env[node.id] = {p: (FROM_NODE, idx, p) for p in outs}
            elif isinstance(node, LoopNode):
                state = {k: self.resolve(s, env, carry) for k, s in node.carry.items()}
                starts = {v[1] for v in state.values() if v[0] == FROM_NODE and self.registry.get(self.nodes[v[1]].op).advances_loop}
                iterations = []
                for i in range(self.count(node)):
                    inner_env = dict(env)
                    first = len(self.nodes)
                    self.emit(node.body, f"{key}[{i}].", inner_env, state)
                    iterations.append(tuple(range(first, len(self.nodes))))
                    state = {k: self.resolve(s, inner_env, state) for k, s in node.next.items()}
                for start in starts:
                    self.skips[start] = iterations
                env[node.id] = state
            else:
                try:
                    holds = node.predicate.holds(self.inputs)
                except TypeError:  # e.g. a null input in an ordering
                    p = node.predicate
                    got = self.inputs[p.input]
                    raise WorkflowError(
                        [SpecIssue("bad_value", f"inputs.{p.input}", f"{got!r} cannot be compared with {p.value!r} by {p.cmp!r}")]
                    ) from None
                branch = node.then if holds else node.otherwise
                inner_env = dict(env)
                self.emit(branch.nodes, f"{key}.", inner_env, carry)
                env[node.id] = {k: self.resolve(s, inner_env, carry) for k, s in branch.outputs.items()}

    def run(self) -> Template:
        env: dict[str, dict[str, _Val]] = {}
        self.emit(self.spec.nodes, "", env, {})
        outputs = {}
        for name, src in self.spec.outputs.items():
            v = self.resolve(src, env, {})
            if v[0] != FROM_NODE:
                raise WorkflowError([SpecIssue("bad_output", f"outputs.{name}", "resolves to a value, not a node output")])
            outputs[name] = (v[1], v[2])
        skips = {start: self._dependents(start, iterations) for start, iterations in self.skips.items()}
        return Template(self.nodes, outputs, skips=skips).finish(self.out_ports)

    def _dependents(self, start: int, iterations: list[tuple[int, ...]]) -> tuple[tuple[int, ...], ...]:
        """Each iteration's nodes that read (through any chain) what ``start`` made: only they can
        wait for it to say how many iterations are past the end of the schedule."""
        reached = {start}
        for i in range(start + 1, len(self.nodes)):  # producers come before their readers
            if any(inp.kind == FROM_NODE and inp.node in reached for inp in self.nodes[i].inputs):
                reached.add(i)
        return tuple(tuple(n for n in it if n in reached) for it in iterations)
