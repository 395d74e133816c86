"""`auditor audit` with Keras targets: file.py:NAME / module:NAME (a Pipeline, a keras.Model
or a zero-argument function returning either), `.keras` and legacy `.h5` files loaded in
safe mode with their compiled optimizer and loss, code refused without --trust (proved with
Lambda layers whose loading WOULD create a marker file), the Keras versions whose safe_mode
is not to be relied on, and every bad file or directory one line with exit 2. A Keras audit
under the TensorFlow backend never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import zipfile

import pytest

keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

from keras import layers  # noqa: E402

from auditor.dynamic import keras_files  # noqa: E402
from auditor.dynamic.audit import make_context  # noqa: E402
from auditor.dynamic.keras_files import code_in_config, keras_version, load_keras_file, sniff  # noqa: E402
from auditor.dynamic.loading import resolve  # noqa: E402
from auditor.errors import UsageFailure  # noqa: E402
from dynamic_support import DYNAMIC, audit_cli as cli, one_line_exit_2  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
from _keras_fixtures import calibrated, functional_cnn, sequential_cnn  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
SELECT = ("--select", "HED")  # a few cheap probes: these tests are about loading


def subprocess_audit(*args, cwd, env_extra=None, epilogue=""):
    env = dict(os.environ)
    env["PYTHONPATH"] = os.pathsep.join([ROOT, env.get("PYTHONPATH", "")])
    env.update(env_extra or {})
    code = textwrap.dedent(f"""
        import sys
        from auditor.cli import main
        sys.argv = ["auditor", "audit"] + sys.argv[1:]
        try:
            main()
        except SystemExit as exc:
            code = exc.code
        {epilogue}
        sys.exit(code)
        """)
    return subprocess.run([sys.executable, "-c", code, *map(str, args)], cwd=cwd, env=env, capture_output=True, text=True, timeout=300)


def compiled_cnn():
    model = functional_cnn(num_classes=4)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=3e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return model


def marker_lambda(marker):
    """A lambda whose code creates `marker` when it runs (Keras runs it while rebuilding a
    functional model, i.e. during loading)."""
    return eval(f"lambda t: (open({str(marker)!r}, 'a').close(), t)[1]")  # noqa: S307 - test double


def lambda_model(marker):
    inputs = keras.Input((8, 8, 3))
    x = layers.Lambda(marker_lambda(marker), name="scale")(inputs)
    x = layers.Flatten()(x)
    return keras.Model(inputs, layers.Dense(2, name="head")(x))


# -- file.py:NAME and module:NAME targets ----------------------------------------------------

TARGETS = """
import numpy as np
import keras
from keras import layers
from auditor import Pipeline

def make():
    inputs = keras.Input((16, 16, 3))
    x = layers.Conv2D(4, 3, name="conv")(inputs)
    x = layers.BatchNormalization(name="bn")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x))

SAMPLE = np.random.default_rng(0).uniform(-1, 1, (4, 16, 16, 3)).astype("float32")
model = make()
pipeline = Pipeline(model, sample=SAMPLE, num_classes=3)

def build():
    return Pipeline(make(), sample=SAMPLE, num_classes=3)

def build_model():
    return make()

def broken():
    raise RuntimeError("factory exploded")
"""


@pytest.fixture()
def project(tmp_path, monkeypatch):
    (tmp_path / "kerastargets.py").write_text(TARGETS)
    (tmp_path / "kerastargets_mod.py").write_text(TARGETS)
    monkeypatch.chdir(tmp_path)
    return tmp_path


@pytest.mark.parametrize("name", ["pipeline", "model", "build", "build_model"])
def test_file_targets(project, name):
    result = cli(f"kerastargets.py:{name}", "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == f"kerastargets.py:{name}"
    assert data["environment"]["keras_backend"] == keras.config.backend()


def test_module_target(project):
    result = cli("kerastargets_mod:build", "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output
    assert json.loads(result.stdout)["target"] == "kerastargets_mod:build"


def test_module_target_resolves_to_a_keras_pipeline(project):
    loaded = resolve("kerastargets_mod:build_model")
    assert loaded.pipeline.framework == "keras"
    assert isinstance(loaded.pipeline.model, keras.Model)


def test_bad_keras_targets(project):
    one_line_exit_2(cli("kerastargets.py:broken"), "factory exploded", "kerastargets.py:")
    one_line_exit_2(cli("kerastargets.py:model", "--framework", "torch"), "keras model", "--framework torch")


# -- .keras files ------------------------------------------------------------------------------


def test_keras_file_loads_in_safe_mode(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    calibrated(functional_cnn(num_classes=4)).save(path)
    seen = {}
    original = keras.saving.load_model

    def spy(filepath, **kwargs):
        seen.update(kwargs)
        return original(filepath, **kwargs)

    monkeypatch.setattr(keras.saving, "load_model", spy)
    loaded = load_keras_file(str(path), trust=False)
    assert seen == {"safe_mode": True, "compile": True}
    assert isinstance(loaded.pipeline.model, keras.Model) and loaded.source == str(path)
    assert sniff(path) == ("keras", "")


def test_compiled_keras_file_brings_optimizer_and_loss(tmp_path):
    path = tmp_path / "compiled.keras"
    compiled_cnn().save(path)
    loaded = load_keras_file(str(path), trust=False)
    ctx = make_context(loaded.pipeline, loaded.source)
    assert ctx.optimizer_source == "model.compile()" and ctx.loss_source == "model.compile()"
    assert isinstance(ctx.optimizer, keras.optimizers.Adam)
    assert float(keras.ops.convert_to_numpy(ctx.optimizer.learning_rate)) == pytest.approx(3e-4)
    assert ctx.loss is not None
    assert any("before its first training step" in n for n in loaded.notes), loaded.notes  # Keras's own warning, as a note


def test_compiled_keras_file_with_trained_optimizer_keeps_its_state(tmp_path):
    path = tmp_path / "trained.keras"
    model = compiled_cnn()
    grads = [keras.ops.convert_to_tensor(np.full(v.shape, 0.01, dtype="float32")) for v in model.trainable_variables]
    model.optimizer.apply(grads, model.trainable_variables)
    model.save(path)
    loaded = load_keras_file(str(path), trust=False)
    optimizer = loaded.pipeline.model.optimizer
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 1
    assert not [n for n in loaded.notes if "optimizer" in n], loaded.notes


def test_compiled_keras_file_through_cli(tmp_path):
    path = tmp_path / "compiled.keras"
    compiled_cnn().save(path)
    result = cli(path, "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert data["target"] == str(path)
    assert result.stderr.strip() == "", result.stderr  # Keras's loading warnings became notes


def test_compiled_h5_brings_optimizer_and_loss(tmp_path):
    path = tmp_path / "compiled.h5"
    compiled_cnn().save(path)
    loaded = load_keras_file(str(path), trust=False)
    ctx = make_context(loaded.pipeline, loaded.source)
    assert ctx.optimizer_source == "model.compile()" and isinstance(ctx.optimizer, keras.optimizers.Adam)
    assert ctx.loss_source == "model.compile()"


def test_h5_whose_compile_settings_keras_cannot_restore_loads_uncompiled(tmp_path):
    """Keras 3.15 saves loss="mse" into an .h5 file and then cannot deserialise it: the model
    still loads, uncompiled, and the report says why."""
    model = functional_cnn()
    model.compile(optimizer="sgd", loss="mse")
    path = tmp_path / "mse.h5"
    model.save(path)
    loaded = load_keras_file(str(path), trust=False)
    ctx = make_context(loaded.pipeline, loaded.source)
    if getattr(loaded.pipeline.model, "compiled", False):  # a Keras that restores it
        assert ctx.optimizer_source == "model.compile()"
    else:
        assert ctx.optimizer is None and ctx.optimizer_source is None
        assert any("compile settings could not be restored" in n for n in loaded.notes), loaded.notes


def test_keras_directory_with_config_json(tmp_path):
    archive = tmp_path / "model.keras"
    sequential_cnn().save(archive)
    folder = tmp_path / "unzipped"
    with zipfile.ZipFile(archive) as zf:
        zf.extractall(folder)
    assert sniff(folder)[0] == "keras-dir"
    result = cli(folder, "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output


def test_compile_settings_with_a_custom_loss_load_uncompiled(tmp_path):
    def my_loss(y_true, y_pred):
        return keras.ops.mean(y_pred)

    model = functional_cnn()
    model.compile(optimizer="sgd", loss=my_loss)
    path = tmp_path / "custom_loss.keras"
    model.save(path)
    loaded = load_keras_file(str(path), trust=False)
    assert not getattr(loaded.pipeline.model, "compiled", False)
    assert any("compile settings" in n and "loaded uncompiled" in n for n in loaded.notes), loaded.notes


# -- code in the file: --trust ---------------------------------------------------------------


@pytest.mark.parametrize("suffix", [".keras", ".h5"])
def test_lambda_layer_refused_without_trust_and_run_with_it(tmp_path, suffix):
    marker = tmp_path / "ran"
    path = tmp_path / f"lambda{suffix}"
    lambda_model(marker).save(path)
    marker.unlink()  # building the model ran the lambda once
    line = one_line_exit_2(cli(path, *SELECT), "'scale'", "Lambda layer", "--trust", "runs that code")
    assert "safe_mode=False" in line
    assert not marker.exists(), "loading without --trust ran the file's code"
    result = cli(path, "--trust", "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output
    assert marker.exists()
    assert any("--trust" in n and "'scale'" in n for n in json.loads(result.stdout).get("notes", []))


def test_lambda_refusal_end_to_end_one_line(tmp_path):
    marker = tmp_path / "ran"
    path = tmp_path / "lambda.keras"
    lambda_model(marker).save(path)
    marker.unlink()
    proc = subprocess.run([sys.executable, "-m", "auditor", "audit", str(path)], cwd=tmp_path, capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": ROOT})
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr  # no TensorFlow start-up chatter either
    assert "Lambda layer" in proc.stderr and "Traceback" not in proc.stderr
    assert not marker.exists()


def _zip_with_config(path, config, weights=b""):
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("metadata.json", json.dumps({"keras_version": keras.__version__}))
        zf.writestr("config.json", json.dumps(config))
        if weights:
            zf.writestr("model.weights.h5", weights)


def test_tfsm_layer_refused_without_trust(tmp_path):
    config = {
        "module": "keras", "class_name": "Sequential", "registered_name": None,
        "config": {"name": "served", "layers": [{"module": "keras.layers", "class_name": "TFSMLayer", "registered_name": None, "config": {"name": "outside", "filepath": "/elsewhere/saved_model"}}]},
    }
    path = tmp_path / "tfsm.keras"
    _zip_with_config(path, config)
    one_line_exit_2(cli(path), "'outside'", "TFSMLayer", "/elsewhere/saved_model", "--trust")


def test_code_in_config_finds_lambdas_anywhere():
    lam = {"class_name": "__lambda__", "config": {"code": "xx", "defaults": None, "closure": None}}
    config = {"class_name": "Functional", "config": {"name": "m", "layers": [
        {"class_name": "Dense", "config": {"name": "d", "activation": lam}},
        {"class_name": "Lambda", "config": {"name": "old", "function": ["4wEAAA", None, None], "function_type": "lambda"}},  # tf.keras 2 .h5
        {"class_name": "Lambda", "config": {"name": "named", "function": {"class_name": "function", "module": "keras.ops", "config": "relu", "registered_name": None}}},
    ]}}
    found = code_in_config(config)
    assert len(found) == 2, found
    assert "'d' (Dense)" in found[0] and "lambda" in found[0]
    assert "'old'" in found[1] and "Lambda layer" in found[1]


# -- Keras versions whose safe_mode is not to be relied on -------------------------------------


@pytest.mark.parametrize("text, expected", [("3.15.1", (3, 15, 1)), ("3.13.2.dev2026", (3, 13, 2)), ("3.9.0rc1", (3, 9, 0)), ("2.15.0", (2, 15, 0))])
def test_keras_version_parsing(text, expected):
    class Fake:
        __version__ = text

    assert keras_version(Fake) == expected


@pytest.mark.parametrize("version", ["3.8.0", "3.12.0", "3.13.1"])
def test_old_keras_needs_trust_for_any_file(tmp_path, monkeypatch, version):
    path = tmp_path / "model.keras"
    functional_cnn().save(path)
    monkeypatch.setattr(keras, "__version__", version)
    line = one_line_exit_2(cli(path, *SELECT), f"keras {version}", "safe_mode", "CVE-2026-1462", "3.13.2", "--trust")
    if version < "3.9":
        assert "CVE-2025-1550" in line
    result = cli(path, "--trust", "--format", "json", "--fail-on", "never", *SELECT)
    assert result.exit_code == 0, result.output
    assert any("predates the fixes" in n for n in json.loads(result.stdout)["notes"])


def test_patched_keras_is_trusted(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    functional_cnn().save(path)
    monkeypatch.setattr(keras, "__version__", "3.13.2")
    assert cli(path, "--fail-on", "never", *SELECT).exit_code == 0


def test_lambda_in_h5_before_keras_3_12_says_safe_mode_does_not_reach_h5(tmp_path, monkeypatch):
    marker = tmp_path / "ran"
    path = tmp_path / "lambda.h5"
    lambda_model(marker).save(path)
    marker.unlink()
    monkeypatch.setattr(keras, "__version__", "3.11.3")
    one_line_exit_2(cli(path), "Lambda layer", "does not apply safe_mode to .h5", "3.12.0", "--trust")
    assert not marker.exists()


def test_keras_2_is_refused(tmp_path, monkeypatch):
    path = tmp_path / "model.keras"
    functional_cnn().save(path)
    monkeypatch.setattr(keras, "__version__", "2.15.0")
    one_line_exit_2(cli(path, "--trust"), "Keras 2", "Keras 3")


# -- custom classes ------------------------------------------------------------------------------


class Unregistered(layers.Layer):
    """A custom layer not registered with register_keras_serializable: its code is not in
    the file, and a fresh process cannot rebuild it."""

    def __init__(self, units=3, **kwargs):
        super().__init__(**kwargs)
        self.units = units
        self.dense = layers.Dense(units)

    def call(self, x):
        return self.dense(x)

    def get_config(self):
        return {**super().get_config(), "units": self.units}


def test_custom_class_that_cannot_be_rebuilt(tmp_path):
    inputs = keras.Input((4,))
    model = keras.Model(inputs, Unregistered(name="block")(inputs))
    path = tmp_path / "custom.keras"
    model.save(path)
    one_line_exit_2(cli(path), "custom class", "'Unregistered'", "not in the file", "file.py:NAME")
    one_line_exit_2(cli(path, "--trust"), "'Unregistered'")  # --trust does not import code the file names


def test_custom_registered_class_loads_in_the_process_that_registers_it(tmp_path):
    @keras.saving.register_keras_serializable(package="auditor_test")
    class Registered(Unregistered):
        pass

    inputs = keras.Input((4,))
    path = tmp_path / "registered.keras"
    keras.Model(inputs, Registered(name="block")(inputs)).save(path)
    loaded = load_keras_file(str(path), trust=False)
    assert loaded.pipeline.model.get_layer("block").__class__ is Registered
    keras.saving.get_custom_objects().pop("auditor_test>Registered", None)
    with pytest.raises(UsageFailure, match="auditor_test>Registered"):
        load_keras_file(str(path), trust=False)


# -- bad files: one line, exit 2 ----------------------------------------------------------------


def _bad_files(tmp_path):
    good = tmp_path / "good.keras"
    functional_cnn().save(good)
    h5 = tmp_path / "good.h5"
    functional_cnn().save(h5)
    blob = good.read_bytes()
    files = {}

    def add(name, content, needle):
        path = tmp_path / name
        if isinstance(content, bytes):
            path.write_bytes(content)
        else:
            content(path)
        files[name] = (path, needle)

    add("empty.keras", b"", "empty")
    add("text.keras", b"this is not a model\n", "text file")
    add("truncated.keras", blob[: len(blob) // 3], "truncated")
    add("truncated.h5", h5.read_bytes()[:5000], "truncated")

    def torch_zip(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
            zf.writestr("archive/version", b"3\n")

    add("renamed_pt.keras", torch_zip, "PyTorch")

    def no_config(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("model.weights.h5", b"x")

    add("noconfig.keras", no_config, "without config.json")

    def bad_json(path):
        with zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", "{not json")

    add("badjson.keras", bad_json, "not valid JSON")

    def no_weights(path):
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", src.read("config.json"))
            zf.writestr("metadata.json", src.read("metadata.json"))

    add("noweights.keras", no_weights, "weights are missing")

    def corrupt_weights(path):
        with zipfile.ZipFile(good) as src, zipfile.ZipFile(path, "w") as zf:
            zf.writestr("config.json", src.read("config.json"))
            zf.writestr("metadata.json", src.read("metadata.json"))
            zf.writestr("model.weights.h5", b"\x89HDF\r\n\x1a\n" + b"\x00" * 64)

    add("corruptweights.keras", corrupt_weights, "cannot be loaded")

    def wrong_model(path):
        import h5py

        weights = tmp_path / "empty_weights.h5"
        with h5py.File(weights, "w"):
            pass
        _zip_with_config(path, {"module": "keras.layers", "class_name": "Dense", "registered_name": None, "config": {"name": "d", "units": 2}}, weights.read_bytes())

    add("notamodel.keras", wrong_model, "not a keras.Model")

    def flipped(path):
        data = bytearray(blob)
        with zipfile.ZipFile(good) as src:
            info = src.getinfo("model.weights.h5")
        start = info.header_offset + 30 + len(info.filename) + len(info.extra) + 100
        data[start : start + 64] = bytes(64)  # damaged bytes inside the stored weights
        path.write_bytes(bytes(data))

    add("flipped.keras", flipped, "cannot be loaded")
    add("h5_named.keras", h5.read_bytes(), "rename it to .h5")
    add("zip_named.h5", blob, "rename it to .keras")
    add("array.keras", b"\x93NUMPY\x01\x00" + b" " * 40, "NumPy")
    add("pickle.h5", b"\x80\x02}q\x00.", "pickle")

    def weights_only(path):
        functional_cnn().save_weights(path)

    add("only.weights.h5", weights_only, "weights only")

    def hdf5_without_model(path):
        import h5py

        with h5py.File(path, "w") as fh:
            fh.create_dataset("x", data=np.zeros(3))

    add("plain.hdf5", hdf5_without_model, "no model_config")

    def savedmodel(path):
        path.mkdir()
        (path / "saved_model.pb").write_bytes(b"\x08\x01")
        (path / "variables").mkdir()

    add("exported", savedmodel, "TFSMLayer")

    def other_dir(path):
        path.mkdir()
        (path / "readme.txt").write_text("hello")

    add("somedir", other_dir, "without config.json or saved_model.pb")

    def orbax(path):
        path.mkdir()
        (path / "_CHECKPOINT_METADATA").write_text("{}")

    add("orbax", orbax, "Orbax")
    return files


def test_bad_files_one_line_exit_2(tmp_path):
    for name, (path, needle) in _bad_files(tmp_path).items():
        result = cli(path, *SELECT)
        line = one_line_exit_2(result)
        assert needle in line, (name, line)
        assert str(path) in line, (name, line)


def test_savedmodel_directory_names_what_is_supported(tmp_path):
    path = _bad_files(tmp_path)["exported"][0]
    line = one_line_exit_2(cli(path), "SavedModel", "keras.layers.TFSMLayer", ".keras", ".h5")
    assert "model.save('model.keras')" in line


def test_framework_torch_on_keras_files(tmp_path):
    path = tmp_path / "model.keras"
    functional_cnn().save(path)
    one_line_exit_2(cli(path, "--framework", "torch"), "a Keras model file (.keras)", "--framework torch")
    h5 = tmp_path / "model.h5"
    functional_cnn().save(h5)
    one_line_exit_2(cli(h5, "--framework", "torch"), ".h5", "--framework torch")
    assert cli(path, "--framework", "keras", "--fail-on", "never", *SELECT).exit_code == 0


def test_bad_file_end_to_end_no_traceback_no_chatter(tmp_path):
    path = tmp_path / "renamed.keras"
    with zipfile.ZipFile(path, "w") as zf:
        zf.writestr("archive/data.pkl", b"\x80\x02}q\x00.")
    proc = subprocess_audit(path, cwd=tmp_path)
    assert proc.returncode == 2 and proc.stdout == ""
    assert len(proc.stderr.strip().splitlines()) == 1, proc.stderr
    assert "Traceback" not in proc.stderr and "PyTorch" in proc.stderr


def test_huge_config_is_not_read(tmp_path):
    path = tmp_path / "bomb.keras"
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_DEFLATED) as zf:
        zf.writestr("config.json", b" " * (keras_files.MAX_CONFIG_BYTES + 10))
    one_line_exit_2(cli(path), "refusing to read it")


# -- only keras and its backend ---------------------------------------------------------------


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="the rule is about the TensorFlow backend")
def test_keras_audit_never_imports_torch(tmp_path):
    (tmp_path / "kerastargets.py").write_text(TARGETS)
    path = tmp_path / "compiled.keras"
    compiled_cnn().save(path)
    check = 'print("TORCH:" + ",".join(sorted(m for m in sys.modules if m == "torch" or m.startswith("torch."))), file=sys.stderr)'
    for target in ("kerastargets.py:build", str(path)):
        proc = subprocess_audit(target, "--format", "json", "--fail-on", "never", cwd=tmp_path, env_extra={"KERAS_BACKEND": "tensorflow"}, epilogue=check)
        assert proc.returncode == 0, proc.stderr
        assert proc.stderr.strip().splitlines()[-1] == "TORCH:", proc.stderr
        data = json.loads(proc.stdout)
        assert data["environment"]["torch"] is None and data["environment"]["keras_backend"] == "tensorflow"
