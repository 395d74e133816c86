"""HED104: the model outputs NaN or infinity."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class NonFiniteOutput(DynamicRule):
    """
    ## What it does
    Reports NaN or infinite values in the model's output, and the first module or layer that produces them.

    Reports NaN or infinite values in the model's output on the eval pass (PyTorch:
    `model.eval()` under `torch.no_grad()`; Keras: `model(x, training=False)`, what
    `predict()` runs), and finds where they come from with one more traced pass (only when
    some were found; PyTorch: forward hooks; Keras: each layer's `call` wrapped for the one
    pass and unwrapped afterwards). The trace counts non-finite values in each
    module's/layer's input and output, and the target is the first one, in call order,
    whose output is non-finite while its input is finite. When the input of that call is
    already non-finite, the target is the enclosing module/layer (`<model>` for the root)
    whose own `forward`/`call()` code produced them between its children; when the model
    input itself holds NaN/inf the target is `preprocess` (or `<model>` without a
    preprocess function). The evidence says whether the culprit's own parameters, buffers or
    variables hold non-finite values.

    ## Why is this bad?
    One NaN spreads to every prediction, metric and gradient it touches: `argmax` of a NaN
    row is arbitrary, and a NaN loss makes every parameter NaN after the next step. Typical
    causes: weights that diverged during training (a learning rate too high, fp16
    overflow) and were saved, a BatchNorm with negative or NaN running/moving variance,
    `log(0)`, `sqrt` of a negative number, division by a zero norm, or an input that was
    never cleaned (a normalisation by a zero standard deviation).

    ## Example
    ```python
    class Net(nn.Module):
        def forward(self, x):
            z = self.fc(x)
            return z / z.norm(dim=1, keepdim=True).clamp(max=0)  # divides by 0
    ```
    Keras:
    ```python
    class L2Normalize(keras.layers.Layer):
        def call(self, z):
            return z / keras.ops.minimum(keras.ops.norm(z, axis=-1, keepdims=True), 0.0)  # divides by 0
    ```

    ## Use instead
    ```python
    class Net(nn.Module):
        def forward(self, x):
            z = self.fc(x)
            return z / z.norm(dim=1, keepdim=True).clamp(min=1e-6)  # F.normalize(z, dim=1)
    ```
    Keras:
    ```python
    class L2Normalize(keras.layers.Layer):
        def call(self, z):
            return z / keras.ops.maximum(keras.ops.norm(z, axis=-1, keepdims=True), 1e-6)
    ```
    (or `keras.layers.UnitNormalization`).

    ## Thresholds
    Any NaN or +/-inf value. Evidence: `nan`, `inf`, `numel`, `localised`, and
    `nonfinite_parameters` of the target module/layer. Cost: no pass when the output is
    finite; one traced pass otherwise.

    ## References
    - PyTorch docs: `torch.isfinite`, `torch.autograd.detect_anomaly` (the training-time
      counterpart), `F.normalize` (clamps the norm by `eps`).
    - Keras docs: `keras.ops.isfinite`, `keras.layers.UnitNormalization`,
      `keras.callbacks.TerminateOnNaN` (the training-time counterpart).
    """

    code = "HED104"
    name = "non-finite-output"
    category = "head"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "{count} of {numel} output values are NaN or infinite; first produced in {where}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._inference_probe import first_nonfinite, lookup, nonfinite_counts, own_nonfinite, to_array, traced

        counts = nonfinite_counts(to_array(ctx.eval_pass().output))
        if counts is None or counts[0] == 0:
            return []
        count, nan, numel = counts
        _, tracer = traced(ctx, "nonfinite", training=False, share=True)
        target, how, input_bad = first_nonfinite(tracer)
        texts = _TEXTS[ctx.framework]
        if input_bad:
            target = "preprocess" if getattr(ctx, "preprocess", None) is not None else "<model>"
            hint = texts["input"]
        else:
            target = target or "<model>"
            hint = texts["operation"]
        evidence = {"nan": nan, "inf": count - nan, "numel": numel, "localised": how}
        if target not in ("<model>", "preprocess"):
            module = lookup(ctx, target)
            if module is not None:
                bad_params = own_nonfinite(ctx, module)
                evidence["nonfinite_parameters"] = bad_params
                if bad_params:
                    hint = f"The weights or buffers of {target} hold {bad_params} non-finite values: reload a checkpoint from before training diverged."
        return [self.finding(ctx, target, evidence=evidence, count=count, numel=numel, where=target, fix_hint=hint)]


#: fixes per framework (the decision above is shared)
_TEXTS = {
    "torch": {
        "input": "Clean the input: check the preprocessing for division by a zero std, log of 0, or NaN pixels (torch.nan_to_num).",
        "operation": "Guard the operation that produces them (clamp before log/sqrt/division, F.normalize with eps) or reload weights that are finite.",
    },
    "keras": {
        "input": "Clean the input: check the preprocessing for division by a zero std, log of 0, or NaN pixels (numpy.nan_to_num).",
        "operation": "Guard the operation that produces them (keras.ops.maximum(norm, eps) before a division, a positive argument for log/sqrt, keras.utils.normalize / UnitNormalization) or reload weights that are finite.",
    },
}
