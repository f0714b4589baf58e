"""Overload: offered load at 1x, 3x and 10x capacity against a real in-process server on the tiny
models, showing that the server holds: accepted requests keep their SLO, refusals come at once and
say when to retry, memory returns.

    python benchmarks/overload.py                 # 60 s per level
    python benchmarks/overload.py --duration 2    # a smoke run

The tiny SD1.5 is profiled first (at the request's size), so the queue bound and the deadline
admission work in profiled seconds; capacity is then calibrated by a closed loop (``--calibrate``
requests, two at a time), with the solo latency the SLO is set from (``--slo-factor`` x solo).
``max_queue_s`` is the SLO less one solo latency, in profiled seconds (scaled by the request's
profiled work over its solo latency), so a request admitted to a full queue still meets its SLO
when the profile is right. Each level sends Poisson arrivals for ``--duration``
seconds, half of them with the deadline as ``slo_s`` (the engine's admission refuses those it
cannot meet: ``SLO_REJECTED``), half without (the queue bound refuses those beyond it: 429 with
``Retry-After``); then it waits for every answer. Per level: accepted requests' SLO attainment,
time to the first refusal, the share of 429/503 answers with ``Retry-After``, how long refusals
and /healthz took to answer, and the process's RSS before and after.
"""

from __future__ import annotations

import os

# OpenMP threads that spin while they wait make every call many times slower on a busy machine
# (the profile then says 100 ms for a 10 ms call), as tests/conftest.py notes; before torch loads
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import argparse  # noqa: E402
import multiprocessing  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from concurrent.futures import ProcessPoolExecutor  # noqa: E402
from pathlib import Path  # noqa: E402

import psutil  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import report, stamp  # noqa: E402
from benchmarks.loadgen import WORKFLOW, calibrate_job, level_job  # noqa: E402
from legodiffusion import Engine, EngineConfig  # noqa: E402
from legodiffusion.cli.profile import workflow_ops  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.ops import default_registry  # noqa: E402
from legodiffusion.profiles.profiler import measure, profile_path  # noqa: E402
from legodiffusion.server.app import create_app  # noqa: E402
from legodiffusion.server.catalog import builtin_workflows  # noqa: E402
from legodiffusion.server.limits import Limits  # noqa: E402
from tests.server.live import serve  # noqa: E402

LEVELS = (1.0, 3.0, 10.0)


def rss_mb() -> float:
    return round(psutil.Process().memory_info().rss / 2**20, 1)


def drive(url: str, args, inputs: dict, limits: Limits, profiled_s: float) -> dict:
    """Calibrate, bound the queue by the SLO (the server reads ``limits`` per request), run the
    levels. The load comes from another process, so making it does not slow the server down."""
    with ProcessPoolExecutor(1, mp_context=multiprocessing.get_context("spawn")) as generator:
        limits.max_queue_s = float("inf")  # no refusals while calibrating
        solo_s, capacity_rps = generator.submit(calibrate_job, url, inputs, args.calibrate).result()
        slo_s = args.slo_factor * solo_s
        # an admitted request may wait the SLO less its solo latency; the queue is counted in
        # profiled seconds, which leave out what a request costs beyond its model calls
        limits.max_queue_s = (slo_s - solo_s) * profiled_s / solo_s
        levels = {}
        for factor in args.levels:
            before = rss_mb()
            row = generator.submit(level_job, url, inputs, factor * capacity_rps, args.duration, slo_s, int(factor * 10)).result()
            row["rss_mb_before_after"] = [before, rss_mb()]
            levels[f"{factor:g}x"] = row
            print(f"{factor:g}x", row, flush=True)
    return {
        "solo_s": round(solo_s, 3),
        "capacity_rps": round(capacity_rps, 2),
        "slo_s": round(slo_s, 3),
        "profiled_work_s": round(profiled_s, 3),
        "max_queue_s": round(limits.max_queue_s, 3),
        "levels": levels,
    }


def main(argv: list[str] | None = None) -> dict:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--duration", type=float, default=60.0, help="seconds per load level")
    ap.add_argument("--levels", type=float, nargs="+", default=list(LEVELS), help="offered load as multiples of capacity")
    ap.add_argument("--steps", type=int, default=8)
    ap.add_argument("--size", type=int, default=64)
    ap.add_argument("--slo-factor", type=float, default=5.0, help="SLO = this x the solo latency")
    ap.add_argument("--calibrate", type=int, default=8, help="requests of the capacity calibration")
    ap.add_argument("--workers", type=int, default=1)
    ap.add_argument("--batches", type=int, nargs="+", default=[1, 2, 4], help="batch sizes the profile measures")
    args = ap.parse_args(argv)
    t0 = time.time()
    rss_start = rss_mb()
    inputs = {"prompt": "a lighthouse at dusk", "steps": args.steps, "height": args.size, "width": args.size}
    with tempfile.TemporaryDirectory() as tmp:
        folder = write_tiny_models(Path(tmp) / "models", families=("sd15",), extras=())["sd15"]
        profiles = Path(tmp) / "profiles"
        models = {"sd15": str(folder)}
        (spec,) = [s for s in builtin_workflows(models) if s.name == WORKFLOW]
        measure(folder, default_registry(), workflow_ops(spec), "cpu", batches=tuple(args.batches), sizes=(args.size,)).save(
            profile_path(folder, "cpu", profiles)
        )
        config = EngineConfig(workers=args.workers, device="cpu", profile_dir=profiles)
        costing = Engine(models, config)  # not started: only to cost the request as the server will
        costing.add_workflow(spec)
        profiled_s = costing.prepare(WORKFLOW, inputs).cost.work_s
        limits = Limits()
        with serve(create_app(models, config, builtin_workflows(models), limits=limits)) as url:
            figures = drive(url, args, inputs, limits, profiled_s)
    figures.update(
        rss_mb_start_end=[rss_start, rss_mb()],
        config={**vars(args), "request": inputs, "max_queued": limits.max_queued},
        note="one shared 2-core CPU machine; the load generator runs in a second process on the same cores",
        stamp=stamp([], t0),
    )
    report("overload", figures)
    return figures


if __name__ == "__main__":
    main()
