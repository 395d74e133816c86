"""Every static fixture, checked with every default rule on: the findings must equal the
`# expect:` comments exactly (code and line), so clean twins also catch false positives from
other rules. `bad_*` fixtures must expect something, `clean_*` ones nothing."""

from __future__ import annotations

from pathlib import Path

import pytest
from conftest import FIXTURES
from fixture_expectations import actual, expected

from auditor.analysis.source import read_source
from auditor.engine import check_unit
from auditor.registry import Selection, all_rules

STATIC = FIXTURES / "static"
FILES = sorted(p for p in STATIC.rglob("*") if p.suffix in (".py", ".ipynb"))
DEFAULT_CODES = [r.code for r in Selection().rules(kind="static")]


@pytest.mark.parametrize("path", FILES, ids=[str(p.relative_to(STATIC)) for p in FILES])
def test_fixture(path: Path) -> None:
    want = expected(path)
    if path.name.startswith("bad_"):
        assert want, f"{path.name} is a bad fixture but expects nothing"
    elif path.name.startswith("clean_"):
        assert not want, f"{path.name} is a clean fixture but expects findings"
    else:
        pytest.fail(f"fixture names start with bad_ or clean_: {path.name}")
    result = check_unit(read_source(path, str(path)), DEFAULT_CODES)
    got = actual(result.findings)
    assert got == want, "\n".join(
        [f"{path.name}: findings differ from # expect comments", "got:"]
        + [f"  cell={c} line={l} {code}: {next((f.message for f in result.findings if (f.cell, f.line, f.rule) == (c, l, code)), '')}" for (c, l, code) in sorted(got, key=str)]
        + ["expected:"]
        + [f"  cell={c} line={l} {code}" for (c, l, code) in sorted(want, key=str)]
    )


def test_fixture_folder_is_named_by_its_rule() -> None:
    codes = {r.code for r in all_rules()}
    for folder in STATIC.iterdir():
        if folder.is_dir():
            assert folder.name in codes, f"fixtures/static/{folder.name} names no rule"


@pytest.mark.parametrize("rule", [r for r in all_rules() if r.kind == "static" and r.code not in ("USE002", "USE003")], ids=lambda r: r.code)
def test_every_static_rule_has_bad_and_clean_fixtures(rule) -> None:
    folder = STATIC / rule.code
    bad = [p for p in folder.glob("bad_*") if p.suffix in (".py", ".ipynb")]
    clean = [p for p in folder.glob("clean_*") if p.suffix in (".py", ".ipynb")]
    assert bad, f"{rule.code} has no bad fixture in {folder}"
    assert clean, f"{rule.code} has no clean twin in {folder}"
    assert any(rule.code in {c for (_, _, c) in expected(p)} for p in bad), f"no bad fixture of {rule.code} expects {rule.code}"
