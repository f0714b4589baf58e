"""Reference profiles and simulated workflows of FLUX.2-klein, Z-Image(-Turbo) and Qwen-Image."""

import re
from collections import Counter

import pytest

from legodiffusion.sim import families
from legodiffusion.sim.experiment import run_trace
from legodiffusion.sim.reference import PX_1024, ReferenceCost, load_reference
from legodiffusion.sim.traces import poisson
from legodiffusion.sim.workload import WorkflowDef, Workload, _flux, many_workflows

NEW = ("flux2-klein-4b", "flux2-klein-9b", "z-image-turbo", "z-image", "qwen-image")
OPS = ("denoise", "encode_prompt", "vae_decode", "vae_encode")


@pytest.fixture(scope="module")
def cost():
    return ReferenceCost()


def _named(sources: dict, text: str) -> list[str]:
    """The entries of ``sources`` a source string cites, as `;`-separated items that each start with one."""
    return [item.strip().split(" ")[0] for item in text.split(";") if item.strip().split(" ")[0] not in sources]


def test_every_new_profile_loads_with_a_source_for_each_figure(cost):
    data = load_reference("h100")
    for model in NEW:
        entry = data["models"][model]
        for op in OPS:
            spec = entry[op]
            assert spec["latency_s"] > 0 and spec["activation_gb"] > 0 and spec["batch_curve"] in data["batch_curves"], (model, op)
            assert not _named(data["sources"], spec["source"]), f"{model}.{op} cites {_named(data['sources'], spec['source'])}"
            assert cost.exec_s(op, "default", model, 1, PX_1024) == pytest.approx(spec["latency_s"])
        arch = entry["architecture"]
        assert arch["source"] in data["sources"]
        assert {"latent_channels", "vae_factor", "patch", "hidden", "text_tokens", "text_dim", "pooled_dim", "dtype_bytes"} <= set(arch)
        assert entry["weights_from"]["architecture"] == model  # its bytes: test_the_sim_file_holds_the_computed_weights
        for comp in ("denoiser", "text_encoder", "vae"):
            assert entry["weights_bytes"][comp] == cost.weight_bytes(model, comp) > 0, (model, comp)


def test_steps_are_flop_scaled_from_the_flux_dev_anchor(cost):
    """params x tokens, anchored on FLUX.1-dev's step (the file's rule), with tokens from each
    model's architecture: the image's 4096 plus its text tokens; parameters are the bf16 bytes / 2."""
    per_param_token = cost.exec_s("denoise", "default", "flux-dev", 1, PX_1024) / (11.9e9 * (4096 + 512))
    models = load_reference("h100")["models"]
    for model in ("flux2-klein-4b", "flux2-klein-9b", "z-image-turbo", "qwen-image"):
        tokens = 4096 + models[model]["architecture"]["text_tokens"]
        expected = models[model]["weights_bytes"]["denoiser"] / 2 * tokens * per_param_token
        assert cost.exec_s("denoise", "default", model, 1, PX_1024) == pytest.approx(expected, rel=0.01), model


def test_family_graphs_have_the_model_cards_steps_and_guidance_branches():
    def counts(model):
        spec, inputs = families.txt2img(model, model)
        tmpl = Workload([WorkflowDef(model, spec, inputs, 1.0)], ReferenceCost()).template(model)
        return Counter(n.op for n in tmpl.nodes)

    assert counts("flux2-klein-4b")["denoise"] == 4 and counts("flux2-klein-4b")["encode_prompt"] == 1
    assert counts("z-image-turbo")["denoise"] == 9
    qwen = counts("qwen-image")
    assert qwen["denoise"] == 100 and qwen["encode_prompt"] == 2 and qwen["sampler_step"] == 50, "true CFG: two calls per step"
    with pytest.raises(KeyError, match="model 'sdxl' has no simulated family workflow"):
        families.txt2img("sdxl", "x")
    with pytest.raises(ValueError, match="guidance: flux2-klein-4b is guidance-distilled"):
        families.txt2img("flux2-klein-4b", "x", guidance=3.5)
    with pytest.raises(ValueError, match="guidance: qwen-image runs CFG in this workload"):
        families.txt2img("qwen-image", "x", guidance=1.0)


def test_a_request_costs_what_its_model_and_steps_say(cost):
    wfs = [WorkflowDef(m, *families.txt2img(m, m), 1.0) for m in ("flux2-klein-4b", "z-image-turbo", "qwen-image")]
    wfs += [_flux("flux-dev", "flux-dev", 28, 1.0), _flux("flux-schnell", "flux-schnell", 4, 1.0, schnell=True)]
    solo = Workload(wfs, cost).solo_s
    assert solo["z-image-turbo"] < solo["flux-dev"], "9 steps of a 6B DiT against 28 of a 12B one"
    assert solo["flux2-klein-4b"] < solo["flux-schnell"], "4 steps of a 4B DiT against 4 of a 12B one"
    assert solo["qwen-image"] > 5 * solo["flux-dev"], "50 steps x 2 calls of a 20B DiT"
    assert 0.15 < solo["flux2-klein-4b"] < 0.5 and solo["z-image-turbo"] < 1.0, "sub-second, as their cards say"


def test_the_many_workload_serves_the_new_families(cost):
    wl = Workload(many_workflows(0), cost)
    new = {w.name for w in wl.workflows if w.spec.models["base"] in families.MODELS}
    assert {w.spec.models["base"] for w in wl.workflows} >= {"flux2-klein-4b", "z-image-turbo", "qwen-image"}
    assert all(re.match(r"w\d\d-(klein4b|zit|qwenimg)-", n) for n in new)
    trace = poisson(1.0, 40.0, {n: 1.0 for n in new}, seed=3)
    assert {next(w for w in wl.workflows if w.name == a.workflow).spec.models["base"] for a in trace} == {
        "flux2-klein-4b",
        "z-image-turbo",
        "qwen-image",
    }
    result = run_trace(trace, wl, "ours", 8, drain_s=120.0)
    # every request finishes; a few miss their deadline (2x the solo time) on 8 GPUs
    assert result.requests == len(trace) and result.rejected == result.unfinished == 0 and result.met > len(trace) / 2
    assert set(result.latency_by_workflow) == {a.workflow for a in trace}
    assert sum(len(lat) for lat in result.latency_by_workflow.values()) == len(trace)
    for name, lat in result.latency_by_workflow.items():
        # Qwen-Image's two guidance branches may run on two GPUs at once: half its solo time at best
        floor = wl.solo_s[name] / (2 if "qwenimg" in name else 1)
        assert min(lat) >= floor * 0.999, name
