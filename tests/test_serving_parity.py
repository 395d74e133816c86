"""Serving parity, LOD101-LOD104: the round trip (auditor/dynamic/serving.py) and the rules'
decisions (rules/_serving_probe.py), on real PyTorch modules and real Keras models.

Also: the model is restored bit for bit, nothing is written outside the probe's temporary
directory (which is removed, also when a step raises), and a Keras audit under the
TensorFlow backend never imports torch."""

from __future__ import annotations

import json
import os
import subprocess
import sys
import tempfile
import textwrap
import warnings
from pathlib import Path

import numpy as np
import pytest

from dynamic_support import ROOT, assert_restored, capture

from auditor import Pipeline, audit
from auditor.dynamic import serving as sv
from auditor.finding import Severity
from auditor.rules import _serving_probe as sp

FIXTURES = ROOT / "fixtures" / "dynamic"


def _lod(report):
    return sorted((f.rule, f.target, f.severity.value) for f in report.findings if f.rule.startswith("LOD"))


# =========================================================================== tolerance
def test_identical_outputs_agree():
    ref = np.array([[0.5, -2.0, 3.0]], dtype=np.float32)
    cmp = sp.compare(ref, ref.copy())
    assert not cmp.mismatch and cmp.max_abs == 0.0 and cmp.tolerance == 1e-5


def test_float32_tolerance_is_relative_to_the_output_scale():
    ref = np.array([[0.5, -4.0]], dtype=np.float64)
    # tol 1e-5 * max(1, 4.0) = 4e-5
    assert not sp.compare(ref, ref + [[3.9e-5, 0.0]], "float32").mismatch
    assert sp.compare(ref, ref + [[4.1e-5, 0.0]], "float32").mismatch


def test_tolerance_is_absolute_below_one():
    ref = np.array([[0.001, -0.002]], dtype=np.float64)
    assert not sp.compare(ref, ref + 9e-6, "float32").mismatch
    assert sp.compare(ref, ref + 1.1e-5, "float32").mismatch


def test_tolerance_per_dtype():
    assert sp.tolerance("float16") == 1e-2 and sp.tolerance("torch.bfloat16") == 2e-2
    assert sp.tolerance("float64") == 1e-9 and sp.tolerance("int64") == 1e-5
    ref = np.array([1.0, 2.0])
    assert not sp.compare(ref, ref + 0.01, "float16").mismatch  # 0.01 <= 1e-2 * 2
    assert sp.compare(ref, ref + 0.01, "float32").mismatch


def test_nan_in_the_same_places_is_equal_elsewhere_a_difference():
    ref = np.array([np.nan, 1.0, np.inf])
    assert not sp.compare(ref, ref.copy()).mismatch
    moved = np.array([1.0, np.nan, np.inf])
    cmp = sp.compare(ref, moved)
    assert cmp.mismatch and "NaN" in cmp.why
    flipped = np.array([np.nan, 1.0, -np.inf])
    assert sp.compare(ref, flipped).mismatch


def test_other_shape_is_a_difference():
    cmp = sp.compare(np.zeros((2, 3)), np.zeros((2, 4)))
    assert cmp.mismatch and "shape" in cmp.why


def test_missing_output_is_not_compared():
    assert sp.compare(None, np.zeros(2)) is None and sp.compare(np.zeros(2), None) is None


# =========================================================================== PyTorch
def _torch():
    return pytest.importorskip("torch")


def _cnn():
    sys.path.insert(0, str(FIXTURES))
    from _torch_fixtures import calibrated_cnn, imagenet_preprocess, images

    return calibrated_cnn, imagenet_preprocess, images


def _context(pipeline):
    from auditor.dynamic.audit import make_context

    return make_context(pipeline)


def test_state_dict_round_trip_is_exact_for_a_plain_model():
    torch = _torch()
    calibrated_cnn, pre, images = _cnn()
    ctx = _context(Pipeline(calibrated_cnn().eval(), preprocess=pre, sample=images(8)))
    result = sp.serving(ctx)
    (trip,) = result.trips
    assert trip.format == "state_dict" and not trip.failures and not trip.lost and not trip.changed
    reference = ctx.eval_pass().output
    assert torch.equal(torch.from_numpy(trip.output), reference), "same weights, same kernels: bit for bit"
    assert result.comparison(trip).max_abs == 0.0


class _Standardize:
    """Factories of the Standardize module of the docs, with and without stored arguments."""

    @staticmethod
    def make(stores_channels: bool, persistent: bool = False, channels: int = 3):
        torch = _torch()
        from torch import nn

        class Standardize(nn.Module):
            def __init__(self, channels=3):
                super().__init__()
                if stores_channels:
                    self.channels = channels
                self.register_buffer("mean", torch.zeros(channels), persistent=persistent)
                self.register_buffer("std", torch.ones(channels), persistent=persistent)

            def forward(self, x):
                return (x - self.mean[:, None, None]) / self.std[:, None, None]

        module = Standardize(channels)
        module.mean = torch.tensor([0.485, 0.456, 0.406])
        module.std = torch.tensor([0.229, 0.224, 0.225])
        return module


def _unit(batch):
    torch = _torch()
    return torch.from_numpy(np.ascontiguousarray(np.transpose(batch, (0, 3, 1, 2)))).float() / 255.0


def test_non_persistent_buffers_are_named_with_numbers():
    from torch import nn

    calibrated_cnn, _, images = _cnn()
    model = nn.Sequential(_Standardize.make(stores_channels=False), calibrated_cnn()).eval()
    report = audit(Pipeline(model, preprocess=_unit, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD103", "0.mean", "warning"), ("LOD103", "0.std", "warning")]
    finding = report.findings[0]
    assert finding.evidence["kind"] == "non-persistent buffer"
    assert finding.evidence["assumed_defaults"] == "channels", "channels is not kept as an attribute: the rebuild assumed its default"
    assert finding.evidence["max_abs_diff"] > 0.1 and finding.evidence["tolerance"] == 1e-5
    assert "0.485" in finding.evidence["difference"]
    assert "persistent=False" in finding.fix


def test_rebuild_with_every_argument_known_is_an_error():
    from torch import nn

    calibrated_cnn, _, images = _cnn()
    model = nn.Sequential(_Standardize.make(stores_channels=True), calibrated_cnn()).eval()
    report = audit(Pipeline(model, preprocess=_unit, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD103", "0.mean", "error"), ("LOD103", "0.std", "error")]
    assert "assumed_defaults" not in report.findings[0].evidence


def test_persistent_buffers_round_trip():
    from torch import nn

    calibrated_cnn, _, images = _cnn()
    model = nn.Sequential(_Standardize.make(stores_channels=False, persistent=True), calibrated_cnn()).eval()
    assert _lod(audit(Pipeline(model, preprocess=_unit, sample=images(8)), select="LOD")) == []


def test_owner_that_cannot_be_rebuilt_is_a_note_not_a_finding():
    torch = _torch()
    from torch import nn

    calibrated_cnn, _, images = _cnn()

    class Shift(nn.Module):
        def __init__(self, offset_values):  # required, not kept as an attribute
            super().__init__()
            self.register_buffer("offset", torch.as_tensor(offset_values, dtype=torch.float32), persistent=False)

        def forward(self, x):
            return x - self.offset[:, None, None]

    model = nn.Sequential(Shift([0.4, 0.4, 0.4]), calibrated_cnn()).eval()
    report = audit(Pipeline(model, preprocess=_unit, sample=images(8)), select="LOD")
    assert _lod(report) == []
    assert any("could not be rebuilt" in n and "offset_values" in n for n in report.notes), report.notes


def test_lost_state_the_output_does_not_use_is_silent():
    torch = _torch()
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Logged(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = calibrated_cnn()
            self.register_buffer("seen_mean", torch.zeros(3), persistent=False)  # bookkeeping only

        def forward(self, x):
            return self.net(x)

    model = Logged().eval()
    model.seen_mean = torch.tensor([1.0, 2.0, 3.0])
    ctx = _context(Pipeline(model, preprocess=pre, sample=images(8)))
    (trip,) = sp.serving(ctx).trips
    assert [lost.name for lost in trip.lost] == ["seen_mean"]
    assert not sp.serving(ctx).comparison(trip).mismatch
    from auditor.rules.lod103_unsaved_buffers import UnsavedBuffers

    assert UnsavedBuffers().probe(ctx) == []


def test_attribute_set_after_construction_makes_the_served_model_fail():
    torch = _torch()
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Adjusted(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = calibrated_cnn()

        def forward(self, x):
            return self.net(x) - self.bias_correction

    model = Adjusted().eval()
    model.bias_correction = torch.linspace(0, 1, 10)  # added by a post-processing script
    report = audit(Pipeline(model, preprocess=pre, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD103", "bias_correction", "error")]
    finding = report.findings[0]
    assert "AttributeError" in finding.evidence["error"] and "fails on the sample" in finding.message
    assert model.bias_correction.shape == (10,), "the live model keeps its attribute"


def test_plain_list_of_modules_and_float_attribute():
    torch = _torch()
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Head(nn.Module):
        def __init__(self, width=32):
            super().__init__()
            self.width = width
            self.blocks = [nn.Linear(width, width)]
            self.out = nn.Linear(width, 10)
            self.temperature = 1.0

        def forward(self, x):
            return self.out(torch.relu(self.blocks[0](x))) / self.temperature

    torch.manual_seed(0)
    cnn = calibrated_cnn()
    cnn.fc = Head()
    cnn.fc.temperature = 1.5
    report = audit(Pipeline(cnn.eval(), preprocess=pre, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD103", "fc.blocks[0]", "error"), ("LOD103", "fc.temperature", "error")]
    kinds = {f.target: f.evidence["kind"] for f in report.findings}
    assert kinds == {"fc.blocks[0]": "unregistered module", "fc.temperature": "number attribute"}
    assert cnn.fc.temperature == 1.5 and isinstance(cnn.fc.blocks, list), "the live model is untouched"


def test_custom_state_dict_methods_are_trusted_for_their_own_state():
    torch = _torch()
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Scaled(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = calibrated_cnn()
            self.scale = torch.ones(1)  # saved by the two methods below

        def _save_to_state_dict(self, destination, prefix, keep_vars):
            super()._save_to_state_dict(destination, prefix, keep_vars)
            destination[prefix + "scale"] = self.scale

        def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
            self.scale = state_dict.pop(prefix + "scale").clone()
            super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

        def forward(self, x):
            return self.net(x) * self.scale

    model = Scaled().eval()
    model.scale = torch.full((1,), 0.5)
    assert _lod(audit(Pipeline(model, preprocess=pre, sample=images(8)), select="LOD")) == []


def test_weights_only_refusal_names_the_module_and_the_global():
    from argparse import Namespace

    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class WithConfig(nn.Module):
        def __init__(self, inner):
            super().__init__()
            self.inner = inner
            self.config = Namespace(lr=0.1)

        def forward(self, x):
            return self.inner(x)

        def get_extra_state(self):
            return self.config

        def set_extra_state(self, state):
            self.config = state

    cnn = calibrated_cnn()
    cnn.fc = WithConfig(cnn.fc)
    report = audit(Pipeline(cnn.eval(), preprocess=pre, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "fc", "error")]
    finding = report.findings[0]
    assert finding.evidence["object"] == "argparse.Namespace" and finding.evidence["stage"] == "load"
    assert "weights_only=True" in finding.message and "add_safe_globals" in finding.fix


def test_torchscript_module_round_trips_in_its_own_format():
    torch = _torch()
    calibrated_cnn, pre, images = _cnn()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        scripted = torch.jit.script(calibrated_cnn().eval())
    ctx = _context(Pipeline(scripted, preprocess=pre, sample=images(8)))
    (trip,) = sp.serving(ctx).trips
    assert trip.format == "torchscript" and not trip.failures
    assert not sp.serving(ctx).comparison(trip).mismatch


def _dropout_cnn(train: bool):
    _torch()
    from torch import nn

    calibrated_cnn, pre, images = _cnn()
    model = calibrated_cnn()
    model.fc = nn.Sequential(nn.Dropout(0.2), model.fc)
    model.train(train)
    return model, pre(images(2))


def test_trace_in_training_mode_freezes_dropout_and_batchnorm():
    torch = _torch()
    model, example = _dropout_cnn(train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    traced.eval()
    kind, frozen = sv.frozen_training_ops(traced)
    assert kind == "TorchScript module"
    assert sorted(frozen) == [("bn1", "batch_norm"), ("bn2", "batch_norm"), ("fc.0", "dropout")]


def test_trace_in_eval_mode_and_script_in_train_mode_are_not_frozen():
    torch = _torch()
    model, example = _dropout_cnn(train=False)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
        scripted = torch.jit.script(model.train())  # reads self.training at run time
    assert sv.frozen_training_ops(traced)[1] == []
    assert sv.frozen_training_ops(scripted)[1] == []
    assert sv.frozen_training_ops(model) == ("", []), "a live module is INF102's"


def test_export_in_training_mode_is_frozen():
    torch = _torch()
    model, example = _dropout_cnn(train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        trained = torch.export.export(model, (example,)).module()
        evaluated = torch.export.export(model.eval(), (example,)).module()
    kind, frozen = sv.frozen_training_ops(trained)
    assert kind == "torch.export program" and sv.is_exported(trained)
    assert sorted(frozen) == [("bn1", "batch_norm"), ("bn2", "batch_norm"), ("fc.0", "dropout")]
    assert sv.frozen_training_ops(evaluated)[1] == []


def test_lod104_message_and_evidence():
    torch = _torch()
    _, pre, images = _cnn()
    model, example = _dropout_cnn(train=True)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        traced = torch.jit.trace(model, example, check_trace=False)
    report = audit(Pipeline(traced.eval(), preprocess=pre, sample=images(8)), select="LOD104")
    (finding,) = report.findings
    assert finding.target == "<model>" and finding.evidence["batch_norm_ops"] == 2 and finding.evidence["dropout_ops"] == 1
    assert ".eval() cannot turn off" in finding.message and "model.eval()" in finding.fix


def test_nondeterministic_model_is_not_compared():
    _torch()
    import torch.nn.functional as F
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Noisy(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = calibrated_cnn()

        def forward(self, x):
            return F.dropout(self.net(x), 0.5)  # training=True by default: DET101's

    report = audit(Pipeline(Noisy().eval(), preprocess=pre, sample=images(8)), select="LOD")
    assert _lod(report) == []
    assert any("two inference runs of the model itself differ" in n for n in report.notes)


def test_half_precision_state_dict_reports_changed_tensors():
    from torch import nn

    calibrated_cnn, pre, images = _cnn()

    class Compact(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = calibrated_cnn()

        def forward(self, x):
            return self.net(x)

        def state_dict(self, *args, **kwargs):
            state = super().state_dict(*args, **kwargs)
            return type(state)((k, v.half() if v.is_floating_point() else v) for k, v in state.items())

    report = audit(Pipeline(Compact().eval(), preprocess=pre, sample=images(8)), select="LOD")
    assert _lod(report) == [("LOD101", "<model>", "error")]
    evidence = report.findings[0].evidence
    assert evidence["format"] == "state_dict" and evidence["relative_diff"] > evidence["tolerance"]
    assert evidence["tensors_changed_count"] == 8 and "net.conv1.weight" in evidence["tensors_changed"]


# -- guarantees ----------------------------------------------------------------------------
def _fixture_pipeline(relative: str):
    from dynamic_support import load_fixture

    return load_fixture(FIXTURES / relative).build()


@pytest.mark.parametrize(
    "relative",
    [
        "LOD103/bad_non_persistent_statistics.py",
        "LOD103/bad_plain_list_of_blocks.py",
        "LOD103/bad_calibrated_temperature.py",
        "LOD101/bad_half_precision_state_dict.py",
        "LOD102/bad_extra_state_custom_object.py",
        "LOD104/bad_trace_in_training_mode_batchnorm.py",
    ],
)
def test_torch_audit_restores_everything_and_writes_nothing(relative, tmp_path, monkeypatch):
    _torch()
    pipeline = _fixture_pipeline(relative)
    model = pipeline.model
    attributes = {name: dict(vars(m)) for name, m in model.named_modules()}
    before = capture(pipeline)
    scratch, seen = _watch_scratch(tmp_path, monkeypatch)
    report = audit(pipeline, select="LOD")
    assert report.findings
    assert_restored(pipeline, before)
    for name, module in model.named_modules():  # plain attributes too (TorchState does not cover them)
        now = vars(module)
        assert now.keys() == attributes[name].keys(), name
        for key, value in attributes[name].items():
            assert now[key] is value, f"{name}.{key} was rebound"
    _assert_nothing_left(scratch, seen, tmp_path)


def _watch_scratch(tmp_path, monkeypatch):
    """Point the process's temp dir and cwd at empty folders, and record every scratch dir."""
    temp_root = tmp_path / "tmp"
    cwd = tmp_path / "cwd"
    temp_root.mkdir()
    cwd.mkdir()
    monkeypatch.setattr(tempfile, "tempdir", str(temp_root))
    monkeypatch.chdir(cwd)
    seen: list[str] = []
    original = sv.scratch_dir

    import contextlib

    @contextlib.contextmanager
    def watched():
        with original() as path:
            seen.append(path)
            assert Path(path).parent == temp_root
            yield path

    monkeypatch.setattr(sv, "scratch_dir", watched)
    return temp_root, seen


def _assert_nothing_left(temp_root, seen, tmp_path):
    assert seen, "the probe used its scratch directory"
    for path in seen:
        assert not os.path.exists(path), f"{path} was left behind"
    assert list(temp_root.iterdir()) == [], "nothing else was written to the temp dir"
    assert list((tmp_path / "cwd").iterdir()) == [], "nothing was written to the working directory"
    assert tempfile.tempdir == str(temp_root), "tempfile.tempdir is restored"


def test_scratch_dir_is_removed_when_a_step_raises(tmp_path, monkeypatch):
    temp_root, seen = _watch_scratch(tmp_path, monkeypatch)
    with pytest.raises(RuntimeError):
        with sv.scratch_dir() as path:
            Path(path, "partial.pt").write_bytes(b"x")
            assert tempfile.gettempdir() == path, "frameworks' own temp files land inside it"
            raise RuntimeError("save failed half way")
    assert not os.path.exists(path)
    assert tempfile.tempdir == str(temp_root)
    assert list(temp_root.iterdir()) == []


def test_torch_save_failure_mid_way_leaves_nothing(tmp_path, monkeypatch):
    torch = _torch()
    calibrated_cnn, pre, images = _cnn()
    pipeline = Pipeline(calibrated_cnn().eval(), preprocess=pre, sample=images(8))
    before = capture(pipeline)
    temp_root, seen = _watch_scratch(tmp_path, monkeypatch)
    real_save = torch.save

    def failing_save(obj, f, *args, **kwargs):
        real_save(obj, f, *args, **kwargs)
        raise OSError("disk full")

    monkeypatch.setattr(torch, "save", failing_save)
    report = audit(pipeline, select="LOD")
    assert _lod(report) == [("LOD102", "<model>", "error")]
    assert "disk full" in report.findings[0].evidence["error"]
    assert_restored(pipeline, before)
    _assert_nothing_left(temp_root, seen, tmp_path)


# =========================================================================== Keras
def _keras():
    return pytest.importorskip("keras")


def _keras_fixtures():
    sys.path.insert(0, str(FIXTURES))
    import _keras_fixtures as kf

    return kf


def _keras_head_model(layer):
    keras = _keras()
    kf = _keras_fixtures()
    cnn = kf.calibrated(kf.functional_cnn())
    return keras.Model(cnn.input, layer(cnn.output))


def test_keras_builtin_model_is_not_round_tripped():
    _keras()
    kf = _keras_fixtures()
    ctx = _context(Pipeline(kf.calibrated(kf.functional_cnn()), preprocess=kf.caffe, sample=kf.images(8)))
    assert sp.serving(ctx).trips == []
    assert any("Keras's own" in n for n in ctx.notes)


def test_keras_unregistered_layer_loads_only_with_custom_objects():
    keras = _keras()
    kf = _keras_fixtures()

    class Halve(keras.layers.Layer):
        def call(self, x):
            return x / 2.0

    model = _keras_head_model(Halve(name="halve"))
    ctx = _context(Pipeline(model, preprocess=kf.caffe, sample=kf.images(8)))
    (trip,) = sp.serving(ctx).trips
    (failure,) = trip.failures
    assert failure.kind == "unregistered" and failure.loads_with_custom_objects and failure.target == "halve"
    assert "Could not locate class 'Halve'" in failure.error
    assert trip.output is not None and not sp.serving(ctx).comparison(trip).mismatch, "compared after loading with custom_objects"
    from auditor.rules.lod102_model_not_serializable import ModelNotSerializable

    (finding,) = ModelNotSerializable().probe(ctx)
    assert finding.severity is Severity.WARNING and "register_keras_serializable" in finding.fix


def test_keras_unregistered_activation_function():
    keras = _keras()
    kf = _keras_fixtures()

    def scaled_tanh(x):
        return 2.0 * keras.ops.tanh(x)

    report = audit(Pipeline(_keras_head_model(keras.layers.Dense(5, activation=scaled_tanh, name="out")), preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "out", "warning")]
    assert "cannot find function scaled_tanh" in report.findings[0].message


def test_keras_lost_constructor_argument():
    keras = _keras()
    kf = _keras_fixtures()

    @keras.saving.register_keras_serializable(package="test_serving_parity")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def call(self, x):
            return x * self.factor

        def get_config(self):
            return super().get_config()

    report = audit(Pipeline(_keras_head_model(Scale(3.0, name="scale")), preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "scale", "error")]
    evidence = report.findings[0].evidence
    assert (evidence["argument"], evidence["value"], evidence["after_load"], evidence["in_get_config"]) == ("factor", "3.0", "1.0", False)
    assert evidence["max_abs_output_diff"] > 0


def test_keras_lost_argument_without_effect_is_a_warning():
    keras = _keras()
    kf = _keras_fixtures()

    @keras.saving.register_keras_serializable(package="test_serving_parity")
    class Tagged(keras.layers.Layer):
        def __init__(self, tag="none", **kwargs):
            super().__init__(**kwargs)
            self.tag = tag

        def call(self, x):
            return x

        def get_config(self):
            return super().get_config()

    report = audit(Pipeline(_keras_head_model(Tagged("v2", name="tagged")), preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "tagged", "warning")]


def test_keras_required_argument_missing_fails_even_with_custom_objects():
    keras = _keras()
    kf = _keras_fixtures()

    @keras.saving.register_keras_serializable(package="test_serving_parity")
    class Clip(keras.layers.Layer):
        def __init__(self, limit, **kwargs):
            super().__init__(**kwargs)
            self.limit = limit

        def call(self, x):
            return keras.ops.clip(x, -self.limit, self.limit)

        def get_config(self):
            return {"name": self.name}

    report = audit(Pipeline(_keras_head_model(Clip(0.5, name="clip")), preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "clip", "error")]
    assert "missing 1 required positional argument: 'limit'" in report.findings[0].evidence["error"]


def test_keras_lambda_is_refused_by_safe_mode():
    keras = _keras()
    kf = _keras_fixtures()
    report = audit(Pipeline(_keras_head_model(keras.layers.Lambda(lambda t: t * 2.0, name="double")), preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD102", "double", "error")]
    assert "layer double (Lambda)" in report.findings[0].message and "safe_mode" in report.findings[0].message


def test_keras_numpy_state_is_named():
    keras = _keras()
    kf = _keras_fixtures()

    @keras.saving.register_keras_serializable(package="test_serving_parity")
    class Bias(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.offset = np.zeros(5, dtype="float32")
            self.gain = 1.0

        def call(self, x):
            return keras.ops.add(x * self.gain, keras.ops.convert_to_tensor(self.offset))

    bias = Bias(name="bias")
    model = _keras_head_model(bias)
    bias.offset = np.linspace(-1, 1, 5).astype("float32")  # fitted after training
    bias.gain = 0.5
    report = audit(Pipeline(model, preprocess=kf.caffe, sample=kf.images(8)), select="LOD")
    assert _lod(report) == [("LOD103", "bias.gain", "error"), ("LOD103", "bias.offset", "error")]
    kinds = {f.target: f.evidence["kind"] for f in report.findings}
    assert kinds == {"bias.offset": "array attribute", "bias.gain": "number attribute"}


def test_keras_audit_restores_and_writes_nothing(tmp_path, monkeypatch):
    keras = _keras()
    pipeline = _fixture_pipeline("LOD103/bad_keras_numpy_statistics.py")
    pipeline.model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")  # unbuilt optimizer: must stay unbuilt
    before = capture(pipeline)
    from keras.src.backend.common import global_state

    counters = dict(global_state.get_global_attribute("object_name_uids") or {})
    temp_root, seen = _watch_scratch(tmp_path, monkeypatch)
    report = audit(pipeline, select="LOD")
    assert _lod(report) == [("LOD103", "standardize.mean", "error"), ("LOD103", "standardize.std", "error")]
    assert_restored(pipeline, before)
    assert not pipeline.model.optimizer.built
    assert dict(global_state.get_global_attribute("object_name_uids") or {}) == counters, "automatic layer names unchanged"
    _assert_nothing_left(temp_root, seen, tmp_path)


def test_keras_audit_under_tensorflow_never_imports_torch():
    pytest.importorskip("tensorflow")
    code = textwrap.dedent(
        f"""
        import json, os, sys
        os.environ["KERAS_BACKEND"] = "tensorflow"
        sys.path.insert(0, {str(FIXTURES)!r})
        sys.path.insert(0, {str(ROOT / "tests")!r})
        from dynamic_support import load_fixture
        from pathlib import Path
        from auditor import audit
        module = load_fixture(Path({str(FIXTURES / "LOD102" / "bad_keras_get_config_missing_arg.py")!r}))
        report = audit(module.build(), select="LOD")
        print(json.dumps({{"torch": "torch" in sys.modules, "found": [[f.rule, f.target] for f in report.findings]}}))
        """
    )
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=600, env=env, cwd=ROOT)
    assert proc.returncode == 0, proc.stderr[-2000:]
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    assert result == {"torch": False, "found": [["LOD102", "temperature"]]}
