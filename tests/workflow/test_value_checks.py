"""Values are checked against their ports' declared types and ranges: a workflow's literals when
it is registered, a request's inputs (and the literals again, with the model's facts) when it is
submitted. Every check here runs without loading a model."""

import copy
import math

import pytest

from legodiffusion.models.components import PipelineConfig
from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import flux_txt2img, sd_txt2img
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.expand import Expander, bind_inputs
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate
from legodiffusion.workflow.values import check_values
from tests.workflow.test_validation_errors import GOOD, body

SD = PipelineConfig("sd", 4, 8, 64, {}, 77, 32)
FLUX = PipelineConfig("flux", 4, 8, 1024, {}, 77, 32)


def issues_of(data):
    with pytest.raises(WorkflowError) as info:
        validate(spec_from_json(data), default_registry())
    return [(i.code, i.path) for i in info.value.issues], info.value


def mutate(fn):
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


# -- literals, when the workflow is registered ----------------------------------------------------


def test_a_literal_out_of_its_ports_range():
    issues, err = issues_of(mutate(lambda d: d["nodes"][1]["inputs"].update(steps={"literal": 0})))
    assert issues == [("bad_value", "nodes.init.inputs.steps")]
    assert "steps must be >= 1, got 0" in str(err)


@pytest.mark.parametrize("value", [math.nan, math.inf, 1e9])
def test_a_float_literal_must_be_finite_and_in_range(value):
    issues, err = issues_of(mutate(lambda d: body(d)[0]["inputs"].update(guidance={"literal": value})))
    assert issues == [("bad_value", "nodes.loop.body.unet.inputs.guidance")]


@pytest.mark.parametrize("loras", ["a:nan", "a:inf", "a:x", "a:1000"])
def test_a_literal_patch_set_is_parsed(loras):
    issues, err = issues_of(mutate(lambda d: d["nodes"][0]["inputs"].update(loras={"literal": loras})))
    assert issues == [("bad_value", "nodes.enc.inputs.loras")]


def test_an_ordering_predicate_on_text_is_a_type_error():
    spec = sd_txt2img().to_json()
    cond = next(n for n in spec["nodes"] if n["id"] == "guidance")
    cond["cond"]["if"]["value"] = "high"
    issues, _ = issues_of(spec)
    assert issues == [("type_mismatch", f"nodes.{cond['id']}.if.value")]


# -- request inputs ---------------------------------------------------------------------------------


@pytest.mark.parametrize("value", [math.nan, math.inf, -math.inf, 10**400])
def test_a_float_input_must_be_a_finite_float(value):
    with pytest.raises(WorkflowError) as info:
        bind_inputs(sd_txt2img(), {"prompt": "x", "guidance_scale": value})
    assert [(i.code, i.path) for i in info.value.issues] == [("type_mismatch", "inputs.guidance_scale")]
    assert "finite" in str(info.value)


def _check(spec, inputs, cfg=SD):
    expander = Expander(spec, default_registry())
    bound = bind_inputs(spec, inputs)
    check_values(expander.template(bound), bound, expander.registry, lambda model: cfg)


def _issues(spec, inputs, cfg=SD):
    with pytest.raises(WorkflowError) as info:
        _check(spec, inputs, cfg)
    return [(i.code, i.path) for i in info.value.issues], str(info.value)


def test_valid_requests_pass():
    _check(sd_txt2img(), {"prompt": "x", "steps": 2, "height": 64, "width": 128, "seed": 2**64 - 1})
    _check(sd_txt2img(), {"prompt": "x", "steps": 2, "sampler": "dpmpp_2m_karras"})
    _check(flux_txt2img(), {"prompt": "x", "steps": 2, "height": 32, "width": 48}, FLUX)


@pytest.mark.parametrize(
    "inputs, path, words",
    [
        ({"steps": 0}, "inputs.steps", "steps must be >= 1, got 0"),
        ({"height": 65}, "inputs.height", "multiples of 8"),
        ({"width": -8}, "inputs.width", "width must be >= 1"),
        ({"seed": 2**64}, "inputs.seed", "seed must be <= 18446744073709551615"),
        ({"seed": -1}, "inputs.seed", "seed must be >= 0"),
        ({"sampler": "nope"}, "inputs.sampler", "unknown sampler 'nope'"),
        ({"sampler": "flow_euler"}, "inputs.sampler", "does not fit a sd model"),
        ({"guidance_scale": 1e308}, "inputs.guidance_scale", "guidance_scale must be <= 100"),
        ({"loras": "x:nan"}, "inputs.loras", "finite"),
        ({"lora_k": -1}, "inputs.lora_k", "lora_k must be >= 0"),
    ],
)
def test_bad_inputs_name_the_input(inputs, path, words):
    issues, message = _issues(sd_txt2img(), {"prompt": "x", "steps": 2, **inputs})
    assert issues == [("bad_value", path)]
    assert words in message


def test_every_bad_input_is_listed():
    issues, _ = _issues(sd_txt2img(), {"prompt": "x", "steps": 0, "seed": -1, "sampler": "nope", "lora_k": -1})
    assert sorted(issues) == [("bad_value", f"inputs.{n}") for n in ("lora_k", "sampler", "seed", "steps")]


def test_flux_sizes_are_multiples_of_twice_the_vae_factor():
    issues, message = _issues(flux_txt2img(), {"prompt": "x", "steps": 2, "height": 40}, FLUX)
    assert issues == [("bad_value", "inputs.height")]
    assert "multiples of 16" in message


def test_a_required_port_fed_a_null_input():
    data = copy.deepcopy(GOOD)
    data["inputs"]["sampler"] = {"type": "text", "default": None}
    data["nodes"][1]["inputs"]["sampler"] = {"input": "sampler"}
    issues, message = _issues(spec_from_json(data), {"prompt": "x"})
    assert issues == [("bad_value", "inputs.sampler")]
    assert "sampler is required" in message


def test_a_literal_is_checked_with_the_models_facts():
    data = copy.deepcopy(GOOD)
    data["nodes"][1]["inputs"]["sampler"] = {"literal": "flow_euler"}
    issues, _ = _issues(spec_from_json(data), {"prompt": "x"})
    assert issues == [("bad_value", "nodes.init.inputs.sampler")]
