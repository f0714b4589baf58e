"""Operators: typed, batched model calls.

An operator declares, per mode, its input ports and output ports; it names the model component it
needs (loaded once per worker and shared by every request and workflow that uses it) and executes
a *batch* of items, each item being one node of one request.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar

# Port types. Scalars may be literals or request inputs; data types flow only between nodes.
SCALAR_TYPES = frozenset({"text", "int", "float"})
DATA_TYPES = frozenset({"embedding", "latent", "noise", "sampler", "image", "control", "residual", "rng", "any"})
#: types a request may carry as inputs (an image: PIL image, numpy array or tensor)
REQUEST_TYPES = SCALAR_TYPES | {"image"}
PORT_TYPES = SCALAR_TYPES | DATA_TYPES


@dataclass(frozen=True)
class Port:
    """One input port: its type, whether it may be left unwired, and whether it must come from
    the request (a literal would make every request identical, e.g. a seed)."""

    type: str
    optional: bool = False
    per_request: bool = False
    deferred: bool = False  # the node may start before this input exists and block where it reads it
    batch_key: bool = False  # only nodes with equal values here may share a batch (e.g. a LoRA patch set)
    doc: str = ""

    def __post_init__(self) -> None:
        if self.type not in PORT_TYPES:
            raise ValueError(f"unknown port type {self.type!r}; known: {sorted(PORT_TYPES)}")


#: LoRA patch set and its asynchronous-loading bound, on every patchable operator
PATCH_PORTS = {
    "loras": Port("text", optional=True, batch_key=True, doc="LoRA patch set: NAME[:WEIGHT],..."),
    "lora_k": Port("int", optional=True, doc="apply a LoRA still loading from step K at the latest (0: wait)"),
}


@dataclass(frozen=True)
class Signature:
    """The ports of one mode of an operator."""

    inputs: dict[str, Port]
    outputs: dict[str, str]


class Deferred:
    """A deferred input as an operator sees it: :meth:`get` blocks until the producer wrote it."""

    def __init__(self, fetch) -> None:
        self._fetch = fetch
        self._value = None
        self._done = False

    def get(self):
        if not self._done:
            self._value = self._fetch()
            self._done = True
        return self._value


def resolve(value):
    return value.get() if isinstance(value, Deferred) else value


@dataclass
class Item:
    """One node's inputs inside a batch; ``key`` identifies it for error messages."""

    inputs: dict[str, Any]
    key: str = ""


class Operator:
    """Base class. Subclasses set the class attributes and implement :meth:`run`."""

    name: ClassVar[str]
    modes: ClassVar[dict[str, Signature]]
    #: Model component this operator needs (see ``models.components``), or None.
    component: ClassVar[str | None] = None
    #: Light glue (sampler math): placed where its inputs already are.
    light: ClassVar[bool] = False
    #: Items are concatenated along the batch axis, so they must share tensor shapes.
    concat_batch: ClassVar[bool] = False
    doc: ClassVar[str] = ""

    def run(self, model: Any, mode: str, items: list[Item]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def example_items(self, cfg: Any, mode: str, batch: int, size: int, device: str) -> list[Item]:
        """Synthetic inputs for profiling: ``batch`` items at ``size`` x ``size`` pixels."""
        raise NotImplementedError(f"operator {self.name} cannot be profiled yet")

    @classmethod
    def describe(cls) -> dict:
        return {
            "name": cls.name,
            "doc": cls.doc,
            "component": cls.component,
            "light": cls.light,
            "modes": {
                m: {
                    "inputs": {p: {"type": s.type, "optional": s.optional} for p, s in sig.inputs.items()},
                    "outputs": dict(sig.outputs),
                }
                for m, sig in cls.modes.items()
            },
        }


@dataclass
class OperatorRegistry:
    """Name -> operator instance. Operators are stateless; one instance serves every worker."""

    ops: dict[str, Operator] = field(default_factory=dict)

    def add(self, op_cls: type[Operator]) -> type[Operator]:
        if op_cls.name in self.ops:
            raise ValueError(f"operator {op_cls.name!r} is already registered")
        self.ops[op_cls.name] = op_cls()
        return op_cls

    def get(self, name: str) -> Operator:
        try:
            return self.ops[name]
        except KeyError:
            raise KeyError(f"unknown operator {name!r}; known: {sorted(self.ops)}") from None

    def __contains__(self, name: str) -> bool:
        return name in self.ops

    def names(self) -> list[str]:
        return sorted(self.ops)
