"""Reference preprocessing per pretrained family, as numbers (numpy only, framework-free).

A `PreprocessSpec` describes one per-channel affine preprocessing:

    out[..., c] = (raw[..., order[c]] / scale - mean[c]) / std[c]

with `raw` 0-255 pixels in RGB order (N, H, W, C), `order` the channel order the weights
expect ("RGB" keeps it, "BGR" reverses it) and mean/std in the units after dividing by
`scale`. Every known preprocessing is of this form: torchvision/timm `ToTensor` + `Normalize`
(scale 255), Keras `preprocess_input` modes caffe (BGR, scale 1, mean in 0-255 units), tf
(scale 127.5, mean 1, std 1) and torch (= ImageNet with scale 255), and Keras models with
built-in preprocessing (raw 0-255: scale 1, mean 0, std 1). So are the usual mistakes:
normalising twice, dividing by 255 twice, forgetting a step, swapping channels. The dynamic
preprocessing probe (PRE101) predicts per-channel statistics for each of them.

`reference_spec(pretrained)` resolves a family string or an explicit spec; the tables live in
`auditor.knowledge` (sources: shared/FRAMEWORK_FACTS.md sections 1 and 2).
"""

from __future__ import annotations

import functools
import re
import types
from typing import Any, Mapping, NamedTuple, Sequence

import numpy as np

from auditor import knowledge

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # keras imagenet_utils, mode="caffe", in BGR order


class PreprocessSpec:
    """One per-channel affine preprocessing (see the module docstring)."""

    def __init__(
        self,
        name: str,
        mean: Sequence[float],
        std: Sequence[float],
        scale: float = 255.0,
        channels: str = "RGB",
        expects: str | None = None,
        stats_name: str | None = None,
    ):
        channels = str(channels).upper()
        if channels not in ("RGB", "BGR"):
            raise ValueError(f"channels must be 'RGB' or 'BGR', got {channels!r}")
        mean_a = np.asarray(mean, dtype=np.float64).reshape(-1)
        std_a = np.asarray(std, dtype=np.float64).reshape(-1)
        if mean_a.size == 1:
            mean_a = np.repeat(mean_a, 3)
        if std_a.size == 1:
            std_a = np.repeat(std_a, 3)
        if mean_a.size != std_a.size:
            raise ValueError(f"mean has {mean_a.size} values, std {std_a.size}")
        if np.any(std_a == 0) or float(scale) == 0:
            raise ValueError("std and scale must be non-zero")
        self.name = name
        self.mean = mean_a
        self.std = std_a
        self.scale = float(scale)
        self.channels = channels
        self.stats_name = stats_name
        self.expects = expects or self.describe()

    # -- the map ----------------------------------------------------------------------------
    @property
    def order(self) -> np.ndarray:
        """Index of the raw (RGB) channel that feeds each output channel."""
        n = self.mean.size
        return np.arange(n)[::-1].copy() if self.channels == "BGR" else np.arange(n)

    @property
    def gain(self) -> np.ndarray:
        """Per output channel: out = gain * raw[order] + offset."""
        return 1.0 / (self.scale * self.std)

    @property
    def offset(self) -> np.ndarray:
        return -self.mean / self.std

    def apply(self, images: Any) -> np.ndarray:
        """Raw (N, H, W, C) pixels (0-255, RGB) -> float64 (N, H, W, C) as the weights expect."""
        x = np.asarray(images, dtype=np.float64)
        if x.shape[-1] != self.mean.size:
            raise ValueError(f"{self.name}: expected {self.mean.size} channels last, got shape {x.shape}")
        x = x[..., self.order]
        return (x / self.scale - self.mean) / self.std

    def expected_stats(self, raw_mean: Any, raw_std: Any, raw_min: Any = None, raw_max: Any = None) -> dict[str, np.ndarray]:
        """Per output channel mean/std (and min/max when raw min/max are given) of the
        output, given per-channel statistics of the raw RGB pixels."""
        g, o, idx = self.gain, self.offset, self.order
        rm = np.asarray(raw_mean, dtype=np.float64)[idx]
        rs = np.asarray(raw_std, dtype=np.float64)[idx]
        out = {"mean": g * rm + o, "std": np.abs(g) * rs}
        if raw_min is not None and raw_max is not None:
            lo = g * np.asarray(raw_min, dtype=np.float64)[idx] + o
            hi = g * np.asarray(raw_max, dtype=np.float64)[idx] + o
            out["min"], out["max"] = np.minimum(lo, hi), np.maximum(lo, hi)
        return out

    def output_range(self) -> tuple[float, float]:
        """The output range for raw pixels in [0, 255] (over all channels)."""
        lo = self.offset
        hi = self.gain * 255.0 + self.offset
        return float(np.min(np.minimum(lo, hi))), float(np.max(np.maximum(lo, hi)))

    def same_map(self, other: "PreprocessSpec", rtol: float = 1e-3) -> bool:
        """Whether both specs compute the same function of the raw pixels."""
        if self.mean.size != other.mean.size:
            return False
        return bool(
            np.array_equal(self.order, other.order)
            and np.allclose(self.gain, other.gain, rtol=rtol, atol=0)
            and np.allclose(self.offset, other.offset, rtol=rtol, atol=1e-3)
        )

    # -- text -------------------------------------------------------------------------------
    def describe(self) -> str:
        """What the spec expects, in words ("[-1, 1]", "ImageNet mean/std normalisation" ...)."""
        lo, hi = self.output_range()
        if np.allclose(self.mean, 0) and np.allclose(self.std, 1):
            if abs(self.scale - 1) < 1e-9:
                text = "raw [0, 255] pixels"
            elif abs(self.scale - 255) < 1e-9:
                text = "[0, 1] pixels"
            else:
                text = f"pixels / {self.scale:g}"
        elif abs(lo + 1) < 1e-3 and abs(hi - 1) < 1e-3:
            text = "[-1, 1] pixels"
        elif self.stats_name:
            text = f"{self.stats_name} mean/std normalisation"
        else:
            text = f"(x / {self.scale:g} - mean {_short(self.mean)}) / std {_short(self.std)}"
        if self.channels == "BGR":
            text += " in BGR order"
        return text

    def as_dict(self) -> dict[str, Any]:
        return {
            "name": self.name,
            "mean": [round(float(v), 6) for v in self.mean],
            "std": [round(float(v), 6) for v in self.std],
            "scale": self.scale,
            "channels": self.channels,
        }

    def __repr__(self) -> str:
        return f"PreprocessSpec({self.name!r}, mean={_short(self.mean)}, std={_short(self.std)}, scale={self.scale:g}, channels={self.channels!r})"


def _short(values: Any) -> str:
    return "(" + ", ".join(f"{float(v):.4g}" for v in values) + ")"


# -- named specs -----------------------------------------------------------------------------
def stats_spec(name: str, stats_name: str, scale: float = 255.0, channels: str = "RGB") -> PreprocessSpec:
    mean, std = knowledge.KNOWN_STATS[stats_name] if stats_name in knowledge.KNOWN_STATS else (knowledge.KINETICS_MEAN, knowledge.KINETICS_STD)
    return PreprocessSpec(name, mean, std, scale=scale, channels=channels, stats_name=stats_name)


def mode_spec(mode: str, name: str | None = None) -> PreprocessSpec:
    """Keras `preprocess_input` modes (plus "builtin": raw 0-255 floats)."""
    mode = mode.lower()
    name = name or f"keras mode={mode}"
    if mode == "caffe":
        return PreprocessSpec(name, CAFFE_MEAN_BGR, (1.0, 1.0, 1.0), scale=1.0, channels="BGR", expects="caffe-mode input (BGR, 0-255, ImageNet mean subtracted)")
    if mode == "tf":
        return PreprocessSpec(name, (1.0,) * 3, (1.0,) * 3, scale=127.5, expects="[-1, 1] pixels")
    if mode == "torch":
        return stats_spec(name, "ImageNet")
    if mode in ("builtin", "raw", "none"):
        return PreprocessSpec(name, (0.0,) * 3, (1.0,) * 3, scale=1.0, expects="raw [0, 255] pixels (the model normalises them itself)")
    raise ValueError(f"unknown preprocessing mode {mode!r} (expected caffe, tf, torch or builtin)")


def _torchvision_spec(builder: str, display: str) -> PreprocessSpec | None:
    kind = knowledge.torchvision_kind(builder)
    if kind == "detection":
        return PreprocessSpec(display, (0.0,) * 3, (1.0,) * 3, scale=255.0, expects="[0, 1] pixels (the detector normalises them itself)")
    if kind == "video":
        if builder.lower().startswith("mvit"):
            return PreprocessSpec(display, (0.45,) * 3, (0.225,) * 3, stats_name="Kinetics (MViT)")
        if builder.lower().startswith("swin3d"):
            return stats_spec(display, "ImageNet")
        return PreprocessSpec(display, knowledge.KINETICS_MEAN, knowledge.KINETICS_STD, stats_name="Kinetics")
    if kind in ("classification", "segmentation"):
        return stats_spec(display, "ImageNet")
    return None


def _timm_spec(model_name: str, display: str) -> PreprocessSpec | None:
    name = model_name.lower()
    arch, _, tag = name.partition(".")
    if "clip" in name or tag.startswith("openai") or "laion" in tag:
        return stats_spec(display, "OpenAI CLIP")
    if arch.startswith("inception_v3") or arch.startswith(("xception", "tf_inception")):
        return stats_spec(display, "ImageNet" if tag.startswith("gluon") else "Inception (0.5)")
    if arch.startswith("dpn"):
        return stats_spec(display, "DPN")
    found = knowledge.timm_expected_stats(name)
    if found is None:
        return None
    return stats_spec(display, found[0])


def _keras_spec(module: str, display: str) -> PreprocessSpec | None:
    module = module.lower()
    if module not in knowledge.KERAS_FAMILIES:
        ctor = {k.lower(): v for k, v in knowledge.KERAS_CONSTRUCTORS.items()}.get(module)
        if ctor is None:
            return None
        module = ctor
    return mode_spec(knowledge.keras_expected_mode(module, None, None), display)


def reference_spec(pretrained: Any) -> PreprocessSpec | None:
    """The preprocessing the weights of `pretrained` expect, or None when unknown.

    Accepts a `PreprocessSpec`; a dict `{"mean", "std", "scale"=255 (1 when a mean is above
    1), "channels"="RGB", "name"}` or `{"mode": "caffe"|"tf"|"torch"|"builtin"}`; a mode
    string; or a family: `torchvision.models.resnet50`, `torchvision/resnet50`,
    `timm/inception_v3`, `timm/vit_base_patch16_clip_224.openai`,
    `keras.applications.inception_v3`, `keras.applications.ResNet50` ...
    """
    if pretrained is None or pretrained is False:
        return None
    if isinstance(pretrained, PreprocessSpec):
        return pretrained
    if isinstance(pretrained, Mapping):
        return _dict_spec(pretrained)
    text = str(pretrained).strip()
    if not text:
        return None
    lower = text.lower()
    if lower in ("caffe", "tf", "torch"):
        return mode_spec(lower)
    for sep in ("/", ":"):
        if sep in text:
            prefix, _, rest = text.partition(sep)
            break
    else:
        prefix, _, rest = text.rpartition(".")
    prefix_l = prefix.lower()
    rest = rest.strip()
    if prefix_l.startswith(("keras", "tf.keras", "tensorflow.keras", "tf_keras")):
        module = _keras_module_text(text, rest)
        return _keras_spec(module, f"keras.applications.{module}")
    if prefix_l.startswith(("timm", "hf-hub", "hf_hub")):
        return _timm_spec(rest, f"timm {rest}")
    if prefix_l.startswith("torchvision"):
        builder = rest.split(".")[-1] if "." in rest and not rest.startswith("models") else rest.replace("models.", "")
        builder = builder.split("(")[0]
        return _torchvision_spec(builder, f"torchvision {builder}")
    if "." not in text and "/" not in text:
        return _torchvision_spec(text, f"torchvision {text}") or _timm_spec(text, f"timm {text}")
    return None


def _keras_module_text(text: str, rest: str) -> str:
    """"keras.applications.resnet50.ResNet50" -> "resnet50" (the module before a constructor)."""
    module = rest.split(".")[-1] if "applications" in text.lower() else rest
    parts = text.split(".")
    if "applications" in parts and parts.index("applications") + 1 < len(parts):
        module = parts[parts.index("applications") + 1]
    return module


def _dict_spec(spec: Mapping[str, Any]) -> PreprocessSpec:
    if "mode" in spec:
        return mode_spec(str(spec["mode"]), spec.get("name") or f"the {str(spec['mode']).lower()}-mode spec")
    if "mean" not in spec or "std" not in spec:
        raise ValueError("an explicit preprocessing spec needs 'mean' and 'std' (or 'mode')")
    mean = np.asarray(spec["mean"], dtype=np.float64).reshape(-1)
    scale = spec.get("scale")
    if scale is None:
        scale = 1.0 if np.max(np.abs(mean)) > 1.5 else 255.0
    stats_name = None
    for known, (m, s) in knowledge.KNOWN_STATS.items():
        if mean.size == 3 and np.allclose(mean, m, atol=1e-3) and np.allclose(spec["std"], s, atol=1e-3):
            stats_name = known
    return PreprocessSpec(str(spec.get("name") or "the explicit spec"), mean, spec["std"], scale=float(scale), channels=str(spec.get("channels", "RGB")), stats_name=stats_name)


def family_label(pretrained: Any, spec: PreprocessSpec | None = None) -> str:
    """Short model name for messages: "resnet50", "inception_v3", ..."""
    if isinstance(pretrained, str):
        text = pretrained.strip()
        for sep in ("/", ":"):
            if sep in text:
                return text.split(sep, 1)[1]
        return text.split(".")[-1]
    return spec.name if spec is not None else "the pretrained weights"


# -- Keras applications: which family `pretrained` names, which `preprocess_input` a function is --
#: what each `preprocess_input` mode does to 0-255 RGB pixels (FRAMEWORK_FACTS 1.1); "builtin"
#: is the pass-through of the families that normalise inside the model
MODE_DOES = {
    "caffe": "mode 'caffe': RGB to BGR, ImageNet mean subtracted, no scaling (0-255)",
    "tf": "mode 'tf': x / 127.5 - 1, range [-1, 1]",
    "torch": "mode 'torch': x / 255, then ImageNet mean/std",
    "builtin": "a pass-through: returns the pixels unchanged",
}

#: a keras.applications module path: keras.src.applications.resnet (Keras 3),
#: keras.applications.resnet (Keras 2), tf_keras.src.applications.resnet, tensorflow.python.keras...
_KERAS_APPLICATION_MODULE = re.compile(r"^(?:keras|tf_keras|tensorflow\.keras|tensorflow\.python\.keras)(?:\.src)?\.applications\.([A-Za-z0-9_]+)$")


def keras_family(pretrained: Any) -> str | None:
    """The keras.applications module a `pretrained` family names ("keras.applications.resnet50"
    -> "resnet50", "keras.applications.ResNet50" -> "resnet"), None for other families."""
    if not isinstance(pretrained, str):
        return None
    text = pretrained.strip()
    for sep in ("/", ":"):
        if sep in text:
            prefix, _, rest = text.partition(sep)
            break
    else:
        prefix, _, rest = text.rpartition(".")
    if not prefix.lower().startswith(("keras", "tf.keras", "tensorflow.keras", "tf_keras")):
        return None
    module = _keras_module_text(text, rest.strip()).lower()
    if module in knowledge.KERAS_FAMILIES:
        return module
    return {k.lower(): v for k, v in knowledge.KERAS_CONSTRUCTORS.items()}.get(module)


class KerasPreprocessInput(NamedTuple):
    """A `keras.applications.<family>.preprocess_input` found in (or as) a preprocess."""

    module: str  # the function's __module__: "keras.src.applications.mobilenet_v2"
    family: str  # "mobilenet_v2", or "imagenet_utils"
    mode: str  # caffe | tf | torch | builtin (pass-through)
    via: str  # "" (it is the function), "functools.partial", "called" (preprocess calls it)

    @property
    def label(self) -> str:
        text = f"keras.applications.{self.family}.preprocess_input"
        if self.family == "imagenet_utils":
            text += f"(mode={self.mode!r})"
        return text

    @property
    def does(self) -> str:
        return MODE_DOES[self.mode]

    def spec(self) -> "PreprocessSpec":
        return mode_spec(self.mode, self.label)


def keras_preprocess_input(function: Any, depth: int = 2) -> KerasPreprocessInput | None:
    """Which keras.applications `preprocess_input` `function` is: the function itself (by its
    `__module__`), a `functools.partial` of it (`imagenet_utils.preprocess_input` takes its
    `mode=` from the partial, default "caffe"), or, for a plain def or lambda, the one its
    code calls (names and attribute chains resolved through its globals and closure, nested
    helper functions followed `depth` levels). None when there is none, or more than one."""
    found = _as_preprocess_input(function)
    if found is not None:
        return found
    if depth <= 0 or not isinstance(function, types.FunctionType):
        return None
    calls: dict[tuple[str, str], KerasPreprocessInput] = {}
    for obj in _referenced_objects(function):
        item = _as_preprocess_input(obj)
        if item is None and isinstance(obj, types.FunctionType) and obj is not function:
            item = keras_preprocess_input(obj, depth - 1)
        if item is not None:
            calls.setdefault((item.family, item.mode), item)
    if len(calls) != 1:
        return None
    item = next(iter(calls.values()))
    return item._replace(via="called")


def _as_preprocess_input(function: Any) -> KerasPreprocessInput | None:
    via, keywords, args = "", {}, ()
    if isinstance(function, functools.partial):
        via, keywords, args = "functools.partial", dict(function.keywords or {}), tuple(function.args or ())
        function = function.func
        if isinstance(function, functools.partial):  # a partial of a partial
            inner = _as_preprocess_input(function)
            if inner is None:
                return None
            if inner.family == "imagenet_utils" and "mode" in keywords:
                inner = inner._replace(mode=str(keywords["mode"]).lower())
            return inner._replace(via="functools.partial")
    if getattr(function, "__name__", None) != "preprocess_input":
        return None
    module = getattr(function, "__module__", None) or ""
    match = _KERAS_APPLICATION_MODULE.match(module)
    if match is None:
        return None
    family = match.group(1)
    if family == "imagenet_utils":
        mode = keywords.get("mode", args[2] if len(args) >= 3 else "caffe")
        mode = str(mode).lower()
        if mode not in ("caffe", "tf", "torch"):
            return None
    elif family in knowledge.KERAS_FAMILIES:
        mode = knowledge.KERAS_FAMILIES[family][0]
    else:
        return None
    return KerasPreprocessInput(module, family, mode, via)


def _referenced_objects(function: types.FunctionType) -> list[Any]:
    """Objects the function's code loads by name or by an attribute chain on a module
    (`keras.applications.mobilenet_v2.preprocess_input`, `mobilenet_v2.preprocess_input`,
    a global partial). Attributes are read from modules only: no property of a user's
    object is ever evaluated."""
    import dis

    code = function.__code__
    closure = {}
    for name, cell in zip(code.co_freevars, function.__closure__ or ()):
        try:
            closure[name] = cell.cell_contents
        except ValueError:  # an empty cell
            continue
    found: list[Any] = []
    current: Any = None
    try:
        instructions = list(dis.get_instructions(code))
    except Exception:  # noqa: BLE001 - unreadable bytecode: nothing found
        return found
    for ins in instructions:
        if ins.opname in ("LOAD_GLOBAL", "LOAD_NAME"):
            current = function.__globals__.get(ins.argval, _MISSING)
        elif ins.opname == "LOAD_DEREF":
            current = closure.get(ins.argval, _MISSING)
        elif ins.opname in ("LOAD_ATTR", "LOAD_METHOD") and isinstance(current, types.ModuleType):
            current = getattr(current, ins.argval, _MISSING)
        else:
            current = _MISSING
            continue
        if current is not _MISSING and not isinstance(current, types.ModuleType):
            found.append(current)
    return found


_MISSING = object()
