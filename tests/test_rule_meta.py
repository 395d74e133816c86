"""Registry-wide guarantees: every message template is filled, every `# expect:` names a
real rule, `explain` works for every code, and the numbering policy holds."""

from __future__ import annotations

import re

import pytest
from click.testing import CliRunner
from conftest import FIXTURES
from fixture_expectations import expected

from auditor.analysis.source import read_source
from auditor.cli import main
from auditor.engine import check_unit
from auditor.registry import Selection, all_rules

CODES = {r.code for r in all_rules()}
PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
FILES = sorted(p for p in (FIXTURES / "static").rglob("*") if p.suffix in (".py", ".ipynb"))


def test_every_expect_comment_names_a_rule():
    for path in FILES:
        for (_, _, code) in expected(path):
            assert code in CODES, f"{path.name} expects unknown code {code}"


def test_every_message_and_fix_is_filled():
    codes = [r.code for r in Selection().rules(kind="static")]
    seen = set()
    for path in FILES:
        for f in check_unit(read_source(path, str(path)), codes).findings:
            seen.add(f.rule)
            assert not PLACEHOLDER.search(f.message), f"{path.name}: unfilled placeholder in {f.rule} message: {f.message}"
            assert not PLACEHOLDER.search(f.fix), f"{path.name}: unfilled placeholder in {f.rule} fix: {f.fix}"
            assert f.message and f.fix
    static = {r.code for r in all_rules() if r.kind == "static" and r.code not in ("USE002", "USE003")}
    assert static <= seen, f"rules never exercised by a fixture: {sorted(static - seen)}"


@pytest.mark.parametrize("rule", all_rules(), ids=lambda r: r.code)
def test_explain_every_code(rule):
    result = CliRunner().invoke(main, ["explain", rule.code])
    assert result.exit_code == 0
    assert result.output.startswith(f"{rule.code} {rule.name}")
    assert rule.summary() and len(rule.summary()) < 300, "the summary is one paragraph"


def test_numbering_policy():
    prefixes = {"preprocessing": "PRE", "batchnorm": "BNS", "inference-mutation": "INF", "head": "HED", "learning-rate": "LRT", "security": "SEC", "determinism": "DET", "loading": "LOD", "usage": "USE"}
    for rule in all_rules():
        assert rule.code.startswith(prefixes[rule.category]), rule.code
        number = int(rule.code[3:])
        if rule.kind == "static":
            assert number < 100 or number >= 900, f"{rule.code}: static rules are 0xx (9xx experimental)"
        else:
            assert 100 <= number < 200 or number >= 900, f"{rule.code}: dynamic probes are 1xx"
        if number >= 900:
            assert not rule.enabled_by_default, f"{rule.code}: 9xx rules are off by default"
