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

import torch
from diffusers import DDIMScheduler, EulerDiscreteScheduler, FlowMatchEulerDiscreteScheduler

SAMPLERS = {"euler": EulerDiscreteScheduler, "ddim": DDIMScheduler, "flow_euler": FlowMatchEulerDiscreteScheduler}
FLOW_SAMPLERS = frozenset({"flow_euler"})

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

    @property
    def done(self) -> bool:
        return self.step_index >= self.num_steps

    def advanced(self) -> SamplerState:
        return replace(self, step_index=self.step_index + 1)


def check_sampler(name: str) -> None:
    if name not in SAMPLERS:
        raise ValueError(f"unknown sampler {name!r}; choose one of {sorted(SAMPLERS)}")


def new_state(sampler: str, scheduler_config: dict, num_steps: int, **timestep_kwargs) -> SamplerState:
    check_sampler(sampler)
    if num_steps < 1:
        raise ValueError(f"steps must be >= 1, got {num_steps}")
    return SamplerState(
        sampler, json.dumps(dict(scheduler_config), sort_keys=True), num_steps, 0, json.dumps(timestep_kwargs, sort_keys=True)
    )


_lock = threading.Lock()


@lru_cache(maxsize=64)
def _prototype(sampler: str, config_json: str, num_steps: int, timesteps_json: str):
    sched = SAMPLERS[sampler].from_config(json.loads(config_json))
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


def timestep(state: SamplerState) -> torch.Tensor:
    return scheduler_at(state).timesteps[state.step_index]


def init_noise_sigma(state: SamplerState) -> float:
    return scheduler_at(state).init_noise_sigma


def step(state: SamplerState, noise: torch.Tensor, latents: torch.Tensor) -> torch.Tensor:
    sched = scheduler_at(state)
    t = sched.timesteps[state.step_index]
    kwargs = _STEP_KWARGS.get(state.sampler, {})
    return sched.step(noise, t, latents, return_dict=False, **kwargs)[0]
