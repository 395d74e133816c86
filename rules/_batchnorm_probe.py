"""Shared measurements for the dynamic BatchNorm probes (BNS101-BNS104), for PyTorch and Keras.

Imported inside `probe()` only. The math is numpy, written once for both frameworks; what
differs per framework sits behind a few accessors that take a layer (or the context) and
return plain numbers:

- `statistics(layer)`: the stored statistics (`running_mean`/`running_var` of a torch
  `_BatchNorm`, `moving_mean`/`moving_variance` of a Keras `BatchNormalization`) as float64
  numpy, with the layer's eps and momentum and its update counter (torch only);
- `is_initial(layer)`: statistics exactly as a new layer holds them;
- `can_update(layer)` / `fixed_statistics(layer)`: whether a training pass can move them;
- `frozen_reason(ctx, name, layer)`: why a BatchNorm layer counts as frozen (torch: its
  affine parameters do not train; Keras: the layers around it have `trainable=False`);
- `statistic_changes(record)`: which layers' stored statistics a pass moved, by how much;
- `gap_without_dropout(ctx)` and `keras_pass(...)`: the diagnostic passes.

Nothing imports torch or keras at module level: under Keras's TensorFlow backend torch is
never imported (`sys.modules` tells which framework an object belongs to).

Drift of one layer (BNS101, BNS102's target), per channel c, with the layer's own eps:
- standardised mean shift  z_c = |batch_mean_c - running_mean_c| / sqrt(running_var_c + eps),
  clipped at `Z_CLIP` so one dead channel cannot dominate the layer's average;
- log variance ratio       r_c = ln((batch_var_c + eps) / (running_var_c + eps)).
The layer's scores are the channel means of z_c and |r_c|; its drift `score` is the larger
of mean z / `Z_THRESHOLD` and mean |r| / `LOG_VAR_THRESHOLD` (1.0 = at the threshold).
"""

from __future__ import annotations

import math
import re
import sys
from typing import Any, NamedTuple

import numpy as np

#: mean over channels of z_c at which a layer counts as drifted: the sample's mean sits a
#: whole running standard deviation away from the stored mean, on average over channels
Z_THRESHOLD = 1.0
#: mean over channels of |ln(var ratio)| at which a layer counts as drifted: ln 4, the
#: sample's standard deviation is off by a factor of two (either way)
LOG_VAR_THRESHOLD = math.log(4.0)
#: per-channel clip of z_c (a channel with running_var ~ 0 would give z in the thousands)
Z_CLIP = 10.0
#: layers that saw fewer values per channel are skipped: their batch statistics are noise
MIN_COUNT = 8

#: names of the stored statistics per framework, mapped to "mean" / "var"
STAT_NAMES = {"running_mean": "mean", "running_var": "var", "moving_mean": "mean", "moving_variance": "var"}


class LayerDrift(NamedTuple):
    name: str
    mean_z: float
    max_z: float
    log_var: float  # mean over channels of |ln(batch var / running var)|
    log_var_signed: float  # mean over channels of ln(batch var / running var)
    channels: int
    count: int
    score: float

    @property
    def drifted(self) -> bool:
        return self.score >= 1.0


class Statistics(NamedTuple):
    """A BatchNorm layer's stored statistics, framework-neutral."""

    mean: np.ndarray  # float64, flat (C,)
    var: np.ndarray  # float64, flat (C,)
    eps: float
    momentum: float | None  # the framework's own value (torch: weight of the batch, None = cumulative; Keras: weight kept)
    batches: int | None  # num_batches_tracked (torch); None when the layer keeps no counter (Keras, FrozenBatchNorm2d)
    framework: str


# -- frameworks ---------------------------------------------------------------------------
def framework_of(layer: Any) -> str:
    """The framework of a layer: "keras" for a Keras layer (also under the torch backend, where it is a torch Module
    too), else "torch"."""
    keras = sys.modules.get("keras")
    if keras is not None:
        try:
            if isinstance(layer, keras.layers.Layer):
                return "keras"
        except Exception:  # noqa: BLE001 - a half-imported keras
            pass
    return "torch"


def _torch_tensor(value: Any) -> bool:
    torch = sys.modules.get("torch")
    return torch is not None and isinstance(value, torch.Tensor)


def as_array(value: Any) -> np.ndarray | None:
    """float64 numpy of a torch tensor, a Keras variable/tensor or an array; None for None."""
    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value.astype(np.float64, copy=False)
    if _torch_tensor(value):
        return value.detach().cpu().double().numpy()
    keras = sys.modules.get("keras")
    if keras is not None and not isinstance(value, (int, float, list, tuple)):
        return np.asarray(keras.ops.convert_to_numpy(value), dtype=np.float64)
    return np.asarray(value, dtype=np.float64)


def _float_array(value: Any) -> np.ndarray | None:
    """float64 numpy of a floating tensor/array; None when not floating or not convertible."""
    if value is None:
        return None
    if _torch_tensor(value):
        return value.detach().cpu().double().numpy() if value.is_floating_point() else None
    if not isinstance(value, np.ndarray):
        try:
            keras = sys.modules.get("keras")
            value = np.asarray(keras.ops.convert_to_numpy(value)) if keras is not None else np.asarray(value)
        except Exception:  # noqa: BLE001
            return None
    return value.astype(np.float64) if value.dtype.kind == "f" else None


# -- accessors ----------------------------------------------------------------------------
def statistics(layer: Any) -> Statistics | None:
    """The stored statistics of a BatchNorm layer, or None when it keeps none (torch
    `track_running_stats=False`, a layer that is not a BatchNorm)."""
    if framework_of(layer) == "keras":
        mean = getattr(layer, "moving_mean", None)
        var = getattr(layer, "moving_variance", None)
        if mean is None or var is None:
            return None
        momentum = getattr(layer, "momentum", None)
        return Statistics(as_array(mean).reshape(-1), as_array(var).reshape(-1), float(getattr(layer, "epsilon", 1e-3)), None if momentum is None else float(momentum), None, "keras")
    mean = getattr(layer, "running_mean", None)
    var = getattr(layer, "running_var", None)
    if not _torch_tensor(mean) or not _torch_tensor(var):
        return None
    if getattr(layer, "track_running_stats", True) is False:
        return None
    tracked = getattr(layer, "num_batches_tracked", None)
    batches = int(tracked.reshape(-1)[0]) if _torch_tensor(tracked) and tracked.numel() else None
    momentum = getattr(layer, "momentum", None)
    return Statistics(as_array(mean).reshape(-1), as_array(var).reshape(-1), float(getattr(layer, "eps", 1e-5)), None if momentum is None else float(momentum), batches, "torch")


def running_stats(module: Any) -> tuple[np.ndarray, np.ndarray, float] | None:
    """(mean, var, eps) as float64 numpy, or None when the layer keeps none or they are not
    finite / not a valid variance (BNS104's business)."""
    stats = statistics(module)
    if stats is None:
        return None
    if not np.isfinite(stats.mean).all() or not np.isfinite(stats.var).all() or (stats.var < 0).any():
        return None
    return stats.mean, stats.var, stats.eps


def is_initial(module: Any) -> bool:
    """Statistics exactly as a new layer holds them: mean 0, variance 1 (and, for torch, no
    batch tracked). Keras keeps no counter: mean 0 and variance 1 exactly is the sign."""
    stats = statistics(module)
    if stats is None or stats.mean.size == 0:
        return False
    if stats.batches is not None and stats.batches != 0:
        return False
    return bool((stats.mean == 0).all()) and bool((stats.var == 1).all())


def fixed_statistics(module: Any) -> bool:
    """A BatchNorm that normalises with fixed statistics in every mode: torch's
    FrozenBatchNorm2d and look-alikes (statistics as plain buffers). Keras has none: a
    frozen BatchNormalization is a matter of its `trainable` flag, decided per call."""
    if framework_of(module) == "keras":
        return False
    from auditor.dynamic.torch_context import is_frozen_batchnorm

    return is_frozen_batchnorm(module)


def is_batchnorm(module: Any) -> bool:
    if framework_of(module) == "keras":
        from auditor.dynamic.keras_context import is_batchnorm as keras_is_batchnorm

        return keras_is_batchnorm(module)
    from auditor.dynamic.torch_context import is_batchnorm as torch_is_batchnorm

    return torch_is_batchnorm(module)


def can_update(module: Any) -> bool:
    """A training pass can move the layer's stored statistics: a BatchNorm with statistics
    that are not fixed (torch: `_BatchNorm` with `track_running_stats`; Keras: any
    BatchNormalization, when it runs trainable in a training call). Momentum is not judged
    here: a layer whose momentum keeps its statistics simply shows no change."""
    if not is_batchnorm(module) or fixed_statistics(module):
        return False
    if framework_of(module) == "keras":
        return getattr(module, "moving_mean", None) is not None and getattr(module, "moving_variance", None) is not None
    return statistics(module) is not None


def is_updating_batchnorm(module: Any) -> bool:
    """`can_update` and, for Keras, trainable (a frozen BatchNormalization runs in inference
    mode whatever `training` says)."""
    if not can_update(module):
        return False
    return bool(getattr(module, "trainable", True)) if framework_of(module) == "keras" else True


def has_trainable(ctx: Any) -> bool:
    """Something in the model would train (torch: a parameter with requires_grad; Keras: a
    trainable variable)."""
    if ctx.framework == "keras":
        return bool(ctx.model.trainable_variables)
    return any(p.requires_grad for p in ctx.model.parameters())


def momentum_of(module: Any) -> float | None:
    stats = statistics(module)
    return stats.momentum if stats is not None else None


# -- drift ------------------------------------------------------------------------------------
def drift_of(name: str, obs: Any, module: Any) -> LayerDrift | None:
    """The drift of one layer from its BatchNormObservation of the eval pass, or None."""
    stats = running_stats(module)
    if stats is None or obs is None or obs.count < MIN_COUNT or obs.mean is None or obs.var is None:
        return None
    mean, var, eps = stats
    if is_initial(module):
        return None  # never estimated: not a drift (BNS104 reports it in a pretrained model)
    obs_mean, obs_var = as_array(obs.mean).reshape(-1), as_array(obs.var).reshape(-1)
    if obs_mean.shape != mean.shape or not np.isfinite(obs_mean).all() or not np.isfinite(obs_var).all():
        return None
    z = np.minimum(np.abs(obs_mean - mean) / np.sqrt(var + eps), Z_CLIP)
    r = np.log((obs_var + eps) / (var + eps))
    mean_z, log_var = float(z.mean()), float(np.abs(r).mean())
    score = max(mean_z / Z_THRESHOLD, log_var / LOG_VAR_THRESHOLD)
    return LayerDrift(name, mean_z, float(z.max()), log_var, float(r.mean()), int(mean.size), int(obs.count), score)


def layer_drifts(ctx: Any) -> list[LayerDrift]:
    """Every BatchNorm layer with stored statistics that ran in the eval pass, in call
    order. Memoised per audit."""

    def compute() -> list[LayerDrift]:
        record = ctx.eval_pass()
        out = []
        for name, obs in record.batchnorm.items():
            drift = drift_of(name, obs, ctx.module(name))
            if drift is not None:
                out.append(drift)
        return out

    return ctx.memo("batchnorm.drift", compute)


def worst_first(drifts: list[LayerDrift]) -> list[LayerDrift]:
    """Highest score first; ties keep call order (sort is stable)."""
    return sorted(drifts, key=lambda d: -d.score)


def origin(drifts: list[LayerDrift]) -> LayerDrift | None:
    """Where the drift starts: the first layer over the thresholds in call order, else the
    highest-scoring one. Drift propagates forward (a layer normalised with wrong statistics
    hands every later layer wrong inputs, whose own statistics may be perfect), so the
    first drifted layer is the one to look at, not necessarily the worst."""
    for drift in drifts:
        if drift.drifted:
            return drift
    ranked = worst_first(drifts)
    return ranked[0] if ranked else None


# -- train / inference outputs ----------------------------------------------------------------
def output_gap(train_out: Any, eval_out: Any) -> tuple[float, float | None] | None:
    """(relative difference ||train - eval|| / ||eval||, top-1 agreement or None when the
    output is not (N, classes) logits); None when the outputs cannot be compared."""
    a, b = _float_array(train_out), _float_array(eval_out)
    if a is None or b is None or a.shape != b.shape:
        return None
    if not np.isfinite(a).all() or not np.isfinite(b).all():
        return None
    norm = float(np.linalg.norm(b))
    if norm == 0.0:
        return None
    rel = float(np.linalg.norm(a - b)) / norm
    agreement = None
    if b.ndim == 2 and b.shape[1] > 1:
        agreement = float((a.argmax(1) == b.argmax(1)).mean())
    return rel, agreement


def batch_size(output: Any) -> int:
    shape = getattr(output, "shape", ())
    return int(shape[0]) if len(shape) >= 1 else 1


def dropout_modules(model: Any) -> list[Any]:
    import torch

    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and getattr(m, "p", 0) > 0]


def gap_without_dropout(ctx: Any) -> Any:
    """Diagnostic pass (only when a gap was found): the inference call with just the
    BatchNorm layers that use batch statistics in the training call switched to batch
    statistics, so the gap left is BatchNorm's alone.

    PyTorch: the model in eval mode with those layers in train mode (this also silences
    Dropout called as a function, `F.dropout(x, training=self.training)`, which switching
    `nn.Dropout` modules off would miss). Keras: `model(x, training=False)` with those
    layers' `call` given `training=True`. Restores the model afterwards."""
    if ctx.framework == "keras":
        return keras_pass(ctx, "batchnorm.train_no_dropout", training=False, force=batchnorm_in_train_mode(ctx)).output

    def compute() -> Any:
        import torch

        from auditor.dynamic.torch_context import primary_output

        model = ctx.model
        try:
            layers = batchnorm_in_train_mode(ctx)
            model.eval()
            for name in layers:
                ctx.module(name).train()
            with torch.no_grad():
                out = primary_output(ctx.call(ctx.inputs()))
            return out.detach() if isinstance(out, torch.Tensor) else None
        finally:
            ctx.restore()

    return ctx.memo("batchnorm.train_no_dropout", compute)


def batchnorm_in_train_mode(ctx: Any) -> list[str]:
    """BatchNorm layers that normalised with batch statistics in the user's training call
    (torch: `model.train()`; Keras: `model(x, training=True)`, i.e. called with training
    and trainable) while keeping stored statistics (so inference uses something else)."""
    record = ctx.train_pass()
    return [name for name, obs in record.batchnorm.items() if obs.training and obs.tracks and not fixed_statistics(ctx.module(name))]


def statistic_changes(record: Any) -> dict[str, dict[str, float]]:
    """layer name -> {"mean": largest change, "var": largest change} of the stored
    statistics the pass moved (torch `running_mean`/`running_var` buffers, Keras
    `moving_mean`/`moving_variance` variables)."""
    changed: dict[str, dict[str, float]] = {}
    for change in record.changes:
        leaf = re.split(r"[./]", change.name)[-1]
        if change.kind == "buffer" and leaf in STAT_NAMES:
            changed.setdefault(change.module, {})[STAT_NAMES[leaf]] = change.max_abs
    return changed


# -- frozen? ----------------------------------------------------------------------------------
def frozen_reason(ctx: Any, name: str, module: Any, optimizer_ids: set | None) -> str | None:
    """Why a BatchNorm layer that updates its statistics counts as frozen, or None.

    PyTorch: its `weight` and `bias` have `requires_grad=False`, or (with an optimizer,
    `optimizer_ids`) are in none of its param groups; an `affine=False` layer is judged by
    the sibling module that feeds it. Keras (the layer itself is trainable, or it would not
    update): its `gamma`/`beta` variables were set `trainable=False`, or the layer that
    feeds it (the last sibling with weights before it, else the next one) is frozen."""
    if framework_of(module) == "keras":
        own = [v for v in (getattr(module, "gamma", None), getattr(module, "beta", None)) if v is not None]
        if own and not any(bool(v.trainable) for v in own):
            return "gamma/beta trainable=False"
        neighbour = keras_neighbour(ctx, name, module)
        if neighbour is not None and not bool(neighbour[1].trainable):
            return "the layers around it have trainable=False"
        return None
    params = affine_params(module)
    if not params:
        params = _neighbour_params(ctx, name, module)
    if not params:
        return None
    if all(not p.requires_grad for p in params):
        return "requires_grad=False"
    if optimizer_ids is not None and all(id(p) not in optimizer_ids for p in params):
        return "not in the optimizer"
    return None


def affine_params(module: Any) -> list[Any]:
    import torch

    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if isinstance(p, torch.nn.Parameter)]


def _neighbour_params(ctx: Any, name: str, module: Any) -> list:
    """An affine=False BatchNorm has no parameters of its own: judge it by the sibling that
    feeds it (the last sibling with parameters registered before it), else the next one."""
    parent = ctx.module(name.rpartition(".")[0]) if "." in name else ctx.model
    before, after, seen = [], [], False
    for child in parent.children():
        if child is module:
            seen = True
            continue
        params = list(child.parameters(recurse=False))
        if params:
            (after if seen else before).append(params)
    if before:
        return before[-1]
    return after[0] if after else []


def keras_neighbour(ctx: Any, name: str, layer: Any) -> tuple[str, Any] | None:
    """The Keras layer that feeds a BatchNormalization layer: among its siblings (same
    parent model) with weights of their own, not containers and not BatchNormalization,
    the last one before it in the parent's layer order, else the first one after it."""
    from auditor.dynamic.keras_context import has_own_weights, is_container
    from auditor.dynamic.keras_context import is_batchnorm as keras_is_batchnorm

    parent = name.rpartition("/")[0]
    before: list[tuple[str, Any]] = []
    after: list[tuple[str, Any]] = []
    seen = False
    for other, candidate in ctx.layers():
        if other.rpartition("/")[0] != parent:
            continue
        if candidate is layer:
            seen = True
            continue
        if keras_is_batchnorm(candidate) or is_container(candidate) or not has_own_weights(candidate):
            continue
        (after if seen else before).append((other, candidate))
    if before:
        return before[-1]
    return after[0] if after else None


# -- Keras diagnostic passes ------------------------------------------------------------------
class KerasPass(NamedTuple):
    """A Keras diagnostic pass: its record, and the stored statistics of every
    BatchNormalization layer right after its call (`after`: name -> (mean, var)), taken
    before the snapshot was restored."""

    record: Any
    after: dict

    @property
    def output(self) -> Any:
        return self.record.output


def keras_pass(ctx: Any, key: str, *, training: bool, unfreeze: tuple | list = (), force: tuple | list = (), capture: tuple | list = (), random_off: bool = False, batch: int | None = None) -> KerasPass:
    """One Keras pass on the snapshot (memoised under `key`): the layers in `unfreeze` are
    set `trainable=True` first (as `base.trainable = True` does for fine-tuning), the
    BatchNormalization layers named in `force` are called with `training=True`, and with
    `random_off` every other training-dependent layer (Dropout, noise, augmentation) with
    `training=False`, so that what differs from the inference call is BatchNorm's alone. The
    stored statistics of the layers named in `capture` are read right after their call.
    With `batch`, only the first `batch` samples run and the record holds just the changes
    (a cheap check of which statistics a call moves). Everything (trainable flags included)
    is restored afterwards; the wrappers are instance attributes removed in `finally`, as the
    context's own recorder does."""

    def compute() -> KerasPass:
        from auditor.dynamic.keras_context import MODE_DEPENDENT, LayerPatches, layer_kind
        from auditor.dynamic.keras_context import is_batchnorm as keras_is_batchnorm

        patches = LayerPatches()
        after: dict[str, tuple[np.ndarray, np.ndarray]] = {}
        forced, captured = set(force), set(capture)

        def wrap(name: str, layer: Any, value: bool | None) -> None:
            original = layer.call
            keep = name in captured

            def call(*args: Any, **kwargs: Any) -> Any:
                if value is not None:
                    kwargs["training"] = value
                out = original(*args, **kwargs)
                if keep and name not in after:
                    stats = statistics(layer)
                    if stats is not None:
                        after[name] = (stats.mean, stats.var)
                return out

            patches.patch(layer, call)

        restored = False
        try:
            for layer in unfreeze:
                layer.trainable = True
            for layer_name, layer in ctx.layers():
                if keras_is_batchnorm(layer):
                    if layer_name in forced or layer_name in captured:
                        wrap(layer_name, layer, True if layer_name in forced else None)
                elif random_off and layer_kind(layer) in MODE_DEPENDENT:
                    wrap(layer_name, layer, False)
            if batch is None:
                record = ctx.run(key, training=training, stats=False)  # restores the snapshot, flags included
                restored = True
                return KerasPass(record, after)
            from auditor.dynamic.records import ForwardRecord

            ctx.call(_first(ctx.inputs(), batch), training=training)
            record = ForwardRecord(kind=key, output=None, raw_output=None, batchnorm={}, leaves=[], head=None, features=None, changes=ctx.state.changes(), modes={})
            return KerasPass(record, after)
        finally:
            patches.restore()
            if not restored:
                ctx.restore()

    return ctx.memo(key, compute)


def _first(inputs: Any, n: int) -> Any:
    if isinstance(inputs, dict):
        return {k: _first(v, n) for k, v in inputs.items()}
    if isinstance(inputs, (list, tuple)):
        return type(inputs)(_first(v, n) for v in inputs)
    return inputs[:n]


def moved(ctx: Any, diagnostic: KerasPass, names: list[str]) -> dict[str, tuple[float, float]]:
    """name -> (largest mean change in stored standard deviations, largest relative variance
    change) of the named layers' stored statistics in a Keras diagnostic pass; layers whose
    statistics did not move are left out."""
    out = {}
    for name in names:
        if name not in diagnostic.after:
            continue
        stats = statistics(ctx.module(name))
        mean, var = diagnostic.after[name]
        if stats is None or mean.shape != stats.mean.shape:
            continue
        scale = stats.var + stats.eps
        with np.errstate(all="ignore"):
            shift = np.abs(mean - stats.mean) / np.sqrt(scale)
            ratio = np.abs(var - stats.var) / scale
        shift, ratio = shift[np.isfinite(shift)], ratio[np.isfinite(ratio)]
        if (shift.size and shift.max() > 0) or (ratio.size and ratio.max() > 0):
            out[name] = (float(shift.max()) if shift.size else 0.0, float(ratio.max()) if ratio.size else 0.0)
    return out


def frozen_roots(ctx: Any, names: list[str]) -> list[tuple[str, Any]]:
    """For each named layer, its outermost frozen ancestor-or-self (the base a user would
    unfreeze with `base.trainable = True`), deduplicated, in order."""
    roots: dict[str, Any] = {}
    for name in names:
        parts = name.split("/")
        for depth in range(1, len(parts) + 1):
            prefix = "/".join(parts[:depth])
            layer = ctx.module(prefix)
            if not bool(layer.trainable):
                roots.setdefault(prefix, layer)
                break
    return list(roots.items())


def graph_path(ctx: Any, name: str) -> bool:
    """Every container from the model down to the layer `name` is a functional or Sequential
    model that runs its graph as built (no call() of its own): the training flag of the
    outer call then reaches the layer unchanged (Keras 3 replaces a node's own flag by the
    outer one whenever that is not None)."""
    from keras.src.models.functional import Functional
    from keras.src.models.sequential import Sequential

    def plain(layer: Any) -> bool:
        return isinstance(layer, (Functional, Sequential)) and type(layer).call in (Functional.call, Sequential.call)

    if not plain(ctx.model):
        return False
    parts = name.split("/")[:-1]
    return all(plain(ctx.module("/".join(parts[: i + 1]))) for i in range(len(parts)))


def built_with_training_false(layer: Any) -> bool:
    """The layer was wired into a functional graph as `layer(x, training=False)`."""
    try:
        return any((node.arguments.kwargs or {}).get("training") is False for node in getattr(layer, "_inbound_nodes", []) or [])
    except Exception:  # noqa: BLE001 - private API moved
        return False


# -- numbers ----------------------------------------------------------------------------------
def rounded(value: float, digits: int = 3) -> float:
    if value != value or value in (math.inf, -math.inf):
        return value
    if value == 0:
        return 0.0
    magnitude = math.floor(math.log10(abs(value)))
    return round(value, max(digits - 1 - magnitude, 0))


# -- BNS104 -----------------------------------------------------------------------------------
class InvalidStatistics(dict):
    """kind -> [layer dicts] (kinds: "non-finite", "negative-variance", "never-updated"),
    plus `total`, the number of BatchNorm layers with stored statistics."""

    total: int = 0


def statistics_groups(ctx: Any) -> list[tuple[str, np.ndarray, np.ndarray, int | None]]:
    """(layer name, mean, var, update counter or None) for every BatchNorm layer with stored
    statistics: a Keras model's BatchNormalization layers (qualified names, layer order),
    else the tensors of a state dict or a live torch model (state-dict order)."""
    if getattr(ctx, "framework", "torch") == "keras":
        out = []
        for name, layer in ctx.batchnorm_layers():
            stats = statistics(layer)
            if stats is not None:
                out.append((name, stats.mean, stats.var, None))
        return out
    return _state_dict_groups(ctx.tensors)


def _state_dict_groups(tensors: dict[str, Any]) -> list[tuple[str, np.ndarray, np.ndarray, int | None]]:
    from auditor.dynamic.tensors import batchnorm_groups

    out = []
    for prefix, group in batchnorm_groups(tensors).items():
        tracked = group.get("num_batches_tracked")
        tracked = as_array(tracked).reshape(-1) if tracked is not None else None
        count = int(tracked[0]) if tracked is not None and tracked.size else None
        out.append((prefix or "<model>", as_array(group["running_mean"]).reshape(-1), as_array(group["running_var"]).reshape(-1), count))
    return out


def invalid_statistics(tensors: dict[str, Any], *, pretrained: bool) -> InvalidStatistics:
    """BNS104's check on a torch state dict (a live model's `ctx.tensors` or a file's)."""
    return invalid_from_groups(_state_dict_groups(tensors), pretrained=pretrained)


def invalid_from_groups(groups: list[tuple[str, np.ndarray, np.ndarray, int | None]], *, pretrained: bool) -> InvalidStatistics:
    """BNS104's check on (name, mean, var, counter) groups, in layer order."""
    out = InvalidStatistics({"non-finite": [], "negative-variance": [], "never-updated": []})
    out.total = len(groups)
    untouched: list[dict] = []
    last_updated = -1
    for index, (name, mean, var, count) in enumerate(groups):
        nan = int(np.isnan(mean).sum() + np.isnan(var).sum())
        inf = int(np.isinf(mean).sum() + np.isinf(var).sum())
        if nan or inf:
            out["non-finite"].append({"name": name, "nan": nan, "inf": inf, "channels": int(var.size)})
        finite_var = var[np.isfinite(var)]
        negative = int((finite_var < 0).sum())
        if negative:
            out["negative-variance"].append({"name": name, "negative_channels": negative, "min_running_var": rounded(float(finite_var.min())), "channels": int(var.size)})
        initial = mean.size > 0 and bool((mean == 0).all()) and bool((var == 1).all()) and not count
        if initial:
            entry = {"name": name, "index": index, "channels": int(var.size)}
            if count is not None:
                entry["num_batches_tracked"] = count
            untouched.append(entry)
        else:
            last_updated = index
    if pretrained and untouched:
        if last_updated < 0:
            out["never-updated"] = untouched  # nothing loaded at all
        else:
            out["never-updated"] = [entry for entry in untouched if entry["index"] < last_updated]
    for entry in out["never-updated"]:
        entry.pop("index", None)
    return out
