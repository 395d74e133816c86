"""The Keras 3 audit context: the Keras adapter behind the same probe API as `TorchContext`.

Probes are written once against this API (`eval_pass()`, `inference_pass()`, `train_pass()`
returning `ForwardRecord`s, `inputs()`, `memo()`, `restore()`, `module(name)`, ...); what
differs per framework lives here. Only keras and the backend it runs on are imported: under
the TensorFlow backend torch is never imported.

Pass kinds (every pass runs eagerly: no `tf.function` trace, no `predict()`, nothing compiled
is left on the user's model):
- `eval_pass()`: `model(x, training=False)`, with recording: what `predict()` and an
  explicit inference call compute.
- `inference_pass()`: `model(x)` (the training flag left to Keras's resolution, as in
  serving code), with every random layer's seed moved, no recording; its output must equal
  the eval pass bit for bit.
- `train_pass()`: `model(x, training=True)`, as `fit()` calls it, with recording: which
  BatchNormalization layers normalised with batch statistics and moved their moving
  statistics.

Recording: Keras has no forward hooks, so for one pass each interesting layer's `call` is
wrapped by an instance attribute (removed afterwards; `Layer.__call__` still does all its
work, the wrapper only looks at the arguments). BatchNormalization layers report their
input's per-channel mean and variance (eval only) and whether they ran on batch statistics
(`training and trainable`, the rule Keras applies); layers with weights report their call
order and the last one's input (the head's features).
"""

from __future__ import annotations

from typing import Any, Callable

import numpy as np

from auditor.dynamic.keras_state import KerasState, all_layers, to_numpy
from auditor.dynamic.context_base import MemoisedContext, dtype_text, family_input_size, prepared_with, reference_images, shape_text, synthetic_note
from auditor.dynamic.loading import user_error
from auditor.dynamic.records import BatchNormObservation, ForwardRecord
from auditor.errors import UsageFailure


class SampleError(UsageFailure):
    """The sample or its preprocessing does not fit the model (exit 2, one line)."""


#: layer classes whose output depends on the training flag (recorded in `ForwardRecord.modes`)
MODE_DEPENDENT = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout", "BatchNormalization", "SyncBatchNormalization", "RandomFlip", "RandomRotation", "RandomZoom", "RandomTranslation", "RandomContrast", "RandomCrop", "RandomBrightness")
#: layers that normalise the input inside the model (built-in preprocessing)
PREPROCESSING_LAYERS = ("Rescaling", "Normalization")
#: seed of the inference pass's random layers (any fixed value unlike the user's state)
INFERENCE_SEED = 0x5EED_A0D1


def is_batchnorm(layer: Any) -> bool:
    """keras.layers.BatchNormalization and subclasses (SyncBatchNormalization), or any layer
    holding moving_mean/moving_variance variables."""
    import keras

    if isinstance(layer, keras.layers.BatchNormalization):
        return True
    return getattr(layer, "moving_mean", None) is not None and getattr(layer, "moving_variance", None) is not None


def layer_kind(layer: Any) -> str:
    return type(layer).__name__


def has_own_weights(layer: Any) -> bool:
    return bool(getattr(layer, "_trainable_variables", None) or getattr(layer, "_non_trainable_variables", None))


def is_container(layer: Any) -> bool:
    """A layer that holds other layers (a nested Model, a wrapper)."""
    try:
        return bool(list(layer._flatten_layers(include_self=False, recursive=False)))
    except Exception:  # noqa: BLE001
        return False


def primary_output(output: Any) -> Any:
    """The output probes judge: the tensor; the first output of a list/tuple; "logits",
    "output" or the first value of a dict."""
    if isinstance(output, dict):
        for key in ("logits", "out", "output", "predictions"):
            if key in output:
                return primary_output(output[key])
        return primary_output(next(iter(output.values()))) if output else None
    if isinstance(output, (list, tuple)):
        return primary_output(output[0]) if output else None
    return output


def input_shapes(model: Any) -> list[tuple]:
    """The model's declared input shapes ((None, 224, 224, 3), ...); [] when unknown
    (a subclassed model never built)."""
    shapes = []
    try:
        for tensor in model.inputs or []:
            shapes.append(tuple(tensor.shape))
    except Exception:  # noqa: BLE001 - subclassed models raise on .inputs
        shapes = []
    if not shapes:
        build = getattr(model, "_build_shapes_dict", None) or {}
        for value in build.values():
            if isinstance(value, (tuple, list)) and value and all(v is None or isinstance(v, int) for v in value):
                shapes.append(tuple(value))
    return shapes


def input_dtype(model: Any) -> str | None:
    try:
        return str(model.inputs[0].dtype)
    except Exception:  # noqa: BLE001
        return None


def builtin_preprocessing(model: Any) -> list[tuple[str, Any]]:
    """Rescaling/Normalization layers that meet the input before any layer with weights:
    the model normalises its own input (EfficientNet, ConvNeXt, MobileNetV3, EfficientNetV2
    with include_preprocessing, or a user's Rescaling(1/255) first layer)."""
    found = []
    for name, layer in all_layers(model):
        kind = layer_kind(layer)
        if kind in PREPROCESSING_LAYERS:
            found.append((name, layer))
            continue
        if has_own_weights(layer) and not is_container(layer):
            break
    return found


class KerasContext(MemoisedContext):
    """The Keras side of one audit. Probes read; only passes (and the learning-rate probe's
    step) run the model, and each restores the snapshot afterwards."""

    framework = "keras"
    has_forward = True
    scripted = False

    def __init__(self, pipeline: Any, source: str | None = None):
        import keras

        model = pipeline.model
        if not isinstance(model, keras.layers.Layer):
            raise UsageFailure(f"the model is a {type(model).__name__}, not a keras.Model")
        self.keras = keras
        self.backend = keras.config.backend()
        self.pipeline = pipeline
        self.model = model
        self.source = source
        self.notes: list[str] = []
        # what the Pipeline gives, else what model.compile() set; *_source says which
        self.optimizer, self.optimizer_source = _given_or_compiled(pipeline.optimizer, model, "optimizer")
        if self.optimizer is not None and not isinstance(self.optimizer, keras.optimizers.Optimizer):
            raise UsageFailure(f"the optimizer is a {type(self.optimizer).__name__}, not a keras optimizer")
        self.loss, self.loss_source = _given_or_compiled(pipeline.loss, model, "loss")
        self.pretrained = pipeline.pretrained
        self.preprocess = pipeline.preprocess
        if not model.built:
            raise UsageFailure("the Keras model is not built (no weights yet): call it once on an input or build(input_shape) before auditing")
        self.state = KerasState(model, self.optimizer)
        self.raw, self.synthetic, self.sample_is_input = self._sample(pipeline)
        self.labels = to_numpy(pipeline.labels) if pipeline.labels is not None else None
        self.num_classes = pipeline.num_classes
        self._memo: dict[str, Any] = {}

    # -- sample and input ------------------------------------------------------------------
    def _sample(self, pipeline: Any) -> tuple[Any, bool, bool]:
        from auditor.dynamic import samples

        if pipeline.sample is not None:
            return pipeline.sample, False, pipeline.preprocess is None
        shapes = input_shapes(self.model)
        shape = shapes[0] if shapes else None
        image = shape is not None and len(shape) == 4
        size = family_input_size(self.pretrained)
        if image and shape[1] and shape[2] and shape[1] == shape[2]:
            size = int(shape[1])
        channels = int(shape[-1]) if image and shape[-1] else 3
        if pipeline.preprocess is not None or (shape is None and self.pretrained is not None):
            raw = samples.synthetic_images(size=size, channels=channels)
            if pipeline.preprocess is not None:
                self.notes.append(synthetic_note(f"{raw.shape[0]} uint8 images {raw.shape[1]}x{raw.shape[2]} (N, H, W, C)", "preprocess"))
                return raw, True, False
        if shape is None:
            raise UsageFailure("cannot tell the model's input shape (a subclassed model that was never called): pass a sample (--sample FILE.npy or Pipeline(sample=...))")
        if image:
            height, width = int(shape[1] or size), int(shape[2] or size)  # a non-square input: crop a square batch
            images = samples.synthetic_images(size=max(height, width), channels=channels)[:, :height, :width].astype(np.float64)
            if builtin_preprocessing(self.model):
                raw, what = images.astype(np.float32), f"float images {images.shape} (N, H, W, C) in [0, 255] (the model rescales its own input)"
            else:
                raw = reference_images(images, self.pretrained)
                what = f"images {raw.shape} (N, H, W, C) prepared with {prepared_with(self.pretrained)}"
        else:
            dims = tuple(d if d else 32 for d in shape[1:])
            dtype = input_dtype(self.model) or "float32"
            if "int" in dtype:
                raw = np.random.default_rng(0).integers(0, 100, size=(samples.SYNTHETIC_BATCH,) + dims).astype(dtype)
                what = f"integer tokens {raw.shape}"
            else:
                raw = samples.synthetic_tensor_like((samples.SYNTHETIC_BATCH,) + dims)
                what = f"standard-normal features {raw.shape}"
        self.notes.append(synthetic_note(what))
        return raw, True, True

    def raw_copy(self) -> Any:
        """A fresh copy of the raw sample: `preprocess_input` divides float arrays in place,
        and the user's array must stay untouched."""
        raw = self.raw
        if isinstance(raw, np.ndarray):
            return raw.copy()
        if hasattr(raw, "copy"):
            return raw.copy()
        return raw

    def preprocessed(self, preprocess: Callable[[Any], Any] | None = None) -> Any:
        """`preprocess(sample)` as numpy arrays the model takes (floats in the model's dtype)."""
        preprocess = preprocess or self.preprocess
        raw = self.raw_copy()
        if preprocess is None:
            return self._to_model(raw)
        try:
            out = preprocess(raw)
        except Exception as exc:  # noqa: BLE001 - one clear line naming the user's frame
            raise SampleError(f"preprocess failed on the sample of shape {shape_text(raw)} {dtype_text(raw)}: {user_error(exc)}") from exc
        return self._to_model(out)

    def _to_model(self, value: Any) -> Any:
        if isinstance(value, dict):
            return {k: self._to_model(v) for k, v in value.items()}
        if isinstance(value, (tuple, list)) and value and not all(isinstance(v, (int, float)) for v in value):
            return type(value)(self._to_model(v) for v in value)
        array = to_numpy(value) if not isinstance(value, np.ndarray) else value
        if array.dtype.kind not in "biuf":
            raise SampleError(f"the model input has dtype {array.dtype}, not a number type")
        wanted = input_dtype(self.model) or self.keras.config.floatx()
        if array.dtype.kind == "f" and "float" in wanted and array.dtype != np.dtype(wanted):
            array = array.astype(wanted)
        elif array.dtype.kind in "biu" and "float" in wanted:
            array = array.astype(wanted)
        return array

    # -- running the model -----------------------------------------------------------------
    def call(self, inputs: Any, training: bool | None = None) -> Any:
        if training is None:
            return self.model(inputs)
        return self.model(inputs, training=training)

    def run(self, kind: str, *, training: bool | None, hooks: bool = True, stats: bool | None = None, mode: str | None = None, grad: str | None = None) -> ForwardRecord:
        """One pass with `training` (True, False, or None: Keras resolves it as in
        `model(x)`), recording BatchNorm statistics (when `stats`, default: not training),
        the head and every mode-dependent layer's flag; then restores the snapshot.
        `mode`/`grad` are accepted for the PyTorch signature and ignored."""
        inputs = self.inputs()
        recorder = _Recorder(self, stats=(training is not True) if stats is None else stats) if hooks else None
        try:
            try:
                if recorder:
                    recorder.attach()
                raw_output = self.call(inputs, training=training)
            except UsageFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - the sample does not fit: one clear line
                raise SampleError(self._does_not_fit(inputs, exc)) from exc
            finally:
                if recorder:
                    recorder.detach()
            output = primary_output(raw_output)
            output = to_numpy(output) if output is not None else None
            changes = self.state.changes()
            return ForwardRecord(
                kind=kind,
                output=output,
                raw_output=raw_output,
                batchnorm=recorder.batchnorm if recorder else {},
                leaves=recorder.leaves if recorder else [],
                head=recorder.head if recorder else None,
                features=recorder.features() if recorder else None,
                changes=changes,
                modes=recorder.modes if recorder else {},
            )
        finally:
            self.state.restore()

    def eval_pass(self) -> ForwardRecord:
        return self._memoised("eval", lambda: self.run("eval", training=False))

    def inference_pass(self) -> ForwardRecord:
        """`model(x)` as serving code calls it, after moving every random layer's seed, so
        that a random layer still active at inference shows up as a difference from the
        eval pass without paying a third pass."""

        def compute() -> ForwardRecord:
            self.reseed(INFERENCE_SEED)
            return self.run("inference", training=None, hooks=False)

        return self._memoised("inference", compute)

    def train_pass(self) -> ForwardRecord:
        return self._memoised("train", lambda: self.run("train", training=True))

    def reseed(self, seed: int) -> None:
        """Move every seed generator of the model (Dropout's and friends') and the Python,
        numpy (and torch backend) generators to `seed`. Callers restore afterwards."""
        import random

        random.seed(seed)
        np.random.seed(seed % 2**32)
        if self.backend == "torch":
            import torch

            torch.manual_seed(seed)
        for _name, layer in all_layers(self.model):
            for generator in getattr(layer, "_seed_generators", []) or []:
                state = getattr(generator, "state", None)
                if state is None:
                    continue
                value = to_numpy(state)
                value = (np.arange(value.size, dtype=np.int64).reshape(value.shape) + seed % 2**31).astype(value.dtype)
                state.assign(value)

    # -- model structure -------------------------------------------------------------------
    def layers(self) -> list[tuple[str, Any]]:
        """(qualified name, layer) for every layer, pre-order; names joined with "/"."""
        return self._memoised("layers", lambda: all_layers(self.model))

    @property
    def tensors(self) -> dict[str, Any]:
        """Every variable as numpy, by its path (the view `needs = "tensors"` probes read)."""
        return self._memoised("tensors", lambda: {str(v.path): to_numpy(v) for v in self.model.variables})

    def batchnorm_layers(self) -> list[tuple[str, Any]]:
        return [(name, layer) for name, layer in self.layers() if is_batchnorm(layer)]

    def module(self, name: str) -> Any:
        """The layer with this qualified name ("" is the model); a plain layer name works
        when it is unique."""
        if not name or name == "<model>":
            return self.model
        table = dict(self.layers())
        if name in table:
            return table[name]
        matches = [layer for qualified, layer in self.layers() if qualified.rpartition("/")[2] == name]
        if len(matches) == 1:
            return matches[0]
        raise KeyError(name)

    def optimizer_params(self) -> set[int]:
        """ids of the variables the optimizer would update: the model's trainable ones."""
        if self.optimizer is None:
            return set()
        return {id(v) for v in self.model.trainable_variables}

    def _does_not_fit(self, inputs: Any, exc: BaseException) -> str:
        shapes = input_shapes(self.model)
        where = f"; the model expects {', '.join(str(s) for s in shapes)}" if shapes else ""
        return f"the model cannot run on the sample: input {shape_text(inputs)} {dtype_text(inputs)}{where}: {user_error(exc)}"


def _given_or_compiled(given: Any, model: Any, attribute: str) -> tuple[Any, str | None]:
    """(value, where it came from): the Pipeline's, else the compiled model's, else None."""
    if given is not None:
        return given, "pipeline"
    compiled = getattr(model, attribute, None) if getattr(model, "compiled", False) else None
    return compiled, "model.compile()" if compiled is not None else None


class LayerPatches:
    """Instance-attribute wrappers of layers' methods (`call`, by default) for one pass.

    Keras has no forward hooks: an instance attribute shadows the class's method, and
    `Layer.__call__` still does all its work around it. `restore()`, or leaving the `with`
    block, removes every wrapper, newest first, and puts back an instance attribute the user
    had set there. Every pass that observes layers goes through this one mechanism."""

    def __init__(self) -> None:
        self.saved: list[tuple[Any, str, bool, Any]] = []

    def patch(self, layer: Any, function: Callable, attr: str = "call") -> None:
        self.saved.append((layer, attr, attr in layer.__dict__, layer.__dict__.get(attr)))
        layer.__dict__[attr] = function

    def restore(self) -> None:
        for layer, attr, had, previous in reversed(self.saved):
            if had:
                layer.__dict__[attr] = previous
            else:
                layer.__dict__.pop(attr, None)
        self.saved.clear()

    def __enter__(self) -> "LayerPatches":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.restore()


class _Recorder:
    """Wraps `call` of the layers a pass must observe; `detach()` removes every wrapper."""

    def __init__(self, ctx: KerasContext, stats: bool = True):
        self.ctx = ctx
        self.stats = stats
        self.patches = LayerPatches()
        self.batchnorm: dict[str, BatchNormObservation] = {}
        self.leaves: list[str] = []
        self.modes: dict[str, bool] = {}
        self.head: str | None = None
        self._head_input: Any = None

    def attach(self) -> None:
        for name, layer in self.ctx.layers():
            kind = layer_kind(layer)
            if is_batchnorm(layer):
                self._wrap(layer, self._batchnorm(name, layer))
            elif has_own_weights(layer) and not is_container(layer):
                self._wrap(layer, self._leaf(name, layer))
            elif kind in MODE_DEPENDENT:
                self._wrap(layer, self._mode(name, layer))

    def detach(self) -> None:
        self.patches.restore()

    def features(self) -> Any:
        x = self._head_input
        if x is None:
            return None
        try:
            array = to_numpy(x)
        except Exception:  # noqa: BLE001 - a non-tensor input (a dict of tensors)
            return None
        if array.ndim == 0:
            return None
        return array.reshape(array.shape[0], -1) if array.ndim > 1 else array.reshape(1, -1)

    def _wrap(self, layer: Any, observe: Callable[[Any, Any], None]) -> None:
        original = layer.call

        def call(*args: Any, **kwargs: Any) -> Any:
            try:
                observe(args[0] if args else next(iter(kwargs.values()), None), kwargs.get("training"))
            except Exception:  # noqa: BLE001 - observing must never change what the model computes
                pass
            return original(*args, **kwargs)

        self.patches.patch(layer, call)

    def _mode(self, name: str, layer: Any) -> Callable:
        def observe(x: Any, training: Any) -> None:
            self.modes.setdefault(name, bool(training))  # BatchNormalization, whose flag also needs trainable, is recorded by _batchnorm

        return observe

    def _leaf(self, name: str, layer: Any) -> Callable:
        def observe(x: Any, training: Any) -> None:
            self.leaves.append(name)
            self.head = name
            self._head_input = x

        return observe

    def _batchnorm(self, name: str, layer: Any) -> Callable:
        def observe(x: Any, training: Any) -> None:
            if name in self.batchnorm:
                return
            effective = bool(training) and bool(layer.trainable)
            self.modes[name] = effective
            shape = tuple(x.shape)
            if len(shape) < 2:
                return
            axes = getattr(layer, "axis", -1)
            axes = [axes] if isinstance(axes, int) else list(axes)
            axes = [a % len(shape) for a in axes]
            channels = int(np.prod([shape[a] for a in axes]))
            count = int(np.prod(shape)) // max(channels, 1)
            if not self.stats:
                self.batchnorm[name] = BatchNormObservation(name, None, None, count, effective, True)
                return
            ops = self.ctx.keras.ops
            reduce = [a for a in range(len(shape)) if a not in axes]
            xf = ops.cast(x, "float32")
            mean, var = ops.moments(xf, axes=reduce)
            self.batchnorm[name] = BatchNormObservation(name, to_numpy(mean).astype(np.float64).reshape(-1), to_numpy(var).astype(np.float64).reshape(-1), count, effective, True)

        return observe



