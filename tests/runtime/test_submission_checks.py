"""Every value a request brings is checked at submission: a bad one raises a WorkflowError from
``Engine.submit`` at once, naming the input, instead of being queued to fail later (or to
"succeed" with a black image)."""

import asyncio
import math

import pytest

from legodiffusion import Engine, EngineConfig
from legodiffusion.workflow.catalog import flux_schnell_txt2img, sd3_txt2img, sd_txt2img
from legodiffusion.workflow.errors import WorkflowError

BASE = dict(prompt="a fox", steps=2, guidance_scale=5.0, seed=1, height=64, width=64)

#: name -> (workflow, the request's bad inputs, the issue's path)
BAD = {
    "steps 0": ("sd-txt2img", dict(steps=0), "inputs.steps"),
    "height 65 (SD factor 8)": ("sd-txt2img", dict(height=65), "inputs.height"),
    "negative width": ("sd-txt2img", dict(width=-64), "inputs.width"),
    "width 0": ("sd-txt2img", dict(width=0), "inputs.width"),
    "seed 2**64": ("sd-txt2img", dict(seed=2**64), "inputs.seed"),
    "negative seed": ("sd-txt2img", dict(seed=-1), "inputs.seed"),
    "unknown sampler": ("sd-txt2img", dict(sampler="nope"), "inputs.sampler"),
    "flow_euler on SD1.5": ("sd-txt2img", dict(sampler="flow_euler"), "inputs.sampler"),
    "euler on SD3": ("sd3-txt2img", dict(sampler="euler"), "inputs.sampler"),
    "guidance 1e308": ("sd-txt2img", dict(guidance_scale=1e308), "inputs.guidance_scale"),
    "guidance nan": ("sd-txt2img", dict(guidance_scale=math.nan), "inputs.guidance_scale"),
    "guidance inf": ("sd-txt2img", dict(guidance_scale=math.inf), "inputs.guidance_scale"),
    "guidance 10**400 (no float)": ("sd-txt2img", dict(guidance_scale=10**400), "inputs.guidance_scale"),
    "LoRA weight nan": ("sd-txt2img", dict(loras="lora-a:nan"), "inputs.loras"),
    "LoRA weight inf": ("sd-txt2img", dict(loras="lora-a:inf"), "inputs.loras"),
    "Flux height 72 (factor 8 x 2)": ("flux-schnell-txt2img", dict(height=72), "inputs.height"),
    "max_sequence_length 0": ("flux-schnell-txt2img", dict(max_sequence_length=0), "inputs.max_sequence_length"),
    "lora_k negative": ("sd-txt2img", dict(lora_k=-1), "inputs.lora_k"),
}
FLUX_BASE = dict(prompt="a fox", steps=1, seed=1, height=32, width=32, max_sequence_length=16)


def _request(workflow: str, bad: dict) -> dict:
    base = FLUX_BASE if workflow.startswith("flux") else dict(BASE, max_sequence_length=16) if workflow.startswith("sd3") else BASE
    return {**base, **bad}


@pytest.fixture(scope="module")
def outcomes(tiny_models):
    """Each bad request on one engine: ("rejected", the WorkflowError) or, where it was
    accepted, ("accepted", its RunResult once it ran)."""
    models = {name: tiny_models[name] for name in ("sd15", "sd3", "flux-schnell", "lora-sd15-a")}
    models["lora-a"] = models.pop("lora-sd15-a")

    async def main():
        async with Engine(models, EngineConfig(workers=1, device="cpu")) as engine:
            for spec in (sd_txt2img("sd15"), sd3_txt2img("sd3"), flux_schnell_txt2img("flux-schnell")):
                engine.add_workflow(spec)
            out, runs = {}, {}
            for name, (workflow, bad, _) in BAD.items():
                try:
                    runs[name] = engine.submit(workflow, _request(workflow, bad))
                except Exception as exc:  # noqa: BLE001 - any other kind is a failure the test names
                    out[name] = ("rejected", exc)
            for name, run in runs.items():
                out[name] = ("accepted", await asyncio.wait_for(run.future, 600))
            return out

    return asyncio.run(main())


@pytest.mark.parametrize("case", sorted(BAD))
def test_bad_values_are_rejected_at_submission(outcomes, case):
    kind, what = outcomes[case]
    if kind == "accepted":
        pytest.fail(f"{case}: accepted, then {what.status} ({what.error})")
    assert isinstance(what, WorkflowError), f"{case}: {type(what).__name__}: {what}"
    paths = [i.path for i in what.issues]
    assert BAD[case][2] in paths, what
    assert all(i.code in ("bad_value", "type_mismatch") for i in what.issues), what


def test_messages_say_what_to_change(outcomes):
    def message(case):
        return str(outcomes[case][1])

    assert "multiples of 8" in message("height 65 (SD factor 8)") and "65" in message("height 65 (SD factor 8)")
    assert "multiples of 16" in message("Flux height 72 (factor 8 x 2)")
    assert ">= 1" in message("steps 0")
    assert "2**64" in message("seed 2**64") or str(2**64 - 1) in message("seed 2**64")
    assert "euler" in message("unknown sampler") and "'nope'" in message("unknown sampler")
    assert "flow_euler" in message("flow_euler on SD1.5") and "sd" in message("flow_euler on SD1.5")
    assert "finite" in message("guidance nan") and "finite" in message("LoRA weight nan")
    assert "<= 100" in message("guidance 1e308")


def test_a_literal_that_a_node_would_fail_on_is_rejected_at_submission(tiny_models):
    """A workflow's own constant (here an unknown sampler) is checked with the model's facts too."""
    spec = sd_txt2img("sd15", name="bad-literal")
    data = spec.to_json()
    init = next(n for n in data["nodes"] if n.get("op") == "init_latents")
    init["inputs"]["sampler"] = {"literal": "nope"}
    from legodiffusion.workflow.spec import spec_from_json

    async def main():
        async with Engine({"sd15": tiny_models["sd15"]}, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(spec_from_json(data))
            with pytest.raises(WorkflowError) as info:
                engine.submit("bad-literal", dict(BASE))
            return info.value

    err = asyncio.run(main())
    assert [(i.code, i.path) for i in err.issues] == [("bad_value", f"nodes.{init['id']}.inputs.sampler")]


def _edit(model: str):
    """A custom image-to-image graph: the image encoded, noised to strength 0.5, decoded."""
    from legodiffusion.workflow.builder import WorkflowBuilder

    wf = WorkflowBuilder(f"{model}-edit", models={"base": model})
    image, strength, seed = wf.input("image", "image"), wf.input("strength", "float", default=0.5), wf.input("seed", "int", default=0)
    enc = wf.call("vae_encode", model="base", pixels=wf.call("prepare_image", model="base", image=image).pixels, seed=seed, id="encode")
    init = wf.call(
        "init_latents",
        model="base",
        mode="img2img",
        image_latents=enc.latents,
        rng=enc.rng,
        steps=2,
        strength=strength,
        sampler="flow_euler",
    )
    wf.output("image", wf.call("vae_decode", model="base", latents=init.latents).image)
    return wf.build()


def test_an_edit_of_a_family_without_one_is_rejected_naming_the_nodes(tiny_models):
    """FLUX.2, Z-Image and Qwen-Image have no edit start (their strength rounding is not known
    here), and FLUX.2's and Qwen-Image's VAEs no encoding: a graph asking for one is refused at
    submission naming the node and port (it was a KeyError: a 500 through the server)."""
    from tests.helpers import random_image

    names = ("z-image-turbo", "flux2-klein", "qwen-image")

    async def main():
        async with Engine({n: tiny_models[n] for n in names}, EngineConfig(workers=1, device="cpu")) as engine:
            out = {}
            for name in names:
                engine.add_workflow(_edit(name))
                with pytest.raises(WorkflowError) as info:
                    engine.submit(f"{name}-edit", {"image": random_image(32, 32)})
                out[name] = {i.path: i.message for i in info.value.issues}
            return out

    issues = asyncio.run(main())
    assert list(issues["z-image-turbo"]) == ["inputs.strength"], "Z-Image encodes; it has no img2img start"
    assert "zimage model has no img2img start" in issues["z-image-turbo"]["inputs.strength"]
    for name, family in (("flux2-klein", "flux2"), ("qwen-image", "qwenimage")):
        assert sorted(issues[name]) == ["inputs.strength", "nodes.encode.inputs.pixels"], issues[name]
        assert f"encoding images is not supported for a {family} model" in issues[name]["nodes.encode.inputs.pixels"]


def test_valid_edge_values_are_still_accepted(tiny_models):
    """The bounds are inclusive: seed 2**64 - 1, guidance 100, a LoRA at weight 0; and a request
    whose guidance_scale <= 1 takes the unguided branch (no guidance port sees it)."""

    async def main():
        models = {"sd15": tiny_models["sd15"], "lora-a": tiny_models["lora-sd15-a"]}
        async with Engine(models, EngineConfig(workers=1, device="cpu")) as engine:
            engine.add_workflow(sd_txt2img("sd15"))
            runs = [
                engine.submit("sd-txt2img", dict(BASE, steps=1, seed=2**64 - 1)),
                engine.submit("sd-txt2img", dict(BASE, steps=1, guidance_scale=100)),
                engine.submit("sd-txt2img", dict(BASE, steps=1, loras="lora-a:0")),
                engine.submit("sd-txt2img", dict(BASE, steps=1, guidance_scale=-3.0)),
            ]
            return [await r.future for r in runs]

    results = asyncio.run(main())
    assert all(r.ok for r in results), [r.error for r in results]
