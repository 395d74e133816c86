"""Baselines: adopt the linter on an old code base by recording today's findings and
reporting only new ones. Fingerprints hash the rule, the path and the flagged line's text, so
findings survive edits elsewhere in the file."""

from __future__ import annotations

import json
from collections import Counter
from typing import Sequence

from auditor.errors import UsageFailure
from auditor.finding import Finding


def write(path: str, findings: Sequence[Finding], fingerprints: Sequence[str | None]) -> None:
    rows = [
        {"rule": f.rule, "path": f.path, "fingerprint": fp, "message": f.message}
        for f, fp in zip(findings, fingerprints)
    ]
    try:
        with open(path, "w", encoding="utf-8") as fh:
            json.dump({"version": 1, "findings": rows}, fh, indent=2)
            fh.write("\n")
    except OSError as exc:
        raise UsageFailure(f"cannot write baseline {path}: {exc.strerror or exc}") from None


def filter_new(path: str, findings: Sequence[Finding], fingerprints: Sequence[str | None]) -> list[Finding]:
    try:
        with open(path, encoding="utf-8") as fh:
            data = json.load(fh)
        known = Counter(row["fingerprint"] for row in data["findings"])
    except OSError as exc:
        raise UsageFailure(f"cannot read baseline {path}: {exc.strerror or exc}") from None
    except (ValueError, KeyError, TypeError):
        raise UsageFailure(f"{path}: not an auditor baseline file") from None
    out = []
    for finding, fp in zip(findings, fingerprints):
        if fp is not None and known[fp] > 0:
            known[fp] -= 1
            continue
        out.append(finding)
    return out
