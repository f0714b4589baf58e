"""``legodiffusion sim``: one simulated configuration with a progress bar and a summary table, and
``legodiffusion fidelity``: the live-vs-simulated comparison."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from legodiffusion.sim.experiment import SYSTEMS, fluid_rate, run_trace, trace_mix
from legodiffusion.sim.reference import ReferenceCost
from legodiffusion.sim.traces import bursty, drifting, from_csv, gamma, poisson
from legodiffusion.sim.workload import make_workload


def run_sim(
    system: str,
    gpus: int,
    trace: str,
    rate: float,
    duration: float,
    multiplier: float,
    cv: float,
    csv: Path | None,
    slo_scale: float,
    seed: int,
    warmup: float,
    workload: str = "paper",
) -> int:
    console = Console()
    if system not in (*SYSTEMS, "bundle", "pooled"):
        console.print(f"[red]error:[/] unknown system {system!r}; choose one of {', '.join((*SYSTEMS, 'pooled'))}")
        return 2
    try:
        wl = make_workload(workload, ReferenceCost(), seed=seed, slo_scale=slo_scale)
    except ValueError as e:
        console.print(f"[red]error:[/] {e}")
        return 2
    if trace == "csv":
        if csv is None:
            console.print("[red]error:[/] --trace csv needs --csv FILE")
            return 2
        arrivals = from_csv(csv)
        unknown = sorted({a.workflow for a in arrivals} - set(wl.names))
        if unknown:
            console.print(f"[red]error:[/] unknown workflows in {csv}: {unknown}; catalogue: {wl.names}")
            return 2
    elif trace == "poisson":
        arrivals = poisson(rate, duration, wl.mix, seed)
    elif trace == "bursty":
        arrivals = bursty(rate, multiplier, duration / 3, 30.0, duration, wl.mix, seed)
    elif trace == "gamma":
        arrivals = gamma(rate, cv, duration, wl.mix, seed)
    elif trace == "drifting":
        arrivals = drifting(rate, duration, wl.names, seed, burst_multiplier=multiplier)
    else:
        console.print(f"[red]error:[/] unknown trace {trace!r}: poisson, bursty, gamma, drifting or csv")
        return 2
    with Progress(
        TextColumn(f"simulating {system} on {gpus} GPUs"),
        BarColumn(),
        TextColumn("{task.percentage:>3.0f}% of simulated time"),
        TimeElapsedColumn(),
        console=console,
    ) as bar:
        task = bar.add_task("sim", total=1.0)
        res = run_trace(arrivals, wl, system, gpus, warmup_s=warmup, progress=lambda f: bar.update(task, completed=f))
    table = Table(title=f"{system}, {gpus} GPUs, {len(arrivals)} requests ({trace}), SLO = {slo_scale}x solo latency")
    for col in ("workflow", "requests", "solo s", "p50 s", "p95 s"):
        table.add_column(col, justify="right" if col != "workflow" else "left")
    for wf, (p50, p95) in sorted(res.percentiles().items()):
        table.add_row(wf, str(len(res.latency_by_workflow[wf])), f"{wl.solo_s[wf]:.2f}", f"{p50:.2f}", f"{p95:.2f}")
    console.print(table)
    console.print(
        f"SLO attainment {res.attainment:.1%} of {res.requests} scored requests (rejected {res.rejected}, unfinished {res.unfinished}); {res.dispatches} dispatches in {res.wall_s:.1f} s wall"
    )
    if res.config:
        console.print(res.config)
    if system != "pooled":
        console.print(f"references: fluid bound {fluid_rate(wl, gpus, trace_mix(arrivals)):.2f} req/s on {gpus} GPUs for this mix")
    return 0


def run_fidelity(
    requests: int,
    rate: float,
    seed: int,
    models: Path,
    calibration_requests: int = 150,
    calibration_rate: float | None = None,
    calibration_seed: int | None = None,
) -> int:
    from legodiffusion.sim.fidelity import P50_TOLERANCE, P95_TOLERANCE, fidelity

    console = Console()
    result = fidelity(
        models,
        requests=requests,
        rate=rate,
        seed=seed,
        calibration_requests=calibration_requests,
        calibration_rate=calibration_rate,
        calibration_seed=calibration_seed,
        progress=console.print,
    )
    cal, ev = result["calibration"], result["evaluation"]
    hop = cal["handoff_ms"]
    console.print(
        f"calibrated on: trace seed {cal['seed']}, {cal['requests']} requests at {cal['rate']:g}/s served live "
        f"({cal['dispatches']} dispatches timed, {cal['profile_points']} profile points; "
        f"hand-offs {hop['alone']:.2f} ms alone, {hop['contended']:.2f} ms beside a busy worker)"
    )
    console.print(
        f"predicted:     trace seed {ev['seed']}, {ev['requests']} requests at {ev['rate']:g}/s, served live and simulated "
        f"from the calibration run's measurements only ({result['workers']} workers, {result['torch_threads']} torch thread each)"
    )
    table = Table(title=f"live vs simulated latency per workflow, {result['model']} tiny model, {result['workers']} workers")
    for col in ("workflow", "requests", "live p50", "sim p50", "err", "live p95", "sim p95", "err"):
        table.add_column(col, justify="right" if col != "workflow" else "left")
    ok = True
    for wf, v in ev["workflows"].items():
        ok &= v["err_p50"] <= P50_TOLERANCE and v["err_p95"] <= P95_TOLERANCE
        table.add_row(
            wf,
            str(v["requests"]),
            f"{v['live_p50'] * 1e3:.0f} ms",
            f"{v['sim_p50'] * 1e3:.0f} ms",
            f"{v['err_p50']:.0%}",
            f"{v['live_p95'] * 1e3:.0f} ms",
            f"{v['sim_p95'] * 1e3:.0f} ms",
            f"{v['err_p95']:.0%}",
        )
    console.print(table)
    within = f"p50 within {P50_TOLERANCE:.0%} and p95 within {P95_TOLERANCE:.0%}"
    console.print(within if ok else f"[red]not {within}[/]")
    return 0 if ok else 1
