"""Shared measurements of INF101, INF102, DET101 and HED104, for PyTorch and Keras.

Imported inside `probe`. Nothing framework-specific is imported at module level: the PyTorch
helpers import torch inside their functions and the Keras helpers only use keras (through the
context), so auditing a Keras pipeline under the TensorFlow backend never imports torch.

What the rules decide is written once, on plain numpy values and on call traces of the same
shape for both frameworks; what differs per framework sits behind the small functions below,
which dispatch on `ctx.framework`:

- `to_array(output)`: a pass's primary output as numpy; `outputs_equal` (bit for bit),
  `max_abs_diff`, `nonfinite_counts` on those arrays.
- `traced(ctx, kind, seed=, training=)`: one pass with a call tracer attached. PyTorch: forward
  pre-hooks and hooks on every module, the model in eval mode. Keras (no hooks): each layer's
  `call` is wrapped by an instance attribute for this one pass, as the context's recorder
  does, and the wrappers are always removed in `finally`; `training` is the flag the model is
  called with (False: `model(x, training=False)`, what `predict()` runs; None: `model(x)`).
  The tracer keeps, per call in completion order (post-order: a child finishes before its
  parent), a cheap fingerprint of the first input and the primary output instead of the
  activations themselves, the enclosing call that was running, and whether values are
  finite; the Keras tracer also wraps the root model's `call` (the root is a call like any
  other, as in the PyTorch trace) and keeps the `training` value each layer's `call`
  received, where that value came from (explicit argument, the call context, the `call()`
  default) and which layer put a `True` into the context, and whether the layer drew random
  numbers (its seed generators moved) or wrote its own non-trainable variables.
- `first_divergence` (two traces: the first call whose output differs while its input does
  not) and `first_nonfinite` (one trace), both framework-neutral.
- `module_order`, `is_batchnorm`, `mode_dependent`, `own_nonfinite`, `seed_state_names`,
  `random_draws`, `training_reached` (Keras: which layers run their training path under an
  inference call).
"""

from __future__ import annotations

import sys
from typing import Any

import numpy as np

from auditor.dynamic.context_base import output_array as to_array  # noqa: F401 - the probes' name for it

ROOT = "<model>"
#: words naming a module and its compute method per framework (in localisation texts)
_WORDS = {"torch": ("module", "forward", "submodules"), "keras": ("layer", "call", "sublayers")}
#: Keras calls as inference code makes them, named in evidence and messages
EVAL_CALL = "model(x, training=False)"
PLAIN_CALL = "model(x)"


def display(name: str | None) -> str:
    return name if name else ROOT


# --------------------------------------------------------------------------- numpy values
def _bits(array: np.ndarray) -> np.ndarray:
    array = np.ascontiguousarray(array)
    if array.dtype == np.bool_:
        return array.view(np.uint8)
    return array.view({1: np.uint8, 2: np.uint16, 4: np.uint32, 8: np.uint64, 16: np.uint64}.get(array.dtype.itemsize, np.uint8))


def outputs_equal(a: np.ndarray | None, b: np.ndarray | None) -> bool:
    """Bit for bit (NaN equals the same NaN)."""
    if a is None or b is None:
        return a is b
    return a.shape == b.shape and a.dtype == b.dtype and bool(np.array_equal(_bits(a), _bits(b)))


def max_abs_diff(a: Any, b: Any) -> tuple[float, float]:
    """(largest absolute difference, that relative to the largest finite |b| value); NaN
    when shapes differ. NaN/inf positions that differ count as infinitely different."""
    x, y = to_array(a), to_array(b)
    if x is None or y is None or x.shape != y.shape:
        return float("nan"), float("nan")
    same = _bits(x) == _bits(y) if x.dtype == y.dtype else np.zeros(x.shape, dtype=bool)
    xd, yd = x.astype(np.float64), y.astype(np.float64)
    with np.errstate(invalid="ignore", over="ignore"):
        diff = np.abs(xd - yd)
    diff = np.where(same, 0.0, np.nan_to_num(diff, nan=np.inf))
    m = float(diff.max()) if diff.size else 0.0
    finite = np.isfinite(yd)
    scale = float(np.abs(yd[finite]).max()) if finite.any() else 0.0
    return m, (m / scale if scale > 0 else float("inf") if m > 0 else 0.0)


def nonfinite_counts(output: np.ndarray | None) -> tuple[int, int, int] | None:
    """(non-finite values, of which NaN, numel) of a float or complex output; None otherwise."""
    if output is None or output.dtype.kind not in "fc":
        return None
    bad = int((~np.isfinite(output)).sum())
    return bad, int(np.isnan(output).sum()), int(output.size)


def _fingerprint(array: np.ndarray, weights: dict | None) -> tuple:
    """(shape, dtype, position-weighted hash of the bits, non-finite count): equal
    fingerprints mean equal arrays for every practical purpose (a permutation or one flipped
    bit changes the hash); no copy of the activation is kept."""
    bits = _bits(array).reshape(-1).astype(np.int64)
    w = weights.get(bits.size) if weights is not None else None
    if w is None:
        w = np.arange(bits.size, dtype=np.int64) % 1_000_003 + 1
        if weights is not None:
            weights[bits.size] = w
    digest = int((bits * w).sum())  # int64 wraps around: still a deterministic digest
    nonfinite = int((~np.isfinite(array)).sum()) if array.dtype.kind in "fc" else 0
    return (tuple(array.shape), str(array.dtype), digest, nonfinite)


# --------------------------------------------------------------------------- call traces
class Call:
    """One module/layer call of a traced pass. PyTorch fills the first five fields; Keras
    also `training` (the value its `call` received), `source` (how Keras resolved it:
    "explicit" argument, inherited from the "context", or the `call()` "default"; None when
    unknown), `origin` (the layer whose call put the `True` it runs with into the call
    context), `ancestors` (enclosing calls, outermost first), `drew` (its own seed
    generators moved) and `wrote` (its own non-trainable variables the pass changed)."""

    __slots__ = ("name", "kind", "parent", "inp", "out", "training", "source", "origin", "ancestors", "drew", "wrote")

    def __init__(self, name: str, kind: str, parent: str | None, inp: tuple | None, out: tuple | None, training: Any = None, source: str | None = None, origin: str | None = None, ancestors: tuple = (), drew: bool = False, wrote: tuple = ()):
        self.name, self.kind, self.parent, self.inp, self.out = name, kind, parent, inp, out
        self.training, self.source, self.origin, self.ancestors, self.drew, self.wrote = training, source, origin, ancestors, drew, wrote


def traced(ctx: Any, kind: str, *, seed: int | None = None, training: bool | None = False, grad: str = "no_grad", share: bool = False) -> tuple[Any, Any]:
    """One inference pass with a call tracer attached; returns (record, tracer or None).
    PyTorch: eval mode under `grad` (`training` is not used; TorchScript takes no hooks:
    tracer None). Keras: `model(x, training=training)` eagerly. `seed`: every random
    generator the pass can draw from is set to it first (the run restores them afterwards).
    `share`: memoise the pass per (seed, training) so probes share it. Restores."""
    if share:
        return ctx.memo(f"inference-trace:{seed}:{training}:{grad}", lambda: traced(ctx, kind, seed=seed, training=training, grad=grad))
    if ctx.framework == "keras":
        return _keras_traced(ctx, kind, seed, training)
    return _torch_traced(ctx, kind, seed, grad)


def first_divergence(a: Any, b: Any) -> tuple[str | None, str]:
    """(target, how) of the first call whose output differs between two traced passes. The
    call's own module/layer when its input is identical; the enclosing one when the input
    already differs (the difference came from code in the parent's forward/call between its
    submodules/sublayers)."""
    if a is None or b is None:
        return None, "not localised (TorchScript modules take no Python hooks)"
    _, method, children = _WORDS.get(getattr(a, "framework", "torch"), _WORDS["torch"])
    for x, y in zip(a.calls, b.calls):
        if x.name != y.name:
            return display(x.parent or ""), f"control flow differs: {display(x.name)} vs {display(y.name)} were called"
        if x.out == y.out:
            continue
        if x.inp == y.inp:
            return display(x.name), f"{display(x.name)} ({x.kind}) gives different outputs for the same input"
        parent = x.parent if x.parent is not None else ""
        return display(parent), f"the input of {display(x.name)} ({x.kind}) already differs: the difference comes from code in the {method} of {display(parent)} outside its {children}"
    if len(a.calls) != len(b.calls):
        return ROOT, f"the passes called different numbers of {_WORDS.get(getattr(a, 'framework', 'torch'))[0]}s"
    return None, f"no {_WORDS.get(getattr(a, 'framework', 'torch'))[0]} output differs"


def first_nonfinite(tracer: Any) -> tuple[str | None, str, bool]:
    """(target, how, input_nonfinite) for the first call whose output holds NaN/inf."""
    if tracer is None:
        return None, "not localised (TorchScript modules take no Python hooks)", False
    _, method, children = _WORDS.get(getattr(tracer, "framework", "torch"), _WORDS["torch"])
    if tracer.model_input is not None and tracer.model_input[3] > 0:
        return None, "the model input already holds non-finite values", True
    for call in tracer.calls:
        if call.out is None or call.out[3] == 0:
            continue
        if call.inp is None or call.inp[3] == 0:
            return display(call.name), f"{display(call.name)} ({call.kind}) turns a finite input into non-finite values", False
        parent = call.parent if call.parent is not None else ""
        return display(parent), f"the input of {display(call.name)} ({call.kind}) is already non-finite: produced by code in the {method} of {display(parent)} outside its {children}", False
    return None, f"no {_WORDS.get(getattr(tracer, 'framework', 'torch'))[0]} output is non-finite", False


# --------------------------------------------------------------------------- structure
def module_order(ctx: Any) -> list[str]:
    """Module/layer names in registration (pre-)order, the root "" first."""
    if ctx.framework == "keras":
        return [""] + [name for name, _ in ctx.layers()]
    return [name for name, _ in ctx.model.named_modules(remove_duplicate=False)]


def lookup(ctx: Any, name: str) -> Any:
    """The module/layer by qualified name, or None."""
    try:
        return ctx.module(name)
    except (AttributeError, KeyError):
        return None


def is_batchnorm(ctx: Any, module: Any) -> bool:
    if module is None:
        return False
    if ctx.framework == "keras":
        from auditor.dynamic.keras_context import is_batchnorm as keras_batchnorm

        return keras_batchnorm(module)
    import torch

    from auditor.dynamic.torch_context import is_batchnorm as torch_batchnorm

    return isinstance(module, torch.nn.Module) and torch_batchnorm(module)


def own_nonfinite(ctx: Any, module: Any) -> int:
    """Non-finite values in the module's/layer's own floating parameters and buffers."""
    if module is None:
        return 0
    if ctx.framework == "keras":
        from auditor.dynamic.keras_state import to_numpy

        total = 0
        for variable in _keras_own_variables(module):
            value = to_numpy(variable)
            if value.dtype.kind in "fc":
                total += int((~np.isfinite(value)).sum())
        return total
    import torch

    return sum(int((~torch.isfinite(t)).sum()) for t in list(module.parameters(recurse=False)) + list(module.buffers(recurse=False)) if t.is_floating_point())


def class_name(module: Any) -> str:
    """The Python class name, also for TorchScript modules (`original_name`)."""
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


_DROPOUT = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "DropPath", "StochasticDepth")


def mode_dependent(module: Any, framework: str = "torch") -> str | None:
    """Why this module/layer behaves differently in training and in inference, or None."""
    if framework == "keras":
        return _keras_mode_dependent(module)
    import torch

    name = class_name(module)
    if isinstance(module, torch.nn.modules.dropout._DropoutNd) or name in _DROPOUT:
        if float(getattr(module, "p", getattr(module, "drop_prob", 1.0)) or 0.0) > 0:
            return "dropout"
        return None
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or (name.startswith(("BatchNorm", "SyncBatchNorm")) and hasattr(module, "running_mean")):
        return "batchnorm"
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        return "instancenorm"
    if isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return "rnn-dropout"
    return None


def inference_seed(ctx: Any) -> int:
    """The seed of the context's inference pass (any fixed value unlike the user's state)."""
    if ctx.framework == "keras":
        from auditor.dynamic.keras_context import INFERENCE_SEED
    else:
        from auditor.dynamic.torch_context import INFERENCE_SEED
    return INFERENCE_SEED


# --------------------------------------------------------------------------- random state
def seed_state_names(ctx: Any) -> dict[str, str]:
    """Change name (as in `TensorChange.name`) -> owning layer ("" for Keras's global seed
    generator, which `keras.random.*(seed=None)` draws from) of every seed-generator state.
    Empty for PyTorch: its generators are not model state."""
    if ctx.framework != "keras":
        return {}

    def compute() -> dict[str, str]:
        ids = {id(v) for v in _keras_seed_states(ctx)}
        out = {}
        for variable, _saved, _trainable, _kind, owner in ctx.state.variables:
            if id(variable) in ids:
                path = str(getattr(variable, "path", None) or getattr(variable, "name", "variable"))
                out[f"{owner}/{path.rpartition('/')[2]}" if owner else path] = owner
        return out

    return ctx.memo("seed-state-names", compute)


def random_draws(ctx: Any, eval_record: Any, inference_record: Any) -> list[str]:
    """Seed-generator states that the inference calls moved (Keras): any in the eval pass,
    and the global generator in the inference pass (its other generators were reseeded on
    purpose). A draw from a generator the two passes share gives equal outputs, so only the
    state shows it. [] for PyTorch."""
    seeds = seed_state_names(ctx)
    if not seeds:
        return []
    drawn = [c.name for c in eval_record.changes if c.name in seeds]
    drawn += [c.name for c in inference_record.changes if c.name in seeds and seeds[c.name] == "" and c.name not in drawn]
    return drawn


# --------------------------------------------------------------------------- PyTorch
def _torch_fingerprint(value: Any, weights: dict | None = None) -> tuple | None:
    import torch

    from auditor.dynamic.torch_context import primary_output
    from auditor.dynamic.torch_state import _bits as torch_bits

    t = value if isinstance(value, torch.Tensor) else primary_output(value)
    if not isinstance(t, torch.Tensor):
        return None
    t = t.detach()
    bits = torch_bits(t).reshape(-1).to(torch.int64)
    key = (bits.numel(), str(bits.device))
    w = weights.get(key) if weights is not None else None
    if w is None:
        w = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 1_000_003 + 1
        if weights is not None:
            weights[key] = w
    digest = int((bits * w).sum())
    nonfinite = int((~torch.isfinite(t)).sum()) if t.is_floating_point() or t.is_complex() else 0
    return (tuple(t.shape), str(t.dtype), digest, nonfinite)



class CallTracer:
    """PyTorch: hooks for one pass; `calls` in completion order. Use as a context manager
    around `ctx.run(..., hooks=False)` (the context's own recorder is not needed)."""

    framework = "torch"

    def __init__(self, model: Any):
        self.model = model
        self.calls: list[Call] = []
        self.stack: list[tuple[str, tuple | None]] = []
        self.handles: list[Any] = []
        self.model_input: tuple | None = None
        self.weights: dict = {}  # position weights per (numel, device), shared by all calls

    def __enter__(self) -> "CallTracer":
        for name, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name, type(module).__name__)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.weights.clear()

    def _pre(self, name: str):
        def hook(module, args):
            inp = _torch_fingerprint(args[0], self.weights) if args else None
            if not self.stack and self.model_input is None:
                self.model_input = inp
            self.stack.append((name, inp))

        return hook

    def _post(self, name: str, kind: str):
        def hook(module, args, output):
            inp = None
            if self.stack and self.stack[-1][0] == name:
                inp = self.stack.pop()[1]
            parent = self.stack[-1][0] if self.stack else None
            self.calls.append(Call(name, kind, parent, inp, _torch_fingerprint(output, self.weights)))

        return hook


def _torch_traced(ctx: Any, kind: str, seed: int | None, grad: str) -> tuple[Any, Any]:
    from auditor.dynamic.torch_context import reseed

    if seed is not None:
        reseed(seed)
    tracer = None if getattr(ctx, "scripted", False) else CallTracer(ctx.model)
    try:
        if tracer is not None:
            with tracer:
                record = ctx.run(kind, mode="eval", grad=grad, hooks=False)
        else:
            record = ctx.run(kind, mode="eval", grad=grad, hooks=False)
    finally:
        ctx.restore()
    return record, tracer


# --------------------------------------------------------------------------- Keras
#: Keras layer classes (and their subclasses) with a training path: dropout and noise
#: (random only when training), random augmentation, batch normalisation
_KERAS_RANDOM = ("Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise", "AlphaDropout")
#: augmentation layers (`keras.layers.Random*` and these) are recognised by class name in
#: Keras's own preprocessing package
_KERAS_AUGMENT = ("RandAugment", "AugMix", "CutMix", "MixUp", "Solarization")


def _keras_bases(layer: Any) -> list[str]:
    return [klass.__name__ for klass in type(layer).__mro__]


def _keras_mode_dependent(layer: Any) -> str | None:
    from auditor.dynamic.keras_context import is_batchnorm as keras_batchnorm

    bases = _keras_bases(layer)
    if any(b in _KERAS_RANDOM for b in bases):
        rate = getattr(layer, "rate", getattr(layer, "stddev", 1.0))
        try:
            active = float(rate) > 0
        except (TypeError, ValueError):
            active = True
        if not active:
            return None
        return "noise" if any(b in ("GaussianNoise",) for b in bases) else "dropout"
    if any(klass.__module__.startswith("keras.") and (klass.__name__.startswith("Random") or klass.__name__ in _KERAS_AUGMENT) for klass in type(layer).__mro__):
        return "augmentation"
    if keras_batchnorm(layer):
        return "batchnorm" if layer.trainable else None  # a frozen BatchNormalization always infers
    return None


def _keras_seed_states(ctx: Any) -> list[Any]:
    states = []
    for _name, layer in ctx.layers():
        for generator in getattr(layer, "_seed_generators", None) or []:
            if getattr(generator, "state", None) is not None:
                states.append(generator.state)
    generator = _keras_global_generator()
    if generator is not None:
        states.append(generator.state)
    return states


def _keras_global_generator() -> Any:
    try:
        from keras.src.backend.common import global_state

        generator = global_state.get_global_attribute("global_seed_generator")
    except Exception:  # noqa: BLE001 - private API moved: no global generator known
        return None
    return generator if getattr(generator, "state", None) is not None else None


def _keras_own_variables(layer: Any) -> list[Any]:
    return list(getattr(layer, "_trainable_variables", None) or []) + list(getattr(layer, "_non_trainable_variables", None) or [])


def _keras_value(variable: Any) -> bytes:
    from auditor.dynamic.keras_state import to_numpy

    return np.ascontiguousarray(to_numpy(variable)).tobytes()


class KerasTracer:
    """Keras: wraps `call` of every layer for one pass (an instance attribute, as the
    context's recorder does; `Layer.__call__` still resolves the training flag and passes it
    on), and, where Keras has it (3.x `Layer._resolve_and_populate_arg`), the method that
    resolves `training`, to see whether the value was passed explicitly, inherited from the
    call context or taken from the `call()` default. `__exit__` removes every wrapper.
    `calls` in completion order."""

    framework = "keras"

    def __init__(self, ctx: Any):
        self.ctx = ctx
        self.calls: list[Call] = []
        self.stack: list[tuple[str, Any]] = []
        from auditor.dynamic.keras_context import LayerPatches

        self.patches = LayerPatches()
        self.model_input: tuple | None = None
        self.weights: dict = {}
        self.global_generator = _keras_global_generator()
        #: did Keras's global seed generator (keras.random.* with seed=None) move during the
        #: model call (read around the root call: the context restores it before `__exit__`)
        self.global_drew = False
        #: the layer whose resolution last put True into the call context (Keras keeps the
        #: last resolved value there for every layer called after it in the same model call)
        self.origin: str | None = None
        self._resolved: dict[int, tuple[str, str | None]] = {}
        #: under the torch backend an unseeded Dropout draws from torch's generator, not from
        #: its seed generator: for random layers, that generator's state is compared too
        self._torch = sys.modules.get("torch") if getattr(ctx, "backend", None) == "torch" else None

    def __enter__(self) -> "KerasTracer":
        from auditor.dynamic.keras_context import primary_output

        try:
            self.model_input = self._fingerprint(primary_output(self.ctx.inputs()))
            for name, layer in [("", self.ctx.model)] + list(self.ctx.layers()):
                self._wrap(name, layer)
                self._wrap_resolution(name, layer)
        except BaseException:
            self.__exit__()
            raise
        return self

    def __exit__(self, *exc: Any) -> None:
        self.patches.restore()
        self.weights.clear()
        self._resolved.clear()

    def written(self, record: Any, seeds: dict) -> None:
        """Mark each call whose layer's own non-trainable variables the pass changed (read
        once from the record's changes instead of around every call)."""
        owners: dict[str, list[str]] = {}
        for change in record.changes:
            if change.kind == "buffer" and change.name not in seeds and change.module:
                owners.setdefault(change.module, []).append(change.name)
        for call in self.calls:
            if call.name in owners:
                call.wrote = tuple(owners[call.name])

    def _fingerprint(self, value: Any) -> tuple | None:
        from auditor.dynamic.keras_context import primary_output
        from auditor.dynamic.keras_state import to_numpy

        value = primary_output(value)
        if value is None:
            return None
        try:
            array = to_numpy(value)
        except Exception:  # noqa: BLE001 - not a tensor (a Python value, a ragged structure)
            return None
        if array.dtype.kind not in "biufc":
            return None
        return _fingerprint(array, self.weights)

    def _state(self, layer: Any) -> tuple:
        """The layer's own seed-generator states as bytes (few layers have any), and for a
        random layer under the torch backend the state of torch's generators."""
        seeds = tuple(_keras_value(g.state) for g in getattr(layer, "_seed_generators", None) or [] if getattr(g, "state", None) is not None)
        if seeds and self._torch is not None:
            torch = self._torch
            seeds += (torch.get_rng_state().numpy().tobytes(),)
            if torch.cuda.is_available() and torch.cuda.is_initialized():
                seeds += tuple(state.numpy().tobytes() for state in torch.cuda.get_rng_state_all())
        return seeds

    def _wrap_resolution(self, name: str, layer: Any) -> None:
        original = getattr(layer, "_resolve_and_populate_arg", None)
        if original is None:  # a Keras 3 release that resolves inline: provenance unknown
            return
        tracer = self

        def resolve(arg_name: str, call_spec: Any, call_context: Any, kwargs: Any) -> Any:
            if arg_name != "training":
                return original(arg_name, call_spec, call_context, kwargs)
            explicit = before = None
            try:
                explicit = arg_name in call_spec.user_arguments_dict
                before = call_context.get_value(arg_name)
            except Exception:  # noqa: BLE001
                pass
            result = original(arg_name, call_spec, call_context, kwargs)
            try:
                if explicit is not None:
                    value = call_context.get_value(arg_name)
                    source = "explicit" if explicit else "context" if before is not None else "default"
                    # an explicit value equal to the caller's is the caller's flag passed on
                    # (training=training, or a functional graph handing its flag to its nodes)
                    caller_true = bool(tracer.stack) and tracer.stack[-1][1] is True
                    if value is not True:
                        tracer.origin = None
                    elif tracer.origin is None or not (source == "context" or caller_true):
                        tracer.origin = name
                    tracer._resolved[id(layer)] = (source, tracer.origin if value is True else None)
            except Exception:  # noqa: BLE001
                pass
            return result

        self.patches.patch(layer, resolve, "_resolve_and_populate_arg")

    def _wrap(self, name: str, layer: Any) -> None:
        original = layer.call
        kind = type(layer).__name__
        tracer = self

        def call(*args: Any, **kwargs: Any) -> Any:
            inp = before = None
            training = kwargs.get("training")
            source, origin = tracer._resolved.pop(id(layer), (None, None))
            try:
                inp = tracer._fingerprint(args[0] if args else next(iter(kwargs.values()), None))
                before = tracer._state(layer)
            except Exception:  # noqa: BLE001 - observing must never change what the model computes
                pass
            ancestors = tuple(frame for frame, _ in tracer.stack)
            parent = ancestors[-1] if ancestors else None
            glob = None
            if not name and tracer.global_generator is not None:  # the root call
                try:
                    glob = _keras_value(tracer.global_generator.state)
                except Exception:  # noqa: BLE001
                    pass
            if source is None and training is True:  # provenance unknown: the outermost
                origin = name  # enclosing call through which True arrived
                for frame, flag in reversed(tracer.stack):
                    if flag is not True:
                        break
                    origin = frame
            tracer.stack.append((name, training))
            try:
                output = original(*args, **kwargs)
            finally:
                tracer.stack.pop()
            out, drew = None, False
            try:
                out = tracer._fingerprint(output)
                drew = bool(before) and tracer._state(layer) != before
                if glob is not None:
                    tracer.global_drew = tracer.global_drew or _keras_value(tracer.global_generator.state) != glob
            except Exception:  # noqa: BLE001
                pass
            tracer.calls.append(Call(name, kind, parent, inp, out, training, source, origin, ancestors, drew))
            return output

        self.patches.patch(layer, call)


def _keras_reseed_global(seed: int) -> None:
    generator = _keras_global_generator()
    if generator is None:
        return
    from auditor.dynamic.keras_state import to_numpy

    value = to_numpy(generator.state)
    value = (np.arange(value.size, dtype=np.int64).reshape(value.shape) + seed % 2**31).astype(value.dtype)
    generator.state.assign(value)


def _keras_traced(ctx: Any, kind: str, seed: int | None, training: bool | None) -> tuple[Any, Any]:
    try:
        if seed is not None:
            ctx.reseed(seed)
            _keras_reseed_global(seed)
        tracer = KerasTracer(ctx)
        with tracer:
            record = ctx.run(kind, training=training, hooks=False)
        tracer.written(record, seed_state_names(ctx))
    finally:
        ctx.restore()
    return record, tracer


class Reached:
    """Keras: one place where inference code reaches training behaviour. `target` is the
    outermost layer through which `training=True` arrived (the one its caller called with
    it), or the layer itself when it runs its training path without being asked to, or
    defaults to it. `inherited`: layers that got `training=True` only because this layer's
    default set it for the rest of the call (Keras keeps the first resolved value in the
    call context and hands it to every layer called after it)."""

    __slots__ = ("target", "kind", "caller", "how", "calls", "layers", "inherited")

    def __init__(self, target: str, kind: str, caller: str, how: str):
        self.target, self.kind, self.caller, self.how = target, kind, caller, how
        self.calls: list[str] = []
        self.layers: dict[str, str] = {}  # mode-dependent layer -> why (dropout, batchnorm, ...)
        self.inherited: list[str] = []


def training_reached(ctx: Any, tracer: Any, call: str) -> list[Reached]:
    """Keras: from one traced inference pass (`call` names it), the layers that ran their
    training path, grouped by where the training behaviour entered. A layer counts when it
    has a training path (dropout, noise, random augmentation, trainable BatchNormalization,
    or any layer whose `call` takes `training` and owns seed generators or non-trainable
    variables) and it drew random numbers, wrote its non-trainable variables (moving
    statistics), or received `training=True` (dropout, noise, BatchNormalization). The
    group is the layer whose resolution put that `True` into the call context: one its
    caller passed `training=True` ("received"), or whose `call()` defaults to it
    ("default"); a layer that runs its training path with the flag False/None is its own
    group ("ignored")."""
    layers = dict(ctx.layers())
    found: dict[str, Reached] = {}
    order: list[str] = []
    # model(x): the first layer whose call() default put True into the context. Keras keeps
    # it for the layers called after it, and a Sequential/functional graph built after it
    # even records training=True in their nodes: their True is the leaker's.
    leaker: str | None = None
    for c in tracer.calls:
        layer = layers.get(c.name)
        if layer is None:
            continue
        if leaker is None and call == PLAIN_CALL and c.training is True and c.origin == c.name and _defaults_to_training(layer):
            leaker = c.name
        why = _keras_mode_dependent(layer)
        custom = why is None and bool(getattr(layer, "_call_has_training_arg", False)) and bool(getattr(layer, "_seed_generators", None) or getattr(layer, "_non_trainable_variables", None))
        if not ((why is not None or custom) and (c.drew or c.wrote or (why is not None and c.training is True))):
            continue
        why = why or ("random" if c.drew else "stateful")
        target, how = c.name, "ignored"
        if c.training is True and c.origin:
            target = c.origin
            if leaker is not None and target == c.name and leaker != c.name and not _defaults_to_training(layer):
                target = leaker
            how = "default" if call == PLAIN_CALL and _defaults_to_training(layers.get(target)) else "received"
        reached = found.get(target)
        if reached is None:
            entry_call = next((x for x in tracer.calls if x.name == target), c)
            entry_layer = layers.get(target)
            reached = found[target] = Reached(target, type(entry_layer).__name__ if entry_layer is not None else c.kind, display(entry_call.parent or ""), how)
            reached.calls.append(call)
            order.append(target)
        reached.layers.setdefault(c.name, why)
        if target != c.name and target not in c.ancestors and c.name not in reached.inherited:
            reached.inherited.append(c.name)
    return [found[t] for t in order]


def _defaults_to_training(layer: Any) -> bool:
    """Does the layer's `call` default to `training=True` (used when nothing passes a flag)?"""
    import inspect

    try:
        parameter = inspect.signature(type(layer).call).parameters.get("training")
    except (TypeError, ValueError):
        return False
    return parameter is not None and parameter.default is True
