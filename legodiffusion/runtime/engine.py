"""The embedded runtime: coordinator + worker threads + in-process data plane, driven by asyncio.

async with Engine({"sd15": "models/sd15"}, EngineConfig(workers=2)) as engine:
    engine.add_workflow(sd_txt2img("sd15"))
    result = await engine.run("sd-txt2img", {"prompt": "a red fox", "seed": 1})
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import time
from collections.abc import Callable
from typing import Any

from legodiffusion.config import EngineConfig
from legodiffusion.core.autoscale import ReplicaAutoscaler
from legodiffusion.core.coordinator import Request
from legodiffusion.core.fairness import DEFAULT_PRIORITY, DEFAULT_TENANT
from legodiffusion.core.messages import Completion, Dispatch
from legodiffusion.core.patchset import parse_patches
from legodiffusion.models.components import PipelineConfig, is_pipeline, pipeline_config
from legodiffusion.models.store import ModelCatalog
from legodiffusion.ops import OperatorRegistry, default_registry
from legodiffusion.profiles.book import ProfileCost
from legodiffusion.profiles.profiler import cached_profiles
from legodiffusion.runtime.backend import make_backend
from legodiffusion.runtime.completions import Completions
from legodiffusion.runtime.preload import PreloadReport, preload
from legodiffusion.runtime.runs import Prepared, Run, RunResult
from legodiffusion.runtime.scaling import Scaling
from legodiffusion.runtime.supervisor import Supervisor, check, health_of
from legodiffusion.runtime.worker import Worker
from legodiffusion.workflow.bounds import RequestBounds, request_cost
from legodiffusion.workflow.errors import SpecIssue, WorkflowError
from legodiffusion.workflow.expand import Expander, TemplateCache, bind_inputs
from legodiffusion.workflow.spec import WorkflowSpec
from legodiffusion.workflow.values import check_values


class Engine(Completions):
    log = logging.getLogger("legodiffusion.engine")
    #: on stop, beyond ``EngineConfig.drain_s``: time to join the worker threads once they report
    STOP_MARGIN_S = 1.0

    def __init__(
        self,
        models: ModelCatalog | dict[str, str],
        config: EngineConfig | None = None,
        registry: OperatorRegistry | None = None,
    ) -> None:
        self.catalog = models if isinstance(models, ModelCatalog) else ModelCatalog(models)
        self.config = config or EngineConfig()
        self.registry = registry or default_registry()
        self.backend = make_backend(self.catalog, self.config, self.registry)
        self.plane = self.backend.plane
        self.workers: list[Worker] = self.backend.workers
        cfg = self.config
        self.cost = ProfileCost(cached_profiles(self.catalog, self.backend.device, cfg.profile_dir, cfg.precision()))
        self.cost.memory_bytes = self._memory_bytes()
        self.coordinator = cfg.coordinator(len(self.workers), self.cost)
        self.workflows: dict[str, Expander] = {}
        self.templates = TemplateCache(cfg.template_cache_nodes)  # shared by every workflow's expander
        self._pipeline_configs: dict[str, PipelineConfig | None] = {}  # what submissions are checked against
        self._runs: dict[int, Run] = {}
        self._ids = itertools.count(1)
        self._loop: asyncio.AbstractEventLoop | None = None
        self._sent: dict[int, Dispatch] = {}
        #: called on the event loop with (dispatch, completion) as each dispatch finishes, and
        #: with each dispatch as it is sent to its worker (for timelines and calibration)
        self.on_dispatch_done: Callable[[Dispatch, Completion], None] | None = None
        self.on_dispatch_sent: Callable[[Dispatch], None] | None = None
        self.autoscaler = ReplicaAutoscaler(cfg.autoscale)
        self.scaling = Scaling()
        self.workers_lost = 0  # died, as opposed to retired by autoscaling
        self._ticker: asyncio.Task | None = None
        self.supervisor = Supervisor(cfg)
        self._supervise_task: asyncio.Task | None = None
        self._stops_asked: set[int] = set()  # dispatches asked to stop, until they report
        self._awaited: dict[int, asyncio.Future] = {}  # dispatch id -> a future of its Completion (None: never to come)
        self._stopping = False  # stop() has begun: nothing more is prefetched
        self.preloading = 0  # preloads under way (health says warming meanwhile)
        self.preloaded: PreloadReport | None = None  # the last preload's report

    @staticmethod
    def _now() -> float:
        return time.monotonic()

    def _memory_bytes(self) -> int | None:
        """The device memory the scheduler plans with (prefetching, what a load evicts): a worker's
        budget, but only once every pipeline model is profiled, since unprofiled components would
        count as weightless and every prefetch would look free."""
        budget = self.config.budget_for(self.backend.device) if self.config.backend == "local" else self.config.memory_budget_bytes
        if budget is None:
            return None
        pipelines = [name for name in self.catalog.names() if is_pipeline(self.catalog.folder(name))]
        return budget if all(self.cost.weight_bytes(name, "denoiser") > 0 for name in pipelines) else None

    # -- lifecycle -------------------------------------------------------------------------

    async def start(self) -> Engine:
        self._loop = asyncio.get_running_loop()
        self._stopping = False
        for w in self.workers:
            w.start(self._completion_from_thread, self._lost_from_thread)
        if self.config.autoscale_interval_s > 0:
            self._ticker = asyncio.create_task(self._autoscale_loop())
        if self.config.supervise_interval_s > 0:
            self._supervise_task = asyncio.create_task(self._supervise_loop())
        return self

    async def stop(self) -> None:
        """Cancel every run, ask every call in flight to stop at its next block boundary, wait
        up to ``drain_s`` for the dispatches to report (so their values are released), then
        stop the workers; returns within ``drain_s`` plus :attr:`STOP_MARGIN_S` even if a call
        never reaches a boundary (its thread is then left to end on its own, and logged)."""
        deadline = time.monotonic() + self.config.drain_s
        self._stopping = True
        for task in (self._ticker, self._supervise_task):
            if task is not None:
                task.cancel()
        self._ticker = self._supervise_task = None
        for run in list(self._runs.values()):
            self._apply(self.coordinator.cancel(run.request_id, self._now()))
        for d in list(self._sent.values()):
            self.stop_call(d)
        while self.coordinator.inflight and time.monotonic() < deadline:  # let sent work report, so its values are released
            await asyncio.sleep(0.01)
        live = [w for w in self.workers if self.coordinator.workers[w.id].alive]
        join_s = max(0.0, deadline - time.monotonic()) + self.STOP_MARGIN_S
        await asyncio.get_running_loop().run_in_executor(None, self.backend.close, live, join_s)
        for k in list(self._awaited):  # a preload still waiting: nothing more will report
            self._report(k, None)
        for w in self.workers:
            if getattr(w, "thread_alive", False):
                self.log.warning("worker %d still computing after stop (a call that reached no block boundary)", w.id)
        self._loop = None

    async def __aenter__(self) -> Engine:
        return await self.start()

    async def __aexit__(self, *exc) -> None:
        await self.stop()

    # -- workflows and requests ------------------------------------------------------------

    def add_workflow(self, spec: WorkflowSpec, name: str | None = None) -> str:
        """Validate and register ``spec`` under ``name`` (default: its own name)."""
        for slot, model in spec.models.items():
            if model not in self.catalog:
                raise KeyError(f"workflow {spec.name!r}: model slot {slot!r} names unknown model {model!r}; known: {self.catalog.names()}")
        name = name or spec.name
        self.workflows[name] = Expander(spec, self.registry, self.templates)
        return name

    def prepare(
        self,
        workflow: str,
        inputs: dict[str, Any],
        slo_s: float | None = None,
        bounds: RequestBounds | None = None,
        tenant: str = DEFAULT_TENANT,
        priority: int = DEFAULT_PRIORITY,
        weight: float = 1.0,
    ) -> Prepared:
        """Bind, expand, check and cost a request without submitting it; raises WorkflowError
        (``limit_exceeded`` for a bound of ``bounds``, default the config's) or KeyError for bad
        input. Every value a node will receive from the request or the workflow's literals is
        checked against its port's type and range and its operator's checks with the model's facts.
        ``tenant``, ``priority`` (class rank) and ``weight``: whose request it is, for the
        ordering between tenants and classes (:mod:`legodiffusion.core.fairness`).

        Thread-safe and changes no engine state but its caches, so a server runs it off the event
        loop: a large expansion stalls nothing."""
        try:
            expander = self.workflows[workflow]
        except KeyError:
            raise KeyError(f"unknown workflow {workflow!r}; registered: {sorted(self.workflows)}") from None
        bounds = bounds or self.config.bounds
        bound = bind_inputs(expander.spec, inputs)
        template = expander.template(bound, bounds.max_nodes)
        check_values(template, bound, self.registry, self._pipeline_config)
        self._check_patches(bound)
        cost = request_cost(template, bound, self.cost, bounds, self._native_px)
        return Prepared(workflow, template, bound, slo_s, cost, tenant, priority, weight)

    def submit_prepared(self, prepared: Prepared, on_progress: Callable[[Run], None] | None = None) -> Run:
        """Submit a prepared request (on the event loop; cheap). ``prepared.slo_s``: the request
        must finish within this many seconds; admission may reject it at once (status
        ``rejected``, error starting ``SLO_REJECTED``) when current load makes that impossible."""
        if self._loop is None:
            raise RuntimeError("engine is not started (use `async with Engine(...)`)")
        p = prepared
        rid = next(self._ids)
        run = Run(rid, p.workflow, len(p.template.nodes), self._loop.create_future(), time.perf_counter(), on_progress=on_progress)
        self._runs[rid] = run
        now = self._now()
        request = self._request(rid, p, now)
        self._observe_demand(request, now)
        self.supervisor.arrived(rid, now)
        self._apply(self.coordinator.submit(request, now))
        return run

    def submit(
        self, workflow: str, inputs: dict[str, Any], on_progress: Callable[[Run], None] | None = None, slo_s: float | None = None
    ) -> Run:
        """:meth:`prepare` then :meth:`submit_prepared`, on the calling (event loop) thread."""
        if self._loop is None:
            raise RuntimeError("engine is not started (use `async with Engine(...)`)")
        return self.submit_prepared(self.prepare(workflow, inputs, slo_s), on_progress)

    def slo_refusal(self, prepared: Prepared) -> str | None:
        """Why admission would reject ``prepared`` now (``SLO_REJECTED: ...``), or None; submits nothing."""
        if prepared.slo_s is None:
            return None
        now = self._now()
        return self.coordinator.refusal(self._request(0, prepared, now), now)

    def refuse(self, prepared: Prepared, reason: str) -> Run:
        """A run of ``prepared`` that ends at once as ``rejected`` with ``reason``, queuing nothing:
        how a request that admission would reject is answered without submitting it."""
        if self._loop is None:
            raise RuntimeError("engine is not started (use `async with Engine(...)`)")
        rid = next(self._ids)
        run = Run(rid, prepared.workflow, len(prepared.template.nodes), self._loop.create_future(), time.perf_counter())
        run.future.set_result(RunResult(rid, prepared.workflow, "rejected", error=reason, nodes=run.nodes_total))
        return run

    async def preload(self, models: list[str]) -> PreloadReport:
        """Make ``models``' components (``["all"]``: every pipeline model's) resident on every live
        worker before requests ask for them (:mod:`legodiffusion.runtime.preload`); raises
        ValueError, before loading anything, for a name that cannot be preloaded."""
        return await preload(self, models)

    @property
    def stopping(self) -> bool:
        """:meth:`stop` has begun."""
        return self._stopping

    def prefetch(self, worker: int, comp: tuple) -> asyncio.Future | None:
        """Send ``worker`` a load of ``comp`` = (model, component, scope) with no call; the future
        of its completion (resolved with None if the worker is lost or the engine stops first),
        or None if nothing was sent (the worker holds it, takes no work or has no free slot, or
        the engine is stopping)."""
        if self._stopping:
            return None
        if self._loop is None:
            raise RuntimeError("engine is not started (use `async with Engine(...)`)")
        actions = self.coordinator.prefetch(worker, comp)
        if not actions.dispatches:
            return None
        done = self._loop.create_future()
        self._awaited[actions.dispatches[0].id] = done
        self._apply(actions)
        return done

    def queued_work_s(self) -> float:
        """Profiled work not yet done of every admitted request (seconds); O(1)."""
        return max(self.coordinator.work_s, 0.0)

    def in_flight(self) -> list[Dispatch]:
        """The dispatches sent to workers and not reported yet."""
        return list(self._sent.values())

    def live_workers(self) -> int:
        """Workers that take new work (alive, not draining)."""
        return self.coordinator.pool.active

    def drain_factor(self) -> float:
        """Seconds of profiled work one worker completes per second while all are busy, as
        measured (:class:`~legodiffusion.core.drain.DrainRate`; 1.0 until saturation says
        otherwise): what SLO admission and the queue bound both assume."""
        return self.coordinator.drain.factor

    def _request(self, rid: int, p: Prepared, now: float) -> Request:
        deadline = None if p.slo_s is None else now + p.slo_s
        return Request(rid, p.template, p.inputs, p.workflow, now, deadline, p.cost.costs, p.tenant, p.priority, p.weight)

    def _native_px(self, model: str) -> int | None:
        cfg = self._pipeline_config(model)
        return cfg.default_size**2 if cfg is not None else None

    def _pipeline_config(self, model: str) -> PipelineConfig | None:
        """A pipeline model's cheap facts (None for a single model such as a ControlNet), read
        from its folder's JSON files once. Not through the host cache: its lock is held while a
        worker loads weights from disk, which would stall the event loop here."""
        if model not in self._pipeline_configs:
            self._pipeline_configs[model] = pipeline_config(self.catalog.folder(model)) if is_pipeline(self.catalog.folder(model)) else None
        return self._pipeline_configs[model]

    def _check_patches(self, bound: dict[str, Any]) -> None:
        try:
            patches = parse_patches(bound.get("loras"))
        except ValueError as exc:
            raise WorkflowError([SpecIssue("bad_value", "inputs.loras", str(exc))]) from None
        unknown = [name for name, _ in patches if name not in self.catalog]
        if unknown:
            raise WorkflowError(
                [SpecIssue("unknown_model", "inputs.loras", f"unknown LoRA {', '.join(map(repr, unknown))}; known: {self.catalog.names()}")]
            )

    async def run(self, workflow: str, inputs: dict[str, Any], on_progress=None, slo_s: float | None = None) -> RunResult:
        return await self.submit(workflow, inputs, on_progress, slo_s).future

    def lose_worker(self, worker: int) -> None:
        """Treat ``worker`` as dead (it is stopped at once if it is not already): its in-flight
        work and the tensors it held are redone elsewhere from lineage. Never raises: a recovery
        that cannot be carried out fails the requests it concerns, with the reason."""
        if not self.coordinator.workers[worker].alive:
            return
        w = self.workers[worker]
        now = self._now()
        try:  # stopping it and starting replacements (replacements first: affected requests wait for them)
            if hasattr(w, "kill"):
                w.kill()
            self.backend.forget(worker)
            self.supervisor.lost(worker)
            self.scaling.replace(self, worker, now)
        except Exception:
            self.log.exception("worker %d lost: stopping it or starting a replacement failed", worker)
        self.workers_lost += 1
        self.scaling.joining.discard(worker)
        self.scaling.retiring.discard(worker)
        self._stops_asked.difference_update(k for k, d in self._sent.items() if d.worker == worker)
        for k in [k for k, d in self._sent.items() if d.worker == worker and k in self._awaited]:
            self._report(k, None)
        self._sent = {k: d for k, d in self._sent.items() if d.worker != worker}
        before = self.coordinator.stats.recoveries
        try:
            actions = self.coordinator.on_worker_lost(worker, now)
        except Exception as exc:  # its state may be out of step for any request: none is left waiting
            self.log.exception("recovering from the loss of worker %d failed", worker)
            self._fail_runs(list(self._runs), f"internal error recovering from the loss of worker {worker}: {type(exc).__name__}: {exc}")
            return
        self._apply(actions)
        self.log.warning("worker %d lost; %d request(s) recovering from lineage", worker, self.coordinator.stats.recoveries - before)

    def cancel(self, request_id: int) -> None:
        self._apply(self.coordinator.cancel(request_id, self._now()))

    def fail(self, request_id: int, reason: str) -> None:
        """End a running request as failed with ``reason`` (a timeout, a stall)."""
        self._apply(self.coordinator.fail(request_id, reason, self._now()))

    # -- supervision -------------------------------------------------------------------------

    async def _supervise_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.supervise_interval_s)
            try:
                self.supervise()
            except Exception:  # a failed check must not end the loop (or the server)
                self.log.exception("supervision step failed")

    def supervise(self, now: float | None = None) -> None:
        """Time out stuck calls and fail stalled requests (see :mod:`legodiffusion.runtime.supervisor`)."""
        check(self, self._now() if now is None else now)

    def stop_call(self, d: Dispatch) -> None:
        """Ask ``d`` to stop at its call's next block boundary (once)."""
        if d.id not in self._stops_asked and self.coordinator.workers[d.worker].alive:
            self._stops_asked.add(d.id)
            self.workers[d.worker].stop_dispatch(d.id)

    def _stop_orphaned(self) -> None:
        """Calls whose every request has ended (cancelled, failed) stop at their next block
        boundary: nobody waits for what they compute. A batch with a live request runs on."""
        requests = self.coordinator.requests
        for d in list(self._sent.values()):
            if d.items and d.id not in self._stops_asked and not any(it.request_id in requests for it in d.items):
                self.stop_call(d)

    def _report(self, dispatch_id: int, completion: Completion | None) -> None:
        """Resolve whoever awaits ``dispatch_id`` (see :meth:`prefetch`)."""
        done = self._awaited.pop(dispatch_id, None)
        if done is not None and not done.done():
            done.set_result(completion)

    def health(self) -> dict:
        """Readiness and the per-worker view (see :func:`legodiffusion.runtime.supervisor.health_of`)."""
        return health_of(self)

    # -- autoscaling -------------------------------------------------------------------------

    def _observe_demand(self, request: Request, now: float) -> None:
        work: dict[str, float] = {}
        for node, cost in zip(request.template.nodes, request.costs):
            if node.model is not None and not node.light:
                work[node.model] = work.get(node.model, 0.0) + cost
        for model, w in work.items():
            self.autoscaler.observe(model, now, w)

    def autoscale(self, now: float | None = None) -> dict[str, int]:
        """Re-evaluate the per-model replica targets and, on a backend that can grow, add or
        drain workers to match; returns the targets. Runs every ``autoscale_interval_s``."""
        now = self._now() if now is None else now
        seen = len(self.autoscaler.decisions)
        targets = self.autoscaler.update(now)
        for d in self.autoscaler.decisions[seen:]:
            self.log.info("replica target of %s: %d -> %d (demand %.2f s/s)", d.model, d.old, d.new, d.demand_s_per_s)
        self.scaling.step(self, targets, now)
        return targets

    async def _autoscale_loop(self) -> None:
        while True:
            await asyncio.sleep(self.config.autoscale_interval_s)
            try:
                self.autoscale()
            except Exception:  # a failed scaling step must not end the loop (or the server)
                self.log.exception("autoscaling step failed")

    # -- the driver ------------------------------------------------------------------------
