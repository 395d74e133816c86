"""One real, eager training step of a Keras 3 model with its own optimizer (LRT101's probe).

What `fit()` does for one batch, without `fit()`: `model(x, training=True)` under the
backend's autograd (`tf.GradientTape` under TensorFlow; `torch.autograd.grad` on the
variables' torch parameters under the torch backend), the loss, then
`optimizer.apply(grads, variables)`. Nothing is traced or compiled: `fit`, `train_on_batch`
and `compile` would trace a `tf.function` (about 40 forward passes) and leave a compiled
train function on the user's model.

The optimizer: a user's optimizer that is not built yet (a fresh one, or the one
`model.compile()` stored) is never built by the audit: the step runs on a clone,
`type(opt).from_config(opt.get_config())`, with its `iterations` set to the user's, so a
`LearningRateSchedule` gives the current rate. A built optimizer (resumed training: its
moments are part of what the next step does) steps itself; the caller restores the snapshot
(`ctx.restore()`: variables, BatchNormalization statistics, seed states, every optimizer
variable including `iterations`).

Only keras and its backend are imported; under the TensorFlow backend torch is never
imported. The measurement is returned as plain numbers (squared norms per layer), so the
rule's decision logic (`auditor.rules._step_probe`) is shared with PyTorch.
"""

from __future__ import annotations

import contextlib
from typing import Any, Callable

import numpy as np

from auditor.analysis.records import record


class StepSkipped(Exception):
    """The step cannot be taken meaningfully; the message goes to the report's notes."""


@record
class KerasStep:
    updates: list  # (qualified layer name, ||w_after - w_before||^2, ||w_before||^2, is_head) per layer with stepped variables
    head: Any  # qualified name of the head (the last layer with weights that ran) or None
    lr: float  # the learning rate the step used (a schedule's value at `iterations`)
    optimizer: str  # class name
    optimizer_note: str  # "" or how the step differs from the user's optimizer (a clone, no accumulation)
    momentum: float  # SGD momentum (0 for other optimizers)
    nesterov: bool
    resumed: bool  # the user's optimizer was built and already carries momentum
    loss: float
    loss_name: str
    features_after: Any  # callable -> the head's input after the step, numpy (N, -1), or None


def looks_untrained(ctx: Any) -> bool:
    """True when every BatchNormalization layer still holds its initial moving statistics
    (mean 0, variance 1): a freshly built network, not pretrained weights. Without one: False."""
    from auditor.dynamic.keras_state import to_numpy

    layers = ctx.batchnorm_layers()
    if not layers:
        return False
    for _name, layer in layers:
        mean, var = to_numpy(layer.moving_mean), to_numpy(layer.moving_variance)
        if mean.size == 0 or not (np.all(mean == 0) and np.all(var == 1)):
            return False
    return True


def current_lr(optimizer: Any) -> float:
    """The learning rate of the next step: a schedule evaluated at `iterations`, a callable
    called, a variable read."""
    from auditor.dynamic.keras_state import to_numpy

    try:
        value = to_numpy(optimizer.learning_rate).reshape(-1)[0]
    except Exception:  # noqa: BLE001 - an exotic learning_rate
        return float("nan")
    # the shortest decimal of the stored precision: a float32 variable's 0.001 reads 0.001
    return float(str(value)) if isinstance(value, np.floating) else float(value)


def optimizer_for_step(optimizer: Any) -> tuple[Any, str]:
    """(the optimizer to step, note). The user's when it is built (resumed training); a clone
    otherwise, so that the audit never builds (adds slot variables to) the user's optimizer.
    Gradient accumulation is switched off in the clone: its update happens once every N
    calls, with the mean gradient, which is what one plain step measures."""
    steps = getattr(optimizer, "gradient_accumulation_steps", None) or 0
    if optimizer.built and steps <= 1:
        return optimizer, ""
    config = optimizer.get_config()
    note = "a clone of the unbuilt optimizer (the user's is left unbuilt)" if not optimizer.built else "a clone of the optimizer"
    if steps > 1:
        config["gradient_accumulation_steps"] = None
        note += f"; gradient accumulation over {steps} calls switched off (one applied update measured)"
    try:
        clone = type(optimizer).from_config(config)
    except Exception as exc:  # noqa: BLE001 - a custom optimizer without a round-tripping config
        raise StepSkipped(f"cannot clone {type(optimizer).__name__} from its config ({type(exc).__name__}: {exc}); the user's optimizer is not built by the audit") from exc
    with contextlib.suppress(Exception):  # an optimizer without `iterations`: the clone starts at 0
        clone.iterations.assign(optimizer.iterations)
    return clone, note


def resolve_loss(keras: Any, loss: Any, default_from_logits: bool) -> tuple[Callable, str]:
    """A callable `loss(y_true, y_pred)` and its name: the user's loss object or function, a
    name through `keras.losses.get`, else sparse categorical cross-entropy."""
    if loss is None:
        return keras.losses.SparseCategoricalCrossentropy(from_logits=default_from_logits), f"sparse_categorical_crossentropy(from_logits={default_from_logits}) (default)"
    if isinstance(loss, str):
        try:
            return keras.losses.get(loss), loss
        except Exception as exc:  # noqa: BLE001
            raise StepSkipped(f"unknown Keras loss {loss!r}") from exc
    if not callable(loss):
        raise StepSkipped(f"the loss {loss!r} is not callable")
    name = getattr(loss, "name", None) or getattr(loss, "__name__", None) or type(loss).__name__
    return loss, str(name)


def take_step(ctx: Any, *, loss: Any, targets: np.ndarray, default_from_logits: bool) -> KerasStep:
    """One training step on `ctx.inputs()` against `targets` (numpy, in the form the loss
    takes). Leaves the model stepped: the caller restores (`ctx.restore()`)."""
    from auditor.dynamic.keras_context import primary_output
    from auditor.dynamic.keras_state import to_numpy

    keras, model = ctx.keras, ctx.model
    record_ = ctx.eval_pass()
    head_name = record_.head
    head_layer = ctx.module(head_name) if head_name else None
    trainable = list(model.trainable_variables)
    if not trainable:
        raise StepSkipped("the model has no trainable variables")
    head_ids = {id(v) for v in (head_layer.trainable_variables if head_layer is not None else [])}
    if all(id(v) in head_ids for v in trainable):
        raise StepSkipped("only the head is trained: no pretrained weights move")
    user = ctx.optimizer
    optimizer, note = optimizer_for_step(user)
    resumed = optimizer is user and _has_momentum_state(optimizer)
    lr = current_lr(optimizer)
    loss_fn, loss_name = resolve_loss(keras, loss, default_from_logits)

    inputs = ctx.inputs()
    try:
        grads, value = _gradients(ctx, loss_fn, optimizer, inputs, targets, trainable, primary_output)
    except StepSkipped:
        raise
    except Exception as exc:  # noqa: BLE001 - the user's loss does not take these targets
        text = str(exc).strip().splitlines()
        raise StepSkipped(f"the loss failed on the sample: {type(exc).__name__}: {text[0] if text else ''}") from exc
    pairs = [(g, v) for g, v in zip(grads, trainable) if g is not None]
    del grads
    if not pairs:
        raise StepSkipped("the loss does not depend on the trainable variables")
    try:
        optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
    except (KeyError, ValueError) as exc:
        if optimizer is not user:
            raise StepSkipped(f"{type(optimizer).__name__}.apply() refused the model's variables ({type(exc).__name__}: {exc})") from exc
        # a built optimizer that tracks other variables than the model's trainable ones (apply() checks
        # before it updates anything): step a fresh clone
        optimizer = type(user).from_config(user.get_config())
        resumed = False
        note = "a clone of the optimizer (it was built for other variables than the model's trainable ones)"
        optimizer.apply([g for g, _ in pairs], [v for _, v in pairs])
    stepped = {id(v) for _, v in pairs}
    del pairs

    saved = {id(variable): before for variable, before, *_rest in ctx.state.variables}
    updates = []
    for name, layer in [("<model>", model)] + list(ctx.layers()):  # the root too: a subclassed model's own add_weight
        own = [v for v in (getattr(layer, "_trainable_variables", None) or []) if id(v) in stepped and id(v) in saved]
        if not own:
            continue
        dsq = wsq = 0.0
        for variable in own:
            before = saved[id(variable)]
            if before.dtype.kind != "f":
                continue
            now = to_numpy(variable).astype(np.float64)
            old = before.astype(np.float64)
            dsq += float(np.square(now - old).sum())
            wsq += float(np.square(old).sum())
        updates.append((name, dsq, wsq, layer is head_layer))

    momentum = float(getattr(optimizer, "momentum", 0.0) or 0.0) if type(optimizer).__name__ == "SGD" else 0.0
    features = _features_after(ctx, head_layer, inputs) if head_layer is not None and record_.features is not None else None
    return KerasStep(updates, head_name, lr, type(user).__name__, note, momentum, bool(getattr(optimizer, "nesterov", False)),
                     resumed, value, loss_name, features)


def _gradients(ctx: Any, loss_fn: Callable, optimizer: Any, inputs: Any, targets: np.ndarray, variables: list, primary_output: Callable) -> tuple[list, float]:
    """Gradients of the loss with respect to `variables` (backend tensors, None where the loss
    does not depend on one) and the loss value, from one `model(x, training=True)`."""
    from auditor.dynamic.keras_state import to_numpy

    keras, model = ctx.keras, ctx.model

    def loss_of(output: Any) -> Any:
        y_true = targets
        if y_true.dtype.kind == "f":
            y_true = y_true.astype(keras.backend.standardize_dtype(output.dtype))
        value = loss_fn(y_true, output)
        if len(getattr(value, "shape", ())) > 0:
            value = keras.ops.mean(value)
        scale = getattr(optimizer, "scale_loss", None)  # loss_scale_factor: apply() unscales the gradients
        return scale(value) if callable(scale) and getattr(optimizer, "loss_scale_factor", None) else value

    if ctx.backend == "tensorflow":
        import tensorflow as tf

        with tf.GradientTape() as tape:
            output = primary_output(model(inputs, training=True))
            value = loss_of(output)
        grads = tape.gradient(value, variables)
    elif ctx.backend == "torch":
        import torch

        with torch.enable_grad():
            output = primary_output(model(inputs, training=True))
            value = loss_of(output)
            if not getattr(value, "requires_grad", False):
                raise StepSkipped("the model's output does not depend on its trainable variables")
            params = [v.value for v in variables]
            grads = list(torch.autograd.grad(value, params, allow_unused=True))
    else:
        raise StepSkipped(f"the {ctx.backend} backend is not supported by the learning-rate probe")
    unscaled = float(to_numpy(value))
    factor = getattr(optimizer, "loss_scale_factor", None)
    if factor:
        unscaled /= float(factor)
    return list(grads), unscaled


def _has_momentum_state(optimizer: Any) -> bool:
    """A built SGD whose momentum slots are not all zero (it stepped before)."""
    from auditor.dynamic.keras_state import to_numpy

    slots = getattr(optimizer, "momentums", None) or []
    return any(np.any(to_numpy(m) != 0) for m in slots)


def _features_after(ctx: Any, head: Any, inputs: Any) -> Callable[[], Any]:
    """A function that runs one inference call of the stepped model and returns the head's
    input, flattened to (N, -1). Non-trainable variables (moving statistics, seed states) are
    put back first, so that the difference isolates the weight update."""
    from auditor.dynamic.keras_context import LayerPatches
    from auditor.dynamic.keras_state import bitwise_equal, to_numpy

    def run() -> Any:
        for variable, saved, trainable, _kind, _owner in ctx.state.variables:
            if not variable.trainable and not bitwise_equal(to_numpy(variable), saved):
                variable.assign(saved)
        captured: list[Any] = []
        original = head.call

        def call(*args: Any, **kwargs: Any) -> Any:
            x = args[0] if args else next(iter(kwargs.values()), None)
            captured[:] = [x]
            return original(*args, **kwargs)

        with LayerPatches() as patches:
            patches.patch(head, call)
            ctx.call(inputs, training=False)
        if not captured:
            return None
        array = to_numpy(captured[0])
        return array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)

    return run
