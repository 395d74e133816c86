"""HED102: the model already outputs probabilities but the loss expects logits."""

from __future__ import annotations

import math

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ActivatedOutputWithLogitsLoss(DynamicRule):
    """
    ## What it does
    Measures the model's output on the eval pass and reports an output that is already
    activated while the pipeline's loss applies the activation itself:

    - softmax output (no negative value, each row sums to 1 within 1e-3) with
      `nn.CrossEntropyLoss` / `F.cross_entropy`;
    - sigmoid output (at least 8 values, all in [0, 1], at least half strictly inside, at
      most 5 % exact zeros) or
      softmax output with `nn.BCEWithLogitsLoss` / `F.binary_cross_entropy_with_logits`,
      and a sigmoid output with `CrossEntropyLoss`;
    - softmax (not log-softmax) output with `nn.NLLLoss` / `F.nll_loss`, which expects
      log-probabilities.

    The loss may be a module, a class, a functional loss, a `functools.partial` of one, or
    its name. Without a loss nothing is reported: a softmax output is the right thing to
    serve. A log-softmax output with `CrossEntropyLoss` is not reported either
    (`log_softmax` is idempotent, so the loss is unchanged). Target: the head (the last
    module with parameters that ran).

    ## Why is this bad?
    `CrossEntropyLoss` computes `log_softmax` of its input; fed probabilities p in [0, 1],
    the second softmax squeezes them, so the loss can never go below
    `log(1 + (C - 1)/e)` (1.46 for 10 classes, `best_possible_loss` in the evidence) and the
    gradients shrink by up to a factor `p(1 - p)`; training stalls at a poor accuracy and
    the reported loss looks plausible. `BCEWithLogitsLoss` applies a sigmoid again: a
    perfect prediction 1.0 becomes sigmoid(1) = 0.73, loss 0.31 instead of 0. `NLLLoss`
    on probabilities instead of log-probabilities optimises `-p`, not `-log p`.

    ## Example
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 10), nn.Softmax(dim=1))
    pipeline = Pipeline(model, sample=x, labels=y, loss=nn.CrossEntropyLoss())
    ```

    ## Use instead
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 10))  # logits
    pipeline = Pipeline(model, sample=x, labels=y, loss=nn.CrossEntropyLoss())
    probabilities = model(x).softmax(dim=1)  # only where probabilities are needed
    ```

    ## Thresholds
    softmax: min >= 0 and |row sum - 1| <= 1e-3 with >= 2 classes; sigmoid: >= 8 values in
    [0, 1], >= 50 % strictly inside (0, 1), <= 5 % exact zeros. Raw logits of a linear head almost always have
    negative entries, so both tests are specific.

    ## References
    - PyTorch docs: `nn.CrossEntropyLoss` ("The input is expected to contain the
      unnormalized logits for each class"), `nn.BCEWithLogitsLoss` ("combines a Sigmoid
      layer and the BCELoss in one single class"), `nn.NLLLoss` ("The input given through a
      forward call is expected to contain log-probabilities").
    - Static twins: HED005 (loss-expects-logits), HED006.
    """

    code = "HED102"
    name = "activated-output-with-logits-loss"
    category = "head"
    severity = Severity.ERROR
    message = "the model outputs {activation} probabilities but the loss {loss} {applies}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._head_probe import activation, class_dim, head_name, loss_kind

        kind, label = loss_kind(getattr(ctx, "loss", None))
        if kind not in ("cross_entropy", "bce_with_logits", "nll"):
            return []
        output = ctx.eval_pass().output
        act, info = activation(output)
        if act is None or act == "log_softmax":
            return []
        if kind == "nll" and act != "softmax":
            return []
        evidence = {"activation": act, "loss": label, **info}
        dim = class_dim(output)
        classes = int(output.shape[dim]) if dim is not None else 1
        evidence["units"] = classes
        if kind == "cross_entropy":
            applies = "applies log_softmax to its input again (it expects logits)"
            if act == "softmax":
                evidence["best_possible_loss"] = round(math.log(1 + (classes - 1) / math.e), 4)
            hint = "Remove the final Softmax/Sigmoid from the model and feed logits to CrossEntropyLoss; apply softmax only when you need probabilities."
        elif kind == "bce_with_logits":
            applies = "applies a sigmoid to its input again (it expects logits)"
            evidence["best_possible_loss"] = round(-math.log(1 / (1 + math.exp(-1))), 4)
            hint = "Remove the final Sigmoid (or Softmax) from the model and feed logits to BCEWithLogitsLoss, or keep the Sigmoid and use BCELoss."
        else:
            applies = "expects log-probabilities, not probabilities"
            hint = "End the model with nn.LogSoftmax(dim=1) instead of nn.Softmax, or drop it and use CrossEntropyLoss on logits."
        target = head_name(ctx)
        return [self.finding(ctx, target, evidence=evidence, activation=act, loss=label, applies=applies, fix_hint=hint)]
