"""The dynamic BatchNorm probes (BNS101-BNS104) on real Keras 3 models: the shared numpy math
with the Keras accessors, each rule's decisions and messages, the frozen-base simulation of
BNS103, restore after every probe, and no torch under the TensorFlow backend."""

from __future__ import annotations

import math
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

keras = pytest.importorskip("keras")
import numpy as np  # noqa: E402
from keras import layers  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures" / "dynamic"))
from _keras_fixtures import backbone, caffe, calibrate, calibrated, functional_cnn, images, sequential_cnn, subclassed_cnn, tf_mode, transfer_model  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.dynamic.keras_context import KerasContext  # noqa: E402
from auditor.dynamic.records import BatchNormObservation  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from auditor.rules import _batchnorm_probe as bn  # noqa: E402
from auditor.rules.bns101_batchnorm_statistics_drift import BatchnormStatisticsDrift  # noqa: E402
from auditor.rules.bns102_batchnorm_train_eval_gap import BatchnormTrainEvalGap  # noqa: E402
from auditor.rules.bns103_frozen_batchnorm_updating import FrozenBatchnormUpdating  # noqa: E402
from auditor.rules.bns104_batchnorm_statistics_invalid import BatchnormStatisticsInvalid  # noqa: E402
from dynamic_support import assert_restored, capture  # noqa: E402

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")
RULES = (BatchnormStatisticsDrift, BatchnormTrainEvalGap, FrozenBatchnormUpdating, BatchnormStatisticsInvalid)
CE = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


@pytest.fixture(autouse=True)
def _seeded():
    keras.utils.set_random_seed(7)


def _ctx(model, **kw):
    kw.setdefault("preprocess", caffe)
    kw.setdefault("sample", images(8))
    kw.setdefault("num_classes", 5)
    return KerasContext(Pipeline(model, **kw))


def _run(rule, ctx):
    """One probe as the engine runs it: restore afterwards."""
    try:
        return list(rule().probe(ctx))
    finally:
        ctx.restore()


def _filled(finding):
    assert not PLACEHOLDER.search(finding.message), finding.message
    assert not PLACEHOLDER.search(finding.fix), finding.fix
    assert finding.target and finding.evidence


def _value(variable):
    return np.array(keras.ops.convert_to_numpy(variable), dtype=np.float64)


def _no_wrappers(model):
    for _name, layer in bn_layers_all(model):
        assert "call" not in layer.__dict__, f"{layer.name}.call wrapper left behind"


def bn_layers_all(model):
    from auditor.dynamic.keras_state import all_layers

    return all_layers(model)


def _frozen_transfer(training_false=False, compiled=True):
    model = transfer_model(training_false=training_false)
    if compiled:
        model.compile(optimizer=keras.optimizers.Adam(), loss=CE)
    return model


# -- accessors --------------------------------------------------------------------------------
def test_statistics_accessor_reads_keras_layers():
    layer = layers.BatchNormalization(momentum=0.9, epsilon=1e-4)
    layer.build((None, 4, 4, 3))
    stats = bn.statistics(layer)
    assert stats.framework == "keras" and stats.eps == pytest.approx(1e-4) and stats.momentum == pytest.approx(0.9)
    assert stats.mean.dtype == np.float64 and stats.mean.tolist() == [0.0] * 3 and stats.var.tolist() == [1.0] * 3
    assert stats.batches is None  # Keras keeps no update counter
    assert bn.framework_of(layer) == "keras" and bn.is_initial(layer) and bn.can_update(layer)
    layer(np.random.default_rng(0).normal(3.0, 2.0, (8, 4, 4, 3)).astype("float32"), training=True)
    assert not bn.is_initial(layer)  # one update moves them: 0.9 * 0 + 0.1 * batch mean


def test_is_initial_is_exact_for_keras():
    layer = layers.BatchNormalization()
    layer.build((None, 2))
    layer.moving_variance.assign(np.array([1.0, 1.0 + 1e-6], "float32"))
    assert not bn.is_initial(layer)


def test_running_stats_rejects_invalid_keras_statistics():
    layer = layers.BatchNormalization()
    layer.build((None, 2))
    layer.moving_variance.assign(np.array([np.nan, 1.0], "float32"))
    assert bn.running_stats(layer) is None
    layer.moving_variance.assign(np.array([-1.0, 1.0], "float32"))
    assert bn.running_stats(layer) is None


def _keras_bn(mean, var, eps):
    layer = layers.BatchNormalization(epsilon=eps)
    layer.build((None, len(mean)))
    layer.moving_mean.assign(np.array(mean, "float32"))
    layer.moving_variance.assign(np.array(var, "float32"))
    return layer


def test_drift_math_is_shared_with_torch():
    """The same statistics give the same drift for a Keras and a PyTorch layer."""
    mean, var, obs_mean, obs_var = [0.0, 1.0], [4.0, 1.0], [1.0, 1.5], [4.0, 4.0]
    obs = BatchNormObservation("x", np.array(obs_mean), np.array(obs_var), 1000, False, True)
    drift = bn.drift_of("x", obs, _keras_bn(mean, var, 1e-3))
    z = [abs(1.0 - 0.0) / math.sqrt(4.0 + 1e-3), abs(1.5 - 1.0) / math.sqrt(1.0 + 1e-3)]
    r = [math.log((4.0 + 1e-3) / (4.0 + 1e-3)), math.log((4.0 + 1e-3) / (1.0 + 1e-3))]
    assert drift.mean_z == pytest.approx(sum(z) / 2, rel=1e-6)
    assert drift.log_var == pytest.approx(sum(abs(v) for v in r) / 2, rel=1e-6)
    try:
        import torch
    except ImportError:  # the Keras half alone is still checked above
        return
    if True:
        t = torch.nn.BatchNorm2d(2, eps=1e-3)
        with torch.no_grad():
            t.running_mean.copy_(torch.tensor(mean))
            t.running_var.copy_(torch.tensor(var))
            t.num_batches_tracked.fill_(3)
        torch_drift = bn.drift_of("x", obs, t)
        assert torch_drift.score == pytest.approx(drift.score, rel=1e-6)


@pytest.mark.parametrize("shift, drifted", [(0.99, False), (1.0, True)])
def test_keras_mean_shift_threshold_edge(shift, drifted):
    obs = BatchNormObservation("x", np.array([shift, shift]), np.array([1.0, 1.0]), 1000, False, True)
    assert bn.drift_of("x", obs, _keras_bn([0.0, 0.0], [0.75, 0.75], 0.25)).drifted is drifted  # var + eps = 1 exactly


def test_output_gap_on_numpy():
    rel, agreement = bn.output_gap(np.array([[0.0, 1.0], [0.0, 1.0]]), np.array([[1.0, 0.0], [0.0, 1.0]]))
    assert rel == pytest.approx(1.0) and agreement == 0.5
    assert bn.output_gap(np.ones(3, "int64"), np.ones(3, "int64")) is None  # not floating
    assert bn.output_gap(np.ones((2, 2)), np.ones((2, 3))) is None


# -- BNS101 -----------------------------------------------------------------------------------
def test_bns101_clean_and_shifted_keras_model():
    assert _run(BatchnormStatisticsDrift, _ctx(calibrated(functional_cnn()))) == []
    model = calibrated(functional_cnn())
    bn2 = model.get_layer("bn2")
    bn2.moving_mean.assign(bn2.moving_mean + 2.0 * keras.ops.sqrt(bn2.moving_variance + bn2.epsilon))
    (finding,) = _run(BatchnormStatisticsDrift, _ctx(model))
    assert finding.target == "bn2" and finding.severity is Severity.WARNING
    assert finding.evidence["mean_shift_sd"] == pytest.approx(2.0, abs=0.1)
    assert "moving standard deviations" in finding.message and "training=True" in finding.fix
    _filled(finding)


def test_bns101_wrong_preprocess_input_names_the_first_layer_of_a_nested_base():
    model = transfer_model(frozen=False)  # base calibrated on caffe inputs
    (finding,) = _run(BatchnormStatisticsDrift, _ctx(model, preprocess=tf_mode))
    assert finding.target == "base/bn1"
    assert finding.evidence["layers_over_threshold"] == 2 and finding.evidence["worst_layers"][0].startswith("base/")


def test_bns101_synthetic_sample_is_info():
    model = calibrated(functional_cnn())
    model.get_layer("bn2").moving_variance.assign(model.get_layer("bn2").moving_variance * 100.0)
    ctx = _ctx(model, sample=None, preprocess=None)
    assert ctx.synthetic
    findings = _run(BatchnormStatisticsDrift, ctx)
    assert findings and all(f.severity is Severity.INFO for f in findings)


def test_bns101_skips_never_estimated_layers():
    ctx = _ctx(functional_cnn())  # fresh: moving_mean 0, moving_variance 1
    assert bn.layer_drifts(ctx) == []
    assert _run(BatchnormStatisticsDrift, ctx) == []


# -- BNS102 -----------------------------------------------------------------------------------
def test_bns102_variance_scaled_gap_and_small_batch():
    model = calibrated(functional_cnn())
    model.get_layer("bn2").moving_variance.assign(model.get_layer("bn2").moving_variance * 25.0)
    (finding,) = _run(BatchnormTrainEvalGap, _ctx(model))
    assert finding.target == "bn2" and finding.evidence["relative_difference"] > 1.0
    assert finding.evidence["batch_size"] == 8 and "training call" in finding.message
    _filled(finding)
    assert _run(BatchnormTrainEvalGap, _ctx(model, sample=images(2))) == []  # batch < 4: not judged


def test_bns102_dropout_alone_is_not_batchnorm_gap():
    model = transfer_model(frozen=False, dropout=0.9)
    ctx = _ctx(model)
    rel, _ = bn.output_gap(ctx.train_pass().output, ctx.eval_pass().output)
    assert rel >= 0.5  # Dropout makes the training call differ ...
    assert _run(BatchnormTrainEvalGap, ctx) == []  # ... which is not BatchNorm's gap
    _no_wrappers(model)


def test_bns102_frozen_batchnorm_never_runs_on_batch_statistics():
    model = calibrated(functional_cnn())
    model.get_layer("bn2").moving_variance.assign(model.get_layer("bn2").moving_variance * 25.0)
    for layer in model.layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    ctx = _ctx(model)
    assert bn.batchnorm_in_train_mode(ctx) == []
    assert _run(BatchnormTrainEvalGap, ctx) == []


def test_bns102_new_batchnorm_head_is_not_judged():
    base = backbone("base")
    calibrate(base, caffe(images(16, seed=7)))
    inputs = keras.Input((32, 32, 3))
    x = layers.Dense(8, name="neck")(base(inputs))
    outputs = layers.Dense(5, name="head")(layers.BatchNormalization(name="neck_bn")(x))
    assert _run(BatchnormTrainEvalGap, _ctx(keras.Model(inputs, outputs))) == []


# -- BNS103: BatchNormalization updating inside a frozen part, now ----------------------------
def _kernels_frozen(compiled=True):
    model = transfer_model(frozen=False, dropout=0.0)
    for layer in model.get_layer("base").layers:
        if hasattr(layer, "kernel"):
            layer.trainable = False
    if compiled:
        model.compile(optimizer=keras.optimizers.Adam(1e-4), loss=CE)
    return model


def test_bns103_batchnorm_left_trainable_in_frozen_base_is_an_error_when_compiled():
    ctx = _ctx(_kernels_frozen())
    findings = _run(FrozenBatchnormUpdating, ctx)
    (finding,) = findings
    assert finding.severity is Severity.ERROR and finding.target == "base/bn1"
    ev = finding.evidence
    assert ev["first_layers"] == ["base/bn1", "base/bn2"] and ev["optimizer_from"] == "model.compile()"
    assert ev["max_moving_mean_change"] > 0 and ev["max_mean_change_sd"] > 0 and ev["momentum"] == pytest.approx(0.99)
    assert ev["frozen_by"] == "the layers around it have trainable=False"
    assert "relative_output_difference" in ev and ev["batches_to_replace_half"] == 69
    _filled(finding)


def test_bns103_without_optimizer_is_a_warning():
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(_kernels_frozen(compiled=False)))
    assert finding.severity is Severity.WARNING and "no optimizer" in finding.message


def test_bns103_gamma_beta_frozen_at_variable_level():
    model = calibrated(functional_cnn())
    layer = model.get_layer("bn1")
    layer.gamma.trainable = False
    layer.beta.trainable = False
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(model, optimizer=keras.optimizers.SGD(0.01)))
    assert finding.target == "bn1" and finding.evidence["frozen_by"] == "gamma/beta trainable=False"


def test_bns103_everything_trainable_is_clean_and_costs_no_extra_pass():
    model = calibrated(functional_cnn())
    ctx = _ctx(model, optimizer=keras.optimizers.Adam())
    assert _run(FrozenBatchnormUpdating, ctx) == []
    assert not any(key.startswith("user:bns103") for key in ctx._memo)


def test_bns103_momentum_one_never_moves():
    model = _kernels_frozen()
    for layer in model.get_layer("base").layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.momentum = 1.0
    assert _run(FrozenBatchnormUpdating, _ctx(model)) == []


# -- BNS103: a frozen base that would update once unfrozen ------------------------------------
def test_bns103_frozen_base_without_training_false_is_a_latent_warning():
    model = _frozen_transfer(training_false=False)
    before = capture(Pipeline(model))
    ctx = _ctx(model)
    (finding,) = _run(FrozenBatchnormUpdating, ctx)
    assert finding.severity is Severity.WARNING and finding.target == "base/bn1"
    ev = finding.evidence
    assert ev["unfrozen"] == ["base"] and ev["layers"] == 2 and ev["updates_at_inference"] is False
    assert "built_with_training_false" not in ev
    assert ev["max_moving_mean_change"] > 0 and ev["max_variance_change_relative"] > 0 and ev["moved"]
    assert 0 < ev["relative_output_difference"] < 0.5  # calibrated on the same kind of data: small but real
    assert "base.trainable = True" in finding.message and "not called with training=False" in finding.message
    assert "trainable = False" in finding.fix
    _filled(finding)
    # the simulation (unfreeze, training call) left nothing behind: flags, variables, wrappers
    assert model.get_layer("base").trainable is False
    assert all(not layer.trainable for layer in model.get_layer("base").layers)
    assert_restored(Pipeline(model), before)
    _no_wrappers(model)


def test_bns103_functional_training_false_is_overridden_in_keras_3():
    model = _frozen_transfer(training_false=True)
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(model))
    assert finding.evidence["built_with_training_false"] == ["base"]
    assert "overrides it" in finding.message


def test_keras_3_fit_overrides_a_functional_training_false():
    """The Keras behaviour BNS103 relies on, checked with a real fit() on a throwaway model:
    after `base.trainable = True`, `base(inputs, training=False)` in a functional model does
    not keep BatchNormalization in inference mode; an explicit argument in a subclassed
    call() does."""
    model = transfer_model(training_false=True)
    base = model.get_layer("base")
    before = _value(base.get_layer("bn1").moving_mean)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=CE)
    model.fit(caffe(images(8)), np.zeros(8, "int64"), epochs=1, batch_size=8, verbose=0)
    assert np.abs(_value(base.get_layer("bn1").moving_mean) - before).max() > 0


class _Subclassed(keras.Model):
    def __init__(self, flag, **kwargs):
        super().__init__(**kwargs)
        self.flag = flag
        self.base = backbone("base")
        self.head = layers.Dense(5, name="head")

    def call(self, x, training=None):
        return self.head(self.base(x, training=self.flag))


def _subclassed_transfer(flag):
    model = _Subclassed(flag)
    model(np.zeros((1, 32, 32, 3), "float32"))
    calibrate(model.base, caffe(images(16, seed=7)))
    model.base.trainable = False
    return model


def test_bns103_subclassed_explicit_training_false_is_clean():
    assert _run(FrozenBatchnormUpdating, _ctx(_subclassed_transfer(False), optimizer=keras.optimizers.Adam())) == []


def test_bns103_subclassed_training_true_updates_even_at_inference():
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(_subclassed_transfer(True), optimizer=keras.optimizers.Adam()))
    assert finding.target == "base/bn1" and finding.evidence["updates_at_inference"] is True
    assert "passes training=True to the base" in finding.message


def test_bns103_sequential_frozen_base():
    base = backbone("base")
    calibrate(base, caffe(images(16, seed=7)))
    base.trainable = False
    model = keras.Sequential([keras.Input((32, 32, 3)), base, layers.Dense(5, name="head")])
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(model))  # trainable head, no optimizer: still a warning
    assert finding.severity is Severity.WARNING and finding.target == "base/bn1" and finding.evidence["optimizer"] is None


def test_bns103_feature_extractor_and_bn_kept_frozen_are_clean():
    base = backbone("base")
    calibrate(base, caffe(images(16, seed=7)))
    base.trainable = False
    assert _run(FrozenBatchnormUpdating, _ctx(keras.Sequential([keras.Input((32, 32, 3)), base]), num_classes=None)) == []
    model = _frozen_transfer(training_false=True)
    model.get_layer("base").trainable = True
    for layer in model.get_layer("base").layers:
        if isinstance(layer, layers.BatchNormalization):
            layer.trainable = False
    assert _run(FrozenBatchnormUpdating, _ctx(model)) == []


def test_bns103_flat_model_frozen_layer_by_layer_is_latent():
    """No nested base: the layers of a flat model frozen one by one (`for layer in
    model.layers[:-1]: layer.trainable = False`)."""
    model = calibrated(functional_cnn())
    for layer in model.layers[:-1]:
        layer.trainable = False
    (finding,) = _run(FrozenBatchnormUpdating, _ctx(model, optimizer=keras.optimizers.Adam()))
    assert finding.target == "bn1" and finding.evidence["unfrozen"] == ["bn1", "bn2"]
    assert "the model's frozen layers" in finding.message


def test_bns103_partial_fine_tuning_with_bn_kept_frozen_is_clean():
    """Top layers unfrozen, BatchNormalization kept frozen there: the frozen bottom is frozen
    on purpose, with the same care (the EfficientNet fine-tuning example)."""
    model = calibrated(functional_cnn())
    for layer in model.layers:
        layer.trainable = layer.name in ("conv2", "predictions")
    assert _run(FrozenBatchnormUpdating, _ctx(model, optimizer=keras.optimizers.Adam())) == []


# -- BNS104 -----------------------------------------------------------------------------------
def test_bns104_nan_and_negative_moving_variance():
    model = calibrated(functional_cnn())
    variance = _value(model.get_layer("bn2").moving_variance)
    variance[0], variance[1] = np.nan, -0.5
    model.get_layer("bn2").moving_variance.assign(variance.astype("float32"))
    findings = {f.evidence["problem"]: f for f in _run(BatchnormStatisticsInvalid, _ctx(model))}
    assert set(findings) == {"non-finite", "negative-variance"}
    assert findings["non-finite"].target == "bn2" and findings["non-finite"].evidence["nan"] == 1
    assert findings["negative-variance"].evidence["min_moving_variance"] == -0.5
    assert "moving" in findings["non-finite"].message
    for f in findings.values():
        assert f.severity is Severity.ERROR
        _filled(f)


def test_bns104_never_updated_needs_pretrained():
    model = functional_cnn()
    assert _run(BatchnormStatisticsInvalid, _ctx(model)) == []
    (finding,) = _run(BatchnormStatisticsInvalid, _ctx(model, pretrained="keras.applications.resnet50"))
    assert finding.target == "bn1" and finding.evidence["layers"] == 2 and "num_batches_tracked" not in finding.evidence
    assert "no BatchNorm layer holds loaded statistics" in finding.message and "weights='imagenet'" in finding.fix


def test_bns104_hole_in_nested_base_and_new_head():
    model = transfer_model(frozen=False)
    bn1 = model.get_layer("base").get_layer("bn1")
    bn1.moving_mean.assign(np.zeros(16, "float32"))
    bn1.moving_variance.assign(np.ones(16, "float32"))
    (finding,) = _run(BatchnormStatisticsInvalid, _ctx(model, pretrained="keras.applications.resnet50"))
    assert finding.target == "base/bn1"
    base = backbone("base")
    calibrate(base, caffe(images(16, seed=7)))
    inputs = keras.Input((32, 32, 3))
    outputs = layers.Dense(5)(layers.BatchNormalization(name="head_bn")(base(inputs)))
    assert _run(BatchnormStatisticsInvalid, _ctx(keras.Model(inputs, outputs), pretrained="keras.applications.resnet50")) == []


# -- the rules, as a user reads them ----------------------------------------------------------
@pytest.mark.parametrize("rule", RULES, ids=lambda r: r.code)
def test_rules_cover_keras_and_their_docs_say_so(rule):
    assert rule.frameworks == ("torch", "keras")
    doc = rule.__doc__
    assert "Keras" in doc and "## What it does" in doc and "## Use instead" in doc
    assert "KERAS_" not in doc  # no placeholder left for measured numbers


# -- restore, and no torch under TensorFlow ---------------------------------------------------
def _restore_cases():
    yield "kernels frozen", lambda: Pipeline(_kernels_frozen(), preprocess=caffe, sample=images(8), num_classes=5)
    yield "frozen base", lambda: Pipeline(_frozen_transfer(), preprocess=caffe, sample=images(8), num_classes=5)
    yield "subclassed training=True", lambda: Pipeline(_subclassed_transfer(True), preprocess=caffe, sample=images(8), num_classes=5, optimizer=keras.optimizers.SGD(0.01, momentum=0.9))
    yield "drifted dropout", lambda: Pipeline(calibrated(subclassed_cnn(dropout=0.5)), preprocess=tf_mode, sample=images(8), num_classes=5)
    yield "sequential nan", lambda: _nan_sequential()


def _nan_sequential():
    model = calibrated(sequential_cnn())
    variance = _value(model.get_layer("bn1").moving_variance)
    variance[2] = np.nan
    model.get_layer("bn1").moving_variance.assign(variance.astype("float32"))
    return Pipeline(model, preprocess=caffe, sample=images(8), num_classes=5)


@pytest.mark.parametrize("name, make", list(_restore_cases()), ids=[n for n, _ in _restore_cases()])
def test_every_probe_restores_the_pipeline(name, make):
    pipeline = make()
    before = capture(pipeline)
    report = audit(pipeline, select="BNS1")
    assert report.findings and all(f.rule.startswith("BNS1") for f in report.findings)
    assert not [f for f in report.findings if f.rule == "USE003"], [f.message for f in report.findings]
    assert_restored(pipeline, before)
    _no_wrappers(pipeline.model)


def test_restored_when_a_probe_raises_mid_simulation(monkeypatch):
    """A failure inside the unfrozen simulation (after the base was unfrozen and its
    statistics moved) still gives every flag, variable and call back."""
    pipeline = Pipeline(_frozen_transfer(), preprocess=caffe, sample=images(8), num_classes=5)
    before = capture(pipeline)
    original = KerasContext.run

    def broken(self, kind, **kwargs):
        if kind == "bns103.unfrozen_train":
            assert self.model.get_layer("base").trainable  # the simulation is under way
            self.call(self.inputs(), training=True)  # statistics move ...
            raise RuntimeError("boom")  # ... and the probe fails before its own restore
        return original(self, kind, **kwargs)

    monkeypatch.setattr(KerasContext, "run", broken)
    report = audit(pipeline, select="BNS103")
    assert [f.rule for f in report.findings] == ["USE003"]
    assert_restored(pipeline, before)
    _no_wrappers(pipeline.model)


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="checks the TensorFlow backend only")
def test_tensorflow_backend_audit_never_imports_torch():
    script = (
        "import sys; sys.path.insert(0, {fixtures!r})\n"
        "import keras\n"
        "from _keras_fixtures import caffe, images, transfer_model\n"
        "from auditor import Pipeline, audit\n"
        "m = transfer_model(training_false=False, frozen=False)\n"
        "for layer in m.get_layer('base').layers:\n"
        "    layer.trainable = not hasattr(layer, 'kernel')\n"
        "m.compile(optimizer=keras.optimizers.Adam(), loss='sparse_categorical_crossentropy')\n"
        "r = audit(Pipeline(m, preprocess=caffe, sample=images(8), num_classes=5), select='BNS1')\n"
        "assert [f.rule for f in r.findings] == ['BNS103'], [f.rule for f in r.findings]\n"
        "print('torch' in sys.modules)\n"
    ).format(fixtures=str(Path(__file__).resolve().parent.parent / "fixtures" / "dynamic"))
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert result.returncode == 0, result.stderr[-2000:]
    assert result.stdout.strip().splitlines()[-1] == "False"
