"""Shared measurement and decisions of the serving-parity probes LOD101-LOD104, for PyTorch
and Keras. Imported inside `probe`; nothing framework-specific at module level.

One round trip per audit (`serving(ctx)`, memoised): the model is saved in the format it is
served from and loaded back as a server would (`auditor.dynamic.serving`), the copy runs once
on the sample, and every LOD1xx rule reads the same result. What is decided here is written
once, on numpy arrays:

- `compare(reference, output)`: the reloaded model's output against the eval pass
  (`model.eval()` + `no_grad` / `model(x, training=False)`), with the tolerance below.
- `ServingResult.comparable`: False when the model itself is not deterministic in inference
  (the eval and inference passes already disagree beyond the tolerance): then nothing can be
  said about the copy, and DET101 reports the model.

## Tolerance (what "beyond numerical noise" means)
A saved and reloaded model has bit-identical weights; its output may still differ in the last
bits when the loaded copy runs other kernels or another summation order (TorchScript fusion,
a rebuilt Keras graph). The outputs differ when

    max |reloaded - reference|  >  tol(dtype) * max(1, max |reference|)

with tol = 1e-5 for float32 (84 float32 ulps at 1.0), 1e-9 for float64, 1e-2 for float16
and 2e-2 for bfloat16 (10 and 2.5 ulps at 1.0). Relative to the output's scale (logits of magnitude 10 get 1e-4), absolute below 1.
NaN in the same places on both sides is equal; a NaN or infinity that appears or disappears
is a difference, and so is another shape.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from auditor.dynamic.context_base import dtype_text, output_array

ROOT = "<model>"

#: relative tolerance per output dtype (see the module docstring)
TOLERANCE = {"float64": 1e-9, "float32": 1e-5, "float16": 1e-2, "bfloat16": 2e-2}
DEFAULT_TOLERANCE = 1e-5

#: how each format is named in messages
FORMAT_TEXT = {
    "state_dict": "a state-dict round trip (torch.save(model.state_dict()), torch.load(weights_only=True), load_state_dict into a rebuilt model)",
    "torchscript": "a TorchScript round trip (torch.jit.save, torch.jit.load)",
    "keras": "a .keras round trip (model.save, keras.saving.load_model(safe_mode=True))",
}


def tolerance(dtype: str | None) -> float:
    return TOLERANCE.get(str(dtype or "").replace("torch.", ""), DEFAULT_TOLERANCE)


@dataclass
class Comparison:
    max_abs: float
    scale: float  # max |reference| (finite values)
    relative: float  # max_abs / max(1, scale)
    tolerance: float
    mismatch: bool
    why: str = ""  # "shape", "non-finite" or "" (values)

    def evidence(self) -> dict:
        out = {
            "max_abs_diff": _round(self.max_abs),
            "relative_diff": _round(self.relative),
            "tolerance": self.tolerance,
            "output_scale": _round(self.scale),
        }
        if self.why:
            out["difference"] = self.why
        return out


def compare(reference: Any, output: Any, dtype: str | None = None) -> Comparison | None:
    """The reloaded output against the reference (both numpy); None when either is missing."""
    if reference is None or output is None:
        return None
    ref = np.asarray(reference)
    out = np.asarray(output)
    tol = tolerance(dtype or str(ref.dtype))
    if ref.shape != out.shape:
        return Comparison(float("inf"), _scale(ref), float("inf"), tol, True, f"shape {out.shape} instead of {ref.shape}")
    if ref.dtype.kind not in "biufc" or out.dtype.kind not in "biufc":
        equal = bool(np.array_equal(ref, out))
        return Comparison(0.0 if equal else float("inf"), 0.0, 0.0 if equal else float("inf"), tol, not equal)
    a, b = ref.astype(np.float64), out.astype(np.float64)
    nan_a, nan_b = np.isnan(a), np.isnan(b)
    if not np.array_equal(nan_a, nan_b) or not np.array_equal(np.isinf(a) & ~nan_a, np.isinf(b) & ~nan_b):
        return Comparison(float("inf"), _scale(ref), float("inf"), tol, True, "NaN or infinity in other places")
    finite = np.isfinite(a) & np.isfinite(b)
    if finite.any():
        diff = np.abs(a[finite] - b[finite])
        worst = float(diff.max())
    else:
        worst = 0.0
    infinite = ~np.isnan(a) & ~finite
    if infinite.any() and not np.array_equal(a[infinite], b[infinite]):
        return Comparison(float("inf"), _scale(ref), float("inf"), tol, True, "infinities of another sign")
    scale = _scale(ref)
    relative = worst / max(1.0, scale)
    return Comparison(worst, scale, relative, tol, relative > tol)


def _scale(array: np.ndarray) -> float:
    if array.dtype.kind not in "biuf" or array.size == 0:
        return 0.0
    values = np.abs(array.astype(np.float64))
    values = values[np.isfinite(values)]
    return float(values.max()) if values.size else 0.0


def _round(value: float) -> float:
    if value is None or not math.isfinite(value):
        return value
    return float(f"{value:.3g}")


@dataclass
class ServingResult:
    trips: list = field(default_factory=list)
    reference: Any = None
    comparable: bool = True
    comparisons: dict = field(default_factory=dict)  # format -> Comparison | None

    def comparison(self, trip: Any) -> Comparison | None:
        return self.comparisons.get(trip.format) if self.comparable else None


def serving(ctx: Any) -> ServingResult:
    """The round trips of this audit (memoised): shared by LOD101, LOD102 and LOD103."""
    return ctx.memo("serving-parity", lambda: _measure(ctx))


def _measure(ctx: Any) -> ServingResult:
    from auditor.dynamic.serving import round_trips

    result = ServingResult()
    record = ctx.eval_pass()
    result.reference = output_array(record.output)
    dtype = dtype_text(record.output)
    if result.reference is not None:
        # the model must agree with itself first: its second inference run (other random
        # seeds; memoised, and DET101 runs it anyway) within the same tolerance
        again = output_array(ctx.inference_pass().output)
        check = compare(result.reference, again, dtype)
        if check is not None and check.mismatch:
            result.comparable = False
            ctx.notes.append(
                f"serving parity: outputs were not compared with the reloaded model because two inference runs of the model itself differ (max abs {check.max_abs:.3g}); see DET101"
            )
    result.trips = round_trips(ctx)
    for trip in result.trips:
        result.comparisons[trip.format] = compare(result.reference, trip.output, trip.dtype or dtype)
        for note in trip.notes:
            ctx.notes.append(note)
        if trip.unchecked:
            shown = []
            for owner, names, why in trip.unchecked[:3]:
                listed = ", ".join(names[:3]) + (f" +{len(names) - 3}" if len(names) > 3 else "")
                shown.append(f"{owner} ({listed}: {why})")
            more = f" and {len(trip.unchecked) - 3} more" if len(trip.unchecked) > 3 else ""
            ctx.notes.append(f"serving parity: tensors outside the state dict were not checked for {len(trip.unchecked)} module(s) whose class could not be rebuilt: {'; '.join(shown)}{more}")
    return result


def changed_text(changed: list, limit: int = 3) -> str:
    parts = []
    for name, value in changed[:limit]:
        parts.append(f"{name} ({value})" if isinstance(value, str) else f"{name} (max abs {value:.3g})")
    if len(changed) > limit:
        parts.append(f"+{len(changed) - limit} more")
    return ", ".join(parts)
