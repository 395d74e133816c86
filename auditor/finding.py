"""Findings and severities: the one record every rule, reporter and exit code works from."""

from __future__ import annotations

from enum import Enum
from typing import Any, NamedTuple

CATEGORIES = (
    "preprocessing",
    "batchnorm",
    "inference-mutation",
    "head",
    "learning-rate",
    "security",
    "determinism",
    "loading",
    "usage",
)


class Severity(str, Enum):
    """Ordered severities. `--fail-on` compares against `rank`."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"

    @property
    def rank(self) -> int:
        return _RANK[self]

    @classmethod
    def parse(cls, text: str) -> "Severity":
        try:
            return cls(text.strip().lower())
        except ValueError:
            raise ValueError(f"unknown severity {text!r} (expected error, warning or info)") from None


_RANK = {Severity.INFO: 1, Severity.WARNING: 2, Severity.ERROR: 3}


class Finding(NamedTuple):
    """One problem found. Static findings carry a place in a file; dynamic ones a target.

    `line` and `column` are 1-based, as compilers and SARIF count. For notebooks, `cell` is
    the 1-based index among code cells and `line` counts within that cell. (A NamedTuple,
    not a dataclass: `auditor check` runs in pre-commit hooks and every millisecond of
    import time is paid on each commit.)
    """

    rule: str
    name: str
    category: str
    severity: Severity
    message: str
    fix: str
    path: str | None = None
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None
    cell: int | None = None
    target: str | None = None
    evidence: dict[str, Any] = {}  # never mutated; rules always pass their own dict

    def sort_key(self) -> tuple:
        return (
            self.path or "",
            self.cell or 0,
            self.line or 0,
            self.column or 0,
            self.rule,
            self.target or "",
        )

    def to_json(self) -> dict[str, Any]:
        """The contract's keys first (never renamed), then the additive ones."""
        data: dict[str, Any] = {
            "rule": self.rule,
            "name": self.name,
            "category": self.category,
            "severity": self.severity.value,
            "message": self.message,
            "path": self.path,
            "line": self.line,
            "column": self.column,
            "target": self.target,
            "evidence": dict(self.evidence),
            "fix": self.fix,
        }
        if self.cell is not None:
            data["cell"] = self.cell
        if self.end_line is not None:
            data["end_line"] = self.end_line
            data["end_column"] = self.end_column
        return data

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> "Finding":
        kwargs = {k: v for k, v in data.items() if k in cls._fields}
        kwargs["severity"] = Severity(kwargs["severity"])
        return cls(**kwargs)
