"""The max-rate search of the paper benchmarks and its per-seed estimate."""

import pytest

from legodiffusion.sim.experiment import TARGET, Evaluator, search_max
from legodiffusion.stats import mean_ci, paired_ci


def _seeds_passing_below(limits: list[float], calls: list):
    """A fake experiment: seed i meets the target exactly at x <= limits[i] (attainment 1), and
    misses above (attainment 0.5)."""

    def run_each(jobs):
        calls.append(list(jobs))
        return [1.0 if x <= limits[i] else 0.5 for i, x in jobs]

    return run_each


def test_each_seed_scores_its_own_limit_not_the_nearest_point_the_mean_visited():
    limits = [1.3, 2.2, 2.6, 3.1, 3.4]
    calls = []
    ev = Evaluator(_seeds_passing_below(limits, calls), len(limits))
    best = search_max(ev, 0.5, 4.0, iterations=4)
    # the mean passes while at most one seed misses (4 x 1 + 0.5) / 5 = 0.9: up to the second limit
    assert 2.2 - 3.5 / 2**4 < best <= 2.2
    visited = sorted(ev.points)
    mean, half = ev.per_seed_max(refine=6)
    # every seed's own limit, from below, to within its bracket / 2^6
    width = max(b - a for a, b in zip(visited, visited[1:]))
    for got, limit in zip(ev.seed_max, limits):
        assert limit - width / 2**6 - 1e-9 <= got <= limit
    assert abs(mean - sum(limits) / len(limits)) <= width / 2**6 + 1e-9
    assert half > 0
    # only single-seed runs were added by the refinement, never all seeds at a point
    refine_calls = calls[len(ev.points) :]
    assert refine_calls and all(len({i for i, _ in c}) == len(c) for c in refine_calls)


def test_a_seed_failing_the_lowest_point_scores_zero_and_a_seed_passing_all_scores_the_highest():
    limits = [0.1, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0, 100.0]
    ev = Evaluator(_seeds_passing_below(limits, []), len(limits))
    for x in (1.0, 2.0):
        ev(x)
    assert ev.points[1.0].mean >= TARGET
    mean, _ = ev.per_seed_max()
    assert mean == (0.0 + 9 * 2.0) / 10


def test_paired_differences_cancel_what_the_seeds_share():
    # two systems whose results swing with the seed, one always 0.5 ahead: apart their intervals
    # overlap, paired the difference is exactly 0.5 with no spread
    ours = [1.0, 3.0, 2.0, 4.0, 2.5]
    theirs = [x - 0.5 for x in ours]
    lo_ours = mean_ci(ours)[0] - mean_ci(ours)[1]
    hi_theirs = mean_ci(theirs)[0] + mean_ci(theirs)[1]
    assert lo_ours < hi_theirs
    assert paired_ci(ours, theirs) == pytest.approx((0.5, 0.0))
    with pytest.raises(ValueError, match="equal lengths"):
        paired_ci(ours, theirs[:-1])
