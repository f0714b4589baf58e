"""The max-rate search of the paper benchmarks and its per-seed estimate."""

from legodiffusion.sim.experiment import TARGET, Evaluator, search_max


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
    # every seed's own limit to within its bracket / 2^6
    width = max(b - a for a, b in zip(visited, visited[1:]))
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
