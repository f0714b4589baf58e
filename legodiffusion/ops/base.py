"""Operators: typed, batched model calls.

An operator declares, per mode, its input ports and output ports; it names the model component it
needs (loaded once per worker and shared by every request and workflow that uses it) and executes
a *batch* of items, each item being one node of one request.

Values are checked before they are queued: a port declares its type and range (checked by
:meth:`Port.check` on the literals of a workflow when it is registered, and on a request's inputs
when it is submitted), and an operator checks what needs the model's facts or several ports at
once (:meth:`Operator.check`, called at submission and again by ``run``: one implementation).
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, ClassVar

from legodiffusion.core.images import is_image
from legodiffusion.core.patchset import parse_patches

# Port types. Scalars may be literals or request inputs; data types flow only between nodes.
SCALAR_TYPES = frozenset({"text", "int", "float", "bool"})
DATA_TYPES = frozenset({"embedding", "latent", "noise", "sampler", "cache", "image", "pixels", "mask", "control", "residual", "rng", "any"})
#: types a request may carry as inputs (an image: PIL image, numpy array or tensor)
REQUEST_TYPES = SCALAR_TYPES | {"image"}
PORT_TYPES = SCALAR_TYPES | DATA_TYPES

#: Key of an operator's per-item result under which it may report small facts about that item for
#: the run's record (they travel in control messages, so never tensors), e.g. a skipped step.
NOTES = "_notes"

#: Largest guidance scale accepted (classifier-free ``guidance_scale`` and Flux's distilled
#: ``guidance``), as ComfyUI's KSampler and FluxGuidance bound theirs; far beyond it the combined
#: prediction overflows and the image comes out black.
GUIDANCE_MAX = 100.0
#: Largest ControlNet conditioning scale, as ComfyUI's ControlNetApply bounds its strength.
CONTROL_SCALE_MAX = 10.0
#: Largest absolute LoRA weight, as ComfyUI's LoraLoader bounds its strengths.
LORA_WEIGHT_MAX = 100.0


class BadValue(ValueError):
    """A value a node would fail on, or compute garbage from; ``port`` names the input at fault
    and ``code`` is the issue's code (``type_mismatch`` or ``bad_value``)."""

    def __init__(self, port: str, message: str, code: str = "bad_value") -> None:
        super().__init__(message)
        self.port = port
        self.code = code


def _has_type(value, type_: str) -> bool:
    if type_ == "bool" or isinstance(value, bool):  # a bool is no number here, nor a number a bool
        return type_ == "bool" and isinstance(value, bool)
    if type_ == "int":
        return isinstance(value, int)
    if type_ == "float":
        return isinstance(value, (int, float))
    if type_ == "text":
        return isinstance(value, str)
    return is_image(value) if type_ == "image" else True  # produced data is not checked here


def check_patch_set(spec: str) -> None:
    """A LoRA patch set (``NAME[:WEIGHT],...``) that parses, with finite weights within
    +-LORA_WEIGHT_MAX (a nan weight turns every activation nan: a black image)."""
    for name, weight in parse_patches(spec):
        if not math.isfinite(weight) or abs(weight) > LORA_WEIGHT_MAX:
            raise ValueError(f"LoRA {name!r}: weight must be finite and within +-{LORA_WEIGHT_MAX:g}, got {weight}")


@dataclass(frozen=True)
class Port:
    """One input port: its type, whether it may be left unwired, and whether it must come from
    the request (a literal would make every request identical, e.g. a seed); for numbers the
    inclusive range a value must lie in, and for any value a check of its form."""

    type: str
    optional: bool = False
    per_request: bool = False
    deferred: bool = False  # the node may start before this input exists and block where it reads it
    batch_key: bool = False  # only nodes with equal values here may share a batch (e.g. a LoRA patch set)
    doc: str = ""
    ge: float | None = None  # smallest value accepted
    le: float | None = None  # largest value accepted
    form: Callable[[Any], None] | None = None  # raises ValueError saying what is wrong with a value

    def __post_init__(self) -> None:
        if self.type not in PORT_TYPES:
            raise ValueError(f"unknown port type {self.type!r}; known: {sorted(PORT_TYPES)}")

    def check(self, name: str, value: Any) -> None:
        """Raise :class:`BadValue` unless ``value`` (given to the port ``name``) has the port's
        type, is a finite number for a float port, and lies in its range and form. Null is a
        value only where the port is optional (the operator's default)."""
        if value is None:
            if not self.optional:
                raise BadValue(name, f"{name} is required, got null")
            return
        if not _has_type(value, self.type):
            raise BadValue(name, f"{name} takes {self.type}, got {value!r}", "type_mismatch")
        if self.type == "float":
            try:
                finite = math.isfinite(value)
            except OverflowError:  # an int beyond any float
                finite = False
            if not finite:
                raise BadValue(name, f"{name} must be a finite number, got {value!r}")
        if self.ge is not None and value < self.ge:
            raise BadValue(name, f"{name} must be >= {_number(self.ge)}, got {value!r}")
        if self.le is not None and value > self.le:
            raise BadValue(name, f"{name} must be <= {_number(self.le)}, got {value!r}")
        if self.form is not None:
            try:
                self.form(value)
            except ValueError as exc:
                raise BadValue(name, f"{name}: {exc}") from None


def _number(x: float) -> str:
    return str(x) if isinstance(x, int) else f"{x:g}"


#: a request's seed, as ``torch.Generator.manual_seed`` takes it. Negative seeds are refused:
#: torch maps one to 2**64 + seed, so the same image would answer to two seeds.
SEED_PORT = Port("int", per_request=True, ge=0, le=2**64 - 1, doc="0 <= seed < 2**64, seeds torch.Generator('cpu')")


def _positive(value) -> None:
    if value <= 0:
        raise ValueError(f"must be > 0 (an edit runs at least part of the schedule), got {value!r}")


#: An edit's strength: the fraction of the schedule it runs, in (0, 1].
STRENGTH_PORT = Port("float", le=1, form=_positive, doc="the fraction of the schedule an edit runs: 0 < strength <= 1")


#: LoRA patch set and its asynchronous-loading bound, on every patchable operator
PATCH_PORTS = {
    "loras": Port("text", optional=True, batch_key=True, doc="LoRA patch set: NAME[:WEIGHT],...", form=check_patch_set),
    "lora_k": Port("int", optional=True, doc="apply a LoRA still loading from step K at the latest (0: wait)", ge=0),
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
    """One node's inputs inside a batch; ``key`` identifies it for error messages, ``request``
    the request it belongs to (for provenance, e.g. of a cached state)."""

    inputs: dict[str, Any]
    key: str = ""
    request: int = 0


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
    #: With ``height``/``width`` ports: the image input whose size the node works at where they
    #: are null (an edit's input image), for cost and bounds before it runs.
    sized_by: ClassVar[str | None] = None
    #: A store of the data plane the operator reads and writes (``"approx_cache"``): ``run`` gets
    #: it, seen from the node's model, as its ``model`` (the operator loads no component).
    service: ClassVar[str | None] = None
    #: Its ``sampler`` output may stand later in the schedule than its input (an approximate-cache
    #: hit): a loop it starts is expanded in full, and the coordinator, told how many steps were
    #: skipped, passes the last iterations through (:mod:`legodiffusion.core.approx`).
    advances_loop: ClassVar[bool] = False
    doc: ClassVar[str] = ""

    def run(self, model: Any, mode: str, items: list[Item]) -> list[dict[str, Any]]:
        raise NotImplementedError

    def check(self, mode: str, values: dict[str, Any], cfg: Any) -> None:
        """Raise :class:`BadValue` for values a node of ``mode`` would fail on or compute garbage
        from, beyond what each port checks alone: what needs the model's facts or several ports.

        Called at submission for every node, with the values known then (request inputs and
        literals, each already of its port's type and range; a port fed by another node is
        absent, an unset optional one may be None) and ``cfg``, the node's model's
        :class:`~legodiffusion.models.components.PipelineConfig` (None where the node has no
        pipeline model). ``run`` calls it too, so each check has one implementation."""

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
                    "inputs": {p: _describe_port(s) for p, s in sig.inputs.items()},
                    "outputs": dict(sig.outputs),
                }
                for m, sig in cls.modes.items()
            },
        }


def _describe_port(port: Port) -> dict:
    out: dict[str, Any] = {"type": port.type, "optional": port.optional}
    out.update({k: v for k, v in (("ge", port.ge), ("le", port.le)) if v is not None})
    return out


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
