"""LRT101: one real optimizer step moves the pretrained weights too far (measured)."""

from __future__ import annotations

from typing import Any, Iterator

from auditor.finding import Severity
from auditor.rule import DynamicRule

#: ||dw|| / ||w|| of one step on a pretrained layer: warning, error
WARN_RATIO = 1e-2
ERROR_RATIO = 1e-1
#: layers listed in the evidence
WORST = 3


def _fmt(x: float) -> str:
    return f"{x:.2g}" if x is not None else "n/a"


def _round_down(x: float) -> float:
    """One significant digit, rounded down (a suggested learning rate stays under the bar)."""
    import math

    if not x > 0 or math.isinf(x):
        return x
    exponent = math.floor(math.log10(x))
    mantissa = math.floor(x / 10**exponent + 1e-9)
    return float(f"{mantissa}e{exponent}")


class FineTuningUpdateTooLarge(DynamicRule):
    """
    ## What it does
    Takes one real step of the pipeline's optimizer on the sample and flags a pretrained layer whose weights moved by more than 1% of their norm in that single step.

    The probe trains as the user does. PyTorch: `model.train()`, a forward pass with
    gradients, the pipeline's loss (`Pipeline(loss=...)`, else `CrossEntropyLoss` on class
    logits) against the pipeline's `labels` (else the model's own eval-mode predictions),
    `backward()` and `optimizer.step()`. Keras: the pipeline's optimizer, else the one
    `model.compile()` stored (`optimizer_source`); `model(x, training=True)` as `fit()` calls
    it, run eagerly under `tf.GradientTape` (TensorFlow backend) or torch autograd on the
    variables' torch parameters (torch backend), the pipeline's or compiled loss (a loss
    object, function or name; else `SparseCategoricalCrossentropy`, `from_logits` unless the
    output is a softmax), then `optimizer.apply(grads, model.trainable_variables)`. Never
    `fit()`, `train_on_batch()` or `compile()`: they trace a `tf.function` (about 40 forward
    passes) and leave a compiled train function on the model. A Keras optimizer that is not
    built yet (a new one, or the one `compile()` stored before any `fit()`) is never built by
    the audit: the step runs on a clone (`type(opt).from_config(opt.get_config())`, its
    `iterations` set to the user's, so a `LearningRateSchedule` gives the current rate; with
    gradient accumulation the clone applies every step); a built one (resumed training: its
    moments shape the next step) steps itself and is restored. Labels are given to the loss
    in the encoding it reads (class ids one-hot encoded for `categorical_crossentropy` and
    the other way round; HED101 reports such a mismatch).

    For every module / layer with weights the optimizer updates it measures the relative
    update ||w_after - w_before|| / ||w_before|| over its own weights (PyTorch parameters,
    Keras trainable variables; BatchNormalization's gamma and beta count, its moving
    statistics do not). The head (the last layer that runs, usually the new classifier) is
    reported alongside but never judged: a new head is supposed to move fast. The target is
    the pretrained layer that moved most (Keras: qualified name, `base/conv2` for a layer of
    a nested model); the evidence lists the worst layers, the head's ratio, how similar the
    head's input features stay after the step (cosine, inference mode, BatchNorm statistics
    held fixed so that only the weight update counts) and the learning rate that would bring
    the worst layer's param group (Keras: the optimizer) under the warning bar (its lr x 1e-2
    / ratio, one significant digit, rounded down; the update scales linearly with the
    learning rate for SGD and Adam alike).

    SGD with momentum starts its momentum buffer at the first gradient (PyTorch `buf = g`,
    Keras `m = -lr g`), so a fresh optimizer's first step is lr x g while every later step
    with consistent gradients is up to lr x g x (1 - dampening) / (1 - momentum): for that
    case the ratio is scaled by that factor (10x at momentum 0.9, shown as `momentum_factor`;
    with Nesterov the first step is (1 + momentum) lr g and the factor 1 / ((1 - momentum)
    (1 + momentum))) so SGD 0.01 with momentum 0.9 and plain SGD 0.1 are judged alike, as
    FRAMEWORK_FACTS 5.2 does. A resumed optimizer whose momentum buffers are already filled
    is measured as is. Adam's first step moves every element by about lr (m/sqrt(v) =
    sign(g) after bias correction), its largest step per unit of lr: the measurement is
    taken as is.

    Without an optimizer the probe does nothing; it also stays silent when only the head is
    trained, when the model looks freshly initialised (every BatchNorm at its initial
    statistics and no `pretrained` family given: training from scratch wants large updates),
    or when no loss can be formed (no labels and no class logits); the last two add a note.
    Everything is restored afterwards: weights, gradients, BatchNorm statistics, the optimizer
    state the step created (Adam's `exp_avg`, `exp_avg_sq`, step counts, momentum buffers;
    Keras optimizer variables including `iterations`), the `_opt_called` flag an LR
    scheduler's wrapped `optimizer.step` sets, modes, trainable flags and RNGs.

    ## Thresholds
    On the worst pretrained layer, momentum-adjusted as above; "at or above" counts:

    | ratio per step | severity | meaning |
    | --- | --- | --- |
    | < 1e-2 | none | fine-tuning territory |
    | >= 1e-2 | warning | 10x the healthy update/weight ratio of ~1e-3 per step [CS231n] |
    | >= 1e-1 | error | one step rewrites a tenth of the layer: pretrained features are gone in tens of steps |

    Why these numbers: the usual health check for training (from scratch!) is an
    update-to-weight ratio of about 1e-3 per step [CS231n]; fine-tuning should stay at or below
    it, and an order of magnitude above is what a from-scratch learning rate produces on
    pretrained weights. They match the learning-rate policy of LRT001 (FRAMEWORK_FACTS 5.2):
    Adam's first step is about lr / rms(w), and pretrained convolution weights have rms
    0.01-0.1, so Adam 1e-3 (the framework default, 100x the Keras guide's 1e-5 [K-guide]) lands
    at 1e-2..1e-1 and Adam 1e-5 at 1e-4..1e-3. Measured by the fixtures of this rule
    (`fixtures/dynamic/LRT101/`) and `tests/test_dynamic_resnet.py`:

    | model (BatchNorm calibrated, new 10-class head) | Adam 1e-5 | Adam 1e-4 | Adam 1e-3 | Adam 1e-2 |
    | --- | --- | --- | --- | --- |
    | small CNN, worst layer | 2.1e-4 | 2.1e-3 | 2.1e-2 (warning) | 0.21 (error) |
    | ResNet-50, worst layer (layer4.0.conv2) | 4.8e-4 | 4.8e-3 | 4.8e-2 (warning) | 0.48 (error) |
    | Keras functional CNN (`fixtures/dynamic/LRT101/*keras*`), conv2 | 1.5e-4 | 1.5e-3 | 1.5e-2 (warning) | 0.15 (error) |
    | `keras.applications.MobileNet(alpha=0.25)` at 32x32, 128-channel depthwise layers | | | 2.4e-2 (warning) | |

    On the small CNN, SGD momentum 0.9 at 1e-3 (the PyTorch tutorial [PT-tut]) measures
    6.5e-4 after the momentum adjustment, at 0.1 (the from-scratch ImageNet rate) 6.5e-2;
    plain SGD 0.5 measures 3.2e-2. The Keras functional CNN (worst layer conv1 for SGD):
    plain SGD 0.1 1.5e-2 (TensorFlow) / 1.7e-2 (torch backend), SGD momentum 0.9 at 1e-3
    1.5e-3 and at 0.1 0.15 after the 10x adjustment (Nesterov: measured 2.8e-2 = 1.9x the
    plain first step, adjusted to the same 0.15). SGD's steps scale with the gradient, which depends on the
    weights and the data: on a randomly initialised (not pretrained) ResNet-50 the stem's
    gradients are far larger than on real pretrained weights, so judge SGD verdicts on real
    weights and a real sample (the rule is data-dependent: on a synthetic sample it reports at
    info level).

    ## Known problems
    One step is a sample of one: gradient noise on a small batch, gradient clipping or a
    warm-up schedule that the user applies outside `optimizer.step()` are not seen (a warm-up
    that has not started yet makes the step smaller than the steady state, clipping too).
    Optimizer step hooks run (an EMA hook updates its own copy, which is not restored). LBFGS
    and other optimizers whose `step()` needs a closure are not measured. Mixed precision
    (`GradScaler`) is not reproduced. Keras: a `LossScaleOptimizer` / `loss_scale_factor` is honoured
    (the loss is scaled, `apply()` unscales); callbacks (a `LearningRateScheduler` callback
    that sets the rate at the start of an epoch) do not run, so the rate read is the one the
    optimizer holds now. A Keras optimizer's `apply()` runs eagerly, one variable at a time:
    on the TensorFlow backend it costs a few milliseconds per variable (about 1 s for
    ResNet-50's 214, plus about 1 s to build a clone's slots), in addition to one forward and
    one backward pass.

    ## Why is this bad?
    Pretrained features are what fine-tuning is supposed to keep. A step that moves a
    pretrained layer by more than a percent of its norm, repeated for hundreds of steps,
    replaces those features with whatever the small fine-tuning set and the random new head
    push them towards: the model still trains, to a worse accuracy than the pretrained
    features allowed, and nothing reports it. The static LRT001 reads the learning rate from
    source; this probe measures what the optimizer really does to these weights (param
    groups, per-layer rates, schedulers and wrappers included).

    ## Example
    ```python
    model = torchvision.models.resnet50(weights="DEFAULT")
    model.fc = torch.nn.Linear(2048, 10)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-2)
    audit(Pipeline(model, preprocess=transform, sample=images, labels=labels, optimizer=optimizer,
                   pretrained="torchvision.models.resnet50"))

    base.trainable = True  # Keras: unfrozen for fine-tuning, optimizer left at the default
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy")
    ```

    ## Use instead
    ```python
    optimizer = torch.optim.Adam([
        {"params": [p for n, p in model.named_parameters() if not n.startswith("fc.")], "lr": 1e-5},
        {"params": model.fc.parameters(), "lr": 1e-3},
    ])

    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    ```

    ## References
    - [CS231n] Stanford CS231n notes, "Neural Networks Part 3", babysitting the learning
      process: ratio of update magnitudes to weight magnitudes, "somewhere around 1e-3".
    - FRAMEWORK_FACTS 5.1/5.2: [K-guide] Keras transfer-learning guide (Adam 1e-5 after
      unfreezing, new head with Adam 1e-3); [PT-tut] PyTorch transfer-learning tutorial (SGD
      1e-3, momentum 0.9); [BERT] Appendix A.3 (Adam 2e-5..5e-5); LRT001's thresholds.
    - `torch/optim/sgd.py` (first step: `momentum_buffer = clone(grad)`), `torch/optim/adam.py`
      (bias-corrected first step of size lr).
    - `keras/src/optimizers/sgd.py` (`m = momentum * m - lr * g`, Nesterov variant),
      `keras/src/optimizers/base_optimizer.py` (`apply`, `learning_rate` from a schedule at
      `iterations`); the Keras guide "Writing a training loop from scratch" (GradientTape).
    """

    code = "LRT101"
    name = "fine-tuning-update-too-large"
    category = "learning-rate"
    severity = Severity.WARNING
    data_dependent = True
    frameworks = ("torch", "keras")
    message = (
        "one {optimizer} step moves pretrained layer {layer} by {ratio} of its weight norm "
        "(lr {lr}{where}{adjusted}); {level} threshold {threshold}{others}{cosine}"
    )
    fix = (
        "Lower {lr_owner} to at most {suggest} (measured: that brings "
        "{layer} under {warn}{example}), or {alternative}"
    )

    def probe(self, ctx: Any) -> Iterator:
        if getattr(ctx, "optimizer", None) is None:
            return
        from . import _step_probe as step

        if not ctx.pretrained and step.looks_untrained(ctx):
            ctx.notes.append("LRT101 skipped: the model looks freshly initialised (BatchNorm statistics at their initial values, no pretrained family); large updates are expected when training from scratch")
            return
        try:
            result = step.take_step(ctx, feature_threshold=WARN_RATIO)
        except step.Skip as skip:
            if "only the head" not in str(skip):
                ctx.notes.append(f"LRT101 skipped: {skip}")
            return
        finally:
            ctx.restore()
        if not result.layers:
            return
        worst = result.layers[0]
        if worst.ratio < WARN_RATIO * (1 - 1e-9):
            return
        error = worst.ratio >= ERROR_RATIO * (1 - 1e-9)
        level, threshold = ("error", ERROR_RATIO) if error else ("warning", WARN_RATIO)
        suggest = _round_down(worst.lr * WARN_RATIO / worst.ratio)
        factor = result.momentum_factor.get(worst.group, 1.0)
        over = [u for u in result.layers if u.ratio >= WARN_RATIO * (1 - 1e-9)]
        keras = result.framework == "keras"
        evidence = {
            "optimizer": result.optimizer,
            "lr": worst.lr,
            "param_group": worst.group,
            "worst_layers": [f"{u.name}={_fmt(u.ratio)}" for u in result.layers[:WORST]],
            "worst_ratio": round(worst.ratio, 6),
            "measured_ratio": round(worst.measured, 6),
            "momentum_factor": round(factor, 3),
            "layers_over_threshold": f"{len(over)}/{len(result.layers)}",
            "head": result.head_name,
            "head_ratio": round(result.head.ratio, 6) if result.head is not None else None,
            "feature_cosine": round(result.cosine, 4) if result.cosine is not None else None,
            "feature_cosine_min": round(result.cosine_min, 4) if result.cosine_min is not None else None,
            "suggested_lr": suggest,
            "loss": f"{result.loss_name} {result.loss:.3g} on {result.targets}",
        }
        if keras:
            del evidence["param_group"]  # Keras optimizers have one learning rate
            evidence["optimizer_source"] = getattr(ctx, "optimizer_source", None) or "pipeline"
            if result.note:
                evidence["stepped_with"] = result.note
            where = ", from model.compile()" if evidence["optimizer_source"] == "model.compile()" else ""
            lr_owner = "the optimizer's learning_rate"
            example = f"; e.g. keras.optimizers.{result.optimizer}(learning_rate={suggest:g})"
            alternative = ("train the new head alone first "
                           "(base.trainable = False), then unfreeze and recompile with a small learning rate, as the Keras "
                           "transfer-learning guide does (Adam 1e-5).")
        else:
            where = f", param group {worst.group}"
            lr_owner = f"param group {worst.group}'s learning rate"
            example = ""
            alternative = ("train the new head alone first and then fine-tune with a separate, small learning rate for the "
                           "pretrained layers.")
        others = f"; {len(over) - 1} more layers over it" if len(over) > 1 else ""
        cosine = f"; head input features keep cosine {result.cosine:.3f} after one step" if result.cosine is not None else ""
        yield self.finding(
            ctx,
            worst.name,
            severity=Severity.ERROR if error else Severity.WARNING,
            evidence=evidence,
            optimizer=result.optimizer,
            layer=worst.name,
            ratio=_fmt(worst.ratio),
            lr=f"{worst.lr:g}",
            where=where,
            adjusted=f", first step x{factor:g} for momentum" if factor != 1.0 else "",
            level=level,
            threshold=f"{threshold:g}",
            others=others,
            cosine=cosine,
            suggest=f"{suggest:g}",
            warn=f"{WARN_RATIO:g}",
            lr_owner=lr_owner,
            alternative=alternative,
            example=example,
        )
