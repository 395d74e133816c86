"""The command line as users and CI systems see it: exit codes, formats, configuration,
suppression, notebooks, standard input, baselines, parallelism and the cache."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
from click.testing import CliRunner

from auditor.cli import main

BAD_SEC = "import torch\nstate = torch.load('model.pt', weights_only=False)\n"
WARN_SEC = "import torch\nstate = torch.load('model.pt')\n"
CLEAN = "import torch\nstate = torch.load('model.pt', weights_only=True)\n"
LINE_RE = re.compile(r"^(?P<path>[^:]+):(?P<line>\d+):(?P<col>\d+): (?P<code>[A-Z]{3}\d{3}) \[(?P<sev>error|warning|info)\] .+$")


@pytest.fixture()
def run(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("AUDITOR_CACHE_DIR", str(tmp_path / ".cache"))
    runner = CliRunner()

    def invoke(*args: str, input: str | None = None):
        return runner.invoke(main, list(args), input=input, catch_exceptions=False)

    return invoke


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text, encoding="utf-8")
    return path


# ------------------------------------------------------------------ exit codes
def test_exit_0_when_clean(run, tmp_path):
    write(tmp_path / "ok.py", CLEAN)
    result = run("check", "ok.py")
    assert result.exit_code == 0, result.output
    assert "No findings in 1 file." in result.output


def test_exit_1_on_finding_and_compiler_style_line(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    result = run("check", "bad.py")
    assert result.exit_code == 1
    first = result.output.splitlines()[0]
    m = LINE_RE.match(first)
    assert m, first
    assert (m["path"], m["line"], m["col"], m["code"], m["sev"]) == ("bad.py", "2", "9", "SEC001", "error")
    assert "\x1b[" not in result.output, "no colour when piped"
    assert "fix:" in result.output
    assert result.output.strip().splitlines()[-1] == "Found 1 finding (1 error, 0 warnings, 0 info) in 1 file."


def test_fail_on_threshold(run, tmp_path):
    write(tmp_path / "warn.py", WARN_SEC)
    assert run("check", "warn.py").exit_code == 1  # default: warning
    assert run("check", "warn.py", "--fail-on", "error").exit_code == 0
    assert run("check", "warn.py", "--fail-on", "never").exit_code == 0
    assert run("check", "warn.py", "--fail-on", "info").exit_code == 1


def test_exit_2_missing_path_one_line(tmp_path):
    proc = subprocess.run([sys.executable, "-m", "auditor", "check", str(tmp_path / "nope.py")], capture_output=True, text=True)
    assert proc.returncode == 2
    assert proc.stdout == ""
    assert proc.stderr.count("\n") == 1 and "nope.py" in proc.stderr and "Traceback" not in proc.stderr


def test_exit_2_unknown_code(run, tmp_path):
    write(tmp_path / "ok.py", CLEAN)
    result = run("check", "ok.py", "--select", "XYZ999")
    assert result.exit_code == 2
    assert "unknown rule code" in result.output


def test_usage_error_is_exit_2(run):
    assert run("check").exit_code == 2
    assert run("check", "x.py", "--fail-on", "bogus").exit_code == 2


# ------------------------------------------------------------------ formats and output
def test_json_format_matches_contract(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC + WARN_SEC.splitlines()[1] + "\n")
    result = run("check", "bad.py", "--format", "json")
    assert result.exit_code == 1
    data = json.loads(result.output)
    assert data["tool"]["name"] == "auditor" and re.match(r"\d+\.\d+\.\d+", data["tool"]["version"])
    env = data["environment"]
    assert set(env) >= {"python", "torch", "tensorflow", "keras", "keras_backend"}
    assert data["summary"] == {"error": 1, "warning": 1, "info": 0}
    f = data["findings"][0]
    for key in ("rule", "name", "category", "severity", "message", "path", "line", "column", "target", "evidence", "fix"):
        assert key in f
    assert (f["rule"], f["name"], f["category"], f["path"], f["line"], f["column"]) == ("SEC001", "torch-load-unsafe", "security", "bad.py", 2, 9)
    assert f["target"] is None and f["evidence"] == {}


def test_output_file(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    result = run("check", "bad.py", "--format", "json", "--output", "out.json")
    assert result.exit_code == 1
    assert result.output == ""
    assert json.loads((tmp_path / "out.json").read_text())["summary"]["error"] == 1


def test_quiet_prints_findings_only(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    result = run("check", "bad.py", "--quiet")
    lines = result.output.strip().splitlines()
    assert len(lines) == 1 and LINE_RE.match(lines[0])


# ------------------------------------------------------------------ selection
def test_select_and_ignore_prefixes(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    assert run("check", "bad.py", "--ignore", "SEC").exit_code == 0
    assert run("check", "bad.py", "--select", "USE").exit_code == 0
    # the longer prefix wins: select SEC001 beats ignore SEC
    assert run("check", "bad.py", "--ignore", "SEC", "--select", "SEC001").exit_code == 1
    assert run("check", "bad.py", "--select", "torch-load-unsafe").exit_code == 1


# ------------------------------------------------------------------ configuration
def test_pyproject_configuration(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    write(tmp_path / "tests" / "test_x.py", BAD_SEC)
    write(
        tmp_path / "pyproject.toml",
        '[tool.auditor]\nfail-on = "error"\n[tool.auditor.per-file-ignores]\n"tests/*" = ["SEC"]\n',
    )
    result = run("check", ".", "--format", "json")
    paths = {f["path"] for f in json.loads(result.output)["findings"]}
    assert paths == {"bad.py"}
    assert result.exit_code == 1


def test_setup_cfg_configuration(run, tmp_path):
    write(tmp_path / "warn.py", WARN_SEC)
    write(tmp_path / "setup.cfg", "[auditor]\nignore = SEC001\n")
    assert run("check", "warn.py").exit_code == 0


def test_configuration_output_and_format(run, tmp_path):
    write(tmp_path / "bad.py", BAD_SEC)
    write(tmp_path / "pyproject.toml", '[tool.auditor]\nformat = "json"\noutput = "report.json"\n')
    result = run("check", "bad.py")
    assert result.exit_code == 1 and result.output == ""
    assert json.loads((tmp_path / "report.json").read_text())["findings"][0]["rule"] == "SEC001"


def test_explicit_config_file(run, tmp_path):
    write(tmp_path / "warn.py", WARN_SEC)
    write(tmp_path / "ci.toml", '[tool.auditor]\nfail-on = "never"\n')
    assert run("check", "warn.py", "--config", "ci.toml").exit_code == 0


@pytest.mark.parametrize(
    "text, words",
    [
        ("[tool.auditor]\nselekt = ['SEC']\n", "unknown key"),
        ("[tool.auditor]\ntrust = true\n", "cannot be set in configuration"),
        ("[tool.auditor\n", "invalid TOML"),
        ("[tool.auditor]\nselect = ['NOPE1']\n", "unknown rule code"),
    ],
)
def test_bad_configuration_is_exit_2(run, tmp_path, text, words):
    write(tmp_path / "ok.py", CLEAN)
    write(tmp_path / "pyproject.toml", text)
    result = run("check", "ok.py")
    assert result.exit_code == 2
    assert words in result.output
    assert "Traceback" not in result.output


# ------------------------------------------------------------------ suppression
def test_inline_suppression(run, tmp_path):
    write(
        tmp_path / "s.py",
        "import torch\n"
        "a = torch.load('a.pt', weights_only=False)  # auditor: ignore[SEC001]\n"
        "b = torch.load('b.pt', weights_only=False)  # auditor: ignore[SEC]\n"
        "c = torch.load('c.pt', weights_only=False)  # auditor: ignore\n"
        "d = torch.load('d.pt', weights_only=False)  # auditor: ignore[PRE001]\n",
    )
    data = json.loads(run("check", "s.py", "--format", "json").output)
    assert [f["line"] for f in data["findings"]] == [5]


# ------------------------------------------------------------------ notebooks, stdin, bad input
def _notebook(cells: list[str]) -> str:
    return json.dumps(
        {
            "nbformat": 4,
            "nbformat_minor": 5,
            "metadata": {"kernelspec": {"language": "python", "name": "python3"}},
            "cells": [{"cell_type": "markdown", "source": "# title", "metadata": {}}]
            + [{"cell_type": "code", "source": c, "metadata": {}, "outputs": [], "execution_count": None} for c in cells],
        }
    )


def test_notebook_reports_cell_and_line(run, tmp_path):
    write(tmp_path / "nb.ipynb", _notebook(["%matplotlib inline\nimport torch\n!pip install x", "x = 1\nsd = torch.load('m.pt', weights_only=False)"]))
    data = json.loads(run("check", "nb.ipynb", "--format", "json").output)
    (f,) = data["findings"]
    assert (f["path"], f["cell"], f["line"], f["rule"]) == ("nb.ipynb", 2, 2, "SEC001")
    text = run("check", "nb.ipynb").output
    assert text.startswith("nb.ipynb:cell 2:2:6: SEC001")


def test_notebook_ipython_syntax_is_understood(run, tmp_path):
    cells = [
        "import torch\nif torch.cuda.is_available():\n    info = !nvidia-smi\n    files, = !ls\n    t = %timeit -o f()",
        "  # a cell IPython dedents\n  x = 1\n  sd = torch.load('m.pt', weights_only=False)",
        "%%bash\necho not python",
        "torch.save?\n%load_ext autoreload",
        # automagic pip, a shell escape continued with a backslash, and lines starting with
        # `%` that continue an expression or sit in a string (the modulo operator, not magics)
        "pip install timm\n!saved_model_cli show --dir d \\\n    --tag_set serve\nmsg = (\n    'loss %d'\n    % (3,)\n)\ndoc = '''a\n% not magic'''",
    ]
    write(tmp_path / "nb.ipynb", _notebook(cells))
    data = json.loads(run("check", "nb.ipynb", "--format", "json").output)
    assert [(f["rule"], f["cell"], f["line"], f["column"]) for f in data["findings"]] == [("SEC001", 2, 3, 6)]


def test_notebook_broken_cell_is_a_finding_and_others_still_checked(run, tmp_path):
    write(tmp_path / "nb.ipynb", _notebook(["import torch", "def broken(:\n    pass", "sd = torch.load('m.pt', weights_only=False)"]))
    data = json.loads(run("check", "nb.ipynb", "--format", "json").output)
    got = sorted((f["rule"], f["cell"], f["line"]) for f in data["findings"])
    assert got == [("SEC001", 3, 1), ("USE001", 2, 1)]


def test_syntax_error_is_a_finding_not_a_crash(run, tmp_path):
    write(tmp_path / "broken.py", "def f(:\n  pass\n")
    result = run("check", "broken.py", "--format", "json")
    assert result.exit_code == 1
    (f,) = json.loads(result.output)["findings"]
    assert (f["rule"], f["category"], f["line"]) == ("USE001", "usage", 1)


@pytest.mark.parametrize(
    "name, content, words",
    [
        ("bin.py", b"\x00\x01\x02binary", "binary"),
        ("bad.ipynb", b"{not json", "invalid JSON"),
        ("r.ipynb", json.dumps({"cells": [], "metadata": {"kernelspec": {"language": "R"}}}).encode(), "not Python"),
        ("latin.py", b"# -*- coding: nonexistent -*-\nx = 1\n", "decode"),
        ("huge.py", b"x = 1\n" * 2_000_000, "over the 10 MiB limit"),
    ],
)
def test_unreadable_files_are_use002(run, tmp_path, name, content, words):
    (tmp_path / name).write_bytes(content)
    result = run("check", name, "--format", "json")
    (f,) = json.loads(result.output)["findings"]
    assert f["rule"] == "USE002" and words in f["message"]


def test_stdin(run):
    result = run("check", "-", "--stdin-filename", "train.py", "--format", "json", input=BAD_SEC)
    (f,) = json.loads(result.output)["findings"]
    assert (f["path"], f["line"]) == ("train.py", 2)


def test_user_files_are_never_changed(run, tmp_path):
    path = write(tmp_path / "bad.py", BAD_SEC)
    before = (path.read_bytes(), path.stat().st_mtime_ns)
    run("check", "bad.py")
    assert (path.read_bytes(), path.stat().st_mtime_ns) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [".cache", "bad.py"]


# ------------------------------------------------------------------ baseline, jobs, cache
def test_baseline_reports_only_new_findings(run, tmp_path):
    path = write(tmp_path / "bad.py", BAD_SEC)
    assert run("check", "bad.py", "--write-baseline", "base.json").exit_code == 1
    assert run("check", "bad.py", "--baseline", "base.json").exit_code == 0
    path.write_text("# a new comment shifts lines\n" + BAD_SEC + "x = torch.load('y.pt', weights_only=False)\n")
    data = json.loads(run("check", "bad.py", "--baseline", "base.json", "--format", "json").output)
    assert [f["line"] for f in data["findings"]] == [4]
    write(tmp_path / "junk.json", "[1, 2]")
    assert run("check", "bad.py", "--baseline", "junk.json").exit_code == 2


def test_parallel_equals_serial_and_cache_is_consistent(run, tmp_path):
    for i in range(12):
        write(tmp_path / "pkg" / f"m{i}.py", BAD_SEC if i % 3 == 0 else CLEAN)
    serial = json.loads(run("check", "pkg", "--jobs", "1", "--no-cache", "--format", "json").output)
    parallel = json.loads(run("check", "pkg", "--jobs", "2", "--format", "json").output)
    cached = json.loads(run("check", "pkg", "--jobs", "2", "--format", "json").output)
    assert serial["findings"] == parallel["findings"] == cached["findings"]
    assert len(serial["findings"]) == 4
    assert any((tmp_path / ".cache").rglob("*.json")), "the second run had a cache to read"


# ------------------------------------------------------------------ rules, explain, version
def test_rules_lists_every_rule(run):
    from auditor.registry import all_rules

    result = run("rules")
    assert result.exit_code == 0
    for rule in all_rules():
        if rule.enabled_by_default:
            assert re.search(rf"^{rule.code}\s+{rule.name}\s+{rule.category}\s+{rule.severity.value}\s+{rule.kind}\s+\S", result.output, re.M)
    rows = json.loads(run("rules", "--format", "json").output)
    assert {"code", "name", "category", "severity", "kind", "summary"} <= set(rows[0])


def test_explain(run):
    result = run("explain", "SEC001")
    assert result.exit_code == 0
    for heading in ("## What it does", "## Why is this bad?", "## Example", "## Use instead"):
        assert heading in result.output
    assert run("explain", "torch-load-unsafe").exit_code == 0
    assert run("explain", "NOPE01").exit_code == 2


def test_version_and_module_entry_point(run):
    out = subprocess.run([sys.executable, "-m", "auditor", "--version"], capture_output=True, text=True, check=True)
    assert re.match(r"auditor \d+\.\d+\.\d+", out.stdout)
    sub = run("check", "--version")
    assert sub.exit_code == 0 and sub.output == out.stdout


def test_text_is_coloured_on_a_terminal_only(tmp_path):
    import io

    from auditor.finding import Finding, Severity
    from auditor.report import Report
    from auditor.reporters.text import TextReporter

    report = Report([Finding("SEC001", "torch-load-unsafe", "security", Severity.ERROR, "m", "f", path="a.py", line=1, column=1)], 1)
    coloured, plain = io.StringIO(), io.StringIO()
    TextReporter().render(report, coloured, color=True)
    TextReporter().render(report, plain, color=False)
    assert "\x1b[31m" in coloured.getvalue() and "\x1b[" not in plain.getvalue()
    assert re.sub(r"\x1b\[[0-9;]*m", "", coloured.getvalue()) == plain.getvalue()


def test_rule_crash_is_use003_and_other_rules_still_run(tmp_path, monkeypatch):
    from auditor.analysis.source import SourceUnit
    from auditor.engine import check_unit
    from auditor.registry import rule_by_code

    rule = rule_by_code("SEC001")

    def explode(self, ctx):
        raise RuntimeError("boom")
        yield  # pragma: no cover

    monkeypatch.setattr(rule, "check", explode)
    codes = [r.code for r in __import__("auditor.registry", fromlist=["x"]).all_rules() if r.kind == "static"]
    result = check_unit(SourceUnit("x.py", "def f(:\n"), codes)
    assert [f.rule for f in result.findings] == ["USE001"]
    result = check_unit(SourceUnit("x.py", BAD_SEC), codes)
    assert [f.rule for f in result.findings] == ["USE003"]
    assert "boom" in result.findings[0].message and "RuntimeError" in result.debug[0]
