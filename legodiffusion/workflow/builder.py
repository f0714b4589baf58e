"""A traced Python builder: call operators on handles, get a data-only :class:`WorkflowSpec`.

wf = WorkflowBuilder("txt2img", models={"base": "sd15"})
prompt = wf.input("prompt", "text")
emb = wf.call("encode_prompt", model="base", text=prompt)
...
wf.output("image", img.image)
spec = wf.build()
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import Any

from legodiffusion.workflow.spec import (
    REQUIRED,
    Branch,
    CarryRef,
    CondNode,
    InputRef,
    InputSpec,
    Literal,
    LoopNode,
    Node,
    NodeRef,
    OpNode,
    Predicate,
    Source,
    WorkflowSpec,
)


class Ref:
    """A value in the workflow being traced."""

    def __init__(self, source: Source) -> None:
        self.source = source


class InputHandle(Ref):
    """A request input; comparing it with a constant gives a predicate for :meth:`cond`."""

    def _pred(self, cmp: str, value: Any) -> Predicate:
        return Predicate(self.source.name, cmp, value)  # type: ignore[union-attr]

    def __gt__(self, v):
        return self._pred(">", v)

    def __ge__(self, v):
        return self._pred(">=", v)

    def __lt__(self, v):
        return self._pred("<", v)

    def __le__(self, v):
        return self._pred("<=", v)

    def eq(self, v) -> Predicate:
        return self._pred("==", v)

    def ne(self, v) -> Predicate:
        return self._pred("!=", v)


class NodeHandle:
    """The outputs of a node: ``handle.port`` or ``handle["port"]``."""

    def __init__(self, node_id: str) -> None:
        self._id = node_id

    def __getattr__(self, port: str) -> Ref:
        if port.startswith("_"):
            raise AttributeError(port)
        return Ref(NodeRef(self._id, port))

    __getitem__ = __getattr__


class Carry:
    """Loop-carried values inside a loop body: ``carry.name``."""

    def __getattr__(self, name: str) -> Ref:
        if name.startswith("_"):
            raise AttributeError(name)
        return Ref(CarryRef(name))


def _source(value: Any) -> Source:
    return value.source if isinstance(value, Ref) else Literal(value)


class WorkflowBuilder:
    def __init__(self, name: str, models: dict[str, str] | None = None) -> None:
        self.name = name
        self.models = dict(models or {})
        self.inputs: dict[str, InputSpec] = {}
        self.outputs: dict[str, Source] = {}
        self._scopes: list[list[Node]] = [[]]
        self._ids: Counter[str] = Counter()

    def _new_id(self, base: str, given: str | None) -> str:
        if given is not None:
            return given
        self._ids[base] += 1
        return f"{base}_{self._ids[base]}" if self._ids[base] > 1 else base

    def _add(self, node: Node) -> None:
        self._scopes[-1].append(node)

    def _nested(self, fn: Callable, *args) -> tuple[list[Node], Any]:
        self._scopes.append([])
        try:
            result = fn(*args)
        finally:
            nodes = self._scopes.pop()
        return nodes, result

    def input(self, name: str, type: str, default: Any = REQUIRED, doc: str = "", default_from: InputHandle | None = None) -> InputHandle:
        """A request input; with ``default_from`` (another input), left out or null it takes that one's value."""
        source = None if default_from is None else default_from.source.name  # type: ignore[union-attr]
        self.inputs[name] = InputSpec(type, None if source is not None else default, doc, source)
        return InputHandle(InputRef(name))

    def call(self, op: str, *, model: str | None = None, mode: str = "default", id: str | None = None, **inputs) -> NodeHandle:
        node_id = self._new_id(op, id)
        self._add(OpNode(node_id, op, {k: _source(v) for k, v in inputs.items()}, mode, model))
        return NodeHandle(node_id)

    def loop(
        self,
        count: Any,
        carry: dict[str, Any],
        body: Callable[[Carry], dict[str, Any]],
        id: str | None = None,
        strength: Any = None,
        strength_rounds: str = "kept",
    ) -> NodeHandle:
        """Run ``body`` ``count`` times (with a ``strength``: the last part of a ``count``-step
        schedule, see :mod:`legodiffusion.workflow.spec`); it gets the carried values and returns
        their next values."""
        node_id = self._new_id("loop", id)
        nodes, nxt = self._nested(body, Carry())
        carried, following = {k: _source(v) for k, v in carry.items()}, {k: _source(v) for k, v in nxt.items()}
        fraction = None if strength is None else _source(strength)
        self._add(LoopNode(node_id, _source(count), carried, nodes, following, fraction, strength_rounds))
        return NodeHandle(node_id)

    def denoise_loop(
        self,
        steps: Any,
        latents: Any,
        sampler: Any,
        step: Callable[..., tuple],
        id: str | None = None,
        strength: Any = None,
        strength_rounds: str = "kept",
        extra: dict[str, Any] | None = None,
    ) -> NodeHandle:
        """A sampling loop over (latents, sampler state); ``step`` maps them to their next values.
        With a ``strength`` it runs the steps an edit of that strength keeps. ``extra``: further
        carried values (each guidance branch's step cache), handed to ``step`` as a third
        argument, a dict of their current values, whose next values ``step`` returns third."""

        def body(c: Carry) -> dict[str, Any]:
            if extra is None:
                lat, smp = step(c.latents, c.sampler)
                return {"latents": lat, "sampler": smp}
            lat, smp, more = step(c.latents, c.sampler, {k: getattr(c, k) for k in extra})
            return {"latents": lat, "sampler": smp, **more}

        carry = {"latents": latents, "sampler": sampler, **(extra or {})}
        return self.loop(steps, carry, body, id=id or self._new_id("denoise", None), strength=strength, strength_rounds=strength_rounds)

    def cond(
        self, predicate: Predicate, then: Callable[[], dict[str, Any]], otherwise: Callable[[], dict[str, Any]], id: str | None = None
    ) -> NodeHandle:
        """Choose a branch per request from its inputs; both branches return the same names."""
        node_id = self._new_id("cond", id)
        then_nodes, then_out = self._nested(then)
        else_nodes, else_out = self._nested(otherwise)
        self._add(
            CondNode(
                node_id,
                predicate,
                Branch(then_nodes, {k: _source(v) for k, v in then_out.items()}),
                Branch(else_nodes, {k: _source(v) for k, v in else_out.items()}),
            )
        )
        return NodeHandle(node_id)

    def output(self, name: str, value: Ref) -> None:
        self.outputs[name] = value.source

    def build(self) -> WorkflowSpec:
        return WorkflowSpec(self.name, dict(self.inputs), dict(self.models), list(self._scopes[0]), dict(self.outputs))
