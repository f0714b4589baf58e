"""The paper-patterned workload: 12 workflows over SD3 / SD3.5 / Flux with 4-50 steps, with and
without guidance, 0-2 ControlNets and 0-1 LoRAs, and skewed popularity (a few base models in almost
every workflow; the canny ControlNets serve most ControlNet requests)."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legodiffusion.core.coordinator import Request
from legodiffusion.core.cost import CostModel
from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import flux_txt2img, sd3_txt2img
from legodiffusion.workflow.expand import Expander, bind_inputs
from legodiffusion.workflow.spec import WorkflowSpec

_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)  # control images: the simulator never looks at them


@dataclass
class WorkflowDef:
    name: str
    spec: WorkflowSpec
    inputs: dict[str, Any]
    popularity: float


def _flux(name, model, steps, pop, cns=(), lora=None, schnell=False) -> WorkflowDef:
    inputs: dict[str, Any] = {"steps": steps}
    for i in range(len(cns)):
        inputs["control_image" + (f"_{i}" if i else "")] = _IMAGE
    if lora:
        inputs["loras"] = lora
    return WorkflowDef(name, flux_txt2img(model, name=name, schnell=schnell, controlnets=tuple(cns)), inputs, pop)


def _sd3(name, model, steps, guidance, pop, cns=(), lora=None) -> WorkflowDef:
    inputs: dict[str, Any] = {"steps": steps, "guidance_scale": guidance}
    for i in range(len(cns)):
        inputs["control_image" + (f"_{i}" if i else "")] = _IMAGE
    if lora:
        inputs["loras"] = lora
    return WorkflowDef(name, sd3_txt2img(model, name=name, controlnets=tuple(cns)), inputs, pop)


def paper_workflows() -> list[WorkflowDef]:
    return [
        _flux("flux-dev", "flux-dev", 28, 20),
        _flux("flux-dev-canny", "flux-dev", 28, 14, cns=("cn-flux-canny",)),
        _flux("flux-dev-depth-lora", "flux-dev", 28, 6, cns=("cn-flux-depth",), lora="lora-flux-style"),
        _flux("flux-dev-50", "flux-dev", 50, 4),
        _flux("flux-schnell", "flux-schnell", 4, 12, schnell=True),
        _flux("flux-schnell-canny", "flux-schnell", 4, 6, cns=("cn-flux-canny",), schnell=True),
        _sd3("sd35l", "sd3.5-large", 28, 4.5, 10),
        _sd3("sd35l-canny", "sd3.5-large", 28, 4.5, 8, cns=("cn-sd35-canny",)),
        _sd3("sd35l-canny-depth", "sd3.5-large", 28, 4.5, 3, cns=("cn-sd35-canny", "cn-sd35-depth")),
        _sd3("sd35l-lora", "sd3.5-large", 28, 4.5, 4, lora="lora-sd35-style"),
        _sd3("sd35t", "sd3.5-large-turbo", 4, 0.0, 8),
        _sd3("sd3m-canny", "sd3-medium", 28, 7.0, 5, cns=("cn-sd3m-canny",)),
    ]


@dataclass
class Workload:
    """Workflows, their popularity mix and their solo latencies under a cost model."""

    workflows: list[WorkflowDef]
    cost: CostModel
    size: int = 1024
    slo_scale: float = 2.0
    _expanders: dict[str, Expander] = field(default_factory=dict)
    solo_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        registry = default_registry()
        for wf in self.workflows:
            ex = Expander(wf.spec, registry)
            self._expanders[wf.name] = ex
            bound = self.bind(wf.name, {})
            tmpl = ex.template(bound)
            px = self.size * self.size
            self.solo_s[wf.name] = sum(self.cost.exec_s(n.op, n.mode, n.model, 1, px) for n in tmpl.nodes)

    @property
    def names(self) -> list[str]:
        return [wf.name for wf in self.workflows]

    @property
    def mix(self) -> dict[str, float]:
        total = sum(wf.popularity for wf in self.workflows)
        return {wf.name: wf.popularity / total for wf in self.workflows}

    def models(self) -> list[str]:
        return sorted({m for wf in self.workflows for m in wf.spec.models.values()})

    def bind(self, workflow: str, extra: dict[str, Any]) -> dict[str, Any]:
        wf = next(w for w in self.workflows if w.name == workflow)
        given = {"prompt": "a photo", "height": self.size, "width": self.size, **wf.inputs, **extra}
        return bind_inputs(wf.spec, given)

    def request(self, rid: int, workflow: str, arrival_s: float, extra: dict[str, Any] | None = None) -> Request:
        if workflow not in self._expanders:
            raise KeyError(f"unknown workflow {workflow!r} in trace; catalogue: {self.names}")
        bound = self.bind(workflow, extra or {})
        tmpl = self._expanders[workflow].template(bound)
        deadline = arrival_s + self.slo_scale * self.solo_s[workflow]
        return Request(rid, tmpl, bound, workflow, arrival_s, deadline)

    def pipeline_bytes(self) -> dict[str, int]:
        """Weight memory of each workflow's whole pipeline (what a monolithic replica holds)."""
        out = {}
        for wf in self.workflows:
            tmpl = self._expanders[wf.name].template(self.bind(wf.name, {}))
            comps = {(n.model, n.component) for n in tmpl.nodes if n.component}
            out[wf.name] = sum(self.cost.weight_bytes(m, c) for m, c in comps)
        return out

    def demand(self) -> dict[str, float]:
        """Expected share of the work per workflow: popularity x solo latency."""
        return {name: share * self.solo_s[name] for name, share in self.mix.items()}
