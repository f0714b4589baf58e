"""Sampler state that travels as data.

A diffusers scheduler is stateful (step index, multistep history), so one instance must never be
shared between requests. Instead a request carries a small :class:`SamplerState` from step to step;
any worker rebuilds a positioned scheduler from it, so consecutive steps of one request may run on
different workers.
"""

from __future__ import annotations

import copy
import json
import threading
from dataclasses import dataclass, replace
from functools import lru_cache

from legodiffusion.ops.lazy import lazy_module

torch = lazy_module("torch")
diffusers = lazy_module("diffusers")
pipeline_flux = lazy_module("diffusers.pipelines.flux.pipeline_flux")  # calculate_shift

#: sampler name -> its diffusers scheduler class (by name: diffusers is imported on first use)
SAMPLERS = {
    "euler": "EulerDiscreteScheduler",
    "euler_karras": "EulerDiscreteScheduler",
    "euler_ancestral": "EulerAncestralDiscreteScheduler",
    "ddim": "DDIMScheduler",
    "dpmpp_2m": "DPMSolverMultistepScheduler",
    "dpmpp_2m_karras": "DPMSolverMultistepScheduler",
    "flow_euler": "FlowMatchEulerDiscreteScheduler",
}
#: scheduler-config overrides per sampler name (as ``Scheduler.from_config(config, **overrides)``)
_DPMPP_2M = {"algorithm_type": "dpmsolver++", "solver_order": 2}
CONFIG_OVERRIDES = {
    "euler_karras": {"use_karras_sigmas": True},
    "dpmpp_2m": _DPMPP_2M,
    "dpmpp_2m_karras": {**_DPMPP_2M, "use_karras_sigmas": True},
}
#: multistep samplers: their history of model outputs travels in the state
MULTISTEP = frozenset({"dpmpp_2m", "dpmpp_2m_karras"})
FLOW_SAMPLERS = frozenset({"flow_euler"})
#: families whose denoisers predict flow (they take the flow samplers, the others the rest)
FLOW_FAMILIES = frozenset({"sd3", "flux", "flux2", "zimage", "qwenimage"})
#: families whose transformers read latents packed 2x2 into tokens: sizes are multiples of twice the VAE factor
PACKED_FAMILIES = frozenset({"flux", "qwenimage"})
#: samplers that draw noise every step from the request's generator, whose state travels with them
STOCHASTIC = frozenset({"euler_ancestral"})

#: Keyword arguments the reference pipeline passes to ``step`` (``prepare_extra_step_kwargs``).
_STEP_KWARGS = {"ddim": {"eta": 0.0}}


@dataclass(frozen=True)
class SamplerState:
    sampler: str
    config_json: str
    num_steps: int
    step_index: int = 0
    #: extra ``set_timesteps`` arguments (Flux: ``sigmas`` and ``mu``), as JSON
    timesteps_json: str = "{}"
    #: the request's torch.Generator state, for samplers that draw noise each step
    rng: bytes | None = None
    #: multistep samplers (DPM++): the last model outputs and how many lower-order steps ran
    history: tuple = ()
    order_nums: int = 0

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    def advanced(self, **updates) -> SamplerState:
        return replace(self, step_index=self.step_index + 1, **updates)


def kept_steps(steps: int, strength: float, rounds: str = "kept") -> int:
    """How many of a ``steps``-step schedule an edit at ``strength`` runs (its last ones), exactly
    as diffusers' pipelines count them: ``"kept"`` as the UNet pipelines (floor(steps x strength)),
    ``"skipped"`` as the flow-matching ones (steps - floor(steps x (1 - strength)))."""
    if not 0 < strength <= 1:
        raise ValueError(f"strength must be in (0, 1], got {strength!r}")
    if rounds == "kept":
        return min(int(steps * strength), steps)
    return steps - int(max(steps - min(steps * strength, steps), 0))


#: how each family's editing pipelines round ``steps x strength`` (see :func:`kept_steps`)
STRENGTH_ROUNDS = {"sd": "kept", "sdxl": "kept", "sd3": "skipped", "flux": "skipped"}


def generator_state(generator: torch.Generator) -> bytes:
    return generator.get_state().numpy().tobytes()


def request_generator(args: dict) -> torch.Generator:
    """The request's CPU generator, as the pipelines use one: continued from ``args["rng"]`` (its
    state after an earlier node's draws) where given, else seeded with ``args["seed"]``."""
    generator = torch.Generator("cpu")
    if args.get("rng") is not None:
        generator.set_state(args["rng"])
    else:
        generator.manual_seed(int(args["seed"]))
    return generator


def generator_from(state: bytes) -> torch.Generator:
    g = torch.Generator("cpu")
    g.set_state(torch.frombuffer(bytearray(state), dtype=torch.uint8))
    return g


def check_sampler(name: str, family: str | None = None) -> None:
    """Raise ValueError unless ``name`` is a known sampler fitting ``family`` (when given)."""
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")
    if family is not None and (name in FLOW_SAMPLERS) != (family in FLOW_FAMILIES):
        fitting = sorted(s for s in SAMPLERS if (s in FLOW_SAMPLERS) == (family in FLOW_FAMILIES))
        raise ValueError(f"sampler {name!r} does not fit a {family} model; choose one of {fitting}")


def new_state(sampler: str, scheduler_config: dict, num_steps: int, **timestep_kwargs) -> SamplerState:
    check_sampler(sampler)
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    config = {**dict(scheduler_config), **CONFIG_OVERRIDES.get(sampler, {})}
    return SamplerState(sampler, json.dumps(config, sort_keys=True), num_steps, 0, json.dumps(timestep_kwargs, sort_keys=True))


_lock = threading.Lock()


@lru_cache(maxsize=64)
def _prototype(sampler: str, config_json: str, num_steps: int, timesteps_json: str):
    sched = getattr(diffusers, SAMPLERS[sampler]).from_config(json.loads(config_json))
    kwargs = json.loads(timesteps_json)
    if "sigmas" in kwargs:  # as diffusers' retrieve_timesteps: sigmas replace the step count
        sched.set_timesteps(**kwargs)
    else:
        sched.set_timesteps(num_steps, **kwargs)
    return sched


def scheduler_at(state: SamplerState):
    """A private scheduler positioned at ``state.step_index`` (a shallow copy of a cached one)."""
    with _lock:
        proto = _prototype(state.sampler, state.config_json, state.num_steps, state.timesteps_json)
    sched = copy.copy(proto)
    if hasattr(sched, "_step_index"):
        sched._step_index = state.step_index
    return sched


def add_noise(state: SamplerState, latents: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
    """``latents`` noised to the timestep of ``state``'s step, as the editing pipelines do with a
    scheduler whose begin index is set (``add_noise``; ``scale_noise`` for flow matching)."""
    sched = scheduler_at(state)
    sched._begin_index = state.step_index
    t = sched.timesteps[state.step_index : state.step_index + 1].repeat(latents.shape[0])
    if state.sampler in FLOW_SAMPLERS:
        return sched.scale_noise(latents, t, noise)
    return sched.add_noise(latents, noise, t)


def timestep(state: SamplerState) -> torch.Tensor:
    return scheduler_at(state).timesteps[state.step_index]


def init_noise_sigma(state: SamplerState) -> float:
    return scheduler_at(state).init_noise_sigma


def step(state: SamplerState, noise: torch.Tensor, latents: torch.Tensor) -> tuple[torch.Tensor, SamplerState]:
    """The sampler update: the new latents and the state of the next step (with the request's
    generator state after this step's draw, or the multistep history, where the sampler has them)."""
    sched = scheduler_at(state)
    t = sched.timesteps[state.step_index]
    kwargs = dict(_STEP_KWARGS.get(state.sampler, {}))
    updates: dict = {}
    if state.sampler in STOCHASTIC:
        if state.rng is None:
            raise ValueError(f"sampler {state.sampler!r} needs the request's generator state")
        kwargs["generator"] = generator = generator_from(state.rng)
    if state.sampler in MULTISTEP:  # a private history: the prototype's list must not be shared
        sched.model_outputs = list(state.history) if state.history else [None] * sched.config.solver_order
        sched.lower_order_nums = state.order_nums
    out = sched.step(noise, t, latents, return_dict=False, **kwargs)[0]
    if state.sampler in STOCHASTIC:
        updates["rng"] = generator_state(generator)
    if state.sampler in MULTISTEP:
        updates.update(history=tuple(sched.model_outputs), order_nums=sched.lower_order_nums)
    return out, state.advanced(**updates)


def image_shift(scheduler_config: dict, seq_len: int, max_shift: float = 1.15) -> float:
    """The schedule shift ``mu`` for an image of ``seq_len`` transformer tokens, from the scheduler's
    config as the Flux, SD3.5, Z-Image and Qwen-Image pipelines compute it (each pipeline's
    ``calculate_shift`` is a copy of Flux's; SD3's default ``max_shift`` is 1.16)."""
    sc = scheduler_config
    return pipeline_flux.calculate_shift(
        seq_len,
        sc.get("base_image_seq_len", 256),
        sc.get("max_image_seq_len", 4096),
        sc.get("base_shift", 0.5),
        sc.get("max_shift", max_shift),
    )
