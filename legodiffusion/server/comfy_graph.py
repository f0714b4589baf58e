"""ComfyUI API-format graphs as graphs: the node classes we map and their outputs, links checked
to name an existing node and one of its outputs, cycles refused naming the nodes on them, and the
error every refusal is (a 400 with ComfyUI's ``node_errors``)."""

from __future__ import annotations

from typing import Any

OUTPUTS = {
    "CheckpointLoaderSimple": ("MODEL", "CLIP", "VAE"),
    "CLIPTextEncode": ("CONDITIONING",),
    "EmptyLatentImage": ("LATENT",),
    "KSampler": ("LATENT",),
    "KSamplerAdvanced": ("LATENT",),
    "VAEDecode": ("IMAGE",),
    "SaveImage": (),
    "PreviewImage": (),
    "LoraLoader": ("MODEL", "CLIP"),
    "ControlNetLoader": ("CONTROL_NET",),
    "ControlNetApply": ("CONDITIONING",),
    "ControlNetApplyAdvanced": ("CONDITIONING", "CONDITIONING"),
    "LoadImage": ("IMAGE", "MASK"),
    "LoadImageMask": ("MASK",),
    "ImageScale": ("IMAGE",),
    "VAEEncode": ("LATENT",),
    "VAEEncodeForInpaint": ("LATENT",),
    "SetLatentNoiseMask": ("LATENT",),
    "LatentUpscale": ("LATENT",),
    "LatentUpscaleBy": ("LATENT",),
}
"""The supported node classes and their outputs, as ComfyUI numbers them."""
SUPPORTED = set(OUTPUTS)


class ComfyError(ValueError):
    """A prompt we refuse (400). ``nodes`` are the nodes at fault, by id, with their class types."""

    def __init__(
        self,
        node: str | None,
        class_type: str | None,
        message: str,
        code: str = "unsupported_workflow",
        path: str | None = None,
        nodes: dict[str, str | None] | None = None,
    ) -> None:
        super().__init__(message)
        self.node, self.class_type, self.message, self.code = node, class_type, message, code
        self.path = path or (f"prompt.{node}" if node is not None else "prompt")
        self.nodes = nodes if nodes is not None else ({} if node is None else {node: class_type})

    def node_errors(self) -> dict:
        kind = "unsupported" if self.code == "unsupported_workflow" else self.code
        return {nid: {"errors": [{"type": kind, "message": self.message}], "class_type": ct} for nid, ct in self.nodes.items()}


def linked(prompt: dict, link: Any, where: str) -> tuple[str, dict]:
    """The node a link ``[node_id, output_index]`` points at: (its id, the node)."""
    if not (isinstance(link, list) and len(link) == 2 and str(link[0]) in prompt):
        raise ComfyError(None, None, f"{where}: expected a link [node_id, output_index] to an existing node, got {link!r}")
    nid = str(link[0])
    return nid, prompt[nid]


def check_links(prompt: dict) -> dict[str, list[str]]:
    """Every node's inputs that are links (two-item lists, as ComfyUI reads them), checked to name
    an existing node and one of its outputs; returns the nodes each node reads from."""
    edges: dict[str, list[str]] = {}
    for nid, node in prompt.items():
        edges[nid] = []
        for name, value in node.get("inputs", {}).items():
            if not (isinstance(value, list) and len(value) == 2):
                continue
            target, index = value
            where = f"node {nid!r} input {name!r} links to"
            if isinstance(target, bool) or not isinstance(target, (str, int)) or str(target) not in prompt:
                raise ComfyError(
                    nid,
                    node["class_type"],
                    f"{where} node {target!r}, which is not in the prompt",
                    code="bad_link",
                    path=f"prompt.{nid}.inputs.{name}",
                )
            target = str(target)
            outputs = OUTPUTS[prompt[target]["class_type"]]
            if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < len(outputs):
                has = f"outputs 0-{len(outputs) - 1} ({', '.join(outputs)})" if outputs else "no outputs"
                raise ComfyError(
                    nid,
                    node["class_type"],
                    f"{where} output {index!r} of node {target!r} ({prompt[target]['class_type']}), which has {has}",
                    code="bad_link",
                    path=f"prompt.{nid}.inputs.{name}",
                )
            edges[nid].append(target)
    return edges


def check_acyclic(prompt: dict, edges: dict[str, list[str]]) -> None:
    """Refuse a graph with a cycle, naming the nodes on it (an iterative depth-first search, so a
    long chain costs no recursion)."""
    done: set[str] = set()
    for root in edges:
        if root in done:
            continue
        path, on_path = [root], {root: 0}
        stack = [iter(edges[root])]
        while stack:
            nxt = next(stack[-1], None)
            if nxt is None:
                done.add(path[-1])
                del on_path[path.pop()]
                stack.pop()
            elif nxt in on_path:
                cycle = path[on_path[nxt] :]
                shown = " -> ".join(repr(n) for n in [*cycle, nxt])
                raise ComfyError(
                    cycle[0],
                    prompt[cycle[0]]["class_type"],
                    f"the graph has a cycle: {shown} (each node reads the next one's output)",
                    code="cyclic_graph",
                    nodes={n: prompt[n]["class_type"] for n in cycle},
                )
            elif nxt not in done:
                on_path[nxt] = len(path)
                path.append(nxt)
                stack.append(iter(edges[nxt]))
