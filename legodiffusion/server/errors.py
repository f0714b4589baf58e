"""Every HTTP error is one stable JSON object: ``{"error": {code, message, path, retryable}}``."""

from __future__ import annotations

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse
from starlette.exceptions import HTTPException as StarletteHTTPException

from legodiffusion.workflow.errors import WorkflowError


class ApiError(Exception):
    def __init__(self, status: int, code: str, message: str, path: str | None = None, retryable: bool = False) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.path, self.retryable = status, code, message, path, retryable


def error_body(code: str, message: str, path: str | None = None, retryable: bool = False, **extra) -> dict:
    return {"error": {"code": code, "message": message, "path": path, "retryable": retryable, **extra}}


def install(app: FastAPI) -> None:
    @app.exception_handler(ApiError)
    async def _api(request: Request, exc: ApiError):
        return JSONResponse(error_body(exc.code, exc.message, exc.path, exc.retryable), status_code=exc.status)

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

    @app.exception_handler(Exception)
    async def _internal(request: Request, exc: Exception):
        return JSONResponse(error_body("internal", f"{type(exc).__name__}: {exc}", retryable=True), status_code=500)
