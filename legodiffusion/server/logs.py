"""Structured logs: one JSON object per line, with the run id where there is one."""

from __future__ import annotations

import json
import logging
import time

_FIELDS = ("run_id", "workflow", "tenant", "latency_s", "error")


class JsonFormatter(logging.Formatter):
    def format(self, record: logging.LogRecord) -> str:
        out = {"ts": round(time.time(), 3), "level": record.levelname.lower(), "logger": record.name, "msg": record.getMessage()}
        for key in _FIELDS:
            value = getattr(record, key, None)
            if value is not None:
                out[key] = value
        return json.dumps(out)


def configure(level: str = "info") -> None:
    handler = logging.StreamHandler()
    handler.setFormatter(JsonFormatter())
    logger = logging.getLogger("legodiffusion")
    logger.handlers[:] = [handler]
    logger.setLevel(level.upper())
    logger.propagate = False
