"""Prometheus metrics of one server, on its own registry (several apps may live in one process)."""

from __future__ import annotations

from collections.abc import Callable

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily


def queue_depths(engine) -> dict[str, int]:
    """Ready nodes waiting in the coordinator's queues, by operator (every registered one)."""
    depth = dict.fromkeys(engine.registry.names(), 0)
    for key, q in engine.coordinator.queues.items():
        depth[key[0]] = depth.get(key[0], 0) + len(q)
    return depth


class Metrics:
    def __init__(self) -> None:
        r = self.registry = CollectorRegistry()
        self.requests = Counter("legodiffusion_requests_total", "Requests by workflow and final status", ["workflow", "status"], registry=r)
        self.rejections = Counter("legodiffusion_slo_rejections_total", "Requests rejected by admission", registry=r)
        self.slo_met = Counter("legodiffusion_slo_met_total", "Requests with a deadline that finished in time", registry=r)
        self.slo_total = Counter("legodiffusion_slo_requests_total", "Requests with a deadline", registry=r)
        self.node_seconds = Histogram(
            "legodiffusion_node_seconds",
            "Dispatch execution time by operator",
            ["op"],
            registry=r,
            buckets=(0.0005, 0.001, 0.005, 0.01, 0.05, 0.1, 0.5, 1, 5, 30),
        )
        self.batch_size = Histogram(
            "legodiffusion_batch_size", "Nodes per dispatch by operator", ["op"], registry=r, buckets=(1, 2, 4, 8, 16, 32)
        )
        self.queue_depth = Gauge("legodiffusion_queue_depth", "Ready nodes waiting centrally, by operator", ["op"], registry=r)
        self.model_loads = Counter("legodiffusion_model_loads_total", "Components made resident on a worker", ["worker"], registry=r)
        self.model_evictions = Counter("legodiffusion_model_evictions_total", "Components evicted from a worker", ["worker"], registry=r)
        self.dataplane_bytes = Gauge("legodiffusion_dataplane_bytes", "Bytes held by the data plane", registry=r)
        self.inflight = Gauge("legodiffusion_requests_in_flight", "Requests admitted and not finished", registry=r)
        self.recoveries = Counter("legodiffusion_recoveries", "Requests that re-ran lost work after a worker died", registry=r)
        self.workers_lost = Counter("legodiffusion_workers_lost", "Workers that died (not retired by autoscaling)", registry=r)
        self.workers = Gauge("legodiffusion_workers", "Workers by state", ["state"], registry=r)
        self.replica_target = Gauge(
            "legodiffusion_replica_target", "Autoscaling: workers that should keep a model resident", ["model"], registry=r
        )
        self.scale_events = Counter("legodiffusion_scale_events", "Autoscaling actions on workers", ["action"], registry=r)
        self.retained = Gauge(
            "legodiffusion_retained", "Records the server keeps, by kind (runs, prompts, uploads, workflows)", ["kind"], registry=r
        )
        self.retained_bytes = Gauge(
            "legodiffusion_retained_bytes", "Bytes the server keeps: PNGs of runs, decoded uploads", ["kind"], registry=r
        )
        self.evictions = Counter(
            "legodiffusion_retention_evictions",
            "Records dropped by retention, by kind and reason (ttl, count, bytes)",
            ["kind", "reason"],
            registry=r,
        )
        self.busy_workers = Gauge("legodiffusion_workers_busy", "Workers running a call", registry=r)
        self.stuck_workers = Gauge("legodiffusion_workers_stuck", "Workers whose call runs past its timeout", registry=r)
        self.dispatches = Gauge("legodiffusion_dispatches_in_flight", "Dispatches sent to workers and not reported", registry=r)
        self.timeouts = Counter("legodiffusion_call_timeouts", "Model calls that ran past their timeout", registry=r)
        self.stalls = Counter("legodiffusion_stalled_requests", "Requests failed by the watchdog", registry=r)
        self._seen = {"recoveries": 0, "lost": 0, "events": 0}

    def watch_tenants(self, usage: Callable[[], dict[str, dict]]) -> None:
        """Export per-tenant usage (``ServerState.tenant_usage``) read at each scrape."""
        self.registry.register(_TenantCollector(usage))

    def evicted(self, kind: str, reason: str) -> None:
        self.evictions.labels(kind, reason).inc()

    def held(self, runs, uploads, workflows) -> None:
        """What the server's stores hold (:mod:`legodiffusion.server.store`)."""
        runs.prune()
        uploads.prune()
        for kind, n in (
            ("runs", len(runs.records)),
            ("prompts", len(runs.prompts)),
            ("uploads", len(uploads.images)),
            ("workflows", len(workflows.created_s)),
        ):
            self.retained.labels(kind).set(n)
        self.retained_bytes.labels("runs").set(runs.bytes_held)
        self.retained_bytes.labels("uploads").set(uploads.bytes_held)

    def on_dispatch(self, d, c) -> None:
        self.node_seconds.labels(d.op).observe(max(0.0, c.end_s - c.start_s))
        self.batch_size.labels(d.op).observe(len(d.items))
        if c.loaded:
            self.model_loads.labels(str(d.worker)).inc(len(c.loaded))
        if c.evicted:
            self.model_evictions.labels(str(d.worker)).inc(len(c.evicted))

    def render(self, engine) -> bytes:
        for op, n in queue_depths(engine).items():
            self.queue_depth.labels(op).set(n)
        self.dataplane_bytes.set(engine.plane.live_bytes())
        self.inflight.set(len(engine.coordinator.requests))
        self._scaling(engine)
        self._health(engine)
        return generate_latest(self.registry)

    def _scaling(self, engine) -> None:
        coord, scaling = engine.coordinator, engine.scaling
        seen = self._seen
        self.recoveries.inc(coord.stats.recoveries - seen["recoveries"])
        self.workers_lost.inc(engine.workers_lost - seen["lost"])
        for e in scaling.events[seen["events"] :]:
            self.scale_events.labels(e.action).inc()
        seen.update(recoveries=coord.stats.recoveries, lost=engine.workers_lost, events=len(scaling.events))
        states = {"live": 0, "joining": len(scaling.joining), "draining": len(scaling.retiring), "lost": 0}
        for w in coord.workers:
            if not w.alive:
                states["lost"] += 1
            elif w.id not in scaling.joining and w.id not in scaling.retiring:
                states["live"] += 1
        for state, n in states.items():
            self.workers.labels(state).set(n)
        for model, n in engine.autoscaler.targets.items():
            self.replica_target.labels(model).set(n)

    def _health(self, engine) -> None:
        health, sup, seen = engine.health(), engine.supervisor, self._seen
        self.busy_workers.set(health["busy"])
        self.stuck_workers.set(health["stuck"])
        self.dispatches.set(health["dispatches_in_flight"])
        self.timeouts.inc(sup.timeouts - seen.get("timeouts", 0))
        self.stalls.inc(sup.stalls - seen.get("stalls", 0))
        seen.update(timeouts=sup.timeouts, stalls=sup.stalls)


class _TenantCollector:
    """Per-tenant series, from the one place the server keeps tenant usage."""

    def __init__(self, usage: Callable[[], dict[str, dict]]) -> None:
        self.usage = usage

    def collect(self):
        p = "legodiffusion_tenant_"
        requests = CounterMetricFamily(p + "requests", "Runs by tenant and final status", labels=["tenant", "status"])
        refused = CounterMetricFamily(p + "refusals", "Requests refused 429 by a tenant's limit", labels=["tenant", "reason"])
        gpu = CounterMetricFamily(p + "gpu_seconds", "Measured seconds of the tenant's model calls", labels=["tenant"])
        work = CounterMetricFamily(p + "work_seconds", "Profiled seconds of the tenant's nodes dispatched", labels=["tenant"])
        inflight = GaugeMetricFamily(p + "in_flight", "Runs of the tenant admitted and not ended", labels=["tenant"])
        slo_met = CounterMetricFamily(p + "slo_met", "Runs with a deadline that finished in time", labels=["tenant"])
        slo_total = CounterMetricFamily(p + "slo_requests", "Runs with a deadline", labels=["tenant"])
        for name, u in self.usage().items():
            for status, n in u["requests"].items():
                requests.add_metric([name, status], n)
            for reason, n in u["refused"].items():
                refused.add_metric([name, reason], n)
            gpu.add_metric([name], u["gpu_s"])
            work.add_metric([name], u.get("work_s", 0.0))
            inflight.add_metric([name], u["in_flight"])
            slo_met.add_metric([name], u["slo_met"])
            slo_total.add_metric([name], u["slo_total"])
        yield from (requests, refused, gpu, work, inflight, slo_met, slo_total)

    def describe(self):
        return []  # collected at scrape time only
