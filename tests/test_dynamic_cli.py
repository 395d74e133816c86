"""`auditor audit TARGET` end to end: targets, bad inputs (exit 2, exactly one stderr line,
no traceback), samples, formats, progress, selection, configuration, timeout, and that a
torch target never imports keras or tensorflow."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from dynamic_support import audit_cli as run, one_line_exit_2  # noqa: E402

MODEL_FILE = """
import numpy as np
import torch
from torch import nn
from auditor import Pipeline

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 4, 3, padding=1)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4, 10)

    def forward(self, x):
        return self.fc(self.pool(torch.relu(self.conv1(x))).flatten(1))

torch.manual_seed(0)
model = Net().eval()
SAMPLE = np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype("float32")
pipeline = Pipeline(model, sample=SAMPLE)

def build():
    return Pipeline(Net().eval(), sample=SAMPLE)

class Holder:
    inner = pipeline

def broken():
    raise RuntimeError("factory exploded")

not_a_model = {"a": 1}

def needs_args(x):
    return x
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "mymodels.py").write_text(MODEL_FILE)
    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 3, 32, 32)).astype("float32"))
    monkeypatch.chdir(tmp_path)
    return tmp_path


# -- targets -------------------------------------------------------------------------------


@pytest.mark.parametrize("name", ["pipeline", "model", "build", "Holder.inner"])
def test_file_targets(project, name):
    result = run(f"mymodels.py:{name}", "--sample", "x.npy", "--format", "json", "--fail-on", "never")
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == f"mymodels.py:{name}"
    assert "findings" in data and isinstance(data.get("notes", []), list)  # notes omitted when empty


def test_module_target(project):
    result = run("mymodels:build", "--format", "json", "--fail-on", "never")
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "mymodels:build"


@pytest.mark.parametrize(
    "target, needles",
    [
        ("mymodels.py:nothing", ["has no attribute 'nothing'", "candidates"]),
        ("mymodels.py:Holder.nothing", ["Holder.nothing"]),
        ("missing.py:model", ["missing.py", "no such file"]),
        ("mymodels.py", ["mymodels.py:NAME"]),
        ("mymodels.py:broken", ["factory exploded", "mymodels.py:"]),
        ("mymodels.py:not_a_model", ["dict", "expected a Pipeline"]),
        ("mymodels.py:needs_args", ["needs arguments"]),
        ("no_such_pkg.mod:model", ["no such module"]),
        ("whatever", ["not a model file"]),
    ],
)
def test_bad_targets(project, target, needles):
    one_line_exit_2(run(target), *needles)


def test_user_file_raising_on_import_names_its_line(project):
    (project / "bad.py").write_text("import torch\n\nx = 1\nraise ValueError('boom at import')\n")
    line = one_line_exit_2(run("bad.py:model"), "boom at import")
    assert "bad.py:4" in line


def test_user_file_syntax_error(project):
    (project / "syn.py").write_text("def f(:\n")
    line = one_line_exit_2(run("syn.py:f"), "SyntaxError")
    assert "syn.py:1" in line


def test_framework_keras_on_torch_target(project):
    one_line_exit_2(run("mymodels.py:model", "--framework", "keras"), "--framework keras")


# -- samples -------------------------------------------------------------------------------


def test_npz_sample_with_labels(project):
    np.savez(project / "s.npz", x=np.load(project / "x.npy"), y=np.arange(8) % 10)
    result = run("mymodels.py:model", "--sample", "s.npz", "--num-classes", "10", "--format", "json")
    assert result.exit_code == 0, result.output
    assert not any("synthetic" in n for n in json.loads(result.stdout).get("notes", []))


def test_sample_wrong_shape_says_what_first_layer_expects(project):
    np.save(project / "wrong.npy", np.zeros((8, 32, 32, 3), dtype="float32"))  # NHWC
    one_line_exit_2(run("mymodels.py:model", "--sample", "wrong.npy"), "first layer conv1", "(N, 3, H, W)")


def test_sample_wrong_dtype(project):
    np.save(project / "strings.npy", np.array(["a", "b"]))
    one_line_exit_2(run("mymodels.py:model", "--sample", "strings.npy"), "numeric")


def test_npz_with_pickled_objects_refused(project):
    np.savez(project / "obj.npz", x=np.array([{"a": 1}, None], dtype=object))
    one_line_exit_2(run("mymodels.py:model", "--sample", "obj.npz"), "pickled")


@pytest.mark.parametrize("content, name, needle", [(b"", "e.npy", "not a readable"), (b"hello", "t.npy", "not a readable"), (b"PK\x03\x04junk", "z.npz", "not a readable"), (None, "missing.npy", "not found"), (b"1,2", "x.csv", ".npy or .npz")])
def test_bad_sample_files(project, content, name, needle):
    if content is not None:
        (project / name).write_bytes(content)
    one_line_exit_2(run("mymodels.py:model", "--sample", name), needle)


def test_label_count_mismatch(project):
    np.savez(project / "s.npz", x=np.load(project / "x.npy"), y=np.arange(3))
    one_line_exit_2(run("mymodels.py:model", "--sample", "s.npz"), "3 labels for 8 samples")


# -- timeout -------------------------------------------------------------------------------


def test_timeout_stops_and_restores(project):
    (project / "slow.py").write_text(textwrap.dedent("""
        import time, torch
        from torch import nn

        class Slow(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 2)

            def forward(self, x):
                time.sleep(5)
                return self.fc(x)

        model = Slow().train()
        """))
    import importlib.util
    import time

    started = time.perf_counter()
    result = run("slow.py:model", "--timeout", "0.5")
    assert time.perf_counter() - started < 4
    one_line_exit_2(result, "--timeout", "restored")
    slow = next(m for k, m in sys.modules.items() if k.startswith("_auditor_target_") and hasattr(m, "Slow"))
    assert slow.model.training is True  # the eval() of the first pass was undone
    del importlib


# -- formats and output --------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["json", "sarif", "junit", "github", "html", "text"])
def test_formats(project, fmt):
    result = run("mymodels.py:model", "--sample", "x.npy", "--num-classes", "7", "--format", fmt)
    assert result.exit_code == 1, result.output  # 10 outputs for 7 classes
    out = result.stdout
    if fmt == "json":
        data = json.loads(out)
        assert data["target"] == "mymodels.py:model" and isinstance(data.get("notes", []), list)
        assert any(f["rule"] == "HED101" and f["evidence"] for f in data["findings"])
    elif fmt == "sarif":
        assert json.loads(out)["runs"][0]["results"]
    elif fmt == "junit":
        assert out.lstrip().startswith("<?xml") or "<testsuite" in out
    elif fmt == "github":
        assert "::error" in out or "::warning" in out
    elif fmt == "html":
        assert out.lstrip().lower().startswith("<!doctype html")
        assert "HED101" in out
        assert "<script src=" not in out and 'rel="stylesheet" href' not in out  # self-contained
    else:
        assert "HED101" in out


def test_output_file(project):
    result = run("mymodels.py:model", "--sample", "x.npy", "--format", "html", "--output", "report.html", "--fail-on", "never")
    assert result.exit_code == 0 and result.stdout == ""
    assert (project / "report.html").read_text().lower().lstrip().startswith("<!doctype html")


def test_no_progress_on_non_tty_stderr(project):
    result = run("mymodels.py:model", "--sample", "x.npy", "--fail-on", "never")
    assert result.exit_code == 0 and result.stderr == ""


def test_progress_on_tty_stderr_but_not_for_json(project):
    import pty
    import select

    def stderr_via_pty(*extra):
        master, slave = pty.openpty()
        code = "import sys; from auditor.cli import main; sys.argv=['auditor','audit','mymodels.py:model','--sample','x.npy','--fail-on','never',*sys.argv[1:]]; main()"
        proc = subprocess.Popen([sys.executable, "-c", code, *extra], cwd=project, stdout=subprocess.PIPE, stderr=slave)
        os.close(slave)
        chunks = []
        while True:
            ready, _, _ = select.select([master], [], [], 60)
            if not ready:
                break
            try:
                data = os.read(master, 4096)
            except OSError:
                break
            if not data:
                break
            chunks.append(data)
        stdout = proc.stdout.read()
        proc.wait(60)
        os.close(master)
        return proc.returncode, b"".join(chunks).decode(), stdout.decode()

    rc, err, out = stderr_via_pty()
    assert rc == 0 and "[1/" in err, err
    rc, err, out = stderr_via_pty("--format", "json")
    assert rc == 0 and err == "", err
    json.loads(out)


# -- selection and configuration ---------------------------------------------------------


def test_select_and_ignore_dynamic_codes(project):
    args = ["mymodels.py:model", "--sample", "x.npy", "--num-classes", "7", "--format", "json"]
    only = json.loads(run(*args, "--select", "HED101").stdout)
    assert {f["rule"] for f in only["findings"]} == {"HED101"}
    result = run(*args, "--ignore", "HED101")
    assert "HED101" not in {f["rule"] for f in json.loads(result.stdout)["findings"]}
    result = run(*args, "--select", "HED")
    assert {f["rule"] for f in json.loads(result.stdout)["findings"]} <= {f"HED{n}" for n in range(100, 200)}
    one_line_exit_2(run(*args, "--select", "NOPE999"))


def test_config_keys(project):
    (project / "pyproject.toml").write_text('[tool.auditor]\nnum-classes = 7\nsample = "x.npy"\ntimeout = 60\npretrained = "torchvision.models.resnet50"\n')
    result = run("mymodels.py:model", "--format", "json", "--select", "HED101")
    assert result.exit_code == 1, result.output
    data = json.loads(result.stdout)
    assert data["findings"][0]["evidence"]["num_classes"] == 7
    assert not any("synthetic" in n for n in data.get("notes", []))
    assert run("mymodels.py:model", "--format", "json", "--select", "HED101", "--num-classes", "10").exit_code == 0


@pytest.mark.parametrize("body, needle", [("trust = true", "trust"), ('num-classes = "ten"', "num-classes"), ('framework = "jax"', "framework")])
def test_bad_config_keys(project, body, needle):
    (project / "pyproject.toml").write_text(f"[tool.auditor]\n{body}\n")
    one_line_exit_2(run("mymodels.py:model", "--sample", "x.npy"), needle)


# -- end to end ------------------------------------------------------------------------------


def test_subprocess_end_to_end_and_no_keras_import(project):
    code = textwrap.dedent("""
        import sys
        from auditor.cli import main
        sys.argv = ["auditor", "audit", "mymodels.py:model", "--sample", "x.npy", "--format", "json", "--fail-on", "never"]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        loaded = sorted(m for m in ("keras", "tensorflow", "tf_keras") if m in sys.modules)
        print("IMPORTED:" + ",".join(loaded), file=sys.stderr)
        sys.exit(code)
        """)
    proc = subprocess.run([sys.executable, "-c", code], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    assert proc.stderr.strip() == "IMPORTED:", proc.stderr
    assert json.loads(proc.stdout)["target"] == "mymodels.py:model"


def test_subprocess_bad_input(project):
    proc = subprocess.run([sys.executable, "-m", "auditor", "audit", "mymodels.py:broken"], cwd=project, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "factory exploded" in proc.stderr
