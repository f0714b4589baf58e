"""The simulator imports and runs without torch, diffusers or transformers: it only reads the
operators' declarations, never executes them (checked in a fresh interpreter, as this one has
torch loaded by other tests)."""

import json
import subprocess
import sys

HEAVY = ("torch", "diffusers", "transformers")

SNIPPET = f"""
import json, sys
import legodiffusion.sim.experiment, legodiffusion.sim.workload, legodiffusion.sim.reference
from legodiffusion.sim.workload import Workload, paper_workflows
from legodiffusion.sim.reference import ReferenceCost
from legodiffusion.sim.experiment import run_trace
from legodiffusion.sim.traces import poisson
wl = Workload(paper_workflows(), ReferenceCost())
result = run_trace(poisson(0.5, 30, wl.mix, 1), wl, "ours", 4)
print(json.dumps({{"requests": result.requests, "loaded": [m for m in {HEAVY!r} if m in sys.modules]}}))
"""


def test_simulator_runs_without_torch_diffusers_or_transformers():
    proc = subprocess.run([sys.executable, "-c", SNIPPET], capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr
    out = json.loads(proc.stdout.strip().splitlines()[-1])
    assert out["requests"] > 0
    assert out["loaded"] == [], f"the simulator imported {out['loaded']}"
