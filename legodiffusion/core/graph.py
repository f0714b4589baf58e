"""Expanded, integer-indexed node graphs.

A :class:`Template` is one workflow unrolled for one *shape* of request (its loop counts and
branch choices). It is built once and shared by every request of that shape; a request only
copies the in-degree array, so instantiation is O(nodes).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from legodiffusion.core.images import image_size, is_image

# An input source inside a template: a node output, a request input, or a constant.
FROM_NODE, FROM_INPUT, CONSTANT = 0, 1, 2

#: The operator ports that set the image size a node works at (whatever request inputs feed them).
SIZE_PORTS = ("height", "width")
#: A node with the size ports and this one makes an image of height x width times it: a hires
#: workflow's upscale, whose second stage runs at that size.
SCALE_PORT = "scale"


@dataclass(frozen=True)
class TInput:
    port: str
    kind: int  # FROM_NODE / FROM_INPUT / CONSTANT
    node: int = -1  # producer index when FROM_NODE
    name: str = ""  # producer port (FROM_NODE) or request input name (FROM_INPUT)
    value: Any = None  # CONSTANT
    deferred: bool = False  # the node may start before this input exists (blocks where it reads it)


@dataclass(frozen=True)
class TNode:
    key: str  # readable path, e.g. "loop[3].unet_cond"
    op: str
    mode: str
    model: str | None
    inputs: tuple[TInput, ...]
    light: bool
    concat_batch: bool
    component: str | None
    key_ports: tuple[str, ...] = ()  # inputs whose values must match within a batch
    sized_by: str | None = None  # the image input whose size the node works at where no size is given


@dataclass
class Template:
    nodes: list[TNode]
    outputs: dict[str, tuple[int, str]]
    indegree: list[int] = field(default_factory=list)
    consumers: list[tuple[int, ...]] = field(default_factory=list)
    #: uses of each (node, port): consumer edges + workflow outputs reading it
    uses: dict[tuple[int, str], int] = field(default_factory=dict)
    #: output ports of each node, in the operator's order
    out_ports: list[tuple[str, ...]] = field(default_factory=list)
    sources: tuple[int, ...] = ()
    #: distinct producers a node reads as deferred inputs: it waits for their dispatch only
    deferred_deps: list[int] = field(default_factory=list)
    deferred_consumers: list[tuple[int, ...]] = field(default_factory=list)
    #: (node, height input, width input, image input or None, scale input or None) of every node
    #: with the :data:`SIZE_PORTS` (the image: where it works at that image's size when none is
    #: given; the scale: a node making an image that many times that size, see :data:`SCALE_PORT`)
    sizes: tuple[tuple[int, TInput, TInput, TInput | None, TInput | None], ...] = ()
    #: node that may advance a loop's schedule (``Operator.advances_loop``) -> the nodes of each
    #: iteration of the loop it starts that depend on it: when it reports ``k`` steps skipped, the
    #: last ``k`` iterations pass through (:mod:`legodiffusion.core.approx`)
    skips: dict[int, tuple[tuple[int, ...], ...]] = field(default_factory=dict)
    #: the (producer, port) each node reads, one per input edge (repeats kept), deferred included
    reads: list[tuple[tuple[int, str], ...]] = field(default_factory=list)
    #: the (producer, port) that must be present before each node may run (not deferred)
    needs: list[tuple[tuple[int, str], ...]] = field(default_factory=list)

    def uses_after(self, finished: set[int]) -> dict[tuple[int, str], int]:
        """Reads still to come of each (node, port) once the ``finished`` nodes have run: its
        edges into the other nodes (deferred ones included) plus the workflow outputs reading it."""
        uses = {(i, p): 0 for i in range(len(self.nodes)) for p in self.out_ports[i]}
        for c, reads in enumerate(self.reads):
            if c not in finished:
                for k in reads:
                    uses[k] += 1
        for k in self.outputs.values():
            uses[k] += 1
        return uses

    def finish(self, out_ports: list[tuple[str, ...]]) -> Template:
        n = len(self.nodes)
        self.out_ports = out_ports
        producers: list[set[int]] = [set() for _ in range(n)]
        consumers: list[set[int]] = [set() for _ in range(n)]
        dproducers: list[set[int]] = [set() for _ in range(n)]
        dconsumers: list[set[int]] = [set() for _ in range(n)]
        self.reads, self.needs = [], []
        for i, node in enumerate(self.nodes):
            reads, needs = [], []
            for inp in node.inputs:
                if inp.kind == FROM_NODE:
                    reads.append((inp.node, inp.name))
                    if inp.deferred:
                        dproducers[i].add(inp.node)
                        dconsumers[inp.node].add(i)
                    else:
                        needs.append((inp.node, inp.name))
                        producers[i].add(inp.node)
                        consumers[inp.node].add(i)
            self.reads.append(tuple(reads))
            self.needs.append(tuple(needs))
        self.indegree = [len(p) for p in producers]
        self.consumers = [tuple(sorted(c)) for c in consumers]
        self.uses = self.uses_after(set())
        self.deferred_deps = [len(p) for p in dproducers]
        self.deferred_consumers = [tuple(sorted(c)) for c in dconsumers]
        self.sources = tuple(i for i in range(n) if self.indegree[i] == 0 and self.deferred_deps[i] == 0)
        sizes = []
        for i, node in enumerate(self.nodes):
            by_port = {inp.port: inp for inp in node.inputs}
            if all(p in by_port for p in SIZE_PORTS):
                h, w = by_port[SIZE_PORTS[0]], by_port[SIZE_PORTS[1]]
                sizes.append((i, h, w, by_port.get(node.sized_by or ""), by_port.get(SCALE_PORT)))
        self.sizes = tuple(sizes)
        return self


def known_size(entry: tuple, inputs: dict[str, Any], native: int | None = None) -> tuple[Any, Any]:
    """(height, width) a node of :attr:`Template.sizes` works at, as far as known on arrival: its
    size inputs, and where one is null the size of the image it is sized by (an edit works at its
    image's size, as the diffusers pipelines preprocess it); None where the model's native size.
    A node with a scale makes that many times its size (a hires stage's upscale): the scaled size,
    of the ``native`` side where the size is null and ``native`` is given."""
    _, h_in, w_in, image_in, scale_in = entry
    h, w = known_value(h_in, inputs), known_value(w_in, inputs)
    if (h is None or w is None) and image_in is not None:
        image = known_value(image_in, inputs)
        if is_image(image):
            iw, ih = image_size(image)
            h, w = ih if h is None else h, iw if w is None else w
    scale = None if scale_in is None else known_value(scale_in, inputs)
    if isinstance(scale, bool) or not isinstance(scale, (int, float)) or scale == 1:
        return h, w
    h, w = native if h is None else h, native if w is None else w
    if not (isinstance(h, int) and isinstance(w, int)):
        return h, w
    return int(h * scale), int(w * scale)


def known_value(inp: TInput, inputs: dict[str, Any]) -> Any:
    """The value ``inp`` has before anything runs: a request input's or a constant's (None for a
    node output)."""
    if inp.kind == FROM_INPUT:
        return inputs.get(inp.name)
    return inp.value if inp.kind == CONSTANT else None
