"""The outer gate of every HTTP request: the API key, and the body size (``max_body_bytes``),
checked before any handler runs; the key's tenant is put in the request's scope state
(``tenant_of`` reads it). A plain ASGI middleware, so that a handler still sees its client's
disconnect (Starlette's ``BaseHTTPMiddleware`` hides it)."""

from __future__ import annotations

import base64
import binascii

from fastapi.responses import JSONResponse
from starlette.datastructures import Headers
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from legodiffusion.config import TenantSpec
from legodiffusion.server.errors import error_body

OPEN_PATHS = ("/healthz", "/readyz")
"""Answered without an API key."""
CHALLENGE = 'Bearer realm="legodiffusion", Basic realm="legodiffusion", charset="UTF-8"'
"""Sent with a 401: a browser (the dashboard) then asks for the key, as the password."""


def presented_key(authorization: str) -> str | None:
    """The API key an ``Authorization`` header carries: ``Bearer KEY``, or HTTP Basic with the
    key as the password (any user name), which is what a browser sends."""
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() == "bearer":
        return value
    if scheme.lower() == "basic":
        try:
            return base64.b64decode(value, validate=True).decode().partition(":")[2]
        except (binascii.Error, UnicodeDecodeError):
            return None
    return None


class Guard:
    """``api_keys``: key -> its tenant (None or empty: the server is open, every request the
    default tenant's)."""

    def __init__(self, app: ASGIApp, api_keys: dict[str, TenantSpec] | None, max_body_bytes: int) -> None:
        self.app, self.api_keys, self.max_body_bytes = app, api_keys, max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        headers = Headers(scope=scope)
        if self.api_keys and scope["path"] not in OPEN_PATHS:
            tenant = self.api_keys.get(presented_key(headers.get("authorization", "")))
            if tenant is None:
                body = error_body("unauthorized", "a valid API key is required (Authorization: Bearer KEY)")
                await JSONResponse(body, status_code=401, headers={"WWW-Authenticate": CHALLENGE})(scope, receive, send)
                return
            scope.setdefault("state", {})["tenant"] = tenant
        size = headers.get("content-length")
        if size is not None:
            if size.isdigit() and int(size) > self.max_body_bytes:
                await self._too_large(f"body of {size} bytes", scope, receive, send)
                return
            await self.app(scope, receive, send)  # the server reads no more than Content-Length
            return
        # no Content-Length (chunked): read the body here, counting, and stop at the limit
        parts, held = [], 0
        while True:
            message = await receive()
            if message["type"] != "http.request":
                break  # the client left; the handler will see it
            held += len(message.get("body", b""))
            if held > self.max_body_bytes:
                await self._too_large(f"body of more than {held} bytes (chunked)", scope, receive, send)
                return
            parts.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        replay: list[Message] = [message if message["type"] != "http.request" else {"type": "http.request", "body": b"".join(parts)}]

        async def replayed() -> Message:
            return replay.pop() if replay else await receive()

        await self.app(scope, replayed, send)

    async def _too_large(self, what: str, scope: Scope, receive: Receive, send: Send) -> None:
        body = error_body("limit_exceeded", f"{what} exceeds max_body_bytes={self.max_body_bytes}", "body")
        await JSONResponse(body, status_code=413, headers={"Connection": "close"})(scope, receive, send)
