"""HED003: softmax over a single output unit (always 1.0)."""

from __future__ import annotations

import ast

from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import (
    KERAS_ACTIVATION_LAYERS,
    KERAS_DENSE,
    KERAS_SEQUENTIAL,
    TORCH_LINEAR,
    TORCH_SEQUENTIAL,
    _int,
    _sequential_elements,
    dense_head,
    sequential_modules,
    forward_out,
    head_assignments,
    keras_layer_activation,
    keras_tensor_head,
    last_axis,
    resolve_deep,
    torch_tensor_out,
    torch_user_model_classes,
    value_deep,
)


class SoftmaxSingleUnit(StaticRule):
    """
    ## What it does
    Flags a softmax applied over a single output unit: `Dense(1, activation="softmax")`, or `nn.Linear(_, 1)` followed by `nn.Softmax`.

    Covers every spelling of the activation (`"softmax"`, `tf.nn.softmax`,
    `keras.activations.softmax`, a following `Activation("softmax")` or `Softmax()` layer,
    `F.softmax(self.fc(x), dim=1)` in a `forward`) in Sequential, functional and subclassed
    models, and `functools.partial(Dense, ...)` aliases.

    A softmax over another axis of a one-unit output (attention pooling: one score per time
    step, `Softmax(axis=1)`, `F.softmax(scores, dim=1)` inside an attention module, or after a
    `squeeze`/`view`) is a correct pattern and is not reported; in PyTorch `dim=1` counts as
    the unit axis only in a model's classifier head (a `model.fc = nn.Sequential(...)`
    replacement, a top-level `nn.Sequential` model, or the last module of a model's
    `forward`).

    ## Why is this bad?
    Softmax normalises over the units of the last axis. With one unit the result is
    `exp(z) / exp(z) = 1.0` for every input: the prediction is constant, the gradient is zero
    and the model cannot learn (binary cross-entropy then sees a probability of 1 for every
    example). A binary classifier needs one unit with a sigmoid, or two units with a softmax.

    ## Example
    ```python
    from tensorflow import keras

    model = keras.Sequential([
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1, activation="softmax"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    ```

    ## Use instead
    ```python
    from tensorflow import keras

    model = keras.Sequential([
        keras.layers.Dense(64, activation="relu"),
        keras.layers.Dense(1, activation="sigmoid"),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    ```

    ## References
    - Keras `activations.softmax`: normalises over `axis=-1`.
    - PyTorch `nn.Softmax(dim)`: rescales so the elements along `dim` sum to 1.
    """

    code = "HED003"
    name = "softmax-single-unit"
    category = "head"
    severity = Severity.ERROR
    requires = frozenset({"softmax", "Softmax"})
    message = "{what}: softmax over a single unit always outputs 1.0, so the model cannot learn"
    fix = "Use one unit with a sigmoid (binary_crossentropy / BCEWithLogitsLoss), or two units with a softmax."

    def check(self, ctx):
        reported: set[int] = set()
        for node, what in _single_unit_softmaxes(ctx):
            if id(node) in reported:
                continue
            reported.add(id(node))
            yield self.finding(ctx, node, what=what)


def _single_unit_softmaxes(ctx):
    # Dense(1, activation="softmax"): Keras softmax is over the last axis, the units
    candidates = list(ctx.calls_to(KERAS_DENSE))
    if ctx.mentions("partial"):  # RegularizedDense = partial(keras.layers.Dense, ...)
        candidates += [c for c in ctx.calls if ctx.call_name(c) is None]
    for call in candidates:
        if isinstance(call.func, ast.Call):
            continue
        head = dense_head(ctx, call)
        if head is not None and _int(value_deep(ctx, head.units_node)) == 1 and head.activation == "softmax":
            yield call, "Dense(1) with softmax activation"
    # Sequential([... Dense(1), Activation("softmax")])
    for call in ctx.calls_to(KERAS_SEQUENTIAL):
        if isinstance(call.func, ast.Call):
            continue
        elements = [resolve_deep(ctx, e) for e in (_sequential_elements(ctx, call) or [])]
        for prev, layer in zip(elements, elements[1:]):
            if _keras_softmax_layer(ctx, layer) and _keras_dense1_linear(ctx, prev):
                yield layer, "softmax layer after Dense(1)"
    # functional: Activation("softmax")(Dense(1)(x)), tf.nn.softmax(Dense(1)(x))
    for call in ctx.calls:
        if not call.args:
            continue
        softmax_node = None
        if isinstance(call.func, ast.Call):
            if _keras_softmax_layer(ctx, call.func):
                softmax_node = call.func
        elif ctx.call_name(call) == "keras.activations.softmax" and last_axis(ctx, kwarg(call, "axis", 1)):
            softmax_node = call
        if softmax_node is None:
            continue
        head = keras_tensor_head(ctx, call.args[0])
        if head is not None and head.kind == "dense" and head.activation == "linear" and head.units(ctx) == 1:
            yield softmax_node, "softmax applied to the output of Dense(1)"
    # torch: nn.Sequential(..., nn.Linear(_, 1), nn.Softmax(dim=...))
    heads = _torch_head_sequentials(ctx)
    for call in ctx.calls_to(TORCH_SEQUENTIAL):
        if isinstance(call.func, ast.Call):
            continue
        mods = sequential_modules(ctx, call) or []
        for i, (prev, mod) in enumerate(zip(mods, mods[1:])):
            if not (_torch_linear1(ctx, prev) and isinstance(mod, ast.Call) and ctx.call_name(mod) == "torch.nn.Softmax"):
                continue
            dim = _torch_dim(ctx, mod)
            # dim=-1 is always the unit axis; dim=1 (or the implicit dim) only when the Sequential
            # is a model's classifier head (2-D input), not an attention scorer over a sequence
            if dim == -1 or (dim in (1, None) and id(call) in heads and i + 1 == len(mods) - 1):
                yield mod, "nn.Softmax after nn.Linear(..., 1)"
    # torch forward: return F.softmax(self.fc(x), dim=1) with self.fc = nn.Linear(_, 1)
    models = {id(k) for k in torch_user_model_classes(ctx)}
    for klass in ctx.classes.values():
        out = forward_out(ctx, klass)
        if out is None or out.activation != "softmax" or out.layer is None or out.activation_node is None:
            continue
        if _torch_linear1(ctx, out.layer) and (out.dim == -1 or (out.dim in (1, None) and id(klass) in models)):
            yield out.activation_node, "softmax over the output of nn.Linear(..., 1)"
    # torch: probs = F.softmax(fc(x), dim=-1) anywhere
    for call in ctx.calls:
        if isinstance(call.func, ast.Call) or ctx.call_name(call) != "torch.softmax" or not call.args:
            continue
        out = torch_tensor_out(ctx, call)
        if out is not None and out.layer is not None and _torch_linear1(ctx, out.layer) and out.dim == -1:
            yield call, "softmax over the output of nn.Linear(..., 1)"


def _torch_head_sequentials(ctx) -> set[int]:
    """Sequentials that are a whole model (`model = nn.Sequential(...)` at top level) or a
    classifier head (`model.fc = nn.Sequential(...)`, the last module of a model's forward)."""
    out: set[int] = set()
    for h in head_assignments(ctx):
        value = resolve_deep(ctx, h.value)
        if isinstance(value, ast.Call):
            out.add(id(value))
    for klass in torch_user_model_classes(ctx):
        out_info = forward_out(ctx, klass)
        if out_info is not None and out_info.activation_node is not None:
            for call in ctx.calls_to(TORCH_SEQUENTIAL):
                if any(a is out_info.activation_node for a in call.args) or any(resolve_deep(ctx, a) is out_info.activation_node for a in call.args):
                    out.add(id(call))
    for call in ctx.calls_to(TORCH_SEQUENTIAL):
        stmt = ctx.statement(call)
        if isinstance(stmt, ast.Assign) and stmt.value is call and all(isinstance(t, ast.Name) for t in stmt.targets) and ctx.enclosing_class(call) is None:
            out.add(id(call))
    return out


def _torch_dim(ctx, module):
    node = kwarg(module, "dim", 0)
    return None if node is None else value_deep(ctx, node)


def _keras_softmax_layer(ctx, node) -> bool:
    if not isinstance(node, ast.Call) or ctx.call_name(node) not in KERAS_ACTIVATION_LAYERS:
        return False
    return keras_layer_activation(ctx, node) == "softmax"


def _keras_dense1_linear(ctx, node) -> bool:
    head = dense_head(ctx, node)
    return head is not None and head.activation == "linear" and _int(value_deep(ctx, head.units_node)) == 1


def _torch_linear1(ctx, node) -> bool:
    return isinstance(node, ast.Call) and ctx.call_name(node) == TORCH_LINEAR and _int(value_deep(ctx, kwarg(node, "out_features", 1))) == 1
