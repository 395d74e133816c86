"""Inline suppression: `# auditor: ignore[CODE,...]` (codes or prefixes) or a bare
`# auditor: ignore` on the line a finding points at."""

from __future__ import annotations

import re

from auditor.finding import Finding

_PRAGMA = re.compile(r"#\s*auditor\s*:\s*ignore(?:\[([^\]]*)\])?", re.I)
ALL = frozenset({""})


def pragmas(lines: list[str], cell_lines: list[tuple[int, int]] | None) -> dict[tuple[int | None, int], frozenset[str]]:
    """(cell, line) -> the code prefixes ignored there."""
    out: dict[tuple[int | None, int], frozenset[str]] = {}
    for index, text in enumerate(lines):
        if "auditor" not in text:
            continue
        match = _PRAGMA.search(text)
        if not match:
            continue
        codes = match.group(1)
        prefixes = ALL if codes is None else frozenset(c.strip().upper() for c in codes.split(",") if c.strip()) or ALL
        place = cell_lines[index] if cell_lines is not None and index < len(cell_lines) else (None, index + 1)
        out[place] = prefixes
    return out


def is_suppressed(finding: Finding, table: dict[tuple[int | None, int], frozenset[str]]) -> bool:
    if finding.line is None:
        return False
    lines = {finding.line}
    if finding.end_line:
        lines.add(finding.end_line)
    for line in lines:
        prefixes = table.get((finding.cell, line))
        if prefixes and any(finding.rule.startswith(p) for p in prefixes):
            return True
    return False
