"""BNS101: BatchNorm running statistics far from the statistics of the sample."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule

#: what the stored statistics are called, per framework
STORED = {"torch": "running", "keras": "moving"}
#: how to re-estimate stored statistics, per framework (the fix's wording)
RECALIBRATE = {
    "torch": "model.train() forward passes under torch.no_grad(), then model.eval()",
    "keras": (
        "eager model(batch, training=True) calls on representative batches without an optimizer step, with the "
        "BatchNormalization layers trainable; at momentum 0.99 that takes a few hundred batches"
    ),
}


class BatchnormStatisticsDrift(DynamicRule):
    """
    ## What it does
    Measures, for every BatchNorm layer, how far its stored statistics are from the
    statistics the sample produces at that layer in inference mode, and reports the model
    when at least one layer is far off (worst layers listed first).

    The stored statistics are PyTorch's `running_mean`/`running_var` and Keras's
    `moving_mean`/`moving_variance`.

    Per channel c of a layer (its own `eps` / `epsilon`; the layer's inputs recorded during
    the inference pass: `model.eval()` for PyTorch, `model(x, training=False)` for Keras):

    - standardised mean shift `z_c = |batch_mean_c - running_mean_c| / sqrt(running_var_c + eps)`
      (clipped at 10 so that one dead channel cannot dominate);
    - log variance ratio `r_c = ln((batch_var_c + eps) / (running_var_c + eps))`.

    A layer has drifted when the channel mean of `z_c` reaches 1.0, or the channel mean of
    `|r_c|` reaches ln 4 = 1.386. Its score is the larger of the two, each divided by its
    threshold. One finding for the model; its target is the first drifted layer in call
    order (a qualified Keras layer name such as `base/bn1`, or a PyTorch module name), where
    the drift starts: a layer normalised with wrong statistics hands every later layer
    shifted inputs, so downstream layers drift too (often more) even when their own
    statistics are right. The evidence lists the worst layers by score and how many layers
    exceed the thresholds.

    Skipped: PyTorch layers with `track_running_stats=False` (they normalise with batch
    statistics in every mode); layers that saw fewer than 8 values per channel (e.g.
    `BatchNorm1d` or a Keras `BatchNormalization` after a `Dense` layer on a batch of 4):
    their batch statistics are noise; statistics still at their initial values (mean 0,
    variance 1: never estimated). FrozenBatchNorm2d-style layers and frozen Keras layers
    (`trainable=False`) still hold statistics and are compared like any other. Statistics
    that are NaN, infinite or negative are BNS104's.

    ## Why is this bad?
    In inference mode BatchNorm normalises with the statistics it stored during training,
    not with the batch: `model.eval()` in PyTorch; `predict()`, `model(x)` and any layer with
    `trainable=False` in Keras. If those statistics describe a different distribution than
    the data the model now sees (weights trained on other inputs, statistics re-estimated
    under another preprocessing, a Keras `preprocess_input` from the wrong application
    module, a checkpoint whose buffers were overwritten or corrupted), every later layer
    receives activations shifted by whole standard deviations and scaled by the wrong factor,
    and accuracy collapses at inference while training loss looked fine. When the first
    BatchNorm layer drifts most, the input itself is off: check the preprocessing (scale,
    mean/std, channel order) before re-estimating statistics.

    ## Example
    ```python
    import torch
    from auditor import Pipeline

    model = build_model()                      # BatchNorm statistics estimated on [0, 1] images
    model.eval()
    pipeline = Pipeline(model, preprocess=imagenet_normalize, sample=images, num_classes=10)
    # BNS101: bn2 mean shift 4.8 running standard deviations, variance ratio e^3

    # Keras: ResNet50 weights (trained on "caffe" inputs) fed [-1, 1] images
    model = keras.applications.ResNet50(weights="imagenet")
    pipeline = Pipeline(model, preprocess=keras.applications.mobilenet_v2.preprocess_input,
                        sample=images)
    # BNS101: from conv1_bn on, the stored variance is off by a factor of thousands
    ```

    ## Use instead
    ```python
    # Feed the data the statistics were estimated on (same preprocessing), or re-estimate
    # them on the target data before evaluating:
    model.train()
    with torch.no_grad():
        for batch in calibration_batches:          # a few hundred images of the target data
            model(preprocess(batch))
    model.eval()

    # Keras: the preprocess_input of the model's own family
    x = keras.applications.resnet50.preprocess_input(images)
    ```

    ## Thresholds
    Measured on the PyTorch fixtures (SmallCNN, statistics calibrated on ImageNet-normalised
    images, batches of 2 to 16 images 32x32): a representative sample gives mean z 0.003 to
    0.04 and mean |ln ratio| 0.02 to 0.08 in every layer; statistics estimated on [0, 1]
    images fed ImageNet-normalised ones give mean z 3.1 / 4.8 and mean |ln ratio| 2.4 / 3.0;
    a layer whose running variance was multiplied by 25 gives |ln ratio| 3.2 and a mean
    shifted by two standard deviations gives z 2.0. On the Keras fixtures (functional,
    Sequential and subclassed CNNs at 32x32 and MobileNetV2 at 48x48, statistics calibrated
    in code, batches of 8, TensorFlow and torch backends): the calibrated preprocessing gives
    mean z 0.002 to 0.04 and mean |ln ratio| 0.03 to 0.09 in the small CNNs, and up to 0.5 /
    0.95 in MobileNetV2's narrow last layers, which see only 32 values per channel;
    `resnet50.preprocess_input` ("caffe") fed to a network calibrated on "tf" or "torch" mode
    gives z 8.6 to 10 and |ln ratio| 8.2 to 10; "torch" mode fed to MobileNetV2 (a "tf"
    family) gives z 1.6 to 2.5 and |ln ratio| 1.8 to 1.9 at the first layer; a moving mean
    shifted by three standard deviations z 3.0; twenty training steps at Keras's default
    momentum 0.99 (statistics 18 % of the way from their initial values) z 1.0 to 1.7.
    Batches whose last layers see only 8 values per channel (MobileNetV2 at 32x32, batch 8)
    come close to the thresholds on clean data; audit with larger images or batches there.
    The thresholds leave a margin
    of more than ten times the sampling noise of a clean batch of 8, and sit below the
    smallest corruption that changes predictions. Transfer learning to a new domain moves
    statistics too (a fraction of a standard deviation is common); the thresholds target
    shifts far beyond that.

    The verdict depends on the data: on a synthetic sample (no `--sample`) the finding is
    downgraded to info.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn): eval mode normalises with `running_mean`/`running_var`;
      `track_running_stats=False` uses batch statistics in both modes.
    - FRAMEWORK_FACTS §3.1 (K-bn): Keras normalises with `moving_mean`/`moving_variance`
      unless called with `training=True` while `trainable`.
    - FRAMEWORK_FACTS §1.1 (K-imu): the "caffe", "tf" and "torch" modes of `preprocess_input`.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn): `FrozenBatchNorm2d` keeps statistics as plain buffers.
    - PyTorch `torch.nn.BatchNorm2d` documentation (PT-docs-bn).
    """

    code = "BNS101"
    name = "batchnorm-statistics-drift"
    category = "batchnorm"
    severity = Severity.WARNING
    data_dependent = True
    frameworks = ("torch", "keras")
    message = (
        "BatchNorm {stored} statistics do not describe the sample: from {worst} on (the first layer over the "
        "thresholds, in call order) the stored mean is {mean_z} {stored} standard deviations away from the sample's "
        "(mean over channels) and the variance off by a factor {var_factor}; {drifted} of {layers} BatchNorm layers "
        "exceed the thresholds (mean shift 1.0 sd, variance factor 4), worst {worst_layer}"
    )
    fix = (
        "Feed the model data prepared the way its BatchNorm statistics were estimated (check the preprocessing "
        "first, especially when the first BatchNorm layer drifts most), or re-estimate the {stored} statistics on "
        "representative data ({recalibrate})"
    )

    def probe(self, ctx: Any) -> Iterable[Finding]:
        import math

        from . import _batchnorm_probe as bn

        drifts = bn.layer_drifts(ctx)
        drifted = bn.worst_first([d for d in drifts if d.drifted])
        if not drifted:
            return
        first = bn.origin(drifts)
        worst = first
        evidence = {
            "layer": first.name,
            "mean_shift_sd": bn.rounded(worst.mean_z),
            "max_shift_sd": bn.rounded(worst.max_z),
            "log_var_ratio": bn.rounded(worst.log_var_signed),
            "abs_log_var_ratio": bn.rounded(worst.log_var),
            "channels": worst.channels,
            "values_per_channel": worst.count,
            "layers_over_threshold": len(drifted),
            "layers_measured": len(drifts),
            "worst_layers": [f"{d.name} ({bn.rounded(d.score)})" for d in drifted[:3]],
            "worst_layer": drifted[0].name,
            "threshold_mean_shift_sd": bn.Z_THRESHOLD,
            "threshold_abs_log_var_ratio": round(bn.LOG_VAR_THRESHOLD, 3),
        }
        factor = math.exp(worst.log_var)
        yield self.finding(
            ctx,
            worst.name,
            evidence=evidence,
            worst=worst.name,
            mean_z=f"{worst.mean_z:.2f}",
            var_factor=f"{factor:.1f}",
            drifted=len(drifted),
            layers=len(drifts),
            worst_layer=drifted[0].name,
            recalibrate=RECALIBRATE[ctx.framework],
            stored=STORED[ctx.framework],
        )
