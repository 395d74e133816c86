"""INF002: Keras inference code that calls a model with `training=True`."""

from __future__ import annotations

import ast

from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from ._modes import (
    analysis,
    decorator_names,
    enclosing_functions,
    is_inference_name,
    is_training_name,
    is_unit_test,
    name_parts,
    place,
)

_TAPES = ("GradientTape",)


class KerasInferenceTrainingTrue(StaticRule):
    """
    ## What it does
    Flags a Keras model or layer called with `training=True` in inference, evaluation or
    serving code.

    Inference code means: functions named like predict / infer / evaluate / serve / test / val,
    `@tf.function(input_signature=...)` serving functions, and module-level code after the
    model was trained with `fit()`. Calls inside `tf.GradientTape()` blocks, `train_step` /
    `train*` functions and a layer's own `call()` are training code and are not flagged;
    neither are models the analysis cannot see BatchNormalization or Dropout in.

    ## Why is this bad?
    `training=True` runs every layer in training mode. BatchNormalization normalises each
    batch with that batch's own mean and variance instead of the learnt moving statistics,
    so a prediction depends on what else is in the batch (a batch of one loses every
    feature to the learnt shift), and a trainable BatchNormalization layer also overwrites
    its moving mean and variance with the inference data on every such call (Keras 3's
    `BatchNormalization.call` assigns them whenever `training and self.trainable`). Dropout
    drops random units, so the same input gives a different answer each time. `predict()`, `evaluate()` and a plain `model(x)` already
    run in inference mode.

    ## Example
    ```python
    import keras
    import numpy as np

    inputs = keras.Input(shape=(32,))
    x = keras.layers.Dense(64, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    def predict_batch(batch):
        return model(batch, training=True)

    print(predict_batch(np.zeros((4, 32), "float32")))
    ```

    ## Use instead
    ```python
    import keras
    import numpy as np

    inputs = keras.Input(shape=(32,))
    x = keras.layers.Dense(64, activation="relu")(inputs)
    x = keras.layers.BatchNormalization()(x)
    x = keras.layers.Dropout(0.5)(x)
    outputs = keras.layers.Dense(3, activation="softmax")(x)
    model = keras.Model(inputs, outputs)

    def predict_batch(batch):
        return model(batch, training=False)

    print(predict_batch(np.zeros((4, 32), "float32")))
    ```

    ## Known problems
    Monte Carlo dropout samples predictions with `training=True` on purpose; a call repeated
    over `range(...)` or in a function named for sampling / uncertainty is not reported for
    its Dropout, only for BatchNormalization (which it still corrupts; use a Dropout subclass
    that is always active instead). Unit tests of single layers are not inference code.

    ## References
    - FRAMEWORK_FACTS §4 (K-layer, K-trainers): `training` resolution; `predict()` /
      `evaluate()` pass False.
    - FRAMEWORK_FACTS §3.1 (K-bn): BatchNormalization updates its moving statistics when
      `training` and `trainable`; §3.3 (K-dropout).
    """

    code = "INF002"
    name = "keras-inference-training-true"
    category = "inference-mutation"
    severity = Severity.WARNING
    requires = frozenset({"training"})
    message = "{model} ({label}) is called with training=True in {where}: {consequence}"
    fix = "Call {model}(x, training=False) (or {model}.predict(x)) for inference."

    def check(self, ctx):
        if not ({"keras", "tensorflow"} & ctx.frameworks):
            return
        a = analysis(ctx)
        for call in ctx.calls:
            training = kwarg(call, "training")
            if training is None or ctx.value(training) is not True:
                continue
            f = call.func
            if ctx.call_name(call):
                continue  # an imported function (tf.nn.dropout, torch.nn.functional.dropout, ...)
            target = f.value if isinstance(f, ast.Attribute) and f.attr == "__call__" else f
            if not isinstance(target, (ast.Name, ast.Attribute)):
                continue
            key = ctx.key(target)
            if not key or key in ("self", "super"):
                continue
            where = self._inference_context(ctx, call, key)
            if where is None:
                continue
            bn, drop, label = a.keras_features(target)
            if not (bn or drop):
                continue
            if any(isinstance(o, ast.Call) and (ctx.call_name(o) or "").startswith("keras.layers.") for o in a.origins(target)):
                continue  # a single layer exercised on its own (layer tests), not a model
            if _mc_sampling(ctx, call):
                if not bn:
                    continue  # Monte Carlo dropout: random predictions are the point
                drop = False  # the dropout part is deliberate; BatchNormalization still mutates
            yield self.finding(
                ctx,
                call,
                model=key,
                label=label,
                where=where,
                consequence=_consequence(bn, drop),
                evidence={"model": key},
            )

    def _inference_context(self, ctx, call: ast.Call, key: str) -> str | None:
        for anc in ctx.ancestors(call):
            if isinstance(anc, (ast.With, ast.AsyncWith)):
                for item in anc.items:
                    expr = item.context_expr
                    name = ctx.call_name(expr) if isinstance(expr, ast.Call) else ctx.qualname(expr)
                    if name and name.endswith(_TAPES):
                        return None
        funcs = list(enclosing_functions(ctx, call))
        if any(is_unit_test(ctx, f) for f in funcs):
            return None
        for func in funcs:
            if func.name == "call" and ctx.enclosing_class(func) is not None:
                return None
            if is_training_name(func.name) or func.name in ("train_step", "compute_loss", "update"):
                return None
        if funcs:
            func = funcs[0]
            for dec in decorator_names(ctx, func):
                if dec.endswith("tf.function") or dec in ("tensorflow.function",):
                    for d in func.decorator_list:
                        if isinstance(d, ast.Call) and kwarg(d, "input_signature") is not None:
                            return f"serving function {func.name}() (@tf.function with input_signature)"
            for f in funcs:
                if is_inference_name(f.name):
                    return f"inference function {f.name}()"
            return None
        # module level: after the model was trained
        for fit in ctx.method_calls("fit", "fit_generator"):
            if ctx.key(fit.func.value) == key and ctx.order.get(fit, 0) < ctx.order.get(call, 0):  # type: ignore[attr-defined]
                if not list(enclosing_functions(ctx, fit)):
                    return f"code that runs after {key}.fit() ({place(ctx, fit)})"
        return None


_MC_WORDS = ("mc", "monte", "carlo", "uncertainty", "uncertain", "bayes", "bayesian", "sample", "samples", "sampling", "stochastic")


def _mc_sampling(ctx, call: ast.Call) -> bool:
    """Repeated stochastic forward passes (Monte Carlo dropout): a call inside a loop or
    comprehension over range(), or in a function named for uncertainty / MC sampling."""
    for anc in ctx.ancestors(call):
        # `for _ in range(n): ...` and `[model(x, training=True) for _ in range(n)]` (the call
        # is the comprehension's element: its ancestor is the ListComp, not the `comprehension`)
        if isinstance(anc, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
            iters = [g.iter for g in anc.generators]
        elif isinstance(anc, (ast.For, ast.comprehension)):
            iters = [anc.iter]
        else:
            iters = []
        for it in iters:
            if isinstance(it, ast.Call) and isinstance(it.func, ast.Name) and it.func.id == "range":
                return True
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if any(p in _MC_WORDS for p in name_parts(anc.name)):
                return True
    return False


def _consequence(bn, drop) -> str:
    parts = []
    if bn:
        parts.append(
            "BatchNormalization normalises with the batch's own statistics instead of the learnt moving ones and, "
            "where trainable, overwrites its moving mean/variance with this data"
        )
    if drop:
        parts.append("Dropout drops random units, so predictions are random")
    return "; ".join(parts)
