"""Keras 3 side of the inference-mutation, determinism and non-finite probes (INF101, INF102,
DET101, HED104) on real Keras models: what each finds, where it points, what it costs, and
that the audit gives everything back."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")
from keras import layers, ops  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.rules import _inference_probe as probe  # noqa: E402
from dynamic_support import assert_restored, capture  # noqa: E402

CODES = "INF101,INF102,DET101,HED104"
ROOT = Path(__file__).resolve().parent.parent


def sample(n: int = 8) -> np.ndarray:
    return np.random.default_rng(0).standard_normal((n, 6)).astype("float32")


def functional(*middle, name: str = "net") -> keras.Model:
    """Dense(8) -> middle layers -> Dense(3) head, input (N, 6)."""
    inputs = keras.Input((6,), name="x")
    x = layers.Dense(8, name="dense")(inputs)
    for layer in middle:
        x = layer(x)
    return keras.Model(inputs, layers.Dense(3, name="head")(x), name=name)


def run(pipeline: Pipeline, codes: str = CODES) -> list:
    before = capture(pipeline)
    findings = audit(pipeline, select=codes).findings
    assert_restored(pipeline, before)
    return findings


def pairs(findings) -> list[tuple[str, str]]:
    return sorted((f.rule, f.target) for f in findings)


# -- custom layers of the kind users write -------------------------------------------------
class Counter(layers.Layer):
    """Counts its calls in a (1,) variable."""

    def build(self, shape):
        self.calls = self.add_weight(shape=(1,), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(ops.ones((1,)))
        return x


class ScalarCounter(layers.Layer):
    def build(self, shape):
        self.calls = self.add_weight(shape=(), initializer="zeros", trainable=False, name="calls")

    def call(self, x):
        self.calls.assign_add(1.0)
        return x


class ScaleInPlace(layers.Layer):
    def build(self, shape):
        self.scale = self.add_weight(shape=(shape[-1],), initializer="ones", name="scale")

    def call(self, x):
        self.scale.assign(self.scale * 0.5)
        return x * self.scale


class MCDropout(layers.Dropout):
    def call(self, inputs, training=True):
        return super().call(inputs, training=training)


class AlwaysNoise(layers.GaussianNoise):
    def call(self, inputs, training=None):
        return super().call(inputs, training=True)


class Jitter(layers.Layer):
    def call(self, x):
        return x + keras.random.normal(ops.shape(x), stddev=0.1)


class Drifting(layers.Layer):
    """Python state changed by every call: not a variable, but it changes the output."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.step = 0

    def call(self, x):
        self.step += 1
        return x * (1.0 + 0.01 * self.step)


class LeakyNet(keras.Model):
    """Hard-codes training=True for its dropout; the BatchNormalization after it inherits it."""

    def __init__(self, **kwargs):
        super().__init__(**kwargs)
        self.dense = layers.Dense(8, name="dense")
        self.drop = layers.Dropout(0.2, name="drop")
        self.bn = layers.BatchNormalization(name="bn")
        self.head = layers.Dense(3, name="head")

    def call(self, x, training=None):
        x = self.drop(self.dense(x), training=True)
        return self.head(self.bn(x))


def built(model: keras.Model) -> keras.Model:
    model(sample(2), training=False)
    return model


# -- clean models and cost -----------------------------------------------------------------
def test_clean_models_are_silent_and_cost_no_extra_pass():
    from auditor.dynamic.audit import make_context, run_probes
    from auditor.registry import Selection, split_codes

    model = functional(layers.BatchNormalization(name="bn"), layers.Dropout(0.5, name="dropout"), layers.GaussianNoise(0.3, name="noise"))
    pipeline = Pipeline(model, sample=sample())
    before = capture(pipeline)
    ctx = make_context(pipeline)
    calls = []
    original = ctx.run

    def counting(kind, **kwargs):
        calls.append((kind, kwargs.get("training")))
        return original(kind, **kwargs)

    ctx.run = counting
    report = run_probes(ctx, Selection(split_codes(CODES), ()).rules(kind="dynamic"))
    assert report.findings == []
    assert calls == [("eval", False), ("inference", None)]  # the shared passes, nothing more
    assert_restored(pipeline, before)
    assert not any("call" in layer.__dict__ for _, layer in ctx.layers())


# -- INF101 --------------------------------------------------------------------------------
def test_inf101_custom_variable_written_in_call():
    findings = run(Pipeline(functional(Counter(name="counter")), sample=sample()))
    assert pairs(findings) == [("INF101", "counter/calls")]
    f = findings[0]
    assert f.evidence["kind"] == "buffer"
    assert f.evidence["passes"] == "model(x, training=False), model(x)"
    assert f.evidence["changed"] == "1/1"
    assert "assign()ed in call()" in f.message and "if training" in f.fix


def test_inf101_trainable_weight_assigned():
    findings = run(Pipeline(functional(ScaleInPlace(name="scale")), sample=sample()))
    assert pairs(findings) == [("INF101", "scale/scale")]
    assert findings[0].evidence["kind"] == "parameter"
    assert findings[0].evidence["max_abs"] == 0.5
    assert "trainable weight" in findings[0].message


def test_inf101_scalar_variable_written_in_call():
    findings = run(Pipeline(functional(ScalarCounter(name="counter")), sample=sample()))
    assert pairs(findings) == [("INF101", "counter/calls")]


def test_inf101_leaves_seed_states_to_det101():
    model = built(LeakyNet(name="leaky"))
    findings = run(Pipeline(model, sample=sample()))
    rules = pairs(findings)
    assert ("DET101", "drop") in rules
    inf101 = [f for f in findings if f.rule == "INF101"]
    assert [f.target for f in inf101] == ["bn/moving_mean"]  # the BatchNormalization, not drop's seed state
    assert inf101[0].evidence["also_changed"] == "bn/moving_variance"
    assert inf101[0].evidence["module_training_during_eval"] is True


# -- INF102 --------------------------------------------------------------------------------
def test_inf102_explicit_true_and_the_context_it_leaks_to():
    findings = [f for f in run(Pipeline(built(LeakyNet(name="leaky")), sample=sample())) if f.rule == "INF102"]
    assert [f.target for f in findings] == ["drop"]
    ev = findings[0].evidence
    assert ev["calls"] == "model(x, training=False) and model(x)"
    assert ev["training_arg"] == "True, passed by the caller" and ev["caller"] == "<model>"
    assert ev["inherited_training"] == "bn"
    assert ev["mode_dependent"] == "1 dropout, 1 batchnorm"
    assert "hands that training=True on" in findings[0].message


def test_inf102_call_default_true_only_in_plain_call():
    findings = run(Pipeline(functional(MCDropout(0.5, name="mc")), sample=sample()), "INF102")
    assert pairs(findings) == [("INF102", "mc")]
    ev = findings[0].evidence
    assert ev["calls"] == "model(x)" and ev["training_arg"] == "True, the call() default"
    assert ev["max_abs_output_change"] > 0
    assert "defaults to training=True" in findings[0].message


def test_inf102_call_that_ignores_the_flag():
    findings = run(Pipeline(functional(AlwaysNoise(0.5, name="noise")), sample=sample()))
    assert pairs(findings) == [("DET101", "noise"), ("INF102", "noise")]
    inf102 = next(f for f in findings if f.rule == "INF102")
    assert inf102.evidence["training_arg"] == "ignored by call()"
    assert inf102.evidence["mode_dependent"] == "1 noise"


def test_inf102_functional_graph_flag_kept_only_by_model_x():
    inputs = keras.Input((6,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.Dropout(0.5, name="mc_dropout")(x, training=True)
    model = keras.Model(inputs, layers.Dense(3, name="head")(x))
    findings = run(Pipeline(model, sample=sample()))
    assert pairs(findings) == [("DET101", "mc_dropout"), ("INF102", "mc_dropout")]
    inf102 = next(f for f in findings if f.rule == "INF102")
    assert inf102.evidence["calls"] == "model(x)"  # predict() overrides the node's flag


def test_inf102_silent_where_training_true_does_nothing():
    frozen = layers.BatchNormalization(name="bn")
    frozen.trainable = False  # a frozen BatchNormalization infers whatever the flag

    class Net(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense, self.bn, self.drop, self.head = layers.Dense(8), frozen, layers.Dropout(0.0, name="no_drop"), layers.Dense(3)

        def call(self, x, training=None):
            return self.head(self.drop(self.bn(self.dense(x), training=True), training=True))

    assert run(Pipeline(built(Net()), sample=sample())) == []


def test_inf102_ignores_the_optimizer_for_keras():
    model = functional(MCDropout(0.5, name="mc"))
    findings = run(Pipeline(model, sample=sample(), optimizer=keras.optimizers.SGD(0.01)), "INF102")
    assert pairs(findings) == [("INF102", "mc")]


# -- DET101 --------------------------------------------------------------------------------
def test_det101_global_seed_generator():
    findings = run(Pipeline(functional(Jitter(name="jitter")), sample=sample()))
    assert pairs(findings) == [("DET101", "jitter")]
    ev = findings[0].evidence
    assert ev["cause"] == "randomness" and ev["equal_seeds_agree"] is True
    if keras.config.backend() == "tensorflow":
        # both passes draw from Keras's global seed generator at the same state: only the
        # moved state shows it (under the torch backend unseeded ops use torch's generator)
        assert ev["call_vs_training_false_equal"] is True
        assert "seed_generator_state" in ev["seed_states_moved"]
    assert ev["localised"] == "jitter (Jitter) gives different outputs for the same input"
    assert ev["max_abs_diff"] > 0


def test_det101_python_state_is_nondeterminism():
    findings = run(Pipeline(functional(Drifting(name="drift")), sample=sample()), "DET101")
    assert pairs(findings) == [("DET101", "drift")]
    assert findings[0].evidence["cause"] == "non-deterministic operations"
    assert findings[0].evidence["equal_seeds_agree"] is False


def test_det101_training_flag_without_randomness():
    inputs = keras.Input((6,))
    x = layers.Dense(8, name="dense")(inputs)
    x = layers.BatchNormalization(name="bn")(x, training=True)  # kept by model(x) only
    model = keras.Model(inputs, layers.Dense(3, name="head")(x))
    findings = run(Pipeline(model, sample=sample()))
    assert pairs(findings) == [("DET101", "bn"), ("INF101", "bn/moving_mean"), ("INF102", "bn")]
    det = next(f for f in findings if f.rule == "DET101")
    assert det.evidence["cause"] == "training flag"
    assert det.evidence["compared"] == "model(x) vs model(x, training=False)"
    assert "predict()" in det.message


def test_det101_clean_random_layers():
    model = functional(layers.Dropout(0.5), layers.GaussianNoise(1.0), layers.GaussianDropout(0.3), layers.AlphaDropout(0.2))
    assert run(Pipeline(model, sample=sample()), "DET101") == []


# -- HED104 --------------------------------------------------------------------------------
def test_hed104_localises_layer_and_counts_its_weights():
    model = functional(layers.ReLU(name="relu"))
    head = model.get_layer("head")
    kernel = head.kernel.numpy()
    kernel[0, 1] = np.inf
    head.kernel.assign(kernel)
    findings = run(Pipeline(model, sample=sample()), "HED104")
    assert pairs(findings) == [("HED104", "head")]
    assert findings[0].evidence["nonfinite_parameters"] == 1
    assert "reload a checkpoint" in findings[0].fix


def test_hed104_blames_code_in_the_root_call():
    class LogNet(keras.Model):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.dense, self.head = layers.Dense(8, name="dense"), layers.Dense(3, name="head")

        def call(self, x):
            return self.head(ops.log(self.dense(x)))  # negative features: NaN

    findings = run(Pipeline(built(LogNet()), sample=sample()), "HED104")
    assert pairs(findings) == [("HED104", "<model>")]
    assert "code in the call of <model> outside its sublayers" in findings[0].evidence["localised"]


def test_hed104_blames_preprocess_for_a_non_finite_input():
    def preprocess(batch):
        out = np.array(batch, dtype="float32")
        out[0, 0] = np.nan
        return out

    findings = run(Pipeline(functional(), preprocess=preprocess, sample=sample()), "HED104")
    assert pairs(findings) == [("HED104", "preprocess")]
    assert findings[0].evidence["localised"] == "the model input already holds non-finite values"


# -- the tracer ----------------------------------------------------------------------------
def test_tracer_always_unwraps_also_when_the_model_raises():
    from auditor.dynamic.audit import make_context
    from auditor.errors import UsageFailure

    class Exploding(layers.Layer):
        armed = False

        def call(self, x):
            if Exploding.armed:
                raise RuntimeError("boom")
            return x

    model = functional(Exploding(name="boom"))
    ctx = make_context(Pipeline(model, sample=sample()))
    _record, tracer = probe.traced(ctx, "t", training=None)
    assert [c.name for c in tracer.calls][-1] == ""  # the root call is traced too
    Exploding.armed = True
    try:
        with pytest.raises(UsageFailure):
            probe.traced(ctx, "t", seed=3, training=False)
    finally:
        Exploding.armed = False
    for _, layer in [("", model)] + ctx.layers():
        assert "call" not in layer.__dict__ and "_resolve_and_populate_arg" not in layer.__dict__


def test_tracer_fingerprints_and_provenance():
    from auditor.dynamic.audit import make_context

    model = built(LeakyNet(name="leaky"))
    ctx = make_context(Pipeline(model, sample=sample()))
    _, a = probe.traced(ctx, "a", seed=5, training=False)
    _, b = probe.traced(ctx, "b", seed=5, training=False)
    _, c = probe.traced(ctx, "c", seed=6, training=False)
    assert [x.out for x in a.calls] == [x.out for x in b.calls]  # equal seeds: equal hashes
    assert probe.first_divergence(a, c) == ("drop", "drop (Dropout) gives different outputs for the same input")
    calls = {x.name: x for x in a.calls}
    assert calls["drop"].training is True and calls["drop"].origin == "drop" and calls["drop"].drew
    assert calls["bn"].training is True and calls["bn"].origin == "drop" and calls["bn"].wrote == ("bn/moving_mean", "bn/moving_variance")
    assert calls["dense"].training is False and calls["dense"].origin is None


def test_mode_dependent_keras_layers():
    bn = layers.BatchNormalization()
    frozen = layers.BatchNormalization()
    frozen.trainable = False
    table = {
        "dropout": layers.Dropout(0.1), "noise": layers.GaussianNoise(0.1), "augmentation": layers.RandomFlip(),
        "batchnorm": bn, None: frozen,
    }
    for why, layer in table.items():
        assert probe.mode_dependent(layer, "keras") == why
    assert probe.mode_dependent(layers.Dropout(0.0), "keras") is None
    assert probe.mode_dependent(MCDropout(0.5), "keras") == "dropout"
    assert probe.mode_dependent(layers.Dense(3), "keras") is None


def test_numpy_helpers():
    a = np.array([1.0, np.nan, 3.0], dtype="float32")
    assert probe.outputs_equal(a, a.copy())
    assert not probe.outputs_equal(a, a.astype("float64"))
    assert probe.max_abs_diff(a, np.array([1.0, np.nan, 1.0], dtype="float32")) == (2.0, 2.0)
    assert probe.max_abs_diff(a, np.array([1.0, 0.0, 3.0], dtype="float32"))[0] == float("inf")
    assert probe.nonfinite_counts(np.array([np.inf, np.nan, 0.0])) == (2, 1, 3)
    assert probe.nonfinite_counts(np.array([1, 2])) is None


# -- backends ------------------------------------------------------------------------------
SCRIPT = textwrap.dedent(
    """
    import sys
    sys.path.insert(0, {tests!r})
    import numpy as np
    import keras
    from keras import layers, ops
    from auditor import Pipeline, audit
    from test_keras_inference import AlwaysNoise, Counter, Jitter, LeakyNet, functional, sample, built

    results = []
    for name, model in [
        ("counter", functional(Counter(name="counter"))),
        ("noise", functional(AlwaysNoise(0.5, name="noise"))),
        ("jitter", functional(Jitter(name="jitter"))),
        ("leaky", built(LeakyNet(name="leaky"))),
    ]:
        report = audit(Pipeline(model, sample=sample()), select="{codes}")
        results.append((name, sorted((f.rule, f.target) for f in report.findings)))
    print(results)
    print("torch imported:", "torch" in sys.modules)
    """
)

EXPECTED = [
    ("counter", [("INF101", "counter/calls")]),
    ("noise", [("DET101", "noise"), ("INF102", "noise")]),
    ("jitter", [("DET101", "jitter")]),
    ("leaky", [("DET101", "drop"), ("INF101", "bn/moving_mean"), ("INF102", "drop")]),
]


def _run_backend(backend: str) -> str:
    env = dict(os.environ, KERAS_BACKEND=backend, TF_CPP_MIN_LOG_LEVEL="3")
    script = SCRIPT.format(tests=str(ROOT / "tests"), codes=CODES)
    result = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, cwd=ROOT, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    return result.stdout


def test_tensorflow_backend_never_imports_torch():
    pytest.importorskip("tensorflow", reason="the TensorFlow backend is not installed")
    out = _run_backend("tensorflow")
    assert str(EXPECTED) in out
    assert "torch imported: False" in out


def test_core_cases_under_the_torch_backend():
    pytest.importorskip("torch", reason="the torch backend is not installed")
    out = _run_backend("torch")
    assert str(EXPECTED) in out
