"""Summary statistics shared by the demo, the benchmarks and the simulator."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank, rounding half up; 0.0 for no values."""
    s = sorted(values)
    if not s:
        return 0.0
    return s[min(len(s) - 1, int(q / 100 * (len(s) - 1) + 0.5))]
