"""Static mode imports no framework, and works where none is installed.

The child process installs an import blocker for torch, tensorflow and keras (as if they were
not installed), runs `auditor check` in-process over every static fixture, and reports what is
in `sys.modules` afterwards.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

from conftest import FIXTURES

CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("torch", "tensorflow", "keras", "torchvision", "timm", "jax")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocker())
    from auditor.cli import main
    code = None
    try:
        main(["check", "--no-cache", "--jobs", "1", "--format", "json", "--output", sys.argv[2], sys.argv[1]])
    except SystemExit as exc:
        code = exc.code
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"exit": code, "loaded": loaded}))
    """
)


def test_check_imports_no_framework(tmp_path):
    out = tmp_path / "report.json"
    proc = subprocess.run(
        [sys.executable, "-c", CHILD, str(FIXTURES / "static"), str(out)],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert result["exit"] == 1, "the bad fixtures produce findings"
    report = json.loads(out.read_text())
    assert report["findings"], "rules ran"
    assert not [f for f in report["findings"] if f["rule"] == "USE003"], "no rule failed without frameworks"
    env = report["environment"]
    assert env["torch"] is None and env["tensorflow"] is None and env["keras"] is None


LISTING_CHILD = textwrap.dedent(
    """
    import importlib.abc, json, sys

    BLOCKED = ("torch", "tensorflow", "keras", "torchvision", "timm", "jax", "numpy")

    class Blocker(importlib.abc.MetaPathFinder):
        def find_spec(self, name, path=None, target=None):
            if name.split(".")[0] in BLOCKED:
                raise ImportError(f"{name} is not installed here")
            return None

    sys.meta_path.insert(0, Blocker())
    from auditor.cli import main
    from auditor.registry import all_rules
    codes = []
    for args in (["rules", "--format", "json"], *[["explain", r.code] for r in all_rules() if r.kind == "dynamic"]):
        try:
            main(args)
        except SystemExit as exc:
            codes.append(exc.code)
    import auditor
    auditor.Pipeline  # the contract's API class is framework-free too
    loaded = sorted(m for m in sys.modules if m.split(".")[0] in BLOCKED)
    print(json.dumps({"exits": codes, "loaded": loaded}))
    """
)


def test_listing_and_explaining_dynamic_rules_imports_no_framework():
    """Dynamic rules import their framework inside `probe`, so `rules` and `explain` work on
    a machine with no framework (and no numpy) installed."""
    proc = subprocess.run([sys.executable, "-c", LISTING_CHILD], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result["loaded"] == []
    assert set(result["exits"]) <= {0, None}
