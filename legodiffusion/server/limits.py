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
    """Most runs one request may ask for: OpenAI ``n``, ComfyUI ``batch_size`` (each is one run,
    and all of a request's runs are admitted together or not at all)."""
    max_prompt_chars: int = 4000
    """Longest prompt or negative prompt."""
    max_queued: int = 1000
    """Most runs in flight; a request whose runs do not all fit gets 429 (retryable), whole."""

    def check_count(self, n: int, name: str, path: str) -> None:
        """A request's run count ``n`` (its field ``name`` at ``path``): at least 1, at most ``max_n``."""
        if n < 1:
            raise ApiError(400, "invalid_request", f"{name} must be at least 1, got {n}", path)
        if n > self.max_n:
            raise ApiError(400, "limit_exceeded", f"{name}={n} exceeds max_n={self.max_n}", path)

    def check_room(self, n: int, queued: int) -> None:
        """Room for all ``n`` runs of one request beside the ``queued`` runs in flight."""
        if queued + n > self.max_queued:
            raise ApiError(
                429,
                "limit_exceeded",
                f"{queued} runs in flight and {n} runs asked for: max_queued={self.max_queued}",
                "inputs",
                retryable=True,
            )

    def check_inputs(self, inputs: dict) -> None:
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
