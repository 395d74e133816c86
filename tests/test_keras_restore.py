"""`audit()` gives a Keras pipeline back bit for bit: every variable (seed states included),
every optimizer variable (`iterations`, slots, the learning rate) and whether the optimizer
is built, every `trainable` flag (layers and variables), the random state, and no traced
`train_function`/`predict_function` left on the model. For EACH dynamic rule that probes
Keras (found in the registry, so rules added later are covered), on four models: a
functional transfer model with a frozen base and a compiled Adam built by one manual apply,
a Sequential CNN with an unbuilt SGD, a subclassed CNN with Dropout, and a
keras.applications MobileNetV2 (weights=None, 32x32); also when a probe wrecks everything
and raises, and on a timeout. Runs under any Keras backend (tests/test_keras_torch_backend.py
runs it under KERAS_BACKEND=torch)."""

from __future__ import annotations

import random
import sys
import time

import pytest

keras = pytest.importorskip("keras")
np = pytest.importorskip("numpy")

from keras import layers  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.dynamic.audit import AuditTimeout, make_context, run_probes  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from auditor.registry import all_rules  # noqa: E402
from auditor.rule import DynamicRule  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
from _keras_fixtures import caffe, calibrate, calibrated, images, sequential_cnn, subclassed_cnn, tf_mode, transfer_model  # noqa: E402

KERAS_RULES = [r for r in all_rules() if r.kind == "dynamic" and "keras" in r.frameworks]
BACKEND = keras.config.backend()


def _fixed_gradients(variables, seed=0):
    rng = np.random.default_rng(seed)
    return [keras.ops.convert_to_tensor(rng.normal(0, 0.01, tuple(v.shape)).astype("float32")) for v in variables]


def transfer_pipeline():
    """The Keras guide's transfer model (frozen base called with training=False, Dropout, new
    head), compiled with Adam, whose optimizer one manual apply has built (iterations 1,
    non-zero moments): the optimizer comes from model.compile()."""
    model = transfer_model(num_classes=5, dropout=0.3)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.optimizer.apply(_fixed_gradients(model.trainable_variables), model.trainable_variables)
    assert model.optimizer.built and int(keras.ops.convert_to_numpy(model.optimizer.iterations)) == 1
    return Pipeline(model, preprocess=caffe, sample=images(8, 32, seed=3), labels=np.arange(8) % 5, num_classes=5, pretrained="keras.applications.resnet50")


def sequential_pipeline():
    """A Sequential CNN ending in softmax, an unbuilt SGD with momentum given by the Pipeline
    (it must stay unbuilt)."""
    model = calibrated(sequential_cnn(num_classes=4, activation="softmax"), caffe)
    optimizer = keras.optimizers.SGD(learning_rate=0.05, momentum=0.9)
    return Pipeline(model, preprocess=caffe, sample=images(8, 32, seed=4), labels=np.arange(8) % 4, num_classes=4, optimizer=optimizer, loss="sparse_categorical_crossentropy", pretrained="keras.applications.resnet50")


def subclassed_pipeline():
    """A subclassed CNN with Dropout (a seed generator whose state a pass advances), an
    already-preprocessed sample, an unbuilt Adam."""
    model = calibrated(subclassed_cnn(num_classes=3, dropout=0.4), caffe)
    return Pipeline(model, sample=caffe(images(8, 32, seed=5)), labels=np.arange(8) % 3, num_classes=3, optimizer=keras.optimizers.Adam(1e-4), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))


def applications_pipeline():
    """keras.applications.MobileNetV2 (weights=None, alpha 0.35, 32x32), statistics
    calibrated, compiled with SGD (unbuilt)."""
    model = keras.applications.MobileNetV2(weights=None, input_shape=(32, 32, 3), alpha=0.35, classes=6, classifier_activation=None)
    calibrate(model, tf_mode(images(16, 32, seed=7)))
    model.compile(optimizer=keras.optimizers.SGD(learning_rate=0.01), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    return Pipeline(model, preprocess=tf_mode, sample=images(8, 32, seed=6), labels=np.arange(8) % 6, num_classes=6, pretrained="keras.applications.mobilenet_v2")


PIPELINES = {"transfer": transfer_pipeline, "sequential": sequential_pipeline, "subclassed": subclassed_pipeline, "mobilenetv2": applications_pipeline}


def _global_rng() -> dict:
    """Random state beyond what dynamic_support captures: Keras's global seed generator
    (keras.random calls without a seed) and TensorFlow's global generator, where they exist."""
    out = {}
    try:
        from keras.src.backend.common import global_state

        generator = global_state.get_global_attribute("global_seed_generator")
        if generator is not None:
            out["keras_global_seed"] = np.array(keras.ops.convert_to_numpy(generator.state), copy=True)
    except ImportError:
        pass
    tf = sys.modules.get("tensorflow") if BACKEND == "tensorflow" else None
    if tf is not None:
        from tensorflow.python.ops import stateful_random_ops

        if stateful_random_ops.global_generator is not None:
            out["tf_generator"] = stateful_random_ops.global_generator.state.numpy().copy()
    return out


def _before(pipeline):
    np.random.seed(11)
    random.seed(11)
    keras.random.normal((2,))  # make the global seed generator exist, so its state is compared
    model = pipeline.model
    return capture(pipeline), _global_rng(), {a: getattr(model, a, None) for a in ("train_function", "predict_function", "test_function")}


def _assert_all_restored(pipeline, before):
    captured, rng, functions = before
    assert_restored(pipeline, captured)
    after = _global_rng()
    assert after.keys() == rng.keys()
    for key, value in rng.items():
        assert np.array_equal(after[key], value), f"{key} changed"
    for attr, value in functions.items():
        now = getattr(pipeline.model, attr, None)
        assert now is value and now is None, f"model.{attr} was left behind: a probe traced or compiled a function"


def test_keras_rules_are_discovered():
    assert all("keras" in r.frameworks for r in KERAS_RULES)


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
@pytest.mark.parametrize("rule", KERAS_RULES, ids=lambda r: r.code)
def test_every_keras_probe_restores_everything(rule, make):
    pipeline = make()
    before = _before(pipeline)
    report = audit(pipeline, select=[rule.code])
    assert not [f for f in report.findings if f.rule == "USE003"], [f.message for f in report.findings]
    _assert_all_restored(pipeline, before)


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
def test_full_audit_restores_everything(make):
    pipeline = make()
    before = _before(pipeline)
    report = audit(pipeline)
    assert not [f for f in report.findings if f.rule == "USE003"], [f.message for f in report.findings]
    _assert_all_restored(pipeline, before)


class _Doc:
    """
    ## What it does
    Test double.

    ## Why is this bad?
    It is not a real rule.

    ## Example
    ```python
    pass
    ```

    ## Use instead
    ```python
    pass
    ```
    """


class SharedPasses(DynamicRule):
    __doc__ = _Doc.__doc__
    code = "USE197"
    name = "shared-passes"
    category = "usage"
    severity = Severity.INFO
    message = "never"
    fix = "never"
    frameworks = ("torch", "keras")

    def probe(self, ctx):
        """Every pass the context offers, then a raw training call that moves the moving
        statistics and the dropout seeds without restoring anything."""
        ctx.eval_pass()
        ctx.inference_pass()
        ctx.train_pass()
        ctx.run("extra", training=True, stats=True)
        ctx.reseed(1234)
        ctx.call(ctx.inputs(), training=True)
        return ()


class KerasVandal(DynamicRule):
    __doc__ = _Doc.__doc__
    code = "USE198"
    name = "keras-vandal"
    category = "usage"
    severity = Severity.ERROR
    message = "never"
    fix = "never"
    frameworks = ("torch", "keras")

    def probe(self, ctx):
        model = ctx.model
        for variable in model.variables:
            value = keras.ops.convert_to_numpy(variable)
            variable.assign((value + 1.0 if value.dtype.kind == "f" else value + 7).astype(value.dtype))
        model.trainable = not model.trainable  # flips every layer's flag and every variable's
        for layer in model.layers:
            layer.trainable = not layer.trainable
        if model.variables:
            model.variables[-1].trainable = not model.variables[-1].trainable
        if ctx.optimizer is not None:
            for variable in ctx.optimizer.variables:
                value = keras.ops.convert_to_numpy(variable)
                variable.assign((value + 5).astype(value.dtype))
        model.train_function = lambda *args: None
        model.predict_function = lambda *args: None
        keras.random.normal((4,))
        np.random.rand(3)
        random.random()
        if BACKEND == "torch":
            import torch

            torch.rand(3)
        yield from ()
        raise RuntimeError("halfway")


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
def test_shared_passes_and_raw_calls_are_restored(make):
    pipeline = make()
    before = _before(pipeline)
    report = run_probes(make_context(pipeline), [SharedPasses])
    assert not report.findings
    _assert_all_restored(pipeline, before)


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
def test_restores_when_a_probe_raises_halfway(make):
    pipeline = make()
    optimizer = make_context(pipeline).optimizer
    before = _before(pipeline)
    report = run_probes(make_context(pipeline), [KerasVandal] + KERAS_RULES[:2])
    assert [f for f in report.findings if f.rule == "USE003" and f.target == "USE198"], "the failure is reported"
    _assert_all_restored(pipeline, before)
    if optimizer is not None:
        assert int(keras.ops.convert_to_numpy(optimizer.iterations)) == (1 if make is transfer_pipeline else 0)


class Slow(keras.Model):
    """Counts its calls in a variable and sleeps: a model slower than the timeout."""

    def __init__(self):
        super().__init__()
        self.dense = layers.Dense(2)
        self.seen = self.add_weight(shape=(), initializer="zeros", trainable=False, name="seen")

    def call(self, x, training=None):
        self.seen.assign(self.seen + 1.0)
        time.sleep(1.0)
        return self.dense(x)


def test_timeout_restores_the_model():
    model = Slow()
    model(np.ones((2, 4), dtype="float32"))
    model.seen.assign(0.0)
    pipeline = Pipeline(model, sample=np.ones((2, 4), dtype="float32"))
    before = _before(pipeline)
    with pytest.raises(AuditTimeout):
        audit(pipeline, timeout=0.5)
    _assert_all_restored(pipeline, before)
    assert float(keras.ops.convert_to_numpy(model.seen)) == 0.0
