"""Shared logic of the dynamic preprocessing probes (PRE101, PRE102): per-channel statistics,
the library of known preprocessing mistakes and the explanation of a measured difference.

numpy only at module level (torch tensors are converted through `.detach().cpu().numpy()`
duck typing), so importing it never imports a framework.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from auditor import knowledge
from auditor.dynamic.reference import CAFFE_MEAN_BGR, PreprocessSpec, mode_spec

#: a channel's mean may differ from the reference by this many output standard deviations
#: (resize/crop shift the mean of natural images by ~0.05-0.15 of that)
MEAN_TOL = 0.3
#: |ln(measured std / expected std)| allowed per channel: 0.1 is about +-10.5%. A resize or
#: center crop moves the per-channel std of natural images by a few percent; CLIP statistics
#: in place of ImageNet's (std ratio 0.83-0.87) must still be caught
STD_TOL = 0.1
#: Normalize(mean, std) read from a Compose: differences below these are rounding
NORMALIZE_MEAN_TOL = 0.01
NORMALIZE_STD_RTOL = 0.02


class ChannelStats(NamedTuple):
    mean: np.ndarray
    std: np.ndarray
    min: np.ndarray
    max: np.ndarray
    layout: str  # "NCHW", "NHWC"


def to_numpy(value: Any) -> np.ndarray | None:
    if hasattr(value, "detach") and hasattr(value, "cpu"):
        value = value.detach().cpu()
        if hasattr(value, "double"):
            value = value.double()
        return value.numpy()
    try:
        array = np.asarray(value)
    except Exception:  # noqa: BLE001
        return None
    if array.dtype.kind not in "biuf":
        return None
    return array


def channel_axis(shape: tuple[int, ...], is_tensor: bool = True) -> int | None:
    """Channel axis of a 4-D image batch: NCHW unless the last dim is 3 (or 1) and dim 1 isn't."""
    if len(shape) != 4:
        return None
    if shape[-1] in (1, 3) and shape[1] not in (1, 3):
        return 3
    if shape[1] in (1, 3):
        return 1
    return 1 if is_tensor else (3 if shape[-1] <= 4 else 1)


def channel_stats(value: Any, axis: int | None = None) -> ChannelStats | None:
    array = to_numpy(value)
    if array is None or array.ndim != 4:
        return None
    if axis is None:
        axis = channel_axis(array.shape)
    if axis is None:
        return None
    x = np.moveaxis(array.astype(np.float64), axis, -1).reshape(-1, array.shape[axis])
    finite = np.isfinite(x).all(axis=1)
    x = x[finite] if finite.any() else x
    return ChannelStats(x.mean(0), x.std(0), x.min(0), x.max(0), "NCHW" if axis == 1 else "NHWC")


def raw_images(raw: Any) -> tuple[np.ndarray | None, str]:
    """The raw sample as (N, H, W, 3) floats on the 0-255 scale, and a note on what was done."""
    array = to_numpy(raw)
    if array is None or array.ndim != 4:
        return None, ""
    note = ""
    if array.shape[-1] != 3 and array.shape[1] == 3:
        array = np.moveaxis(array, 1, -1)
        note = "raw sample read as NCHW"
    if array.shape[-1] != 3:
        return None, ""
    array = array.astype(np.float64)
    if array.size and np.nanmax(array) <= 1.0 + 1e-6 and np.nanmin(array) >= 0.0:
        array = array * 255.0
        note = (note + "; " if note else "") + "raw sample in [0, 1]: scaled by 255 for the reference"
    return array, note


# -- candidate mistakes --------------------------------------------------------------------
class Candidate(NamedTuple):
    key: str
    spec: PreprocessSpec
    explanation: str  # format fields: {model}, {expects}


def _twice(spec: PreprocessSpec) -> PreprocessSpec:
    """spec's normalisation applied to its own output: ((x/s - m)/d - m)/d."""
    return PreprocessSpec(spec.name + " twice", spec.mean * (1 + spec.std), spec.std ** 2, scale=spec.scale, channels=spec.channels)


def candidates(ref: PreprocessSpec) -> list[Candidate]:
    """Known mistakes relative to the reference, each as the affine map it computes."""
    other_order = "RGB" if ref.channels == "BGR" else "BGR"
    ours = ref.channels
    out = [
        Candidate("channel-order", PreprocessSpec("swapped", ref.mean, ref.std, ref.scale, other_order), f"input is {other_order} but {{model}} weights expect {ours}"),
        Candidate("unit-range", PreprocessSpec("[0, 1]", (0,) * 3, (1,) * 3, 255.0), "inputs in [0, 1] but {model} expects {expects}"),
        Candidate("raw-255", PreprocessSpec("[0, 255]", (0,) * 3, (1,) * 3, 1.0), "raw [0, 255] pixels fed but {model} expects {expects}"),
        Candidate("tf", mode_spec("tf", "[-1, 1]"), "inputs in [-1, 1] (Keras tf mode / Inception 0.5 mean/std) but {model} expects {expects}"),
        Candidate("caffe", mode_spec("caffe", "caffe"), "caffe-mode input (BGR, 0-255, mean subtracted) but {model} expects {expects}"),
        Candidate("imagenet", PreprocessSpec("ImageNet", knowledge.IMAGENET_MEAN, knowledge.IMAGENET_STD, 255.0, stats_name="ImageNet"), "inputs ImageNet-normalised (mean/std) but {model} expects {expects}"),
        Candidate("clip", PreprocessSpec("OpenAI CLIP", knowledge.CLIP_MEAN, knowledge.CLIP_STD, 255.0, stats_name="OpenAI CLIP"), "inputs normalised with the OpenAI CLIP mean/std but {model} expects {expects}"),
        Candidate("dpn", PreprocessSpec("DPN", knowledge.DPN_MEAN, knowledge.DPN_STD, 255.0, stats_name="DPN"), "inputs normalised with the DPN mean/std but {model} expects {expects}"),
        Candidate("no-scale", PreprocessSpec("mean/std on 0-255", ref.mean, ref.std, ref.scale / 255.0 if ref.scale >= 2 else ref.scale, ref.channels), "mean/std normalisation applied to 0-255 pixels (the /255 or ToTensor step is missing) but {model} expects {expects}"),
        Candidate("scaled-twice", PreprocessSpec("/255 twice", ref.mean, ref.std, ref.scale * 255.0, ref.channels), "pixels divided by 255 twice before the normalisation but {model} expects {expects}"),
        Candidate("twice-255", PreprocessSpec("/255 twice", (0,) * 3, (1,) * 3, 255.0 ** 2), "pixels divided by 255 twice (values in [0, 0.004]) but {model} expects {expects}"),
        Candidate("double", _twice(ref), "normalised twice ({expects} applied to already-normalised data)"),
        Candidate("bgr-255", PreprocessSpec("BGR [0, 1]", (0,) * 3, (1,) * 3, 255.0, "BGR"), "BGR inputs in [0, 1] but {model} expects {expects}"),
        Candidate("caffe-rgb", PreprocessSpec("caffe RGB", CAFFE_MEAN_BGR, (1.0,) * 3, 1.0, "RGB"), "0-255 mean-subtracted input in RGB order but {model} expects {expects}"),
    ]
    if ref.stats_name != "ImageNet" or ref.channels != "RGB":
        out.append(Candidate("imagenet-twice", _twice(PreprocessSpec("ImageNet", knowledge.IMAGENET_MEAN, knowledge.IMAGENET_STD, 255.0)), "ImageNet normalisation applied twice but {model} expects {expects}"))
    kept: list[Candidate] = []
    for cand in out:
        if cand.spec.same_map(ref) or any(cand.spec.same_map(k.spec) for k in kept):
            continue
        kept.append(cand)
    return kept


class Comparison(NamedTuple):
    mismatch: bool
    mean_dev: np.ndarray  # |measured - expected| / expected std, per channel
    std_dev: np.ndarray  # ln(measured std / expected std), per channel


def compare(expected: dict, measured: ChannelStats, std_tol: float = STD_TOL) -> Comparison:
    exp_std = np.maximum(np.abs(expected["std"]), 1e-12)
    scale = np.maximum(exp_std, np.abs(measured.std))
    mean_dev = np.abs(measured.mean - expected["mean"]) / np.maximum(scale, 1e-12)
    std_dev = np.log(np.maximum(measured.std, 1e-12) / exp_std)
    mismatch = bool(np.any(mean_dev > MEAN_TOL) or np.any(np.abs(std_dev) > std_tol))
    return Comparison(mismatch, mean_dev, std_dev)


def score(cmp: Comparison, std_tol: float = STD_TOL) -> float:
    return float(max(np.max(cmp.mean_dev) / MEAN_TOL, np.max(np.abs(cmp.std_dev)) / std_tol))


class Explanation(NamedTuple):
    key: str  # candidate key, or "affine" for the fitted map
    text: str
    spec: PreprocessSpec | None
    score: float


def explain(ref: PreprocessSpec, raw: ChannelStats, measured: ChannelStats, model: str, std_tol: float = STD_TOL) -> Explanation:
    """The known mistake whose predicted statistics fit the measured ones best; else the
    per-channel affine map fitted to them, as the mean/std it implies."""
    expects = ref.expects
    best: Explanation | None = None
    for cand in candidates(ref):
        pred = cand.spec.expected_stats(raw.mean, raw.std)
        cmp = compare(pred, measured, std_tol)
        if cmp.mismatch:
            continue
        s = score(cmp, std_tol)
        if best is None or s < best.score:
            best = Explanation(cand.key, cand.explanation.format(model=model, expects=expects), cand.spec, s)
    if best is not None:
        return best
    return fitted(ref, raw, measured, model)


def fitted(ref: PreprocessSpec, raw: ChannelStats, measured: ChannelStats, model: str) -> Explanation:
    """Fit out = a * raw[order] + b per channel from the statistics (in the reference's
    channel order) and report it as the Normalize(mean, std) on [0, 1] pixels it amounts to."""
    idx = ref.order
    rs = np.maximum(raw.std[idx], 1e-12)
    a = measured.std / rs
    b = measured.mean - a * raw.mean[idx]
    a = np.where(a == 0, 1e-12, a)
    implied_std = 1.0 / (255.0 * a)
    implied_mean = -b * implied_std
    want_mean = ref.mean / (ref.scale / 255.0) if ref.scale else ref.mean
    want_std = ref.std * (ref.scale / 255.0)
    text = (
        f"preprocess amounts to Normalize(mean={_fmt(implied_mean)}, std={_fmt(implied_std)}) on [0, 1] pixels "
        f"but {model} expects mean={_fmt(want_mean)}, std={_fmt(want_std)} ({expects_text(ref)})"
    )
    spec = PreprocessSpec("fitted", implied_mean, implied_std, 255.0, ref.channels)
    return Explanation("affine", text, spec, math.inf)


def expects_text(ref: PreprocessSpec) -> str:
    return ref.expects


def _fmt(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.3g}" for v in values) + "]"


def rounded(values: Any, digits: int = 4) -> list[float]:
    return [round(float(v), digits) for v in np.asarray(values).reshape(-1)]


# -- duck-typed torchvision Compose ------------------------------------------------------------
def find_normalize(preprocess: Any, depth: int = 0) -> list[Any]:
    """`Normalize`-like objects (class name Normalize, .mean and .std) inside a Compose-like
    object (`.transforms` list), recursively; [] when there is none."""
    found: list[Any] = []
    if depth > 4 or preprocess is None:
        return found
    if type(preprocess).__name__ == "Normalize" and hasattr(preprocess, "mean") and hasattr(preprocess, "std"):
        return [preprocess]
    transforms = getattr(preprocess, "transforms", None)
    if isinstance(transforms, (list, tuple)):
        for item in transforms:
            found.extend(find_normalize(item, depth + 1))
    return found


def normalize_values(norm: Any) -> tuple[np.ndarray, np.ndarray] | None:
    mean, std = to_numpy(norm.mean), to_numpy(norm.std)
    if mean is None or std is None:
        return None
    mean, std = mean.astype(np.float64).reshape(-1), std.astype(np.float64).reshape(-1)
    if mean.size == 1:
        mean = np.repeat(mean, 3)
    if std.size == 1:
        std = np.repeat(std, 3)
    if mean.size != 3 or std.size != 3:
        return None
    return mean, std


def stats_name(mean: np.ndarray, std: np.ndarray) -> str | None:
    for name, (m, s) in knowledge.KNOWN_STATS.items():
        if np.allclose(mean, m, atol=2e-3) and np.allclose(std, s, atol=2e-3):
            return name
    return None


# -- the per-channel affine map of preprocess, measured on constant images ---------------------
#: RGB values of the constant probe images: distinct per channel so that a channel swap is
#: identifiable, spanning 0-255 so that the gain is well conditioned
PROBE_COLOURS = np.array([[0, 0, 0], [255, 255, 255], [200, 120, 40], [40, 200, 120], [120, 40, 200]], dtype=np.float64)
#: a map counts as affine when the worst residual is below this fraction of its output span
AFFINE_RTOL = 1e-3
#: std tolerance when only measured statistics are available (no affine map): a resize
#: averages pixel noise and lowers the std (by 12% on the fixtures' noisy images)
STATS_STD_TOL = 0.25


class ChannelMap(NamedTuple):
    """out[c] = gain[c] * raw[source[c]] + offset[c] (raw RGB, 0-255 scale)."""

    source: np.ndarray
    gain: np.ndarray
    offset: np.ndarray

    def stats(self, raw: ChannelStats) -> ChannelStats:
        m = self.gain * raw.mean[self.source] + self.offset
        s = np.abs(self.gain) * raw.std[self.source]
        lo = self.gain * raw.min[self.source] + self.offset
        hi = self.gain * raw.max[self.source] + self.offset
        return ChannelStats(m, s, np.minimum(lo, hi), np.maximum(lo, hi), "map")


def run_preprocess(preprocess: Any, batch: np.ndarray) -> Any:
    """preprocess(batch), else per image and stacked (torchvision transforms take one image)."""
    try:
        return preprocess(batch.copy())
    except Exception:  # noqa: BLE001 - retry per item, as TorchContext.preprocessed does
        items = [to_numpy(preprocess(item.copy())) for item in batch]
        if any(i is None for i in items):
            raise
        return np.stack(items)


def affine_map(preprocess: Any, raw: Any) -> ChannelMap | None:
    """The per-channel affine map preprocess applies, measured on constant images shaped like
    the raw sample (a resize or crop of a constant image is the same constant, so the map is
    exact whatever the geometry); None when preprocess is not per-channel affine (per-image
    standardisation, colour jitter) or does not accept such images."""
    array = to_numpy(raw)
    if array is None or array.ndim != 4 or array.shape[-1] != 3:
        return None
    unit = array.dtype.kind == "f" and array.size and np.nanmax(array) <= 1.0 + 1e-6 and np.nanmin(array) >= 0
    colours = PROBE_COLOURS / 255.0 if unit else PROBE_COLOURS
    probe = np.empty((len(colours),) + array.shape[1:], dtype=array.dtype)
    probe[:] = colours[:, None, None, :].astype(array.dtype)
    try:
        out = to_numpy(run_preprocess(preprocess, probe))
    except Exception:  # noqa: BLE001 - a preprocess that rejects constant images: use statistics
        return None
    if out is None or out.ndim != 4 or out.shape[0] != len(colours):
        return None
    axis = channel_axis(out.shape)
    if axis is None or out.shape[axis] != 3:
        return None
    x = np.moveaxis(out.astype(np.float64), axis, -1).reshape(len(colours), -1, 3)
    if not np.isfinite(x).all():
        return None
    per_image = x.mean(axis=1)  # (K, 3)
    if np.abs(x - per_image[:, None, :]).max() > AFFINE_RTOL * max(np.ptp(per_image), 1e-12) + 1e-9:
        return None  # not constant over the image: not a per-channel map
    source, gain, offset = [], [], []
    span = max(float(np.ptp(per_image)), 1e-12)
    for c in range(3):
        best = None
        for s in range(3):
            design = np.stack([PROBE_COLOURS[:, s], np.ones(len(colours))], axis=1)
            coef, *_ = np.linalg.lstsq(design, per_image[:, c], rcond=None)
            resid = np.abs(design @ coef - per_image[:, c]).max()
            if best is None or resid < best[0]:
                best = (resid, s, coef)
        if best[0] > AFFINE_RTOL * span + 1e-9 or abs(best[2][0]) < 1e-12:
            return None
        source.append(best[1])
        gain.append(best[2][0])
        offset.append(best[2][1])
    return ChannelMap(np.array(source), np.array(gain), np.array(offset))
