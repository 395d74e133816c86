"""BNS103: frozen BatchNorm layers whose running statistics still update in train mode."""

from __future__ import annotations

from typing import Any, Iterable

from auditor.finding import Finding, Severity
from auditor.rule import DynamicRule


class FrozenBatchnormUpdating(DynamicRule):
    """
    ## What it does
    Finds BatchNorm layers whose affine parameters are frozen but whose running statistics
    still change when the model is put in training mode as the user's training loop does.

    The probe calls `model.train()` (so an override of `train()` that puts norm
    layers back in eval mode, OpenMMLab's `norm_eval=True`, is honoured), runs the sample once
    and checks, per BatchNorm layer, that it ran with `training=True` and
    `track_running_stats=True` and that `running_mean`/`running_var` actually changed.

    A layer is frozen when its `weight` and `bias` have `requires_grad=False`, or, when the
    pipeline has an optimizer, when they are not in any of its param groups. Layers with
    `affine=False` are judged by the sibling module that feeds them (the convolution
    registered just before them). Never reported: `torchvision.ops.FrozenBatchNorm2d` and look-alikes (statistics
    are plain buffers), `track_running_stats=False`, `momentum=0` (statistics do not move),
    layers kept in eval mode by a `train()` override.

    When it fires:
    - the pipeline has an optimizer (it trains): **error**;
    - no optimizer, but the model mixes frozen and trainable parameters (a fine-tuning setup
      handed over without its optimizer): **warning**, as training is likely but not shown;
    - no optimizer and nothing trainable (feature extraction, inference only): nothing.

    The target is the first such layer in call order; the evidence counts them, names the
    first few and gives the largest change of their running statistics after one batch.

    ## Why is this bad?
    `requires_grad=False` (or leaving parameters out of the optimizer) stops gradient
    updates of BatchNorm's `weight` and `bias` only. `running_mean` and `running_var` are
    buffers that every forward pass in training mode overwrites, and `model.train()` sets
    training mode on every submodule, the frozen backbone included. The "frozen" backbone
    drifts towards the statistics of the new data set batch by batch (noisily with small
    batches), while its weights stay fixed; in eval mode the features no longer match what
    the pretrained layers and the new head were trained with.

    ## Example
    ```python
    model = torchvision.models.resnet50(weights="DEFAULT")
    for p in model.parameters():
        p.requires_grad = False
    model.fc = torch.nn.Linear(2048, 5)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)
    model.train()                       # every BatchNorm of the frozen backbone updates
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
    ```

    ## Thresholds
    Any bit-level change of `running_mean` or `running_var` during the one train-mode pass
    counts (the engine restores it afterwards). On the fixtures (SmallCNN, momentum 0.1, a
    batch of 8 images) a frozen layer's running mean moves by up to about 0.03 and its
    running variance by up to about 0.05 after one batch; a fine-tuning run repeats that
    thousands of times.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn, PT-tut): `requires_grad=False` does not freeze the
      statistics; they are updated in `forward`, gated only on `self.training`.
    - FRAMEWORK_FACTS §3.2 (PT-docs-eval): `module.train()` is recursive.
    - FRAMEWORK_FACTS §3.2 (TV-frozenbn, MM-normeval): `FrozenBatchNorm2d`; `norm_eval=True`.
    """

    code = "BNS103"
    name = "frozen-batchnorm-updating"
    category = "batchnorm"
    severity = Severity.ERROR
    message = (
        "{count} BatchNorm layer{s} with frozen parameters ({how}) still update{verb} running_mean/running_var in "
        "training mode ({first}{more}){context}: freezing parameters does not freeze BatchNorm statistics"
    )
    fix = (
        "Keep the frozen BatchNorm layers in eval mode while training: override train() to call .eval() on them "
        "after super().train(mode) (as OpenMMLab's norm_eval=True does), or call .eval() on them after every "
        "model.train(), or replace them with torchvision.ops.FrozenBatchNorm2d"
    )

    def probe(self, ctx: Any) -> Iterable[Finding]:
        from . import _batchnorm_probe as bn

        layers = ctx.batchnorm_layers()
        if not layers:
            return
        optimizer_ids = ctx.optimizer_params()
        has_optimizer = ctx.optimizer is not None
        if not has_optimizer and not any(p.requires_grad for p in ctx.model.parameters()):
            return  # nothing trains: inference or feature extraction
        record = ctx.train_pass()
        changed: dict[str, dict[str, float]] = {}
        for change in record.changes:
            leaf = change.name.rpartition(".")[2]
            if change.kind == "buffer" and leaf in ("running_mean", "running_var"):
                changed.setdefault(change.module, {})[leaf] = change.max_abs
        found = []
        reasons = set()
        for name in record.batchnorm:  # call order
            obs = record.batchnorm[name]
            module = ctx.module(name)
            if not (obs.training and obs.tracks) or not bn.is_updating_batchnorm(module) or name not in changed:
                continue
            params = bn.affine_params(module)
            if not params:
                params = _neighbour_params(ctx, name, module)
            if not params:
                continue
            why = _frozen(params, optimizer_ids if has_optimizer else None)
            if why is None:
                continue
            reasons.add(why)
            found.append(name)
        if not found:
            return
        if not has_optimizer:
            trainable = [p for p in ctx.model.parameters() if p.requires_grad]
            if not trainable:
                return
        max_mean = max(changed[n].get("running_mean", 0.0) for n in found)
        max_var = max(changed[n].get("running_var", 0.0) for n in found)
        momentum = getattr(ctx.module(found[0]), "momentum", None)
        evidence = {
            "layers": len(found),
            "batchnorm_layers": len(layers),
            "first_layers": found[:3],
            "max_running_mean_change": bn.rounded(max_mean),
            "max_running_var_change": bn.rounded(max_var),
            "momentum": momentum if momentum is None else float(momentum),
            "frozen_by": ", ".join(sorted(reasons)),
            "optimizer": type(ctx.optimizer).__name__ if has_optimizer else None,
        }
        severity = Severity.ERROR if has_optimizer else Severity.WARNING
        context = "" if has_optimizer else "; the pipeline has no optimizer, but the model mixes frozen and trainable parameters"
        yield self.finding(
            ctx,
            found[0],
            severity=severity,
            evidence=evidence,
            count=len(found),
            s="" if len(found) == 1 else "s",
            verb="s" if len(found) == 1 else "",
            how=" / ".join(sorted(reasons)),
            first=", ".join(found[:3]),
            more=f" and {len(found) - 3} more" if len(found) > 3 else "",
            context=context,
        )


def _frozen(params: list, optimizer_ids: set | None) -> str | None:
    """Why the parameters are frozen ("requires_grad=False" / "not in the optimizer"), or None."""
    if all(not p.requires_grad for p in params):
        return "requires_grad=False"
    if optimizer_ids is not None and all(id(p) not in optimizer_ids for p in params):
        return "not in the optimizer"
    return None


def _neighbour_params(ctx: Any, name: str, module: Any) -> list:
    """An affine=False BatchNorm has no parameters of its own: judge it by the sibling that
    feeds it (the last sibling with parameters registered before it), else the next one."""
    parent = ctx.module(name.rpartition(".")[0]) if "." in name else ctx.model
    before, after, seen = [], [], False
    for child in parent.children():
        if child is module:
            seen = True
            continue
        params = list(child.parameters(recurse=False))
        if params:
            (after if seen else before).append(params)
    if before:
        return before[-1]
    return after[0] if after else []
