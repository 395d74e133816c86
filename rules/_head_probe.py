"""Shared measurements of the head probes HED101-HED104, written once for PyTorch and Keras.

Imported inside `probe`. The math runs on numpy: a PyTorch output (a tensor) is converted
with `to_numpy` (the head's output is small: N x classes), a Keras record already holds
numpy. Nothing here imports torch or keras at module level; the few framework-specific
readings (which loss a Keras loss object is, the activation a Keras `Dense` declares) look at
attributes and module names, so the TensorFlow backend never imports torch.
"""

from __future__ import annotations

import functools
import re
from typing import Any, NamedTuple

import numpy as np

#: name parts of a classifier's last layer in torchvision / timm / HF / common user code
CLASSIFIER_WORDS = ("fc", "classifier", "head", "heads", "last", "logits", "logit", "out", "output",
                    "cls", "pred", "predictions", "prediction", "linear", "classif", "clf", "score", "final")
_FC = re.compile(r"^(fc|linear|dense|out|head|classifier)\d*$")

#: activations a head can end with, by the names Keras and PyTorch give them
ACTIVATED = ("softmax", "sigmoid", "log_softmax")


# -- arrays ---------------------------------------------------------------------------------
def to_numpy(value: Any) -> Any:
    """A numpy view of an output: numpy as is; a torch tensor detached, on the CPU, low
    precision floats widened exactly to float32; None for anything else."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    if hasattr(value, "detach") and hasattr(value, "is_floating_point"):  # a torch tensor
        tensor = value.detach()
        if tensor.is_floating_point() and tensor.element_size() < 4:
            tensor = tensor.float()
        try:
            return tensor.cpu().numpy()
        except (TypeError, RuntimeError):
            return None
    try:
        return np.asarray(value)
    except Exception:  # noqa: BLE001 - not an array
        return None


def float_output(output: Any) -> Any:
    """The output as a numpy float array, or None (integer, complex, empty, not an array)."""
    array = to_numpy(output)
    if array is None or array.dtype.kind != "f" or array.size == 0:
        return None
    return array


def channels_last(ctx: Any) -> bool:
    """Keras puts the class dimension of dense predictions last (NHWC); PyTorch at dim 1."""
    if getattr(ctx, "framework", "torch") != "keras":
        return False
    try:
        return ctx.keras.config.image_data_format() != "channels_first"
    except Exception:  # noqa: BLE001
        return True


def class_dim(output: Any, last: bool = False) -> int | None:
    """The class dimension of a classifier output: the last one for (N, C) and (N, T, C),
    dim 1 for PyTorch dense predictions (N, C, H, W) / (N, C, D, H, W), the last one for
    Keras's (N, H, W, C) (`last=True`); None for (N,) or scalars."""
    dims = np.ndim(output) if not hasattr(output, "dim") else output.dim()
    if dims < 2:
        return None
    if last:
        return dims - 1
    return 1 if dims >= 4 else dims - 1


def units(output: Any, last: bool = False) -> int | None:
    dim = class_dim(output, last)
    return None if dim is None else int(output.shape[dim])


def head_name(ctx: Any) -> str:
    head = ctx.eval_pass().head
    return head if head else "<model>"


# -- state dicts (PyTorch weight files) ----------------------------------------------------
def looks_like_classifier(name: str) -> bool:
    parts = [p for p in re.split(r"[._/]", name.lower()) if p]
    return any(p in CLASSIFIER_WORDS or _FC.match(p) for p in parts)


def state_dict_head(tensors: dict[str, Any]) -> tuple[str, Any] | None:
    """(module prefix, weight) of the classifier in a state dict: the last `*.weight` of
    rank >= 2 in state-dict order (registration order: the head comes last) when it is a
    matrix or a 1x1 convolution and its name looks like a classifier; None otherwise."""
    last = None
    for name, tensor in tensors.items():
        if name.endswith("weight") and len(getattr(tensor, "shape", ())) >= 2:
            last = (name, tensor)
    if last is None:
        return None
    name, weight = last
    rank = len(weight.shape)
    if rank == 4 and tuple(weight.shape[2:]) != (1, 1):
        return None
    if rank not in (2, 4):
        return None
    prefix = name[: -len("weight")].rstrip(".")
    if not looks_like_classifier(prefix):
        return None
    return prefix or "<model>", weight


# -- what the output is ----------------------------------------------------------------------
def _logsumexp(x: np.ndarray, axis: int) -> np.ndarray:
    top = x.max(axis=axis, keepdims=True)
    return np.log(np.exp(x - top).sum(axis=axis)) + np.squeeze(top, axis=axis)


def activation(output: Any, last: bool = False) -> tuple[str | None, dict]:
    """'softmax', 'log_softmax', 'sigmoid' or None for a float classifier output, with the
    numbers that decided it. Works on numpy arrays and torch tensors alike.

    softmax: >= 2 classes, no negative value, every row sums to 1 within 1e-3.
    log_softmax: >= 2 classes, no positive value, every row's logsumexp is 0 within 1e-3.
    sigmoid: at least 8 values, all in [0, 1], at least half strictly inside (0, 1), at
    most 5 % exact zeros (a ReLU output has many; a sigmoid saturates to 1.0, hardly to 0), and
    not softmax (raw logits of a linear head have negative values).
    """
    array = float_output(output)
    if array is None:
        return None, {}
    x = array.astype(np.float64)
    if not bool(np.isfinite(x).all()):
        return None, {}
    dim = class_dim(x, last)
    lo, hi = float(x.min()), float(x.max())
    info: dict[str, Any] = {"min": round(lo, 4), "max": round(hi, 4)}
    if dim is not None and x.shape[dim] >= 2:
        if lo >= 0:
            dev = float(np.abs(x.sum(axis=dim) - 1).max())
            if dev <= 1e-3:
                info["row_sum_max_deviation"] = float(f"{dev:.2g}")
                return "softmax", info
        if hi <= 0:
            dev = float(np.abs(_logsumexp(x, dim)).max())
            if dev <= 1e-3:
                info["logsumexp_max_deviation"] = float(f"{dev:.2g}")
                return "log_softmax", info
    if x.size >= 8 and lo >= 0 and hi <= 1:
        inside = float(((x > 0) & (x < 1)).mean())
        zeros = float((x == 0).mean())
        if inside >= 0.5 and zeros <= 0.05:
            info["fraction_strictly_inside_0_1"] = round(inside, 3)
            return "sigmoid", info
    return None, info


class OutputKind(NamedTuple):
    """What the head's output is, measured and (Keras) declared."""

    kind: str | None  # "softmax" | "sigmoid" | "log_softmax" | "logits" (cannot be probabilities) | None
    info: dict  # evidence: min/max, the test that decided, the declared activation
    units: int | None  # size of the class dimension
    declared: str | None  # activation the Keras layers declare after the head's matmul (None: none read)


def output_kind(ctx: Any, output: Any) -> OutputKind:
    """The measured activation of `output`; where the measurement cannot tell (a sigmoid over
    fewer than 8 values, a softmax over one unit) the activation the Keras model declares
    (the head `Dense`'s `activation`, then any Activation/Softmax layer or `keras.ops`
    activation between it and the model output); "logits" when values lie outside [0, 1]
    with no activation measured (raw scores: they cannot be probabilities)."""
    last = channels_last(ctx)
    kind, info = activation(output, last)
    info = dict(info)
    n = units(float_output(output), last) if float_output(output) is not None else None
    declared, where = declared_activation(ctx)
    if declared is not None:
        info["declared_activation"] = f"{declared} ({where})"
    if kind is None and declared in ACTIVATED:
        kind = declared
    if kind is None and info and (info["min"] < 0 or info["max"] > 1) and declared in (None, "linear"):
        kind = "logits"
        values = float_output(output)
        info["fraction_outside_0_1"] = round(float(((values < 0) | (values > 1)).mean()), 3)
    return OutputKind(kind, info, n, declared)


# -- Keras: the activation the model declares ------------------------------------------------
def activation_name(fn: Any) -> str | None:
    """'softmax', 'sigmoid', 'linear', 'relu', ... for a Keras activation function or name."""
    if fn is None:
        return None
    if isinstance(fn, str):
        return fn.lower()
    name = getattr(fn, "__name__", None) or type(fn).__name__
    return _normalise_activation(name)


def _normalise_activation(name: str) -> str:
    key = re.sub(r"[^a-z]", "", name.lower())
    return {"softmax": "softmax", "logsoftmax": "log_softmax", "sigmoid": "sigmoid", "linear": "linear",
            "identity": "linear", "relu": "relu"}.get(key, name.lower())


def _layer_activation(op: Any) -> str | None:
    """The activation a weightless layer or keras.ops operation applies, None if it is not one."""
    kind = type(op).__name__
    if kind == "Activation" or (kind not in ("Dense", "EinsumDense", "Conv1D", "Conv2D", "Conv3D") and hasattr(op, "activation") and not _has_weights(op)):
        return activation_name(getattr(op, "activation", None))
    key = re.sub(r"[^a-z]", "", kind.lower())
    if key in ("softmax", "logsoftmax", "sigmoid", "relu", "leakyrelu", "elu", "hardsigmoid", "silu", "gelu", "tanh"):
        return _normalise_activation(kind)
    return None


#: weightless operations that leave the class scores as they are
_PASS_THROUGH = ("Flatten", "Reshape", "Dropout", "Identity", "Squeeze", "ExpandDims", "InputLayer", "Cast",
                 "ActivityRegularization")


def _has_weights(layer: Any) -> bool:
    return bool(getattr(layer, "_trainable_variables", None) or getattr(layer, "_non_trainable_variables", None))


def declared_activation(ctx: Any) -> tuple[str | None, str]:
    """(activation, where) the Keras model declares for its output: the outermost activation
    applied after the head's own weights, e.g. ("softmax", "predictions activation") or
    ("softmax", "Softmax layer softmax after head"); (None, "") for PyTorch, for a head
    whose declaration cannot be read, and for a head Dense with a linear activation and no
    activation after it ("linear" is returned then, so a caller knows it was read)."""
    if getattr(ctx, "framework", "torch") != "keras":
        return None, ""

    def compute() -> tuple[str | None, str]:
        head = ctx.eval_pass().head
        if not head:
            return None, ""
        try:
            layer = ctx.module(head)
        except KeyError:
            return None, ""
        found: tuple[str | None, str] = (None, "")
        own = activation_name(getattr(layer, "activation", None))
        if own is not None:
            found = (own, f"{head} activation")
        trailing = _trailing_activations(ctx.model, layer)
        if trailing is None:  # the graph could not be followed (a subclassed model)
            return found
        for name, act in trailing:  # innermost first: the last one decides
            if act != "linear":
                found = (act, f"{name} after {head}")
        if found[0] is None and own is None:
            return None, ""
        return found

    return ctx.memo("head:declared_activation", compute)


def _trailing_activations(model: Any, head: Any) -> list[tuple[str, str]] | None:
    """Activations between `head` and the model's primary output, innermost first, read from
    a Functional/Sequential graph; None when the graph cannot be followed to the head."""
    try:
        outputs = model.outputs
    except Exception:  # noqa: BLE001 - a subclassed model has none
        return None
    if not outputs:
        return None
    tensor = outputs[0]
    chain: list[tuple[str, str]] = []
    for _ in range(64):
        history = getattr(tensor, "_keras_history", None)
        if history is None:
            return None
        op = history[0]
        if op is head:
            return list(reversed(chain))
        if _has_weights(op) or hasattr(op, "layers"):  # another weighted layer or a nested model
            return list(reversed(chain)) if _contains(op, head) else None
        act = _layer_activation(op)
        if act is not None:
            chain.append((getattr(op, "name", type(op).__name__), act))
        elif type(op).__name__ not in _PASS_THROUGH:
            return None
        try:
            node = op._inbound_nodes[history[1]]
            inputs = list(node.input_tensors)
        except Exception:  # noqa: BLE001
            return None
        if len(inputs) != 1:
            return None
        tensor = inputs[0]
    return None


def _contains(container: Any, layer: Any) -> bool:
    """`layer` is the last weighted layer of the nested model `container` (its head)."""
    try:
        inner = [l for l in container._flatten_layers(include_self=False, recursive=True) if _has_weights(l) and not hasattr(l, "layers")]
    except Exception:  # noqa: BLE001
        return False
    return bool(inner) and inner[-1] is layer


# -- the loss ----------------------------------------------------------------------------------
class LossSpec(NamedTuple):
    """What a loss expects, whatever the framework."""

    family: str  # "categorical" (softmax cross-entropy) | "binary" (per-unit sigmoid) | "nll"
    expects: str  # "logits" | "probabilities" | "log_probabilities"
    targets: str  # "sparse" (class ids) | "one_hot" | "either" (ids or class probabilities) | "binary" (0/1, shaped like the output)
    label: str  # display name, e.g. "CrossEntropyLoss", "sparse_categorical_crossentropy(from_logits=True)"
    from_logits: bool | None  # Keras's flag (None for PyTorch losses)


#: PyTorch losses by normalised name: (family, expects, targets)
_TORCH_LOSSES = {
    "crossentropyloss": ("categorical", "logits", "either"), "crossentropy": ("categorical", "logits", "either"),
    "ce": ("categorical", "logits", "either"),
    "bcewithlogitsloss": ("binary", "logits", "binary"), "binarycrossentropywithlogits": ("binary", "logits", "binary"),
    "bcewithlogits": ("binary", "logits", "binary"),
    "nllloss": ("nll", "log_probabilities", "sparse"), "nll": ("nll", "log_probabilities", "sparse"),
    "nllloss2d": ("nll", "log_probabilities", "sparse"),
    "bceloss": ("binary", "probabilities", "binary"), "binarycrossentropy": ("binary", "probabilities", "binary"),
    "bce": ("binary", "probabilities", "binary"),
}
#: Keras losses by normalised name: (family, targets); `from_logits` decides what they expect
_KERAS_LOSSES = {
    "categoricalcrossentropy": ("categorical", "one_hot"), "cce": ("categorical", "one_hot"),
    "categoricalfocalcrossentropy": ("categorical", "one_hot"),
    "sparsecategoricalcrossentropy": ("categorical", "sparse"), "scce": ("categorical", "sparse"),
    "binarycrossentropy": ("binary", "binary"), "bce": ("binary", "binary"),
    "binaryfocalcrossentropy": ("binary", "binary"),
}


def primary_loss(loss: Any) -> Any:
    """The loss of the primary output: the first of a list/tuple (Keras multi-output
    `compile(loss=[...])`), the first value of a dict."""
    for _ in range(4):
        if isinstance(loss, dict):
            loss = next(iter(loss.values()), None)
        elif isinstance(loss, (list, tuple)) or type(loss).__name__ == "ListWrapper":
            loss = loss[0] if len(loss) else None
        else:
            break
    return loss


def _is_keras_object(obj: Any) -> bool:
    module = getattr(obj, "__module__", None) or type(obj).__module__ or ""
    if not module.startswith("keras"):
        module = type(obj).__module__ or ""
    return module.startswith(("keras", "tf_keras", "tensorflow.python.keras"))


def loss_spec(loss: Any, framework: str = "torch") -> LossSpec | None:
    """What `loss` expects: a PyTorch loss module, class, functional loss or name
    (`framework="torch"`), or a Keras loss object (its `from_logits` attribute or config), a
    Keras loss function (`from_logits=False` unless a `functools.partial` sets it) or name
    (`"sparse_categorical_crossentropy"`, `"bce"`, ...); the primary loss of a list or dict.
    None for a loss it does not know (MSE, a custom function)."""
    loss = primary_loss(loss)
    if loss is None:
        return None
    keywords: dict[str, Any] = {}
    while isinstance(loss, functools.partial):
        keywords = {**loss.keywords, **keywords}
        loss = loss.func
    keras_loss = _is_keras_object(loss) or (framework == "keras" and isinstance(loss, str))
    if isinstance(loss, str):
        label = loss
    elif isinstance(getattr(loss, "__name__", None), str):  # a function or a class
        label = loss.__name__
    else:  # a loss object
        label = type(loss).__name__
        if keras_loss and label == "LossFunctionWrapper":
            fn = getattr(loss, "fn", None)
            label = getattr(fn, "__name__", None) or getattr(loss, "name", label)
    key = re.sub(r"[^a-z]", "", label.lower())
    if keras_loss:
        if key not in _KERAS_LOSSES:
            return None
        family, targets = _KERAS_LOSSES[key]
        from_logits = _from_logits(loss, keywords)
        expects = "logits" if from_logits else "probabilities"
        shown = f"{label}(from_logits={from_logits})" if not isinstance(loss, str) or from_logits else f'"{label}"'
        return LossSpec(family, expects, targets, shown, bool(from_logits))
    if key not in _TORCH_LOSSES:
        return None
    family, expects, targets = _TORCH_LOSSES[key]
    return LossSpec(family, expects, targets, label, None)


def _from_logits(loss: Any, keywords: dict) -> bool:
    if "from_logits" in keywords:
        return bool(keywords["from_logits"])
    if isinstance(loss, (str, type)) or callable(loss) and not hasattr(loss, "get_config"):
        return False  # a name, a class, or a loss function: Keras's default
    value = getattr(loss, "from_logits", None)
    if value is None:
        value = (getattr(loss, "_fn_kwargs", None) or {}).get("from_logits")
    if value is None:
        try:
            value = loss.get_config().get("from_logits")
        except Exception:  # noqa: BLE001
            value = None
    return bool(value)


def loss_kind(loss: Any) -> tuple[str | None, str]:
    """('cross_entropy' | 'bce_with_logits' | 'nll' | 'bce' | None, display name) for a PyTorch
    loss module, a functional loss, a functools.partial of one, or a name."""
    if loss is None:
        return None, ""
    while isinstance(loss, functools.partial):
        loss = loss.func
    if isinstance(loss, str):
        label = loss
    elif isinstance(getattr(loss, "__name__", None), str):  # a function or a class
        label = loss.__name__
    else:  # a loss module instance
        label = type(loss).__name__
    key = re.sub(r"[^a-z]", "", label.lower())
    if key in ("crossentropyloss", "crossentropy", "categoricalcrossentropy", "sparsecategoricalcrossentropy", "ce"):
        return "cross_entropy", label
    if key in ("bcewithlogitsloss", "binarycrossentropywithlogits", "bcewithlogits"):
        return "bce_with_logits", label
    if key in ("nllloss", "nll", "nllloss2d"):
        return "nll", label
    if key in ("bceloss", "binarycrossentropy", "bce"):
        return "bce", label
    return None, label


# -- the labels --------------------------------------------------------------------------------
class LabelsKind(NamedTuple):
    kind: str  # "sparse" (integer class ids) | "one_hot" (rows of class probabilities) | "other"
    shape: tuple
    classes: int | None  # one-hot width, or max id + 1
    low: int | None  # smallest id (sparse)
    high: int | None  # largest id (sparse)


def labels_kind(labels: Any) -> LabelsKind | None:
    """Integer class ids ((N,) or (N, 1) integers, or whole floats), one-hot / class
    probabilities ((N, C), C >= 2, values in [0, 1], rows summing to 1), or other."""
    if labels is None:
        return None
    array = to_numpy(labels)
    if array is None or array.size == 0 or array.dtype.kind not in "biuf":
        return None
    shape = tuple(array.shape)
    if array.ndim == 2 and array.shape[1] >= 2 and array.dtype.kind in "biuf":
        values = array.astype(np.float64)
        if np.isfinite(values).all() and values.min() >= 0 and values.max() <= 1 and np.abs(values.sum(axis=1) - 1).max() <= 1e-3:
            return LabelsKind("one_hot", shape, int(array.shape[1]), None, None)
        return LabelsKind("other", shape, None, None, None)
    ids = array.reshape(-1) if array.ndim == 1 or (array.ndim == 2 and array.shape[1] == 1) else None
    if ids is not None:
        if ids.dtype.kind == "f" and not (np.isfinite(ids).all() and np.array_equal(ids, np.round(ids))):
            return LabelsKind("other", shape, None, None, None)
        if ids.dtype.kind == "b":
            ids = ids.astype(np.int64)
        low, high = int(ids.min()), int(ids.max())
        return LabelsKind("sparse", shape, high + 1, low, high)
    return LabelsKind("other", shape, None, None, None)
