"""PRE101/PRE102 on Keras 3 models: recognising keras.applications `preprocess_input`, the
model's own Rescaling/Normalization layers ("normalised twice"), the first
BatchNormalization's moving statistics; restore checks. Real Keras models, never mocks."""

from __future__ import annotations

import functools
import importlib
import subprocess
import sys
import textwrap
import types
from pathlib import Path

import numpy as np
import pytest

keras = pytest.importorskip("keras")

from keras import layers  # noqa: E402
from keras.applications import densenet, efficientnet, imagenet_utils, mobilenet_v2, mobilenet_v3, resnet, resnet50, resnet_v2  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.dynamic.keras_context import KerasContext  # noqa: E402
from auditor.dynamic.reference import keras_family, keras_preprocess_input, reference_spec  # noqa: E402
from auditor.finding import Severity  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "fixtures" / "dynamic"))
sys.path.insert(0, str(ROOT / "tests"))
import _keras_fixtures as kf  # noqa: E402
from dynamic_support import assert_restored, capture  # noqa: E402

pp = importlib.import_module("auditor.rules._preprocessing_probe")
SAMPLE = kf.images(8)


def raw_floats(batch):
    return np.asarray(batch, dtype="float32")


def unit(batch):
    return np.asarray(batch, dtype="float32") / 255.0


def _run(pipeline, code):
    before = capture(pipeline)
    findings = [f for f in audit(pipeline, select=[code]).findings if f.rule == code]
    assert_restored(pipeline, before)
    return findings


def rescaling_cnn(first=None, name="rescaling_cnn"):
    inputs = keras.Input((32, 32, 3))
    x = first(inputs) if first is not None else inputs
    x = layers.Conv2D(8, 3, padding="same", use_bias=False, name="conv1")(x)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.GlobalAveragePooling2D()(x)
    return keras.Model(inputs, layers.Dense(4, name="head")(x), name=name)


# -- recognising keras.applications preprocess_input ---------------------------------------------
@pytest.mark.parametrize(
    "function, family, mode, via",
    [
        (resnet50.preprocess_input, "resnet", "caffe", ""),
        (resnet.preprocess_input, "resnet", "caffe", ""),
        (resnet_v2.preprocess_input, "resnet_v2", "tf", ""),
        (mobilenet_v2.preprocess_input, "mobilenet_v2", "tf", ""),
        (densenet.preprocess_input, "densenet", "torch", ""),
        (efficientnet.preprocess_input, "efficientnet", "builtin", ""),
        (mobilenet_v3.preprocess_input, "mobilenet_v3", "builtin", ""),
        (imagenet_utils.preprocess_input, "imagenet_utils", "caffe", ""),
        (functools.partial(imagenet_utils.preprocess_input, mode="tf"), "imagenet_utils", "tf", "functools.partial"),
        (functools.partial(imagenet_utils.preprocess_input, mode="torch", data_format="channels_last"), "imagenet_utils", "torch", "functools.partial"),
        (functools.partial(mobilenet_v2.preprocess_input, data_format="channels_last"), "mobilenet_v2", "tf", "functools.partial"),
    ],
)
def test_preprocess_input_by_module(function, family, mode, via):
    found = keras_preprocess_input(function)
    assert found is not None
    assert (found.family, found.mode, found.via) == (family, mode, via)
    assert found.module == f"keras.src.applications.{family}"


def _called_through_attribute_chain(batch):
    return keras.applications.mobilenet_v2.preprocess_input(np.asarray(batch, dtype="float32"))


def _calls_the_helper(batch):
    return _called_through_attribute_chain(batch)


_TORCH_MODE = functools.partial(imagenet_utils.preprocess_input, mode="torch")


def _calls_a_global_partial(batch):
    return _TORCH_MODE(batch)


def _two_modules(batch):
    return resnet50.preprocess_input(mobilenet_v2.preprocess_input(batch))


def test_preprocess_input_called_by_user_code():
    assert keras_preprocess_input(_called_through_attribute_chain)[1:] == ("mobilenet_v2", "tf", "called")
    assert keras_preprocess_input(_calls_the_helper)[1:] == ("mobilenet_v2", "tf", "called")
    assert keras_preprocess_input(_calls_a_global_partial)[1:] == ("imagenet_utils", "torch", "called")
    assert keras_preprocess_input(lambda b: densenet.preprocess_input(b * 1.0)).family == "densenet"
    fn = densenet.preprocess_input
    assert keras_preprocess_input(lambda b: fn(b)).family == "densenet"  # closure variable
    assert keras_preprocess_input(_two_modules) is None  # ambiguous: measured only
    assert keras_preprocess_input(lambda b: b / 255.0) is None
    assert keras_preprocess_input(np.asarray) is None


def test_preprocess_input_other_keras_distributions_and_labels():
    def preprocess_input(x, data_format=None):
        return x

    preprocess_input.__module__ = "tf_keras.src.applications.inception_v3"
    assert keras_preprocess_input(preprocess_input)[1:3] == ("inception_v3", "tf")
    preprocess_input.__module__ = "mypackage.applications.vgg16"
    assert keras_preprocess_input(preprocess_input) is None
    assert keras_preprocess_input(functools.partial(imagenet_utils.preprocess_input, mode="sideways")) is None
    assert keras_preprocess_input(functools.partial(imagenet_utils.preprocess_input, mode="tf")).label == "keras.applications.imagenet_utils.preprocess_input(mode='tf')"
    assert keras_preprocess_input(mobilenet_v2.preprocess_input).label == "keras.applications.mobilenet_v2.preprocess_input"


@pytest.mark.parametrize(
    "pretrained, family",
    [
        ("keras.applications.resnet50", "resnet50"),
        ("keras.applications.ResNet50", "resnet50"),
        ("keras.applications.resnet50.ResNet50", "resnet50"),
        ("tf.keras.applications.inception_v3", "inception_v3"),
        ("keras.applications.EfficientNetB0", "efficientnet"),
        ("keras.applications.MobileNetV3Small", "mobilenet_v3"),
        ("torchvision.models.resnet50", None),
        ({"mode": "caffe"}, None),
        (None, None),
    ],
)
def test_keras_family(pretrained, family):
    assert keras_family(pretrained) == family


def test_recognised_function_matches_the_reference_spec():
    raw = SAMPLE.astype(np.float64)
    for fn in (resnet50.preprocess_input, mobilenet_v2.preprocess_input, densenet.preprocess_input, efficientnet.preprocess_input):
        spec = keras_preprocess_input(fn).spec()
        assert np.allclose(spec.apply(raw), fn(raw.copy()), atol=1e-4)


# -- the model's own preprocessing layers ----------------------------------------------------------
def _in_model(model):
    return pp.in_model_preprocessing(KerasContext(Pipeline(model, sample=SAMPLE)))


def test_in_model_efficientnet_and_mobilenet_v3():
    effnet = _in_model(keras.applications.EfficientNetB0(weights=None, input_shape=(32, 32, 3), classes=4))
    assert [d.split("(")[0] for _n, d in effnet.layers] == ["Rescaling", "Normalization"]
    assert "Rescaling(scale=1/255, offset=0)" in effnet.text()
    assert np.allclose(effnet.gain, 1 / 255, rtol=1e-5) and np.allclose(effnet.offset, 0, atol=1e-6)
    assert effnet.first_layer == "stem_conv" and effnet.expects_raw
    v3 = _in_model(keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=4))
    assert v3.text() == "Rescaling(scale=1/127.5, offset=-1)"
    assert np.allclose(v3.gain, 1 / 127.5, rtol=1e-5) and np.allclose(v3.offset, -1, atol=1e-6)
    assert v3.expects_raw and np.allclose(v3.span, 2.0, rtol=1e-5)
    assert _in_model(keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=4, include_preprocessing=False)) is None


def test_in_model_efficientnet_v2_imagenet_normalization():
    found = _in_model(keras.applications.EfficientNetV2B0(weights=None, input_shape=(32, 32, 3), classes=4))
    assert "Normalization(mean=[0.485, 0.456, 0.406]" in found.text()
    assert np.allclose(found.gain, 1 / (255 * np.array([0.229, 0.224, 0.225])), rtol=1e-3)
    assert np.allclose(found.offset, -np.array([0.485, 0.456, 0.406]) / np.array([0.229, 0.224, 0.225]), rtol=1e-3)
    assert found.expects_raw


def test_in_model_normalization_on_unit_data_makes_no_claim():
    norm = layers.Normalization(mean=[0.485, 0.456, 0.406], variance=[0.052, 0.050, 0.051])
    found = _in_model(rescaling_cnn(norm))
    assert found is not None and not found.expects_raw  # spans ~1100: it expects [0, 1]
    ctx = KerasContext(Pipeline(rescaling_cnn(norm), preprocess=unit, sample=SAMPLE))
    assert pp.reference_for(ctx) is None
    assert _in_model(kf.functional_cnn()) is None


# -- PRE101 on Keras ---------------------------------------------------------------------------------
def test_pre101_wrong_module_names_both_modules_and_modes():
    model = kf.calibrate(kf.sequential_cnn(), kf.caffe(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=mobilenet_v2.preprocess_input, sample=SAMPLE, pretrained="keras.applications.resnet50"), "PRE101")
    assert f.target == "preprocess" and f.severity == Severity.ERROR
    assert f.message.startswith("preprocess is keras.applications.mobilenet_v2.preprocess_input (mode 'tf': x / 127.5 - 1")
    assert "but the resnet50 weights expect keras.applications.resnet50.preprocess_input (mode 'caffe'" in f.message
    ev = f.evidence
    assert ev["explanation"] == "keras-module" and ev["layout"] == "NHWC"
    assert ev["preprocess_input_module"] == "keras.src.applications.mobilenet_v2" and ev["preprocess_input_mode"] == "tf"
    assert "keras.applications.resnet50.preprocess_input" in f.fix


def test_pre101_partial_and_called_variants():
    model = kf.calibrate(kf.sequential_cnn(), kf.tf_mode(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=functools.partial(imagenet_utils.preprocess_input, mode="torch"), sample=SAMPLE, pretrained="keras.applications.inception_v3"), "PRE101")
    assert f.message.startswith("preprocess is keras.applications.imagenet_utils.preprocess_input(mode='torch') (mode 'torch'")
    assert "inception_v3.preprocess_input (mode 'tf'" in f.message
    (f,) = _run(Pipeline(model, preprocess=kf.caffe, sample=SAMPLE, pretrained="keras.applications.xception"), "PRE101")
    assert f.message.startswith("preprocess calls keras.applications.resnet.preprocess_input (mode 'caffe'")


def test_pre101_pass_through_module_for_a_caffe_family():
    model = kf.calibrate(kf.functional_cnn(), kf.caffe(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=efficientnet.preprocess_input, sample=SAMPLE, pretrained="keras.applications.vgg16"), "PRE101")
    assert f.message.startswith("preprocess is keras.applications.efficientnet.preprocess_input (a pass-through")


def test_pre101_non_keras_family_with_keras_function():
    model = kf.calibrate(kf.functional_cnn(), kf.torch_mode(SAMPLE))
    assert _run(Pipeline(model, preprocess=densenet.preprocess_input, sample=SAMPLE, pretrained="torchvision.models.resnet50"), "PRE101") == []
    (f,) = _run(Pipeline(model, preprocess=resnet50.preprocess_input, sample=SAMPLE, pretrained="torchvision.models.resnet50"), "PRE101")
    assert "but the resnet50 weights expect ImageNet mean/std normalisation (mode 'torch'" in f.message


def test_pre101_module_not_named_when_the_measurement_disagrees():
    # a sample already in [0, 1]: resnet50.preprocess_input no longer computes caffe mode
    model = kf.calibrate(kf.functional_cnn(), kf.tf_mode(SAMPLE))
    floats = SAMPLE.astype("float32") / 255.0
    (f,) = _run(Pipeline(model, preprocess=lambda b: resnet50.preprocess_input(b * 1.0), sample=floats, pretrained="keras.applications.mobilenet_v2"), "PRE101")
    assert f.evidence["explanation"] != "keras-module" and "preprocess_input" not in f.evidence


def test_pre101_clean_keras_pipelines():
    model = kf.calibrate(kf.functional_cnn(), kf.caffe(SAMPLE))
    assert _run(Pipeline(model, preprocess=resnet50.preprocess_input, sample=SAMPLE, pretrained="keras.applications.ResNet50"), "PRE101") == []
    assert _run(Pipeline(model, preprocess=functools.partial(imagenet_utils.preprocess_input, mode="caffe"), sample=SAMPLE, pretrained="keras.applications.vgg19"), "PRE101") == []


def test_pre101_normalised_twice_without_pretrained():
    model = kf.calibrate(rescaling_cnn(layers.Rescaling(1 / 255, name="rescale")), raw_floats(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=unit, sample=SAMPLE), "PRE101")
    ev = f.evidence
    assert ev["explanation"] == "normalised-twice" and f.target == "preprocess"
    assert f.message.startswith("normalised twice: preprocess already normalises the pixels (its output matches [0, 1] pixels)")
    assert "the model's own Rescaling(scale=1/255, offset=0) then normalises them again, so conv1 sees range" in f.message
    assert ev["model_preprocessing"] == ["rescale: Rescaling(scale=1/255, offset=0)"]
    assert ev["first_layer"] == "conv1"
    assert ev["first_layer_sees_range"][1] < 0.004 and 0.9 < ev["first_layer_expects_range"][1] <= 1.0
    sees, wants = np.array(ev["first_layer_sees_std"]), np.array(ev["first_layer_expects_std"])
    assert np.allclose(sees / wants, 1 / 255, rtol=0.02)
    assert ev["reference"].startswith("rescaling_cnn's own preprocessing layers")
    assert "Feed rescaling_cnn raw 0-255 float pixels" in f.fix
    assert _run(Pipeline(model, preprocess=raw_floats, sample=SAMPLE), "PRE101") == []


def test_pre101_normalised_twice_names_the_keras_function_and_numbers():
    net = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=4)
    model = kf.calibrate(net, raw_floats(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=mobilenet_v2.preprocess_input, sample=SAMPLE, pretrained="keras.applications.mobilenet_v3"), "PRE101")
    assert "preprocess already normalises the pixels with keras.applications.mobilenet_v2.preprocess_input (mode 'tf'" in f.message
    assert "Rescaling(scale=1/127.5, offset=-1) then normalises them again" in f.message
    ev = f.evidence
    assert ev["first_layer_sees_range"][0] > -1.01 and ev["first_layer_sees_range"][1] < -0.99
    assert ev["first_layer_expects_range"] == pytest.approx(ev["measured_range"], abs=1e-3)  # tf mode is what the layer makes of raw pixels
    assert ev["model_preprocessing_gain"] == pytest.approx([1 / 127.5] * 3, rel=1e-4)


def test_pre101_channel_order_in_front_of_builtin_preprocessing_is_not_twice():
    model = kf.calibrate(rescaling_cnn(layers.Rescaling(1 / 255)), raw_floats(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=lambda b: raw_floats(b)[..., ::-1], sample=SAMPLE), "PRE101")
    assert f.evidence["explanation"] == "channel-order" and "BGR" in f.message


def test_pre101_builtin_family_built_without_its_preprocessing():
    net = keras.applications.MobileNetV3Small(weights=None, input_shape=(32, 32, 3), classes=4, include_preprocessing=False)
    model = kf.calibrate(net, kf.tf_mode(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=raw_floats, sample=SAMPLE, pretrained="keras.applications.mobilenet_v3"), "PRE101")
    assert f.message == "raw [0, 255] pixels fed but mobilenet_v3 expects [-1, 1] pixels"
    assert _run(Pipeline(model, preprocess=kf.tf_mode, sample=SAMPLE, pretrained="keras.applications.mobilenet_v3"), "PRE101") == []


def test_reference_for_efficientnet_v2_variants_by_name():
    ctx = types.SimpleNamespace(framework="keras", pretrained="keras.applications.efficientnet_v2", model=types.SimpleNamespace(name="efficientnetv2-b0"), memo=lambda key, fn: fn())
    ref = pp.reference_for(ctx)
    assert ref.spec.same_map(reference_spec("torch"))
    ctx.model.name = "efficientnetv2-s"
    assert pp.reference_for(ctx).spec.same_map(reference_spec("tf"))


def test_pre101_needs_preprocess_and_a_reference():
    model = kf.calibrate(kf.functional_cnn(), kf.caffe(SAMPLE))
    assert _run(Pipeline(model, preprocess=mobilenet_v2.preprocess_input, sample=SAMPLE), "PRE101") == []  # no reference
    assert _run(Pipeline(model, sample=kf.caffe(SAMPLE), pretrained="keras.applications.resnet50"), "PRE101") == []  # no preprocess


# -- PRE102 on Keras ---------------------------------------------------------------------------------
def test_pre102_raw_pixels_into_a_unit_network():
    model = kf.calibrate(kf.functional_cnn(), unit(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=raw_floats, sample=SAMPLE), "PRE102")
    assert f.target == "bn1" and f.severity == Severity.WARNING
    assert "0-255 pixels fed to a network calibrated on [0, 1] input" in f.message
    assert f.evidence["median_std_ratio"] == pytest.approx(255, rel=1e-3)
    assert f.evidence["channels"] == 16 and f.evidence["next_layer"] == "bn2"
    assert _run(Pipeline(model, preprocess=unit, sample=SAMPLE), "PRE102") == []


def test_pre102_matches_the_numpy_definition():
    model = kf.calibrate(kf.sequential_cnn(), kf.torch_mode(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=unit, sample=SAMPLE), "PRE102")
    conv = model.get_layer("conv1")
    bn = model.get_layer("bn1")
    x = keras.ops.convert_to_numpy(conv(unit(SAMPLE))).astype(np.float64).reshape(-1, 16)
    mean, var = x.mean(0), x.var(0)
    mm = keras.ops.convert_to_numpy(bn.moving_mean).astype(np.float64)
    mv = keras.ops.convert_to_numpy(bn.moving_variance).astype(np.float64)
    ratio = np.sqrt(var / mv)
    offset = np.abs(mean - mm) / np.sqrt(mv + bn.epsilon)
    assert f.evidence["median_std_ratio"] == pytest.approx(np.sort(ratio)[7], rel=1e-3)
    assert f.evidence["median_mean_offset_sd"] == pytest.approx(np.sort(offset)[7], rel=1e-3)
    assert "Normalize missing" in f.message


def test_pre102_nested_model_target_is_qualified():
    base = kf.backbone("base")
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, layers.Dense(3)(base(inputs)))
    kf.calibrate(base, kf.caffe(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=unit, sample=SAMPLE), "PRE102")
    assert f.target == "base/bn1" and f.evidence["next_layer"] == "base/bn2"


def test_pre102_silent_cases():
    untrained = kf.functional_cnn()
    assert _run(Pipeline(untrained, preprocess=raw_floats, sample=SAMPLE), "PRE102") == []  # moving stats never estimated
    model = kf.calibrate(kf.functional_cnn(), unit(SAMPLE))
    assert _run(Pipeline(model, preprocess=raw_floats, sample=SAMPLE, pretrained="keras.applications.densenet"), "PRE102") == []
    # a model that rescales its own input: PRE101 judges it
    own = kf.calibrate(rescaling_cnn(layers.Rescaling(1 / 255)), raw_floats(SAMPLE))
    assert _run(Pipeline(own, preprocess=unit, sample=SAMPLE), "PRE102") == []


def test_pre102_synthetic_sample_is_info():
    model = kf.calibrate(kf.functional_cnn(), unit(SAMPLE))
    (f,) = _run(Pipeline(model, preprocess=raw_floats), "PRE102")
    assert f.severity == Severity.INFO and "synthetic" in f.evidence["confidence"]


def test_stored_statistics_and_lower_median():
    model = kf.calibrate(kf.functional_cnn(), unit(SAMPLE))
    ctx = KerasContext(Pipeline(model, sample=unit(SAMPLE)))
    stored = pp.stored_statistics(ctx, "bn1")
    assert stored.mean.shape == (16,) and stored.eps == pytest.approx(1e-3) and not stored.initial
    fresh = KerasContext(Pipeline(kf.functional_cnn(), sample=unit(SAMPLE)))
    assert pp.stored_statistics(fresh, "bn1").initial
    assert pp.stored_statistics(ctx, "conv1") is None
    assert pp.lower_median(np.array([4.0, 1.0, 3.0, 2.0])) == 2.0
    assert pp.lower_median(np.array([3.0, 1.0, 2.0])) == 2.0


# -- both frameworks behind one rule ---------------------------------------------------------------
def test_both_rules_declare_both_frameworks():
    from auditor.rules.pre101_preprocessing_mismatch import PreprocessingMismatch
    from auditor.rules.pre102_input_off_batchnorm_statistics import InputOffBatchnormStatistics

    assert PreprocessingMismatch.frameworks == ("torch", "keras")
    assert InputOffBatchnormStatistics.frameworks == ("torch", "keras")
    for rule in (PreprocessingMismatch, InputOffBatchnormStatistics):
        assert "Keras" in rule.__doc__


@pytest.mark.skipif(keras.config.backend() != "tensorflow", reason="the torch-import guarantee is about the TensorFlow backend")
def test_no_torch_import_under_tensorflow():
    script = textwrap.dedent(
        f"""
        import sys, functools
        sys.path.insert(0, {str(ROOT / "fixtures" / "dynamic")!r})
        import keras
        import _keras_fixtures as kf
        from auditor import Pipeline, audit
        sample = kf.images(8)
        model = kf.calibrate(kf.functional_cnn(), kf.caffe(sample))
        audit(Pipeline(model, preprocess=keras.applications.mobilenet_v2.preprocess_input, sample=sample, pretrained="keras.applications.resnet50"), select=["PRE101", "PRE102"])
        audit(Pipeline(model, preprocess=lambda b: b / 255.0, sample=sample), select=["PRE101", "PRE102"])
        print("torch" in sys.modules)
        """
    )
    env = {"KERAS_BACKEND": "tensorflow", "PATH": "/usr/bin:/bin", "TF_CPP_MIN_LOG_LEVEL": "3"}
    import os

    env = {**os.environ, **env}
    out = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.strip().splitlines()[-1] == "False"


def test_in_model_convnext_style_normalization_and_list_rescaling():
    # ConvNeXt's prestem Normalization (ImageNet mean*255, (std*255)^2), then EfficientNet's
    # ImageNet-weights Rescaling([1/sqrt(std)]) with a per-channel list
    mean = np.array([0.485, 0.456, 0.406]) * 255
    var = (np.array([0.229, 0.224, 0.225]) * 255) ** 2
    extra = 1 / np.sqrt([0.229, 0.224, 0.225])
    model = rescaling_cnn(lambda x: layers.Rescaling(list(extra), name="std_fix")(layers.Normalization(mean=list(mean), variance=list(var), name="prestem")(x)))
    found = _in_model(model)
    assert found.text().startswith("Normalization(mean=[123.7, 116.3, 103.5], variance=[3410, 3263, 3292]) and Rescaling(scale=[2.09")
    assert np.allclose(found.gain, extra / (255 * np.array([0.229, 0.224, 0.225])), rtol=1e-4)
    assert found.expects_raw and found.first_layer == "conv1"
    (f,) = _run(Pipeline(kf.calibrate(model, raw_floats(SAMPLE)), preprocess=kf.torch_mode, sample=SAMPLE), "PRE101")
    assert f.evidence["explanation"] == "normalised-twice"
    assert f.evidence["model_preprocessing"] == ["prestem: " + found.layers[0][1], "std_fix: " + found.layers[1][1]]
