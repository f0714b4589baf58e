"""Images in requests: image inputs of native runs (base64, data: URLs, upload ids), uploads,
OpenAI's /v1/images/edits (the official client on a live server; errors through the test client),
and what is refused before anything is queued."""

import base64
import io

import numpy as np
import pytest
from fastapi.testclient import TestClient
from PIL import Image

from legodiffusion import Client
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.server.images import openai_mask
from legodiffusion.server.limits import Limits
from legodiffusion.workflow.builder import WorkflowBuilder
from legodiffusion.workflow.catalog import sd_img2img, sd_inpaint, sd_txt2img
from tests.helpers import random_image
from tests.reliability.test_retention import _png as claimed_png
from tests.server.live import serve

EDIT = {"prompt": "a cat", "steps": 2, "strength": 0.5, "seed": 3}


def mask_probe(name: str = "probe-inpaint"):
    """A test-only workflow taking an image and a mask whose output is made from the mask alone
    (VAE-encoded and decoded), so that two runs' outputs are equal only if their masks are."""
    wf = WorkflowBuilder(name, models={"base": "sd15"})
    wf.input("prompt", "text")
    seed = wf.input("seed", "int", default=0)
    wf.input("image", "image")
    mask = wf.input("mask", "image")
    wf.input("strength", "float", default=1.0)
    pixels = wf.call("prepare_image", model="base", image=mask).pixels
    enc = wf.call("vae_encode", model="base", pixels=pixels, seed=seed)
    wf.output("image", wf.call("vae_decode", model="base", latents=enc.latents).image)
    return wf.build()


def workflows():
    return [sd_txt2img("sd15", name="sd15-txt2img"), sd_img2img("sd15", name="sd15-img2img"), mask_probe()]


def picture(w: int = 72, h: int = 64, seed: int = 0) -> Image.Image:
    return random_image(h, w, seed)


def encoded(image: Image.Image, fmt: str = "PNG") -> bytes:
    buf = io.BytesIO()
    image.save(buf, format=fmt)
    return buf.getvalue()


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def half_mask(w: int = 64, h: int = 64, alpha: bool = False, invert: bool = False) -> Image.Image:
    """The left half marked for repainting: white there (ours), or transparent there (OpenAI's)."""
    marked = np.zeros((h, w), dtype=bool)
    marked[:, : w // 2] = True
    marked ^= invert
    if alpha:
        rgba = np.zeros((h, w, 4), dtype=np.uint8)
        rgba[..., 3] = np.where(marked, 0, 255)
        return Image.fromarray(rgba, "RGBA")
    return Image.fromarray(np.repeat(np.where(marked, 255, 0).astype(np.uint8)[..., None], 3, axis=2))


@pytest.fixture(scope="module")
def client(tiny_models):
    app = create_app(
        {"sd15": str(tiny_models["sd15"])}, EngineConfig(workers=1, device="cpu"), workflows(), limits=Limits(max_pixels=96 * 96)
    )
    with TestClient(app) as c:
        yield c


def refused(client, status: int, code: str, path: str, method: str, url: str, **kw) -> dict:
    """Send a request that must be refused with ``status``, ``code`` and ``path``, and check that
    nothing of it was queued."""
    st = client.app.state.server
    before = len(st.runs.records)
    r = client.request(method, url, **kw)
    error = r.json()["error"]
    assert (r.status_code, error["code"], error["path"]) == (status, code, path), r.json()
    assert len(st.runs.records) == before and not st.engine.coordinator.requests
    return error


def run(client, workflow: str, inputs: dict) -> dict:
    r = client.post("/v1/runs", json={"workflow": workflow, "inputs": inputs, "wait": True})
    assert r.status_code == 200 and r.json()["status"] == "succeeded", r.json()
    return r.json()


def test_a_run_takes_its_image_as_base64_a_data_url_or_an_upload_id(client):
    data = encoded(picture())
    upload = client.post("/v1/uploads", files={"file": ("cat.png", data, "image/png")}).json()
    assert upload["id"].startswith("upload-") and (upload["width"], upload["height"]) == (72, 64)
    forms = [b64(data), "data:image/png;base64," + b64(data), upload["id"]]
    outputs = [run(client, "sd15-img2img", dict(EDIT, image=form))["images"][0] for form in forms]
    assert outputs[0] == outputs[1] == outputs[2], "one image, however it is sent, makes one result"
    assert Image.open(io.BytesIO(base64.b64decode(outputs[0]))).size == (72, 64), "an edit is made at its image's size"


def test_uploads_take_png_jpeg_and_webp_and_refuse_the_rest(client):
    for fmt in ("JPEG", "WEBP"):
        r = client.post("/v1/uploads", files={"file": ("x", encoded(picture(40, 24), fmt))})
        assert r.status_code == 200 and (r.json()["width"], r.json()["height"]) == (40, 24)
    for data in (encoded(picture(), "GIF"), b"not an image"):
        error = refused(client, 400, "invalid_image", "file", "POST", "/v1/uploads", files={"file": ("x.gif", data)})
        assert "PNG, JPEG or WebP" in error["message"]
    # a small file claiming a huge image, whose pixels do not even decode: refused by its header
    error = refused(
        client, 413, "limit_exceeded", "file", "POST", "/v1/uploads", files={"file": ("bomb.png", claimed_png(12_000, 12_000, b"x"))}
    )
    assert "12000x12000" in error["message"]


def test_bad_image_inputs_are_refused_naming_the_input_before_anything_is_queued(client):
    def submit(inputs: dict, workflow: str = "sd15-img2img") -> tuple:
        return "POST", "/v1/runs", {"json": {"workflow": workflow, "inputs": {**EDIT, **inputs}}}

    for bad in ("not base64!", b64(b"plain text"), b64(encoded(picture(), "GIF")), "data:image/png,rawbytes"):
        method, url, kw = submit({"image": bad})
        refused(client, 400, "invalid_image", "inputs.image", method, url, **kw)
    method, url, kw = submit({"image": b64(claimed_png(12_000, 12_000, b"x"))})
    assert "12000x12000" in refused(client, 413, "limit_exceeded", "inputs.image", method, url, **kw)["message"]
    method, url, kw = submit({"image": b64(encoded(picture(128, 96)))})  # decodes, but beyond this server's max_pixels
    assert "max_pixels" in refused(client, 413, "limit_exceeded", "inputs.image", method, url, **kw)["message"]
    method, url, kw = submit({"image": "upload-" + "0" * 32})
    refused(client, 400, "unknown_upload", "inputs.image", method, url, **kw)
    method, url, kw = submit({"image": b64(encoded(picture(64, 64))), "mask": b64(encoded(half_mask(48, 64)))}, "probe-inpaint")
    assert "48x64" in refused(client, 400, "size_mismatch", "inputs.mask", method, url, **kw)["message"]


def test_strength_outside_its_range_or_leaving_no_step_is_a_400_naming_it(client):
    image = b64(encoded(picture(64, 64)))
    for strength in (0, 1.5, -0.2, 0.1):  # 0.1 of 2 steps keeps none
        error = refused(
            client,
            400,
            "bad_value",
            "inputs.strength",
            "POST",
            "/v1/runs",
            json={"workflow": "sd15-img2img", "inputs": {**EDIT, "image": image, "strength": strength}},
        )
        assert "strength" in error["message"]
    form = {"model": "sd15", "prompt": "x", "steps": "2", "strength": "2"}
    refused(
        client,
        400,
        "bad_value",
        "inputs.strength",
        "POST",
        "/v1/images/edits",
        data=form,
        files={"image": ("a.png", encoded(picture(64, 64)))},
    )


def test_edit_errors_name_the_field(client):
    image = {"image": ("a.png", encoded(picture(64, 64)), "image/png")}
    form = {"model": "sd15", "prompt": "x", "steps": "2"}

    def edit(status, code, path, data=None, files=None):
        return refused(client, status, code, path, "POST", "/v1/images/edits", data=data or form, files=files or image)

    edit(400, "unsupported_response_format", "response_format", {**form, "response_format": "url"})
    edit(400, "limit_exceeded", "n", {**form, "n": "9"})
    edit(404, "unknown_model", "model", {**form, "model": "nope"})
    edit(400, "invalid_request", "image", files={"mask": ("m.png", encoded(half_mask(alpha=True)))})
    two = [("image[]", ("a.png", encoded(picture(64, 64)))), ("image[]", ("b.png", encoded(picture(64, 64))))]
    edit(400, "invalid_request", "image", files=two)
    edit(400, "invalid_image", "image", files={"image": ("a.png", b"no image")})
    # the model has no inpaint workflow: a mask is refused, naming it, rather than ignored
    error = edit(400, "unsupported_mask", "mask", files={**image, "mask": ("m.png", encoded(half_mask(alpha=True)))})
    assert "sd15-inpaint" in error["message"]
    probe = {**form, "model": "probe-inpaint"}
    edit(400, "invalid_image", "mask", probe, {**image, "mask": ("m.png", encoded(half_mask()))})  # opaque: marks nothing
    edit(400, "size_mismatch", "inputs.mask", probe, {**image, "mask": ("m.png", encoded(half_mask(32, 64, alpha=True)))})


def test_openai_masks_become_white_where_to_repaint():
    mask = openai_mask(half_mask(alpha=True))
    assert mask.mode == "RGB" and np.array_equal(np.asarray(mask), np.asarray(half_mask()))


def test_an_edit_with_a_mask_runs_the_inpaint_workflow_with_it_converted(client):
    """The probe's output is made from its mask alone: the OpenAI edit's equals a native run's given
    the mask in our convention, and differs from one given the mask inverted."""
    image = encoded(picture(64, 64))
    form = {"model": "probe-txt2img", "prompt": "x", "seed": "5"}  # a model's txt2img name picks its -inpaint
    r = client.post("/v1/images/edits", data=form, files={"image": ("a.png", image), "mask": ("m.png", encoded(half_mask(alpha=True)))})
    assert r.status_code == 200, r.json()
    got = r.json()["data"][0]["b64_json"]
    inputs = {"prompt": "x", "seed": 5, "image": b64(image)}
    same = run(client, "probe-inpaint", {**inputs, "mask": b64(encoded(half_mask()))})["images"][0]
    inverted = run(client, "probe-inpaint", {**inputs, "mask": b64(encoded(half_mask(invert=True)))})["images"][0]
    assert got == same != inverted


@pytest.fixture(scope="module")
def live(tiny_models):
    inpaint = sd_inpaint("sd15", name="sd15-inpaint")
    app = create_app({"sd15": str(tiny_models["sd15"])}, EngineConfig(workers=1, device="cpu"), [*workflows(), inpaint])
    with serve(app) as url:
        yield url


def test_the_official_openai_client_edits_as_native_runs_do(live, tmp_path):
    import openai

    path = tmp_path / "cat.png"
    picture().save(path)
    client = openai.OpenAI(base_url=live + "/v1", api_key="unused")
    with path.open("rb") as f:
        result = client.images.edit(
            model="sd15", image=f, prompt="a cat", n=2, response_format="b64_json", extra_body={"steps": 2, "strength": 0.5, "seed": 3}
        )
    got = [base64.b64decode(d.b64_json) for d in result.data]
    assert [Image.open(io.BytesIO(p)).size for p in got] == [(72, 64)] * 2
    ours = Client(live)
    assert got[0] == ours.run("sd15-img2img", dict(EDIT, image=picture()))["png"][0], "a PIL image, sent by the Python client"
    assert got[1] == ours.run("sd15-img2img", dict(EDIT, seed=4, image=ours.upload(path)))["png"][0], "n: seeds seed, seed + 1"
    with path.open("rb") as f:  # with a mask: the model's inpainting workflow, OpenAI's mask turned white = repaint
        masked = client.images.edit(
            model="sd15", image=f, mask=encoded(half_mask(72, 64, alpha=True)), prompt="a cat", extra_body={"steps": 2, "seed": 3}
        )
    inpainted = ours.run("sd15-inpaint", {"prompt": "a cat", "steps": 2, "seed": 3, "image": picture(), "mask": half_mask(72, 64)})
    assert base64.b64decode(masked.data[0].b64_json) == inpainted["png"][0]
