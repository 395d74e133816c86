"""Shared measurements for the dynamic BatchNorm probes (BNS101-BNS104).

Imported inside `probe()` only: it imports torch. Every number here is computed from the
context's memoised passes (`eval_pass()`, `train_pass()`) or from `ctx.tensors`; nothing
runs the model except `gap_without_dropout`, BNS102's diagnostic pass, which restores.

Drift of one layer (BNS101, BNS102's target), per channel c, with the layer's own eps:
- standardised mean shift  z_c = |batch_mean_c - running_mean_c| / sqrt(running_var_c + eps),
  clipped at `Z_CLIP` so one dead channel cannot dominate the layer's average;
- log variance ratio       r_c = ln((batch_var_c + eps) / (running_var_c + eps)).
The layer's scores are the channel means of z_c and |r_c|; its drift `score` is the larger
of mean z / `Z_THRESHOLD` and mean |r| / `LOG_VAR_THRESHOLD` (1.0 = at the threshold).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import torch

from auditor.dynamic.torch_context import is_batchnorm, is_frozen_batchnorm

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


def running_stats(module: Any) -> tuple[Any, Any, float] | None:
    """(running_mean, running_var, eps) as float64 CPU tensors, or None when the layer keeps
    none (track_running_stats=False) or they are not finite / not a valid variance."""
    mean = getattr(module, "running_mean", None)
    var = getattr(module, "running_var", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor):
        return None
    if getattr(module, "track_running_stats", True) is False:
        return None
    mean = mean.detach().double().cpu()
    var = var.detach().double().cpu()
    if not bool(torch.isfinite(mean).all()) or not bool(torch.isfinite(var).all()) or bool((var < 0).any()):
        return None  # BNS104's business
    eps = float(getattr(module, "eps", 1e-5))
    return mean, var, eps


def is_initial(module: Any) -> bool:
    """Statistics exactly as a new layer holds them: mean 0, variance 1, no batch tracked."""
    mean = getattr(module, "running_mean", None)
    var = getattr(module, "running_var", None)
    tracked = getattr(module, "num_batches_tracked", None)
    if not isinstance(mean, torch.Tensor) or not isinstance(var, torch.Tensor) or mean.numel() == 0:
        return False
    if isinstance(tracked, torch.Tensor) and tracked.numel() and int(tracked.reshape(-1)[0]) != 0:
        return False
    return bool((mean == 0).all()) and bool((var == 1).all())


def drift_of(name: str, obs: Any, module: Any) -> LayerDrift | None:
    """The drift of one layer from its BatchNormObservation of the eval pass, or None."""
    stats = running_stats(module)
    if stats is None or obs is None or obs.count < MIN_COUNT:
        return None
    mean, var, eps = stats
    if is_initial(module):
        return None  # never estimated: not a drift (BNS104 reports it in a pretrained model)
    if obs.mean.shape != mean.shape or not bool(torch.isfinite(obs.mean).all()) or not bool(torch.isfinite(obs.var).all()):
        return None
    z = ((obs.mean - mean).abs() / (var + eps).sqrt()).clamp(max=Z_CLIP)
    r = ((obs.var + eps) / (var + eps)).log()
    mean_z, log_var = float(z.mean()), float(r.abs().mean())
    score = max(mean_z / Z_THRESHOLD, log_var / LOG_VAR_THRESHOLD)
    return LayerDrift(name, mean_z, float(z.max()), log_var, float(r.mean()), int(mean.numel()), int(obs.count), score)


def layer_drifts(ctx: Any) -> list[LayerDrift]:
    """Every BatchNorm layer with running statistics that ran in the eval pass, in call
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


def output_gap(train_out: Any, eval_out: Any) -> tuple[float, float | None] | None:
    """(relative difference ||train - eval|| / ||eval||, top-1 agreement or None when the
    output is not (N, classes) logits); None when the outputs cannot be compared."""
    if not isinstance(train_out, torch.Tensor) or not isinstance(eval_out, torch.Tensor):
        return None
    if train_out.shape != eval_out.shape or not train_out.is_floating_point():
        return None
    a, b = train_out.double(), eval_out.double()
    if not bool(torch.isfinite(a).all()) or not bool(torch.isfinite(b).all()):
        return None
    norm = float(b.norm())
    if norm == 0.0:
        return None
    rel = float((a - b).norm()) / norm
    agreement = None
    if b.dim() == 2 and b.shape[1] > 1:
        agreement = float((a.argmax(1) == b.argmax(1)).double().mean())
    return rel, agreement


def dropout_modules(model: Any) -> list[Any]:
    return [m for m in model.modules() if isinstance(m, torch.nn.modules.dropout._DropoutNd) and getattr(m, "p", 0) > 0]


def gap_without_dropout(ctx: Any) -> Any:
    """Diagnostic pass (only when a gap was found): the model in eval mode with just the
    BatchNorm layers that use batch statistics in the user's train mode switched to train,
    so the gap left is BatchNorm's alone. This also silences Dropout called as a function
    (`F.dropout(x, training=self.training)`) and any other train-only behaviour, which
    switching `nn.Dropout` modules off would miss. Restores the model afterwards."""

    def compute() -> Any:
        model = ctx.model
        try:
            layers = batchnorm_in_train_mode(ctx)
            model.eval()
            for name in layers:
                ctx.module(name).train()
            with torch.no_grad():
                from auditor.dynamic.torch_context import primary_output

                out = primary_output(ctx.call(ctx.inputs()))
            return out.detach() if isinstance(out, torch.Tensor) else None
        finally:
            ctx.restore()

    return ctx.memo("batchnorm.train_no_dropout", compute)


def batchnorm_in_train_mode(ctx: Any) -> list[str]:
    """BatchNorm layers that normalised with batch statistics in the user's train mode while
    keeping running statistics (so eval mode uses something else)."""
    record = ctx.train_pass()
    return [name for name, obs in record.batchnorm.items() if obs.training and obs.tracks and not is_frozen_batchnorm(ctx.module(name))]


def affine_params(module: Any) -> list[Any]:
    return [p for p in (getattr(module, "weight", None), getattr(module, "bias", None)) if isinstance(p, torch.nn.Parameter)]


def is_updating_batchnorm(module: Any) -> bool:
    return is_batchnorm(module) and not is_frozen_batchnorm(module) and bool(getattr(module, "track_running_stats", True))


def rounded(value: float, digits: int = 3) -> float:
    if value != value or value in (math.inf, -math.inf):
        return value
    if value == 0:
        return 0.0
    magnitude = math.floor(math.log10(abs(value)))
    return round(value, max(digits - 1 - magnitude, 0))


class InvalidStatistics(dict):
    """kind -> [layer dicts] (kinds: "non-finite", "negative-variance", "never-updated"),
    plus `total`, the number of BatchNorm layers with running statistics."""

    total: int = 0


def invalid_statistics(tensors: dict[str, Any], *, pretrained: bool) -> InvalidStatistics:
    """BNS104's check on a state dict (a live model's `ctx.tensors` or a file's)."""
    from auditor.dynamic.tensors import batchnorm_groups

    groups = batchnorm_groups(tensors)
    out = InvalidStatistics({"non-finite": [], "negative-variance": [], "never-updated": []})
    out.total = len(groups)
    untouched: list[dict] = []
    last_updated = -1
    for index, (prefix, group) in enumerate(groups.items()):
        mean = group["running_mean"].detach().double().cpu()
        var = group["running_var"].detach().double().cpu()
        name = prefix or "<model>"
        nan = int(torch.isnan(mean).sum() + torch.isnan(var).sum())
        inf = int(torch.isinf(mean).sum() + torch.isinf(var).sum())
        if nan or inf:
            out["non-finite"].append({"name": name, "nan": nan, "inf": inf, "channels": int(var.numel())})
        finite_var = var[torch.isfinite(var)]
        negative = int((finite_var < 0).sum())
        if negative:
            out["negative-variance"].append({"name": name, "negative_channels": negative, "min_running_var": rounded(float(finite_var.min())), "channels": int(var.numel())})
        tracked = group.get("num_batches_tracked")
        count = int(tracked.reshape(-1)[0]) if isinstance(tracked, torch.Tensor) and tracked.numel() else None
        initial = mean.numel() > 0 and bool((mean == 0).all()) and bool((var == 1).all()) and not count
        if initial:
            entry = {"name": name, "index": index, "channels": int(var.numel())}
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
