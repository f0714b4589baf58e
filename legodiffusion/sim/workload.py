"""Simulated workloads.

``paper_workflows``: the paper-patterned workload, 12 workflows over SD3 / SD3.5 / Flux with 4-50
steps, with and without guidance, 0-2 ControlNets and 0-1 LoRAs, and skewed popularity (a few base
models in almost every workflow; the canny ControlNets serve most ControlNet requests).

``many_workflows``: ~40 seeded workflows over only 7 base models (FLUX.1, SD3.x, and FLUX.2-klein,
Z-Image-Turbo and Qwen-Image: :mod:`legodiffusion.sim.families`), where one pipeline copy per
workflow no longer fits while shared base models do.

``editing_workflows``: the paper workload with image editing beside text-to-image: image-to-image at
strength 0.6, inpainting (strength 1, SD3.5-large; 0.85, FLUX.1-dev) and two-stage hires (FLUX.1-dev
and SD3.5-large, 512² then 1024² at strength 0.5), a quarter of the requests.

``make_workload`` names them for benchmarks (``make_trace`` in :mod:`legodiffusion.sim.traces`
names the traces)."""

from __future__ import annotations

import random
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from legodiffusion.core.coordinator import Request, pixels
from legodiffusion.core.cost import CostModel
from legodiffusion.core.fairness import DEFAULT_PRIORITY, DEFAULT_TENANT
from legodiffusion.ops import default_registry
from legodiffusion.sim import families
from legodiffusion.sim.approx import CacheModel
from legodiffusion.sim.step_skip import REQUEST_INPUT as STEP_CACHE_INPUT
from legodiffusion.sim.step_skip import StepCacheModel
from legodiffusion.workflow.catalog import flux_img2img, flux_inpaint, flux_txt2img, sd3_img2img, sd3_inpaint, sd3_txt2img
from legodiffusion.workflow.expand import Expander, bind_inputs
from legodiffusion.workflow.hires import flux_hires, sd3_hires
from legodiffusion.workflow.spec import WorkflowSpec

_IMAGE = np.zeros((1, 1, 3), dtype=np.uint8)  # control and input images: the simulator never looks at them
_MASK = np.zeros((1, 1), dtype=np.uint8)


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


#: (name, kind, base model, steps, guidance or None for Flux, strength, popularity) of the
#: editing workload's edits
_EDITS = (
    ("flux-dev-img2img", "img2img", "flux-dev", 28, None, 0.6, 25),
    ("flux-schnell-img2img", "img2img", "flux-schnell", 4, None, 0.6, 15),
    ("sd35l-img2img", "img2img", "sd3.5-large", 28, 4.5, 0.6, 20),
    ("flux-dev-inpaint", "inpaint", "flux-dev", 28, None, 0.85, 15),
    ("sd35l-inpaint", "inpaint", "sd3.5-large", 28, 4.5, 1.0, 10),
    ("flux-dev-hires", "hires", "flux-dev", 28, None, 0.5, 10),
    ("sd35l-hires", "hires", "sd3.5-large", 28, 4.5, 0.5, 5),
)
_EDIT_BUILDERS = {
    ("img2img", "flux"): flux_img2img,
    ("img2img", "sd3"): sd3_img2img,
    ("inpaint", "flux"): flux_inpaint,
    ("inpaint", "sd3"): sd3_inpaint,
    ("hires", "flux"): flux_hires,
    ("hires", "sd3"): sd3_hires,
}


def editing_workflows() -> list[WorkflowDef]:
    """The paper workflows (popularities summing to 100, here x3) plus image-to-image, inpainting
    and hires (popularities summing to 100): a quarter of the requests are edits."""
    out = [WorkflowDef(w.name, w.spec, w.inputs, w.popularity * 3) for w in paper_workflows()]
    for name, kind, model, steps, guidance, strength, pop in _EDITS:
        inputs: dict[str, Any] = {"steps": steps, "strength": strength}
        if kind == "hires":  # 512² drawn, then refined at 1024²
            inputs.update(height=512, width=512, scale=2.0)
        else:
            inputs["image"] = _IMAGE
        if kind == "inpaint":
            inputs["mask"] = _MASK
        family = "flux" if guidance is None else "sd3"
        kwargs = {"schnell": True} if model == "flux-schnell" else {}
        if guidance is not None:
            inputs["guidance_scale"] = guidance
        out.append(WorkflowDef(name, _EDIT_BUILDERS[(kind, family)](model, name=name, **kwargs), inputs, pop))
    return out


#: base model -> (family, short name, step counts, guidance scales, ControlNets the reference profile has for it);
#: family "qwen" is a model of :mod:`legodiffusion.sim.families` (no ControlNets profiled; steps: Z-Image-Turbo's
#: card runs 9, counting 8 DiT forwards; Qwen-Image's card runs 50, and fewer are the usual trade for speed)
_MANY_BASES = {
    "flux-dev": ("flux", "fdev", (20, 25, 28, 30, 40, 50), (), ("cn-flux-canny", "cn-flux-depth")),
    "flux-schnell": ("schnell", "fsch", (4,), (), ("cn-flux-canny", "cn-flux-depth")),
    "sd3.5-large": ("sd3", "sd35l", (20, 28, 30, 40), (3.5, 4.5, 5.0, 7.0), ("cn-sd35-canny", "cn-sd35-depth")),
    "sd3-medium": ("sd3", "sd3m", (20, 28, 30, 40), (5.0, 7.0), ("cn-sd3m-canny",)),
    "flux2-klein-4b": ("qwen", "klein4b", (4,), (), ()),
    "z-image-turbo": ("qwen", "zit", (8, 9), (), ()),
    "qwen-image": ("qwen", "qwenimg", (30, 40, 50), (4.0,), ()),
}
_MANY_BASE_WEIGHTS = (0.25, 0.15, 0.2, 0.1, 0.1, 0.1, 0.1)
_MANY_SIZES, _MANY_SIZE_WEIGHTS = (512, 768, 1024), (0.2, 0.3, 0.5)
_MANY_CONTROLNETS, _MANY_CONTROLNET_WEIGHTS = (0, 1, 2), (0.5, 0.35, 0.15)
_MANY_LORA_P, _MANY_LORAS_PER_BASE = 0.4, 4
#: Zipf exponent of the popularity: with 40 workflows the top 4 carry about half the requests
_MANY_ZIPF = 1.1


def many_workflows(seed: int = 0, n: int = 40) -> list[WorkflowDef]:
    """``n`` seeded workflows over only 7 base models (FLUX.1-dev, FLUX.1-schnell, SD3.5-large,
    SD3-medium, FLUX.2-klein 4B, Z-Image-Turbo, Qwen-Image), with Zipf popularity.

    What it models: a serving deployment whose users bring many variants of a few base models:
    0-1 LoRAs (``lora-<base>-<k>``, ``k < 4``; the simulator only charges their load time, so the
    names need not exist), 0-2 ControlNets from those the reference profile has for the base
    (SD3-medium has one; the Qwen-read families none), the base's usual step counts (FLUX.1-dev
    20-50, schnell and klein 4, SD3.x 20-40, Z-Image-Turbo 8-9, Qwen-Image 30-50 with true CFG)
    and 512, 768 or 1024 px square images (bound as the workflow's ``height``/``width``).
    Popularity is Zipf (exponent 1.1) over a seeded ranking, so a few workflows carry most
    requests and a long tail is rarely asked for.

    Why: with many workflows over few base models, monolithic replicas (one pipeline copy per
    workflow, 15-58 GB each) run out of GPU memory and cannot cover every workflow, while
    shared base models (7 denoisers, their encoders and 5 ControlNets) fit on a few GPUs.

    The first seven workflows use the seven base models in turn, so any ``n >= 7`` covers them
    all; the rest draw a base (FLUX.1-dev 25%, schnell 15%, SD3.5-large 20%, SD3-medium,
    FLUX.2-klein 4B, Z-Image-Turbo and Qwen-Image 10% each). Names are unique (they start with
    the workflow's index) and depend only on ``seed`` and ``n``.
    """
    rng = random.Random(seed)
    bases = list(_MANY_BASES)
    ranks = list(range(n))
    rng.shuffle(ranks)
    out = []
    for i in range(n):
        base = bases[i] if i < len(bases) else rng.choices(bases, weights=_MANY_BASE_WEIGHTS)[0]
        family, short, step_choices, guidance_choices, cn_choices = _MANY_BASES[base]
        steps = rng.choice(step_choices)
        size = rng.choices(_MANY_SIZES, weights=_MANY_SIZE_WEIGHTS)[0]
        k = min(rng.choices(_MANY_CONTROLNETS, weights=_MANY_CONTROLNET_WEIGHTS)[0], len(cn_choices))
        cns = tuple(sorted(rng.sample(cn_choices, k)))
        lora = f"lora-{base}-{rng.randrange(_MANY_LORAS_PER_BASE)}" if rng.random() < _MANY_LORA_P else None
        popularity = 100.0 / (ranks[i] + 1) ** _MANY_ZIPF
        name = f"w{i:02d}-{short}-{steps}s-{size}px"
        name += "".join("-" + cn.rsplit("-", 1)[1] for cn in cns)
        name += f"-lora{lora.rsplit('-', 1)[1]}" if lora else ""
        if family == "sd3":
            wf = _sd3(name, base, steps, rng.choice(guidance_choices), popularity, cns=cns, lora=lora)
        elif family == "qwen":
            spec, inputs = families.txt2img(base, name, steps, rng.choice(guidance_choices) if guidance_choices else None)
            wf = WorkflowDef(name, spec, {**inputs, **({"loras": lora} if lora else {})}, popularity)
        else:
            wf = _flux(name, base, steps, popularity, cns=cns, lora=lora, schnell=family == "schnell")
        wf.inputs.update(height=size, width=size)
        out.append(wf)
    return out


@dataclass
class Workload:
    """Workflows, their popularity mix and their solo latencies under a cost model.

    Each workflow runs at the height and width its ``inputs`` bind (``size`` x ``size`` where it
    binds none): its solo latency, SLO and pipeline are those of that resolution. With ``approx``,
    every request that can opts in to the approximate cache, whose lookups answer as that model
    draws (:mod:`legodiffusion.sim.approx`); SLOs stay those of the whole schedule. With
    ``step_cache``, every request whose workflow has a step cache and whose base model has calls to
    skip opts in, and the simulator draws which denoiser calls skip (:mod:`legodiffusion.sim.step_skip`)."""

    workflows: list[WorkflowDef]
    cost: CostModel
    size: int = 1024
    slo_scale: float = 2.0
    approx: CacheModel | None = None
    step_cache: StepCacheModel | None = None
    _expanders: dict[str, Expander] = field(default_factory=dict)
    solo_s: dict[str, float] = field(default_factory=dict)

    def __post_init__(self) -> None:
        registry = default_registry()
        for wf in self.workflows:
            ex = Expander(wf.spec, registry)
            self._expanders[wf.name] = ex
            bound = self.bind(wf.name, {})
            tmpl = ex.template(bound)
            px = pixels(bound, tmpl) or self.size * self.size  # the workflow's own height x width (a hires: its target)
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
        cached = {"approx_cache": True} if self.approx is not None and "approx_cache" in wf.spec.inputs else {}
        if self.step_cache is not None and "step_cache" in wf.spec.inputs and self.step_cache.caches(wf.spec.models.get("base")):
            cached["step_cache"] = STEP_CACHE_INPUT
        given = {"prompt": "a photo", "height": self.size, "width": self.size, **cached, **wf.inputs, **extra}
        return bind_inputs(wf.spec, given)

    def request(
        self,
        rid: int,
        workflow: str,
        arrival_s: float,
        extra: dict[str, Any] | None = None,
        tenant: str = DEFAULT_TENANT,
        priority: int = DEFAULT_PRIORITY,
        weight: float = 1.0,
        slo_scale: float | None = None,
    ) -> Request:
        """A request of ``workflow`` arriving at ``arrival_s``, its inputs overridden by
        ``extra``; its deadline is ``slo_scale`` (default the workload's) x the workflow's solo
        latency (None: no deadline). ``tenant``, ``priority`` (class rank) and ``weight``: whose
        it is (:mod:`legodiffusion.core.fairness`)."""
        if workflow not in self._expanders:
            raise KeyError(f"unknown workflow {workflow!r} in trace; catalogue: {self.names}")
        bound = self.bind(workflow, extra or {})
        tmpl = self._expanders[workflow].template(bound)
        deadline = arrival_s + (self.slo_scale if slo_scale is None else slo_scale) * self.solo_s[workflow]
        return Request(rid, tmpl, bound, workflow, arrival_s, deadline, tenant=tenant, priority=priority, weight=weight)

    def pipeline_bytes(self) -> dict[str, int]:
        """Weight memory of each workflow's whole pipeline (what a monolithic replica holds)."""
        out = {}
        for wf in self.workflows:
            tmpl = self._expanders[wf.name].template(self.bind(wf.name, {}))
            comps = {(n.model, n.component) for n in tmpl.nodes if n.component}
            out[wf.name] = sum(self.cost.weight_bytes(m, c) for m, c in comps)
        return out

    def demand(self, mix: dict[str, float] | None = None) -> dict[str, float]:
        """Expected share of the work per workflow: popularity (``mix``, else the workload's) x
        solo latency."""
        return {name: share * self.solo_s[name] for name, share in (mix or self.mix).items()}

    def template(self, workflow: str):
        """The node graph of ``workflow`` with its default inputs."""
        return self._expanders[workflow].template(self.bind(workflow, {}))

    def pixels(self, workflow: str) -> int:
        bound = self.bind(workflow, {})
        return pixels(bound, self._expanders[workflow].template(bound)) or self.size * self.size

    def solo_of(self, req: Request) -> float:
        """Profiled solo latency of one request (its own inputs may change steps or size), less
        the iterations its approximate-cache hit passes through."""
        px = pixels(req.inputs, req.template) or self.size * self.size
        k = self.approx.skipped(req.id, int(req.inputs.get("steps") or 0)) if self.approx is not None else 0
        passed = {n for iterations in req.template.skips.values() if k for it in iterations[len(iterations) - k :] for n in it}
        return sum(self.cost.exec_s(n.op, n.mode, n.model, 1, px) for i, n in enumerate(req.template.nodes) if i not in passed)


WORKLOADS = ("paper", "many", "drifting", "csv", "editing")


def make_workload(name: str, cost: CostModel, seed: int = 0, **kwargs: Any) -> Workload:
    """The workload a benchmark names: ``paper`` (:func:`paper_workflows`), ``many``
    (:func:`many_workflows` for ``seed``), ``editing`` (:func:`editing_workflows`); ``drifting`` and ``csv`` replay traces over the paper
    workflows, so they get those. ``kwargs`` go to :class:`Workload` (``slo_scale``, ``size``)."""
    if name in ("paper", "drifting", "csv"):
        return Workload(paper_workflows(), cost, **kwargs)
    if name == "many":
        return Workload(many_workflows(seed), cost, **kwargs)
    if name == "editing":
        return Workload(editing_workflows(), cost, **kwargs)
    raise ValueError(f"unknown workload {name!r}; choose one of {WORKLOADS}")
