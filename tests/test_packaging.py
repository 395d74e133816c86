"""The contract's packaging promise: `rules/` installs as `auditor.rules`, never as a
top-level `rules` module (other distributions install one), in a wheel as well as in the
editable install the tests run from."""

from __future__ import annotations

import subprocess
import sys
import zipfile

import pytest
from conftest import ROOT


def test_editable_install_maps_rules_into_the_package():
    import auditor.rules

    assert auditor.rules.__name__ == "auditor.rules"
    assert "rules" not in sys.modules or getattr(sys.modules["rules"], "__file__", "") != auditor.rules.__file__


def test_wheel_ships_auditor_rules_and_no_top_level_rules(tmp_path):
    proc = subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(tmp_path), str(ROOT)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    if proc.returncode != 0:
        pytest.fail(f"wheel build failed: {proc.stderr[-2000:]}")
    (wheel,) = tmp_path.glob("auditor-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "auditor/rules/__init__.py" in names
    assert "auditor/rules/sec001_torch_load_unsafe.py" in names
    assert "auditor/analysis/context.py" in names
    assert "auditor/dynamic/torch_context.py" in names and "auditor/reporters/html.py" in names
    assert not [n for n in names if n.startswith("rules/")]
    assert not [n for n in names if n.startswith(("tests/", "fixtures/"))]
    entry = next(n for n in names if n.endswith("entry_points.txt"))
    assert "auditor = auditor.cli:main" in zipfile.ZipFile(wheel).read(entry).decode()
