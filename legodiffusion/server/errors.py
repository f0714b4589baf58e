"""Every HTTP error is one stable JSON object: ``{"error": {code, message, path, retryable}}``."""

from __future__ import annotations

import logging
import math

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legodiffusion.workflow.errors import WorkflowError

log = logging.getLogger("legodiffusion.server")


class ApiError(Exception):
    """``retry_after_s``: when a retry may succeed (a full queue, no worker), sent as the
    ``Retry-After`` header and as the error's ``retry_after_s``; ``extra``: more fields of the
    error object (e.g. the ``tenant`` a per-tenant limit refused)."""

    def __init__(
        self,
        status: int,
        code: str,
        message: str,
        path: str | None = None,
        retryable: bool = False,
        retry_after_s: int | None = None,
        **extra,
    ) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.path, self.retryable = status, code, message, path, retryable
        self.retry_after_s = retry_after_s
        self.extra = extra


def retry_later(message: str, wait_s: float, path: str | None, **extra) -> ApiError:
    """429 ``limit_exceeded``: room for the request in about ``wait_s`` seconds (``Retry-After``:
    that, rounded up, at least 1)."""
    after = max(1, math.ceil(wait_s))
    return ApiError(429, "limit_exceeded", f"{message}; retry after {after}s", path, retryable=True, retry_after_s=after, **extra)


def runs_drain_s(excess: int, work_s: float, workers: float, runs: int) -> float:
    """When ``excess`` of ``runs`` runs in flight (holding ``work_s`` of profiled work over
    ``workers``, in workers' worth of profiled work done per second) will have left, at the mean
    run's pace."""
    return excess * work_s / max(workers, 1) / max(runs, 1)


def error_body(code: str, message: str, path: str | None = None, retryable: bool = False, **extra) -> dict:
    return {"error": {"code": code, "message": message, "path": path, "retryable": retryable, **extra}}


class LastResort:
    """Answers an exception no handler took with the JSON 500, and ends the exchange there.

    Starlette's own last resort answers and then re-raises, and uvicorn closes the connection on
    an exception, so a keep-alive client's next request on it was reset. A 500 is not retryable:
    the same request meets the same bug. Only a response already under way (a stream) cannot be
    replaced; that one still ends the connection."""

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started = False

        async def tracked(message: Message) -> None:
            nonlocal started
            started = started or message["type"] == "http.response.start"
            await send(message)

        try:
            await self.app(scope, receive, tracked)
        except Exception as exc:
            if started:
                raise
            log.exception("unhandled error on %s %s", scope.get("method"), scope.get("path"))
            response = JSONResponse(error_body("internal", f"{type(exc).__name__}: {exc}"), status_code=500)
            await response(scope, receive, send)


def install(app: FastAPI) -> None:
    """The error handlers, and :class:`LastResort` as the outermost middleware added so far."""

    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        if exc.retry_after_s is None:
            return JSONResponse(error_body(exc.code, exc.message, exc.path, exc.retryable, **exc.extra), status_code=exc.status)
        body = error_body(exc.code, exc.message, exc.path, exc.retryable, retry_after_s=exc.retry_after_s, **exc.extra)
        return JSONResponse(body, status_code=exc.status, headers={"Retry-After": str(exc.retry_after_s)})

    @app.exception_handler(WorkflowError)
    async def _workflow(request: Request, exc: WorkflowError):
        first = exc.issues[0]
        return JSONResponse(error_body(first.code, str(exc), first.path, issues=exc.to_json()), status_code=400)

    @app.exception_handler(RequestValidationError)
    async def _validation(request: Request, exc: RequestValidationError):
        errs = exc.errors()
        first = errs[0] if errs else {}
        path = ".".join(str(p) for p in first.get("loc", ()) if p != "body") or None
        return JSONResponse(error_body("invalid_request", first.get("msg", "invalid request"), path), status_code=400)

    @app.exception_handler(StarletteHTTPException)
    async def _http(request: Request, exc: StarletteHTTPException):
        code = {404: "not_found", 405: "method_not_allowed"}.get(exc.status_code, "http_error")
        return JSONResponse(error_body(code, str(exc.detail)), status_code=exc.status_code)

    app.add_middleware(LastResort)
