"""PRE102: the preprocessed input is scaled or shifted far from what the first BatchNorm was calibrated on."""

from __future__ import annotations

import math
from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule

#: |ln(median std ratio)| above this is a scale problem: a factor of 2 either way
SCALE_TOL = math.log(2.0)
#: median |mean offset| (in running standard deviations) above this is an offset problem
OFFSET_TOL = 1.0


class InputOffBatchnormStatistics(DynamicRule):
    """
    ## What it does
    Without a `pretrained` family to compare with, checks the preprocessed sample against the statistics stored in the model itself: the first BatchNorm layer's running (PyTorch) or moving (Keras) mean and variance, and names the preprocessing mistake the difference points to.

    The probe reads the per-channel mean and variance of the first BatchNorm layer's input
    (call order) during the shared eval pass (PyTorch `model.eval()`, Keras
    `model(x, training=False)`) and compares them with the layer's stored statistics
    (`running_mean`/`running_var`; Keras `moving_mean`/`moving_variance` with the layer's
    `epsilon`): the per-channel scale ratio `sqrt(batch var / stored var)` and the mean
    offset `(batch mean - stored mean) / sqrt(stored var + eps)`. The first BatchNorm sees
    (nearly) a linear function of the input, so these ratios are the input's own scale and
    offset relative to the data the weights were calibrated on: feeding 0-255 pixels to a
    network calibrated on [0, 1] input gives a ratio near 255, 0-255 pixels where
    ImageNet-normalised input was expected about 60, [0, 1] instead of normalised input about
    0.25, normalised instead of [0, 1] input 2-4, Keras `tf` mode ([-1, 1]) where `caffe`
    mode was expected about 1/120. The finding names the likely cause from the ratio. Its
    target is the layer's name (qualified with "/" inside a nested Keras model:
    `base/bn1`). It runs only when `pretrained` is not given (PRE101 then compares with the
    reference preprocessing directly), and not for a Keras model whose own Rescaling/
    Normalization layers say it expects raw pixels (PRE101 judges that one too); it needs a
    BatchNorm layer with stored statistics that were ever estimated (a new layer's mean 0 /
    variance 1 is skipped), and depends on the sample being real data (on a synthetic
    sample it is reported as info).

    Relation to BNS101 (drift across all BatchNorm layers): this rule looks only at the
    first layer, whose input is the preprocessed image, and reads the difference as a
    preprocessing problem.

    ## Why is this bad?
    BatchNorm's running statistics are a record of the input distribution the weights were
    trained on. When the first layer sees inputs 255 times larger, or shifted by several
    standard deviations, every later activation is out of range: predictions are garbage in
    eval mode, and fine-tuning in train mode first overwrites the running statistics and
    then spends its first epochs re-learning what the pretrained weights already knew.

    ## Example
    ```python
    model = load_backbone()  # BatchNorm calibrated on x / 255 inputs
    pipeline = Pipeline(
        model,
        preprocess=lambda batch: torch.from_numpy(batch).permute(0, 3, 1, 2).float(),  # 0-255
        sample=images,
    )
    # Keras: a MobileNetV2 fine-tuned on tf-mode input, fed caffe-mode input
    Pipeline(keras.models.load_model("mobilenet_v2_finetuned.keras"),
             preprocess=keras.applications.resnet50.preprocess_input, sample=images)
    ```

    ## Use instead
    ```python
    pipeline = Pipeline(
        model,
        preprocess=lambda batch: torch.from_numpy(batch).permute(0, 3, 1, 2).float() / 255,
        sample=images,
    )
    Pipeline(keras.models.load_model("mobilenet_v2_finetuned.keras"),
             preprocess=keras.applications.mobilenet_v2.preprocess_input, sample=images)
    ```

    ## Thresholds
    Fires when the median over channels of the scale ratio is below 1/2 or above 2, or the
    median |mean offset| exceeds 1 running standard deviation. Measured on the fixtures
    (SmallCNN, BatchNorm calibrated in code, 8 images): correctly preprocessed samples give
    median ratios 0.86-0.99 (a bilinear resize lowers the spread a little) and median
    offsets below 0.06; 0-255 into a [0, 1] network 236, 0-255 into an ImageNet-normalised
    one 72, [0, 1] instead of normalised 0.28, [-1, 1] instead of normalised 0.41,
    normalised instead of [0, 1] 2.7, [0, 1] instead of 0-255 0.004; [-1, 1] instead of
    [0, 1] gives ratio 1.26 but offset 2.3, BGR instead of RGB offset 2.2. CLIP statistics
    instead of ImageNet's (ratio 0.75, offset 0.11) are too subtle for this rule; PRE101
    catches them when `pretrained` is given. Keras fixtures (moving statistics calibrated on
    the sample prepared the right way): 0-255 into a functional CNN calibrated on [0, 1] 255;
    [0, 1] into a Sequential CNN calibrated on `torch` mode 0.30; `tf` mode into a
    subclassed CNN calibrated on `caffe` mode 0.0078 (1/129); MobileNetV2 (alpha 0.35)
    calibrated on `tf` mode fed `caffe` mode 125; [0, 1] into a backbone nested as `base`
    calibrated on `caffe` mode 0.0052; clean twins exactly 1 (offset 0).
    """

    code = "PRE102"
    name = "input-off-batchnorm-statistics"
    category = "preprocessing"
    severity = Severity.WARNING
    data_dependent = True
    frameworks = ("torch", "keras")
    message = "the preprocessed input does not match the statistics {layer} was calibrated on: {what}; likely cause: {cause}"
    fix = "Preprocess exactly as the data the weights were trained on ({hint}); pass `pretrained=` to compare with a known family's preprocessing (PRE101)."

    def probe(self, ctx: Any) -> Iterable[Finding]:
        if ctx.pretrained is not None:
            return
        if not ctx.batchnorm_layers():
            return
        from . import _preprocessing_probe as pp

        if ctx.preprocess is not None and pp.reference_for(ctx) is not None:
            return  # a Keras model that normalises its own input: PRE101 compares with raw pixels

        record = ctx.eval_pass()
        measured = []
        for name, obs in record.batchnorm.items():
            stored = pp.stored_statistics(ctx, name)
            if stored is not None and stored.initial:
                return  # statistics never estimated (a model before training): nothing to compare with
            if not obs.tracks or stored is None or obs.mean is None or obs.var is None:
                continue
            mean, var = pp.to_numpy(obs.mean), pp.to_numpy(obs.var)
            if mean is None or var is None or mean.reshape(-1).shape != stored.mean.shape:
                continue
            mean, var = mean.astype(float).reshape(-1), var.astype(float).reshape(-1)
            valid = stored.var > 0
            if not bool(valid.any()):
                continue
            ratio = pp.np.sqrt(pp.np.maximum(var[valid], 1e-30) / stored.var[valid])
            offset = (mean[valid] - stored.mean[valid]) / pp.np.sqrt(stored.var[valid] + stored.eps)
            measured.append((name, ratio, offset))
            if len(measured) == 2:
                break
        if not measured:
            return
        name, ratio, offset = measured[0]
        median_ratio = pp.lower_median(ratio)
        median_offset = pp.lower_median(pp.np.abs(offset))
        scale_off = abs(math.log(max(median_ratio, 1e-30))) > SCALE_TOL
        shift_off = median_offset > OFFSET_TOL
        if not (scale_off or shift_off):
            return
        cause, hint = likely_cause(median_ratio, median_offset)
        parts = []
        if scale_off:
            parts.append(f"its input spread is {_times(median_ratio)} the stored one (median over channels)")
        if shift_off:
            parts.append(f"its input mean is {median_offset:.3g} running standard deviations off")
        evidence = {
            "layer": name,
            "median_std_ratio": _round(median_ratio),
            "std_ratio_range": [_round(float(ratio.min())), _round(float(ratio.max()))],
            "median_mean_offset_sd": _round(median_offset),
            "max_mean_offset_sd": _round(float(pp.np.abs(offset).max())),
            "channels": int(ratio.size),
            "threshold_std_ratio": [0.5, 2.0],
            "threshold_mean_offset_sd": OFFSET_TOL,
        }
        if len(measured) > 1:
            evidence["next_layer"] = measured[1][0]
            evidence["next_median_std_ratio"] = _round(pp.lower_median(measured[1][1]))
            evidence["next_median_mean_offset_sd"] = _round(pp.lower_median(pp.np.abs(measured[1][2])))
        yield self.finding(ctx, name, evidence=evidence, layer=name, what=" and ".join(parts), cause=cause, hint=hint)


def likely_cause(ratio: float, offset: float) -> tuple[str, str]:
    """(cause, fix hint) from the median scale ratio at the first BatchNorm and the offset."""
    if ratio > 20:
        if ratio > 130:
            return ("0-255 pixels fed to a network calibrated on [0, 1] input (the /255 or ToTensor step is missing)", "divide by 255")
        return ("0-255 pixels fed to a network calibrated on mean/std-normalised input (the /255 and Normalize steps are missing)", "scale to [0, 1], then Normalize(mean, std)")
    if ratio < 0.05:
        return ("input divided by 255 once too often, or a network calibrated on 0-255 input fed [0, 1]", "remove the extra /255")
    if ratio < 0.5:
        return ("[0, 1] or [-1, 1] input where mean/std-normalised input is expected (Normalize missing)", "add Normalize(mean, std) after scaling to [0, 1]")
    if ratio > 2:
        return ("mean/std-normalised input where [0, 1] input is expected, or normalised twice", "normalise once, as the weights were trained")
    return ("input shifted: wrong mean subtracted, [-1, 1] instead of [0, 1] (or back), or channels in the wrong order (BGR/RGB)", "check the mean subtraction and the channel order")


def _times(ratio: float) -> str:
    return f"{ratio:.3g}x" if ratio >= 1 else f"1/{1 / ratio:.3g} of"


def _round(value: float) -> float:
    return float(f"{value:.4g}")
