import json

from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate


def test_builtin_workflow_round_trips_losslessly_through_json():
    spec = sd_txt2img("sd15", prompt_template="a photo of {text}")
    data = json.loads(json.dumps(spec.to_json()))
    again = spec_from_json(data)
    assert again == spec
    assert again.to_json() == data
    assert again.id == spec.id
    validate(again, default_registry())


def test_content_address_changes_with_content_only():
    a, b = sd_txt2img("sd15"), sd_txt2img("sd15")
    assert a.id == b.id
    assert sd_txt2img("other").id != a.id


def test_an_input_defaulting_to_another_round_trips_and_binds_its_value():
    from legodiffusion.workflow.expand import bind_inputs
    from legodiffusion.workflow.hires import sd_hires

    spec = sd_hires("sd15")
    data = json.loads(json.dumps(spec.to_json()))
    assert data["inputs"]["hires_steps"] == {
        "type": "int",
        "default": None,
        "doc": data["inputs"]["hires_steps"]["doc"],
        "default_from": "steps",
    }
    again = spec_from_json(data)
    assert again == spec and again.id == spec.id
    validate(again, default_registry())
    assert bind_inputs(spec, {"prompt": "a", "steps": 7})["hires_steps"] == 7
    assert bind_inputs(spec, {"prompt": "a", "steps": 7, "hires_steps": None})["hires_steps"] == 7
    assert bind_inputs(spec, {"prompt": "a", "steps": 7, "hires_steps": 3})["hires_steps"] == 3
    assert bind_inputs(spec, {"prompt": "a", "seed": 5})["hires_seed"] == 5
