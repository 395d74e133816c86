"""Resolve an `auditor audit TARGET` into something to probe.

TARGET is `path/to/file.py:NAME`, `package.module:NAME` (NAME a Pipeline, a model, or a
zero-argument callable returning either; dotted attribute paths allowed) or a model file.
Importing a user's file runs the user's code: that is their choice, made by naming it. When
that code raises, the one-line error names the user's file and line, not ours.
"""

from __future__ import annotations

import importlib
import importlib.util
import os
import sys
from pathlib import Path
from typing import Any

from auditor.errors import UsageFailure

TORCH_SUFFIXES = (".pt", ".pth", ".pt2", ".bin", ".ckpt")
KERAS_SUFFIXES = (".keras", ".h5", ".hdf5")
MODEL_SUFFIXES = TORCH_SUFFIXES + KERAS_SUFFIXES


class Loaded:
    """What a target resolved to: a Pipeline to run, or a context for tensors only."""

    def __init__(self, pipeline: Any = None, context: Any = None, source: str | None = None, notes: list[str] | None = None):
        self.pipeline = pipeline
        self.context = context
        self.source = source
        self.notes = list(notes or [])  # how the file was loaded (e.g. mapped to the CPU), for the report


def resolve(target: str, *, trust: bool = False, framework: str = "auto") -> Loaded:
    path = Path(target)
    if path.suffix.lower() in MODEL_SUFFIXES or (path.is_dir() and not target.endswith(".py")):
        return _model_file(target, trust=trust, framework=framework)
    spec, sep, name = target.rpartition(":")
    if not sep or not name or not spec:
        if target.endswith(".py") or Path(target).is_file():
            raise UsageFailure(f"{target}: name the object to audit, as {target}:NAME (a Pipeline, a model, or a function returning one)")
        raise UsageFailure(f"{target}: not a model file ({', '.join(MODEL_SUFFIXES)}) or a file.py:NAME / package.module:NAME target")
    if spec.endswith(".py") or os.sep in spec or "/" in spec:
        module = _import_file(spec)
        source = spec
    else:
        module = _import_module(spec)
        source = getattr(module, "__file__", None) or spec
        source = os.path.relpath(source) if os.path.isabs(source) and not os.path.relpath(source).startswith("..") else source
    obj = _attribute(module, name, spec)
    return Loaded(pipeline=_as_pipeline(obj, f"{spec}:{name}", framework), source=source)


def _model_file(target: str, *, trust: bool, framework: str) -> Loaded:
    path = Path(target)
    if not path.exists():
        raise UsageFailure(f"{target}: no such file")
    suffix = path.suffix.lower()
    if suffix in KERAS_SUFFIXES or (path.is_dir() and suffix not in TORCH_SUFFIXES):
        if framework == "torch":
            what = f"a Keras model file ({suffix})" if suffix in KERAS_SUFFIXES else "a directory (a Keras model or TensorFlow SavedModel?)"
            raise UsageFailure(f"{target}: {what}, but --framework torch was given (PyTorch model files are .pt/.pth/.pt2)")
        from auditor.dynamic.keras_files import load_keras_file

        return load_keras_file(target, trust=trust)
    if framework == "keras":
        raise UsageFailure(f"{target}: a PyTorch file, but --framework keras was given")
    from auditor.dynamic.torch_files import load_torch_file

    return load_torch_file(target, trust=trust)


def _import_file(spec: str) -> Any:
    path = Path(spec)
    if not path.exists():
        raise UsageFailure(f"{spec}: no such file")
    if path.suffix != ".py":
        raise UsageFailure(f"{spec}: expected a Python file (.py)")
    resolved = path.resolve()
    folder = str(resolved.parent)
    if folder not in sys.path:
        sys.path.insert(0, folder)  # sibling imports work as when the user runs the script
    module_name = f"_auditor_target_{abs(hash(str(resolved)))}"
    if module_name in sys.modules:
        return sys.modules[module_name]
    module_spec = importlib.util.spec_from_file_location(module_name, resolved)
    if module_spec is None or module_spec.loader is None:
        raise UsageFailure(f"{spec}: cannot be imported")
    module = importlib.util.module_from_spec(module_spec)
    sys.modules[module_name] = module
    try:
        module_spec.loader.exec_module(module)
    except BaseException as exc:  # noqa: BLE001 - the user's code raised: one line, their frame
        sys.modules.pop(module_name, None)
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageFailure(f"importing {spec} failed: {user_error(exc)}") from exc
    return module


def _import_module(spec: str) -> Any:
    cwd = os.getcwd()
    if cwd not in sys.path and "" not in sys.path:
        sys.path.insert(0, cwd)
    try:
        return importlib.import_module(spec)
    except ModuleNotFoundError as exc:
        if exc.name and spec.startswith(exc.name):
            raise UsageFailure(f"{spec}: no such module (not importable from {cwd})") from exc
        raise UsageFailure(f"importing {spec} failed: {user_error(exc)}") from exc
    except BaseException as exc:  # noqa: BLE001
        if isinstance(exc, KeyboardInterrupt):
            raise
        raise UsageFailure(f"importing {spec} failed: {user_error(exc)}") from exc


def _attribute(module: Any, name: str, spec: str) -> Any:
    obj = module
    for part in name.split("."):
        if not hasattr(obj, part):
            available = sorted(k for k, v in vars(module).items() if not k.startswith("_") and _looks_auditable(v))
            hint = f" (candidates: {', '.join(available[:8])})" if available else ""
            raise UsageFailure(f"{spec} has no attribute {name!r}{hint}")
        obj = getattr(obj, part)
    return obj


def _looks_auditable(value: Any) -> bool:
    from auditor.pipeline import Pipeline, framework_of

    return isinstance(value, Pipeline) or framework_of(value) is not None or (callable(value) and not isinstance(value, type) and getattr(value, "__module__", "").startswith("_auditor_target_"))


def _as_pipeline(obj: Any, where: str, framework: str) -> Any:
    from auditor.pipeline import Pipeline, framework_of

    if not isinstance(obj, Pipeline) and framework_of(obj) is None and callable(obj) and not isinstance(obj, type):
        try:
            obj = obj()
        except TypeError as exc:
            if "required positional argument" in str(exc) or "missing" in str(exc):
                raise UsageFailure(f"{where} needs arguments; name a Pipeline, a model or a zero-argument function: {exc}") from exc
            raise UsageFailure(f"calling {where}() failed: {user_error(exc)}") from exc
        except BaseException as exc:  # noqa: BLE001
            if isinstance(exc, KeyboardInterrupt):
                raise
            raise UsageFailure(f"calling {where}() failed: {user_error(exc)}") from exc
    if isinstance(obj, Pipeline):
        pipeline = obj
    elif framework_of(obj) is not None:
        pipeline = Pipeline(obj)
    else:
        raise UsageFailure(f"{where} is a {type(obj).__name__}; expected a Pipeline, a torch.nn.Module or keras.Model, or a zero-argument function returning one")
    actual = pipeline.framework
    if framework != "auto" and actual is not None and actual != framework:
        raise UsageFailure(f"{where} is a {actual} model, but --framework {framework} was given")
    return pipeline


def user_error(exc: BaseException) -> str:
    """`Type: message (at file:line)` with the innermost frame outside auditor, importlib and
    the frameworks: where the user's code went wrong."""
    message = str(exc).strip().splitlines()
    text = f"{type(exc).__name__}: {message[0]}" if message else type(exc).__name__
    if isinstance(exc, SyntaxError) and exc.filename:
        return f"{type(exc).__name__}: {exc.msg} (at {_rel(exc.filename)}:{exc.lineno})"
    skip = [os.path.dirname(os.path.dirname(os.path.abspath(__file__))), os.path.dirname(importlib.__file__)]
    for name in ("torch", "keras", "tensorflow", "numpy"):
        mod = sys.modules.get(name)
        if mod is not None and getattr(mod, "__file__", None):
            skip.append(os.path.dirname(mod.__file__))
    found = None
    tb = exc.__traceback__
    while tb is not None:
        filename = tb.tb_frame.f_code.co_filename
        if not filename.startswith("<") and not any(filename.startswith(s) for s in skip):
            found = (filename, tb.tb_lineno)
        tb = tb.tb_next
    return f"{text} (at {_rel(found[0])}:{found[1]})" if found else text


def _rel(path: str) -> str:
    rel = os.path.relpath(path)
    return path if rel.startswith("..") else rel
