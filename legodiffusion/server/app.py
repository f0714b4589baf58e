"""The HTTP server: a native v1 workflow API, OpenAI-compatible images and models endpoints and
ComfyUI's prompt API, over the embedded engine."""

from __future__ import annotations

import asyncio
import base64
import functools
import io
import json
import logging
import time
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

from fastapi import FastAPI, File, Form, Request, UploadFile
from fastapi.responses import Response, StreamingResponse
from pydantic import BaseModel, Field

from legodiffusion.config import EngineConfig
from legodiffusion.runtime.engine import Engine, Run, RunResult
from legodiffusion.runtime.images import to_png
from legodiffusion.server.errors import ApiError, error_body, install
from legodiffusion.server.limits import Limits
from legodiffusion.server.metrics import Metrics
from legodiffusion.workflow.spec import spec_from_json
from legodiffusion.workflow.validate import validate

TERMINAL = ("succeeded", "failed", "rejected", "cancelled")
log = logging.getLogger("legodiffusion.server")


@dataclass
class RunRecord:
    id: str
    workflow: str
    created_s: float
    run: Run | None = None
    result: RunResult | None = None
    status: str = "running"

    def to_json(self, images: bool = True) -> dict:
        status = self.status
        if status == "running" and self.run is not None and not self.run.started:
            status = "queued"  # admitted, no model call finished yet
        out: dict[str, Any] = {"id": self.id, "workflow": self.workflow, "status": status, "created": self.created_s}
        if self.run is not None:
            out["progress"] = {"nodes_done": self.run.nodes_done, "nodes_total": self.run.nodes_total, "steps_done": self.run.steps_done}
        if self.result is not None:
            out["latency_s"] = self.result.latency_s
            if self.result.error:
                out["error"] = {
                    "code": "SLO_REJECTED" if self.status == "rejected" else "node_failed",
                    "message": self.result.error,
                    "node": self.result.node,
                }
            if images and self.result.ok and "image" in self.result.outputs:
                out["images"] = [base64.b64encode(p).decode() for p in to_png(self.result.outputs["image"])]
            if self.result.notes:
                out["notes"] = self.result.notes
        return out


@dataclass
class ServerState:
    engine: Engine
    metrics: Metrics
    runs: dict[str, RunRecord] = field(default_factory=dict)
    counter: int = 0
    started_s: int = field(default_factory=lambda: int(time.time()))
    workflow_created_s: dict[str, int] = field(default_factory=dict)  # those registered after start

    def model_object(self, workflow: str) -> dict:
        """A workflow as OpenAI describes a model (``created``: when it was registered, in Unix seconds)."""
        created = self.workflow_created_s.get(workflow, self.started_s)
        return {"id": workflow, "object": "model", "created": created, "owned_by": "legodiffusion"}


class WorkflowBody(BaseModel):
    spec: dict


class RunBody(BaseModel):
    workflow: str = Field(description="a registered workflow id or name")
    inputs: dict[str, Any] = Field(default_factory=dict)
    slo_s: float | None = Field(default=None, gt=0, description="deadline in seconds; admission may reject")
    wait: bool = Field(default=False, description="block until the run ends and return its images")


class ImagesBody(BaseModel):
    model: str
    prompt: str
    n: int = Field(default=1, ge=1)
    size: str | None = None
    response_format: str = "b64_json"
    seed: int | None = None
    steps: int | None = None
    guidance_scale: float | None = None
    negative_prompt: str | None = None


def create_app(
    models: dict[str, str],
    config: EngineConfig | None = None,
    workflows: list | None = None,
    api_keys: set[str] | None = None,
    limits: Limits | None = None,
) -> FastAPI:
    """``api_keys``: when given, every endpoint but the health checks needs ``Authorization: Bearer KEY``."""
    holder: dict[str, ServerState] = {}
    limits = limits or Limits()
    comfy_jobs: dict[str, tuple] = {}
    uploads: dict[str, Any] = {}  # ComfyUI LoadImage inputs, by file name

    @asynccontextmanager
    async def lifespan(app: FastAPI):
        engine = Engine(models, config or EngineConfig())
        for spec in workflows or []:
            engine.add_workflow(spec)
        metrics = Metrics()
        engine.on_dispatch_done = metrics.on_dispatch
        await engine.start()
        holder["state"] = ServerState(engine, metrics)
        try:
            yield
        finally:
            await engine.stop()

    app = FastAPI(title="legodiffusion", version="0.1.0", lifespan=lifespan)

    @app.middleware("http")
    async def guard(request: Request, call_next):
        if api_keys and request.url.path not in ("/healthz", "/readyz"):
            auth = request.headers.get("authorization", "")
            if not auth.startswith("Bearer ") or auth[7:] not in api_keys:
                return Response(
                    content=json.dumps(error_body("unauthorized", "a valid API key is required (Authorization: Bearer KEY)")),
                    status_code=401,
                    media_type="application/json",
                )
        size = request.headers.get("content-length")
        if size is not None and size.isdigit() and int(size) > limits.max_body_bytes:
            return Response(
                content=json.dumps(
                    error_body("limit_exceeded", f"body of {size} bytes exceeds max_body_bytes={limits.max_body_bytes}", "body")
                ),
                status_code=413,
                media_type="application/json",
            )
        return await call_next(request)

    install(app)  # after the guard, so its last-resort handler wraps the guard too

    def state() -> ServerState:
        return holder["state"]

    async def submit(workflow: str, runs: list[dict], slo_s: float | None) -> list[RunRecord]:
        """Admit a request's runs (one set of inputs each) together or not at all, deciding before
        any is queued: each run is expanded, checked and costed off the event loop (a huge
        expansion stalls nothing), then the room for all of them is checked, in runs and in
        seconds of profiled work; a full queue answers 429 with ``Retry-After``, before expanding
        anything when it is full already. A request with a deadline that admission cannot meet
        is answered ``rejected`` (``SLO_REJECTED``) rather than 429, and nothing of it is queued."""
        if "state" not in holder:
            raise ApiError(503, "unavailable", "the server is starting", None, retryable=True, retry_after_s=limits.retry_unavailable_s)
        st = state()
        engine = st.engine
        if workflow not in engine.workflows:
            raise ApiError(404, "unknown_workflow", f"unknown workflow {workflow!r}; registered: {sorted(engine.workflows)}", "workflow")
        for inputs in runs:
            limits.check_inputs(inputs)
        if slo_s is None:  # full already: refused without expanding anything
            limits.check_room(len(runs), len(engine.coordinator.requests), engine.queued_work_s(), 0.0, engine.live_workers())
        bounds = limits.bounds()
        prepared = await asyncio.to_thread(lambda: [engine.prepare(workflow, inputs, slo_s, bounds) for inputs in runs])
        refusal = next((r for r in map(engine.slo_refusal, prepared) if r is not None), None)
        if refusal is None:
            ahead_s = sum(p.cost.work_s for p in prepared[:-1])  # its own runs queue ahead of its last
            limits.check_room(len(runs), len(engine.coordinator.requests), engine.queued_work_s(), ahead_s, engine.live_workers())
        recs: list[RunRecord] = []
        for p in prepared:  # no await from the room check to here: nothing else is admitted between
            st.counter += 1
            rec = RunRecord(f"run-{st.counter}", workflow, time.time())
            rec.run = engine.refuse(p, refusal) if refusal is not None else engine.submit_prepared(p)
            recs.append(rec)
        for rec in recs:
            log.info("run submitted", extra={"run_id": rec.id, "workflow": workflow})
            st.runs[rec.id] = rec
            if rec.run.future.done():  # refused at once: the answer says so, not "queued"
                finished(rec, slo_s, rec.run.future)
            else:
                rec.run.future.add_done_callback(functools.partial(finished, rec, slo_s))
        return recs

    def finished(rec: RunRecord, slo_s: float | None, fut: asyncio.Future) -> None:
        st = state()
        rec.result = fut.result()
        rec.status = rec.result.status
        st.metrics.requests.labels(rec.workflow, rec.status).inc()
        log.info(
            "run %s",
            rec.status,
            extra={"run_id": rec.id, "workflow": rec.workflow, "latency_s": round(rec.result.latency_s, 4), "error": rec.result.error},
        )
        if rec.status == "rejected":
            st.metrics.rejections.inc()
        if slo_s is not None:
            st.metrics.slo_total.inc()
            if rec.status == "succeeded" and rec.result.latency_s <= slo_s:
                st.metrics.slo_met.inc()

    @app.get("/healthz")
    async def healthz():
        return {"status": "ok"}

    @app.get("/readyz")
    async def readyz():
        return {"status": "ready" if "state" in holder else "starting"}

    @app.get("/metrics")
    async def metrics():
        st = state()
        return Response(st.metrics.render(st.engine), media_type="text/plain; version=0.0.4")

    @app.get("/v1/runs/{run_id}/events")
    async def run_events(run_id: str):
        """Server-Sent Events: progress (nodes done / total) until the run ends, then its result."""
        rec = state().runs.get(run_id)
        if rec is None:
            raise ApiError(404, "unknown_run", f"no run {run_id!r}", "run_id")

        async def stream():
            last = None
            while rec.status not in TERMINAL:
                queued = not rec.run.started
                ahead = (
                    sum(1 for r in state().runs.values() if r.created_s < rec.created_s and r.status == "running" and not r.run.started)
                    if queued
                    else 0
                )
                now = (rec.run.nodes_done, ahead)
                if now != last:
                    last = now
                    body = rec.to_json(images=False)
                    body["queue_position"] = ahead
                    yield f"event: progress\ndata: {json.dumps(body)}\n\n"
                await asyncio.sleep(0.05)
            yield f"event: {rec.status}\ndata: {json.dumps(rec.to_json())}\n\n"

        return StreamingResponse(stream(), media_type="text/event-stream")

    @app.get("/v1/catalog/models")
    async def list_models():
        return {"models": state().engine.catalog.names()}

    @app.get("/v1/models")
    async def openai_models():
        """OpenAI-compatible: the workflows a client may pass as ``model`` to /v1/images/generations."""
        st = state()
        return {"object": "list", "data": [st.model_object(name) for name in sorted(st.engine.workflows)]}

    @app.get("/v1/models/{model_id:path}")
    async def openai_model(model_id: str):
        st = state()
        if model_id not in st.engine.workflows:
            raise ApiError(404, "unknown_model", f"no workflow {model_id!r}; GET /v1/models lists them", "model")
        return st.model_object(model_id)

    @app.get("/v1/operators")
    async def list_operators():
        return {"operators": [state().engine.registry.get(n).describe() for n in state().engine.registry.names()]}

    @app.post("/v1/workflows/validate")
    async def validate_workflow(body: WorkflowBody):
        validate(spec_from_json(body.spec), state().engine.registry)
        return {"valid": True}

    @app.post("/v1/workflows")
    async def register_workflow(body: WorkflowBody):
        spec = spec_from_json(body.spec)
        engine = state().engine
        created = spec.id not in engine.workflows
        try:
            engine.add_workflow(spec, name=spec.id)
        except KeyError as exc:
            raise ApiError(400, "unknown_model", str(exc.args[0]), "models") from None
        if created:
            state().workflow_created_s[spec.id] = int(time.time())
        return {"id": spec.id, "created": created}

    @app.get("/v1/workflows")
    async def list_workflows():
        return {"workflows": sorted(state().engine.workflows)}

    @app.post("/v1/runs")
    async def create_run(body: RunBody):
        (rec,) = await submit(body.workflow, [body.inputs], body.slo_s)
        if body.wait:
            await asyncio.shield(rec.run.future)
            await asyncio.sleep(0)  # let the done-callback record the result
            return rec.to_json()
        return rec.to_json(images=False)

    @app.get("/v1/runs/{run_id}")
    async def get_run(run_id: str):
        rec = state().runs.get(run_id)
        if rec is None:
            raise ApiError(404, "unknown_run", f"no run {run_id!r}", "run_id")
        return rec.to_json()

    @app.post("/v1/runs/{run_id}/cancel")
    async def cancel_run(run_id: str):
        rec = state().runs.get(run_id)
        if rec is None:
            raise ApiError(404, "unknown_run", f"no run {run_id!r}", "run_id")
        if rec.status not in TERMINAL:
            state().engine.cancel(rec.run.request_id)
            await asyncio.sleep(0)
        return rec.to_json(images=False)

    # -- ComfyUI ------------------------------------------------------------------------------

    @app.post("/prompt")
    async def comfy_prompt(body: dict):
        from legodiffusion.server.comfy import ComfyError, parse

        st = state()
        try:
            job = parse(body.get("prompt"), set(st.engine.catalog.names()))
            try:
                limits.check_count(job.batch, "batch_size", f"prompt.{job.batch_node}.inputs.batch_size")
            except ApiError as exc:
                raise ComfyError(job.batch_node, "EmptyLatentImage", exc.message, code=exc.code, path=exc.path) from None
            if job.controlnets and job.workflow not in st.engine.workflows:  # a ControlNet variant, made once
                from legodiffusion.workflow.catalog import sd_txt2img

                st.engine.add_workflow(sd_txt2img(job.model, name=job.workflow, controlnets=tuple(job.controlnets)))
                st.workflow_created_s[job.workflow] = int(time.time())
            if job.workflow not in st.engine.workflows:
                raise ComfyError(None, None, f"no built-in workflow {job.workflow!r} for that checkpoint")
            for i, name in enumerate(job.images):
                if name not in uploads:
                    raise ComfyError(None, "LoadImage", f"image {name!r} was not uploaded (POST /upload/image)")
                job.inputs["control_image" + (f"_{i}" if i else "")] = uploads[name]
        except ComfyError as exc:
            return Response(
                json.dumps({**error_body(exc.code, exc.message, exc.path), "node_errors": exc.node_errors()}),
                status_code=400,
                media_type="application/json",
            )
        runs = await submit(job.workflow, [{**job.inputs, "seed": job.inputs["seed"] + i} for i in range(job.batch)], None)
        st.counter += 1
        prompt_id = f"prompt-{st.counter}"
        comfy_jobs[prompt_id] = (job, [r.id for r in runs])
        return {"prompt_id": prompt_id, "number": st.counter, "node_errors": {}}

    @app.post("/upload/image")
    async def comfy_upload(image: UploadFile = File(...), subfolder: str = Form(""), type: str = Form("input")):
        from PIL import Image

        data = await image.read()
        try:
            uploads[image.filename] = Image.open(io.BytesIO(data)).convert("RGB")
        except Exception:
            raise ApiError(400, "invalid_image", f"{image.filename!r} is not an image", "image") from None
        return {"name": image.filename, "subfolder": subfolder, "type": type}

    @app.get("/history/{prompt_id}")
    async def comfy_history(prompt_id: str):
        if prompt_id not in comfy_jobs:
            return {}
        job, run_ids = comfy_jobs[prompt_id]
        recs = [state().runs[r] for r in run_ids]
        if any(r.status not in TERMINAL for r in recs):
            return {}
        ok = all(r.status == "succeeded" for r in recs)
        images = [
            {"filename": f"{prompt_id}_{i:05d}.png", "subfolder": "", "type": "output"}
            for i, r in enumerate(recs)
            if r.status == "succeeded"
        ]
        return {
            prompt_id: {
                "prompt": [],
                "outputs": {job.output_node: {"images": images}},
                "status": {"status_str": "success" if ok else "error", "completed": ok, "messages": []},
            }
        }

    @app.get("/view")
    async def comfy_view(filename: str, subfolder: str = "", type: str = "output"):
        prompt_id, _, index = filename.removesuffix(".png").rpartition("_")
        if prompt_id not in comfy_jobs or not index.isdigit() or int(index) >= len(comfy_jobs[prompt_id][1]):
            raise ApiError(404, "not_found", f"no image {filename!r}", "filename")
        rec = state().runs[comfy_jobs[prompt_id][1][int(index)]]
        if rec.result is None or not rec.result.ok:
            raise ApiError(404, "not_found", f"image {filename!r} is not ready", "filename")
        return Response(to_png(rec.result.outputs["image"])[0], media_type="image/png")

    @app.post("/v1/images/generations")
    async def openai_images(body: ImagesBody):
        """OpenAI-compatible: ``model`` is a registered workflow id or name."""
        limits.check_count(body.n, "n", "n")
        if body.response_format != "b64_json":
            raise ApiError(400, "unsupported_response_format", "only response_format=b64_json is supported", "response_format")
        inputs: dict[str, Any] = {"prompt": body.prompt}
        if body.size:
            try:
                w, h = (int(x) for x in body.size.lower().split("x"))
            except ValueError:
                raise ApiError(400, "invalid_size", f"size must be WIDTHxHEIGHT, got {body.size!r}", "size") from None
            inputs.update(width=w, height=h)
        for key in ("steps", "guidance_scale", "negative_prompt"):
            if getattr(body, key) is not None:
                inputs[key] = getattr(body, key)
        base_seed = body.seed or 0
        recs = await submit(body.model, [{**inputs, "seed": base_seed + i} for i in range(body.n)], None)
        results = [await r.run.future for r in recs]
        failed = [r for r in results if not r.ok]
        if failed:
            raise ApiError(
                422 if failed[0].status == "failed" else 429, "generation_failed", failed[0].error or failed[0].status, failed[0].node
            )
        data = [{"b64_json": base64.b64encode(to_png(r.outputs["image"])[0]).decode()} for r in results]
        return {"created": int(time.time()), "data": data}

    return app
