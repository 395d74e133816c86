"""BNS102: the model's outputs differ a lot between train mode and eval mode."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule

from .bns101_batchnorm_statistics_drift import RECALIBRATE, STORED

#: ||train - eval|| / ||eval|| at which the gap is reported on its own
REL_THRESHOLD = 0.5
#: top-1 agreement below which the gap is reported when the relative difference is >= REL_FLOOR
AGREEMENT_THRESHOLD = 0.5
REL_FLOOR = 0.3
#: the two computations compared, per framework (message wording)
MODES = {"torch": "train and eval mode", "keras": "the training call (training=True, as fit() runs it) and the inference call (training=False)"}
FREEZE = {"torch": ": .eval() on its layers", "keras": ": trainable=False on the BatchNormalization layers"}
#: batches smaller than this cannot separate BatchNorm's statistics from sampling noise
MIN_BATCH = 4


class BatchnormTrainEvalGap(DynamicRule):
    """
    ## What it does
    Reports a model whose outputs on the same sample differ a lot between its training and
    its inference computation because BatchNorm's stored statistics do not match the batch
    statistics.

    PyTorch: the sample runs in train mode (`model.train()`, as the user's training loop sets
    it, overrides of `train()` honoured) and in eval mode. Keras: it runs in the training
    call `model(x, training=True)` (what `fit()` does) and in the inference call
    `model(x, training=False)` (what `predict()` does), eagerly, on a snapshot. The gap is
    reported when the relative difference `||train - eval|| / ||eval||` reaches 0.5, or it
    reaches 0.3 while fewer than half of the samples keep their top-1 class. Only BatchNorm
    layers that normalise with batch statistics in the training computation and with stored
    statistics at inference can cause the gap (in Keras: layers that are `trainable` and
    receive `training=True`; a frozen BatchNormalization runs in inference mode in both), so
    the probe runs only when there is at least one; a second pass with just those layers on
    batch statistics and everything else in inference mode (Dropout off, functional or not)
    confirms that the gap is BatchNorm's before anything is reported. Not judged when one of
    those layers still holds its initial statistics (mean 0, variance 1, nothing tracked): a
    new head or a model before training has a gap by construction, which training closes
    (BNS104 reports such layers in a pretrained model).

    The target is where the mismatch starts among the BatchNorm layers that run on batch
    statistics in the training computation: the first of them (call order) whose stored
    statistics are over BNS101's drift thresholds on the inference pass, else the one with
    the highest drift score; `<model>` when none could be scored (e.g. all sampled with too
    few values). Keras targets are qualified layer names (`base/bn1`).

    ## Why is this bad?
    A model should compute nearly the same function in both modes when its stored
    statistics match the data: BatchNorm's batch statistics are then an unbiased estimate
    of the stored ones. A large gap means the model that was trained (batch statistics) is
    not the model that is evaluated or deployed (stored statistics): validation accuracy
    collapses after `model.eval()` or in `predict()`/`evaluate()` while `fit()`'s training
    accuracy looked fine, or predictions flip between modes. Typical causes: stored
    statistics from another distribution or preprocessing, statistics that never converged
    (momentum, too few steps; Keras's default momentum 0.99 needs hundreds of steps), batches
    of one or two during training, or a checkpoint whose statistics were not loaded.

    ## Example
    ```python
    model = build_model()
    model.bn2.running_var.mul_(25)   # statistics from another run / data set
    pipeline = Pipeline(model.eval(), preprocess=preprocess, sample=images, num_classes=10)
    # BNS102: train/eval relative difference 1.6, top-1 agreement 0.0

    # Keras: statistics calibrated on [-1, 1] inputs, fed "caffe" ones
    pipeline = Pipeline(keras_model, preprocess=keras.applications.resnet50.preprocess_input,
                        sample=images)
    # BNS102: training call (fit) and inference call (predict) differ by 1.0
    ```

    ## Use instead
    ```python
    # Re-estimate the running statistics on representative data, then evaluate in eval mode:
    model.train()
    with torch.no_grad():
        for batch in calibration_batches:
            model(preprocess(batch))
    model.eval()
    # Keras: feed the preprocessing the statistics were estimated with, or re-estimate them
    # with model(batch, training=True) calls (no optimizer step) on representative batches
    ```

    ## Thresholds
    Measured on the PyTorch fixtures (SmallCNN with statistics calibrated on the sample's
    distribution): batches of 2, 4, 8 and 16 images give relative differences of 0.07-0.10,
    0.07, 0.05-0.06 and 0.03-0.05, with top-1 agreement 0.875-1.0 (a random-weight head has
    near-tied logits). Statistics from another distribution give 0.96 (agreement 0.0); one
    layer's variance scaled by 25 gives 1.6; a mean shifted by two standard deviations 1.8.
    On the Keras fixtures (batch of 8 or 16, 32x32, TensorFlow and torch backends), with
    Dropout separated out: calibrated models give 0.03-0.10 (top-1 agreement 1.0; with
    Dropout 0.5 left on the full training call differs by 0.7-1.3, which the diagnostic
    pass removes); "caffe" inputs for statistics estimated on "tf" or "torch" ones give
    1.0; one moving variance scaled by 25 gives 3.7; a moving mean shifted by two standard
    deviations 0.83-0.92; twenty training steps at momentum 0.99 0.78-0.81.
    Small batches widen the clean gap (batch statistics get noisy), so batches smaller than
    4 are not judged, and the evidence records the batch size. The verdict depends on the
    data: on a synthetic sample (no `--sample`) the finding is downgraded to info.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn, PT-docs-eval): train mode normalises with batch statistics
      and updates the running ones; eval mode uses the running statistics; `train()` is recursive.
    - FRAMEWORK_FACTS §3.1 (K-bn) and §4 (K-trainers): Keras uses batch statistics only when
      called with `training=True` while `trainable`; `fit()` passes `training=True`,
      `predict()`/`evaluate()` pass False.
    - FRAMEWORK_FACTS §3.3: Dropout is active iff training (separated out by the
      diagnostic pass).
    """

    code = "BNS102"
    name = "batchnorm-train-eval-gap"
    category = "batchnorm"
    severity = Severity.WARNING
    data_dependent = True
    frameworks = ("torch", "keras")
    message = (
        "the model computes a different function in {modes}: on the same sample the outputs differ by "
        "{rel} (||train - eval|| / ||eval||){agreement_text}; BatchNorm's {stored} statistics (mismatch starting at {layer}) "
        "do not match the batch statistics"
    )
    fix = (
        "Make the {stored} statistics match the data the model sees: the same preprocessing as when they were "
        "estimated, or re-estimate them on representative data ({recalibrate}); train with batches large enough "
        "for BatchNorm (or freeze it{freeze})"
    )

    def probe(self, ctx: Any) -> Iterable[Finding]:
        from . import _batchnorm_probe as bn

        batch_layers = bn.batchnorm_in_train_mode(ctx)
        if not batch_layers or any(bn.is_initial(ctx.module(name)) for name in batch_layers):
            return  # no BatchNorm on batch statistics, or a layer never trained yet (new head, model before training)
        eval_out = ctx.eval_pass().output
        train_out = ctx.train_pass().output
        gap = bn.output_gap(train_out, eval_out)
        if gap is None:
            return
        batch = bn.batch_size(eval_out)
        if batch < MIN_BATCH:
            return
        rel, agreement = gap
        if not _is_gap(rel, agreement):
            return
        evidence: dict[str, Any] = {}
        # confirm with BatchNorm alone in train mode (Dropout, functional or not, stays off)
        isolated = bn.output_gap(bn.gap_without_dropout(ctx), eval_out)
        if isolated is None:
            return
        if abs(isolated[0] - rel) > 1e-6:
            evidence["relative_difference_full_train_mode"] = bn.rounded(rel)
        rel, agreement = isolated
        if not _is_gap(rel, agreement):
            return
        in_train = set(batch_layers)
        first = bn.origin([d for d in bn.layer_drifts(ctx) if d.name in in_train])
        ranked = [first] if first is not None else []
        target = first.name if first is not None else "<model>"
        evidence = {
            "relative_difference": bn.rounded(rel),
            **({"top1_agreement": round(agreement, 3)} if agreement is not None else {}),
            **evidence,
            "batch_size": batch,
            "batchnorm_layers_on_batch_stats": len(batch_layers),
        }
        if ranked:
            evidence["target_mean_shift_sd"] = bn.rounded(ranked[0].mean_z)
            evidence["target_abs_log_var_ratio"] = bn.rounded(ranked[0].log_var)
        evidence["threshold_relative_difference"] = REL_THRESHOLD
        if agreement is None:
            agreement_text = ""
        elif agreement < 1.0:
            agreement_text = f" and only {agreement:.0%} of the samples keep their top-1 class"
        else:
            agreement_text = " (every sample keeps its top-1 class, but the scores move)"
        yield self.finding(
            ctx,
            target,
            evidence=evidence,
            rel=f"{rel:.2f}",
            agreement_text=agreement_text,
            layer=target,
            modes=MODES[ctx.framework],
            stored=STORED[ctx.framework],
            recalibrate=RECALIBRATE[ctx.framework],
            freeze=FREEZE[ctx.framework],
        )


def _is_gap(rel: float, agreement: float | None) -> bool:
    if rel >= REL_THRESHOLD:
        return True
    return agreement is not None and agreement < AGREEMENT_THRESHOLD and rel >= REL_FLOOR
