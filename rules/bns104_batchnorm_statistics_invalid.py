"""BNS104: BatchNorm running statistics that are NaN/inf, negative, or were never updated."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule

_KINDS = {
    "non-finite": "running statistics that are NaN or infinite",
    "negative-variance": "a negative running variance",
    "never-updated": "running statistics still at their initial values (mean 0, variance 1, num_batches_tracked 0)",
}


_KERAS_KINDS = {
    "non-finite": "moving statistics that are NaN or infinite",
    "negative-variance": "a negative moving_variance",
    "never-updated": "moving statistics still at their initial values (moving_mean 0, moving_variance 1)",
}


class BatchnormStatisticsInvalid(DynamicRule):
    """
    ## What it does
    Reads the BatchNorm statistics stored in the model (PyTorch `running_mean`/`running_var`
    of a live model or a state-dict file, no forward pass needed; Keras `moving_mean`/
    `moving_variance` of every `BatchNormalization` layer) and reports layers whose
    statistics cannot be right:

    - a stored mean or variance holding NaN or infinity;
    - a negative variance (a variance cannot be negative; BatchNorm takes its square root);
    - in a model declared pretrained (`Pipeline(pretrained=...)` / `--pretrained`),
      statistics never updated: mean all 0 and variance all 1 exactly (PyTorch: and
      `num_batches_tracked` 0 or absent), what a freshly constructed layer holds. Keras
      keeps no update counter: `moving_mean` 0 and `moving_variance` 1 exactly is the sign
      (a layer that saw one batch moves them by `(1 - momentum) * (batch statistic - initial
      value)`). Without a pretrained declaration this is how every new model starts, not a
      finding. If other BatchNorm layers of the model were updated, untouched layers after
      the last updated one (state-dict order; Keras: layer order, nested models expanded)
      are taken for a newly added head and not reported; untouched layers before it, or all
      layers untouched, are.

    One finding per kind of problem; the target is the first offending layer (PyTorch module
    prefix; qualified Keras layer name such as `base/bn1`); the evidence counts the layers
    and names the first few. PyTorch layers with `track_running_stats=False` have no
    statistics and are not checked; FrozenBatchNorm2d-style layers (statistics as buffers,
    no `num_batches_tracked`) and frozen Keras layers (`trainable=False`) are.

    ## Why is this bad?
    In eval mode BatchNorm computes `(x - running_mean) / sqrt(running_var + eps)`. A NaN or
    infinite statistic turns every output downstream into NaN; a negative variance below
    `-eps` does too, and one just above it divides by almost zero. Such values come from a
    training run that diverged (a NaN batch updates the buffers even when the loss is
    skipped), from mixed-precision overflow, or from a corrupted or hand-edited checkpoint.
    Statistics still at their initial values in a "pretrained" model mean the weights were
    not loaded into those layers (a key mismatch swallowed by `load_state_dict(strict=False)`,
    a `pretrained=True` forgotten, a prefix such as `module.` or `backbone.`): the model
    normalises with mean 0 and variance 1 instead of the statistics its weights were trained
    with, which in eval mode is the same as random features. In Keras the same happens with
    `keras.applications.X(weights=None)` (left in from an offline run),
    `load_weights(path, skip_mismatch=True)` against a file with other layer names, or
    weights loaded into a different copy of the base; `predict()` and every inference call
    use the moving statistics.

    ## Example
    ```python
    model = torchvision.models.resnet18()                    # no weights loaded
    state = torch.load("resnet18_finetuned.pth", weights_only=True)
    model.load_state_dict(state["model"], strict=False)      # keys start with "backbone.": nothing loads
    pipeline = Pipeline(model.eval(), pretrained="torchvision.models.resnet18", sample=images)
    # BNS104: bn1 never updated (running_mean 0, running_var 1) in a pretrained model

    # Keras: the download switched off, the family still declared
    model = keras.applications.MobileNetV2(weights=None, input_shape=(224, 224, 3))
    pipeline = Pipeline(model, pretrained="keras.applications.mobilenet_v2", sample=images)
    # BNS104: 52 BatchNormalization layers with moving_mean 0, moving_variance 1
    ```

    ## Use instead
    ```python
    model = torchvision.models.resnet18()
    state = torch.load("resnet18_finetuned.pth", weights_only=True)
    state = {k.removeprefix("backbone."): v for k, v in state["model"].items()}
    model.load_state_dict(state, strict=True)                # raises on any key mismatch

    # Keras: load the weights, and let a mismatch raise
    model = keras.applications.MobileNetV2(weights="imagenet", input_shape=(224, 224, 3))
    model.load_weights("finetuned.weights.h5")                  # no skip_mismatch=True
    ```

    ## Thresholds
    None beyond exactness: NaN/inf are `not isfinite`; negative means a stored variance < 0 in
    any channel; "never updated" means every element of the stored mean is exactly 0.0 and
    every element of the stored variance exactly 1.0 (a layer that saw even one batch moves
    them by `momentum * (batch statistic - initial value)` in PyTorch, `(1 - momentum) *
    (...)` in Keras, bits that practically never round back).

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn): running statistics are buffers initialised to 0 and 1,
      `num_batches_tracked` counts the updates; eval mode normalises with them.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn): `FrozenBatchNorm2d` has no `num_batches_tracked`.
    - `torch.nn.Module.load_state_dict(strict=False)` returns the missing and unexpected keys.
    - FRAMEWORK_FACTS §3.1 (K-bn) and §7: Keras `moving_mean` starts at 0 and
      `moving_variance` at 1, non-trainable variables updated only in training calls.
    """

    code = "BNS104"
    name = "batchnorm-statistics-invalid"
    category = "batchnorm"
    severity = Severity.ERROR
    needs = "tensors"
    frameworks = ("torch", "keras")
    message = "{count} {noun}{s} with {what} ({first}{more}){why}"
    fix = "{fix_text}"

    def probe(self, ctx: Any) -> Iterable[Finding]:
        from . import _batchnorm_probe as bn

        keras = ctx.framework == "keras"
        problems = bn.invalid_from_groups(bn.statistics_groups(ctx), pretrained=bool(ctx.pretrained))
        for kind, layers in problems.items():
            if not layers:
                continue
            names = [layer["name"] for layer in layers]
            evidence: dict[str, Any] = {"problem": kind, "layers": len(layers), "first_layers": names[:3], "batchnorm_layers": problems.total}
            first = layers[0]
            for key in ("nan", "inf", "min_running_var", "negative_channels", "channels", "num_batches_tracked"):
                if key in first:
                    evidence["min_moving_variance" if keras and key == "min_running_var" else key] = first[key]
            if kind == "never-updated":
                evidence["pretrained"] = str(ctx.pretrained)
                why = (
                    f": the model is declared pretrained ({ctx.pretrained}) but "
                    + ("no BatchNorm layer holds loaded statistics" if len(layers) == problems.total else "these layers did not receive the checkpoint's statistics")
                )
                fix_text = (
                    "Load the pretrained weights into these layers: weights='imagenet' (not None) for keras.applications, "
                    "or model.load_weights(path) without skip_mismatch and with matching layer names; re-estimate the "
                    "statistics on representative data if the layers are new"
                ) if keras else (
                    "Load the pretrained weights into these layers: compare the checkpoint's keys with model.state_dict() "
                    "(prefixes such as 'module.' or 'backbone.'), load with strict=True, or re-estimate the statistics "
                    "on representative data if the layers are new"
                )
            else:
                why = ": eval-mode outputs downstream are NaN or unbounded" if not keras else ": inference outputs (predict, training=False) downstream are NaN or unbounded"
                fix_text = (
                    "Reload weights saved before the statistics broke, or re-estimate them on representative data (assign "
                    "moving_mean 0 and moving_variance 1, then model(batch, training=True) calls without an optimizer step); "
                    "find the cause (diverging loss, float16 overflow, a NaN batch)"
                ) if keras else (
                    "Reload a checkpoint saved before the statistics broke, or re-estimate them on representative data "
                    "(reset_running_stats(), model.train() forward passes under torch.no_grad(), model.eval()); find the "
                    "cause (diverging loss, fp16 overflow, a NaN batch)"
                )
            yield self.finding(
                ctx,
                first["name"],
                evidence=evidence,
                count=len(layers),
                noun="BatchNormalization layer" if keras else "BatchNorm layer",
                s="" if len(layers) == 1 else "s",
                what=_KERAS_KINDS[kind] if keras else _KINDS[kind],
                first=", ".join(names[:3]),
                more=f" and {len(names) - 3} more" if len(names) > 3 else "",
                why=why,
                fix_text=fix_text,
            )
