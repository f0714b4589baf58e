"""A model-free operator for measuring the coordinator and for tests of scheduling."""

from __future__ import annotations

from legodiffusion.ops.base import Item, Operator, Port, Signature


class Noop(Operator):
    name = "noop"
    doc = "Passes its optional input through (or emits its `value`); fails when `fail` is true."
    modes = {
        "default": Signature(
            inputs={"x": Port("any", optional=True), "value": Port("int", optional=True), "fail": Port("int", optional=True)},
            outputs={"y": "any"},
        )
    }

    def run(self, model, mode: str, items: list[Item]):
        out = []
        for it in items:
            if it.inputs.get("fail"):
                raise RuntimeError(f"{it.key}: failed on purpose")
            x = it.inputs.get("x")
            out.append({"y": x if x is not None else it.inputs.get("value", 0)})
        return out

    def example_items(self, cfg, mode, batch, size, device):
        return [Item({"value": i}) for i in range(batch)]
