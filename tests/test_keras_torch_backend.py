"""The core Keras cases again under Keras's torch backend (`KERAS_BACKEND=torch`): every
Keras probe restores everything on the transfer, Sequential and subclassed models (and when a
probe raises, and on a timeout), and every Keras dynamic fixture gives its exact findings
through `audit()`. Keras picks its backend once per process, so they run in a subprocess.

The selection keeps the run under three minutes on two idle CPU cores: the restore tests on
the transfer and subclassed models (every probe), and one bad and one clean Keras fixture per
rule through audit(); the keras.applications models, the Sequential twin and the fixtures' CLI
runs (the same audit again) stay with the TensorFlow backend."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import pytest

pytest.importorskip("torch")
pytest.importorskip("keras")

ROOT = Path(__file__).resolve().parent.parent
DYNAMIC = ROOT / "fixtures" / "dynamic"
#: keras.applications architectures: the slow fixtures under the torch backend
HEAVY = re.compile(r"resnet|efficientnet|mobilenet|convnext|inception|densenet|xception|vgg|applications", re.I)


def fixture_cases() -> list[str]:
    """One bad and one clean Keras fixture per rule folder (a small architecture where the
    folder has one), through audit(): node ids of tests/test_dynamic_fixtures.py."""
    out = []
    for folder in sorted(p for p in DYNAMIC.iterdir() if p.is_dir() and p.name.isupper()):
        for kind in ("bad", "clean"):
            found = sorted(folder.glob(f"{kind}_keras_*.py"))
            light = [p for p in found if not HEAVY.search(p.name)]
            if found:
                chosen = (light or found)[0]
                out.append(f"tests/test_dynamic_fixtures.py::test_fixture_through_api[{chosen.relative_to(DYNAMIC).as_posix()}]")
    return out


def selection() -> list[str]:
    """test_keras_restore.py on the transfer (compiled Adam, frozen base, Dropout) and the
    subclassed (Dropout) models, every probe; plus fixture_cases()."""
    return ["tests/test_keras_restore.py", "-k", "not mobilenetv2 and not sequential", *fixture_cases()]


def test_core_keras_cases_under_the_torch_backend():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "torch"
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), env.get("PYTHONPATH", "")])
    command = [sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", "-W", "ignore::DeprecationWarning", *selection()]
    started = time.perf_counter()
    proc = subprocess.run(command, cwd=ROOT, env=env, capture_output=True, text=True, timeout=900)
    elapsed = time.perf_counter() - started
    tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-40:])
    assert proc.returncode == 0, f"KERAS_BACKEND=torch run failed after {elapsed:.0f}s:\n{tail}"
    summary = proc.stdout.strip().splitlines()[-1]
    assert " passed" in summary and "failed" not in summary and "error" not in summary, tail
    assert "skipped" not in summary, f"nothing may be skipped under the torch backend: {summary}"
    assert _count(summary, "passed") >= 30, summary  # the selection really ran the Keras cases
    print(f"KERAS_BACKEND=torch: {summary} in {elapsed:.0f}s")


def test_the_subprocess_really_uses_the_torch_backend():
    env = dict(os.environ)
    env["KERAS_BACKEND"] = "torch"
    code = (
        "import sys, keras, numpy as np\n"
        "sys.path.insert(0, 'fixtures/dynamic')\n"
        "from _keras_fixtures import transfer_model, caffe, images\n"
        "from auditor import Pipeline, audit\n"
        "model = transfer_model()\n"
        "report = audit(Pipeline(model, preprocess=caffe, sample=images(4, 32, seed=1), num_classes=5))\n"
        "print(keras.config.backend(), 'tensorflow' in sys.modules, sorted({f.rule for f in report.findings}))\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], cwd=ROOT, env={**env, "PYTHONPATH": str(ROOT)}, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-3000:]
    backend, tensorflow_imported, _rules = proc.stdout.strip().splitlines()[-1].split(" ", 2)
    assert backend == "torch"
    assert tensorflow_imported == "False", "the torch backend audit imported tensorflow"


def _count(summary: str, word: str) -> int:
    import re

    match = re.search(rf"(\d+) {word}", summary)
    return int(match.group(1)) if match else 0
