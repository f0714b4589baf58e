"""Workflow errors that name where they are."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class SpecIssue:
    """One problem: a stable ``code``, the ``path`` of the offending node/port, and a message."""

    code: str
    path: str
    message: str

    def __str__(self) -> str:
        return f"{self.path}: {self.message} [{self.code}]"


class WorkflowError(ValueError):
    """A workflow spec or a request's inputs are invalid; ``issues`` lists every problem."""

    def __init__(self, issues: list[SpecIssue]) -> None:
        self.issues = list(issues)
        super().__init__("; ".join(str(i) for i in self.issues))

    def to_json(self) -> list[dict]:
        return [{"code": i.code, "path": i.path, "message": i.message} for i in self.issues]
