"""Every kind of bad workflow gets its own exact error, naming the offending node/port path."""

import copy

import pytest

from legodiffusion.ops import default_registry
from legodiffusion.workflow.catalog import sd_txt2img
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate

GOOD = {
    "name": "small",
    "inputs": {"prompt": {"type": "text"}, "seed": {"type": "int", "default": 0}, "steps": {"type": "int", "default": 2}},
    "models": {"base": "sd15"},
    "nodes": [
        {"id": "enc", "op": "encode_prompt", "mode": "default", "model": "base", "inputs": {"text": {"input": "prompt"}}},
        {
            "id": "init",
            "op": "init_latents",
            "model": "base",
            "inputs": {"seed": {"input": "seed"}, "steps": {"input": "steps"}, "sampler": {"literal": "euler"}},
        },
        {
            "id": "loop",
            "loop": {
                "count": {"input": "steps"},
                "carry": {"latents": {"node": "init", "port": "latents"}, "sampler": {"node": "init", "port": "sampler"}},
                "body": [
                    {
                        "id": "unet",
                        "op": "denoise",
                        "model": "base",
                        "inputs": {
                            "latents": {"carry": "latents"},
                            "sampler": {"carry": "sampler"},
                            "embedding": {"node": "enc", "port": "embedding"},
                        },
                    },
                    {
                        "id": "step",
                        "op": "sampler_step",
                        "mode": "unguided",
                        "inputs": {
                            "latents": {"carry": "latents"},
                            "sampler": {"carry": "sampler"},
                            "noise": {"node": "unet", "port": "noise"},
                        },
                    },
                ],
                "next": {"latents": {"node": "step", "port": "latents"}, "sampler": {"node": "step", "port": "sampler"}},
            },
        },
        {"id": "dec", "op": "vae_decode", "model": "base", "inputs": {"latents": {"node": "loop", "port": "latents"}}},
    ],
    "outputs": {"image": {"node": "dec", "port": "image"}},
}


def check(data):
    return validate(spec_from_json(data), default_registry())


def issues_of(data):
    with pytest.raises(WorkflowError) as info:
        check(data)
    return [(i.code, i.path) for i in info.value.issues], info.value


def mutate(fn):
    data = copy.deepcopy(GOOD)
    fn(data)
    return data


def body(data):
    return data["nodes"][2]["loop"]["body"]


def test_the_base_spec_is_valid():
    check(GOOD)
    validate(sd_txt2img(), default_registry())


def test_unknown_operator():
    issues, err = issues_of(mutate(lambda d: d["nodes"][0].update(op="encode_promt")))
    assert issues == [("unknown_op", "nodes.enc.op")]
    assert "unknown operator 'encode_promt'" in str(err)


def test_unknown_mode():
    issues, _ = issues_of(mutate(lambda d: body(d)[1].update(mode="sideways")))
    assert issues == [("unknown_mode", "nodes.loop.body.step.mode")]


def test_wrong_port():
    issues, err = issues_of(mutate(lambda d: d["nodes"][0]["inputs"].update(txt={"input": "prompt"})))
    assert issues == [("unknown_port", "nodes.enc.inputs.txt")]
    assert "has no input 'txt'" in str(err)


def test_type_mismatch():
    # latents port fed with a text embedding
    issues, err = issues_of(mutate(lambda d: d["nodes"][3]["inputs"].update(latents={"node": "enc", "port": "embedding"})))
    assert issues == [("type_mismatch", "nodes.dec.inputs.latents")]
    assert "takes latent, got embedding" in str(err)


def test_missing_input():
    issues, err = issues_of(mutate(lambda d: body(d)[0]["inputs"].pop("embedding")))
    assert issues == [("missing_input", "nodes.loop.body.unet.inputs.embedding")]
    assert "required input 'embedding'" in str(err)


def test_cycle():
    def make_cycle(d):
        d["nodes"][0]["inputs"]["text"] = {"node": "fmt", "port": "text"}
        d["nodes"].append(
            {"id": "fmt", "op": "format_text", "inputs": {"template": {"literal": "{text}"}, "text": {"node": "fmt2", "port": "text"}}}
        )
        d["nodes"].append(
            {"id": "fmt2", "op": "format_text", "inputs": {"template": {"literal": "{text}"}, "text": {"node": "fmt", "port": "text"}}}
        )

    issues, err = issues_of(mutate(make_cycle))
    assert issues == [("cycle", "nodes.fmt")]
    assert "cycle: fmt -> fmt2 -> fmt" in str(err)


def test_literal_where_a_request_input_is_required():
    issues, err = issues_of(mutate(lambda d: d["nodes"][1]["inputs"].update(seed={"literal": 42})))
    assert issues == [("literal_not_allowed", "nodes.init.inputs.seed")]
    assert "request input is required" in str(err)


def test_unknown_request_input():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][0]["inputs"].update(text={"input": "promt"})))
    assert issues == [("unknown_request_input", "nodes.enc.inputs.text")]


def test_loop_count_from_a_node_is_rejected():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][2]["loop"].update(count={"node": "enc", "port": "embedding"})))
    assert issues == [("not_static", "nodes.loop.count")]


def test_reference_into_a_loop_body_from_outside():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][3]["inputs"].update(latents={"node": "step", "port": "latents"})))
    assert issues == [("not_visible", "nodes.dec.inputs.latents")]


def test_unknown_model_slot():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][3].update(model="refiner")))
    assert issues == [("unknown_model_slot", "nodes.dec.model")]


def test_duplicate_id():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][3].update(id="enc")))
    assert ("duplicate_id", "nodes.enc") in issues


def test_malformed_json_names_its_path():
    issues, _ = issues_of(mutate(lambda d: d["nodes"][0]["inputs"].update(text={"inpt": "prompt"})))
    assert issues == [("malformed", "nodes.enc.inputs.text")]


@pytest.mark.parametrize(
    "default_from,code",
    [("nope", "unknown_request_input"), ("prompt", "type_mismatch"), ("again", "bad_default")],
)
def test_an_input_defaulting_to_a_bad_input(default_from, code):
    def add(data):
        data["inputs"]["again"] = {"type": "int", "default_from": "seed"}
        data["inputs"]["more_steps"] = {"type": "int", "default_from": default_from}

    found, _ = issues_of(mutate(add))
    assert found == [(code, "inputs.more_steps.default_from")]
