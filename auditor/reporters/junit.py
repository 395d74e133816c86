"""`--format junit`: JUnit XML for CI test dashboards. One suite per file (or target), one
failing test case per finding, and one passing case for a clean run (ruff's `junit.rs`)."""

from __future__ import annotations

from collections import OrderedDict
from typing import TextIO
from xml.etree import ElementTree as ET

from auditor.reporters.text import location
from auditor.report import Report


class JunitReporter:
    def render(self, report: Report, out: TextIO, *, color: bool = False, quiet: bool = False) -> None:
        groups: "OrderedDict[str, list]" = OrderedDict()
        for f in report.findings:
            groups.setdefault(f.path or f.target or "<model>", []).append(f)
        root = ET.Element("testsuites", name="auditor", tests=str(max(1, len(report.findings))), failures=str(len(report.findings)))
        if not groups:
            suite = ET.SubElement(root, "testsuite", name="auditor", tests="1", failures="0")
            ET.SubElement(suite, "testcase", name="No findings", classname="auditor")
        for name, findings in groups.items():
            suite = ET.SubElement(root, "testsuite", name=name, tests=str(len(findings)), failures=str(len(findings)))
            for f in findings:
                case = ET.SubElement(suite, "testcase", name=f"{f.rule} {f.name} at {location(f)}", classname=name)
                case.set("file", f.path or "")
                if f.line:
                    case.set("line", str(f.line))
                failure = ET.SubElement(case, "failure", message=f.message, type=f.severity.value)
                lines = [f"{location(f)}: {f.rule} [{f.severity.value}] {f.message}", f"fix: {f.fix}"]
                lines += [f"{k}: {v}" for k, v in f.evidence.items()]
                failure.text = "\n".join(lines)
        ET.indent(root)
        out.write('<?xml version="1.0" encoding="UTF-8"?>\n')
        out.write(ET.tostring(root, encoding="unicode"))
        out.write("\n")
