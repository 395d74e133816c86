"""PRE101: the preprocessed sample does not look like what the pretrained weights expect."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding
from auditor.rule import DynamicRule
from auditor.finding import Severity


class PreprocessingMismatch(DynamicRule):
    """
    ## What it does
    Compares the per-channel statistics of `preprocess(sample)` with the reference preprocessing of the `pretrained` family (PyTorch and Keras), or with the raw pixels a Keras model that normalises its own input expects, and names the mistake that explains the difference.

    The reference comes from `pretrained`: torchvision classification and segmentation
    weights expect `ToTensor()` + `Normalize` with the ImageNet mean `(0.485, 0.456, 0.406)`
    and std `(0.229, 0.224, 0.225)` in RGB order (detection models: [0, 1], they normalise
    themselves; video models: Kinetics statistics); timm uses the statistics of the
    architecture's pretrained tag (Inception `(0.5,)*3` for `inception_v3`, OpenAI CLIP for
    `*clip*`/`.openai` tags, ImageNet for ResNets, ...); Keras applications use their
    `preprocess_input` mode (`caffe`: BGR, 0-255, mean subtracted: VGG, ResNet; `tf`:
    [-1, 1]: ResNetV2, Inception, Xception, MobileNet V1/V2, NASNet; `torch`: ImageNet:
    DenseNet) or raw 0-255 floats for the families with built-in preprocessing
    (EfficientNet, EfficientNetV2, ConvNeXt, MobileNetV3; built with
    `include_preprocessing=False` they expect what their inputs would otherwise be: [-1, 1]
    for MobileNetV3 and EfficientNetV2 S/M/L, ImageNet for ConvNeXt and EfficientNetV2
    B0-B3). An explicit spec works too:
    `pretrained={"mean": [...], "std": [...], "scale": 255, "channels": "RGB"}` or
    `{"mode": "caffe"}`.

    The probe applies that reference to the raw sample analytically (per-channel mean, std,
    minimum and maximum of the raw pixels, pushed through the reference's affine map) and
    measures the same statistics on `preprocess(sample)` (NCHW for tensors, NHWC when the last
    axis has 3 channels and axis 1 does not; numpy, torch or TensorFlow). Statistics, not
    pixels, are compared, so a resize or crop inside `preprocess` does not matter. When they
    differ, the probe predicts the statistics of a library of known mistakes and reports the
    one that fits: channels swapped (RGB/BGR), [0, 1] or raw [0, 255] instead of the expected
    range, [-1, 1] (Keras `tf` mode, Inception 0.5 statistics) instead of ImageNet's or the
    other way round, `caffe` mode, mean/std applied to 0-255 pixels, division by 255 twice,
    normalisation applied twice, another family's statistics (CLIP, ImageNet, DPN). When none
    fits, the per-channel affine map is fitted and reported as the `Normalize(mean, std)` it
    amounts to. A torchvision-style `Compose` (an object with a `.transforms` list holding a
    `Normalize` with `.mean`/`.std`) has its mean and std compared with the reference's
    directly as well.

    Keras specifics:
    - A `preprocess` that is a `keras.applications.<family>.preprocess_input` (recognised by
      its `__module__`, `keras.src.applications.mobilenet_v2` and the like, also from
      tf_keras), a `functools.partial` of one, `imagenet_utils.preprocess_input` with its
      `mode=` (default `caffe`), or a def/lambda whose code calls one, is named in the
      message together with the module and mode the `pretrained` family expects: "preprocess
      is keras.applications.mobilenet_v2.preprocess_input (mode 'tf': ...) but the resnet50
      weights expect keras.applications.resnet50.preprocess_input (mode 'caffe': ...)". The
      function is named only when the measured map is what that function does (a sample
      already in [0, 1] changes what it computes); `resnet50` and `resnet` share one function.
    - Rescaling/Normalization layers the model applies before its first layer with weights
      (EfficientNet, EfficientNetV2 and ConvNeXt with their preprocessing, MobileNetV3 with
      `include_preprocessing=True`, or a user's `Rescaling(1/255)` first layer) are measured
      as one per-channel map by calling them on constant images. When they normalise 0-255
      pixels, the model itself says it expects raw pixels: that is the reference even without
      `pretrained`. Scaling in `preprocess` on top of them (a `caffe`/`tf`/`torch`
      `preprocess_input`, `x / 255`, `x / 127.5 - 1`) is reported as "normalised twice",
      with the numbers: what `preprocess` outputs (range, mean, std), the model's layers and
      their scale/offset or mean/variance, what the first layer with weights (`stem_conv`)
      then sees and what raw pixels would give it. Evidence: `model_preprocessing`,
      `model_preprocessing_gain`/`_offset`, `first_layer`, `first_layer_sees_*`,
      `first_layer_expects_*`, and `preprocess_input`/`preprocess_input_module`/
      `preprocess_input_mode` when a Keras function was recognised.

    ## Why is this bad?
    Pretrained weights only work on inputs distributed like the data they were trained on.
    BGR instead of RGB, [0, 1] instead of normalised input, or another family's statistics
    shift and scale every first-layer activation: nothing raises, training still runs and
    the loss still falls, but fine-tuning starts from a damaged feature extractor and ends
    several points of accuracy below what the weights can give (or inference is simply
    wrong). In Keras the usual culprit is a `preprocess_input` imported from the wrong
    module (`mobilenet_v2`'s [-1, 1] for a caffe-mode ResNet50), or any scaling in front of
    an EfficientNet/ConvNeXt/MobileNetV3, whose own layers then squeeze the input into a
    sliver of the range (x / 255 before `Rescaling(1/255)`: the stem sees [0, 0.004]). The
    static rules (PRE001-PRE005) catch the mistakes they can read in the source; this probe
    measures what actually reaches the model, whatever the code looks like.

    ## Example
    ```python
    import numpy as np
    import torch
    from torchvision import models
    from auditor import Pipeline

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT).eval()

    def preprocess(batch):  # OpenCV images are BGR
        x = torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255
        return x  # not normalised: [0, 1]

    pipeline = Pipeline(model, preprocess=preprocess, sample=images, pretrained="torchvision.models.resnet50")

    # Keras: the preprocess_input of another family, and scaling before built-in preprocessing
    resnet = keras.applications.ResNet50(weights="imagenet")
    Pipeline(resnet, preprocess=keras.applications.mobilenet_v2.preprocess_input, sample=images,
             pretrained="keras.applications.resnet50")
    effnet = keras.applications.EfficientNetB0(weights="imagenet")
    Pipeline(effnet, preprocess=lambda b: b / 255.0, sample=images)
    ```

    ## Use instead
    ```python
    weights = models.ResNet50_Weights.DEFAULT
    model = models.resnet50(weights=weights).eval()
    preprocess = weights.transforms()  # resize, crop, [0, 1], ImageNet mean/std, RGB
    pipeline = Pipeline(model, preprocess=preprocess, sample=images, pretrained="torchvision.models.resnet50")

    Pipeline(resnet, preprocess=keras.applications.resnet50.preprocess_input, sample=images,
             pretrained="keras.applications.resnet50")
    Pipeline(effnet, preprocess=lambda b: b.astype("float32"), sample=images)  # raw 0-255
    ```

    ## Thresholds
    A channel differs when its mean is more than 0.3 output standard deviations away from
    the reference, or its standard deviation differs by more than about 10%
    (|ln(measured / expected)| > 0.1). A resize or center crop moves the statistics of
    natural images by a few percent (measured on the fixtures: at most 0.04 std in the mean
    and 4% in the std); the smallest mistake in the library, CLIP statistics instead of
    ImageNet's, changes the std by 13-18%. A candidate explains the difference when its
    predicted statistics are within the same tolerances. A `Normalize` read from a Compose
    differs when a mean is off by more than 0.01 or a std by more than 2%. A Keras model's
    own preprocessing layers count as expecting raw 0-255 pixels when they map [0, 255] onto
    a span between 0.3 and 30 per channel (`Rescaling(1/255)` 1, `Rescaling(1/127.5, -1)` 2,
    ConvNeXt's Normalization 4.4, EfficientNet with ImageNet weights about 9; a Normalization
    adapted on [0, 1] data spans about 1100 and makes no claim). Measured on the Keras
    fixtures: MobileNetV3Small fed `mobilenet_v2.preprocess_input` has its first conv see
    std 0.0016 instead of 0.205; EfficientNetB0 fed `imagenet_utils.preprocess_input(mode=
    "torch")` 0.0018 instead of 0.10; ResNet50 fed `mobilenet_v2.preprocess_input` gets an
    output std 0.5-1% of caffe mode's.

    ## References
    - torchvision `transforms/_presets.py` (`ImageClassification`), `models/inception.py`
      (`transform_input`).
    - timm `timm/data/constants.py`, `timm/data/config.py` (`resolve_data_config`).
    - Keras `keras/src/applications/imagenet_utils.py` (`preprocess_input` modes),
      `keras/src/applications/{efficientnet,efficientnet_v2,convnext,mobilenet_v3}.py`
      (built-in Rescaling/Normalization).
    """

    code = "PRE101"
    name = "preprocessing-mismatch"
    category = "preprocessing"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "{explanation}"
    fix = "Preprocess as the {model} weights expect: {recipe}."

    def probe(self, ctx: Any) -> Iterable[Finding]:
        if ctx.preprocess is None:
            return
        from auditor.dynamic.reference import keras_preprocess_input

        from . import _preprocessing_probe as pp

        reference = pp.reference_for(ctx)
        if reference is None:
            return
        ref, model = reference.spec, reference.model
        raw, raw_note = pp.raw_images(ctx.raw)
        if raw is None:
            return
        raw_stats = pp.channel_stats(raw, axis=3)
        measured = pp.channel_stats(ctx.inputs())
        if raw_stats is None or measured is None or measured.mean.size != 3:
            return
        expected = ref.expected_stats(raw_stats.mean, raw_stats.std, raw_stats.min, raw_stats.max)
        # judge the exact per-channel map where preprocess has one (robust to any resize or
        # crop), else the measured statistics with a looser std tolerance
        channel_map = pp.affine_map(ctx.preprocess, ctx.raw)
        if channel_map is not None:
            judged, std_tol, method = channel_map.stats(raw_stats), pp.STD_TOL, "per-channel map (constant images)"
        else:
            judged, std_tol, method = measured, pp.STATS_STD_TOL, "statistics"
        cmp = pp.compare(expected, judged, std_tol)

        # a keras.applications preprocess_input (itself, a partial, or called by a def) is
        # named only when what preprocess measurably does is what that function does
        keras_fn = keras_preprocess_input(ctx.preprocess)
        if keras_fn is not None and pp.compare(keras_fn.spec().expected_stats(raw_stats.mean, raw_stats.std), judged, std_tol).mismatch:
            keras_fn = None

        normalize_text = None
        evidence_extra: dict[str, Any] = {}
        norms = pp.find_normalize(ctx.preprocess)
        if len(norms) == 1 and ref.channels == "RGB":
            values = pp.normalize_values(norms[0])
            if values is not None:
                n_mean, n_std = values
                want_mean = ref.mean * (255.0 / ref.scale)
                want_std = ref.std * (255.0 / ref.scale)
                evidence_extra = {"normalize_mean": pp.rounded(n_mean), "normalize_std": pp.rounded(n_std)}
                off_mean = abs(n_mean - want_mean).max() > pp.NORMALIZE_MEAN_TOL
                off_std = abs(n_std / want_std - 1).max() > pp.NORMALIZE_STD_RTOL
                if off_mean or off_std:
                    found = pp.stats_name(n_mean, n_std)
                    found_text = f"the {found} statistics" if found else f"mean={pp._fmt(n_mean)}, std={pp._fmt(n_std)}"
                    normalize_text = (
                        f"Normalize in preprocess uses {found_text} but {model} weights expect "
                        f"mean={pp._fmt(want_mean)}, std={pp._fmt(want_std)} ({ref.expects})"
                    )
        if not cmp.mismatch and normalize_text is None:
            return

        fix = None
        if normalize_text is not None:
            explanation_key, text = "normalize", normalize_text
        else:
            found = pp.explain(ref, raw_stats, judged, model, std_tol)
            explanation_key, text = found.key, found.text
            if found.key == "affine" and found.spec is not None:
                evidence_extra["implied_mean"] = pp.rounded(found.spec.mean)
                evidence_extra["implied_std"] = pp.rounded(found.spec.std)
            in_model = reference.in_model
            if in_model is not None and in_model.expects_raw and ref.same_map(pp.mode_spec("builtin")) and found.key != "channel-order":
                explanation_key = "normalised-twice"
                text, twice_evidence = normalised_twice(in_model, judged, expected, keras_fn, found)
                evidence_extra.update(twice_evidence)
                fix = twice_fix(model, in_model)
            elif keras_fn is not None:
                explanation_key = "keras-module"
                text = module_text(keras_fn, ref, reference.family, model)
        if keras_fn is not None:
            evidence_extra["preprocess_input"] = keras_fn.label
            evidence_extra["preprocess_input_module"] = keras_fn.module
            evidence_extra["preprocess_input_mode"] = keras_fn.mode
        evidence = {
            "reference": f"{ref.name}: {ref.expects}",
            "expected_mean": pp.rounded(expected["mean"]),
            "measured_mean": pp.rounded(measured.mean),
            "expected_std": pp.rounded(expected["std"]),
            "measured_std": pp.rounded(measured.std),
            "expected_range": [round(float(expected["min"].min()), 3), round(float(expected["max"].max()), 3)],
            "measured_range": [round(float(measured.min.min()), 3), round(float(measured.max.max()), 3)],
            "mean_deviation_in_std": pp.rounded(cmp.mean_dev, 3),
            "std_ratio": pp.rounded(pp.np.exp(cmp.std_dev), 3),
            "layout": measured.layout,
            "method": method,
            "explanation": explanation_key,
        }
        evidence.update(evidence_extra)
        if raw_note:
            evidence["note"] = raw_note
        yield self.finding(ctx, "preprocess", evidence=evidence, fix=fix, explanation=text, model=model, recipe=recipe(ref, reference.family))


def expected_mode(ref: Any) -> str | None:
    """The Keras preprocess_input mode whose map the reference is, if any."""
    from auditor.dynamic.reference import mode_spec

    for mode in ("caffe", "tf", "torch", "builtin"):
        if ref.same_map(mode_spec(mode)):
            return mode
    return None


def module_text(keras_fn: Any, ref: Any, family: str | None, model: str) -> str:
    """"preprocess is keras.applications.mobilenet_v2.preprocess_input (mode 'tf': ...) but
    the resnet50 weights expect keras.applications.resnet50.preprocess_input (mode 'caffe': ...)"."""
    from auditor import knowledge
    from auditor.dynamic.reference import MODE_DOES

    if keras_fn.via == "called":
        subject = f"preprocess calls {keras_fn.label}"
    elif keras_fn.via == "functools.partial" and keras_fn.family != "imagenet_utils":
        subject = f"preprocess is a functools.partial of {keras_fn.label}"
    else:
        subject = f"preprocess is {keras_fn.label}"
    mode = expected_mode(ref)
    if family is not None and mode is not None and mode == knowledge.KERAS_FAMILIES[family][0]:
        if mode == "builtin":
            wants = f"keras.applications.{family} models normalise their input themselves and expect raw 0-255 pixels (keras.applications.{family}.preprocess_input is a pass-through)"
        else:
            wants = f"the {model} weights expect keras.applications.{family}.preprocess_input ({MODE_DOES[mode]})"
    else:
        wants = f"the {model} weights expect {ref.expects}"
        if mode is not None and mode != "builtin":
            wants += f" ({MODE_DOES[mode]})"
    return f"{subject} ({keras_fn.does}) but {wants}"


def normalised_twice(in_model: Any, produced: Any, expected: dict, keras_fn: Any, found: Any) -> tuple[str, dict]:
    """The message and evidence of outside scaling in front of a model that normalises its
    own input: what preprocess produces, what the model's layers then make of it, what the
    first layer with weights sees and what it would see on raw 0-255 pixels."""
    from . import _preprocessing_probe as pp

    if keras_fn is not None:
        how = f"with {keras_fn.label} ({keras_fn.does})"
    elif found.key == "affine" and found.spec is not None:
        how = f"with what amounts to Normalize(mean={pp._fmt(found.spec.mean)}, std={pp._fmt(found.spec.std)}) on [0, 1] pixels"
    elif found.spec is not None:
        how = f"(its output matches {found.spec.expects})"
    else:
        how = "itself"
    sees = in_model.apply(produced)
    wants = in_model.apply(expected)
    first = in_model.first_layer or "the first layer with weights"
    verb = "normalise" if len(in_model.layers) > 1 else "normalises"
    text = (
        f"normalised twice: preprocess already normalises the pixels {how}, giving range {_range(produced)}, "
        f"mean {_avg(produced.mean)}, std {_avg(produced.std)}; the model's own {in_model.text()} then "
        f"{verb} them again, so {first} sees range {_range(sees)}, mean {_avg(sees.mean)}, std {_avg(sees.std)} "
        f"where raw 0-255 pixels would give range {_range(wants)}, mean {_avg(wants.mean)}, std {_avg(wants.std)}"
    )
    evidence = {
        "model_preprocessing": [f"{name}: {desc}" for name, desc in in_model.layers],
        "model_preprocessing_gain": pp.significant(in_model.gain),
        "model_preprocessing_offset": pp.significant(in_model.offset),
        "first_layer": in_model.first_layer,
        "first_layer_sees_mean": pp.significant(sees.mean),
        "first_layer_sees_std": pp.significant(sees.std),
        "first_layer_sees_range": pp.significant([sees.min.min(), sees.max.max()]),
        "first_layer_expects_mean": pp.significant(wants.mean),
        "first_layer_expects_std": pp.significant(wants.std),
        "first_layer_expects_range": pp.significant([wants.min.min(), wants.max.max()]),
    }
    return text, evidence


def twice_fix(model: str, in_model: Any) -> str:
    layers = " and ".join(desc.split("(")[0] for _name, desc in in_model.layers)
    return (
        f"Feed {model} raw 0-255 float pixels (RGB) and let its own {layers} normalise them: drop the scaling in "
        "preprocess (preprocess_input of a caffe/tf/torch family, x / 255, x / 127.5 - 1); the family's own "
        "preprocess_input is a pass-through. Or remove those layers from the model (keras.applications: "
        "include_preprocessing=False where the family has the flag) and normalise once, outside."
    )


def _avg(values: Any) -> str:
    import numpy as np

    return f"{float(np.mean(values)):.3g}"


def _range(stats: Any) -> str:
    return f"[{float(stats.min.min()):.3g}, {float(stats.max.max()):.3g}]"


def recipe(ref: Any, family: str | None = None) -> str:
    """How to produce the reference preprocessing, in words a user can paste from."""
    import numpy as np

    from auditor import knowledge
    from auditor.dynamic.reference import MODE_DOES

    mode = expected_mode(ref)
    if family is not None and mode is not None and mode == knowledge.KERAS_FAMILIES[family][0]:
        if mode == "builtin":
            return f"raw 0-255 float pixels, RGB, no scaling: the model normalises them itself (keras.applications.{family}.preprocess_input is a pass-through)"
        return f"keras.applications.{family}.preprocess_input ({MODE_DOES[mode]}) on 0-255 RGB pixels"

    order = "RGB" if ref.channels == "RGB" else "BGR (reverse the channels)"
    if np.allclose(ref.mean, 0) and np.allclose(ref.std, 1):
        if abs(ref.scale - 1) < 1e-9:
            return f"float pixels in [0, 255], {order}, no scaling or normalisation"
        return f"pixels / {ref.scale:g}, {order}, no mean/std normalisation"
    if abs(ref.scale - 127.5) < 1e-9 and np.allclose(ref.mean, 1) and np.allclose(ref.std, 1):
        return f"x / 127.5 - 1 (range [-1, 1]), {order}"
    if abs(ref.scale - 1) < 1e-9 and np.allclose(ref.std, 1):
        return f"{order}, 0-255, subtract mean {[round(float(v), 3) for v in ref.mean]} (keras preprocess_input(mode='caffe'))"
    mean = [round(float(v), 4) for v in ref.mean * (255.0 / ref.scale)]
    std = [round(float(v), 4) for v in ref.std * (255.0 / ref.scale)]
    return f"ToTensor() (scale to [0, 1], {order}, NCHW) then Normalize(mean={mean}, std={std}), or the weights' own transforms()"
