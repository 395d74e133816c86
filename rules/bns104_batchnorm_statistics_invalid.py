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


class BatchnormStatisticsInvalid(DynamicRule):
    """
    ## What it does
    Reads the BatchNorm running statistics in the tensors of the model (a live model or a
    state-dict file, no forward pass needed) and reports layers whose statistics cannot be
    right:

    - `running_mean` or `running_var` holding NaN or infinity;
    - a negative `running_var` (a variance cannot be negative; BatchNorm takes its square root);
    - in a model declared pretrained (`Pipeline(pretrained=...)` / `--pretrained`),
      statistics never updated: `running_mean` all 0, `running_var` all 1, and
      `num_batches_tracked` 0 or absent, exactly what a freshly constructed layer holds.
      Without a pretrained declaration this is how every new model starts, not a finding.
      If other BatchNorm layers of the model were updated, untouched layers after the last
      updated one (in state-dict order) are taken for a newly added head and not reported;
      untouched layers before it, or all layers untouched, are.

    One finding per kind of problem; the target is the module prefix of the first offending
    layer in state-dict order; the evidence counts the layers and names the first few.
    Layers with `track_running_stats=False` have no statistics and are not checked;
    FrozenBatchNorm2d-style layers (statistics as buffers, no `num_batches_tracked`) are.

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
    with, which in eval mode is the same as random features.

    ## Example
    ```python
    model = torchvision.models.resnet18()                    # no weights loaded
    state = torch.load("resnet18_finetuned.pth", weights_only=True)
    model.load_state_dict(state["model"], strict=False)      # keys start with "backbone.": nothing loads
    pipeline = Pipeline(model.eval(), pretrained="torchvision.models.resnet18", sample=images)
    # BNS104: bn1 never updated (running_mean 0, running_var 1) in a pretrained model
    ```

    ## Use instead
    ```python
    model = torchvision.models.resnet18()
    state = torch.load("resnet18_finetuned.pth", weights_only=True)
    state = {k.removeprefix("backbone."): v for k, v in state["model"].items()}
    model.load_state_dict(state, strict=True)                # raises on any key mismatch
    ```

    ## Thresholds
    None beyond exactness: NaN/inf are `not isfinite`; negative means `running_var < 0` in any
    channel; "never updated" means every element of `running_mean` is exactly 0.0 and every
    element of `running_var` exactly 1.0 (a layer that saw even one batch moves them by
    `momentum * (batch statistic - initial value)`, bits that practically never round back).

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn): running statistics are buffers initialised to 0 and 1,
      `num_batches_tracked` counts the updates; eval mode normalises with them.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn): `FrozenBatchNorm2d` has no `num_batches_tracked`.
    - `torch.nn.Module.load_state_dict(strict=False)` returns the missing and unexpected keys.
    """

    code = "BNS104"
    name = "batchnorm-statistics-invalid"
    category = "batchnorm"
    severity = Severity.ERROR
    needs = "tensors"
    message = "{count} BatchNorm layer{s} with {what} ({first}{more}){why}"
    fix = "{fix_text}"

    def probe(self, ctx: Any) -> Iterable[Finding]:
        from . import _batchnorm_probe as bn

        problems = bn.invalid_statistics(ctx.tensors, pretrained=bool(ctx.pretrained))
        for kind, layers in problems.items():
            if not layers:
                continue
            names = [layer["name"] for layer in layers]
            evidence: dict[str, Any] = {"problem": kind, "layers": len(layers), "first_layers": names[:3], "batchnorm_layers": problems.total}
            first = layers[0]
            for key in ("nan", "inf", "min_running_var", "negative_channels", "channels", "num_batches_tracked"):
                if key in first:
                    evidence[key] = first[key]
            if kind == "never-updated":
                evidence["pretrained"] = str(ctx.pretrained)
                why = (
                    f": the model is declared pretrained ({ctx.pretrained}) but "
                    + ("no BatchNorm layer holds loaded statistics" if len(layers) == problems.total else "these layers did not receive the checkpoint's statistics")
                )
                fix_text = (
                    "Load the pretrained weights into these layers: compare the checkpoint's keys with model.state_dict() "
                    "(prefixes such as 'module.' or 'backbone.'), load with strict=True, or re-estimate the statistics "
                    "on representative data if the layers are new"
                )
            else:
                why = ": eval-mode outputs downstream are NaN or unbounded"
                fix_text = (
                    "Reload a checkpoint saved before the statistics broke, or re-estimate them on representative data "
                    "(reset_running_stats(), model.train() forward passes under torch.no_grad(), model.eval()); find the "
                    "cause (diverging loss, fp16 overflow, a NaN batch)"
                )
            yield self.finding(
                ctx,
                first["name"],
                evidence=evidence,
                count=len(layers),
                s="" if len(layers) == 1 else "s",
                what=_KINDS[kind],
                first=", ".join(names[:3]),
                more=f" and {len(names) - 3} more" if len(names) > 3 else "",
                why=why,
                fix_text=fix_text,
            )
