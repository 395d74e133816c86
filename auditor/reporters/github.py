"""`--format github`: GitHub Actions workflow commands, so findings show as annotations on
the pull request's diff (`::error file=..,line=..,col=..,title=CODE::message`)."""

from __future__ import annotations

from typing import TextIO

from auditor.report import Report

LEVELS = {"error": "error", "warning": "warning", "info": "notice"}


def _escape_data(text: str) -> str:
    return text.replace("%", "%25").replace("\r", "%0D").replace("\n", "%0A")


def _escape_property(text: str) -> str:
    return _escape_data(text).replace(":", "%3A").replace(",", "%2C")


class GithubReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        for f in report.findings:
            props = []
            if f.path:
                props.append(f"file={_escape_property(f.path)}")
                if f.line:
                    props.append(f"line={f.line}")
                    if f.column:
                        props.append(f"col={f.column}")
                    if f.end_line:
                        props.append(f"endLine={f.end_line}")
            title = f"{f.rule} {f.name}" + (f" (cell {f.cell})" if f.cell else "") + (f" [{f.target}]" if f.target else "")
            props.append(f"title={_escape_property(title)}")
            message = f"{f.message}\nfix: {f.fix}"
            out.write(f"::{LEVELS[f.severity.value]} {','.join(props)}::{_escape_data(message)}\n")
