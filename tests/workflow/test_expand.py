import pytest

from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.expand import Expander, bind_inputs


def expander():
    return Expander(sd_txt2img("sd15"), default_registry())


def test_loops_unroll_and_branches_resolve_per_request():
    ex = expander()
    guided = ex.template(bind_inputs(ex.spec, {"prompt": "a", "steps": 4, "guidance_scale": 3.0}))
    plain = ex.template(bind_inputs(ex.spec, {"prompt": "a", "steps": 4, "guidance_scale": 1.0}))
    ops = [n.op for n in guided.nodes]
    assert ops.count("denoise") == 8 and ops.count("sampler_step") == 4 and ops.count("encode_prompt") == 2
    assert [n.op for n in plain.nodes].count("denoise") == 4
    assert "guidance.denoise[3].unet_uncond" in [n.key for n in guided.nodes]
    # the two branches of a step read the same latents and are independent of each other
    cond = next(i for i, n in enumerate(guided.nodes) if n.key == "guidance.denoise[0].unet_cond")
    uncond = next(i for i, n in enumerate(guided.nodes) if n.key == "guidance.denoise[0].unet_uncond")
    assert uncond not in guided.consumers[cond] and cond not in guided.consumers[uncond]


def test_templates_are_cached_by_structural_inputs_only():
    ex = expander()
    a = ex.template(bind_inputs(ex.spec, {"prompt": "a", "steps": 4, "seed": 1}))
    b = ex.template(bind_inputs(ex.spec, {"prompt": "b", "steps": 4, "seed": 2}))
    c = ex.template(bind_inputs(ex.spec, {"prompt": "b", "steps": 5}))
    assert a is b and c is not a
    assert ex.structural == ["approx_cache", "guidance_scale", "steps"]


def test_every_intermediate_has_a_consumer_count():
    ex = expander()
    t = ex.template(bind_inputs(ex.spec, {"prompt": "a", "steps": 2}))
    image = t.outputs["image"]
    assert t.uses[image] == 1
    assert all(v >= 0 for v in t.uses.values())


@pytest.mark.parametrize(
    "given,code,path",
    [
        ({}, "missing_input", "inputs.prompt"),
        ({"prompt": 3}, "type_mismatch", "inputs.prompt"),
        ({"prompt": "a", "stepz": 3}, "unknown_request_input", "inputs.stepz"),
        ({"prompt": "a", "steps": 2.5}, "type_mismatch", "inputs.steps"),
    ],
)
def test_bad_request_inputs(given, code, path):
    with pytest.raises(WorkflowError) as info:
        bind_inputs(sd_txt2img(), given)
    assert [(i.code, i.path) for i in info.value.issues] == [(code, path)]


def test_a_request_without_a_step_cache_carries_no_step_cache_node():
    """The step cache's init node is in a request's graph only when it asks for one: off, the
    loop starts from a null cache and the denoiser nodes read it as absent."""
    from legodiffusion.workflow.catalog import flux_txt2img

    ex = Expander(flux_txt2img("flux"), default_registry())
    size = {"prompt": "a", "steps": 3, "height": 64, "width": 64}
    off = ex.template(bind_inputs(ex.spec, size))
    on = ex.template(bind_inputs(ex.spec, dict(size, step_cache='{"kind": "first_block", "threshold": 0.08}')))
    assert [n.op for n in off.nodes].count("init_step_cache") == 0
    assert [n.op for n in on.nodes].count("init_step_cache") == 1
    assert [n.op for n in off.nodes].count("denoise") == [n.op for n in on.nodes].count("denoise") == 3
