"""INF102: a model handed over for inference or export while (part of) it is in training mode."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ModelLeftInTrainMode(DynamicRule):
    """
    ## What it does
    Flags a model handed over for inference or export while it, or some of its mode-dependent submodules, is still in training mode.

    Flags a model handed to the audit for inference or export (the pipeline has no
    optimizer) whose root or some submodules are in training mode as given, when that mode
    matters: a Dropout (any `_DropoutNd`, `DropPath`/`StochasticDepth`), a BatchNorm, an
    InstanceNorm with running statistics or a multi-layer RNN with dropout is among the
    training modules, or the model's output measurably changes between `model.train()` and
    `model.eval()` (custom modules that branch on `self.training`). A TorchScript module
    (`torch.jit.script`/`trace`, loaded from a `.pt` archive) saved in training mode is the
    same mistake frozen into a file: whoever runs it gets training behaviour unless they
    call `.eval()` themselves.

    Target: `<model>` when the root module is in training mode, otherwise the first
    (registration order, so the outermost) training submodule that contains a
    mode-dependent layer. Modules that stay in training mode even after `model.eval()` (an
    overridden `train()`/`eval()`) are left to INF101 and DET101, which measure what that
    does; `model.eval()` would not fix them.

    ## Why is this bad?
    `nn.Module` starts in training mode and `torch.no_grad()`/`torch.inference_mode()` do
    not change that (FRAMEWORK_FACTS §4). In training mode `nn.Dropout` zeroes a fraction
    `p` of the activations at random and scales the rest by `1/(1-p)` (§3.3), so the same
    input gives different predictions; BatchNorm normalises each batch with its own
    statistics, so a prediction depends on the other images in the batch, and a batch of
    one fails or degenerates, and it overwrites `running_mean`/`running_var` with the
    inference data (§3.2). `max_abs_output_change` in the evidence is the measured
    difference between the two modes on the sample.

    ## Example
    ```python
    model = torchvision.models.resnet50(weights="IMAGENET1K_V2")
    model.fc = nn.Linear(2048, 10)
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))
    pipeline = Pipeline(model, preprocess=weights.transforms(), sample=batch)  # still training
    ```

    ## Use instead
    ```python
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))
    model.eval()
    pipeline = Pipeline(model, preprocess=weights.transforms(), sample=batch)
    # export: torch.jit.script(model.eval()).save("model.pt")
    ```

    ## Thresholds
    Silent when no mode-dependent layer is in training mode and the output of the training
    pass equals the eval pass bit for bit; silent when the pipeline has an optimizer (a
    training pipeline is meant to be in training mode).

    ## References
    - FRAMEWORK_FACTS §3.2 (BatchNorm in training mode), §3.3 (`nn.Dropout` is active iff
      `self.training`), §4 (`no_grad`/`inference_mode` do not set eval mode; the
      `inference_mode` docs say `model.eval()` is still required).
    - PyTorch docs: `nn.Module.eval`, `torch.jit.save` (the module's `training` flag is
      saved with it).
    """

    code = "INF102"
    name = "model-left-in-train-mode"
    category = "inference-mutation"
    severity = Severity.WARNING
    message = "{what} is in training mode but the pipeline has no optimizer (inference/export): {layers} behave as in training"
    fix = "Call model.eval() before inference or export{script_hint}; call model.train() only in the training loop."

    def probe(self, ctx):
        import torch

        from ._inference_probe import ROOT, mode_dependent

        if ctx.optimizer is not None:
            return []
        training = ctx.state.training_modules()
        if not training:
            return []
        eval_record = ctx.eval_pass()
        still_training = {name for name, flag in eval_record.modes.items() if flag}
        fixable = [name for name in training if name not in still_training]
        if not fixable:
            return []
        modules = dict(ctx.model.named_modules(remove_duplicate=False))
        dependent = {name: mode_dependent(modules[name]) for name in fixable if name in modules}
        dependent = {name: why for name, why in dependent.items() if why}
        root_training = "" in fixable
        change = None
        if root_training and ctx.inputs() is not None:
            train_out = ctx.train_pass().output
            eval_out = eval_record.output
            if isinstance(train_out, torch.Tensor) and isinstance(eval_out, torch.Tensor):
                from auditor.dynamic.torch_state import bitwise_equal

                from ._inference_probe import max_abs_diff

                if not bitwise_equal(train_out, eval_out):
                    change = max_abs_diff(train_out, eval_out)[0]
                elif not dependent:
                    return []
        if not dependent and change is None:
            return []
        if root_training:
            target = ROOT
        else:
            target = next(
                (name for name in fixable if any(d == name or d.startswith(name + ".") for d in dependent)),
                None,
            )
            if target is None:
                return []
        kinds: dict[str, int] = {}
        for why in dependent.values():
            kinds[why] = kinds.get(why, 0) + 1
        layers = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "layers that branch on self.training"
        evidence = {"training_modules": len(fixable), "mode_dependent": layers}
        if dependent:
            names = list(dependent)
            evidence["first"] = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        if change is not None:
            evidence["max_abs_output_change"] = float(f"{change:.4g}") if change == change else change
        scripted = bool(getattr(ctx, "scripted", False))
        if scripted:
            evidence["torchscript"] = True
        what = ("the TorchScript model" if scripted else "the model") if root_training else f"submodule {target}"
        return [
            self.finding(
                ctx,
                target,
                evidence=evidence,
                what=what,
                layers=layers,
                script_hint=" (for TorchScript: script or trace after model.eval(), then save)" if scripted else "",
            )
        ]
