"""Request limits, each named in the error that enforces it."""

from __future__ import annotations

from dataclasses import dataclass

from legodiffusion.server.errors import ApiError


@dataclass
class Limits:
    max_body_bytes: int = 32 * 2**20
    """Largest request body."""
    max_pixels: int = 2048 * 2048
    """Largest height x width."""
    max_steps: int = 200
    """Most sampling steps per request."""
    max_n: int = 8
    """Most images per OpenAI-style request."""
    max_prompt_chars: int = 4000
    """Longest prompt or negative prompt."""
    max_queued: int = 1000
    """Most requests in flight; more get 429 with Retry-After semantics (retryable)."""

    def check(self, inputs: dict, queued: int) -> None:
        if queued >= self.max_queued:
            raise ApiError(429, "limit_exceeded", f"{queued} requests in flight: max_queued={self.max_queued}", "inputs", retryable=True)
        h, w = inputs.get("height"), inputs.get("width")
        if isinstance(h, int) and isinstance(w, int) and h * w > self.max_pixels:
            raise ApiError(400, "limit_exceeded", f"{w}x{h} exceeds max_pixels={self.max_pixels}", "inputs.height")
        steps = inputs.get("steps")
        if isinstance(steps, int) and steps > self.max_steps:
            raise ApiError(400, "limit_exceeded", f"steps={steps} exceeds max_steps={self.max_steps}", "inputs.steps")
        for key in ("prompt", "negative_prompt"):
            text = inputs.get(key)
            if isinstance(text, str) and len(text) > self.max_prompt_chars:
                raise ApiError(
                    400,
                    "limit_exceeded",
                    f"{key} of {len(text)} characters exceeds max_prompt_chars={self.max_prompt_chars}",
                    f"inputs.{key}",
                )
