"""`--format text`: compiler-style lines, `path:line:col: CODE [severity] message`, the fix
under each, then a summary. Coloured only when writing to a terminal."""

from __future__ import annotations

from typing import Any, TextIO

import click

from auditor.finding import Finding
from auditor.report import Report

_COLORS = {"error": "red", "warning": "yellow", "info": "cyan"}


def location(f: Finding) -> str:
    if f.path is None:
        return f.target or "<model>"
    if f.cell is not None:
        return f"{f.path}:cell {f.cell}:{f.line}:{f.column}"
    if f.line is not None:
        return f"{f.path}:{f.line}:{f.column}"
    return f"{f.path}" + (f" [{f.target}]" if f.target else "")


def _evidence_table(evidence: dict[str, Any]) -> list[str]:
    if not evidence:
        return []
    width = max(len(str(k)) for k in evidence)
    rows = []
    for key, value in evidence.items():
        if isinstance(value, float):
            value = f"{value:.4g}"
        rows.append(f"    {str(key).ljust(width)}  {value}")
    return rows


class TextReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        def style(text: str, **kw: Any) -> str:
            return click.style(text, **kw) if color else text

        for f in report.findings:
            sev = style(f"[{f.severity.value}]", fg=_COLORS[f.severity.value], bold=True)
            head = f"{style(location(f) + ':', bold=True)} {style(f.rule, bold=True)} {sev} {f.message}"
            out.write(head + "\n")
            if quiet:
                continue
            if f.fix:
                out.write(f"  {style('fix:', fg='green')} {f.fix}\n")
            for row in _evidence_table(f.evidence):
                out.write(row + "\n")
        if quiet:
            return
        for note in getattr(report, "notes", ()):
            out.write(style(f"note: {note}", fg="cyan") + "\n")
        counts = report.summary
        n = len(report.findings)
        files = report.files_checked
        noun = "file" if files == 1 else "files"
        where = f"{files} {noun}" if getattr(report, "audited", None) is None else report.audited
        if n == 0:
            out.write(style(f"No findings in {where}.", fg="green") + "\n")
        else:
            parts = f"{counts['error']} error{'s' * (counts['error'] != 1)}, {counts['warning']} warning{'s' * (counts['warning'] != 1)}, {counts['info']} info"
            out.write(style(f"Found {n} finding{'s' * (n != 1)} ({parts}) in {where}.", bold=True) + "\n")
