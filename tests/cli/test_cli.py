import re

import numpy as np
from PIL import Image
from typer.testing import CliRunner

from legodiffusion.cli.main import app
from tests.helpers import reference_image

runner = CliRunner()


def test_tiny_models_are_deterministic_for_a_seed(tmp_path):
    for d in ("a", "b"):
        result = runner.invoke(app, ["tiny-models", str(tmp_path / d), "--seed", "3"])
        assert result.exit_code == 0, result.output
    a = (tmp_path / "a/sd15/unet/diffusion_pytorch_model.safetensors").read_bytes()
    b = (tmp_path / "b/sd15/unet/diffusion_pytorch_model.safetensors").read_bytes()
    assert a == b


def test_generate_writes_the_reference_image(sd15, tmp_path):
    out = tmp_path / "out.png"
    args = [
        "generate",
        "--model",
        str(sd15),
        "--prompt",
        "a red fox",
        "--negative-prompt",
        "blurry",
        "--steps",
        "3",
        "--guidance",
        "6",
        "--seed",
        "5",
        "--height",
        "64",
        "--width",
        "64",
        "--sampler",
        "ddim",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    ours = np.asarray(Image.open(out), dtype=np.int16)
    ref = (
        reference_image(sd15, sampler="ddim", prompt="a red fox", negative_prompt="blurry", steps=3, guidance_scale=6, seed=5) * 255
    ).round()
    assert np.abs(ours - ref).max() <= 1


def test_generate_reports_bad_input_without_a_traceback(sd15, tmp_path):
    result = runner.invoke(
        app, ["generate", "--model", str(sd15), "--prompt", "x", "--height", "60", "--steps", "2", "-o", str(tmp_path / "x.png")]
    )
    assert result.exit_code == 2  # refused at submission, before anything runs
    assert "multiples of 8" in " ".join(result.output.split()) and not (tmp_path / "x.png").exists()
    result = runner.invoke(app, ["generate", "--model", str(tmp_path), "--prompt", "x"])
    assert result.exit_code == 2 and "model_index.json" in "".join(result.output.split())


def test_demo_runs_a_burst_over_two_workflows(sd15, tmp_path):
    result = runner.invoke(app, ["demo", "--requests", "4", "--steps", "2", "--out", str(tmp_path / "imgs"), "--models", str(sd15.parent)])
    assert result.exit_code == 0, result.output
    assert "requests sd-styled succeeded" in result.output and "latency p50" in result.output
    for wf in ("sd-txt2img", "sd-styled"):  # every request succeeded, cold and warm
        assert re.search(rf"requests {wf} succeeded\W+2\W+2\W", result.output), result.output
    # the warm burst's images equal the cold burst's (within a rounding of one 8-bit step)
    (gap,) = re.findall(r"max diff\W+(\d+) / 255 \(4 pairs\)", result.output)
    assert int(gap) <= 1
    assert len(list((tmp_path / "imgs").glob("*.png"))) == 4


def test_generate_covers_every_family_and_the_adapters(tiny_models, tmp_path):
    for family in ("sdxl", "sd3", "flux", "flux-schnell"):
        out = tmp_path / f"{family}.png"
        args = [
            "generate",
            "--model",
            str(tiny_models[family]),
            "--prompt",
            "a boat",
            "--steps",
            "2",
            "--height",
            "64",
            "--width",
            "64",
            "-o",
            str(out),
        ]
        result = runner.invoke(app, args)
        assert result.exit_code == 0, (family, result.output)
        assert Image.open(out).size == (64, 64)
    control = tmp_path / "control.png"
    Image.fromarray(np.full((64, 64, 3), 200, dtype=np.uint8)).save(control)
    out = tmp_path / "adapters.png"
    args = [
        "generate",
        "--model",
        str(tiny_models["sd15"]),
        "--prompt",
        "a boat",
        "--steps",
        "2",
        "--height",
        "64",
        "--width",
        "64",
        "--controlnet",
        str(tiny_models["controlnet-sd15"]),
        "--control-image",
        str(control),
        "--control-scale",
        "0.8",
        "--lora",
        f"{tiny_models['lora-sd15-a']}:0.7",
        "-o",
        str(out),
    ]
    result = runner.invoke(app, args)
    assert result.exit_code == 0, result.output
    assert "LoRA active from step 0" in " ".join(result.output.split())
    bad = runner.invoke(
        app, ["generate", "--model", str(tiny_models["sd15"]), "--prompt", "x", "--controlnet", str(tiny_models["controlnet-sd15"])]
    )
    assert bad.exit_code == 2 and "--control-image" in bad.output


def test_serve_runs_the_server_at_the_control_plane_collector_pace(sd15, monkeypatch):
    """The server's process hosts the coordinator: ``serve`` paces the garbage collector for it
    (runtime/collector.py) before the server starts."""
    import gc
    from pathlib import Path

    import uvicorn

    from legodiffusion.runtime.collector import CONTROL_PLANE_THRESHOLDS

    seen = {}
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: seen.update(kw, thresholds=gc.get_threshold()))
    before = gc.get_threshold()
    try:
        result = runner.invoke(app, ["serve", "--model-root", str(Path(sd15).parent), "--port", "8123"])
    finally:
        gc.set_threshold(*before)
    assert result.exit_code == 0, result.output
    assert seen["port"] == 8123 and seen["thresholds"] == CONTROL_PLANE_THRESHOLDS != before


def test_serve_refuses_a_preload_it_cannot_do_before_starting(sd15, monkeypatch):
    from pathlib import Path

    import uvicorn

    started = []
    monkeypatch.setattr(uvicorn, "run", lambda app_, **kw: started.append(kw))
    root = str(Path(sd15).parent)
    for names, reason in (("sd15,nope", "unknown model 'nope'"), ("lora-sd15-a", "LoRA")):
        result = runner.invoke(app, ["serve", "--model-root", root, "--preload", names])
        assert result.exit_code == 2 and reason in result.output, result.output
    assert not started
