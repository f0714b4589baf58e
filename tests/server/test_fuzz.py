"""Property-based fuzzing: workflow specs and ComfyUI graphs never crash the parser/validator with
anything but their own error, and the HTTP API (schemathesis over our OpenAPI spec) answers no
5xx and does not hang."""

import copy

import hypothesis.strategies as st
import pytest
from hypothesis import HealthCheck, given, settings

from legodiffusion.ops import default_registry
from legodiffusion.server.comfy import SUPPORTED, ComfyError, parse
from legodiffusion.workflow.errors import WorkflowError
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate
from tests.server.test_comfy import PROMPT
from tests.workflow.test_validation_errors import GOOD

scalars = st.one_of(st.none(), st.booleans(), st.integers(-5, 100), st.floats(allow_nan=False, width=16), st.text(max_size=8))
json_values = st.recursive(
    scalars, lambda inner: st.one_of(st.lists(inner, max_size=4), st.dictionaries(st.text(max_size=6), inner, max_size=4)), max_leaves=12
)


def _paths(obj, prefix=()):
    yield prefix
    if isinstance(obj, dict):
        for k, v in obj.items():
            yield from _paths(v, prefix + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            yield from _paths(v, prefix + (i,))


def _mutate(doc, path, value):
    doc = copy.deepcopy(doc)
    if not path:
        return value
    target = doc
    for p in path[:-1]:
        target = target[p]
    target[path[-1]] = value
    return doc


GOOD_PATHS = list(_paths(GOOD))
PROMPT_PATHS = list(_paths(PROMPT))


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.sampled_from(GOOD_PATHS), json_values)
def test_mutated_workflow_specs_fail_only_with_workflow_errors(path, value):
    registry = default_registry()
    try:
        validate(spec_from_json(_mutate(GOOD, path, value)), registry)
    except WorkflowError as exc:
        assert exc.issues and all(i.path for i in exc.issues)


@settings(max_examples=100, deadline=None)
@given(json_values)
def test_arbitrary_json_specs_fail_only_with_workflow_errors(value):
    try:
        validate(spec_from_json(value), default_registry())
    except WorkflowError:
        pass


@settings(max_examples=300, deadline=None)
@given(st.sampled_from(PROMPT_PATHS), st.one_of(json_values, st.sampled_from(sorted(SUPPORTED))))
def test_mutated_comfy_graphs_fail_only_with_comfy_errors(path, value):
    try:
        parse(_mutate(PROMPT, path, value), {"sd15"})
    except ComfyError:
        pass


@settings(max_examples=100, deadline=None)
@given(
    st.dictionaries(
        st.text(max_size=3),
        st.fixed_dictionaries(
            {"class_type": st.sampled_from(sorted(SUPPORTED)), "inputs": st.dictionaries(st.text(max_size=6), json_values, max_size=4)}
        ),
        max_size=6,
    )
)
def test_random_comfy_graphs_fail_only_with_comfy_errors(graph):
    try:
        parse(graph, {"sd15"})
    except ComfyError:
        pass


LINKED_INPUTS = ["model", "clip", "positive", "negative", "latent_image", "samples", "images", "conditioning", "control_net", "image"]


@settings(max_examples=200, deadline=None)
@given(
    st.dictionaries(
        st.sampled_from("0123456"),
        st.fixed_dictionaries(
            {
                "class_type": st.sampled_from(sorted(SUPPORTED)),
                "inputs": st.dictionaries(
                    st.sampled_from(LINKED_INPUTS), st.tuples(st.sampled_from("01234567"), st.integers(-1, 3)).map(list), max_size=5
                ),
            }
        ),
        min_size=1,
        max_size=7,
    )
)
def test_randomly_linked_comfy_graphs_fail_only_with_comfy_errors(graph):
    """Links between random nodes: cycles, dangling links and bad output indices among them."""
    try:
        parse(graph, {"sd15"})
    except ComfyError:
        pass


@pytest.fixture(scope="module")
def fuzz_app(tiny_models):
    from fastapi.testclient import TestClient

    from legodiffusion.config import EngineConfig
    from legodiffusion.server.app import create_app
    from legodiffusion.server.limits import Limits
    from legodiffusion.workflow.catalog import sd_txt2img

    app = create_app(
        {"sd15": str(tiny_models["sd15"])},
        EngineConfig(workers=1, device="cpu"),
        [sd_txt2img("sd15")],
        limits=Limits(max_steps=2, max_pixels=64 * 64, max_n=2),
    )
    with TestClient(app) as client:
        yield app, client


def test_schemathesis_finds_no_5xx(fuzz_app):
    import schemathesis
    from hypothesis import given as h_given

    app, client = fuzz_app
    schema = schemathesis.openapi.from_dict(client.get("/openapi.json").json())
    failures = []
    for op in schema.get_all_operations():
        operation = op.ok()
        if "text/event-stream" in operation.definition.raw["responses"].get("200", {}).get("content", {}):
            continue  # a stream of dashboard snapshots lasts half a minute; test_dashboard.py reads one

        @settings(max_examples=25, deadline=None, suppress_health_check=list(HealthCheck), database=None)
        @h_given(case=operation.as_strategy())
        def check(case):
            kwargs = case.as_transport_kwargs(base_url="")
            response = client.request(
                kwargs["method"],
                kwargs["url"],
                params=kwargs.get("params"),
                json=kwargs.get("json"),
                headers={k: v for k, v in (kwargs.get("headers") or {}).items() if k.lower() != "content-length"},
                timeout=30,
            )
            if response.status_code >= 500:
                failures.append((case.method, case.path, kwargs.get("json"), response.text[:200]))

        check()
    assert not failures, failures[:3]
