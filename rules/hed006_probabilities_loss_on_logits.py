"""HED006: a Keras loss expecting probabilities compiled on a linear (logits) head."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import keras_trainings


class ProbabilitiesLossOnLogits(StaticRule):
    """
    ## What it does
    Flags a Keras cross-entropy loss with `from_logits=False` (the default) used on a model whose head has no activation.

    Covers `categorical_crossentropy`, `sparse_categorical_crossentropy` and
    `binary_crossentropy` as strings, functions or loss objects, given to `model.compile` or
    called in a custom training loop. Reported only when the head is certainly linear: a
    `Dense(N)` without `activation` (or with `activation=None` / `"linear"`) and no
    `Activation`, `Softmax` or `tf.nn.softmax` after it.

    ## Why is this bad?
    With `from_logits=False` Keras treats the model's outputs as probabilities: it clips
    them to [eps, 1 - eps] (and for categorical cross-entropy rescales them to sum to one)
    before taking the log. Raw logits are negative or above one, so most of them are clipped,
    their gradient vanishes and the loss no longer measures what the model predicts.
    Training runs and converges to a poor model without any error.

    ## Example
    ```python
    from tensorflow import keras

    inputs = keras.Input(shape=(64,))
    x = keras.layers.Dense(128, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ```

    ## Use instead
    ```python
    from tensorflow import keras

    inputs = keras.Input(shape=(64,))
    x = keras.layers.Dense(128, activation="relu")(inputs)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    ```

    ## References
    - Keras `losses.SparseCategoricalCrossentropy(from_logits=False)`: "Whether `y_pred` is expected to be a logits tensor. By default, we assume that `y_pred` encodes a probability distribution."
    - `keras/src/backend/*/nn.py` `categorical_crossentropy`: clips probabilities before the log.
    """

    code = "HED006"
    name = "probabilities-loss-on-logits"
    category = "head"
    severity = Severity.WARNING
    requires = frozenset({"crossentropy", "Crossentropy", "bce", "cce"})
    message = "{loss} expects probabilities (from_logits=False) but the model's head {head} has no activation and outputs logits"
    fix = "Pass from_logits=True to the loss (e.g. keras.losses.{cls}(from_logits=True)), or give the head an activation ({act})."

    def check(self, ctx):
        for training in keras_trainings(ctx):
            head, loss = training.head, training.loss
            if loss.from_logits is not False or loss.kind not in ("categorical", "sparse_categorical", "binary"):
                continue
            if head.kind != "dense" or head.activation != "linear" or head.activation_node is not None:
                continue
            cls = {"categorical": "CategoricalCrossentropy", "sparse_categorical": "SparseCategoricalCrossentropy", "binary": "BinaryCrossentropy"}[loss.kind]
            act = "sigmoid" if loss.kind == "binary" else "softmax"
            yield self.finding(ctx, training.compile_call, loss=loss.label, head=head.label(ctx), cls=cls, act=act)
