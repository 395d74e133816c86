"""`--format sarif`: SARIF 2.1.0 for code-scanning UIs (GitHub, GitLab, VS Code).

Rules come from their docstrings (ruff's single source): the summary is `shortDescription`,
the whole documentation `fullDescription`/`help`. Severities map error/warning/info to SARIF
error/warning/note. Notebook findings keep their cell in `properties.cell` (SARIF has no cell
concept); dynamic findings without a file get a logical location named by their target.
"""

from __future__ import annotations

import json
from typing import Any, TextIO

from auditor._version import __version__
from auditor.report import Report, environment

LEVELS = {"error": "error", "warning": "warning", "info": "note"}
SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"


def _rule_descriptor(code: str) -> dict[str, Any]:
    from auditor.registry import rule_by_code

    rule = rule_by_code(code)
    if rule is None:  # pragma: no cover - findings always come from registered rules
        return {"id": code}
    return {
        "id": rule.code,
        "name": rule.name,
        "shortDescription": {"text": rule.summary()},
        "fullDescription": {"text": rule.documentation()},
        "help": {"text": rule.fix, "markdown": rule.documentation()},
        "defaultConfiguration": {"level": LEVELS[rule.severity.value], "enabled": rule.enabled_by_default},
        "properties": {"category": rule.category, "kind": rule.kind, "tags": [rule.category, rule.kind]},
    }


class SarifReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        codes: list[str] = []
        for f in report.findings:
            if f.rule not in codes:
                codes.append(f.rule)
        index = {code: i for i, code in enumerate(codes)}
        results = []
        for f in report.findings:
            result: dict[str, Any] = {
                "ruleId": f.rule,
                "ruleIndex": index[f.rule],
                "level": LEVELS[f.severity.value],
                "message": {"text": f.message},
                "properties": {"fix": f.fix, "category": f.category},
            }
            if f.evidence:
                result["properties"]["evidence"] = f.evidence
            if f.cell is not None:
                result["properties"]["cell"] = f.cell
            if f.path:
                region: dict[str, Any] = {}
                if f.line:
                    region["startLine"] = f.line
                    if f.column:
                        region["startColumn"] = f.column
                    if f.end_line and f.end_line >= f.line:
                        region["endLine"] = f.end_line
                        if f.end_column and (f.end_line > f.line or f.end_column > (f.column or 0)):
                            region["endColumn"] = f.end_column
                physical: dict[str, Any] = {"artifactLocation": {"uri": f.path.replace("\\", "/")}}
                if region:
                    physical["region"] = region
                location: dict[str, Any] = {"physicalLocation": physical}
                if f.target:
                    location["logicalLocations"] = [{"name": f.target, "kind": "member"}]
                result["locations"] = [location]
            elif f.target:
                result["locations"] = [{"logicalLocations": [{"name": f.target, "kind": "member"}]}]
            results.append(result)
        doc = {
            "$schema": SCHEMA,
            "version": "2.1.0",
            "runs": [
                {
                    "tool": {
                        "driver": {
                            "name": "auditor",
                            "version": __version__,
                            "semanticVersion": __version__,
                            "rules": [_rule_descriptor(c) for c in codes],
                        }
                    },
                    "invocations": [{"executionSuccessful": True, "properties": {"environment": environment()}}],
                    "results": results,
                }
            ],
        }
        json.dump(doc, out, indent=2, default=str)
        out.write("\n")
