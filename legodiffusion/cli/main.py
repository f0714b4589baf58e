"""The ``legodiffusion`` command line."""

from __future__ import annotations

import json
from pathlib import Path

import typer

from legodiffusion import config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="Micro-serving text-to-image diffusion workflows.")

DTYPE_HELP = "weight precision: auto (bf16 on CUDA, the VAE of SD1.x/SDXL in fp32; fp32 on CPU), bf16, fp16 or fp32"
COMPONENT_DTYPE_HELP = "per-component precision COMPONENT=DTYPE (denoiser, text_encoder, vae, controlnet), repeatable"
COMPILE_HELP = "torch.compile the denoiser, batches padded to shape buckets (each bucket compiles on its first call)"
INIT_IMAGE_HELP = "an image to edit (PNG, JPEG or WebP); the output is its size unless --height/--width say"
STRENGTH_HELP = "with --init-image: how much to change it, 0 < S <= 1 (the fraction of the steps run; default: the workflow's)"
MASK_HELP = "with --init-image: where to repaint (white) and keep (black), the init image's size"


def _component_dtypes(items: list[str]) -> dict[str, str]:
    out = {}
    for item in items:
        component, sep, name = item.partition("=")
        if not sep:
            raise typer.BadParameter(f"expected COMPONENT=DTYPE such as vae=fp32, got {item!r}")
        out[component.strip()] = name.strip()
    return out


@app.command("tiny-models")
def tiny_models(
    directory: Path = typer.Argument(..., help="where to write the model folders"),
    seed: int = typer.Option(0, help="weights depend only on this seed"),
) -> None:
    """Write tiny random-weight diffusers-format models (sd15, sdxl, sd3, flux, flux-schnell, qwen-image, ControlNets, LoRAs)."""
    from legodiffusion.models.tiny import write_tiny_models

    for family, folder in write_tiny_models(directory, seed=seed).items():
        typer.echo(f"{family}: {folder}")


@app.command("architectures")
def architectures(
    names: list[str] = typer.Argument(None, help="architectures to show (default: all)"),
    dtype: str = typer.Option("bf16", help="bf16, fp16 or fp32"),
    as_json: bool = typer.Option(False, "--json", help="print JSON rows instead of a table"),
    write_sim: Path | None = typer.Option(None, help="rewrite this simulator reference file's weights_bytes (bf16) from the architectures"),
) -> None:
    """Parameters and weight bytes of full-size SD 1.5, SDXL, SD3/3.5, Flux and ControlNet architectures, computed on the meta device."""
    from legodiffusion.cli.architectures import run_architectures

    raise typer.Exit(run_architectures(dtype, as_json, names or None, write_sim))


@app.command()
def generate(
    model: Path = typer.Option(..., help="a diffusers-format folder: SD 1.x/2.x, SDXL, SD3/SD3.5 or Flux"),
    prompt: str = typer.Option(..., help="what to draw"),
    negative_prompt: str | None = typer.Option(None, help="what to steer away from (not Flux)"),
    steps: int | None = typer.Option(None, min=1, help="sampling steps (default: the family's)"),
    guidance: float | None = typer.Option(None, help="guidance scale; <= 1 disables CFG; Flux dev: distilled guidance"),
    seed: int = typer.Option(0, help="seeds torch.Generator('cpu') exactly as diffusers does"),
    height: int | None = typer.Option(None, help="pixels; the model's native size by default"),
    width: int | None = typer.Option(None, help="pixels; the model's native size by default"),
    sampler: str | None = typer.Option(
        None, help="euler, euler_karras, euler_ancestral, ddim, dpmpp_2m, dpmpp_2m_karras (SD, SDXL); flow_euler (SD3)"
    ),
    controlnet: list[Path] = typer.Option([], help="a ControlNet folder (repeatable, up to 3)"),
    control_image: list[Path] = typer.Option([], help="the control image for each --controlnet"),
    control_scale: list[float] = typer.Option([], help="the conditioning scale for each --controlnet"),
    lora: list[str] = typer.Option([], help="a LoRA .safetensors file, PATH[:WEIGHT] (repeatable)"),
    lora_k: int = typer.Option(0, min=0, help="apply a LoRA still loading from this step at the latest (0: wait)"),
    workers: int = typer.Option(1, min=1, help="worker count"),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    component_dtype: list[str] = typer.Option([], help=COMPONENT_DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile/--no-compile", help=COMPILE_HELP),
    init_image: Path | None = typer.Option(
        None, exists=True, dir_okay=False, help=INIT_IMAGE_HELP + " (the model's image-to-image workflow)"
    ),
    strength: float | None = typer.Option(None, help=STRENGTH_HELP),
    mask: Path | None = typer.Option(None, exists=True, dir_okay=False, help=MASK_HELP + " (the model's inpainting workflow)"),
    output: Path = typer.Option(Path("out.png"), "-o", "--output", help="PNG file to write"),
) -> None:
    """Generate one image through the decomposed runtime (edit one with --init-image)."""
    from legodiffusion.cli.generate import GenerateArgs, generate_one

    args = GenerateArgs(
        model,
        prompt,
        output,
        negative_prompt,
        steps,
        guidance,
        seed,
        height,
        width,
        sampler,
        workers,
        device,
        list(controlnet),
        list(control_image),
        list(control_scale),
        list(lora),
        lora_k,
        dtype,
        _component_dtypes(component_dtype),
        compile,
        init_image,
        strength,
        mask,
    )
    raise typer.Exit(generate_one(args))


@app.command()
def demo(
    requests: int = typer.Option(12, min=1, help="requests in the burst"),
    workers: int = typer.Option(2, min=1, help="worker count"),
    size: int = typer.Option(64, help="image size in pixels"),
    steps: int = typer.Option(8, min=1, help="sampling steps of the first workflow"),
    out: Path = typer.Option(Path("demo-out"), help="folder for the images"),
    models: Path | None = typer.Option(None, help="tiny model folder (built if missing); default under $LEGODIFFUSION_HOME"),
    policy: str = typer.Option("default", help="scheduling policy: default, fcfs, random or bundle"),
) -> None:
    """Build the tiny models if missing and serve a burst over two workflows sharing one base model."""
    from legodiffusion.cli.demo import run_demo

    run_demo(requests, workers, size, steps, out, models or config.home() / "models", policy)


def _ints(text: str) -> list[int]:
    try:
        return [int(x) for x in text.split(",") if x.strip()]
    except ValueError:
        raise typer.BadParameter(f"expected comma-separated integers, got {text!r}") from None


@app.command()
def profile(
    model: Path | None = typer.Option(None, help="a diffusers-format model folder"),
    architecture: str | None = typer.Option(
        None, help="instead of --model: a full-size architecture with random weights (see `legodiffusion architectures`)"
    ),
    workflow: str | None = typer.Option(
        None, help="built-in workflow name or a JSON spec file: which operators to measure (default: the family's text-to-image)"
    ),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    batches: str = typer.Option("1,2,4,8", help="batch sizes"),
    sizes: str = typer.Option("64,128,256", help="square image sizes in pixels"),
    repeats: int = typer.Option(3, min=1, help="timed repeats per point (median kept)"),
    force: bool = typer.Option(False, help="measure again even when a cached profile exists"),
    out_dir: Path | None = typer.Option(None, help="profile cache folder (default $LEGODIFFUSION_HOME/profiles)"),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    component_dtype: list[str] = typer.Option([], help=COMPONENT_DTYPE_HELP),
) -> None:
    """Measure latency and peak memory per (operator, mode, batch, resolution) and load times."""
    from legodiffusion.cli.profile import run_profile
    from legodiffusion.models.precision import Precision

    if (model is None) == (architecture is None):
        typer.echo("error: give exactly one of --model and --architecture", err=True)
        raise typer.Exit(2)
    try:
        precision = Precision.of(dtype, _component_dtypes(component_dtype))
        if architecture is not None:
            from legodiffusion.models.random_folder import write_folder

            model = write_folder(architecture, config.home() / "architectures" / architecture)
        run_profile(model, workflow, device, _ints(batches), _ints(sizes), repeats, force, out_dir, precision)
    except (FileNotFoundError, KeyError, ValueError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None


@app.command()
def sim(
    system: str = typer.Option(
        "ours",
        help="ours, fcfs, bundle-static (or bundle), bundle-auto, pooled (the whole-request ideal), or an ablation: no-sharing, static-partitions, no-adaptive-parallelism, no-cross-request-batching, no-admission, latest-start, no-prefetch, no-eviction-cost, no-urgent-keep, no-batch-sizing",
    ),
    gpus: int = typer.Option(16, min=1, help="simulated reference GPUs (H100), 8 per node"),
    workload: str = typer.Option(
        "paper", help="paper (12 workflows), many (40 over 7 base models); drifting and csv use the paper workflows"
    ),
    trace: str = typer.Option("poisson", help="poisson, bursty, gamma, drifting or csv"),
    rate: float = typer.Option(2.0, min=0.0, help="requests per second (base rate for bursty)"),
    duration: float = typer.Option(300.0, min=1.0, help="simulated seconds"),
    multiplier: float = typer.Option(4.0, help="bursty: rate multiplier during the 30 s burst; drifting: during its one-workflow bursts"),
    cv: float = typer.Option(2.0, help="gamma: coefficient of variation of inter-arrival times"),
    csv: Path | None = typer.Option(None, help="csv: a trace file with timestamp_s,workflow[,inputs...]"),
    slo_scale: float = typer.Option(2.0, help="SLO as a multiple of each workflow's solo latency"),
    seed: int = typer.Option(0, help="trace seed"),
    warmup: float = typer.Option(30.0, help="seconds of cold start not scored"),
) -> None:
    """Simulate a workload on reference H100s with the serving coordinator and policies."""
    from legodiffusion.cli.sim import run_sim

    raise typer.Exit(run_sim(system, gpus, trace, rate, duration, multiplier, cv, csv, slo_scale, seed, warmup, workload))


@app.command()
def fidelity(
    requests: int = typer.Option(300, min=30, help="requests in the evaluated trace (p95 needs many)"),
    rate: float = typer.Option(6.0, help="requests per second of the evaluated trace"),
    seed: int = typer.Option(0, help="seed of the evaluated trace"),
    calibration_requests: int = typer.Option(150, min=30, help="requests in the calibration trace"),
    calibration_rate: float | None = typer.Option(None, help="requests per second of the calibration trace (default: 90% of --rate)"),
    calibration_seed: int | None = typer.Option(None, help="seed of the calibration trace (default: --seed + 1000)"),
    models: Path | None = typer.Option(None, help="tiny model folder (built if missing)"),
) -> None:
    """Calibrate the simulator on one live run (2 workers, 3 workflows), then predict another trace
    served live; print p50/p95 per workflow, live vs simulated."""
    from legodiffusion.cli.sim import run_fidelity

    raise typer.Exit(
        run_fidelity(requests, rate, seed, models or config.home() / "models", calibration_requests, calibration_rate, calibration_seed)
    )


@app.command()
def serve(
    model_root: Path | None = typer.Option(
        None, help="folder of diffusers-format models, ControlNets and LoRA files (default: the tiny models, built if missing)"
    ),
    host: str = typer.Option("127.0.0.1", help="address to bind"),
    port: int = typer.Option(8000, help="port"),
    workers: int | None = typer.Option(
        None, min=1, help="worker count (default: one per GPU, else 1; on ray: one per GPU in the cluster, else one per node)"
    ),
    device: str = typer.Option("auto", help="cpu, cuda or auto"),
    policy: str = typer.Option("default", help="scheduling policy"),
    api_keys_file: Path | None = typer.Option(
        None,
        help="file of API keys, one a line: a bare key, or a JSON object with its tenant, priority and limits (see the README; also $LEGODIFFUSION_API_KEYS, comma-separated)",
    ),
    backend: str = typer.Option("local", help="local (worker threads here) or ray (worker actors across a Ray cluster)"),
    address: str = typer.Option("auto", help="ray: auto (join the running cluster, else start one), local, or ray://host:port"),
    cpus_per_worker: float = typer.Option(0.25, min=0.01, help="ray: CPUs a CPU-only worker actor asks for"),
    min_workers: int | None = typer.Option(None, min=1, help="ray autoscaling floor (default: the starting count)"),
    max_workers: int | None = typer.Option(None, min=1, help="ray autoscaling ceiling (default: the starting count)"),
    tensor_transport: str = typer.Option("auto", help="ray: object_store, nccl, gloo or auto (nccl on GPU workers, else object_store)"),
    dtype: str = typer.Option("auto", help=DTYPE_HELP),
    component_dtype: list[str] = typer.Option([], help=COMPONENT_DTYPE_HELP),
    compile: bool = typer.Option(False, "--compile/--no-compile", help=COMPILE_HELP),
    call_timeout_s: float = typer.Option(120.0, min=0.001, help="least time a model call may run before it counts as stuck"),
    drain_s: float = typer.Option(10.0, min=0.0, help="on shutdown, how long calls in flight may take to stop"),
    preload: str = typer.Option(
        "",
        help="comma-separated models (all: every pipeline model) whose components every worker loads at start; /readyz says warming until then",
    ),
) -> None:
    """Serve the native v1 API, the OpenAI-compatible images endpoint and ComfyUI prompts over HTTP."""
    import uvicorn

    from legodiffusion.config import EngineConfig, RayConfig
    from legodiffusion.models.tiny import write_tiny_models
    from legodiffusion.runtime.collector import pace_for_control_plane
    from legodiffusion.server.app import create_app
    from legodiffusion.server.catalog import builtin_workflows, models_under

    root = model_root or config.home() / "models"
    if model_root is None:
        write_tiny_models(root)
    models = models_under(root)
    if not models:
        typer.echo(f"error: no models under {root}", err=True)
        raise typer.Exit(2)
    from legodiffusion.server.logs import configure

    configure()
    try:
        keys = config.tenant_keys(api_keys_file)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    try:
        ray_config = RayConfig(
            address=address,
            cpus_per_worker=cpus_per_worker,
            min_workers=min_workers,
            max_workers=max_workers,
            tensor_transport=tensor_transport,
        )
        engine_config = EngineConfig(
            workers=workers,
            device=device,
            policy=policy,
            backend=backend,
            ray=ray_config,
            dtype=dtype,
            component_dtypes=_component_dtypes(component_dtype),
            compile=compile,
            call_timeout_floor_s=call_timeout_s,
            drain_s=drain_s,
        )
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    names = [m.strip() for m in preload.split(",") if m.strip()]
    try:  # (a preload it cannot do is refused here, before anything starts)
        app_ = create_app(models, engine_config, builtin_workflows(models), api_keys=keys or None, preload=names)
    except ValueError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    pace_for_control_plane()  # this process hosts the coordinator (see runtime/collector.py)
    uvicorn.run(app_, host=host, port=port, log_level="info")


@app.command()
def run(
    workflow: str = typer.Option(..., help="a workflow registered on the server"),
    prompt: str = typer.Option(..., help="what to draw"),
    url: str = typer.Option("http://127.0.0.1:8000", help="server address"),
    api_key: str | None = typer.Option(None, envvar="LEGODIFFUSION_API_KEY", help="bearer token"),
    steps: int | None = typer.Option(None, min=1),
    seed: int = typer.Option(0),
    height: int | None = typer.Option(None),
    width: int | None = typer.Option(None),
    input: list[str] = typer.Option([], "--input", help="extra input KEY=VALUE (repeatable)"),
    init_image: Path | None = typer.Option(None, exists=True, dir_okay=False, help=INIT_IMAGE_HELP + " (sent as the input image)"),
    strength: float | None = typer.Option(None, help=STRENGTH_HELP),
    mask: Path | None = typer.Option(None, exists=True, dir_okay=False, help=MASK_HELP + " (sent as the input mask)"),
    output: Path = typer.Option(Path("out.png"), "-o", "--output"),
) -> None:
    """Send a request to a running server and save the image, with a progress bar fed by SSE
    (--init-image, --strength and --mask: an editing workflow's image, strength and mask)."""
    from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn

    from legodiffusion.client import ApiError, Client

    if init_image is None and (strength is not None or mask is not None):
        typer.echo("error: --strength and --mask edit an --init-image; give one", err=True)
        raise typer.Exit(2)
    inputs: dict = {"prompt": prompt, "seed": seed}
    for key, value in (
        ("steps", steps),
        ("height", height),
        ("width", width),
        ("image", init_image),
        ("strength", strength),
        ("mask", mask),
    ):
        if value is not None:
            inputs[key] = value  # a Path is sent as a base64 image
    for item in input:
        key, _, value = item.partition("=")
        inputs[key] = json.loads(value) if value[:1].isdigit() or value in ("true", "false", "null") else value
    client = Client(url, api_key)
    try:
        with Progress(TextColumn("generating"), BarColumn(), MofNCompleteColumn()) as bar:
            task = bar.add_task("run", total=None)
            result = client.run(
                workflow,
                inputs,
                on_progress=lambda r: bar.update(task, completed=r["progress"]["nodes_done"], total=r["progress"]["nodes_total"]),
            )
    except ApiError as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    if result["status"] != "succeeded":
        typer.echo(f"{result['status']}: {result.get('error', {}).get('message')}", err=True)
        raise typer.Exit(1)
    output.write_bytes(result["png"][0])
    typer.echo(f"wrote {output}")


@app.command("import-comfy")
def import_comfy(
    file: Path = typer.Argument(..., help="a ComfyUI API-format prompt (JSON)"),
    family: str = typer.Option("sd", help="model family of the checkpoint: sd, sdxl, sd3 or flux"),
    output: Path | None = typer.Option(None, "-o", "--output", help="write the spec here (default: stdout)"),
) -> None:
    """Convert a ComfyUI API-format prompt into our workflow spec, offline."""
    from legodiffusion.server.comfy import ComfyError, to_spec

    try:
        data = json.loads(file.read_text())
        spec = to_spec(data.get("prompt", data) if isinstance(data, dict) else data, family)
    except (OSError, ValueError, ComfyError, KeyError) as exc:
        typer.echo(f"error: {exc}", err=True)
        raise typer.Exit(2) from None
    text = json.dumps(spec, indent=1)
    if output:
        output.write_text(text + "\n")
    else:
        typer.echo(text)


if __name__ == "__main__":
    app()
