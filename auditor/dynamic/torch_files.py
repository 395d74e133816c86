"""Load a PyTorch model file for `auditor audit` without running anything it carries.

The format is told from the file's first bytes and, for zip archives, from the names in the
zip's central directory (read from the end of the file: a 20 GB checkpoint is not read to
sniff it). Only then is anything deserialised:

| what the file is | how it is loaded | needs --trust |
| --- | --- | --- |
| `torch.save` zip (`data.pkl`) or legacy pickle of tensors (a state dict, possibly nested under `state_dict`/`model`/...) | `torch.load(weights_only=True, map_location="cpu")` | no |
| `torch.save` of a full `nn.Module` or other Python objects | `torch.load(weights_only=False)`: unpickling runs code the file names | yes |
| TorchScript archive (`constants.pkl`, `code/`) | `torch.jit.load(map_location="cpu")`: its code runs on forward | yes |
| `torch.export` archive (`.pt2`) | `torch.export.load(...).module()`: no weights-only mode exists | yes |
| a plain Python pickle (not written by `torch.save`) | `pickle.load` | yes |

Everything else (text, empty, truncated or corrupt files, NumPy/HDF5/safetensors files under
a PyTorch name) ends with one line and exit 2. Tensors saved on a GPU are mapped to the CPU
and the report says so.
"""

from __future__ import annotations

import zipfile
from pathlib import Path
from typing import Any

from auditor.dynamic.file_sniff import HDF5_MAGIC, NUMPY_MAGIC, TRUST_HINT, ZIP_MAGIC, is_pickle, looks_like_text, read_head
from auditor.dynamic.loading import Loaded
from auditor.errors import UsageFailure

LEGACY_MAGIC = b"\x80\x02\x8a\nl\xfc\x9cF\xf9 j\xa8P\x19."  # pickle of torch's legacy magic number


def load_torch_file(path: str, *, trust: bool) -> Loaded:
    """A `Loaded` for a .pt/.pth/.bin/.ckpt/.pt2 file: a state dict becomes a tensors-only
    context; a full module, TorchScript or torch.export program (with `trust`) a Pipeline.
    Raises `UsageFailure` (one line) for anything else."""
    p = Path(path)
    kind, detail = sniff(p)
    if kind == "checkpoint":
        return _checkpoint(path, trust=trust, zipped=True)
    if kind == "legacy":
        return _checkpoint(path, trust=trust, zipped=False)
    if kind == "torchscript":
        if not trust:
            raise UsageFailure(f"{path}: a TorchScript archive: its compiled code runs when the model is called and it cannot be loaded weights-only; {TRUST_HINT}")
        return _torchscript(path)
    if kind == "export":
        if not trust:
            raise UsageFailure(f"{path}: a torch.export archive (.pt2): torch.export.load has no weights-only mode and the archive may carry pickles; {TRUST_HINT}")
        return _exported(path)
    if kind == "pickle":
        if not trust:
            raise UsageFailure(f"{path}: a plain Python pickle, not written by torch.save: loading it would run any code it names; {TRUST_HINT}")
        return _plain_pickle(path)
    raise UsageFailure(f"{path}: {detail}")


def sniff(path: Path) -> tuple[str, str]:
    """(kind, why) from the first bytes and the zip directory; never unpickles.

    kind: checkpoint | torchscript | export | legacy | pickle | unknown."""
    if path.is_dir():
        return "unknown", "a directory, not a PyTorch model file"
    size, head = read_head(path)
    if size == 0:
        return "unknown", "the file is empty"
    if head.startswith(ZIP_MAGIC):
        return _sniff_zip(path)
    if head.startswith(LEGACY_MAGIC):
        return "legacy", ""
    if head.startswith(NUMPY_MAGIC):
        return "unknown", "a NumPy .npy array, not a PyTorch model file (pass arrays with --sample)"
    if head.startswith(HDF5_MAGIC):
        return "unknown", "an HDF5 file (a Keras .h5 model?), not a PyTorch model file"
    if _looks_like_safetensors(head, size):
        return "unknown", "a safetensors file: rename it to .safetensors (auditor audit reads .pt/.pth state dicts; load it into the model and audit file.py:NAME)"
    if is_pickle(head):
        return "pickle", ""
    if looks_like_text(head):
        return "unknown", "a text file, not a PyTorch model file (torch.save writes a zip archive)"
    return "unknown", f"not a PyTorch model file (unrecognised content; first bytes {head[:8].hex()})"


def _sniff_zip(path: Path) -> tuple[str, str]:
    try:
        with zipfile.ZipFile(path) as archive:
            names = archive.namelist()
    except (zipfile.BadZipFile, OSError, ValueError, EOFError) as exc:
        return "unknown", f"a corrupt or truncated zip archive ({exc})"
    leaves = {name.split("/", 1)[1] if "/" in name else name for name in names}
    if "constants.pkl" in leaves or any(leaf.startswith("code/") for leaf in leaves):
        return "torchscript", ""
    if "archive_format" in leaves or any(leaf.startswith("models/") and leaf.endswith(".json") for leaf in leaves):
        return "export", ""
    if "data.pkl" in leaves:
        return "checkpoint", ""
    if any(name.endswith(".npy") for name in names):
        return "unknown", "a NumPy .npz archive, not a PyTorch model file (pass arrays with --sample)"
    shown = ", ".join(sorted(names)[:3]) or "no entries"
    return "unknown", f"a zip archive without data.pkl ({shown}): not written by torch.save"


def _looks_like_safetensors(head: bytes, size: int) -> bool:
    if len(head) < 10:
        return False
    header_len = int.from_bytes(head[:8], "little")
    return 2 <= header_len < size and head[8:9] == b"{"


# -- loaders ------------------------------------------------------------------------------


class _Locations:
    """map_location that keeps every storage on the CPU and remembers where it was saved."""

    def __init__(self) -> None:
        self.seen: set[str] = set()

    def __call__(self, storage: Any, location: str) -> Any:
        self.seen.add(str(location))
        return storage

    def note(self) -> list[str]:
        other = sorted(loc for loc in self.seen if loc != "cpu")
        if not other:
            return []
        return [f"tensors saved on {', '.join(other)} were mapped to the CPU (map_location='cpu'); the audit ran on the CPU"]


def _checkpoint(path: str, *, trust: bool, zipped: bool) -> Loaded:
    import torch

    locations = _Locations()
    try:
        obj = torch.load(path, map_location=locations, weights_only=True, mmap=zipped)
    except Exception as exc:  # noqa: BLE001 - classified below, one line each
        if not _is_unsafe_global(exc):
            raise UsageFailure(f"{path}: cannot be loaded: {_torch_error(exc)}") from None
        names = _unsafe_globals(path) if zipped else []
        what = f" ({', '.join(names[:4])}{', ...' if len(names) > 4 else ''})" if names else ""
        if not trust:
            raise UsageFailure(f"{path}: pickles Python objects beyond tensors{what}, e.g. a whole nn.Module: loading it would run pickled code; {TRUST_HINT}") from None
        locations = _Locations()
        try:
            obj = torch.load(path, map_location=locations, weights_only=False)
        except Exception as exc2:  # noqa: BLE001
            raise UsageFailure(f"{path}: loading with --trust failed: {_unpickle_error(exc2)}") from None
    return _from_object(obj, path, locations.note())


def _from_object(obj: Any, path: str, notes: list[str]) -> Loaded:
    import torch

    from auditor.dynamic.tensors import StateDictContext, flatten_state_dict

    module = obj if isinstance(obj, torch.nn.Module) else _module_inside(obj)
    if module is not None:
        return _pipeline(module, path, notes)
    tensors = flatten_state_dict(obj)
    if not tensors:
        if isinstance(obj, torch.Tensor):
            raise UsageFailure(f"{path}: holds a single tensor of shape {tuple(obj.shape)}, not a state dict (save model.state_dict())")
        raise UsageFailure(f"{path}: holds a {type(obj).__name__} without tensors, not a state dict or a model")
    context = StateDictContext(tensors, source=path)
    context.notes.extend(notes)
    return Loaded(context=context, source=path)


def _module_inside(obj: Any) -> Any:
    """A module stored under a usual key of a checkpoint dict (YOLOv5-style `{"model": nn.Module}`)."""
    import torch

    if isinstance(obj, dict):
        for key in ("model", "ema", "module", "net"):
            if isinstance(obj.get(key), torch.nn.Module):
                return obj[key]
    return None


def _pipeline(model: Any, path: str, notes: list[str]) -> Loaded:
    from auditor.pipeline import Pipeline

    return Loaded(pipeline=Pipeline(model), source=path, notes=notes)


def _torchscript(path: str) -> Loaded:
    import torch

    try:
        model = torch.jit.load(path, map_location="cpu")
    except Exception as exc:  # noqa: BLE001
        raise UsageFailure(f"{path}: torch.jit.load failed: {_torch_error(exc)}") from None
    return _pipeline(model, path, ["the TorchScript model was loaded with map_location='cpu'; the audit ran on the CPU"])


def _exported(path: str) -> Loaded:
    import torch

    try:
        program = torch.export.load(path)
        model = program.module()
    except Exception as exc:  # noqa: BLE001
        raise UsageFailure(f"{path}: torch.export.load failed: {_torch_error(exc)}") from None
    _allow_train_eval(model)
    return _pipeline(model, path, ["a torch.export program: its train/eval behaviour is the one captured at export time"])


def _allow_train_eval(model: Any) -> None:
    """`ExportedProgram.module()` makes train()/eval() raise; the graph is fixed at export time
    either way, so let them only set the flags (the audit's passes call both)."""
    import types

    def train(self: Any, mode: bool = True) -> Any:
        for module in self.modules():
            module.training = mode
        return self

    model.train = types.MethodType(train, model)
    model.eval = types.MethodType(lambda self: self.train(False), model)


def _plain_pickle(path: str) -> Loaded:
    import pickle

    try:
        with open(path, "rb") as fh:
            obj = pickle.load(fh)  # noqa: S301 - the user passed --trust
    except Exception as exc:  # noqa: BLE001
        raise UsageFailure(f"{path}: loading with --trust failed: {_unpickle_error(exc)}") from None
    return _from_object(obj, path, [])


# -- errors -------------------------------------------------------------------------------


def _is_unsafe_global(exc: BaseException) -> bool:
    import pickle

    text = str(exc)
    return isinstance(exc, pickle.UnpicklingError) and ("Unsupported global" in text or "WeightsUnpickler" in text or "weights_only" in text.lower())


def _unsafe_globals(path: str) -> list[str]:
    try:
        import torch

        return list(torch.serialization.get_unsafe_globals_in_checkpoint(path))
    except Exception:  # noqa: BLE001 - only for the message
        return []


def _torch_error(exc: BaseException) -> str:
    text = " ".join(str(exc).split())
    lowered = text.lower()
    if "failed finding central directory" in lowered or "failed reading zip archive" in lowered or "unexpected eof" in lowered or isinstance(exc, EOFError):
        return "the archive is truncated or corrupt"
    if "invalid magic number" in lowered:
        return "not a PyTorch checkpoint (invalid magic number)"
    if "cuda" in lowered and ("not available" in lowered or "device" in lowered):
        return f"a device it needs cannot be used here: {text[:160]}"
    first = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {first[0][:200] if first else ''}".rstrip(": ")


def _unpickle_error(exc: BaseException) -> str:
    if isinstance(exc, (AttributeError, ModuleNotFoundError, ImportError)):
        return f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''} (the class the file pickles must be importable: run from the project that defines it, or audit file.py:NAME)"
    return _torch_error(exc)
