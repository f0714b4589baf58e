"""The dashboard's screenshot in the README, made by code: a real server on the tiny SD1.5 and SDXL
models (two workers), a few runs first, then a burst of runs (half with a deadline) while a headless
Chromium (from the system's packages) watches the dashboard; the screenshot is taken while the
burst is in flight, showing the node timeline of the burst's latest finished run (batched with
others).

    python benchmarks/dashboard_shot.py           # writes benchmarks/results/dashboard.png (+ .json)
"""

from __future__ import annotations

import os

os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # as benchmarks/overload.py: before torch loads

import argparse  # noqa: E402
import sys  # noqa: E402
import tempfile  # noqa: E402
import threading  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))

from benchmarks.common import RESULTS, report, stamp  # noqa: E402
from legodiffusion.config import EngineConfig  # noqa: E402
from legodiffusion.models.tiny import write_tiny_models  # noqa: E402
from legodiffusion.server.app import create_app  # noqa: E402
from legodiffusion.server.catalog import builtin_workflows  # noqa: E402
from legodiffusion.server.limits import Limits  # noqa: E402
from tests.browser import INSTALL, chromium, find_chromium, open_page  # noqa: E402
from tests.server.live import load, serve  # noqa: E402

KEY = "dashboard-shot"


def body(i: int, slo_s: float | None) -> dict:
    workflow = ("sd15-txt2img", "sdxl-txt2img")[i % 2]
    out = {"workflow": workflow, "inputs": {"prompt": f"a lighthouse {i}", "steps": 4 + i % 5, "height": 64, "width": 64, "seed": i}}
    return out if slo_s is None else dict(out, slo_s=slo_s)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--workers", type=int, default=2)
    ap.add_argument("--burst", type=int, default=24, help="runs sent while the screenshot is taken")
    ap.add_argument("--slo-s", type=float, default=3.0, help="deadline of every other run of the burst")
    args = ap.parse_args()
    binary = find_chromium()
    if binary is None:
        sys.exit(f"no Chromium: {INSTALL}")
    started = time.time()
    with tempfile.TemporaryDirectory() as tmp:
        models = {k: str(v) for k, v in write_tiny_models(tmp, families=("sd15", "sdxl"), extras=()).items()}
        app = create_app(
            models, EngineConfig(workers=args.workers, device="cpu"), builtin_workflows(models), api_keys={KEY}, limits=Limits(max_steps=50)
        )
        with serve(app) as url, chromium(binary, width=1400, height=1000) as page:
            warm = load(url, KEY, [body(i, None) for i in range(4)])
            open_page(page, url + "/dashboard", KEY)
            page.wait_for("document.querySelectorAll('#timeline g.span').length")
            burst = [body(10 + i, args.slo_s if i % 2 else None) for i in range(args.burst)]
            answers: list[dict] = []
            loader = threading.Thread(target=lambda: answers.extend(load(url, KEY, burst, concurrency=6)))
            loader.start()
            busy = "+document.querySelector('#in-flight').textContent >= 3 && document.querySelectorAll('#batches tr.batch').length"
            page.wait_for(f"{busy} && +document.querySelector('#total-succeeded').textContent >= {len(warm) + 4}", timeout_s=120)
            latest = page.evaluate("document.querySelector('#runs .status-succeeded').closest('.run').dataset.run")
            page.evaluate(f"select('{latest}')")  # the page's own handler for a click on a run
            page.wait_for(f"document.querySelector('#timeline-title').textContent.startsWith('{latest} ')")
            page.wait_for("document.querySelectorAll('#workflows tr.workflow').length === 2")
            shown = {
                "in_flight": int(page.evaluate("document.querySelector('#in-flight').textContent")),
                "succeeded": int(page.evaluate("document.querySelector('#total-succeeded').textContent")),
                "timeline_bars": page.evaluate("document.querySelectorAll('#timeline g.span').length"),
            }
            page.screenshot(RESULTS / "dashboard.png")
            loader.join()
    statuses = [a["status"] for a in warm + answers]
    figures = {
        "screenshot": "benchmarks/results/dashboard.png",
        "shown": dict(shown, timeline_of=latest),
        "statuses": {s: statuses.count(s) for s in sorted(set(statuses))},
        "workers": args.workers,
        **stamp([], started),
    }
    report("dashboard", figures)


if __name__ == "__main__":
    main()
