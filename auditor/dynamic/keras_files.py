"""Load a Keras model file for `auditor audit` without running code it carries.

The format is told from the file's first bytes and, for zip archives, from the names in the
zip's central directory; the model's configuration (`config.json` of a `.keras` archive,
the `model_config` attribute of an `.h5` file) is then read as plain JSON and searched for
code before Keras deserialises anything:

| what the path is | how it is loaded | needs --trust |
| --- | --- | --- |
| `.keras` zip archive (`config.json` + weights), or a directory holding `config.json` | `keras.saving.load_model(path, safe_mode=True, compile=True)` | no |
| legacy `.h5`/`.hdf5` model (`model.save("m.h5")`) | the same call (Keras applies `safe_mode` to H5 since 3.12.0) | no |
| either of them with a `Lambda` layer (Python bytecode in the file) or a `TFSMLayer` (loads and runs an external SavedModel) | `safe_mode=False`: deserialising runs that code | yes |
| any model file when the installed Keras is older than 3.13.2 (`safe_mode` has known bypasses: CVE-2025-1550, fixed in 3.9.0; CVE-2026-1462, fixed in 3.13.2) | `safe_mode=False` | yes |

A TensorFlow SavedModel directory, an Orbax checkpoint, a weights-only `.weights.h5`, a file
under the wrong name (a `torch.save` archive renamed `.keras`, a zip without `config.json`),
custom classes whose code is not importable here, and empty, truncated or corrupt files all
end with one line and exit 2. A compiled model brings its optimizer and loss (the context
uses them when the Pipeline gives none); when the saved compile settings cannot be restored
the model is loaded uncompiled and the report says why. Keras's own loading warnings become
report notes instead of lines on stderr.
"""

from __future__ import annotations

import json
import logging
import os
import re
import sys
import warnings
import zipfile
from pathlib import Path
from typing import Any, Iterator

from auditor.dynamic.file_sniff import HDF5_MAGIC, NUMPY_MAGIC, TRUST_HINT, ZIP_MAGIC, is_pickle, looks_like_text, read_head
from auditor.dynamic.loading import Loaded
from auditor.errors import UsageFailure

MAX_CONFIG_BYTES = 64 * 2**20  # a real config.json is kilobytes to a few megabytes
#: Keras versions (from FRAMEWORK_FACTS §6.2)
H5_SAFE_MODE = (3, 12, 0)  # safe_mode reaches the legacy H5 loader (PR #21602)
SAFE_MODE_TRUSTED = (3, 13, 2)  # last known safe_mode bypass fixed (CVE-2026-1462)
SAFE_MODE_CVES = "CVE-2025-1550, fixed in 3.9.0; CVE-2026-1462, fixed in 3.13.2"
#: packages Keras itself imports classes from while deserialising
KERAS_PACKAGES = ("keras", "keras_hub", "keras_cv", "keras_nlp")
#: class_name values of Keras's serialisation format that are data, not classes
SERIALISED_DATA = {"__keras_tensor__", "__tensor__", "__numpy__", "__bytes__", "__ellipsis__", "__slice__", "__typespec__"}
SAVEDMODEL_HINT = (
    "auditor audit reads Keras 3 model files (.keras, a directory with config.json, legacy .h5); "
    "to audit a SavedModel, wrap it as keras.layers.TFSMLayer(path, call_endpoint='serving_default') "
    "in a keras.Model and audit file.py:NAME, or re-save the original model with model.save('model.keras')"
)


def load_keras_file(path: str, *, trust: bool) -> Loaded:
    """A `Loaded` with a Pipeline around the model in a `.keras`/`.h5` file or a Keras model
    directory. Raises `UsageFailure` (one line) for anything that cannot or may not be loaded."""
    p = Path(path)
    kind, detail = sniff(p)
    if kind == "unknown":
        raise UsageFailure(f"{path}: {detail}")
    config = read_config(p, kind)
    keras = import_keras(path)
    version = keras_version(keras)
    if version < (3,):
        raise UsageFailure(f"{path}: the installed keras {keras.__version__} is Keras 2; auditor audit needs Keras 3 (pip install 'keras>=3.13.2')")
    code = code_in_config(config)
    if code and not trust:
        more = f" (and {len(code) - 1} more)" if len(code) > 1 else ""
        h5_note = ""
        if kind == "h5" and version < H5_SAFE_MODE:
            h5_note = f" (keras {keras.__version__} does not apply safe_mode to .h5 files, only 3.12.0 and later do: loading alone would run it)"
        raise UsageFailure(f"{path}: {code[0]}{more}{h5_note}; --trust loads it with safe_mode=False, which runs that code: pass it only if you trust where the file came from")
    if version < SAFE_MODE_TRUSTED and not trust:
        raise UsageFailure(
            f"{path}: keras {keras.__version__} has known safe_mode bypasses ({SAFE_MODE_CVES}), so loading an untrusted model file can run code; "
            f"upgrade with pip install 'keras>=3.13.2', or {TRUST_HINT}"
        )
    if kind == "keras" and not _has_weights(p):
        raise UsageFailure(f"{path}: a .keras archive without model.weights.h5: the weights are missing (a partial copy, or an archive not written by model.save())")
    compile_note = None
    if kind != "h5":
        model_part = {k: v for k, v in config.items() if k != "compile_config"}
        missing = missing_custom_objects(model_part, keras)
        if missing:
            raise UsageFailure(f"{path}: {_custom_message(missing)}")
        in_compile = missing_custom_objects(config.get("compile_config"), keras)
        if in_compile:
            names = ", ".join(repr(name) for name, _module in in_compile[:3])
            compile_note = f"the file's compile settings use custom {names}, whose code is not in the file: loaded uncompiled, without its optimizer and loss"
    model, notes = _load(path, keras, safe_mode=not trust, compile=compile_note is None)
    if compile_note:
        notes.append(compile_note)
    if trust and code:
        notes.append(f"loaded with --trust (safe_mode=False), which runs code from the file: {code[0]}")
    elif trust and version < SAFE_MODE_TRUSTED:
        notes.append(f"loaded with --trust (safe_mode=False): keras {keras.__version__} predates the fixes for {SAFE_MODE_CVES}")
    if not isinstance(model, keras.Model):
        raise UsageFailure(f"{path}: holds a {type(model).__name__}, not a keras.Model")
    from auditor.pipeline import Pipeline

    return Loaded(pipeline=Pipeline(model), source=path, notes=notes)


# -- telling the format ------------------------------------------------------------------


def sniff(path: Path) -> tuple[str, str]:
    """(kind, why) from the first bytes and the zip directory; deserialises nothing.

    kind: keras (a .keras zip) | keras-dir | h5 | unknown."""
    if path.is_dir():
        return _sniff_dir(path)
    suffix = path.suffix.lower()
    size, head = read_head(path)
    if size == 0:
        return "unknown", "the file is empty"
    if head.startswith(ZIP_MAGIC):
        return _sniff_zip(path, suffix)
    if head.startswith(HDF5_MAGIC):
        if suffix == ".keras":
            return "unknown", "an HDF5 file under a .keras name (a legacy .h5 model?): Keras picks the format by the name; rename it to .h5"
        return "h5", ""
    if head.startswith(NUMPY_MAGIC):
        return "unknown", "a NumPy .npy array, not a Keras model file (pass arrays with --sample)"
    if is_pickle(head):
        return "unknown", "a Python pickle (a legacy PyTorch checkpoint?), not a Keras model file"
    if looks_like_text(head):
        return "unknown", f"a text file, not a Keras model file ({'model.save() writes a zip archive' if suffix == '.keras' else 'a legacy .h5 model is an HDF5 file'})"
    return "unknown", f"not a Keras model file (unrecognised content; first bytes {head[:8].hex()})"


def _sniff_dir(path: Path) -> tuple[str, str]:
    names = set(os.listdir(path))
    if names & {"saved_model.pb", "saved_model.pbtxt"}:
        return "unknown", f"a TensorFlow SavedModel directory, which Keras 3 cannot load as a model; {SAVEDMODEL_HINT}"
    if "config.json" in names:
        return "keras-dir", ""
    if "_CHECKPOINT_METADATA" in names or "_METADATA" in names or any(n.isdigit() for n in names):
        return "unknown", "an Orbax checkpoint directory: auditor audit reads Keras model files (.keras, legacy .h5); load the checkpoint in code and audit file.py:NAME"
    return "unknown", "a directory without config.json or saved_model.pb: not a model (auditor audit reads .keras, .h5, .pt/.pth/.pt2 files)"


def _sniff_zip(path: Path, suffix: str) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return "unknown", f"a corrupt or truncated zip archive ({exc})"
    if "config.json" in names:
        if suffix in (".h5", ".hdf5"):
            return "unknown", f"a Keras 3 .keras archive under a {suffix} name: Keras picks the format by the name; rename it to .keras"
        return "keras", ""
    leaves = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "data.pkl" in leaves or "constants.pkl" in leaves:
        return "unknown", "a PyTorch archive (written by torch.save or TorchScript), not a Keras model: rename it to .pt"
    if names and all(name.endswith(".npy") for name in names):
        return "unknown", "a NumPy .npz archive, not a Keras model file (pass arrays with --sample)"
    shown = ", ".join(sorted(names)[:3]) or "no entries"
    return "unknown", f"a zip archive without config.json ({shown}): not a Keras .keras file (model.save('model.keras') writes config.json and model.weights.h5)"


def _has_weights(path: Path) -> bool:
    try:
        with zipfile.ZipFile(path) as archive:
            return bool({"model.weights.h5", "model.weights.npz"} & set(archive.namelist()))
    except (zipfile.BadZipFile, OSError, ValueError, EOFError):
        return False


# -- the configuration, read as data -------------------------------------------------------


def read_config(path: Path, kind: str) -> Any:
    """The model's configuration as parsed JSON, read without Keras."""
    if kind == "keras":
        try:
            with zipfile.ZipFile(path) as archive:
                info = archive.getinfo("config.json")
                if info.file_size > MAX_CONFIG_BYTES:
                    raise UsageFailure(f"{path}: config.json declares {info.file_size / 2**20:.0f} MiB, far more than a model configuration holds; refusing to read it")
                text = archive.read("config.json")
        except UsageFailure:
            raise
        except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as exc:
            raise UsageFailure(f"{path}: a corrupt or truncated .keras archive (config.json cannot be read: {exc})") from None
        return _parse(path, text, "config.json")
    if kind == "keras-dir":
        config = path / "config.json"
        if config.stat().st_size > MAX_CONFIG_BYTES:
            raise UsageFailure(f"{config}: {config.stat().st_size / 2**20:.0f} MiB, far more than a model configuration holds; refusing to read it")
        return _parse(path, config.read_bytes(), "config.json")
    return _h5_config(path)


def _parse(path: Path, text: bytes, what: str) -> Any:
    try:
        config = json.loads(text)
    except (ValueError, UnicodeDecodeError) as exc:
        raise UsageFailure(f"{path}: {what} is not valid JSON ({exc}): the file is corrupt or not written by Keras") from None
    if not isinstance(config, dict) or "class_name" not in config:
        raise UsageFailure(f"{path}: {what} does not describe a Keras model (no class_name)")
    return config


def _h5_config(path: Path) -> Any:
    try:
        import h5py
    except ImportError:
        raise UsageFailure(f"{path}: reading a legacy .h5 model needs h5py (pip install h5py)") from None
    try:
        with h5py.File(path, "r") as fh:
            raw = fh.attrs.get("model_config")
            weights_only = "layer_names" in fh.attrs or "layers" in fh or "vars" in fh
    except Exception as exc:  # noqa: BLE001 - h5py raises OSError/KeyError/RuntimeError on damaged files
        raise UsageFailure(f"{path}: a corrupt or truncated HDF5 file ({_first_line(exc)})") from None
    if raw is None:
        if weights_only:
            raise UsageFailure(f"{path}: holds weights only (written by save_weights), no architecture: build the model in code, call model.load_weights() and audit file.py:NAME")
        raise UsageFailure(f"{path}: an HDF5 file without a Keras model configuration (no model_config attribute): not written by model.save()")
    if isinstance(raw, bytes):
        raw = raw.decode("utf-8", "replace")
    return _parse(path, str(raw).encode("utf-8"), "the model_config attribute")


def _objects(node: Any, layer: str | None = None) -> Iterator[tuple[dict, str | None]]:
    """Every serialised object (a dict with class_name) with the layer it sits in."""
    if isinstance(node, dict):
        if "class_name" in node:
            inner = node.get("config")
            name = inner.get("name") if isinstance(inner, dict) else None
            if isinstance(name, str) and not str(node["class_name"]).startswith("__"):
                layer = f"{name!r} ({node['class_name']})"
            yield node, layer
        for value in node.values():
            yield from _objects(value, layer)
    elif isinstance(node, list):
        for value in node:
            yield from _objects(value, layer)


def code_in_config(config: Any) -> list[str]:
    """What in the configuration runs code when loaded or called: serialised Python lambdas
    (a Lambda layer, or a lambda given as an activation or loss), legacy Lambda bytecode
    (tf.keras 2 .h5 files) and TFSMLayer (it loads and runs an external SavedModel)."""
    found: list[str] = []
    for obj, layer in _objects(config):
        kind = obj.get("class_name")
        inner = obj.get("config") if isinstance(obj.get("config"), dict) else {}
        where = layer or "an object"
        if kind == "__lambda__":
            what = f"layer {where} holds a Python lambda (bytecode stored in the file)"
            if layer and layer.endswith("(Lambda)"):
                what = f"layer {layer.rsplit(' ', 1)[0]} is a Lambda layer: its function is Python bytecode stored in the file"
            found.append(what)
        elif kind == "Lambda" and (inner.get("function_type") == "lambda" or isinstance(inner.get("function"), (list, str))) and not isinstance(inner.get("function"), dict):
            found.append(f"layer {inner.get('name', '?')!r} is a Lambda layer: its function is Python bytecode stored in the file")
        elif kind == "TFSMLayer":
            target = inner.get("filepath", "?")
            found.append(f"layer {inner.get('name', '?')!r} is a TFSMLayer: it loads and runs the external TensorFlow SavedModel {target!r}")
    return list(dict.fromkeys(found))


def missing_custom_objects(config: Any, keras: Any) -> list[tuple[str, str | None]]:
    """(class or function name, module) of custom objects the file names that are neither
    part of Keras nor registered in this process: Keras cannot rebuild them (their code is
    not in the file)."""
    missing: list[tuple[str, str | None]] = []
    for obj, _layer in _objects(config):
        kind = obj.get("class_name")
        if not isinstance(kind, str) or kind in SERIALISED_DATA or kind == "__lambda__" or "module" not in obj:
            continue
        module = obj.get("module")
        registered = obj.get("registered_name")
        if kind == "function":
            if module == "builtins" or (isinstance(module, str) and module.split(".")[0] in KERAS_PACKAGES):
                continue
            name = registered if isinstance(registered, str) else str(obj.get("config"))
        else:
            if isinstance(module, str) and module.split(".")[0] in KERAS_PACKAGES:
                continue
            name = registered if isinstance(registered, str) and registered else kind
        try:
            known = keras.saving.get_registered_object(name) is not None
        except Exception:  # noqa: BLE001
            known = False
        if not known:
            missing.append((name, module if isinstance(module, str) else None))
    return list(dict.fromkeys(missing))


def _custom_message(missing: list[tuple[str, str | None]]) -> str:
    shown = ", ".join(f"{name!r}" + (f" (module {module})" if module else "") for name, module in missing[:3])
    more = f" and {len(missing) - 3} more" if len(missing) > 3 else ""
    noun = "custom class or function" if len(missing) == 1 else "custom classes or functions"
    return (
        f"uses {noun} {shown}{more} whose code is not in the file and is not registered here, so Keras cannot rebuild the model; "
        "audit a file.py:NAME that imports them (decorated with @keras.saving.register_keras_serializable) and returns keras.saving.load_model(path)"
    )


# -- loading -----------------------------------------------------------------------------


def import_keras(path: str) -> Any:
    """`import keras` with TensorFlow's C++ start-up lines (CPU features, oneDNN), which it
    writes to stderr before any log setting is read, kept off the user's terminal."""
    if "keras" in sys.modules:
        return sys.modules["keras"]
    try:
        with _quiet_native_stderr():
            import keras
    except ImportError as exc:
        raise UsageFailure(f"{path}: a Keras model file, but keras cannot be imported ({_first_line(exc)}); pip install 'auditor[keras]'") from None
    return keras


class _quiet_native_stderr:
    """Send file descriptor 2 to a temporary file for the duration, then replay every line
    that is not TensorFlow's start-up chatter."""

    CHATTER = re.compile(r"^(I\d{4} |W\d{4} .*(cpu_feature|port\.cc)|WARNING: All log messages before absl::InitializeLog|To enable the following instructions|.*rebuild TensorFlow with the appropriate compiler flags)")

    def __enter__(self) -> "_quiet_native_stderr":
        import tempfile

        self.saved = None
        try:
            sys.stderr.flush()
            self.saved = os.dup(2)
            self.file = tempfile.TemporaryFile()
            os.dup2(self.file.fileno(), 2)
        except (OSError, ValueError, AttributeError):  # no real fd 2 (an embedding host)
            self.saved = None
        return self

    def __exit__(self, *exc: Any) -> None:
        if self.saved is None:
            return
        try:
            sys.stderr.flush()
        except (OSError, ValueError):
            pass
        os.dup2(self.saved, 2)
        os.close(self.saved)
        self.file.seek(0)
        text = self.file.read().decode("utf-8", "replace")
        self.file.close()
        kept = [line for line in text.splitlines() if line.strip() and not self.CHATTER.match(line)]
        if kept:
            os.write(2, ("\n".join(kept) + "\n").encode())


#: public name: the CLI also wraps the import of a user's file.py target with it
quiet_native_stderr = _quiet_native_stderr


def keras_version(keras: Any) -> tuple[int, ...]:
    parts = []
    for piece in str(getattr(keras, "__version__", "0")).split(".")[:3]:
        digits = re.match(r"\d+", piece)
        if not digits:
            break
        parts.append(int(digits.group()))
    return tuple(parts) or (0,)


def _load(path: str, keras: Any, *, safe_mode: bool, compile: bool = True) -> tuple[Any, list[str]]:
    """`keras.saving.load_model(compile=True)`; when only the compile settings fail to come
    back, the model without them, and a note saying so."""
    notes: list[str] = []
    try:
        model = _load_model(path, keras, safe_mode=safe_mode, compile=compile, notes=notes)
    except UsageFailure:
        raise
    except Exception as exc:  # noqa: BLE001 - classified below
        if _is_safe_mode_refusal(exc):
            raise UsageFailure(f"{path}: Keras refused to load it in safe mode ({_first_line(exc)[:160]}); {TRUST_HINT}") from None
        if not compile:
            raise UsageFailure(f"{path}: cannot be loaded: {_keras_error(exc)}") from None
        notes = []
        try:
            model = _load_model(path, keras, safe_mode=safe_mode, compile=False, notes=notes)
        except Exception:  # noqa: BLE001 - the model itself does not load: report the first error
            raise UsageFailure(f"{path}: cannot be loaded: {_keras_error(exc)}") from None
        notes.append(f"the file's compile settings could not be restored ({_keras_error(exc)}): loaded uncompiled, without its optimizer and loss")
    return model, notes


def _load_model(path: str, keras: Any, *, safe_mode: bool, compile: bool, notes: list[str]) -> Any:
    captured = _Captured()
    loggers = [logging.getLogger(name) for name in ("absl", "keras", "tensorflow")]
    saved = [(lg, lg.propagate, list(lg.handlers)) for lg in loggers]
    for lg in loggers:
        lg.handlers = [captured]
        lg.propagate = False
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            with _quiet_native_stderr():
                model = keras.saving.load_model(path, safe_mode=safe_mode, compile=compile)
    finally:
        for lg, propagate, handlers in saved:
            lg.handlers = handlers
            lg.propagate = propagate
    for message in [str(w.message) for w in caught] + captured.messages:
        note = _note(message)
        if note and note not in notes:
            notes.append(note)
    return model


class _Captured(logging.Handler):
    def __init__(self) -> None:
        super().__init__(logging.WARNING)
        self.messages: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        try:
            self.messages.append(record.getMessage())
        except Exception:  # noqa: BLE001
            pass


def _note(message: str) -> str | None:
    text = " ".join(message.split())
    if not text:
        return None
    counts = re.search(r"Skipping variable loading for optimizer '([^']*)', because it has (\d+) variables whereas the saved optimizer has (\d+)", text)
    if counts:
        if int(counts.group(3)) <= 2:
            return f"the optimizer {counts.group(1)!r} was saved before its first training step (no slot variables in the file): Keras rebuilt it with fresh state"
        return f"the optimizer state in the file does not fit the rebuilt optimizer {counts.group(1)!r} ({counts.group(3)} saved variables, {counts.group(2)} expected): it starts from fresh state"
    if any(k in text for k in ("compiled metrics have yet to be built", "considered legacy", "No training configuration found")):
        return None
    return "keras: " + text[:200]


def _is_safe_mode_refusal(exc: BaseException) -> bool:
    for err in _chain(exc):
        text = str(err)
        if "safe_mode" in text or "unsafe deserialization" in text.lower():
            return True
    return False


def _chain(exc: BaseException) -> list[BaseException]:
    out, seen = [], set()
    while exc is not None and id(exc) not in seen:
        seen.add(id(exc))
        out.append(exc)
        exc = exc.__cause__ or exc.__context__
    return out


def _keras_error(exc: BaseException) -> str:
    """One line for a loading failure: the innermost recognisable cause."""
    for err in reversed(_chain(exc)):
        text = str(err)
        located = re.search(r"Could not locate (class|function) '([^']+)'", text) or re.search(r"Unknown (layer|object|activation|loss|optimizer|metric)[^:]*: '?([\w>.\-]+)'?", text)
        if located:
            return f"custom {located.group(1)} '{located.group(2)}' is not available here (its code is not in the file): audit a file.py:NAME that imports it and loads the model"
    lowered = " ".join(str(exc).split()).lower()
    if any(k in lowered for k in ("truncated file", "unable to open", "unable to synchronously", "bad object header", "file signature not found", "bad zip", "bad crc", "unexpected end of data", "unable to read", "wrong b-tree")):
        return f"the file is truncated or corrupt ({_first_line(exc)[:160]})"
    return f"{type(exc).__name__}: {_first_line(exc)[:200]}".rstrip(": ")


def _first_line(exc: BaseException) -> str:
    lines = [line for line in str(exc).strip().splitlines() if line.strip()]
    return lines[0].strip() if lines else type(exc).__name__
