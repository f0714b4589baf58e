"""Priority classes and weighted fair sharing of profiled work between tenants.

A request belongs to a tenant and a priority class (a rank: lower is served first; strict
between classes). Within a class, tenants share the work by start-time fair queuing over the
*profiled* seconds of the nodes dispatched (Goyal et al., SFQ): each tenant has a virtual
finish ``finish`` that advances by ``node seconds / weight`` as its nodes are dispatched, and
the class has a virtual time ``clock`` that advances by ``node seconds / (sum of the weights of
its tenants with live requests)``, never below the least ``finish`` among them. A tenant's
``lead`` (finish - clock, at least 0) is what the policy puts in its ordering key after the class
rank: the tenant that has had less than its share goes first, whatever the size of its requests,
since a 50-step request is charged for all 50 steps as they run. A tenant that was idle starts
level with the clock (no credit is banked while away).

With one tenant in a class its lead is always exactly 0 (its finish and the clock advance by the
same amounts), so the ordering inside a tenant is the policy's own (least laxity, or the latest start).
A ready queue keeps one heap per tenant account and reads the leads each time it picks the next
node (:mod:`legodiffusion.core.ready`), so nodes queued while a tenant was behind do not keep
that place once it has caught up.

Mechanism owned by the coordinator; policies only read ``rank`` and ``lead_s``
(:meth:`SchedulingPolicy.share_key`).
"""

from __future__ import annotations

from dataclasses import dataclass, field

#: Priority class names and their ranks (lower is served first; strict between classes)
PRIORITY_CLASSES = {"high": 0, "normal": 1, "low": 2}
DEFAULT_PRIORITY = PRIORITY_CLASSES["normal"]
DEFAULT_TENANT = "default"


def priority_rank(value: str | int) -> int:
    """A priority class by name (``high``, ``normal``, ``low``) or rank (0 = highest)."""
    if isinstance(value, bool) or not isinstance(value, (str, int)):
        raise ValueError(f"priority must be one of {sorted(PRIORITY_CLASSES)} or a rank (int >= 0), got {value!r}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"priority rank must be >= 0, got {value}")
        return value
    try:
        return PRIORITY_CLASSES[value]
    except KeyError:
        raise ValueError(f"priority must be one of {sorted(PRIORITY_CLASSES)} or a rank (int >= 0), got {value!r}") from None


@dataclass
class _ClassClock:
    virtual_s: float = 0.0
    accounts: dict[str, TenantAccount] = field(default_factory=dict)
    live: int = 0  # requests of the class admitted and not ended
    live_weight: float = 0.0  # sum of the weights of its tenants with live requests


@dataclass(eq=False)
class TenantAccount:
    """One tenant's place in one priority class."""

    tenant: str
    rank: int
    weight: float
    clock: _ClassClock
    finish_s: float = 0.0  # virtual seconds of profiled work served / weight
    live: int = 0  # its admitted requests not ended
    work_s: float = 0.0  # profiled node seconds dispatched (real seconds, not over the weight)

    @property
    def lead_s(self) -> float:
        """How far (virtual seconds) the tenant is ahead of its share in its class."""
        return max(0.0, self.finish_s - self.clock.virtual_s)


class FairShare:
    """The virtual clocks of every priority class and the accounts of their tenants."""

    def __init__(self) -> None:
        self.classes: dict[int, _ClassClock] = {}

    def account(self, tenant: str, rank: int, weight: float) -> TenantAccount:
        """The account of ``tenant`` in class ``rank`` (created on first use); ``weight`` is the
        tenant's latest."""
        if not weight > 0:
            raise ValueError(f"tenant {tenant!r}: weight must be > 0, got {weight!r}")
        clock = self.classes.setdefault(rank, _ClassClock())
        acct = clock.accounts.get(tenant)
        if acct is None:
            acct = clock.accounts[tenant] = TenantAccount(tenant, rank, weight, clock, clock.virtual_s)
        if acct.live and weight != acct.weight:
            clock.live_weight += weight - acct.weight
        acct.weight = weight
        return acct

    def join(self, acct: TenantAccount) -> None:
        """A request of ``acct`` was admitted; a tenant that was idle starts level with the clock."""
        clock = acct.clock
        if acct.live == 0:
            acct.finish_s = max(acct.finish_s, clock.virtual_s)
            clock.live_weight += acct.weight
        acct.live += 1
        clock.live += 1

    def leave(self, acct: TenantAccount) -> None:
        """A request of ``acct`` ended."""
        clock = acct.clock
        acct.live -= 1
        clock.live -= 1
        if acct.live == 0:  # exactly 0 once no tenant is live, so rounding cannot build up
            clock.live_weight = clock.live_weight - acct.weight if clock.live else 0.0
        self._settle(clock)

    def charge(self, acct: TenantAccount, work_s: float) -> None:
        """``work_s`` profiled seconds of ``acct``'s nodes were dispatched."""
        acct.work_s += work_s
        acct.finish_s += work_s / acct.weight
        clock = acct.clock
        if clock.live_weight > 0:
            clock.virtual_s += work_s / clock.live_weight
        self._settle(clock)

    @staticmethod
    def _settle(clock: _ClassClock) -> None:
        """The clock never lags the least finish among live tenants (else a tenant alone would
        build up a lead that later arrivals exploit)."""
        if not clock.live:
            return
        if len(clock.accounts) == 1:
            least = next(iter(clock.accounts.values())).finish_s
        else:
            least = min(a.finish_s for a in clock.accounts.values() if a.live)
        if least > clock.virtual_s:
            clock.virtual_s = least

    def top_class(self) -> tuple[int, int] | None:
        """The highest priority class (lowest rank) with requests running, and how many it has
        running; None when nothing runs."""
        return min(((rank, clock.live) for rank, clock in self.classes.items() if clock.live), default=None)

    def work_by_tenant(self) -> dict[str, float]:
        """Profiled node seconds dispatched per tenant, all classes together."""
        out: dict[str, float] = {}
        for clock in self.classes.values():
            for a in clock.accounts.values():
                out[a.tenant] = out.get(a.tenant, 0.0) + a.work_s
        return out
