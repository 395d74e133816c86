"""One canned report (static, notebook, dynamic with no path, syntax error; and empty)
through every reporter, parsed back (ruff's shared emitter tests)."""

from __future__ import annotations

import io
import json
import re
from pathlib import Path
from xml.etree import ElementTree as ET

import pytest
from conftest import ROOT

from auditor.finding import Finding, Severity
from auditor.report import Report
from auditor.reporters import FORMATS, reporters

SARIF_SCHEMA = ROOT.parent / "shared" / "schemas" / "sarif-2.1.0.json"

FINDINGS = [
    Finding("SEC001", "torch-load-unsafe", "security", Severity.ERROR, "torch.load(weights_only=False): unsafe", "Pass weights_only=True.", path="train.py", line=3, column=5, end_line=3, end_column=40),
    Finding("SEC001", "torch-load-unsafe", "security", Severity.WARNING, "a, b: 100% \"quoted\"\nsecond line", "fix it", path="nb.ipynb", line=2, column=1, cell=4),
    Finding("USE001", "syntax-error", "usage", Severity.ERROR, "syntax error: invalid syntax", "Fix the syntax error.", path="broken.py", line=1, column=7),
    Finding("USE003", "rule-failure", "usage", Severity.INFO, "dynamic-style finding", "see docs", target="backbone.bn1", evidence={"drift": 12.5, "layer": "bn1"}),
]
FULL = Report(FINDINGS, files_checked=3)
EMPTY = Report([], files_checked=2)


def render(fmt: str, report: Report) -> str:
    buf = io.StringIO()
    reporters()[fmt]().render(report, buf, color=False, quiet=False)
    return buf.getvalue()


def test_format_choices_are_the_registry():
    assert tuple(reporters()) == FORMATS


def test_text():
    out = render("text", FULL)
    assert out.splitlines()[0] == "train.py:3:5: SEC001 [error] torch.load(weights_only=False): unsafe"
    assert "nb.ipynb:cell 4:2:1: SEC001 [warning]" in out
    assert "backbone.bn1: USE003 [info] dynamic-style finding" in out
    assert re.search(r"^    drift\s+12\.5$", out, re.M) and re.search(r"^    layer\s+bn1$", out, re.M)
    assert out.strip().endswith("Found 4 findings (2 errors, 1 warning, 1 info) in 3 files.")
    assert render("text", EMPTY).strip() == "No findings in 2 files."


def test_json_round_trip():
    data = json.loads(render("json", FULL))
    assert [Finding.from_json(f) for f in data["findings"]] == FINDINGS
    assert data["summary"] == {"error": 2, "warning": 1, "info": 1}
    assert data["findings"][1]["cell"] == 4
    assert json.loads(render("json", EMPTY))["findings"] == []


@pytest.mark.parametrize("report", [FULL, EMPTY], ids=["full", "empty"])
def test_sarif_is_valid(report):
    doc = json.loads(render("sarif", report))
    if SARIF_SCHEMA.exists():
        jsonschema = pytest.importorskip("jsonschema")
        jsonschema.validate(doc, json.loads(SARIF_SCHEMA.read_text()))
    run = doc["runs"][0]
    assert doc["version"] == "2.1.0" and run["tool"]["driver"]["name"] == "auditor"
    assert len(run["results"]) == len(report.findings)
    if report.findings:
        ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
        assert ids == ["SEC001", "USE001", "USE003"]
        first = run["results"][0]
        assert first["level"] == "error"
        assert first["locations"][0]["physicalLocation"]["region"] == {"startLine": 3, "startColumn": 5, "endLine": 3, "endColumn": 40}
        assert run["results"][1]["properties"]["cell"] == 4 and run["results"][1]["level"] == "warning"
        assert run["results"][3]["level"] == "note"
        assert run["results"][3]["locations"][0]["logicalLocations"][0]["name"] == "backbone.bn1"
        assert "## What it does" in run["tool"]["driver"]["rules"][0]["fullDescription"]["text"]


def test_junit_parses():
    root = ET.fromstring(render("junit", FULL))
    cases = root.findall(".//testcase")
    assert len(cases) == 4 and all(c.find("failure") is not None for c in cases)
    assert {s.get("name") for s in root.findall("testsuite")} == {"train.py", "nb.ipynb", "broken.py", "backbone.bn1"}
    empty = ET.fromstring(render("junit", EMPTY))
    (case,) = empty.findall(".//testcase")
    assert case.find("failure") is None


def test_github_annotations():
    lines = render("github", FULL).splitlines()
    assert lines[0] == "::error file=train.py,line=3,col=5,endLine=3,title=SEC001 torch-load-unsafe::torch.load(weights_only=False): unsafe%0Afix: Pass weights_only=True."
    assert lines[1].startswith("::warning file=nb.ipynb,line=2,col=1,title=SEC001 torch-load-unsafe (cell 4)::a, b: 100%25 \"quoted\"%0Asecond line")
    assert lines[3].startswith("::notice title=USE003 rule-failure [backbone.bn1]::")
    assert len(lines) == 4
    assert render("github", EMPTY) == ""


def test_html_is_one_escaped_self_contained_file():
    from html.parser import HTMLParser

    report = Report(FINDINGS + [Finding("BNS101", "x", "batchnorm", Severity.WARNING, "<script>alert(1)</script>", "fix & go", target="layer<1>", evidence={"z": 3.14159, "layers": ["a", "b"]})], files_checked=1, notes=["synthetic <sample>"], audited="m.py:build")
    out = render("html", report)
    assert out.startswith("<!DOCTYPE html>") and out.rstrip().endswith("</html>")
    assert "<script>" not in out and "&lt;script&gt;" in out and "layer&lt;1&gt;" in out
    assert "http://" not in out and "https://" not in out and "<link" not in out, "self-contained: no external resources"
    tags = []

    class Collect(HTMLParser):
        def handle_starttag(self, tag, attrs):
            tags.append(tag)

    Collect().feed(out)
    assert tags.count("div") == len(report.findings)
    assert "3.142" in out and "note: synthetic &lt;sample&gt;" in out


def test_json_notes_and_target_are_additive():
    data = json.loads(render("json", Report([], files_checked=1, notes=["n"], audited="t.pt")))
    assert data["notes"] == ["n"] and data["target"] == "t.pt"
    assert "notes" not in json.loads(render("json", EMPTY)) and "target" not in json.loads(render("json", EMPTY))
