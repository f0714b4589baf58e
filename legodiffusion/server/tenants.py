"""Tenants of one server: who sent a request (set by the guard from its API key), their
per-tenant admission (a cap on runs in flight and a token-bucket rate limit, each answered 429
with ``Retry-After`` and the tenant named) and their usage, which ``/metrics`` and the dashboard
read from :meth:`Tenants.usage`.

The ordering between tenants and priority classes is the scheduler's
(:mod:`legodiffusion.core.fairness`); this is only what the server owns.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field

from starlette.requests import Request

from legodiffusion.config import TenantSpec
from legodiffusion.server.errors import ApiError, retry_later, runs_drain_s

#: the tenant of a request when the server has no keys, or a bare key in the keys file
DEFAULT = TenantSpec()


def tenant_of(request: Request) -> TenantSpec:
    """The tenant the guard found for ``request`` (the default one on an open server)."""
    return request.scope.get("state", {}).get("tenant", DEFAULT)


@dataclass
class TenantUsage:
    spec: TenantSpec
    in_flight: int = 0
    requests: Counter = field(default_factory=Counter)  # runs by final status
    refused: Counter = field(default_factory=Counter)  # 429s by reason: concurrency, rate
    gpu_s: float = 0.0  # measured seconds of its nodes' calls (a batch's split over its items)
    slo_met: int = 0
    slo_total: int = 0
    tokens: float = 0.0  # the rate limit's bucket
    filled_s: float = 0.0  # when the bucket was last topped up


class Tenants:
    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self.clock = clock
        self.by_name: dict[str, TenantUsage] = {}
        self._owner: dict[int, str] = {}  # engine request id -> tenant, while in flight

    def _get(self, spec: TenantSpec) -> TenantUsage:
        u = self.by_name.get(spec.name)
        if u is None:
            u = self.by_name[spec.name] = TenantUsage(spec, tokens=float(spec.bucket or 0), filled_s=self.clock())
        return u

    def check(self, spec: TenantSpec, n: int, queued_work_s: Callable[[], float], workers: float) -> None:
        """Room for ``n`` more runs of ``spec``'s tenant under its cap and its rate limit, else
        429 naming the tenant, with when to retry (400 when ``n`` could never fit). ``queued_work_s``:
        the profiled work of its runs in flight not yet done (asked only on a refusal), spread over
        ``workers`` (live workers times the measured drain rate); it paces when the cap frees room.
        Changes nothing but the count of refusals."""
        u = self._get(spec)
        bucket = spec.bucket
        if bucket is not None and n > bucket:
            raise ApiError(
                400,
                "limit_exceeded",
                f"{n} runs in one request exceeds tenant {spec.name!r}'s burst of {bucket}",
                "inputs",
                tenant=spec.name,
            )
        cap = spec.max_in_flight
        if cap is not None and u.in_flight + n > cap:
            if n > cap:
                raise ApiError(
                    400,
                    "limit_exceeded",
                    f"{n} runs in one request exceeds tenant {spec.name!r}'s max_in_flight={cap}",
                    "inputs",
                    tenant=spec.name,
                )
            self._refuse(
                u,
                "concurrency",
                f"tenant {spec.name!r} has {u.in_flight} runs in flight (max_in_flight={cap})",
                runs_drain_s(u.in_flight + n - cap, queued_work_s(), workers, u.in_flight),
            )
        if bucket is not None:
            self._fill(u)
            if u.tokens < n:
                self._refuse(
                    u, "rate", f"tenant {spec.name!r} is over its rate of {spec.rate_per_s:g} runs/s", (n - u.tokens) / spec.rate_per_s
                )

    def _fill(self, u: TenantUsage) -> None:
        now = self.clock()
        u.tokens = min(float(u.spec.bucket or 0), u.tokens + (now - u.filled_s) * (u.spec.rate_per_s or 0.0))
        u.filled_s = now

    @staticmethod
    def _refuse(u: TenantUsage, reason: str, message: str, wait_s: float) -> None:
        u.refused[reason] += 1
        raise retry_later(message, wait_s, "tenant", tenant=u.spec.name)

    def admitted(self, spec: TenantSpec, n: int, request_ids: list[int]) -> None:
        """``n`` runs of ``spec``'s tenant were accepted (each takes a token); those queued
        (``request_ids``) count in flight until :meth:`ended`."""
        u = self._get(spec)
        if spec.bucket is not None:
            self._fill(u)
            u.tokens -= n
        for rid in request_ids:
            self._owner[rid] = spec.name
        u.in_flight += len(request_ids)

    def ended(self, request_id: int) -> None:
        """A run counted by :meth:`admitted` ended (its usage is kept by :meth:`finished`)."""
        name = self._owner.pop(request_id, None)
        if name is not None:
            self.by_name[name].in_flight -= 1

    def finished(self, spec: TenantSpec, status: str, slo_s: float | None, latency_s: float) -> None:
        """A run of ``spec``'s tenant ended with ``status`` (refused at once included)."""
        u = self._get(spec)
        u.requests[status] += 1
        if slo_s is not None:
            u.slo_total += 1
            u.slo_met += status == "succeeded" and latency_s <= slo_s

    def on_dispatch(self, d, c) -> None:
        """A dispatch finished: its measured seconds go to its items' tenants, split evenly."""
        if not d.items:
            return
        share = max(0.0, c.end_s - c.start_s) / len(d.items)
        for item in d.items:
            name = self._owner.get(item.request_id)
            if name is not None:
                self.by_name[name].gpu_s += share

    def usage(self) -> dict[str, dict]:
        """Per tenant: its class and weight, runs in flight, runs by final status, 429s by reason,
        measured GPU seconds and deadlines met of those given."""
        return {
            name: {
                "priority": u.spec.priority,
                "weight": u.spec.weight,
                "in_flight": u.in_flight,
                "requests": dict(u.requests),
                "refused": dict(u.refused),
                "gpu_s": u.gpu_s,
                "slo_met": u.slo_met,
                "slo_total": u.slo_total,
            }
            for name, u in sorted(self.by_name.items())
        }
