"""`--format json`: the contract's document, one JSON object."""

from __future__ import annotations

import json
from typing import TextIO

from auditor.report import Report


class JsonReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        json.dump(report.to_json(), out, indent=2, sort_keys=False, default=str)
        out.write("\n")
