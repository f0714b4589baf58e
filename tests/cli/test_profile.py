import json

from typer.testing import CliRunner

from legodiffusion.cli.main import app
from legodiffusion.core.cost import DefaultCost
from legodiffusion.models.store import ModelCatalog
from legodiffusion.profiles.book import ModelProfile, OpPoint, ProfileCost
from legodiffusion.profiles.profiler import cached_profiles

runner = CliRunner()


def test_profile_measures_caches_and_feeds_the_cost_model(sd15, tmp_path):
    args = [
        "profile",
        "--model",
        str(sd15),
        "--device",
        "cpu",
        "--batches",
        "1,2",
        "--sizes",
        "64",
        "--repeats",
        "1",
        "--out-dir",
        str(tmp_path),
    ]
    first = runner.invoke(app, args)
    assert first.exit_code == 0, first.output
    (path,) = tmp_path.glob("*.json")
    prof = ModelProfile.load(path)
    ops = {(p.op, p.mode, p.batch) for p in prof.ops}
    assert {("denoise", "default", 1), ("denoise", "default", 2), ("sampler_step", "guided", 2), ("vae_decode", "default", 1)} <= ops
    # the editing workflows' operators too: the server registers them for every model
    assert {("vae_encode", "default", 1), ("prepare_image", "default", 2), ("init_latents", "img2img", 1)} <= ops
    assert prof.components["denoiser"].weight_bytes > 0 and prof.components["denoiser"].load_disk_s > 0
    assert all(p.latency_s > 0 for p in prof.ops)
    assert set(prof.versions) == {"torch", "diffusers", "transformers"}
    second = runner.invoke(app, args)
    assert "cached" in second.output and json.loads(path.read_text()) == prof.to_json()
    found = cached_profiles(ModelCatalog({"sd15": sd15}), "cpu", tmp_path)
    cost = ProfileCost(found)
    assert cost.exec_s("denoise", "default", "sd15", 1, 64 * 64) == prof.latency("denoise", "default", 1, 64 * 64)
    assert cost.load_s("sd15", "denoiser") > 0


def test_a_profile_is_measured_and_cached_per_precision(sd15, tmp_path):
    args = ["profile", "--model", str(sd15), "--device", "cpu", "--batches", "1", "--sizes", "64", "--repeats", "1"]
    args += ["--out-dir", str(tmp_path)]
    assert runner.invoke(app, args).exit_code == 0
    bf16 = runner.invoke(app, [*args, "--dtype", "bf16", "--component-dtype", "vae=fp32"])
    assert bf16.exit_code == 0, bf16.output
    assert "bf16-bf16-fp32-bf16" in bf16.output
    full, half = (ModelProfile.load(p) for p in sorted(tmp_path.glob("*.json"), key=lambda p: "bf16" in p.name))
    for component, ratio in (("denoiser", 0.5), ("text_encoder", 0.5), ("vae", 1.0)):
        assert abs(half.components[component].weight_bytes / full.components[component].weight_bytes - ratio) < 0.01
    bad = runner.invoke(app, [*args, "--dtype", "fp8"])
    assert bad.exit_code == 2 and "dtype must be one of auto, bf16, fp16, fp32" in bad.output


def test_missing_points_fall_back_to_the_nearest_measured_one():
    prof = ModelProfile(
        "k", "cpu", {}, [OpPoint("denoise", "default", b, px, 0.01 * b * px / 4096, 0) for b in (1, 4) for px in (4096, 65536)]
    )
    assert prof.latency("denoise", "default", 1, 4096) == 0.01
    # the nearest measured resolution (on a log scale), linear in the batch between measured batches
    assert abs(prof.latency("denoise", "default", 2, 5000) - 0.02) < 1e-12
    assert prof.latency("denoise", "default", 8, 65536) == 2 * prof.latency("denoise", "default", 4, 65536)
    sublinear = ModelProfile("k", "cpu", {}, [OpPoint("denoise", "default", b, 4096, t, 10 * b) for b, t in ((1, 1.0), (2, 1.2), (4, 2.0))])
    assert abs(sublinear.latency("denoise", "default", 3, 4096) - 1.6) < 1e-12  # not charged as a batch of 4
    assert sublinear.peak_bytes("denoise", "default", 3, 4096) == 30
    cost = ProfileCost({"m": prof})
    assert cost.exec_s("vae_decode", "default", "m", 1, None) == DefaultCost().exec_s("vae_decode", "default", "m", 1, None)


def test_profile_takes_a_model_folder_or_an_architecture(tmp_path):
    neither = runner.invoke(app, ["profile", "--device", "cpu"])
    assert neither.exit_code == 2 and "exactly one of --model and --architecture" in neither.output
    unknown = runner.invoke(app, ["profile", "--architecture", "sd9", "--device", "cpu", "--out-dir", str(tmp_path)])
    assert unknown.exit_code == 2 and "unknown architecture 'sd9'" in unknown.output
