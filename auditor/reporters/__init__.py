"""Output formats. Each reporter renders a whole `Report` to a text stream; `--format`
choices come from `REPORTERS`, so adding a format is adding a module and one entry here."""

from __future__ import annotations

from typing import Protocol, TextIO

from auditor.report import Report


class Reporter(Protocol):
    def render(self, report: Report, out: TextIO, *, color: bool, quiet: bool) -> None: ...


def reporters() -> dict[str, type]:
    from auditor.reporters.json_reporter import JsonReporter
    from auditor.reporters.text import TextReporter

    return {"text": TextReporter, "json": JsonReporter}


FORMATS = ("text", "json")
