"""HED102: the model's output activation does not fit the loss (probabilities vs logits, softmax vs binary)."""

from __future__ import annotations

import math

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ActivatedOutputWithLogitsLoss(DynamicRule):
    """
    ## What it does
    Reports a model output whose activation does not fit what the loss expects: probabilities fed to a loss that applies softmax/sigmoid itself, raw logits fed to a loss that expects probabilities, or a softmax head under binary cross-entropy.

    The output is measured on the eval pass and, for Keras, also read from the model: the
    head `Dense`'s `activation` and any `Activation` / `Softmax` layer or `keras.ops`
    activation between it and the output (the measurement decides; the declaration fills in
    where it cannot, e.g. a sigmoid over fewer than 8 values). What the loss expects comes
    from the loss: PyTorch's `nn.CrossEntropyLoss` / `F.cross_entropy` and
    `nn.BCEWithLogitsLoss` take logits, `nn.BCELoss` probabilities, `nn.NLLLoss`
    log-probabilities; a Keras cross-entropy (`CategoricalCrossentropy`,
    `SparseCategoricalCrossentropy`, `BinaryCrossentropy`, their functions and names such as
    `"sparse_categorical_crossentropy"` or `"bce"`) takes logits with `from_logits=True` and
    probabilities otherwise, read from the loss object's `from_logits` (or its config, or a
    `functools.partial`'s keywords). The loss is `Pipeline(loss=...)`, else for Keras the one
    `model.compile()` stored (`loss_source` in the evidence). Reported:

    - softmax output (no negative value, each row sums to 1 within 1e-3) or sigmoid output
      (at least 8 values, all in [0, 1], at least half strictly inside, at most 5 % exact
      zeros) with a loss that takes logits: `CrossEntropyLoss`, `BCEWithLogitsLoss`,
      Keras `from_logits=True`;
    - raw logits (no activation, values outside [0, 1]) or log-probabilities with a loss
      that takes probabilities: Keras `from_logits=False` (the default, so
      `loss="sparse_categorical_crossentropy"` on a linear `Dense` head), `nn.BCELoss`;
    - a softmax over 3 or more units with binary cross-entropy (`"binary_crossentropy"`,
      `BCELoss`): each unit is scored as an independent yes/no probability;
    - softmax, sigmoid or positive raw logits with `nn.NLLLoss`, which expects
      log-probabilities.

    Not reported: no loss (a softmax output is the right thing to serve), a log-softmax
    output with a logits cross-entropy (`log_softmax` is idempotent, so the loss is
    unchanged), a two-unit softmax with binary cross-entropy (on one-hot labels it is the
    same loss as categorical cross-entropy), a softmax over one unit (HED103's finding). Target:
    the head (the last module / layer with weights that ran).

    ## Why is this bad?
    A cross-entropy on logits computes `log_softmax` of its input; fed probabilities p in
    [0, 1], the second softmax squeezes them, so the loss can never go below
    `log(1 + (C - 1)/e)` (1.46 for 10 classes, `best_possible_loss` in the evidence) and the
    gradients shrink by up to a factor `p(1 - p)`; training stalls at a poor accuracy and
    the reported loss looks plausible. `BCEWithLogitsLoss` applies a sigmoid again: a
    perfect prediction 1.0 becomes sigmoid(1) = 0.73, loss 0.31 instead of 0. The other
    way round, Keras with `from_logits=False` clips every value to [1e-7, 1 - 1e-7] (and a
    categorical loss rescales each row to sum to one) before the log: negative logits are
    clipped, lose their gradient, and the loss no longer measures the prediction; the model
    trains to a poor optimum without an error. Binary cross-entropy on a softmax optimises
    the wrong objective, and Keras then resolves `metrics=["accuracy"]` to
    `binary_accuracy`, which counts every unit: with 10 classes a model that always says
    "no" reports 90 %. `NLLLoss` on probabilities instead of log-probabilities optimises
    `-p`, not `-log p`.

    ## Example
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 10), nn.Softmax(dim=1))
    pipeline = Pipeline(model, sample=x, labels=y, loss=nn.CrossEntropyLoss())

    head = keras.layers.Dense(10, activation="softmax")
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    model.compile(loss="sparse_categorical_crossentropy")  # on a linear Dense(10) head
    ```

    ## Use instead
    ```python
    model = nn.Sequential(backbone, nn.Linear(512, 10))  # logits
    pipeline = Pipeline(model, sample=x, labels=y, loss=nn.CrossEntropyLoss())
    probabilities = model(x).softmax(dim=1)  # only where probabilities are needed

    head = keras.layers.Dense(10)  # logits
    model.compile(loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```

    ## Thresholds
    softmax: min >= 0 and |row sum - 1| <= 1e-3 with >= 2 classes; sigmoid: >= 8 values in
    [0, 1], >= 50 % strictly inside (0, 1), <= 5 % exact zeros; raw logits: no activation
    measured (or declared) and at least one value outside [0, 1] (`fraction_outside_0_1`).
    Raw logits of a linear head almost always have negative entries, so the tests are
    specific.

    ## References
    - PyTorch docs: `nn.CrossEntropyLoss` ("The input is expected to contain the
      unnormalized logits for each class"), `nn.BCEWithLogitsLoss` ("combines a Sigmoid
      layer and the BCELoss in one single class"), `nn.NLLLoss` ("The input given through a
      forward call is expected to contain log-probabilities").
    - Keras docs: `SparseCategoricalCrossentropy(from_logits=False)` ("Whether `y_pred` is
      expected to be a logits tensor. By default, we assume that `y_pred` encodes a
      probability distribution"); `keras/src/backend/*/nn.py` `categorical_crossentropy`
      (rescale and clip to epsilon when `from_logits=False`); `Model.compile` (accuracy
      resolved from the loss).
    - Static twins: HED004 (binary-crossentropy-softmax-head), HED005 (loss-expects-logits),
      HED006 (probabilities-loss-on-logits).
    """

    code = "HED102"
    name = "activated-output-with-logits-loss"
    category = "head"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "the model outputs {output} but the loss {loss} {applies}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._head_probe import head_name, loss_spec, output_kind

        keras = getattr(ctx, "framework", "torch") == "keras"
        spec = loss_spec(getattr(ctx, "loss", None), "keras" if keras else "torch")
        if spec is None:
            return []
        output = ctx.eval_pass().output
        measured = output_kind(ctx, output)
        act, classes = measured.kind, measured.units or 1
        if act is None:
            return []
        verdict = _verdict(spec, act, classes, measured.info, keras)
        if verdict is None:
            return []
        shown, applies, hint, extra = verdict
        evidence = {"activation": act, "loss": spec.label, **measured.info, "units": classes, **extra}
        if keras:
            evidence["from_logits"] = spec.from_logits
            evidence["loss_source"] = getattr(ctx, "loss_source", None) or "pipeline"
        target = head_name(ctx)
        return [self.finding(ctx, target, evidence=evidence, output=shown, loss=spec.label, applies=applies, fix_hint=hint)]


def _verdict(spec, act, classes, info, keras):
    """(output shown, what the loss does, fix, extra evidence) when the output's activation
    does not fit what the loss expects; None when it fits."""
    named = {"softmax": "softmax probabilities", "sigmoid": "sigmoid probabilities",
             "log_softmax": "log-softmax log-probabilities",
             "logits": f"raw logits (values from {info.get('min')} to {info.get('max')}, no activation)"}
    shown = named.get(act, act)
    if act == "softmax" and classes == 1:
        return None  # softmax over one unit: HED103's finding
    if spec.expects == "logits":
        if act not in ("softmax", "sigmoid"):
            return None  # logits, or log_softmax (idempotent under log_softmax)
        extra = {}
        if spec.family == "categorical":
            applies = "applies log_softmax to its input again (it expects logits)"
            if act == "softmax":
                extra["best_possible_loss"] = round(math.log(1 + (classes - 1) / math.e), 4)
            hint = ("Remove the softmax from the head (Dense(..., activation=None), no Softmax layer after it) and keep "
                    "from_logits=True, or keep the softmax and set from_logits=False; apply keras.ops.softmax only where you "
                    "need probabilities." if keras else
                    "Remove the final Softmax/Sigmoid from the model and feed logits to CrossEntropyLoss; apply softmax only when you need probabilities.")
        else:
            applies = "applies a sigmoid to its input again (it expects logits)"
            extra["best_possible_loss"] = round(-math.log(1 / (1 + math.exp(-1))), 4)
            hint = ("Remove the final activation from the head (activation=None) and keep from_logits=True, or keep a sigmoid "
                    "and set from_logits=False." if keras else
                    "Remove the final Sigmoid (or Softmax) from the model and feed logits to BCEWithLogitsLoss, or keep the Sigmoid and use BCELoss.")
        return shown, applies, hint, extra
    if spec.expects == "probabilities":
        if act in ("logits", "log_softmax"):
            extra = {}
            if keras:
                rescale = " and rescales each row to sum to 1" if spec.family == "categorical" else ""
                applies = (f"treats its input as probabilities (from_logits=False): it clips every value to [1e-7, 1 - 1e-7]{rescale} "
                           "before the log, so negative scores lose their gradient")
                wanted = "softmax" if spec.family == "categorical" else "sigmoid"
                hint = (f"Pass from_logits=True to the loss (e.g. keras.losses.{_keras_class(spec)}(from_logits=True)) and keep the "
                        f"head linear, or end the head with activation=\"{wanted}\".")
            else:
                applies = "expects probabilities in [0, 1] (it applies no sigmoid)"
                hint = "Feed the logits to BCEWithLogitsLoss (numerically stable), or end the model with nn.Sigmoid() for BCELoss."
            return shown, applies, hint, extra
        if act == "softmax" and spec.family == "binary" and classes >= 3:
            applies = (f"scores each of the {classes} units as an independent yes/no probability, while a softmax makes them "
                       "compete (sum to 1)")
            hint = ("Use categorical_crossentropy (one-hot labels) or sparse_categorical_crossentropy (integer labels) with a softmax "
                    "head; binary_crossentropy belongs to multi-label heads with a sigmoid per unit (and then Keras's \"accuracy\" "
                    "is binary_accuracy, which counts every unit)." if keras else
                    "Use CrossEntropyLoss on logits for single-label classification; BCELoss belongs to multi-label heads with a sigmoid per unit.")
            return f"softmax probabilities over {classes} units", applies, hint, {}
        return None
    # log-probabilities (NLLLoss)
    if act == "log_softmax" or (act == "logits" and info.get("max", 0.0) <= 0):
        return None
    applies = "expects log-probabilities, not probabilities" if act != "logits" else "expects log-probabilities (log_softmax output), not raw logits"
    hint = "End the model with nn.LogSoftmax(dim=1) instead of nn.Softmax, or drop it and use CrossEntropyLoss on logits."
    return shown, applies, hint, {}


def _keras_class(spec):
    label = spec.label.split("(")[0].strip('"')
    return {"sparse_categorical_crossentropy": "SparseCategoricalCrossentropy", "categorical_crossentropy": "CategoricalCrossentropy",
            "binary_crossentropy": "BinaryCrossentropy", "bce": "BinaryCrossentropy", "cce": "CategoricalCrossentropy",
            "scce": "SparseCategoricalCrossentropy"}.get(label, label)
