"""Every dynamic fixture through `audit()` and through the CLI: the exact (rule, target)
pairs in its EXPECT, with every default dynamic rule on (so clean twins also catch other
rules' false positives), and the pipeline restored bit for bit afterwards."""

from __future__ import annotations

import json

import pytest

torch = pytest.importorskip("torch")

from click.testing import CliRunner  # noqa: E402

from auditor import audit  # noqa: E402
from auditor.cli import main  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture, dynamic_fixtures, expected_pairs, found_pairs, load_fixture  # noqa: E402

FIXTURES = dynamic_fixtures()
IDS = [str(p.relative_to(DYNAMIC)) for p in FIXTURES]


def test_fixture_set_is_not_empty():
    assert FIXTURES, "no dynamic fixtures found"


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_fixture_through_api(path):
    module = load_fixture(path)
    pipeline = module.build()
    before = capture(pipeline)
    report = audit(pipeline)
    assert_restored(pipeline, before)
    expected = expected_pairs(module)
    if path.name.startswith("bad_"):
        assert expected, "a bad fixture must expect at least one finding"
    else:
        assert not expected, "a clean fixture expects nothing"
    assert found_pairs(report.findings) == expected, "\n".join(f"{f.rule} {f.target}: {f.message} {f.evidence}" for f in report.findings)


@pytest.mark.parametrize("path", FIXTURES, ids=IDS)
def test_fixture_through_cli(path):
    module = load_fixture(path)
    result = CliRunner().invoke(main, ["audit", f"{path}:build", "--format", "json", "--fail-on", "never"])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    found = sorted((f["rule"], f["target"]) for f in data["findings"])
    assert found == expected_pairs(module)


def _dynamic_rules():
    from auditor.registry import all_rules

    return [r for r in all_rules() if r.kind == "dynamic"]


@pytest.mark.parametrize("rule", _dynamic_rules(), ids=lambda r: r.code)
def test_every_dynamic_rule_has_bad_and_clean_fixtures(rule):
    folder = DYNAMIC / rule.code
    bad = sorted(folder.glob("bad_*.py"))
    clean = sorted(folder.glob("clean_*.py"))
    assert bad and clean, f"{rule.code} needs bad_*.py and clean_*.py fixtures in {folder}"
    assert any(rule.code in getattr(load_fixture(p), "EXPECT", {}) for p in bad), f"no bad fixture of {rule.code} expects it"


def test_fixture_folders_name_rules():
    codes = {r.code for r in _dynamic_rules()}
    for folder in DYNAMIC.iterdir():
        if folder.is_dir() and folder.name.isupper():
            assert folder.name in codes, f"fixtures/dynamic/{folder.name} names no dynamic rule"


def test_every_dynamic_message_is_filled():
    import re

    placeholder = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
    for path in FIXTURES:
        if not path.name.startswith("bad_"):
            continue
        for f in audit(load_fixture(path).build()).findings:
            assert not placeholder.search(f.message) and not placeholder.search(f.fix), f"{path}: {f.rule}: {f.message} / {f.fix}"
            assert f.target, f"{path}: {f.rule} has no target"
            assert f.evidence, f"{path}: {f.rule} carries no evidence"
