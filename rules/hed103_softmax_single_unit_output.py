"""HED103: a one-unit output passed through softmax is constant 1.0."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class SoftmaxSingleUnitOutput(DynamicRule):
    """
    ## What it does
    Reports a model whose output has a single unit per sample (class dimension of size 1)
    and whose every output value is exactly 1.0 on the eval pass: a softmax over one unit.
    The target is the head (the last module with parameters that ran).

    ## Why is this bad?
    Softmax normalises over the class dimension: with one unit it computes
    `exp(z) / exp(z) = 1` for every input, so the output carries no information and its
    gradient with respect to `z` is exactly zero. The model never learns, whatever the
    loss and learning rate; a binary classifier trained this way reports a constant
    prediction. The usual cause is a binary head written as `nn.Linear(f, 1)` followed by
    `nn.Softmax(dim=1)` (or `F.softmax(x, dim=-1)`) where a sigmoid was meant.

    ## Example
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 1), nn.Softmax(dim=1))
    ```

    ## Use instead
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 1))  # logit; BCEWithLogitsLoss in training
    probability = torch.sigmoid(model(x))                 # at inference
    # or two units with softmax / CrossEntropyLoss: nn.Linear(512, 2)
    ```

    ## Thresholds
    Exact: class dimension 1, at least 2 values, all equal to 1.0 bit for bit. Evidence:
    `units`, `values`, `output_shape`.

    ## References
    - PyTorch docs: `nn.Softmax` (rescales "so that the elements of the n-dimensional
      output Tensor lie in the range [0,1] and sum to 1" along `dim`).
    - Static twin: HED003 (softmax-single-unit, read from source).
    """

    code = "HED103"
    name = "softmax-single-unit-output"
    category = "head"
    severity = Severity.ERROR
    message = "the head {head} has one output unit and every output is exactly 1.0: softmax over a single unit is constant"
    fix = "Use a sigmoid on the single unit (train with BCEWithLogitsLoss on the logit), or give the head 2 units for softmax/CrossEntropyLoss."

    def probe(self, ctx):
        import torch

        from ._head_probe import class_dim, head_name

        output = ctx.eval_pass().output
        if not isinstance(output, torch.Tensor) or not output.is_floating_point():
            return []
        dim = class_dim(output)
        if dim is None or output.shape[dim] != 1 or output.numel() < 2:
            return []
        if not bool((output == 1.0).all()):
            return []
        head = head_name(ctx)
        evidence = {"units": 1, "values": output.numel(), "all_equal": 1.0, "output_shape": str(tuple(output.shape))}
        return [self.finding(ctx, head, evidence=evidence, head=head)]
