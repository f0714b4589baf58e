"""Three workflows sharing one base model, served together on two workers."""

import numpy as np

from legodiffusion.workflow.catalog import sd_txt2img
from tests.helpers import run_requests

WORKFLOWS = [
    sd_txt2img("sd15", name="guided"),
    sd_txt2img("sd15", name="styled", prompt_template="an oil painting of {text}"),
    sd_txt2img("sd15", name="fast"),
]


def mix(n=30):
    out = []
    for i in range(n):
        wf = ["guided", "styled", "fast"][i % 3]
        args = {
            "guided": dict(steps=4, guidance_scale=7.0),
            "styled": dict(steps=3, guidance_scale=5.0),
            "fast": dict(steps=2, guidance_scale=1.0, width=96),
        }[wf]
        out.append(dict(args, workflow=wf, prompt=f"subject {i}", seed=i, height=64, width=args.get("width", 64)))
    return out


def test_three_workflows_share_the_base_model_and_batch_across_workflows(sd15):
    requests = mix()
    results, engine = run_requests(sd15, requests, workers=2, workflows=WORKFLOWS)
    assert all(r.ok for r in results)
    for w in engine.workers:
        assert w.models.load_counts[("sd15", "denoiser", None)] <= 1, "the base model is loaded at most once per worker"
        assert all(n == 1 for n in w.models.load_counts.values())
    assert engine.coordinator.stats.cross_workflow_batches > 0
    assert engine.plane.live_count() == 0
    # every image equals its unbatched single-request run
    singles, _ = run_requests(sd15, requests, workers=1, sequential=True, workflows=WORKFLOWS, default_throughput_batch=1)
    for shared, alone in zip(results, singles, strict=True):
        assert np.abs(shared.outputs["image"].numpy() - alone.outputs["image"].numpy()).max() <= 1e-4
