"""Prometheus metrics of one server, on its own registry (several apps may live in one process)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, generate_latest


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

    def on_dispatch(self, d, c) -> None:
        self.node_seconds.labels(d.op).observe(max(0.0, c.end_s - c.start_s))
        self.batch_size.labels(d.op).observe(len(d.items))
        if c.loaded:
            self.model_loads.labels(str(d.worker)).inc(len(c.loaded))
        if c.evicted:
            self.model_evictions.labels(str(d.worker)).inc(len(c.evicted))

    def render(self, engine) -> bytes:
        depth: dict[str, int] = {}
        for key, q in engine.coordinator.queues.items():
            depth[key[0]] = depth.get(key[0], 0) + len(q)
        for op in engine.registry.names():
            self.queue_depth.labels(op).set(depth.get(op, 0))
        self.dataplane_bytes.set(engine.plane.live_bytes())
        self.inflight.set(len(engine.coordinator.requests))
        return generate_latest(self.registry)
