"""Editing from the command line: ``generate --init-image`` on the local engine equals diffusers'
image-to-image pipeline; ``run --init-image`` sends the image to a server; bad edits are refused
without a traceback."""

import numpy as np
import pytest
import torch
from PIL import Image
from typer.testing import CliRunner

from legodiffusion import Client
from legodiffusion.cli.main import app
from legodiffusion.config import EngineConfig
from legodiffusion.server.app import create_app
from legodiffusion.workflow.catalog import sd_img2img
from tests.helpers import REFERENCE_SCHEDULERS, random_image
from tests.server.live import serve

runner = CliRunner()


def picture(path, w: int = 72, h: int = 64, seed: int = 0):
    random_image(h, w, seed).save(path)
    return path


def said(result) -> str:
    return " ".join(result.output.split())  # rich wraps long lines


def test_generate_edits_an_init_image_as_the_diffusers_pipeline_does(sd15, tmp_path):
    from diffusers import StableDiffusionImg2ImgPipeline

    init, out = picture(tmp_path / "init.png"), tmp_path / "out.png"
    args = ["generate", "--model", str(sd15), "--prompt", "a cat", "--steps", "4", "--seed", "7", "--sampler", "euler"]
    result = runner.invoke(app, [*args, "--init-image", str(init), "--strength", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(out), dtype=np.int16)
    pipe = StableDiffusionImg2ImgPipeline.from_pretrained(sd15)
    cls, overrides = REFERENCE_SCHEDULERS["euler"]
    pipe.scheduler = cls.from_config(pipe.scheduler.config, **overrides)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a cat",
        image=Image.open(init),
        strength=0.5,
        num_inference_steps=4,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]
    assert ours.shape == (64, 72, 3)
    assert np.abs(ours - (ref * 255).round()).max() <= 1


def test_generate_inpaints_with_a_mask_as_the_diffusers_pipeline_does(sd15, tmp_path):
    from diffusers import StableDiffusionInpaintPipeline

    init, out, mask = picture(tmp_path / "init.png"), tmp_path / "out.png", tmp_path / "mask.png"
    white_left = np.zeros((64, 72, 3), dtype=np.uint8)
    white_left[:, :36] = 255
    Image.fromarray(white_left).save(mask)
    args = ["generate", "--model", str(sd15), "--prompt", "a cat", "--steps", "4", "--seed", "7", "--sampler", "euler"]
    result = runner.invoke(app, [*args, "--init-image", str(init), "--mask", str(mask), "--strength", "0.75", "-o", str(out)])
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(out), dtype=np.int16)
    pipe = StableDiffusionInpaintPipeline.from_pretrained(sd15)
    pipe.scheduler = REFERENCE_SCHEDULERS["euler"][0].from_config(pipe.scheduler.config)
    pipe.set_progress_bar_config(disable=True)
    ref = pipe(
        "a cat",
        image=Image.open(init),
        mask_image=Image.open(mask),
        strength=0.75,
        num_inference_steps=4,
        height=64,
        width=72,
        generator=torch.Generator("cpu").manual_seed(7),
        output_type="np",
    ).images[0]
    assert ours.shape == (64, 72, 3)
    assert np.abs(ours - (ref * 255).round()).max() <= 1


def test_generate_refuses_bad_edits_before_anything_runs(sd15, tmp_path):
    init, out = picture(tmp_path / "init.png"), tmp_path / "out.png"
    base = ["generate", "--model", str(sd15), "--prompt", "x", "--steps", "2", "-o", str(out)]
    result = runner.invoke(app, [*base, "--init-image", str(init), "--strength", "1.5"])
    assert result.exit_code == 2 and "strength must be in (0, 1]" in said(result)
    result = runner.invoke(app, [*base, "--init-image", str(init), "--mask", str(picture(tmp_path / "m.png", 48, 64))])
    assert result.exit_code == 2 and "--mask: mask is 48x64 but image is 72x64" in said(result)
    result = runner.invoke(app, [*base, "--strength", "0.5"])
    assert result.exit_code == 2 and "edit an --init-image" in said(result)
    (tmp_path / "notes.txt").write_text("not an image")
    result = runner.invoke(app, [*base, "--init-image", str(tmp_path / "notes.txt")])
    assert result.exit_code == 2 and "cannot identify image file" in said(result)
    assert result.exception is None or isinstance(result.exception, SystemExit)
    assert not out.exists()


@pytest.fixture(scope="module")
def server(sd15):
    server_app = create_app({"sd15": str(sd15)}, EngineConfig(workers=1, device="cpu"), [sd_img2img("sd15", name="sd15-img2img")])
    with serve(server_app) as url:
        yield url


def test_run_sends_the_init_image_to_the_server(server, tmp_path):
    init, out = picture(tmp_path / "init.png"), tmp_path / "out.png"
    args = ["run", "--url", server, "--workflow", "sd15-img2img", "--prompt", "a cat", "--steps", "2", "--seed", "3"]
    result = runner.invoke(app, [*args, "--init-image", str(init), "--strength", "0.5", "-o", str(out)])
    assert result.exit_code == 0, result.output
    same = Client(server).run("sd15-img2img", {"prompt": "a cat", "steps": 2, "seed": 3, "strength": 0.5, "image": Image.open(init)})
    assert out.read_bytes() == same["png"][0]
    result = runner.invoke(app, [*args, "--init-image", str(init), "--strength", "0"])
    assert result.exit_code == 2 and "inputs.strength" in said(result)
    result = runner.invoke(app, [*args, "--mask", str(init)])
    assert result.exit_code == 2 and "edit an --init-image" in said(result)
