"""The README's first section keeps its promises: its test command is what `.ci/run` runs,
and its main-job command finds real problems in the bundled examples."""

from __future__ import annotations

import json
import re
import subprocess
import sys

from conftest import ROOT


def _quick_start_commands() -> list[str]:
    text = (ROOT / "README.md").read_text(encoding="utf-8")
    section = text.split("## Quick start", 1)[1].split("\n## ", 1)[0]
    return [block.strip() for block in re.findall(r"```bash\n(.*?)```", section, flags=re.S)]


def test_quick_start_has_the_two_commands():
    commands = _quick_start_commands()
    assert len(commands) == 2
    main_job, tests = commands
    assert "pip install" in main_job and "auditor check examples/" in main_job
    assert "auditor audit examples/torch_pipeline.py:build" in main_job, "the main job shows the dynamic half too"
    assert "torch==2.13.0" in tests and "pytest" in tests


def test_ci_runs_the_readme_test_command():
    ci = (ROOT / ".ci" / "run").read_text(encoding="utf-8")
    assert _quick_start_commands()[1] in ci.splitlines()


def test_main_job_finds_real_problems_in_the_examples(tmp_path):
    out = tmp_path / "r.json"
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "check", str(ROOT / "examples"), "--no-cache", "--format", "json", "--output", str(out)],
        capture_output=True,
        text=True,
    )
    assert proc.returncode == 1, proc.stderr
    findings = json.loads(out.read_text())["findings"]
    categories = {f["category"] for f in findings}
    assert {"preprocessing", "batchnorm", "inference-mutation", "head", "learning-rate", "security"} <= categories, categories
    assert not [f for f in findings if f["category"] == "usage"]


def _audit_example(target: str, out) -> tuple[subprocess.CompletedProcess, dict]:
    """`auditor audit TARGET --format json` in a fresh process, as a user runs it; it must
    report findings (exit 1)."""
    proc = subprocess.run(
        [sys.executable, "-m", "auditor", "audit", target, "--format", "json", "--output", str(out)],
        capture_output=True,
        text=True,
        cwd=ROOT,
        timeout=300,
    )
    assert proc.returncode == 1, proc.stderr
    return proc, json.loads(out.read_text())


def test_main_job_audits_the_bundled_pipeline_with_real_findings(tmp_path):
    _, report = _audit_example("examples/torch_pipeline.py:build", tmp_path / "a.json")
    found = {(f["rule"], f["target"]) for f in report["findings"]}
    assert {("PRE101", "preprocess"), ("BNS103", "bn1"), ("HED101", "fc"), ("LRT101", "conv2")} <= found, found
    assert not [f for f in report["findings"] if f["category"] == "usage"]
    assert report["environment"]["torch"] and report["environment"]["keras"] is None and report["environment"]["tensorflow"] is None


def test_keras_example_audits_with_real_findings(tmp_path):
    """The Keras example the README's Dynamic audit section names finds its four bugs."""
    import pytest

    pytest.importorskip("keras")
    proc, report = _audit_example("examples/keras_pipeline.py:build", tmp_path / "k.json")
    found = {(f["rule"], f["target"]) for f in report["findings"]}
    assert {("PRE101", "preprocess"), ("BNS103", "base/bn1"), ("HED102", "predictions"), ("LOD102", "scale")} <= found, found
    assert not proc.stderr.strip(), proc.stderr  # TensorFlow's start-up lines are kept off stderr
