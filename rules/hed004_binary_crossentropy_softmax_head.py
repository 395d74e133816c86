"""HED004: binary cross-entropy compiled on a multi-unit softmax head."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import keras_trainings


class BinaryCrossentropySoftmaxHead(StaticRule):
    """
    ## What it does
    Flags `binary_crossentropy` used as the loss of a model whose head is a softmax over several units.

    The loss may be the string `"binary_crossentropy"`, `keras.losses.BinaryCrossentropy()`
    or the function `keras.losses.binary_crossentropy`, given to `model.compile` or called in
    a custom training loop; the head is found by following the model's construction
    (`Dense(N, activation="softmax")`, or `Dense(N)` followed by a softmax). Multi-label heads
    (`sigmoid` with binary cross-entropy) are correct and not reported.

    ## Why is this bad?
    Binary cross-entropy scores every output unit as an independent yes/no probability, but
    a softmax couples the units so that they sum to one. The loss then optimises the wrong
    objective, and Keras picks `binary_accuracy` for `metrics=["accuracy"]`, which counts each
    unit separately: with 10 classes a model that always predicts "no" already reports 90%
    accuracy. Single-label classification with a softmax needs `categorical_crossentropy`
    (one-hot labels) or `sparse_categorical_crossentropy` (integer labels).

    ## Example
    ```python
    from tensorflow import keras

    model = keras.Sequential([
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy", metrics=["accuracy"])
    ```

    ## Use instead
    ```python
    from tensorflow import keras

    model = keras.Sequential([
        keras.layers.Dense(128, activation="relu"),
        keras.layers.Dense(10, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="categorical_crossentropy", metrics=["accuracy"])
    ```

    ## References
    - Keras `losses.BinaryCrossentropy` / `CategoricalCrossentropy` docs.
    - Keras `compile`: `"accuracy"` resolves to `binary_accuracy` for binary cross-entropy.
    """

    code = "HED004"
    name = "binary-crossentropy-softmax-head"
    category = "head"
    severity = Severity.ERROR
    requires = frozenset({"binary_crossentropy", "BinaryCrossentropy", "bce", "BinaryFocalCrossentropy", "binary_focal_crossentropy"})
    message = "binary cross-entropy ({loss}) on the softmax head {head} over {units} units: each unit is scored as an independent yes/no probability"
    fix = "Use categorical_crossentropy (one-hot labels) or sparse_categorical_crossentropy (integer labels) with a softmax head; keep binary_crossentropy for a sigmoid head (binary or multi-label)."

    def check(self, ctx):
        for training in keras_trainings(ctx):
            head, loss = training.head, training.loss
            if loss.kind != "binary" or head.activation != "softmax":
                continue
            units = head.units(ctx)
            if head.kind == "app" and head.units_node is None:
                units = 1000
            if units is None or units < 2:
                continue
            yield self.finding(ctx, training.compile_call, loss=loss.label, head=head.label(ctx), units=units)
