"""``legodiffusion sim``: one simulated configuration with a progress bar and a summary table, and
``legodiffusion fidelity``: the live-vs-simulated comparison."""

from __future__ import annotations

from pathlib import Path

from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn
from rich.table import Table

from legodiffusion.sim.experiment import run_trace
from legodiffusion.sim.reference import ReferenceCost
from legodiffusion.sim.traces import bursty, from_csv, gamma, poisson
from legodiffusion.sim.workload import Workload, paper_workflows


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
) -> int:
    console = Console()
    wl = Workload(paper_workflows(), ReferenceCost(), slo_scale=slo_scale)
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
    else:
        console.print(f"[red]error:[/] unknown trace {trace!r}: poisson, bursty, gamma or csv")
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
    return 0


def run_fidelity(requests: int, rate: float, seed: int, models: Path) -> int:
    from legodiffusion.sim.fidelity import fidelity

    console = Console()
    result = fidelity(models, requests=requests, rate=rate, seed=seed, progress=console.print)
    table = Table(title="live local backend vs simulator (same trace, profile measured on this machine)")
    for col in ("workflow", "requests", "live p50", "sim p50", "err", "live p95", "sim p95", "err"):
        table.add_column(col, justify="right" if col != "workflow" else "left")
    ok = True
    for wf, v in result.items():
        ok &= v["err_p50"] <= 0.15 and v["err_p95"] <= 0.15
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
    console.print("within 15%" if ok else "[red]outside 15%[/]")
    return 0 if ok else 1
