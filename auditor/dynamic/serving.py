"""Serving parity: save the audited model in the format it is served from, load it back the
way a server does, and run the copy on the sample. Used by the LOD1xx probes
(`rules/_serving_probe.py` decides; this module only measures).

Formats (one round trip per model, so one extra forward pass):

| model | saved with | loaded with |
| --- | --- | --- |
| `torch.nn.Module` | `torch.save(model.state_dict(), path)` | `torch.load(path, weights_only=True)`, then `load_state_dict(strict=True)` into a copy whose saved tensors are NaN until loaded and whose unsaved state is what a fresh instance of each owning class has (a server rebuilds the class) |
| TorchScript (`ScriptModule`) | `torch.jit.save` | `torch.jit.load`, `.eval()` |
| `torch.export` program (`.pt2`) | not round-tripped: it was loaded from the archive it is served from; its graph is read by LOD104 | |
| `keras.Model` | `model.save("model.keras")` | `keras.saving.load_model(path, safe_mode=True, compile=False)`, then, if it fails for want of a custom class, again with `custom_objects` holding the model's own classes |

Why not `torch.jit.script`/`torch.export` for every live module: they are separate serving
formats with their own failure modes (unsupported Python, data-dependent control flow) that
are not bugs of the model, and on a ResNet-50 they cost 4 (TorchScript) to 25 (export,
first call included) forward passes; `torch.jit.script` is deprecated since PyTorch 2.10.
A module that is already a TorchScript or export artefact is checked in its own format.

Nothing is written outside one `tempfile.TemporaryDirectory`, which is removed when the
round trip ends, also on an exception or a timeout (`scratch_dir`); while it exists it is
also `tempfile.tempdir`, so what a framework writes through `tempfile` (Keras extracts large
weights next to the archive, or assets) lands there too. The user's model is only read:
saving reads it, and everything that is loaded, rebuilt or run is a separate copy.
"""

from __future__ import annotations

import ast
import contextlib
import copy
import inspect
import io
import math
import os
import re
import tempfile
import time
import warnings
from dataclasses import dataclass, field
from typing import Any, Iterator

import numpy as np

ROOT = "<model>"
#: constructor arguments never passed from an attribute when rebuilding a module: they load weights
_LOADS_WEIGHTS = re.compile(r"pretrain|checkpoint|ckpt|weights?_?(path|file|url)|^weights$|url|download|hub", re.I)
#: class-name prefixes of packages whose classes Keras deserialises by itself
_KERAS_PACKAGES = ("keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp")
#: constructor parameters of every Keras layer (never a custom layer's own argument)
_KERAS_BASE_ARGS = {"name", "dtype", "trainable", "autocast", "input_shape", "input_dim", "batch_size", "batch_input_shape", "input_dtype", "dynamic", "activity_regularizer", "kwargs", "args"}
_MISSING = object()
_ANSI = re.compile(r"\x1b\[[0-9;]*m")


# --------------------------------------------------------------------------- results
@dataclass
class Failure:
    """A step of the round trip that raised."""

    stage: str  # "save" | "load" | "run"
    target: str  # module/layer (qualified name) the error points at, or ROOT
    error: str  # one line: "TypeError: ..."
    kind: str = "error"  # "error" | "unregistered" | "safe_mode" | "weights_only" | "lost"
    loads_with_custom_objects: bool = False  # keras: loaded once the model's classes were passed
    detail: str = ""  # the class, global or key involved


@dataclass
class Lost:
    """State the model uses that the saved file does not carry: a server gets another value."""

    name: str  # qualified: "norm.mean", "blocks[0]", "temperature", keras "standardize.mean"
    owner: str  # module/layer qualified name ("" for the root)
    kind: str  # "non-persistent buffer" | "tensor attribute" | "unregistered module" | "number attribute" | "array attribute"
    detail: str  # what differs, with numbers
    assumed: tuple = ()  # torch: constructor arguments taken at their defaults for the rebuild


@dataclass
class LostArg:
    """Keras: a constructor argument of a custom layer that comes back with another value."""

    layer: str
    arg: str
    live: str
    loaded: str
    in_config: bool


@dataclass
class RoundTrip:
    format: str  # "state_dict" | "torchscript" | "keras"
    how: str  # what was done, one line
    output: Any = None  # numpy output of the reloaded model on the sample (None: not run)
    dtype: str = ""  # the output's dtype as the model produced it
    failures: list = field(default_factory=list)
    lost: list = field(default_factory=list)
    lost_args: list = field(default_factory=list)
    changed: list = field(default_factory=list)  # (tensor/variable name, max_abs or "not restored") saved but not restored equal
    unchecked: list = field(default_factory=list)  # (owner, names, why): state a rebuild could not check
    flags: list = field(default_factory=list)  # keras: (layer, trainable here, trainable after loading) that differ
    notes: list = field(default_factory=list)
    seconds: float = 0.0


# --------------------------------------------------------------------------- scratch space
@contextlib.contextmanager
def scratch_dir() -> Iterator[str]:
    """A fresh temporary directory, removed on exit (exceptions and timeouts included), that
    is `tempfile.tempdir` while it exists."""
    previous = tempfile.tempdir
    with tempfile.TemporaryDirectory(prefix="auditor-serving-", ignore_cleanup_errors=True) as path:
        tempfile.tempdir = path
        try:
            yield path
        finally:
            tempfile.tempdir = previous


@contextlib.contextmanager
def _quiet() -> Iterator[None]:
    """Silence what saving, loading and rebuilding print or warn (deprecations, TracerWarnings)."""
    sink = io.StringIO()
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        with contextlib.redirect_stdout(sink), contextlib.redirect_stderr(sink):
            yield


def one_line(exc: BaseException, limit: int = 220, deep: bool = False) -> str:
    """`Type: first line` of the exception, or with `deep` of the innermost one in its chain
    that says something (Keras wraps the real cause of a failed deserialisation in a generic
    one)."""
    inner = innermost(exc) if deep else exc
    lines = [_ANSI.sub("", line).strip() for line in str(inner).strip().split("\n")]
    lines = [line for line in lines if line]
    telling = [line for line in lines if "Unsupported global" in line]  # torch's weights-only refusal
    text = telling[0] if telling else lines[0] if lines else ""
    if text.endswith(":") and len(lines) > 1:  # "Error(s) in loading state_dict for Net:" + the errors
        text = f"{text} {lines[1]}"
    text = text.split(" Full object config:", 1)[0].split(" Make sure custom classes", 1)[0].strip()
    if len(text) > limit:
        text = text[: limit - 3].rstrip() + "..."
    return f"{type(inner).__name__}: {text}" if text else type(inner).__name__


def innermost(exc: BaseException) -> BaseException:
    seen = set()
    current = exc
    while id(current) not in seen:
        seen.add(id(current))
        nxt = current.__cause__ or current.__context__
        if nxt is None or not str(nxt).strip():
            break
        current = nxt
    return current


def chain_text(exc: BaseException) -> str:
    parts, seen, current = [], set(), exc
    while current is not None and id(current) not in seen:
        seen.add(id(current))
        parts.append(f"{type(current).__name__}: {current}")
        current = current.__cause__ or current.__context__
    return "\n".join(parts)


def round_trips(ctx: Any) -> list[RoundTrip]:
    """The round trips for this context's model (each in its own scratch directory)."""
    trips = []
    if ctx.framework == "keras":
        runners = _keras_runners(ctx)
    else:
        runners = _torch_runners(ctx)
    for runner in runners:
        started = time.perf_counter()
        try:
            with scratch_dir() as folder:
                trip = runner(ctx, folder)
        finally:
            ctx.restore()
        trip.seconds = time.perf_counter() - started
        trips.append(trip)
    return trips


# =========================================================================== PyTorch
def _torch_runners(ctx: Any) -> list:
    import torch

    model = ctx.model
    if isinstance(model, torch.jit.ScriptModule):
        return [torchscript_round_trip]
    if is_exported(model):
        ctx.notes.append("serving parity: the model is a torch.export program loaded from its archive; it is not round-tripped again (LOD104 reads its graph)")
        return []
    return [state_dict_round_trip]


def is_exported(model: Any) -> bool:
    """A module made by `torch.export` (`ExportedProgram.module()`): an fx GraphModule whose
    nodes carry the exported module stack."""
    import torch

    if not isinstance(model, torch.fx.GraphModule):
        return False
    return any("nn_module_stack" in node.meta for node in model.graph.nodes)


def _torch_call(model: Any, inputs: Any) -> Any:
    if isinstance(inputs, dict):
        return model(**inputs)
    if isinstance(inputs, tuple):
        return model(*inputs)
    return model(inputs)


def _torch_output(raw: Any) -> tuple[Any, str]:
    from auditor.dynamic.context_base import dtype_text, output_array
    from auditor.dynamic.torch_context import primary_output

    out = primary_output(raw)
    if out is None:
        return None, ""
    return output_array(out).copy(), dtype_text(out)


def torchscript_round_trip(ctx: Any, folder: str) -> RoundTrip:
    import torch

    trip = RoundTrip("torchscript", "torch.jit.save(model); torch.jit.load(path).eval()")
    path = os.path.join(folder, "model.pt")
    try:
        with _quiet():
            torch.jit.save(ctx.model, path)
    except Exception as exc:  # noqa: BLE001 - the finding is the error
        trip.failures.append(Failure("save", ROOT, one_line(exc)))
        return trip
    try:
        with _quiet():
            loaded = torch.jit.load(path, map_location=ctx.device)
    except Exception as exc:  # noqa: BLE001
        trip.failures.append(Failure("load", ROOT, one_line(exc)))
        return trip
    try:
        loaded.eval()
        with torch.no_grad(), _quiet():
            trip.output, trip.dtype = _torch_output(_torch_call(loaded, ctx.inputs()))
    except Exception as exc:  # noqa: BLE001
        trip.failures.append(Failure("run", ROOT, one_line(exc)))
    finally:
        del loaded
    return trip


def state_dict_round_trip(ctx: Any, folder: str) -> RoundTrip:
    """torch.save(state_dict) -> torch.load(weights_only=True) -> a server-like copy -> run."""
    import torch

    trip = RoundTrip("state_dict", "torch.save(model.state_dict()); torch.load(path, weights_only=True); model.load_state_dict(state, strict=True) on a rebuilt model; model.eval()")
    model = ctx.model
    path = os.path.join(folder, "model.pt")
    try:
        state = model.state_dict()
    except Exception as exc:  # noqa: BLE001
        trip.failures.append(Failure("save", ROOT, one_line(exc)))
        return trip
    try:
        with _quiet():
            torch.save(state, path)
    except Exception as exc:  # noqa: BLE001
        key = _odd_state_entry(state, str(exc))
        trip.failures.append(Failure("save", _owner_of_key(key), one_line(exc), detail=key or ""))
        return trip
    try:
        with _quiet():
            try:
                loaded = torch.load(path, weights_only=True, mmap=True)
            except (TypeError, RuntimeError) as mmap_error:
                if "weights_only" in str(mmap_error).lower() or "unsupported global" in str(mmap_error).lower():
                    raise
                loaded = torch.load(path, weights_only=True)
    except Exception as exc:  # noqa: BLE001 - weights_only=True refuses what it cannot load safely
        text = chain_text(exc)
        key = _odd_state_entry(state, text)
        glob = re.search(r"GLOBAL ([\w.]+)", text)
        trip.failures.append(Failure("load", _owner_of_key(key), one_line(exc), kind="weights_only", detail=glob.group(1) if glob else (key or "")))
        return trip
    state_keys = list(state.keys())
    del state
    clone = _server_copy(model, set(state_keys), trip)
    if clone is None:
        return trip
    try:
        with torch.no_grad(), _quiet():
            clone.load_state_dict(loaded, strict=True)
    except Exception as exc:  # noqa: BLE001
        owner, keys = _keys_owner(str(exc))
        trip.failures.append(Failure("load", owner, one_line(exc), detail=keys))
        return trip
    del loaded
    trip.changed = _changed_tensors(model, clone, set(state_keys))
    _emulate_rebuild(model, clone, trip)
    try:
        clone.eval()
        with torch.no_grad(), _quiet():
            trip.output, trip.dtype = _torch_output(_torch_call(clone, ctx.inputs()))
    except Exception as exc:  # noqa: BLE001
        if trip.lost:
            trip.failures.append(Failure("run", trip.lost[0].name, one_line(exc), kind="lost"))
        else:
            trip.failures.append(Failure("run", ROOT, one_line(exc)))
    return trip


def _odd_state_entry(state: dict, text: str) -> str | None:
    """The state-dict key holding something other than a tensor (an `_extra_state` object),
    preferring the one whose type the error names."""
    import torch

    odd = [(k, v) for k, v in state.items() if not isinstance(v, torch.Tensor)]
    for key, value in odd:
        if type(value).__name__ in text or type(value).__qualname__ in text:
            return key
    return odd[0][0] if odd else None


def _keys_owner(text: str) -> tuple[str, str]:
    """From a load_state_dict error: the innermost module that owns every missing key (else
    every unexpected one, else the first key named), and the keys in short."""
    def keys(label: str) -> list[str]:
        match = re.search(label + r" key\(s\) in state_dict: ((?:\"[^\"]+\"(?:, )?)+)", text)
        return re.findall(r'"([^"]+)"', match.group(1)) if match else []

    missing, unexpected = keys("Missing"), keys("Unexpected")
    named = missing or unexpected or re.findall(r'"([^"]+)"', text)[:1]
    if not named:
        return ROOT, ""
    owners = [k.rsplit(".", 1)[0].split(".") if "." in k else [] for k in named]
    common = []
    for parts in zip(*owners):
        if len(set(parts)) != 1:
            break
        common.append(parts[0])
    short = []
    if missing:
        short.append(f"missing {missing[0]}" + (f" (+{len(missing) - 1})" if len(missing) > 1 else ""))
    if unexpected:
        short.append(f"unexpected {unexpected[0]}" + (f" (+{len(unexpected) - 1})" if len(unexpected) > 1 else ""))
    return (".".join(common) or ROOT), ", ".join(short) or named[0]


def _owner_of_key(key: str | None) -> str:
    if not key:
        return ROOT
    owner = key.rsplit(".", 1)[0] if "." in key else ""
    return owner or ROOT


def _placeholder(tensor: Any) -> Any:
    import torch

    if tensor.is_floating_point() or tensor.is_complex():
        filled = torch.full_like(tensor, float("nan"))
    else:
        filled = torch.zeros_like(tensor)
    if isinstance(tensor, torch.nn.Parameter):
        return torch.nn.Parameter(filled, requires_grad=tensor.requires_grad)
    return filled


def _server_copy(model: Any, saved: set, trip: RoundTrip) -> Any:
    """A copy of the model whose saved tensors are NaN (or zero) placeholders, so that only
    `load_state_dict` gives them values, and whose other state is copied (and later replaced
    with a fresh instance's, see `_emulate_rebuild`)."""
    memo: dict = {}
    try:
        for name, tensor in _named_tensors(model):
            if name in saved and id(tensor) not in memo:
                memo[id(tensor)] = _placeholder(tensor)
        with _quiet():
            return copy.deepcopy(model, memo)
    except Exception as exc:  # noqa: BLE001 - cannot emulate a server without a copy
        trip.notes.append(f"serving parity: the model cannot be copied to emulate a server ({one_line(exc)}); the state-dict round trip was not run")
        return None


def _named_tensors(model: Any) -> list[tuple[str, Any]]:
    return list(model.named_parameters(remove_duplicate=False)) + [(n, b) for n, b in model.named_buffers(remove_duplicate=False) if b is not None]


def _changed_tensors(model: Any, clone: Any, saved: set) -> list[tuple[str, Any]]:
    """Saved tensors that do not come back bit for bit ("not restored" when still a placeholder)."""
    import torch

    from auditor.dynamic.torch_state import bitwise_equal

    copies = dict(_named_tensors(clone))
    out = []
    seen = set()
    for name, live in _named_tensors(model):
        if name not in saved or name in seen:
            continue
        seen.add(name)
        back = copies.get(name)
        if back is None:
            out.append((name, "not restored"))
            continue
        back = back.detach().to(live.device)
        if bitwise_equal(back, live.detach()):
            continue
        if back.shape != live.shape:
            out.append((name, f"shape {tuple(back.shape)} instead of {tuple(live.shape)}"))
        elif back.is_floating_point() and bool(torch.isnan(back).all()) and not bool(torch.isnan(live).all()):
            out.append((name, "not restored"))
        else:
            diff = (back.double() - live.detach().double()).abs()
            out.append((name, float(diff[~torch.isnan(diff)].max()) if bool((~torch.isnan(diff)).any()) else float("nan")))
    return out


# -- unsaved state and the rebuild a server does ------------------------------------------
def _emulate_rebuild(model: Any, clone: Any, trip: RoundTrip) -> None:
    """For every module that holds state outside its state dict (non-persistent buffers,
    tensors or modules kept in plain attributes or containers, float attributes of user
    classes), build a fresh instance of its class as a server would (constructor arguments
    read from same-named attributes, defaults otherwise), compare, and put the fresh values
    into the clone: what a server that rebuilds the class and loads the state dict runs."""

    registered = {id(t) for _, t in _named_tensors(model)}
    modules = {id(m) for m in model.modules()}
    clones = dict(clone.named_modules(remove_duplicate=False))
    cache: dict = {}
    for name, module in model.named_modules():
        own = _unsaved(module, registered, modules)
        if not own:
            continue
        if _saves_custom_state(module):
            continue  # its own _save_to_state_dict / get_extra_state may carry them
        twin = clones.get(name)
        if twin is None:
            continue
        fresh, assumed, why = _rebuild(module, cache)
        if fresh is None:
            tensors = [path for path, kind, _ in own if kind != "number attribute"]
            if tensors:  # a float that cannot be checked is not worth a note
                trip.unchecked.append((name or ROOT, tensors, why))
            continue
        for path, kind, value in own:
            fresh_value = _lookup(fresh, path)
            verdict = _difference(value, fresh_value, assumed)
            if verdict is None:
                continue
            if verdict == "incomparable":
                trip.unchecked.append((name or ROOT, [path], f"a rebuild with default {', '.join(assumed)} gives another shape"))
                continue
            qualified = f"{name}.{path}" if name else path
            trip.lost.append(Lost(qualified, name, kind, verdict, tuple(assumed)))
            _assign(twin, path, fresh_value, value)
    del cache


def _unsaved(module: Any, registered: set, modules: set) -> list[tuple[str, str, Any]]:
    import torch

    own: list[tuple[str, str, Any]] = []
    for bname in sorted(getattr(module, "_non_persistent_buffers_set", ()) or ()):
        value = module._buffers.get(bname)
        if isinstance(value, torch.Tensor):
            own.append((bname, "non-persistent buffer", value))
    user_class = not type(module).__module__.startswith("torch.")
    try:
        params = set(inspect.signature(type(module).__init__).parameters)
    except (TypeError, ValueError):
        params = set()
    for key, value in vars(module).items():
        if key in ("_parameters", "_buffers", "_modules", "training") or key.startswith("__"):
            continue
        if isinstance(value, torch.Tensor):
            if id(value) not in registered:
                own.append((key, "tensor attribute", value))
        elif isinstance(value, torch.nn.Module):
            if id(value) not in modules:
                own.append((key, "unregistered module", value))
        elif isinstance(value, (list, tuple)) and not key.startswith("_"):
            for index, item in enumerate(value):
                if isinstance(item, torch.Tensor) and id(item) not in registered:
                    own.append((f"{key}[{index}]", "tensor in a list", item))
                elif isinstance(item, torch.nn.Module) and id(item) not in modules:
                    own.append((f"{key}[{index}]", "unregistered module", item))
        elif isinstance(value, dict) and not key.startswith("_"):
            for item_key, item in value.items():
                if not isinstance(item_key, (str, int)):
                    continue
                if isinstance(item, torch.Tensor) and id(item) not in registered:
                    own.append((f"{key}[{item_key!r}]", "tensor in a dict", item))
                elif isinstance(item, torch.nn.Module) and id(item) not in modules:
                    own.append((f"{key}[{item_key!r}]", "unregistered module", item))
        elif user_class and type(value) is float and not key.startswith("_") and key not in params:
            own.append((key, "number attribute", value))
    return own


def _saves_custom_state(module: Any) -> bool:
    import torch

    cls = type(module)
    base = torch.nn.Module
    return getattr(cls, "_save_to_state_dict", None) is not base._save_to_state_dict or getattr(cls, "get_extra_state", None) is not base.get_extra_state


def _rebuild(module: Any, cache: dict) -> tuple[Any, list, str]:
    """A fresh instance of the module's class: (instance, defaults assumed, why not)."""
    import torch

    cls = type(module)
    if isinstance(module, (torch.jit.ScriptModule, torch.fx.GraphModule)):
        return None, [], "a compiled module"
    try:
        signature = inspect.signature(cls.__init__)
    except (TypeError, ValueError):
        return None, [], "its constructor signature is unknown"
    args, kwargs, assumed = [], {}, []
    for parameter in list(signature.parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD):
            continue
        value = vars(module).get(parameter.name, _MISSING)
        usable = value is not _MISSING and not isinstance(value, (torch.nn.Module, torch.Tensor)) and not callable(getattr(value, "forward", None))
        if usable and _LOADS_WEIGHTS.search(parameter.name) and value not in (None, False, ""):
            usable = False
        if not usable:
            if parameter.default is parameter.empty:
                return None, [], f"its constructor needs `{parameter.name}`, which is not kept as an attribute"
            if parameter.name not in ("device", "dtype"):
                assumed.append(parameter.name)
            continue
        if parameter.kind is parameter.POSITIONAL_ONLY:
            args.append(value)
        else:
            kwargs[parameter.name] = value
    key = (cls, tuple(_key(a) for a in args), tuple((k, _key(v)) for k, v in sorted(kwargs.items())))
    if key in cache:
        return cache[key], assumed, ""
    try:
        with _quiet(), torch.no_grad():
            fresh = cls(*args, **kwargs)
    except Exception as exc:  # noqa: BLE001
        return None, [], f"rebuilding {cls.__name__} failed ({one_line(exc, 120)})"
    cache[key] = fresh
    return fresh, assumed, ""


def _key(value: Any) -> Any:
    try:
        hash(value)
        return (type(value).__name__, value)
    except TypeError:
        return ("id", id(value))


def _lookup(owner: Any, path: str) -> Any:
    match = re.fullmatch(r"(\w+)(?:\[(.+)\])?", path)
    if not match:
        return _MISSING
    attr, index = match.groups()
    if attr in getattr(owner, "_buffers", {}):
        value = owner._buffers[attr]
    else:
        value = vars(owner).get(attr, _MISSING)
    if index is None or value is _MISSING:
        return value
    try:
        return value[ast.literal_eval(index)]
    except Exception:  # noqa: BLE001
        return _MISSING


def _difference(live: Any, fresh: Any, assumed: list) -> str | None:
    """None when equal; a description with numbers when not; "incomparable" when a rebuild
    with assumed defaults gives another shape."""
    import torch

    if fresh is _MISSING:
        return "a rebuilt model does not have it (set after construction)"
    if isinstance(live, torch.Tensor):
        if not isinstance(fresh, torch.Tensor):
            return f"a rebuilt model has a {type(fresh).__name__} here"
        return _tensor_difference(live, fresh, assumed)
    if isinstance(live, torch.nn.Module):
        if not isinstance(fresh, torch.nn.Module):
            return f"a rebuilt model has a {type(fresh).__name__} here"
        live_state, fresh_state = live.state_dict(), fresh.state_dict()
        if live_state.keys() != fresh_state.keys():
            return "a rebuilt model has other tensors here"
        worst, names = 0.0, []
        for key, value in live_state.items():
            verdict = _tensor_difference(value, fresh_state[key], assumed)
            if verdict == "incomparable":
                return verdict
            if verdict is not None:
                names.append(key)
                worst = max(worst, float((value.detach().double().cpu() - fresh_state[key].detach().double().cpu()).abs().max()))
        if not names:
            return None
        return f"{len(names)} of its {len(live_state)} tensors ({', '.join(names[:3])}) differ from a rebuilt model's by up to {worst:.3g}: they are not in the state dict"
    if isinstance(live, float):
        if isinstance(fresh, float) and (fresh == live or (math.isnan(fresh) and math.isnan(live))):
            return None
        return f"{live:.6g} here, {fresh!r} in a rebuilt model"
    return None


def _tensor_difference(live: Any, fresh: Any, assumed: list) -> str | None:
    import torch

    from auditor.dynamic.torch_state import bitwise_equal

    live_cpu, fresh_cpu = live.detach().cpu(), fresh.detach().cpu()
    if live_cpu.shape != fresh_cpu.shape:
        if assumed:
            return "incomparable"
        return f"shape {tuple(live_cpu.shape)} here, {tuple(fresh_cpu.shape)} in a rebuilt model"
    if live_cpu.dtype == fresh_cpu.dtype and bitwise_equal(live_cpu, fresh_cpu):
        return None
    if live_cpu.is_floating_point() or fresh_cpu.is_floating_point():
        diff = (live_cpu.double() - fresh_cpu.double()).abs()
        finite = diff[~torch.isnan(diff)]
        worst = float(finite.max()) if finite.numel() else float("nan")
        if worst == 0.0 and live_cpu.dtype == fresh_cpu.dtype:
            return None  # -0.0 vs 0.0
        return f"differs from a rebuilt model's value by up to {worst:.3g} (values here: {_summary(live_cpu)})"
    if torch.equal(live_cpu.long(), fresh_cpu.long()):
        return None
    return f"{int((live_cpu != fresh_cpu).sum())} of {live_cpu.numel()} values differ from a rebuilt model's"


def _summary(t: Any) -> str:
    flat = t.reshape(-1)
    if flat.numel() <= 4:
        return "[" + ", ".join(f"{float(v):.4g}" for v in flat) + "]"
    return f"mean {float(flat.double().mean()):.4g}, {flat.numel()} values"


def _assign(owner: Any, path: str, fresh: Any, live: Any) -> None:
    """Put a fresh instance's value (on the live value's device and dtype) into the clone;
    remove the attribute when a fresh instance has none."""
    import torch

    if isinstance(fresh, torch.Tensor) and isinstance(live, torch.Tensor):
        fresh = fresh.detach().clone().to(device=live.device)
        if fresh.dtype != live.dtype and fresh.is_floating_point() and live.is_floating_point():
            fresh = fresh.to(live.dtype)
    elif isinstance(fresh, torch.nn.Module) and isinstance(live, torch.nn.Module):
        fresh = copy.deepcopy(fresh)
        device = next((t.device for t in list(live.parameters()) + list(live.buffers())), None)
        if device is not None:
            fresh = fresh.to(device)
    match = re.fullmatch(r"(\w+)(?:\[(.+)\])?", path)
    if not match:
        return
    attr, index = match.groups()
    if index is None:
        if attr in getattr(owner, "_buffers", {}):
            if fresh is _MISSING:
                del owner._buffers[attr]
            else:
                owner._buffers[attr] = fresh
        elif fresh is _MISSING:
            owner.__dict__.pop(attr, None)
        else:
            owner.__dict__[attr] = fresh
        return
    container = owner.__dict__.get(attr)
    if container is None or fresh is _MISSING:
        return
    key = ast.literal_eval(index)
    if isinstance(container, tuple):
        items = list(container)
        items[key] = fresh
        owner.__dict__[attr] = type(container)(items) if type(container) is tuple else tuple(items)
    else:
        container = copy.copy(container)
        container[key] = fresh
        owner.__dict__[attr] = container


# -- training behaviour frozen into an artefact (LOD104) -----------------------------------
def frozen_training_ops(model: Any) -> tuple[str, list[tuple[str, str]]]:
    """For a TorchScript module or a torch.export program: (artefact kind, [(module, op)])
    for every dropout or batch-norm op whose `train`/`training` argument is the constant
    True in the graph, so that `.eval()` cannot turn it off. ("", []) for a plain module."""
    import torch

    if isinstance(model, torch.jit.ScriptModule):
        return "TorchScript module", _script_frozen(model)
    if isinstance(model, torch.fx.GraphModule):
        kind = "torch.export program" if is_exported(model) else "torch.fx GraphModule"
        return kind, _fx_frozen(model)
    return "", []


def _training_op(name: str) -> str | None:
    name = name.lower()
    if "dropout" in name:
        return "dropout"
    if "batch_norm" in name and "no_training" not in name:
        return "batch_norm"
    return None


def _script_frozen(model: Any) -> list[tuple[str, str]]:
    import torch

    def walk(block: Any) -> Iterator[Any]:
        for node in block.nodes():
            yield node
            for sub in node.blocks():
                yield from walk(sub)

    found = []
    for name, module in model.named_modules():
        try:
            graph = module.graph
        except Exception:  # noqa: BLE001 - a module without a compiled forward
            continue
        for node in walk(graph):
            kind = _training_op(node.kind())
            if kind is None:
                continue
            try:
                schema = torch._C.parse_schema(node.schema())
            except Exception:  # noqa: BLE001
                continue
            names = [a.name for a in schema.arguments]
            flag = next((i for i, n in enumerate(names) if n in ("train", "training")), None)
            if flag is None:
                continue
            inputs = list(node.inputs())
            if flag >= len(inputs) or inputs[flag].node().kind() != "prim::Constant" or inputs[flag].toIValue() is not True:
                continue
            if kind == "dropout" and "p" in names:
                p = inputs[names.index("p")]
                if p.node().kind() == "prim::Constant" and p.toIValue() == 0:
                    continue
            found.append((name or ROOT, kind))
    return found


def _fx_frozen(model: Any) -> list[tuple[str, str]]:
    found = []
    for node in model.graph.nodes:
        if node.op != "call_function":
            continue
        kind = _training_op(str(node.target))
        schema = getattr(node.target, "_schema", None)
        if kind is None or schema is None:
            continue
        names = [a.name for a in schema.arguments]
        flag = next((i for i, n in enumerate(names) if n in ("train", "training")), None)
        if flag is None:
            continue
        value = node.args[flag] if flag < len(node.args) else node.kwargs.get(names[flag])
        if value is not True:
            continue
        if kind == "dropout" and "p" in names:
            index = names.index("p")
            p = node.args[index] if index < len(node.args) else node.kwargs.get("p")
            if p == 0:
                continue
        stack = node.meta.get("nn_module_stack") or {}
        owner = list(stack.values())[-1][0] if stack else ""
        found.append((_clean_fx_name(owner) or ROOT, kind))
    return found


def _clean_fx_name(name: str) -> str:
    name = re.sub(r"^L__self___|^L\['self'\]\.?", "", str(name))
    return name


# =========================================================================== Keras
def _keras_runners(ctx: Any) -> list:
    """The .keras round trip, for models that hold something Keras cannot vouch for: a class
    of the user's (a custom layer or model) or a Lambda layer. A model made only of Keras's own
    layers (keras.applications, a plain Sequential) round-trips by Keras's own guarantee, and
    rebuilding it costs more than the rest of the audit (keras.applications.ResNet50 on a
    2-core CPU: save 0.7 s + load 1.3 s + run, about 6 forward passes at batch 8, 224x224)."""
    layers = [layer for _, layer in ctx.layers()]
    if keras_custom_layers(ctx) or any(type(layer).__name__ == "Lambda" for layer in layers) or any(_custom_functions(layer) for layer in layers):
        return [keras_round_trip]
    ctx.notes.append("serving parity: every layer is one of Keras's own (no custom class, no Lambda), so the .keras round trip was not run")
    return []


def keras_round_trip(ctx: Any, folder: str) -> RoundTrip:
    import keras

    from auditor.dynamic.keras_context import primary_output
    from auditor.dynamic.keras_state import to_numpy

    trip = RoundTrip("keras", "model.save('model.keras'); keras.saving.load_model(path, safe_mode=True, compile=False)")
    model = ctx.model
    path = os.path.join(folder, "model.keras")
    customs = keras_custom_layers(ctx)
    counters = _name_counters()
    try:
        try:
            with _quiet():
                model.save(path)
        except Exception as exc:  # noqa: BLE001
            target, error = _keras_config_culprit(customs)
            trip.failures.append(Failure("save", target or ROOT, error or one_line(exc, deep=True)))
            return trip
        loaded, first = None, None
        try:
            with _quiet():
                loaded = keras.saving.load_model(path, safe_mode=True, compile=False)
        except Exception as exc:  # noqa: BLE001
            first = exc
        if first is not None:
            text = chain_text(first)
            if "safe_mode" in text or ("Lambda" in text and "lambda" in text):
                lambdas = [name for name, layer in ctx.layers() if type(layer).__name__ == "Lambda"] or [ROOT]
                for name in lambdas:
                    trip.failures.append(Failure("load", name, one_line(first, deep=True), kind="safe_mode", detail="Lambda"))
                return trip
            objects = _custom_objects(customs)
            for _name, layer in ctx.layers():
                for function in _custom_functions(layer):
                    objects.setdefault(function.__name__, function)
            try:
                with _quiet():
                    loaded = keras.saving.load_model(path, safe_mode=True, compile=False, custom_objects=objects)
            except Exception as exc:  # noqa: BLE001
                target, error = _keras_config_culprit(customs)
                if target is None:
                    target = _named_layer(chain_text(exc), customs, ctx) or ROOT
                trip.failures.append(Failure("load", target, error or one_line(exc, deep=True)))
                return trip
            missing = re.findall(r"Could not locate (?:class|function) '([^']+)'", text)
            unregistered = [(name, layer) for name, layer in customs if not _registered(type(layer))]
            reported = set()
            for name, layer in unregistered:
                cls = type(layer)
                if cls in reported:
                    continue
                reported.add(cls)
                trip.failures.append(Failure("load", name, one_line(first, deep=True) if cls.__name__ in missing else f"TypeError: Could not locate class '{cls.__name__}'", kind="unregistered", loads_with_custom_objects=True, detail=f"{cls.__module__}.{cls.__qualname__}"))
            for name, layer in ctx.layers():
                for function in _custom_functions(layer):
                    if function.__name__ in missing and function not in reported:
                        reported.add(function)
                        trip.failures.append(Failure("load", name, one_line(first, deep=True), kind="unregistered", loads_with_custom_objects=True, detail=f"{function.__module__}.{function.__qualname__}"))
            if not reported:
                trip.failures.append(Failure("load", _named_layer(text, customs, ctx) or ROOT, one_line(first, deep=True), kind="unregistered", loads_with_custom_objects=True, detail=", ".join(missing)))
        pairs = _pair_layers(ctx, loaded)
        trip.changed = _keras_changed_variables(model, loaded)  # before the copy runs (a training call would move them)
        for name, live, back in pairs:
            if bool(live.trainable) != bool(back.trainable) and not any(name.startswith(f"{outer}/") for outer, _, _ in trip.flags):
                trip.flags.append((name, bool(live.trainable), bool(back.trainable)))
        try:
            with _quiet():
                raw = loaded(ctx.inputs(), training=False)
            out = primary_output(raw)
            if out is not None:
                array = to_numpy(out)
                trip.dtype = str(array.dtype)
                trip.output = array
        except Exception as exc:  # noqa: BLE001
            trip.failures.append(Failure("run", ROOT, one_line(exc, deep=True)))
            return trip
        custom_ids = {id(layer) for _, layer in customs}
        for name, live, back in pairs:
            if id(live) not in custom_ids:
                continue
            trip.lost_args.extend(_keras_lost_args(name, live, back))
            trip.lost.extend(_keras_lost_state(name, live, back))
        del loaded
        return trip
    finally:
        _restore_name_counters(counters)


def keras_custom_layers(ctx: Any) -> list[tuple[str, Any]]:
    """(qualified name or ROOT, layer) for the model and every layer whose class is not
    Keras's own: what `load_model` must find by registration or `custom_objects`."""
    out = []
    for name, layer in [(ROOT, ctx.model)] + list(ctx.layers()):
        module = type(layer).__module__ or ""
        if module.split(".")[0] not in _KERAS_PACKAGES:
            out.append((name, layer))
    return out


def _custom_functions(layer: Any) -> list:
    """Plain Python functions of the user's a layer holds (an activation passed as a function):
    load_model must find them by registration or custom_objects, like classes."""
    return [
        value
        for value in vars(layer).values()
        if inspect.isfunction(value) and (getattr(value, "__module__", "") or "").split(".")[0] not in _KERAS_PACKAGES + ("builtins",)
    ]


def _registered(cls: Any) -> bool:
    import keras

    try:
        name = keras.saving.get_registered_name(cls)
        return keras.saving.get_registered_object(name) is not None
    except Exception:  # noqa: BLE001
        return False


def _custom_objects(customs: list) -> dict:
    """The model's own classes (and custom functions its layers hold, e.g. activations) by
    name: what a server passes as `custom_objects`."""
    objects: dict = {}
    for _name, layer in customs:
        cls = type(layer)
        objects[cls.__name__] = cls
        try:
            import keras

            objects[keras.saving.get_registered_name(cls)] = cls
        except Exception:  # noqa: BLE001
            pass
    return objects


def _keras_config_culprit(customs: list) -> tuple[str | None, str | None]:
    """The first custom layer whose own config does not rebuild it in memory
    (`get_config()` raises, or `from_config(get_config())` raises): (name, error line)."""
    import keras

    for name, layer in reversed(customs):  # innermost first: the root's failure is usually theirs
        try:
            with _quiet():
                config = layer.get_config()
                keras.saving.serialize_keras_object(layer)
                type(layer).from_config(config)
        except Exception as exc:  # noqa: BLE001
            return name, one_line(exc, deep=True)
    return None, None


def _named_layer(text: str, customs: list, ctx: Any) -> str | None:
    for name, layer in customs:
        if f"'{type(layer).__name__}'" in text:
            return name
    for name, _layer in ctx.layers():
        short = name.rpartition("/")[2]
        if f"'name': '{short}'" in text:
            return name
    return None


def _name_counters() -> Any:
    try:
        from keras.src.backend.common import global_state

        counters = global_state.get_global_attribute("object_name_uids")
        return copy.copy(counters) if counters is not None else None
    except Exception:  # noqa: BLE001
        return None


def _restore_name_counters(saved: Any) -> None:
    """Loading builds layers, which advance Keras's automatic-name counters ("dense_3"): put
    them back so the user's next layers get the names they would have had."""
    if saved is None:
        return
    try:
        from keras.src.backend.common import global_state

        global_state.set_global_attribute("object_name_uids", saved)
    except Exception:  # noqa: BLE001
        pass


def _pair_layers(ctx: Any, loaded: Any) -> list[tuple[str, Any, Any]]:
    """(qualified name, live layer, loaded layer): by position when both models list the
    same classes in the same order (auto names differ after loading), else by name."""
    from auditor.dynamic.keras_state import all_layers

    live = list(ctx.layers())
    back = all_layers(loaded)
    pairs = [(ROOT, ctx.model, loaded)]
    if len(live) == len(back) and all(type(a).__name__ == type(b).__name__ for (_, a), (_, b) in zip(live, back)):
        pairs.extend((name, a, b) for (name, a), (_, b) in zip(live, back))
        return pairs
    table = dict(back)
    pairs.extend((name, layer, table[name]) for name, layer in live if name in table)
    return pairs


def _plain(value: Any) -> Any:
    """A comparable plain value (numbers, strings, tuples of them, arrays) or _MISSING."""
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, (list, tuple)):
        items = [_plain(v) for v in value]
        return _MISSING if any(i is _MISSING for i in items) else tuple(items)
    if isinstance(value, np.ndarray):
        return value
    return _MISSING


def _same(a: Any, b: Any) -> bool:
    if isinstance(a, np.ndarray) or isinstance(b, np.ndarray):
        try:
            return bool(np.array_equal(np.asarray(a), np.asarray(b), equal_nan=True))
        except TypeError:
            return bool(np.array_equal(np.asarray(a), np.asarray(b)))
    if isinstance(a, float) and isinstance(b, float) and math.isnan(a) and math.isnan(b):
        return True
    return a == b


def _short(value: Any) -> str:
    if isinstance(value, np.ndarray):
        return _array_summary(value)
    text = repr(value)
    return text if len(text) <= 60 else text[:57] + "..."


def _array_summary(array: np.ndarray) -> str:
    flat = np.asarray(array, dtype=np.float64).reshape(-1) if np.asarray(array).dtype.kind in "biuf" else None
    if flat is None:
        return f"array {np.asarray(array).shape}"
    if flat.size <= 4:
        return "[" + ", ".join(f"{v:.4g}" for v in flat) + "]"
    return f"array {np.asarray(array).shape}, mean {flat.mean():.4g}"


def _keras_lost_args(name: str, live: Any, back: Any) -> list[LostArg]:
    """Constructor arguments (kept as same-named attributes) that come back different."""
    try:
        signature = inspect.signature(type(live).__init__)
    except (TypeError, ValueError):
        return []
    try:
        config = live.get_config()
    except Exception:  # noqa: BLE001
        config = {}
    out = []
    for parameter in list(signature.parameters.values())[1:]:
        if parameter.kind in (parameter.VAR_POSITIONAL, parameter.VAR_KEYWORD) or parameter.name in _KERAS_BASE_ARGS:
            continue
        a = _plain(vars(live).get(parameter.name, _MISSING))
        b = _plain(vars(back).get(parameter.name, _MISSING))
        if a is _MISSING or b is _MISSING or _same(a, b):
            continue
        out.append(LostArg(name, parameter.name, _short(a), _short(b), parameter.name in config))
    return out


def _keras_lost_state(name: str, live: Any, back: Any) -> list[Lost]:
    """Arrays or tensors (not variables) and float attributes of a custom layer that are not
    constructor arguments and come back different: state that is not saved."""
    import keras

    try:
        params = set(inspect.signature(type(live).__init__).parameters)
    except (TypeError, ValueError):
        params = set()
    out = []
    for key, value in vars(live).items():
        if key.startswith("_") or key in params or key == "training":
            continue
        if isinstance(value, keras.Variable):
            continue
        if isinstance(value, np.ndarray) or (keras.ops.is_tensor(value) and not isinstance(value, keras.Variable)):
            kind = "array attribute"
            try:
                a = np.asarray(keras.ops.convert_to_numpy(value))
            except Exception:  # noqa: BLE001
                continue
            other = vars(back).get(key, _MISSING)
            if other is _MISSING:
                out.append(Lost(_qualify(name, key), name, kind, "a loaded model does not have it (set after construction)"))
                continue
            try:
                b = np.asarray(keras.ops.convert_to_numpy(other))
            except Exception:  # noqa: BLE001
                continue
            if a.shape == b.shape and _same(a, b):
                continue
            if a.shape != b.shape:
                detail = f"shape {a.shape} here, {b.shape} after loading"
            else:
                worst = float(np.nanmax(np.abs(a.astype(np.float64) - b.astype(np.float64)))) if a.dtype.kind in "biuf" else float("nan")
                detail = f"differs after loading by up to {worst:.3g} (values here: {_array_summary(a)})"
            out.append(Lost(_qualify(name, key), name, kind, detail))
        elif type(value) is float:
            other = vars(back).get(key, _MISSING)
            if isinstance(other, float) and _same(value, other):
                continue
            out.append(Lost(_qualify(name, key), name, "number attribute", f"{value:.6g} here, {other!r} after loading" if other is not _MISSING else "a loaded model does not have it (set after construction)"))
    return out


def _qualify(layer: str, attr: str) -> str:
    return attr if layer == ROOT else f"{layer}.{attr}"


def _keras_changed_variables(model: Any, loaded: Any) -> list[tuple[str, Any]]:
    """Variables that do not come back bit for bit, by position (same count and shapes) or
    by path."""
    from auditor.dynamic.keras_state import bitwise_equal, to_numpy

    live, back = list(model.weights), list(loaded.weights)
    if len(live) == len(back) and all(tuple(a.shape) == tuple(b.shape) for a, b in zip(live, back)):
        pairs = list(zip(live, back))
    else:
        table = {str(v.path): v for v in back}
        pairs = [(v, table[str(v.path)]) for v in live if str(v.path) in table]
    out = []
    for a, b in pairs:
        x, y = to_numpy(a), to_numpy(b)
        if bitwise_equal(x, y):
            continue
        if x.shape != y.shape or x.dtype.kind not in "biuf":
            out.append((str(a.path), "differs"))
            continue
        diff = np.abs(x.astype(np.float64) - y.astype(np.float64))
        out.append((str(a.path), float(np.nanmax(diff)) if diff.size else 0.0))
    return out


__all__ = [
    "Failure",
    "Lost",
    "LostArg",
    "ROOT",
    "RoundTrip",
    "frozen_training_ops",
    "is_exported",
    "keras_custom_layers",
    "one_line",
    "round_trips",
    "scratch_dir",
]
