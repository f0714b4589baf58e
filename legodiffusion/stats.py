"""Summary statistics shared by the demo, the benchmarks and the simulator."""

from __future__ import annotations


def percentile(values: list[float], q: float) -> float:
    """The ``q``-th percentile (0-100) by nearest rank, rounding half up; 0.0 for no values."""
    s = sorted(values)
    if not s:
        return 0.0
    return s[min(len(s) - 1, int(q / 100 * (len(s) - 1) + 0.5))]


#: two-sided 95% Student t critical values by degrees of freedom; between two listed counts the
#: smaller count's (the wider interval), beyond 120 the normal's 1.96
_T95 = {
    1: 12.706, 2: 4.303, 3: 3.182, 4: 2.776, 5: 2.571, 6: 2.447, 7: 2.365, 8: 2.306, 9: 2.262, 10: 2.228,
    11: 2.201, 12: 2.179, 13: 2.160, 14: 2.145, 15: 2.131, 16: 2.120, 17: 2.110, 18: 2.101, 19: 2.093, 20: 2.086,
    21: 2.080, 22: 2.074, 23: 2.069, 24: 2.064, 25: 2.060, 26: 2.056, 27: 2.052, 28: 2.048, 29: 2.045, 30: 2.042,
    40: 2.021, 60: 2.000, 120: 1.980,
}  # fmt: skip


def mean_ci(values: list[float]) -> tuple[float, float]:
    """Mean and the half-width of its 95% confidence interval (Student t; 0 for one value)."""
    n = len(values)
    if n == 0:
        return 0.0, 0.0
    mean = sum(values) / n
    if n == 1:
        return mean, 0.0
    sd = (sum((v - mean) ** 2 for v in values) / (n - 1)) ** 0.5
    df = n - 1
    t = _T95[max(k for k in _T95 if k <= df)] if df <= 120 else 1.96
    return mean, t * sd / n**0.5


def paired_ci(a: list[float], b: list[float]) -> tuple[float, float]:
    """Mean and 95% half-width of ``a - b`` pair by pair (the same seeds, the same traces)."""
    if len(a) != len(b):
        raise ValueError(f"paired samples must have equal lengths, got {len(a)} and {len(b)}")
    return mean_ci([x - y for x, y in zip(a, b)])
