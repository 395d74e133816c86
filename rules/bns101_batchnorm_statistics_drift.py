"""BNS101: BatchNorm running statistics far from the statistics of the sample."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule


class BatchnormStatisticsDrift(DynamicRule):
    """
    ## What it does
    Measures, for every BatchNorm layer, how far the stored running mean and variance are
    from the statistics the sample actually produces at that layer in eval mode, and reports
    the model when at least one layer is far off (worst layer first).

    Per channel c of a layer (its own `eps`; eval-mode inputs recorded by a forward hook):

    - standardised mean shift `z_c = |batch_mean_c - running_mean_c| / sqrt(running_var_c + eps)`
      (clipped at 10 so that one dead channel cannot dominate);
    - log variance ratio `r_c = ln((batch_var_c + eps) / (running_var_c + eps))`.

    A layer has drifted when the channel mean of `z_c` reaches 1.0, or the channel mean of
    `|r_c|` reaches ln 4 = 1.386. Its score is the larger of the two, each divided by its
    threshold. One finding for the model; its target is the first drifted layer in call
    order, where the drift starts: a layer normalised with wrong statistics hands every
    later layer shifted inputs, so downstream layers drift too (often more) even when their
    own statistics are right. The evidence lists the worst layers by score and how many
    layers exceed the thresholds.

    Layers with `track_running_stats=False` keep no statistics and are skipped (they
    normalise with batch statistics in every mode). FrozenBatchNorm2d-style layers still hold
    statistics and are compared like any other. Layers that saw fewer than 8 values per
    channel (e.g. `BatchNorm1d` on a batch of 4) are skipped: their batch statistics are noise.
    Statistics that are NaN, infinite or negative are BNS104's.

    ## Why is this bad?
    In eval mode BatchNorm normalises with the running statistics it stored during
    training, not with the batch. If those statistics describe a different distribution
    than the data the model now sees (weights trained on other inputs, statistics
    re-estimated under another preprocessing, a checkpoint whose buffers were overwritten or
    corrupted), every later layer receives activations shifted by whole standard deviations
    and scaled by the wrong factor, and accuracy collapses in eval mode while training loss
    looked fine. When the first BatchNorm layer drifts most, the input itself is off: check
    the preprocessing (scale, mean/std, channel order) before re-estimating statistics.

    ## Example
    ```python
    import torch
    from auditor import Pipeline

    model = build_model()                      # BatchNorm statistics estimated on [0, 1] images
    model.eval()
    pipeline = Pipeline(model, preprocess=imagenet_normalize, sample=images, num_classes=10)
    # BNS101: bn2 mean shift 4.8 running standard deviations, variance ratio e^3
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
    ```

    ## Thresholds
    Measured on the fixtures (SmallCNN, statistics calibrated on ImageNet-normalised images,
    batches of 2 to 16 images 32x32): a representative sample gives mean z 0.003 to 0.04 and
    mean |ln ratio| 0.02 to 0.08 in every layer; statistics estimated on [0, 1] images fed
    ImageNet-normalised ones give mean z 3.1 / 4.8 and mean |ln ratio| 2.4 / 3.0; a layer whose
    running variance was multiplied by 25 gives |ln ratio| 3.2 and a mean shifted by two
    standard deviations gives z 2.0. The thresholds leave a margin of more than ten times the
    sampling noise of a clean batch of 8, and sit below the smallest corruption that changes
    predictions. Transfer learning to a new domain moves statistics too (a fraction of a
    standard deviation is common); the thresholds target shifts far beyond that.

    The verdict depends on the data: on a synthetic sample (no `--sample`) the finding is
    downgraded to info.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn): eval mode normalises with `running_mean`/`running_var`;
      `track_running_stats=False` uses batch statistics in both modes.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn): `FrozenBatchNorm2d` keeps statistics as plain buffers.
    - PyTorch `torch.nn.BatchNorm2d` documentation (PT-docs-bn).
    """

    code = "BNS101"
    name = "batchnorm-statistics-drift"
    category = "batchnorm"
    severity = Severity.WARNING
    data_dependent = True
    message = (
        "BatchNorm running statistics do not describe the sample: from {worst} on (the first layer over the "
        "thresholds, in call order) the stored mean is {mean_z} running standard deviations away from the sample's "
        "(mean over channels) and the variance off by a factor {var_factor}; {drifted} of {layers} BatchNorm layers "
        "exceed the thresholds (mean shift 1.0 sd, variance factor 4), worst {worst_layer}"
    )
    fix = (
        "Feed the model data prepared the way its BatchNorm statistics were estimated (check the preprocessing "
        "first, especially when the first BatchNorm layer drifts most), or re-estimate the running statistics on "
        "representative data (model.train() forward passes under torch.no_grad(), then model.eval())"
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
        )
