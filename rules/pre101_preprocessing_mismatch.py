"""PRE101: the preprocessed sample does not look like what the pretrained weights expect."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding
from auditor.rule import DynamicRule
from auditor.finding import Severity


class PreprocessingMismatch(DynamicRule):
    """
    ## What it does
    Runs the pipeline's `preprocess` on the sample and compares the per-channel statistics of its output with those of the reference preprocessing of the `pretrained` family, and names the mistake that explains the difference.

    The reference comes from `pretrained`: torchvision classification and segmentation
    weights expect `ToTensor()` + `Normalize` with the ImageNet mean `(0.485, 0.456, 0.406)`
    and std `(0.229, 0.224, 0.225)` in RGB order (detection models: [0, 1], they normalise
    themselves; video models: Kinetics statistics); timm uses the statistics of the
    architecture's pretrained tag (Inception `(0.5,)*3` for `inception_v3`, OpenAI CLIP for
    `*clip*`/`.openai` tags, ImageNet for ResNets, ...); Keras applications use their
    `preprocess_input` mode (`caffe`: BGR, 0-255, mean subtracted; `tf`: [-1, 1]; `torch`:
    ImageNet) or raw 0-255 floats for models with built-in preprocessing (EfficientNet,
    ConvNeXt, MobileNetV3). An explicit spec works too:
    `pretrained={"mean": [...], "std": [...], "scale": 255, "channels": "RGB"}` or
    `{"mode": "caffe"}`.

    The probe applies that reference to the raw sample analytically (per-channel mean, std,
    minimum and maximum of the raw pixels, pushed through the reference's affine map) and
    measures the same statistics on `preprocess(sample)` (NCHW for tensors, NHWC when the last
    axis has 3 channels and axis 1 does not; numpy or torch). Statistics, not pixels, are
    compared, so a resize or crop inside `preprocess` does not matter. When they differ, the
    probe predicts the statistics of a library of known mistakes and reports the one that
    fits: channels swapped (RGB/BGR), [0, 1] or raw [0, 255] instead of the expected range,
    [-1, 1] (Keras `tf` mode, Inception 0.5 statistics) instead of ImageNet's or the other way
    round, `caffe` mode, mean/std applied to 0-255 pixels, division by 255 twice,
    normalisation applied twice, another family's statistics (CLIP, ImageNet, DPN). When none
    fits, the per-channel affine map is fitted and reported as the `Normalize(mean, std)` it
    amounts to. A torchvision-style `Compose` (an object with a `.transforms` list holding a
    `Normalize` with `.mean`/`.std`) has its mean and std compared with the reference's
    directly as well.

    ## Why is this bad?
    Pretrained weights only work on inputs distributed like the data they were trained on.
    BGR instead of RGB, [0, 1] instead of normalised input, or another family's statistics
    shift and scale every first-layer activation: nothing raises, training still runs and
    the loss still falls, but fine-tuning starts from a damaged feature extractor and ends
    several points of accuracy below what the weights can give (or inference is simply
    wrong). The static rules (PRE001-PRE005) catch the mistakes they can read in the source;
    this probe measures what actually reaches the model, whatever the code looks like.

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
    ```

    ## Use instead
    ```python
    weights = models.ResNet50_Weights.DEFAULT
    model = models.resnet50(weights=weights).eval()
    preprocess = weights.transforms()  # resize, crop, [0, 1], ImageNet mean/std, RGB
    pipeline = Pipeline(model, preprocess=preprocess, sample=images, pretrained="torchvision.models.resnet50")
    ```

    ## Thresholds
    A channel differs when its mean is more than 0.3 output standard deviations away from
    the reference, or its standard deviation differs by more than about 10%
    (|ln(measured / expected)| > 0.1). A resize or center crop moves the statistics of
    natural images by a few percent (measured on the fixtures: at most 0.04 std in the mean
    and 4% in the std); the smallest mistake in the library, CLIP statistics instead of
    ImageNet's, changes the std by 13-18%. A candidate explains the difference when its
    predicted statistics are within the same tolerances. A `Normalize` read from a Compose
    differs when a mean is off by more than 0.01 or a std by more than 2%.

    ## References
    - torchvision `transforms/_presets.py` (`ImageClassification`), `models/inception.py`
      (`transform_input`).
    - timm `timm/data/constants.py`, `timm/data/config.py` (`resolve_data_config`).
    - Keras `keras/src/applications/imagenet_utils.py` (`preprocess_input` modes).
    """

    code = "PRE101"
    name = "preprocessing-mismatch"
    category = "preprocessing"
    severity = Severity.ERROR
    message = "{explanation}"
    fix = "Preprocess as the {model} weights expect: {recipe}."

    def probe(self, ctx: Any) -> Iterable[Finding]:
        if ctx.pretrained is None or ctx.preprocess is None:
            return
        from auditor.dynamic.reference import family_label, reference_spec

        from . import _preprocessing_probe as pp

        try:
            ref = reference_spec(ctx.pretrained)
        except (ValueError, TypeError):
            return
        if ref is None or ref.mean.size != 3:
            return
        model = family_label(ctx.pretrained, ref)
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

        if normalize_text is not None:
            explanation_key, text = "normalize", normalize_text
        else:
            found = pp.explain(ref, raw_stats, judged, model, std_tol)
            explanation_key, text = found.key, found.text
            if found.key == "affine" and found.spec is not None:
                evidence_extra["implied_mean"] = pp.rounded(found.spec.mean)
                evidence_extra["implied_std"] = pp.rounded(found.spec.std)
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
        yield self.finding(ctx, "preprocess", evidence=evidence, explanation=text, model=model, recipe=recipe(ref))


def recipe(ref: Any) -> str:
    """How to produce the reference preprocessing, in words a user can paste from."""
    import numpy as np

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
