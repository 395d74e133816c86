"""HED103: a one-unit output passed through softmax is constant 1.0."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class SoftmaxSingleUnitOutput(DynamicRule):
    """
    ## What it does
    Reports a model whose output has a single unit per sample (class dimension of size 1)
    and whose every output value is exactly 1.0 on the eval pass: a softmax over one unit.

    The target is the head (the last module / layer with weights that ran). For Keras the
    evidence also names where the softmax is declared (`Dense(1, activation="softmax")`, or
    an `Activation("softmax")` / `Softmax` layer after the head); Keras itself only warns
    ("You are using a softmax over axis -1 of a tensor of shape (N, 1)"), a line that is
    easy to miss in a training log.

    ## Why is this bad?
    Softmax normalises over the class dimension: with one unit it computes
    `exp(z) / exp(z) = 1` for every input, so the output carries no information and its
    gradient with respect to `z` is exactly zero. The model never learns, whatever the
    loss and learning rate; a binary classifier trained this way reports a constant
    prediction. The usual cause is a binary head written as `nn.Linear(f, 1)` followed by
    `nn.Softmax(dim=1)` (or `F.softmax(x, dim=-1)`), or as Keras's
    `Dense(1, activation="softmax")`, where a sigmoid was meant.

    ## Example
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 1), nn.Softmax(dim=1))
    model = keras.Sequential([backbone, keras.layers.Dense(1, activation="softmax")])
    ```

    ## Use instead
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 1))  # logit; BCEWithLogitsLoss in training
    probability = torch.sigmoid(model(x))                 # at inference
    # or two units with softmax / CrossEntropyLoss: nn.Linear(512, 2)
    model = keras.Sequential([backbone, keras.layers.Dense(1, activation="sigmoid")])  # binary_crossentropy
    ```

    ## Thresholds
    Exact: class dimension 1 (the last dimension for Keras), at least 2 values, all equal
    to 1.0 bit for bit. Evidence: `units`, `values`, `output_shape`, and for Keras
    `declared_activation`.

    ## References
    - PyTorch docs: `nn.Softmax` (rescales "so that the elements of the n-dimensional
      output Tensor lie in the range [0,1] and sum to 1" along `dim`).
    - Keras: `keras/src/ops/nn.py` `softmax` (the warning for an axis of size 1).
    - Static twin: HED003 (softmax-single-unit, read from source).
    """

    code = "HED103"
    name = "softmax-single-unit-output"
    category = "head"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "the head {head} has one output unit and every output is exactly 1.0: softmax over a single unit is constant"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._head_probe import (
            channels_last,
            class_dim,
            declared_activation,
            float_output,
            head_name,
        )

        output = float_output(ctx.eval_pass().output)
        if output is None:
            return []
        dim = class_dim(output, channels_last(ctx))
        if dim is None or output.shape[dim] != 1 or output.size < 2:
            return []
        if not bool((output == 1.0).all()):
            return []
        head = head_name(ctx)
        evidence = {"units": 1, "values": int(output.size), "all_equal": 1.0, "output_shape": str(tuple(output.shape))}
        declared, where = declared_activation(ctx)
        if declared is not None:
            evidence["declared_activation"] = f"{declared} ({where})"
        if getattr(ctx, "framework", "torch") == "keras":
            hint = ('Use activation="sigmoid" on the single unit (with binary_crossentropy), or keep the unit linear and train '
                    'with keras.losses.BinaryCrossentropy(from_logits=True); or give the head 2 units for softmax with '
                    'sparse_categorical_crossentropy.')
        else:
            hint = "Use a sigmoid on the single unit (train with BCEWithLogitsLoss on the logit), or give the head 2 units for softmax/CrossEntropyLoss."
        return [self.finding(ctx, head, evidence=evidence, head=head, fix_hint=hint)]
