"""The result of a run: findings plus what reporters and exit codes need around them."""

from __future__ import annotations

import sys
from typing import Any

from auditor._version import __version__
from auditor.finding import Finding, Severity

FRAMEWORK_MODULES = {"torch": "torch", "tensorflow": "tensorflow", "keras": "keras"}


def environment() -> dict[str, Any]:
    """Versions of what was imported (null where not imported: static runs import none)."""
    env: dict[str, Any] = {"python": ".".join(str(v) for v in sys.version_info[:3])}
    for key, module in FRAMEWORK_MODULES.items():
        mod = sys.modules.get(module)
        env[key] = getattr(mod, "__version__", None) if mod is not None else None
    keras = sys.modules.get("keras")
    backend = None
    if keras is not None:
        try:
            backend = keras.config.backend()
        except Exception:  # noqa: BLE001 - a partial keras import has no backend to report
            backend = None
    env["keras_backend"] = backend
    return env


class Report:
    """Findings of a run plus what reporters and exit codes need around them."""

    def __init__(self, findings: list[Finding] | None = None, files_checked: int = 0, notes: list[str] | None = None, audited: str | None = None):
        self.findings = findings or []
        self.files_checked = files_checked
        #: what the run wants the reader to know besides findings (a synthetic sample was
        #: used, probes that could not run); JSON key "notes", added only when present
        self.notes = list(notes or [])
        #: the dynamic audit's target as the user named it (None for static checks)
        self.audited = audited

    @property
    def summary(self) -> dict[str, int]:
        counts = {"error": 0, "warning": 0, "info": 0}
        for f in self.findings:
            counts[f.severity.value] += 1
        return counts

    def exit_code(self, fail_on: str = "warning") -> int:
        if fail_on == "never":
            return 0
        threshold = Severity.parse(fail_on).rank
        return 1 if any(f.severity.rank >= threshold for f in self.findings) else 0

    def to_json(self) -> dict[str, Any]:
        data = {
            "tool": {"name": "auditor", "version": __version__},
            "environment": environment(),
            "findings": [f.to_json() for f in self.findings],
            "summary": self.summary,
        }
        if self.audited is not None:
            data["target"] = self.audited
        if self.notes:
            data["notes"] = list(self.notes)
        return data
