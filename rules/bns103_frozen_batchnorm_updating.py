"""BNS103: frozen BatchNorm layers whose running statistics still update in train mode."""

from __future__ import annotations

import math
from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule


class FrozenBatchnormUpdating(DynamicRule):
    """
    ## What it does
    Finds BatchNorm layers that belong to a frozen part of the model but whose stored
    statistics still change, or (Keras) would change, in the training computation.

    **PyTorch.** The probe calls `model.train()` (so an override of `train()` that puts norm
    layers back in eval mode, OpenMMLab's `norm_eval=True`, is honoured), runs the sample
    once and checks, per BatchNorm layer, that it ran with `training=True` and
    `track_running_stats=True` and that `running_mean`/`running_var` actually changed. A
    layer is frozen when its `weight` and `bias` have `requires_grad=False`, or, when the
    pipeline has an optimizer, when they are not in any of its param groups. Layers with
    `affine=False` are judged by the sibling module that feeds them (the convolution
    registered just before them). Never reported: `torchvision.ops.FrozenBatchNorm2d` and
    look-alikes (statistics are plain buffers), `track_running_stats=False`, `momentum=0`
    (statistics do not move), layers kept in eval mode by a `train()` override.

    **Keras.** A `BatchNormalization` layer with `trainable=False` runs in inference mode
    whatever `training` says, so two cases are measured, on a snapshot that is restored
    (variables, `trainable` flags, the layers' `call`), eagerly, without `fit()`:

    - *updating now*: in the training call `model(x, training=True)` (what `fit()` runs) a
      BatchNormalization layer normalises with batch statistics and moves
      `moving_mean`/`moving_variance` while the layer that feeds it has `trainable=False`
      (e.g. only the layers with a kernel were frozen), or while its own `gamma`/`beta`
      variables were set `trainable=False`;
    - *updating once unfrozen*: a frozen base (a nested model with `trainable=False`, or
      layers frozen one by one) whose BatchNormalization layers would run on batch
      statistics as soon as it is unfrozen for fine-tuning. The probe simulates the
      fine-tuning step: it sets the frozen base `trainable = True`, runs one training call
      (Dropout and other random layers off), and reports the BatchNormalization layers whose
      moving statistics moved, by how much (absolute, in stored standard deviations, and
      relative to the stored variance), how many batches replace half of the stored
      statistics at the layers' momentum, and how far the training call's output is from
      the inference call's. A base called from a subclassed model's `call()` with an
      explicit `training=False` passes (an explicit argument wins). In a functional or
      Sequential model, `base(inputs, training=False)` does **not** pass: Keras 3 gives
      every layer of the graph the outer call's `training` whenever that is not None, and
      `fit()` calls the model with `training=True` (measured with a real `fit()` under the
      TensorFlow and torch backends, Keras 3.15). When the model's `call()` passes
      `training=True` to the base, a second check shows that the base would then update
      even in inference calls. Not reported: a parent in which BatchNormalization layers
      are frozen on their own among trainable layers (the recommended fine-tuning setup is
      already applied there), `momentum=1.0`.

    When it fires:
    - updating now, the pipeline has an optimizer (given, or the compiled model's): **error**;
    - updating now, no optimizer, but the model mixes frozen and trainable parameters (a
      fine-tuning setup handed over without its optimizer): **warning**;
    - updating once unfrozen (Keras), while something in the model trains (an optimizer or
      a trainable layer, e.g. the new head): **warning**; nothing happens yet, but the
      fine-tuning step that usually follows will;
    - nothing trains (feature extraction, inference only): nothing.

    The target is the first such layer in call order (PyTorch module name, or qualified
    Keras layer name such as `base/bn1`); the evidence counts them, names the first few and
    gives the largest change of their statistics after one batch.

    ## Why is this bad?
    Freezing parameters does not freeze BatchNorm's statistics. In PyTorch,
    `requires_grad=False` (or leaving parameters out of the optimizer) stops gradient
    updates of `weight` and `bias` only; `running_mean` and `running_var` are buffers that
    every forward pass in training mode overwrites, and `model.train()` sets training mode
    on every submodule, the frozen backbone included. In Keras, only a BatchNormalization
    layer's own `trainable=False` keeps it in inference mode; freezing the convolutions
    around it does not, and unfreezing a base with `base.trainable = True` makes all its
    BatchNormalization layers trainable again. Either way the "frozen" backbone drifts
    towards the statistics of the new data set batch by batch (noisily with small batches)
    while its weights stay fixed; at inference the features no longer match what the
    pretrained layers and the new head were trained with. The Keras transfer-learning guide
    warns that these updates "will suddenly destroy what the model has learned".

    ## Example
    ```python
    model = torchvision.models.resnet50(weights="DEFAULT")
    for p in model.parameters():
        p.requires_grad = False
    model.fc = torch.nn.Linear(2048, 5)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)
    model.train()                       # every BatchNorm of the frozen backbone updates

    # Keras: the guide's model; in Keras 3 fit()'s training=True overrides training=False
    base = keras.applications.MobileNetV2(weights="imagenet", include_top=False, pooling="avg")
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    model = keras.Model(inputs, keras.layers.Dense(5)(base(inputs, training=False)))
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    # BNS103 (warning): 52 frozen BatchNormalization layers would update once unfrozen
    ```

    ## Use instead
    ```python
    class Net(torch.nn.Module):
        def train(self, mode=True):
            super().train(mode)
            for m in self.backbone.modules():   # keep the frozen statistics
                if isinstance(m, torch.nn.modules.batchnorm._BatchNorm):
                    m.eval()
            return self
    # or replace the backbone's BatchNorm with torchvision.ops.FrozenBatchNorm2d

    # Keras: when unfreezing for fine-tuning, keep BatchNormalization frozen
    base.trainable = True
    for layer in base.layers:
        if isinstance(layer, keras.layers.BatchNormalization):
            layer.trainable = False
    model.compile(optimizer=keras.optimizers.Adam(1e-5), loss="sparse_categorical_crossentropy")
    # or call the base from a subclassed model: self.base(x, training=False)
    ```

    ## Thresholds
    Any bit-level change of the stored statistics during the one training pass counts (the
    engine restores it afterwards). On the PyTorch fixtures (SmallCNN, momentum 0.1, a batch
    of 8 images) a frozen layer's running mean moves by up to about 0.03 and its running
    variance by up to about 0.05 after one batch. On the Keras fixtures (momentum 0.99,
    statistics calibrated on the same kind of images, batch of 8) the moving means move by
    about 0.0003 to 0.0005 stored standard deviations and the variances by 0.1 to 0.2 % per
    batch; half of the stored statistics are replaced after 69 batches (693 for
    MobileNetV2's momentum 0.999), and the training call's outputs differ from the
    inference call's by 0.02 to 0.1 for the small CNNs and 0.6 to 1.0 for MobileNetV2 at
    48x48 (top-1 agreement 0.25 to 0.63). A fine-tuning run repeats the update thousands
    of times, on data that is not the pretraining data.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn, PT-tut): `requires_grad=False` does not freeze the
      statistics; they are updated in `forward`, gated only on `self.training`.
    - FRAMEWORK_FACTS §3.2 (PT-docs-eval): `module.train()` is recursive.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn, MM-normeval): `FrozenBatchNorm2d`; `norm_eval=True`.
    - FRAMEWORK_FACTS §3.1 (K-bn, K-guide): Keras BatchNormalization updates only when called
      with `training=True` while `trainable`; setting `trainable` propagates to sublayers.
    - Keras 3 `keras/src/models/functional.py` (`operation_fn`): the outer call's `training`
      replaces the one a graph node was built with; keras-team/keras issue #20285 and PR
      #20298 (the guide now also says to set BatchNormalization `trainable = False` after
      unfreezing).
    """

    code = "BNS103"
    name = "frozen-batchnorm-updating"
    category = "batchnorm"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "{count} {noun}{s} {what} ({first}{more}){context}: {why}"
    fix = "{fix_text}"

    def probe(self, ctx: Any) -> Iterable[Finding]:
        from . import _batchnorm_probe as bn

        layers = ctx.batchnorm_layers()
        if not layers:
            return
        has_optimizer = ctx.optimizer is not None
        if not has_optimizer and not bn.has_trainable(ctx):
            return  # nothing trains: inference or feature extraction
        yield from self._updating(ctx, bn, layers, has_optimizer)
        if ctx.framework == "keras":
            yield from self._latent(ctx, bn, layers, has_optimizer)

    # -- frozen BatchNorm that updates in the training computation, now ----------------------
    def _updating(self, ctx: Any, bn: Any, layers: list, has_optimizer: bool) -> Iterable[Finding]:
        optimizer_ids = ctx.optimizer_params() if has_optimizer else None
        record = ctx.train_pass()
        changed = bn.statistic_changes(record)
        found = []
        reasons = set()
        for name, obs in record.batchnorm.items():  # call order
            module = ctx.module(name)
            if not (obs.training and obs.tracks) or not bn.is_updating_batchnorm(module) or name not in changed:
                continue
            why = bn.frozen_reason(ctx, name, module, optimizer_ids)
            if why is None:
                continue
            reasons.add(why)
            found.append(name)
        if not found:
            return
        keras = ctx.framework == "keras"
        evidence: dict[str, Any] = {"layers": len(found), "batchnorm_layers": len(layers), "first_layers": found[:3]}
        if keras:
            # the numbers from the training call with Dropout and other random layers off, so that the
            # output difference from the inference call is BatchNorm's
            evidence.update(_keras_numbers(ctx, bn, bn.keras_pass(ctx, "bns103.updating", training=True, capture=found, random_off=True), found))
        else:
            evidence.update(_changes(bn, changed, found, False))
            evidence["momentum"] = bn.momentum_of(ctx.module(found[0]))
        evidence["frozen_by"] = ", ".join(sorted(reasons))
        evidence["optimizer"] = type(ctx.optimizer).__name__ if has_optimizer else None
        if keras and has_optimizer:
            evidence["optimizer_from"] = ctx.optimizer_source
        severity = Severity.ERROR if has_optimizer else Severity.WARNING
        if keras:
            what = (
                f"inside a frozen part of the model still run{'s' if len(found) == 1 else ''} on batch statistics and "
                f"update{'s' if len(found) == 1 else ''} moving_mean/moving_variance in the training call "
                "(model(x, training=True), as fit() runs it)"
            )
            context = "" if has_optimizer else "; the pipeline has no optimizer, but the model mixes frozen and trainable layers"
            if "relative_output_difference" in evidence:
                context += f"; training-call outputs differ from inference by {evidence['relative_output_difference']:.2f} (relative)"
            why = (
                "only a BatchNormalization layer's own trainable=False puts it in inference mode; freezing the layers "
                "around it (or its gamma/beta) does not"
            )
            fix_text = (
                "Set trainable=False on these BatchNormalization layers too (a frozen BatchNormalization runs in "
                "inference mode whatever `training` says), then compile again; when fine-tuning, unfreeze the other "
                "layers only: `if not isinstance(layer, keras.layers.BatchNormalization): layer.trainable = True`"
            )
        else:
            what = f"with frozen parameters ({' / '.join(sorted(reasons))}) still update{'s' if len(found) == 1 else ''} running_mean/running_var in training mode"
            context = "" if has_optimizer else "; the pipeline has no optimizer, but the model mixes frozen and trainable parameters"
            why = "freezing parameters does not freeze BatchNorm statistics"
            fix_text = (
                "Keep the frozen BatchNorm layers in eval mode while training: override train() to call .eval() on them "
                "after super().train(mode) (as OpenMMLab's norm_eval=True does), or call .eval() on them after every "
                "model.train(), or replace them with torchvision.ops.FrozenBatchNorm2d"
            )
        yield self.finding(
            ctx,
            found[0],
            severity=severity,
            evidence=evidence,
            count=len(found),
            noun="BatchNormalization layer" if keras else "BatchNorm layer",
            s="" if len(found) == 1 else "s",
            what=what,
            first=", ".join(found[:3]),
            more=f" and {len(found) - 3} more" if len(found) > 3 else "",
            context=context,
            why=why,
            fix_text=fix_text,
        )

    # -- Keras: frozen BatchNormalization that would update once the base is unfrozen --------
    def _latent(self, ctx: Any, bn: Any, layers: list, has_optimizer: bool) -> Iterable[Finding]:
        frozen = [(name, layer) for name, layer in layers if not bool(layer.trainable) and bn.can_update(layer)]
        kept_frozen = set()  # parents where BatchNormalization is frozen on its own among trainable layers
        candidates = []
        for name, layer in frozen:
            neighbour = bn.keras_neighbour(ctx, name, layer)
            if neighbour is not None and bool(neighbour[1].trainable):
                kept_frozen.add(name.rpartition("/")[0])
            else:
                candidates.append(name)
        # the recommended fine-tuning setup (unfreeze the layers, keep BatchNormalization frozen) is already
        # applied in those parents: their frozen part is frozen on purpose, with the same care
        candidates = [name for name in candidates if name.rpartition("/")[0] not in kept_frozen]
        if not candidates:
            return
        roots = bn.frozen_roots(ctx, candidates)
        unfreeze = [layer for _, layer in roots]
        diagnostic = bn.keras_pass(ctx, "bns103.unfrozen_train", training=True, unfreeze=unfreeze, capture=candidates, random_off=True)
        changed = bn.statistic_changes(diagnostic.record)
        observed = diagnostic.record.batchnorm
        found = [name for name in candidates if name in changed and observed.get(name) is not None and observed[name].training]
        if not found:
            return  # called with an explicit training=False (from a subclassed model's call): stays in inference mode
        involved = [(root, layer) for root, layer in roots if any(name == root or name.startswith(root + "/") for name in found)]
        # does the base also run on batch statistics in the inference call (a call() passing training=True)?
        # Only code can force it: through functional/Sequential graphs alone training=False reaches every layer
        at_inference = []
        if not all(bn.graph_path(ctx, name) for name in found):
            inference = bn.keras_pass(ctx, "bns103.unfrozen_inference", training=False, unfreeze=unfreeze, random_off=True, batch=2)
            at_inference = [name for name in found if name in bn.statistic_changes(inference.record)]
        overridden = [root for root, layer in involved if bn.built_with_training_false(layer)]
        evidence: dict[str, Any] = {
            "layers": len(found),
            "batchnorm_layers": len(layers),
            "first_layers": found[:3],
            "unfrozen": [root for root, _ in involved][:3],
            **_keras_numbers(ctx, bn, diagnostic, found),
            "updates_at_inference": bool(at_inference),
        }
        if overridden:
            evidence["built_with_training_false"] = overridden[:3]
        evidence["optimizer"] = type(ctx.optimizer).__name__ if has_optimizer else None
        if has_optimizer:
            evidence["optimizer_from"] = ctx.optimizer_source
        from auditor.dynamic.keras_context import is_container

        containers = [root for root, layer in involved if is_container(layer)]
        if containers:
            owner, unfreeze_text = f"of `{containers[0]}`", f"`{containers[0]}.trainable = True`"
        else:  # frozen layer by layer (a flat model, or `for layer in base.layers: layer.trainable = False`)
            owner, unfreeze_text = "among the model's frozen layers", "`layer.trainable = True` on the frozen layers"
        context = (
            f"; simulated on a snapshot (one training call after {unfreeze_text}): in one batch the moving means "
            f"moved by up to {evidence['max_mean_change_sd']:g} standard deviations and the moving variances by up to "
            f"{evidence['max_variance_change_relative']:.1%} (momentum {evidence['momentum']:g}: half of the stored statistics "
            f"are replaced by the new data's after {evidence.get('batches_to_replace_half', '?')} batches)"
        )
        if "relative_output_difference" in evidence:
            context += f", and training-call outputs differ from inference by {evidence['relative_output_difference']:.2f} (relative)"
        if at_inference:
            context += "; the base is called with training=True, so they would update even in inference calls (predict, training=False)"
        if overridden:
            why = (
                f"`{overridden[0]}` is wired in with training=False, but in a functional or Sequential model Keras 3 passes "
                "the outer call's training=True (fit) to every layer of the graph, which overrides it"
            )
        elif at_inference:
            why = "the model's call() passes training=True to the base explicitly"
        elif containers:
            why = "the base is not called with training=False, so fit() passes training=True down to it"
        else:
            why = "fit() passes training=True to every layer, and only a BatchNormalization layer's own trainable=False keeps it in inference mode"
        fix_text = (
            f"Keep the BatchNormalization layers in inference mode when you unfreeze for fine-tuning: after {unfreeze_text}, "
            "set `layer.trainable = False` again on every BatchNormalization layer (then compile again), or call the base "
            "from a subclassed model's call() with an explicit training=False (an explicit argument wins; in a functional "
            "or Sequential model fit()'s training=True overrides a training=False given when the graph was built)"
        )
        yield self.finding(
            ctx,
            found[0],
            severity=Severity.WARNING,
            evidence=evidence,
            count=len(found),
            noun="frozen BatchNormalization layer",
            s="" if len(found) == 1 else "s",
            what=f"{owner} would update moving_mean/moving_variance once unfrozen for fine-tuning",
            first=", ".join(found[:3]),
            more=f" and {len(found) - 3} more" if len(found) > 3 else "",
            context=context,
            why=why,
            fix_text=fix_text,
        )


def _changes(bn: Any, changed: dict, found: list, keras: bool) -> dict:
    """The largest change of the stored mean and variance among `found`, named per framework."""
    mean = max((changed[n].get("mean", 0.0) for n in found if n in changed), default=0.0)
    var = max((changed[n].get("var", 0.0) for n in found if n in changed), default=0.0)
    if keras:
        return {"max_moving_mean_change": bn.rounded(mean), "max_moving_variance_change": bn.rounded(var)}
    return {"max_running_mean_change": bn.rounded(mean), "max_running_var_change": bn.rounded(var)}


def _keras_numbers(ctx: Any, bn: Any, diagnostic: Any, found: list) -> dict:
    """Which moving statistics a Keras diagnostic training call moved and by how much
    (absolute, and relative to the stored values), and how far its output is from the
    inference call's."""
    out = _changes(bn, bn.statistic_changes(diagnostic.record), found, True)
    moved = bn.moved(ctx, diagnostic, found)
    out["max_mean_change_sd"] = bn.rounded(max((m for m, _ in moved.values()), default=0.0))
    out["max_variance_change_relative"] = bn.rounded(max((v for _, v in moved.values()), default=0.0))
    out["moved"] = [f"{name}: mean {bn.rounded(m, 2)} sd, variance {v:.1%}" for name, (m, v) in list(moved.items())[:3]]
    momentum = bn.momentum_of(ctx.module(found[0]))
    out["momentum"] = momentum
    if momentum is not None and 0.0 < momentum < 1.0:
        # Keras keeps `momentum` of the stored value per update: half of it is replaced after this many batches
        out["batches_to_replace_half"] = int(round(math.log(0.5) / math.log(momentum)))
    gap = bn.output_gap(diagnostic.output, ctx.eval_pass().output)
    if gap is not None:
        out["relative_output_difference"] = bn.rounded(gap[0])
        if gap[1] is not None:
            out["top1_agreement"] = round(gap[1], 3)
    return out
