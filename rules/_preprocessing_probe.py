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


def significant(values: Any, digits: int = 4) -> list[float]:
    """Rounded to significant digits: values squeezed to 0.0004 keep their precision."""
    return [float(f"{float(v):.{digits}g}") for v in np.asarray(values).reshape(-1)]


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


# -- what the model expects: the reference, per framework -------------------------------------
#: a model's own preprocessing layers expect 0-255 pixels when they map [0, 255] onto a span
#: of this size per channel: Rescaling(1/255) 1, Rescaling(1/127.5, -1) 2, ConvNeXt's
#: Normalization or Rescaling(1/255) + ImageNet Normalization 4.4, EfficientNet with ImageNet
#: weights about 9; a Normalization adapted on [0, 1] data spans about 1100
RAW_SPAN = (0.3, 30.0)


class InModel(NamedTuple):
    """The Rescaling/Normalization layers a Keras model applies to its own input before its
    first layer with weights, as one per-channel affine map of the model input."""

    layers: list  # [(qualified name, "Rescaling(scale=1/255, offset=0)"), ...]
    gain: np.ndarray  # per channel: first layer's input = gain * model input + offset
    offset: np.ndarray
    first_layer: str | None  # the first layer with weights after them (call order)

    @property
    def span(self) -> np.ndarray:
        """What the layers make of the 0-255 range, per channel."""
        return np.abs(self.gain) * 255.0

    @property
    def expects_raw(self) -> bool:
        """The layers normalise 0-255 pixels: the model expects raw pixels as its input."""
        return bool(np.all(self.span >= RAW_SPAN[0]) and np.all(self.span <= RAW_SPAN[1]))

    def apply(self, stats: Any) -> ChannelStats:
        """Per-channel statistics of the first layer's input, given those of the model input
        (a ChannelStats or an expected_stats dict)."""
        get = (lambda k: stats[k]) if isinstance(stats, dict) else (lambda k: getattr(stats, k))
        mean = self.gain * get("mean") + self.offset
        std = np.abs(self.gain) * get("std")
        lo = self.gain * get("min") + self.offset
        hi = self.gain * get("max") + self.offset
        return ChannelStats(mean, std, np.minimum(lo, hi), np.maximum(lo, hi), "in-model")

    def text(self) -> str:
        return " and ".join(desc for _name, desc in self.layers)


class Reference(NamedTuple):
    """What the model expects from preprocess."""

    spec: PreprocessSpec
    model: str  # for messages: "resnet50", or the Keras model's name
    family: str | None  # the keras.applications module `pretrained` names ("resnet50")
    in_model: InModel | None  # Keras: the model's own preprocessing layers
    source: str  # "pretrained" or "model" (the model's own preprocessing layers say it)


def reference_for(ctx: Any) -> Reference | None:
    """The reference preprocessing for this pipeline (memoised), or None when nothing says
    what the model expects: the `pretrained` family (or explicit spec); for a Keras model
    without one, its own preprocessing layers when they normalise 0-255 pixels (the model
    then expects raw pixels, whatever its weights). A Keras family with built-in
    preprocessing whose model was built without it (include_preprocessing=False) expects
    what `keras_expected_mode` says instead."""
    return ctx.memo("preprocessing.reference", lambda: _reference_for(ctx))


def _reference_for(ctx: Any) -> Reference | None:
    from auditor.dynamic.reference import family_label, keras_family, reference_spec

    in_model = in_model_preprocessing(ctx)
    if ctx.pretrained is None:
        if in_model is None or not in_model.expects_raw:
            return None
        name = getattr(ctx.model, "name", None) or "the model"
        spec = mode_spec("builtin", f"{name}'s own preprocessing layers")
        return Reference(spec, name, None, in_model, "model")
    try:
        spec = reference_spec(ctx.pretrained)
    except (ValueError, TypeError):
        return None
    if spec is None or spec.mean.size != 3:
        return None
    family = keras_family(ctx.pretrained)
    if family is not None and knowledge.KERAS_FAMILIES[family][0] == "builtin" and getattr(ctx, "framework", None) == "keras" and in_model is None:
        # built without its preprocessing layers (include_preprocessing=False)
        model_name = str(getattr(ctx.model, "name", "") or "")
        ctor = _constructor_from_name(family, model_name)
        mode = knowledge.keras_expected_mode(family, ctor, False)
        if mode != "builtin":
            spec = mode_spec(mode, f"keras.applications.{family} without its preprocessing layers")
    return Reference(spec, family_label(ctx.pretrained, spec), family, in_model, "pretrained")


def _constructor_from_name(family: str, model_name: str) -> str | None:
    """EfficientNetV2 B0-B3 vs S/M/L from the model's name ("efficientnetv2-b0")."""
    if family == "efficientnet_v2" and "-" in model_name:
        tail = model_name.rsplit("-", 1)[1].upper()
        return f"EfficientNetV2{tail}"
    return None


def in_model_preprocessing(ctx: Any) -> InModel | None:
    """Keras: the model's own Rescaling/Normalization layers before its first layer with
    weights (`keras_context.builtin_preprocessing`), measured as one per-channel affine map
    by calling them on constant images; None for PyTorch, for a model without them, or when
    they are not per-channel affine on 3-channel channels-last input."""
    if getattr(ctx, "framework", None) != "keras":
        return None
    return ctx.memo("preprocessing.in_model", lambda: _in_model(ctx))


def _in_model(ctx: Any) -> InModel | None:
    from auditor.dynamic.keras_context import builtin_preprocessing
    from auditor.dynamic.keras_state import to_numpy as keras_numpy

    layers = builtin_preprocessing(ctx.model)
    if not layers:
        return None
    colours = PROBE_COLOURS.astype(np.float32).reshape(len(PROBE_COLOURS), 1, 1, 3)
    try:
        x: Any = colours
        for _name, layer in layers:
            x = layer(x)
        out = np.asarray(keras_numpy(x), dtype=np.float64)
    except Exception:  # noqa: BLE001 - layers that do not take such images: no claim
        return None
    if out.shape != colours.shape or not np.isfinite(out).all():
        return None
    out = out.reshape(len(PROBE_COLOURS), 3)
    gain, offset = np.zeros(3), np.zeros(3)
    span = max(float(np.ptp(out)), 1e-12)
    for c in range(3):
        design = np.stack([PROBE_COLOURS[:, c], np.ones(len(PROBE_COLOURS))], axis=1)
        coef, *_ = np.linalg.lstsq(design, out[:, c], rcond=None)
        if np.abs(design @ coef - out[:, c]).max() > AFFINE_RTOL * span + 1e-6:
            return None  # mixes channels or is not affine
        gain[c], offset[c] = coef
    names = {name for name, _layer in layers}
    first = None
    try:
        record = ctx.eval_pass()
        first = next((leaf for leaf in record.leaves if leaf not in names), None)
    except Exception:  # noqa: BLE001 - the engine reports a sample that does not fit
        first = None
    return InModel([(name, describe_layer(layer, keras_numpy)) for name, layer in layers], gain, offset, first)


def describe_layer(layer: Any, to_np: Any = None) -> str:
    """"Rescaling(scale=1/255, offset=0)", "Normalization(mean=[...], variance=[...])"."""
    kind = type(layer).__name__
    to_np = to_np or to_numpy
    if kind == "Rescaling":
        return f"Rescaling(scale={_scale_text(getattr(layer, 'scale', None))}, offset={_value_text(getattr(layer, 'offset', None))})"
    if kind == "Normalization":
        try:
            mean = np.asarray(to_np(layer.mean), dtype=np.float64).reshape(-1)
            var = np.asarray(to_np(layer.variance), dtype=np.float64).reshape(-1)
        except Exception:  # noqa: BLE001 - not built / not adapted
            return "Normalization"
        invert = ", invert=True" if getattr(layer, "invert", False) else ""
        return f"Normalization(mean={_fmt4(mean)}, variance={_fmt4(var)}{invert})"
    return kind


def _scale_text(value: Any) -> str:
    if isinstance(value, (int, float)) and value:
        inverse = 1.0 / float(value)
        if abs(inverse - round(inverse)) < 1e-3 * abs(inverse) and abs(inverse) > 1:
            return f"1/{round(inverse)}"
        if abs(2 * inverse - round(2 * inverse)) < 1e-3 * abs(inverse) and abs(inverse) > 1:
            return f"1/{inverse:g}"
    return _value_text(value)


def _fmt4(values: Any) -> str:
    return "[" + ", ".join(f"{float(v):.4g}" for v in values) + "]"


def _value_text(value: Any) -> str:
    if isinstance(value, (int, float)):
        return f"{float(value):.4g}"
    try:
        return _fmt4(np.asarray(value, dtype=np.float64).reshape(-1))
    except Exception:  # noqa: BLE001
        return str(value)


# -- stored BatchNorm statistics, per framework -------------------------------------------------
class StoredStatistics(NamedTuple):
    mean: np.ndarray  # float64 (C,): running_mean / moving_mean
    var: np.ndarray  # running_var / moving_variance
    eps: float
    initial: bool  # exactly as a new layer holds them (mean 0, variance 1, nothing tracked)


def stored_statistics(ctx: Any, name: str) -> StoredStatistics | None:
    """The running (PyTorch) or moving (Keras) statistics of BatchNorm layer `name` as numpy;
    None when the layer keeps none."""
    layer = ctx.module(name)
    if getattr(ctx, "framework", None) == "keras":
        from auditor.dynamic.keras_state import to_numpy as keras_numpy

        mean, var = getattr(layer, "moving_mean", None), getattr(layer, "moving_variance", None)
        if mean is None or var is None:
            return None
        m = np.asarray(keras_numpy(mean), dtype=np.float64).reshape(-1)
        v = np.asarray(keras_numpy(var), dtype=np.float64).reshape(-1)
        initial = bool(m.size) and bool(np.all(m == 0)) and bool(np.all(v == 1))
        return StoredStatistics(m, v, float(getattr(layer, "epsilon", 1e-3)), initial)
    mean, var = getattr(layer, "running_mean", None), getattr(layer, "running_var", None)
    if not hasattr(mean, "detach") or not hasattr(var, "detach"):
        return None
    m, v = to_numpy(mean).reshape(-1), to_numpy(var).reshape(-1)
    tracked = getattr(layer, "num_batches_tracked", None)
    untouched = not (hasattr(tracked, "detach") and tracked.numel() and int(tracked.reshape(-1)[0]) != 0)
    initial = bool(m.size) and untouched and bool(np.all(m == 0)) and bool(np.all(v == 1))
    return StoredStatistics(m, v, float(getattr(layer, "eps", 1e-5)), initial)


def lower_median(values: np.ndarray) -> float:
    """The lower of the two middle values for an even count (torch.median's convention)."""
    flat = np.sort(np.asarray(values, dtype=np.float64).reshape(-1))
    return float(flat[(flat.size - 1) // 2])
