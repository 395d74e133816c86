"""The documentation is the single source (ruff's idea) and its examples are tests (Fixit,
pylint): each rule's Example must trigger it, its "Use instead" must not."""

from __future__ import annotations

import pytest

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit
from auditor.registry import all_rules
from auditor.rule import REQUIRED_HEADINGS

RULES = all_rules()


def test_codes_and_names_are_unique() -> None:
    assert len({r.code for r in RULES}) == len(RULES)
    assert len({r.name for r in RULES}) == len(RULES)


@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_docstring_has_every_heading(rule) -> None:
    doc = rule.documentation()
    for heading in REQUIRED_HEADINGS:
        assert heading in doc
    assert rule.summary(), "first paragraph of 'What it does' is the summary"


@pytest.mark.parametrize("rule", [r for r in RULES if r.kind == "static" and r.examples_are_tests], ids=lambda r: r.code)
def test_example_triggers_and_use_instead_is_silent(rule) -> None:
    bad = rule.code_examples("Example")
    good = rule.code_examples("Use instead")
    assert bad and good, "both sections need a ```python block"
    for snippet in bad:
        result = check_unit(SourceUnit("example.py", snippet), [rule.code])
        assert any(f.rule == rule.code for f in result.findings), f"Example does not trigger {rule.code}:\n{snippet}"
    for snippet in good:
        result = check_unit(SourceUnit("use_instead.py", snippet), [rule.code])
        assert not [f for f in result.findings if f.rule == rule.code], f"'Use instead' triggers {rule.code}:\n{snippet}"
