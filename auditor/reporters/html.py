"""`--format html`: one self-contained report file (inline CSS, no scripts, no external
resources), for attaching to a CI run or mailing to a colleague. Every value is escaped."""

from __future__ import annotations

import html
import json
from typing import Any, TextIO

from auditor.report import Report, environment
from auditor.reporters.text import location

_CSS = """
body{font-family:system-ui,-apple-system,Segoe UI,sans-serif;margin:2rem;color:#1d2330;max-width:72rem}
h1{font-size:1.4rem}h2{font-size:1.05rem;margin:0}
.summary span{display:inline-block;margin-right:1rem;padding:.2rem .6rem;border-radius:.3rem;background:#eef}
.finding{border-left:.35rem solid #999;padding:.6rem 1rem;margin:1rem 0;background:#fafafa}
.error{border-color:#c62828}.warning{border-color:#ef8f00}.info{border-color:#0277bd}
.sev{font-weight:bold;text-transform:uppercase;font-size:.8rem}
code{background:#eef;padding:0 .25rem;border-radius:.2rem}
table.evidence{border-collapse:collapse;margin-top:.4rem;font-size:.9rem}
table.evidence td{border:1px solid #ddd;padding:.15rem .5rem;vertical-align:top}
.fix{color:#2e7d32}.note{color:#0277bd}.env{color:#555;font-size:.85rem}
"""


def _value(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, (dict, list, tuple)):
        return json.dumps(value, default=str)
    return str(value)


class HtmlReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        esc = html.escape
        title = f"auditor report: {report.audited}" if getattr(report, "audited", None) else "auditor report"
        counts = report.summary
        parts = [
            "<!DOCTYPE html>",
            '<html lang="en"><head><meta charset="utf-8">',
            f"<title>{esc(title)}</title><style>{_CSS}</style></head><body>",
            f"<h1>{esc(title)}</h1>",
            '<p class="summary">' + "".join(f"<span>{esc(k)}: {v}</span>" for k, v in counts.items()) + "</p>",
        ]
        env = environment()
        parts.append('<p class="env">' + esc(", ".join(f"{k} {v}" for k, v in env.items() if v)) + "</p>")
        for note in getattr(report, "notes", ()):
            parts.append(f'<p class="note">note: {esc(note)}</p>')
        if not report.findings:
            parts.append("<p>No findings.</p>")
        for f in report.findings:
            sev = f.severity.value
            parts.append(f'<div class="finding {sev}">')
            parts.append(f'<h2><span class="sev">{esc(sev)}</span> <code>{esc(f.rule)}</code> {esc(f.name)} &middot; <code>{esc(location(f))}</code></h2>')
            parts.append(f"<p>{esc(f.message)}</p>")
            if f.fix and not quiet:
                parts.append(f'<p class="fix">fix: {esc(f.fix)}</p>')
            if f.evidence and not quiet:
                rows = "".join(f"<tr><td>{esc(str(k))}</td><td>{esc(_value(v))}</td></tr>" for k, v in f.evidence.items())
                parts.append(f'<table class="evidence">{rows}</table>')
            parts.append("</div>")
        parts.append("</body></html>")
        out.write("\n".join(parts) + "\n")
