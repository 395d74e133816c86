"""HED104: the model outputs NaN or infinity."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class NonFiniteOutput(DynamicRule):
    """
    ## What it does
    Reports NaN or infinite values in the model's output, and the first module that produces them.

    Reports NaN or infinite values in the model's output on the eval pass, and finds where
    they come from with one more traced pass (only when some were found): forward hooks
    count non-finite values in each module's input and output, and the target is the first
    module, in call order, whose output is non-finite while its input is finite. When the
    input of that call is already non-finite, the target is the enclosing module (`<model>`
    for the root) whose own forward code produced them; when the model input itself holds
    NaN/inf the target is `preprocess` (or `<model>` without a preprocess function). The
    evidence says whether the culprit's own parameters or buffers hold non-finite values.

    ## Why is this bad?
    One NaN spreads to every prediction, metric and gradient it touches: `argmax` of a NaN
    row is arbitrary, and a NaN loss makes every parameter NaN after the next step. Typical
    causes: weights that diverged during training (a learning rate too high, fp16
    overflow) and were saved, a BatchNorm with negative or NaN `running_var`, `log(0)`,
    `sqrt` of a negative number, division by a zero norm, or an input that was never
    cleaned.

    ## Example
    ```python
    class Net(nn.Module):
        def forward(self, x):
            z = self.fc(x)
            return z / z.norm(dim=1, keepdim=True).clamp(max=0)  # divides by 0
    ```

    ## Use instead
    ```python
    class Net(nn.Module):
        def forward(self, x):
            z = self.fc(x)
            return z / z.norm(dim=1, keepdim=True).clamp(min=1e-6)  # F.normalize(z, dim=1)
    ```

    ## Thresholds
    Any NaN or +/-inf value. Evidence: `nan`, `inf`, `numel`, `localised`, and
    `nonfinite_parameters` of the target module.

    ## References
    - PyTorch docs: `torch.isfinite`, `torch.autograd.detect_anomaly` (the training-time
      counterpart), `F.normalize` (clamps the norm by `eps`).
    """

    code = "HED104"
    name = "non-finite-output"
    category = "head"
    severity = Severity.ERROR
    message = "{count} of {numel} output values are NaN or infinite; first produced in {where}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        import torch

        from ._inference_probe import first_nonfinite, traced

        output = ctx.eval_pass().output
        if not isinstance(output, torch.Tensor) or not (output.is_floating_point() or output.is_complex()):
            return []
        bad = ~torch.isfinite(output)
        count = int(bad.sum())
        if count == 0:
            return []
        nan = int(torch.isnan(output).sum())
        _, tracer = traced(ctx, "nonfinite")
        target, how, input_bad = first_nonfinite(tracer)
        if input_bad:
            target = "preprocess" if getattr(ctx, "preprocess", None) is not None else "<model>"
            hint = "Clean the input: check the preprocessing for division by a zero std, log of 0, or NaN pixels (torch.nan_to_num)."
        else:
            target = target or "<model>"
            hint = "Guard the operation that produces them (clamp before log/sqrt/division, F.normalize with eps) or reload weights that are finite."
        evidence = {"nan": nan, "inf": count - nan, "numel": output.numel(), "localised": how}
        if target not in ("<model>", "preprocess"):
            try:
                module = ctx.module(target)
            except AttributeError:
                module = None
            if module is not None:
                bad_params = sum(int((~torch.isfinite(t)).sum()) for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)) if t.is_floating_point())
                evidence["nonfinite_parameters"] = bad_params
                if bad_params:
                    hint = f"The weights or buffers of {target} hold {bad_params} non-finite values: reload a checkpoint from before training diverged."
        return [self.finding(ctx, target, evidence=evidence, count=count, numel=output.numel(), where=target, fix_hint=hint)]
