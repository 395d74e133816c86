"""Snapshot and bit-for-bit restore of everything a Keras probe can touch.

Why not `get_weights()`: it skips seed-generator states (Dropout's), optimizer variables
(`iterations`, slots, the learning rate), every layer's `trainable` flag and each variable's
own `trainable`, the compiled train/predict functions a probe could leave behind, and the
random generators. The audit contract promises all of them back exactly. Memory: one numpy
copy of every variable (1x the model's bytes) plus the optimizer's.

Works under every Keras backend: values go through `keras.ops.convert_to_numpy` and come back
with `Variable.assign`, which keeps the backend's own storage (and, under the torch backend,
the torch parameter object) in place.
"""

from __future__ import annotations

import random
import sys
from typing import Any

import numpy as np

from auditor.dynamic.records import TensorChange

#: attributes of a Model that hold traced functions: a probe must never leave one behind
#: (the first train step traces a tf.function that costs about 40 forward passes)
FUNCTION_ATTRIBUTES = ("train_function", "test_function", "predict_function", "_compiled_trainable_state")


def all_layers(model: Any) -> list[tuple[str, Any]]:
    """(qualified name, layer) for every layer below `model`, pre-order (a parent before its
    children), names joined with "/" like Keras variable paths: "base/conv1_bn"."""
    out: list[tuple[str, Any]] = []
    seen: set[int] = set()

    def walk(layer: Any, prefix: str) -> None:
        for child in _children(layer):
            if id(child) in seen:
                continue
            seen.add(id(child))
            name = f"{prefix}/{child.name}" if prefix else child.name
            out.append((name, child))
            walk(child, name)

    walk(model, "")
    return out


def _children(layer: Any) -> list[Any]:
    try:
        return list(layer._flatten_layers(include_self=False, recursive=False))
    except Exception:  # noqa: BLE001 - a layer without the private API: its public list
        return list(getattr(layer, "layers", []) or [])


def variable_owners(model: Any) -> dict[int, str]:
    """id(variable) -> qualified name of the innermost layer that owns it."""
    owners: dict[int, str] = {}
    for name, layer in all_layers(model):
        for variable in _own_variables(layer):
            owners[id(variable)] = name  # pre-order: the innermost owner is written last
    return owners


def _own_variables(layer: Any) -> list[Any]:
    own = []
    for attr in ("_trainable_variables", "_non_trainable_variables", "_seed_generators"):
        for item in getattr(layer, attr, []) or []:
            state = getattr(item, "state", None) if attr == "_seed_generators" else item
            if state is not None:
                own.append(state)
    return own


def to_numpy(value: Any) -> np.ndarray:
    import keras

    return np.array(keras.ops.convert_to_numpy(value), copy=True)


def _read(value: Any) -> np.ndarray:
    """The variable's current value for a comparison: no defensive copy (a restore reads
    every variable after every probe; the copy doubled its cost on a ResNet-50)."""
    import keras

    return np.asarray(keras.ops.convert_to_numpy(value))


def _bits(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    return array.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64}.get(array.dtype.itemsize, np.uint8))


def bitwise_equal(a: np.ndarray, b: np.ndarray) -> bool:
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(_bits(a), _bits(b)))


class KerasState:
    """Everything `audit()` promises to give back, captured once before the first probe."""

    def __init__(self, model: Any, optimizer: Any = None):
        self.model = model
        self.optimizer = optimizer
        layers = [model] + [layer for _, layer in all_layers(model)]  # pre-order: parents first
        self.flags = [(layer, bool(getattr(layer, "_trainable", getattr(layer, "trainable", True)))) for layer in layers]
        owners = variable_owners(model)
        self.variables: list[tuple[Any, np.ndarray, bool, str, str]] = []
        seen: set[int] = set()
        for variable in list(model.variables) + _seed_states(model):
            if id(variable) in seen:
                continue
            seen.add(id(variable))
            kind = "parameter" if variable.trainable else "buffer"
            self.variables.append((variable, to_numpy(variable), bool(variable.trainable), kind, owners.get(id(variable), "")))
        # the probes' optimizer, and the compiled one when the Pipeline passed another
        compiled = getattr(model, "optimizer", None)
        optimizers = [o for o in (optimizer, compiled) if o is not None and hasattr(o, "variables")]
        if len(optimizers) == 2 and optimizers[0] is optimizers[1]:
            optimizers.pop()
        self.optimizer_variables = [(v, to_numpy(v)) for o in optimizers for v in o.variables]
        self.functions = {attr: getattr(model, attr) for attr in FUNCTION_ATTRIBUTES if hasattr(model, attr)}
        self.rng = _capture_rng()

    def restore(self) -> None:
        """Put everything back: trainable flags (parents first, since setting a model's flag
        propagates to its children), variable values bit for bit and their own trainable
        flags, optimizer variables, traced functions, random generators."""
        for layer, flag in self.flags:
            if bool(getattr(layer, "_trainable", flag)) != flag:
                layer.trainable = flag
        for layer, flag in self.flags:  # a parent's setter overwrote its children: set each own flag
            if hasattr(layer, "_trainable") and layer._trainable != flag:
                layer._trainable = flag
        for variable, saved, trainable, _kind, _owner in self.variables:
            if bool(variable.trainable) != trainable:
                variable.trainable = trainable
            if not bitwise_equal(_read(variable), saved):
                variable.assign(saved)
        for variable, saved in self.optimizer_variables:
            if not bitwise_equal(_read(variable), saved):
                variable.assign(saved)
        for attr, value in self.functions.items():
            if getattr(self.model, attr, None) is not value:
                setattr(self.model, attr, value)
        _restore_rng(self.rng)

    def changes(self) -> list[TensorChange]:
        """Every variable whose bits differ from the snapshot, named by its path."""
        out = []
        for variable, saved, _trainable, kind, owner in self.variables:
            now = _read(variable)
            if bitwise_equal(now, saved):
                continue
            leaf = _path(variable).rpartition("/")[2]
            out.append(_describe_change(f"{owner}/{leaf}" if owner else _path(variable), kind, owner, now, saved))
        return out

    def optimizer_changes(self) -> list[str]:
        return [_path(v) for v, saved in self.optimizer_variables if not bitwise_equal(_read(v), saved)]


def _path(variable: Any) -> str:
    return str(getattr(variable, "path", None) or getattr(variable, "name", "variable"))


def _seed_states(model: Any) -> list[Any]:
    """The global Keras seed generator's state (keras.random calls without a seed advance it)."""
    out = []
    try:
        from keras.src.backend.common import global_state

        generator = global_state.get_global_attribute("global_seed_generator")
        if generator is not None and getattr(generator, "state", None) is not None:
            out.append(generator.state)
    except Exception:  # noqa: BLE001 - private API moved: nothing global to restore
        pass
    return out


def _describe_change(name: str, kind: str, owner: str, now: np.ndarray, saved: np.ndarray) -> TensorChange:
    now, saved = np.atleast_1d(now), np.atleast_1d(saved)  # a scalar counter (shape ())
    numel = int(saved.size)
    if now.shape != saved.shape:
        return TensorChange(name, kind, float("nan"), numel, numel, owner)
    mask = _bits(now) != _bits(saved)
    changed = int(mask.sum())
    if now.dtype.kind in "fc":
        delta = np.abs(now.astype(np.float64) - saved.astype(np.float64))[mask]
        max_abs = float(delta.max()) if delta.size else 0.0
    else:
        max_abs = float(np.abs(now.astype(np.int64) - saved.astype(np.int64)).max())
    return TensorChange(name, kind, max_abs, changed, numel, owner)


def _capture_rng() -> dict:
    rng: dict[str, Any] = {"python": random.getstate(), "numpy": np.random.get_state()}
    torch = sys.modules.get("torch")
    if torch is not None:  # the torch backend (or a user's import): never imported here
        rng["torch"] = torch.get_rng_state()
    tf = sys.modules.get("tensorflow")
    if tf is not None:
        try:  # only one that exists: get_global_generator() would create one
            from tensorflow.python.ops import stateful_random_ops

            generator = stateful_random_ops.global_generator
            if generator is not None:
                rng["tf_generator"] = (generator, generator.state.numpy().copy())
        except Exception:  # noqa: BLE001 - private module moved: the generator is left alone
            pass
    return rng


def _restore_rng(rng: dict) -> None:
    random.setstate(rng["python"])
    np.random.set_state(rng["numpy"])
    if "torch" in rng:
        sys.modules["torch"].set_rng_state(rng["torch"])
    if "tf_generator" in rng:
        generator, state = rng["tf_generator"]
        if not bitwise_equal(generator.state.numpy(), state):
            generator.state.assign(state)
