"""HED005: a loss that applies softmax/sigmoid itself is fed probabilities."""

from __future__ import annotations

import ast

from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import TORCH_ACT_MODULES, keras_trainings, short, torch_loss_calls, torch_tensor_out

_WHAT_IT_DOES = {
    "cross_entropy": "applies log-softmax itself",
    "bce_with_logits": "applies a sigmoid itself",
    "nll": "expects log-probabilities (log_softmax)",
}


class LossExpectsLogits(StaticRule):
    """
    ## What it does
    Flags a loss that expects logits (or log-probabilities) but is fed the output of an explicit softmax or sigmoid.

    PyTorch: `nn.CrossEntropyLoss` / `F.cross_entropy` and `nn.BCEWithLogitsLoss` /
    `F.binary_cross_entropy_with_logits` called on `F.softmax(...)`, `torch.sigmoid(...)`,
    `out.softmax(dim=1)`, or on the outputs of a model whose last module is `nn.Softmax` /
    `nn.Sigmoid` (a `Sequential` head, or a `forward` returning `F.softmax(...)`); and
    `nn.NLLLoss` / `F.nll_loss` fed softmax probabilities instead of `log_softmax`. The
    model is followed through `outputs = model(x)`, `.to(device)` and training functions that
    receive the model and the criterion as parameters. Keras: a loss with `from_logits=True`
    used with a model whose head has a softmax or sigmoid activation.

    ## Why is this bad?
    `CrossEntropyLoss` computes `log_softmax` of its input; fed probabilities it computes a
    softmax of a softmax. The outputs then live in [0, 1], the loss can never approach zero and
    its gradients shrink, so training is slow and stalls early with poorly calibrated
    predictions. `NLLLoss` only negates and picks the target entry, so fed probabilities
    instead of log-probabilities it maximises a probability linearly instead of its log.
    Keras `from_logits=True` applies the softmax/sigmoid again in the same way.

    ## Example
    ```python
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(512, 10), nn.Softmax(dim=1))
    criterion = nn.CrossEntropyLoss()

    def train_step(inputs, labels):
        outputs = model(inputs)
        return criterion(outputs, labels)
    ```

    ## Use instead
    ```python
    import torch.nn as nn

    model = nn.Sequential(nn.Linear(512, 10))  # raw logits
    criterion = nn.CrossEntropyLoss()

    def train_step(inputs, labels):
        outputs = model(inputs)
        return criterion(outputs, labels)
    ```

    ## References
    - PyTorch `nn.CrossEntropyLoss`: "The input is expected to contain the unnormalized logits for each class".
    - PyTorch `nn.NLLLoss`: "The input given through a forward call is expected to contain log-probabilities".
    - PyTorch `nn.BCEWithLogitsLoss`: "combines a Sigmoid layer and the BCELoss in one single class".
    - Keras `losses.*Crossentropy(from_logits=...)`.
    """

    code = "HED005"
    name = "loss-expects-logits"
    category = "head"
    severity = Severity.ERROR
    requires = frozenset({"CrossEntropyLoss", "cross_entropy", "BCEWithLogitsLoss", "with_logits", "NLLLoss", "nll_loss", "from_logits"})
    message = "{loss} {does} but receives {got}"
    fix = "{fix}"

    def check(self, ctx):
        for loss in torch_loss_calls(ctx):
            out = torch_tensor_out(ctx, loss.input)
            if out is None or out.activation not in ("softmax", "sigmoid"):
                continue
            if loss.kind == "nll" and out.activation != "softmax":
                continue
            node = out.activation_node
            if node is not None and any(sub is node for sub in ast.walk(loss.input)):
                got = f"{out.activation} outputs ({short(node, 50)})"
            elif node is not None and (_in_forward(ctx, node) or ctx.call_name(node) in TORCH_ACT_MODULES):
                got = f"{out.activation} outputs (the model ends with {short(node, 50)})"
            elif node is not None:
                got = f"{out.activation} outputs ({short(node, 50)} is applied before the loss)"
            else:
                got = f"{out.activation} outputs"
            if loss.kind == "nll":
                fix = "Feed log-probabilities: use F.log_softmax / nn.LogSoftmax instead of softmax, or drop the softmax and use nn.CrossEntropyLoss."
            elif loss.kind == "cross_entropy":
                fix = "Return raw logits from the model (drop the softmax/sigmoid; apply softmax only for predictions), or use nn.NLLLoss on log_softmax outputs."
            else:
                fix = "Return raw logits from the model (drop the sigmoid; apply torch.sigmoid only for predictions), or use nn.BCELoss on the probabilities."
            yield self.finding(ctx, loss.call, loss=loss.label, does=_WHAT_IT_DOES[loss.kind], got=got, fix=fix)
        for training in keras_trainings(ctx):
            head, loss = training.head, training.loss
            if loss.from_logits is not True or head.activation not in ("softmax", "sigmoid"):
                continue
            yield self.finding(
                ctx,
                training.compile_call,
                loss=f"{loss.label}",
                does="expects logits (from_logits=True)",
                got=f"the {head.activation} outputs of {head.label(ctx)}",
                fix="Either drop the head's activation (activation=None, logits) or use the loss with from_logits=False.",
            )


def _in_forward(ctx, node) -> bool:
    func = ctx.enclosing_function(node)
    return func is not None and func.name == "forward"
