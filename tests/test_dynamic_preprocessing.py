"""PRE101/PRE102 and the reference preprocessing specs (auditor.dynamic.reference)."""

from __future__ import annotations

import importlib
import sys
from pathlib import Path

import numpy as np
import pytest

from auditor.dynamic.reference import PreprocessSpec, family_label, mode_spec, reference_spec

ROOT = Path(__file__).resolve().parent.parent
RAW = None


def _raw():
    from auditor.dynamic.samples import synthetic_images

    return synthetic_images(batch=6, size=24, seed=3)


# -- reference specs (numpy only) ---------------------------------------------------------------
@pytest.mark.parametrize(
    "family, mean, std, scale, channels",
    [
        ("torchvision.models.resnet50", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("torchvision/resnet50", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("torchvision.models.inception_v3", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("timm/inception_v3", (0.5,) * 3, (0.5,) * 3, 255, "RGB"),
        ("timm/inception_v3.gluon_in1k", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("timm/vit_base_patch16_clip_224.openai", (0.48145466, 0.4578275, 0.40821073), (0.26862954, 0.26130258, 0.27577711), 255, "RGB"),
        ("timm/resnet50", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("keras.applications.resnet50", (103.939, 116.779, 123.68), (1, 1, 1), 1, "BGR"),
        ("keras.applications.ResNet50", (103.939, 116.779, 123.68), (1, 1, 1), 1, "BGR"),
        ("keras.applications.inception_v3", (1, 1, 1), (1, 1, 1), 127.5, "RGB"),
        ("keras.applications.densenet", (0.485, 0.456, 0.406), (0.229, 0.224, 0.225), 255, "RGB"),
        ("keras.applications.efficientnet", (0, 0, 0), (1, 1, 1), 1, "RGB"),
        ({"mode": "tf"}, (1, 1, 1), (1, 1, 1), 127.5, "RGB"),
        ({"mean": [0.5, 0.5, 0.5], "std": [0.25, 0.25, 0.25]}, (0.5,) * 3, (0.25,) * 3, 255, "RGB"),
        ({"mean": [120, 110, 100], "std": [60, 60, 60], "channels": "BGR"}, (120, 110, 100), (60,) * 3, 1, "BGR"),
    ],
)
def test_reference_spec_families(family, mean, std, scale, channels):
    spec = reference_spec(family)
    assert spec is not None
    assert np.allclose(spec.mean, mean) and np.allclose(spec.std, std)
    assert spec.scale == scale and spec.channels == channels


@pytest.mark.parametrize("family", [None, "", "timm/some_unknown_net", "mypackage.models.thing"])
def test_reference_spec_unknown(family):
    assert reference_spec(family) is None


def test_reference_spec_bad_dict():
    with pytest.raises(ValueError):
        reference_spec({"std": [1, 1, 1]})
    with pytest.raises(ValueError):
        reference_spec({"mode": "sideways"})


def test_apply_matches_the_definition_and_expected_stats():
    raw = _raw()
    for family in ("torchvision.models.resnet50", "keras.applications.resnet50", "keras.applications.inception_v3"):
        spec = reference_spec(family)
        out = spec.apply(raw)
        assert out.shape == raw.shape and out.dtype == np.float64
        x = raw.astype(np.float64)[..., spec.order]
        assert np.allclose(out, (x / spec.scale - spec.mean) / spec.std)
        flat = raw.reshape(-1, 3).astype(np.float64)
        stats = spec.expected_stats(flat.mean(0), flat.std(0), flat.min(0), flat.max(0))
        o = out.reshape(-1, 3)
        assert np.allclose(stats["mean"], o.mean(0)) and np.allclose(stats["std"], o.std(0))
        assert np.allclose(stats["min"], o.min(0)) and np.allclose(stats["max"], o.max(0))


def test_caffe_reverses_channels_and_tf_range():
    caffe = mode_spec("caffe")
    px = np.array([[[[10, 20, 30]]]], dtype=np.uint8)
    assert np.allclose(caffe.apply(px)[0, 0, 0], [30 - 103.939, 20 - 116.779, 10 - 123.68])
    assert mode_spec("tf").output_range() == pytest.approx((-1.0, 1.0))
    assert mode_spec("tf").describe() == "[-1, 1] pixels"
    assert reference_spec("torchvision.models.resnet50").describe() == "ImageNet mean/std normalisation"


def test_family_label():
    assert family_label("torchvision.models.resnet50") == "resnet50"
    assert family_label("timm/inception_v3") == "inception_v3"
    assert family_label("keras.applications.inception_v3") == "inception_v3"
    spec = reference_spec({"mode": "caffe"})
    assert family_label({"mode": "caffe"}, spec) == "the caffe-mode spec"


def test_reference_images_use_the_spec():
    from auditor.dynamic.context_base import reference_images

    raw = _raw()
    out = reference_images(raw, "keras.applications.inception_v3")
    assert out.shape == (6, 24, 24, 3) and out.dtype == np.float32 and out.min() >= -1 and out.max() <= 1
    default = reference_images(raw, None)  # unknown family: ImageNet normalisation
    assert abs(float(default.mean())) < 3 and not np.allclose(default, out)


# -- the explanation library -------------------------------------------------------------------
pp = importlib.import_module("auditor.rules._preprocessing_probe")
IMNET_M, IMNET_S = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])


def _explain(fn, family="torchvision.models.resnet50"):
    raw = _raw()
    ref = reference_spec(family)
    rs = pp.channel_stats(raw.astype(np.float64), axis=3)
    cmap = pp.affine_map(fn, raw)
    assert cmap is not None
    judged = cmap.stats(rs)
    expected = ref.expected_stats(rs.mean, rs.std)
    cmp = pp.compare(expected, judged)
    return cmp, (pp.explain(ref, rs, judged, family_label(family)) if cmp.mismatch else None)


def nchw(x):
    return np.ascontiguousarray(np.transpose(x, (0, 3, 1, 2)))


CASES = {
    "channel-order": lambda b: nchw((b[..., ::-1] / 255.0 - IMNET_M) / IMNET_S),
    "unit-range": lambda b: nchw(b / 255.0),
    "raw-255": lambda b: nchw(b.astype(np.float32)),
    "tf": lambda b: nchw(b / 127.5 - 1),
    "caffe": lambda b: nchw(b[..., ::-1] - np.array([103.939, 116.779, 123.68])),
    "clip": lambda b: nchw((b / 255.0 - np.array(pp.knowledge.CLIP_MEAN)) / np.array(pp.knowledge.CLIP_STD)),
    "double": lambda b: nchw((((b / 255.0 - IMNET_M) / IMNET_S) - IMNET_M) / IMNET_S),
    "no-scale": lambda b: nchw((b - IMNET_M) / IMNET_S),
    "scaled-twice": lambda b: nchw((b / 255.0 / 255.0 - IMNET_M) / IMNET_S),
}


@pytest.mark.parametrize("key", sorted(CASES))
def test_each_known_mistake_is_named(key):
    cmp, found = _explain(CASES[key])
    assert cmp.mismatch
    assert found.key == key, found


def test_nhwc_numpy_output_and_correct_preprocess_is_clean():
    cmp, found = _explain(lambda b: (b / 255.0 - IMNET_M) / IMNET_S)  # NHWC
    assert not cmp.mismatch and found is None


def test_unknown_affine_map_reports_implied_mean_std():
    cmp, found = _explain(lambda b: nchw((b / 255.0 - np.array([0.3, 0.6, 0.2])) / np.array([0.1, 0.3, 0.2])))
    assert cmp.mismatch and found.key == "affine"
    assert np.allclose(found.spec.mean, [0.3, 0.6, 0.2], atol=1e-6) and np.allclose(found.spec.std, [0.1, 0.3, 0.2], atol=1e-6)
    assert "Normalize(mean=[0.3, 0.6, 0.2], std=[0.1, 0.3, 0.2])" in found.text


def test_inception_reference_explains_imagenet_and_unit():
    _, found = _explain(lambda b: nchw((b / 255.0 - IMNET_M) / IMNET_S), "timm/inception_v3")
    assert found.key == "imagenet" and found.text.endswith("inception_v3 expects [-1, 1] pixels")
    _, found = _explain(lambda b: nchw(b / 255.0), "keras.applications.inception_v3")
    assert found.text == "inputs in [0, 1] but inception_v3 expects [-1, 1] pixels"


def test_affine_map_none_for_per_image_standardisation():
    def standardise(b):
        x = b.astype(np.float64)
        return nchw((x - x.mean(axis=(1, 2, 3), keepdims=True)) / (x.std(axis=(1, 2, 3), keepdims=True) + 1e-6))

    assert pp.affine_map(standardise, _raw()) is None


def test_channel_axis_rules():
    assert pp.channel_axis((8, 3, 32, 32)) == 1
    assert pp.channel_axis((8, 32, 32, 3)) == 3
    assert pp.channel_axis((8, 3, 3, 3)) == 1
    assert pp.channel_axis((8, 32, 32)) is None


def test_tolerance_edges():
    exp = {"mean": np.zeros(3), "std": np.ones(3)}
    inside = pp.ChannelStats(np.full(3, 0.29), np.full(3, np.exp(0.099)), np.zeros(3), np.zeros(3), "NCHW")
    assert not pp.compare(exp, inside).mismatch
    outside_mean = inside._replace(mean=np.array([0.0, 0.0, 0.35]), std=np.ones(3))
    assert pp.compare(exp, outside_mean).mismatch
    outside_std = inside._replace(mean=np.zeros(3), std=np.array([1.0, 1.0, 0.88]))
    assert pp.compare(exp, outside_std).mismatch
    assert not pp.compare(exp, outside_std, std_tol=pp.STATS_STD_TOL).mismatch


# -- the probes on real torch models -------------------------------------------------------------
torch = pytest.importorskip("torch")
sys.path.insert(0, str(ROOT / "fixtures" / "dynamic" / "PRE101"))
import _pre_support as fx  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.finding import Severity  # noqa: E402


def _pre(pipeline, code):
    return [f for f in audit(pipeline, select=[code]).findings if f.rule == code]


def test_pre101_message_and_evidence_for_bgr():
    def bgr(batch):
        return fx.imagenet_preprocess(fx.center_crop(batch)[..., ::-1].copy())

    (f,) = _pre(Pipeline(fx.calibrated_cnn(), preprocess=bgr, sample=fx.sample(), num_classes=10, pretrained="torchvision.models.resnet50"), "PRE101")
    assert f.message == "input is BGR but resnet50 weights expect RGB"
    assert f.target == "preprocess" and f.severity == Severity.ERROR
    ev = f.evidence
    assert ev["explanation"] == "channel-order" and ev["layout"] == "NCHW"
    for key in ("expected_mean", "measured_mean", "expected_std", "measured_std", "expected_range", "measured_range"):
        assert len(ev[key]) in (2, 3)
    assert "Normalize(mean=[0.485, 0.456, 0.406]" in f.fix


def test_pre101_statistics_fallback_for_non_affine_preprocess():
    # per-image contrast stretch: not affine per channel; [0, 1]-ish output, far from ImageNet's
    def stretch(batch):
        x = fx.resize_crop(batch)
        lo = x.amin(dim=(1, 2, 3), keepdim=True)
        hi = x.amax(dim=(1, 2, 3), keepdim=True)
        return (x - lo) / (hi - lo)

    (f,) = _pre(Pipeline(fx.calibrated_cnn(), preprocess=stretch, sample=fx.sample(), pretrained="torchvision.models.resnet50"), "PRE101")
    assert f.evidence["method"] == "statistics"


def test_pre101_resize_with_statistics_only_stays_clean():
    # bilinear resize lowers the std ~12% on these images: within the statistics tolerance
    def resized(batch):
        x = fx.resize_crop(batch) / 255.0
        out = (x - torch.tensor(IMNET_M).view(1, 3, 1, 1).float()) / torch.tensor(IMNET_S).view(1, 3, 1, 1).float()
        return out + 1e-4 * torch.randn_like(out)  # breaks the exact-map probe

    assert _pre(Pipeline(fx.calibrated_cnn(), preprocess=resized, sample=fx.sample(), pretrained="torchvision.models.resnet50"), "PRE101") == []


def test_pre101_needs_pretrained_and_preprocess():
    model = fx.calibrated_cnn()
    assert _pre(Pipeline(model, preprocess=lambda b: fx.resize_crop(b), sample=fx.sample()), "PRE101") == []
    assert _pre(Pipeline(model, sample=fx.imagenet_preprocess(fx.sample(size=32)), pretrained="torchvision.models.resnet50"), "PRE101") == []


def test_pre101_compose_normalize_read_directly():
    compose = fx.Compose([fx.CenterCrop(32), fx.ToTensor(), fx.Normalize([0.48145466, 0.4578275, 0.40821073], [0.26862954, 0.26130258, 0.27577711])])
    (f,) = _pre(Pipeline(fx.calibrated_cnn(), preprocess=compose, sample=fx.sample(), pretrained="torchvision.models.resnet50"), "PRE101")
    assert f.message.startswith("Normalize in preprocess uses the OpenAI CLIP statistics but resnet50 weights expect")
    assert f.evidence["normalize_std"] == [0.2686, 0.2613, 0.2758]


def test_pre102_fires_on_raw_pixels_and_names_cause():
    model = fx.calibrated_on(lambda b: fx.to_nchw(b / 255.0))
    (f,) = _pre(Pipeline(model, preprocess=lambda b: fx.resize_crop(b), sample=fx.sample()), "PRE102")
    assert f.target == "bn1" and f.severity == Severity.WARNING
    assert "0-255 pixels fed to a network calibrated on [0, 1] input" in f.message
    assert f.evidence["median_std_ratio"] > 130


def test_pre102_silent_when_pretrained_given_or_clean():
    model = fx.calibrated_cnn()
    assert _pre(Pipeline(model, preprocess=lambda b: fx.resize_crop(b), sample=fx.sample(), pretrained="torchvision.models.resnet50"), "PRE102") == []
    assert _pre(Pipeline(model, preprocess=lambda b: fx.imagenet_preprocess(fx.center_crop(b)), sample=fx.sample()), "PRE102") == []


def test_pre102_synthetic_sample_is_info():
    model = fx.calibrated_on(lambda b: fx.to_nchw(b / 255.0))
    (f,) = _pre(Pipeline(model, preprocess=lambda b: torch.from_numpy(b.copy()).permute(0, 3, 1, 2).float()), "PRE102")
    assert f.severity == Severity.INFO and "synthetic" in f.evidence["confidence"]


@pytest.mark.parametrize(
    "ratio, offset, words",
    [
        (250.0, 300.0, "calibrated on [0, 1] input"),
        (60.0, 100.0, "mean/std-normalised input (the /255 and Normalize"),
        (0.004, 1.0, "divided by 255 once too often"),
        (0.3, 0.6, "Normalize missing"),
        (3.0, 3.0, "normalised twice"),
        (1.2, 2.3, "channels in the wrong order"),
    ],
)
def test_pre102_likely_cause(ratio, offset, words):
    mod = importlib.import_module("auditor.rules.pre102_input_off_batchnorm_statistics")
    assert words in mod.likely_cause(ratio, offset)[0]
