"""HED101-HED103 and LRT101 on real Keras 3 models (never mocked): the shared numpy logic,
what is read from Keras layers and losses, the eager training step, and restore.

Runs under the backend Keras picks (`KERAS_BACKEND=tensorflow` or `torch`)."""

from __future__ import annotations

import functools
import math
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from auditor.rules._head_probe import declared_activation, labels_kind, loss_spec  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
from _keras_fixtures import SubclassedCNN, caffe, calibrate, functional_cnn, images, sequential_cnn, transfer_model  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
SAMPLE = images(8, seed=21)
LABELS = np.arange(8) % 5
SPARSE_LOGITS = keras.losses.SparseCategoricalCrossentropy(from_logits=True)


def run(pipeline, select):
    before = capture(pipeline)
    report = audit(pipeline, select=select)
    assert_restored(pipeline, before)
    return report


def findings(pipeline, code):
    return [f for f in run(pipeline, code).findings if f.rule == code]


def cnn(num_classes=5, activation=None, kind="functional", seed=3):
    keras.utils.set_random_seed(seed)
    build = {"functional": functional_cnn, "sequential": sequential_cnn}[kind]
    return calibrate(build(num_classes, activation=activation), caffe(SAMPLE))


def pipe(model, **kwargs):
    kwargs.setdefault("labels", LABELS)
    return Pipeline(model, preprocess=caffe, sample=SAMPLE, **kwargs)


class _Ctx:
    """Just enough context for declared_activation (reads the eval pass's head)."""

    framework = "keras"

    def __init__(self, model):
        from auditor.dynamic.keras_context import KerasContext

        self.inner = KerasContext(Pipeline(model, sample=np.zeros((2,) + tuple(model.input_shape[1:]), "float32")))

    def __getattr__(self, name):
        return getattr(self.inner, name)


# -- losses and labels ----------------------------------------------------------------------------
def test_loss_spec_reads_keras_losses():
    spec = loss_spec(keras.losses.SparseCategoricalCrossentropy(from_logits=True), "keras")
    assert (spec.family, spec.expects, spec.targets, spec.from_logits) == ("categorical", "logits", "sparse", True)
    assert loss_spec(keras.losses.CategoricalCrossentropy(), "keras")[:3] == ("categorical", "probabilities", "one_hot")
    assert loss_spec("sparse_categorical_crossentropy", "keras").expects == "probabilities"
    assert loss_spec("bce", "keras")[:3] == ("binary", "probabilities", "binary")
    assert loss_spec(keras.losses.binary_crossentropy, "keras").from_logits is False
    partial = functools.partial(keras.losses.categorical_crossentropy, from_logits=True)
    assert loss_spec(partial, "keras")[:3] == ("categorical", "logits", "one_hot")
    assert loss_spec(keras.losses.BinaryFocalCrossentropy(from_logits=True), "keras").expects == "logits"
    assert loss_spec("mse", "keras") is None and loss_spec(keras.losses.MeanSquaredError(), "keras") is None
    # compile(loss=[...]) / {...}: the primary output's loss
    model = cnn()
    model.compile(loss=["categorical_crossentropy"])
    assert loss_spec(model.loss, "keras").targets == "one_hot"
    assert loss_spec({"out": keras.losses.CategoricalCrossentropy(from_logits=True)}, "keras").from_logits is True


def test_labels_kind():
    assert labels_kind(np.array([0, 3, 1])).kind == "sparse"
    assert labels_kind(np.array([[0], [3]])).high == 3
    assert labels_kind(np.eye(5)[[0, 3]]).kind == "one_hot"
    assert labels_kind(np.array([[1, 0, 1], [0, 1, 1]], "float32")).kind == "other"  # multi-hot
    assert labels_kind(np.array([0.5, 1.5])).kind == "other"


def test_declared_activation_follows_the_graph():
    assert declared_activation(_Ctx(cnn(5, "softmax")))[0] == "softmax"
    assert declared_activation(_Ctx(cnn(5)))[0] == "linear"
    logits = cnn(5)
    with_layer = keras.Model(logits.inputs, layers.Softmax(name="probs")(layers.Flatten()(logits.outputs[0])))
    assert declared_activation(_Ctx(with_layer)) == ("softmax", "probs after predictions")
    with_op = keras.Model(logits.inputs, keras.ops.sigmoid(logits.outputs[0]))
    assert declared_activation(_Ctx(with_op))[0] == "sigmoid"
    seq = keras.Sequential([keras.Input((32, 32, 3)), layers.GlobalAveragePooling2D(), layers.Dense(4, name="fc"), layers.Activation("softmax")])
    assert declared_activation(_Ctx(seq))[0] == "softmax"


# -- HED101 ------------------------------------------------------------------------------------------
def test_head_units_vs_num_classes():
    (f,) = findings(pipe(cnn(10), num_classes=5), "HED101")
    assert (f.target, f.evidence["units"], f.evidence["num_classes"]) == ("predictions", 10, 5)
    assert "keras.layers.Dense(5)" in f.fix
    assert not findings(pipe(cnn(5), num_classes=5), "HED101")
    assert not findings(pipe(cnn(1), num_classes=2, labels=LABELS % 2), "HED101")  # one logit for 2 classes


def test_labels_encoding_vs_loss():
    model = cnn(5, "softmax", kind="sequential")
    (f,) = findings(pipe(model, loss="categorical_crossentropy"), "HED101")
    assert "one-hot" in f.message and "to_categorical(labels, 5)" in f.fix and f.evidence["labels"] == "sparse"
    assert not findings(pipe(model, loss="categorical_crossentropy", labels=np.eye(5)[LABELS]), "HED101")
    (f,) = findings(pipe(cnn(5), loss=SPARSE_LOGITS, labels=np.eye(5)[LABELS]), "HED101")
    assert "integer class ids" in f.message and "argmax" in f.fix
    (f,) = findings(pipe(cnn(5), labels=np.eye(6)[LABELS]), "HED101")  # one-hot width != units
    assert f.evidence["label_columns"] == 6
    (f,) = findings(pipe(cnn(5, "sigmoid"), loss="binary_crossentropy"), "HED101")  # class ids under a per-unit loss
    assert "(N, 5)" in f.message
    (f,) = findings(pipe(cnn(5), labels=np.arange(8)), "HED101")
    assert f.evidence["max_label"] == 7


def test_keras_applications_imagenet_head():
    keras.utils.set_random_seed(3)
    net = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(32, 32, 3), classes=12)
    report = run(Pipeline(net, sample=SAMPLE.astype("float32") / 127.5 - 1, num_classes=10), "HED101")
    assert [(f.target, f.evidence["units"]) for f in report.findings] == [("conv_preds", 12)]


# -- HED102 ------------------------------------------------------------------------------------------
def test_softmax_with_from_logits_true():
    (f,) = findings(pipe(cnn(5, "softmax"), loss=SPARSE_LOGITS), "HED102")
    ev = f.evidence
    assert f.target == "predictions" and ev["activation"] == "softmax" and ev["from_logits"] is True
    assert ev["best_possible_loss"] == pytest.approx(math.log(1 + 4 / math.e), abs=1e-3)
    assert ev["declared_activation"].startswith("softmax") and ev["loss_source"] == "pipeline"
    assert "from_logits=False" in f.fix
    assert not findings(pipe(cnn(5, "softmax"), loss=keras.losses.SparseCategoricalCrossentropy()), "HED102")
    assert not findings(pipe(cnn(5, "softmax")), "HED102")  # no loss: a softmax is right for serving


def test_logits_with_probability_loss_from_compile():
    model = cnn(5)
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    (f,) = findings(pipe(model), "HED102")
    assert f.evidence["activation"] == "logits" and f.evidence["loss_source"] == "model.compile()"
    assert 0 < f.evidence["fraction_outside_0_1"] <= 1 and "from_logits=True" in f.fix
    assert "raw logits" in f.message and "clips" in f.message
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss=SPARSE_LOGITS)
    assert not findings(pipe(model), "HED102")


def test_binary_crossentropy_on_softmax():
    model = cnn(5, "softmax", kind="sequential")
    (f,) = findings(pipe(model, loss="binary_crossentropy", labels=np.eye(5)[LABELS]), "HED102")
    assert "over 5 units" in f.message and "binary_accuracy" in f.fix
    two = cnn(2, "softmax")
    assert not findings(pipe(two, loss="binary_crossentropy", labels=np.eye(2)[LABELS % 2]), "HED102")
    multi_label = cnn(5, "sigmoid")
    assert not findings(pipe(multi_label, loss="binary_crossentropy", labels=(np.eye(5)[LABELS] + np.eye(5)[(LABELS + 1) % 5])), "HED102")


def test_declared_sigmoid_decides_where_measurement_cannot():
    """One sigmoid unit on 4 samples: too few values to tell a sigmoid from data; the Dense says it."""
    model = cnn(1, "sigmoid")
    sample = SAMPLE[:4]
    (f,) = findings(Pipeline(model, preprocess=caffe, sample=sample, labels=np.array([0, 1, 0, 1]),
                             loss=keras.losses.BinaryCrossentropy(from_logits=True)), "HED102")
    assert f.evidence["activation"] == "sigmoid" and "sigmoid" in f.evidence["declared_activation"]


# -- HED103 ------------------------------------------------------------------------------------------
def test_single_unit_softmax():
    with pytest.warns(UserWarning):  # Keras's own warning, easy to miss in a log
        model = cnn(1, "softmax", kind="sequential")
        (f,) = findings(pipe(model, labels=LABELS % 2), "HED103")
    assert f.target == "predictions" and f.evidence["declared_activation"].startswith("softmax")
    assert 'activation="sigmoid"' in f.fix
    # HED102 stays silent on it (one finding per bug), also with a logits loss
    with pytest.warns(UserWarning):
        assert not findings(pipe(model, labels=LABELS % 2, loss=keras.losses.BinaryCrossentropy(from_logits=True)), "HED102")
    assert not findings(pipe(cnn(1, "sigmoid"), labels=LABELS % 2), "HED103")


# -- LRT101 ------------------------------------------------------------------------------------------
def lrt(pipeline):
    report = run(pipeline, "LRT101")
    return [f for f in report.findings if f.rule == "LRT101"], report


def test_adam_ratio_is_lr_over_weight_rms_and_optimizer_stays_unbuilt():
    model = cnn()
    kernel = keras.ops.convert_to_numpy(model.get_layer("conv2").kernel).astype(np.float64)
    optimizer = keras.optimizers.Adam(1e-3)
    (f,), _ = lrt(pipe(model, optimizer=optimizer, loss=SPARSE_LOGITS))
    assert f.target == "conv2" and f.severity == Severity.WARNING
    assert f.evidence["worst_ratio"] == pytest.approx(1e-3 * math.sqrt(kernel.size) / np.linalg.norm(kernel), rel=0.05)
    assert f.evidence["lr"] == 0.001 and "param_group" not in f.evidence and f.evidence["head"] == "predictions"
    assert 0 < f.evidence["feature_cosine"] <= 1 and f.evidence["optimizer_source"] == "pipeline"
    assert "lr 0.001)" in f.message and "param group" not in f.message
    assert "keras.optimizers.Adam(learning_rate=" in f.fix
    assert not optimizer.built and int(keras.ops.convert_to_numpy(optimizer.iterations)) == 0


def test_error_level_and_suggested_lr_brings_it_under():
    (f,), _ = lrt(pipe(cnn(), optimizer=keras.optimizers.Adam(1e-2), loss=SPARSE_LOGITS))
    assert f.severity == Severity.ERROR and "error threshold 0.1" in f.message
    suggest = f.evidence["suggested_lr"]
    assert f"{suggest:g}" in f.fix
    found, _ = lrt(pipe(cnn(), optimizer=keras.optimizers.Adam(suggest), loss=SPARSE_LOGITS))
    assert found == []
    found, _ = lrt(pipe(cnn(), optimizer=keras.optimizers.Adam(1e-5), loss=SPARSE_LOGITS))
    assert found == []


@pytest.mark.parametrize("nesterov, measured_over_plain", [(False, 1.0), (True, 1.9)])
def test_sgd_momentum_first_step_is_scaled(nesterov, measured_over_plain):
    (plain,), _ = lrt(pipe(cnn(), optimizer=keras.optimizers.SGD(0.1), loss=SPARSE_LOGITS))
    (f,), _ = lrt(pipe(cnn(), optimizer=keras.optimizers.SGD(0.1, momentum=0.9, nesterov=nesterov), loss=SPARSE_LOGITS))
    ev = f.evidence
    assert ev["measured_ratio"] == pytest.approx(measured_over_plain * plain.evidence["measured_ratio"], rel=1e-2)
    assert ev["worst_ratio"] == pytest.approx(10 * plain.evidence["measured_ratio"], rel=1e-2)  # the steady state
    assert "for momentum" in f.message


def test_compiled_optimizer_is_used_and_left_as_compiled():
    model = cnn()
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=SPARSE_LOGITS)
    (f,), _ = lrt(Pipeline(model, preprocess=caffe, sample=SAMPLE, labels=LABELS))
    assert f.evidence["optimizer_source"] == "model.compile()" and "from model.compile()" in f.message
    assert not model.optimizer.built and model.train_function is None


def test_resumed_optimizer_steps_itself_and_is_restored():
    """A built Adam that already took a step: the audit uses it (its moments count) and puts
    back every optimizer variable, `iterations` included, bit for bit."""
    model = cnn()
    optimizer = keras.optimizers.Adam(1e-3)
    optimizer.apply([keras.ops.ones_like(v) * 1e-3 for v in model.trainable_variables], model.trainable_variables)
    before = [keras.ops.convert_to_numpy(v).copy() for v in optimizer.variables]
    (f,), _ = lrt(pipe(model, optimizer=optimizer, loss=SPARSE_LOGITS))
    assert "stepped_with" not in f.evidence
    after = [keras.ops.convert_to_numpy(v) for v in optimizer.variables]
    assert all(np.array_equal(a, b) for a, b in zip(before, after))
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 1


def test_learning_rate_schedule_read_at_iterations():
    schedule = keras.optimizers.schedules.ExponentialDecay(1e-2, decay_steps=10, decay_rate=0.5)
    optimizer = keras.optimizers.Adam(schedule)
    optimizer.iterations.assign(10)  # resumed at step 10: the rate is 5e-3
    (f,), _ = lrt(pipe(cnn(), optimizer=optimizer, loss=SPARSE_LOGITS))
    assert f.evidence["lr"] == pytest.approx(5e-3, rel=1e-6)
    assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == 10 and not optimizer.built


def test_gradient_accumulation_measures_one_applied_update():
    (f,), _ = lrt(pipe(cnn(), optimizer=keras.optimizers.Adam(1e-3, gradient_accumulation_steps=4), loss=SPARSE_LOGITS))
    assert "gradient accumulation over 4" in f.evidence["stepped_with"]
    assert f.evidence["worst_ratio"] > 1e-2


def test_head_only_and_fresh_model_and_unusable_loss():
    keras.utils.set_random_seed(3)
    frozen = transfer_model(5, frozen=True)
    found, report = lrt(pipe(frozen, optimizer=keras.optimizers.Adam(1e-3), loss=SPARSE_LOGITS))
    assert found == [] and not any("LRT101" in n for n in report.notes)
    keras.utils.set_random_seed(3)
    fresh = functional_cnn(5)  # BatchNormalization at its initial statistics, no pretrained family
    found, report = lrt(pipe(fresh, optimizer=keras.optimizers.Adam(1e-2), loss=SPARSE_LOGITS))
    assert found == [] and any("freshly initialised" in n for n in report.notes)

    def broken(y_true, y_pred):
        raise ValueError("shapes do not match")

    found, report = lrt(pipe(cnn(), optimizer=keras.optimizers.Adam(1e-2), loss=broken))
    assert found == [] and not [f for f in report.findings if f.rule == "USE003"]
    assert any("LRT101 skipped: the loss failed" in n for n in report.notes)


def test_without_labels_the_model_own_predictions_are_targets():
    (f,), _ = lrt(Pipeline(cnn(), preprocess=caffe, sample=SAMPLE, optimizer=keras.optimizers.Adam(1e-3)))
    assert f.evidence["loss"].endswith("on own predictions") and "(default)" in f.evidence["loss"]


def test_subclassed_model_and_labels_encoded_for_the_loss():
    keras.utils.set_random_seed(3)
    model = SubclassedCNN(5, name="subclassed_cnn")
    model(np.zeros((1, 32, 32, 3), "float32"))
    model = calibrate(model, caffe(SAMPLE))
    (f,), _ = lrt(pipe(model, optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.CategoricalCrossentropy(from_logits=True)))
    assert f.target == "conv2" and f.evidence["head"] == "head"
    assert "one-hot encoded for the loss" in f.evidence["loss"]


def test_nested_base_unfrozen_names_qualified_layer():
    keras.utils.set_random_seed(3)
    model = transfer_model(5, frozen=False)
    (f,), _ = lrt(pipe(model, optimizer=keras.optimizers.Adam(1e-3), loss=SPARSE_LOGITS))
    assert f.target == "base/conv2" and f.evidence["worst_layers"][0].startswith("base/conv2=")


def test_keras_applications_depthwise_layers():
    """MobileNet at random init: Adam's step is lr / rms(w), the 128-channel depthwise layers lead."""
    keras.utils.set_random_seed(3)
    base = keras.applications.MobileNet(weights=None, alpha=0.25, input_shape=(32, 32, 3), include_top=False, pooling="avg")
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, layers.Dense(5, name="head")(base(inputs, training=False)))
    prep = keras.applications.mobilenet.preprocess_input
    model = calibrate(model, prep(SAMPLE.astype("float32")))
    (f,), _ = lrt(Pipeline(model, preprocess=prep, sample=SAMPLE, labels=LABELS, optimizer=keras.optimizers.Adam(1e-3), loss=SPARSE_LOGITS))
    assert f.severity == Severity.WARNING and f.target.startswith("mobilenet_0.25_32/conv_dw_")
    assert 1.5e-2 < f.evidence["worst_ratio"] < 4e-2


def test_step_never_fits_compiles_or_traces(monkeypatch):
    def forbidden(*args, **kwargs):
        raise AssertionError("the audit must not call fit/train_on_batch/compile")

    for name in ("fit", "train_on_batch", "compile", "predict", "predict_on_batch", "evaluate", "make_train_function"):
        monkeypatch.setattr(keras.Model, name, forbidden)
    model = cnn()
    (f,), _ = lrt(pipe(model, optimizer=keras.optimizers.Adam(1e-3), loss=SPARSE_LOGITS))
    assert f.target == "conv2"


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="torch-import check is about the TensorFlow backend")
def test_tensorflow_backend_audit_never_imports_torch():
    code = textwrap.dedent(f"""
        import sys
        sys.path.insert(0, {str(DYNAMIC)!r})
        import numpy as np, keras
        from _keras_fixtures import caffe, calibrate, functional_cnn, images
        from auditor import Pipeline, audit
        sample = images(8, seed=21)
        model = calibrate(functional_cnn(5, activation="softmax"), caffe(sample))
        report = audit(Pipeline(model, preprocess=caffe, sample=sample, labels=np.arange(8) % 5, num_classes=5,
                                optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True)),
                       select="HED101,HED102,HED103,LRT101")
        assert {{f.rule for f in report.findings}} == {{"HED102", "LRT101"}}, report.findings
        assert "torch" not in sys.modules, "torch was imported"
        print("ok")
    """)
    env = {**os.environ, "KERAS_BACKEND": "tensorflow"}
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0 and result.stdout.strip().endswith("ok"), result.stderr[-3000:]
