"""Raw input for the dynamic audit: a user's `--sample FILE.npy|.npz`, or a synthetic batch.

The synthetic batch is deterministic (a private generator with a fixed seed: the user's
global numpy random state is never touched) and shaped like natural photographs: smooth
structure, channels with clearly different means and spreads (R brightest, B darkest), so
that a swapped channel order or a wrong per-channel mean shows up in the statistics.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from auditor.errors import UsageFailure

SAMPLE_KEYS = ("x", "sample", "samples", "images", "image", "inputs", "input", "data", "X")
LABEL_KEYS = ("y", "labels", "label", "targets", "target", "Y")
SYNTHETIC_BATCH = 8
SYNTHETIC_CHANNEL_MEANS = (150.0, 112.0, 78.0)  # R, G, B: distinct so that channel order is visible
SYNTHETIC_CHANNEL_SPREADS = (52.0, 44.0, 36.0)


def load_sample(path: str) -> tuple[Any, Any]:
    """(sample, labels or None) from a .npy or .npz file; never unpickles (allow_pickle=False)."""
    import numpy as np

    p = Path(path)
    if not p.exists():
        raise UsageFailure(f"{path}: sample file not found")
    if p.suffix.lower() not in (".npy", ".npz"):
        raise UsageFailure(f"{path}: a sample must be a .npy or .npz file")
    try:
        with open(p, "rb") as fh:
            head = fh.read(6)
    except OSError as exc:
        raise UsageFailure(f"{path}: cannot read ({exc.strerror or exc})") from None
    if not head.startswith((b"\x93NUMPY", b"PK")):  # numpy would take any other file for a pickle
        raise UsageFailure(f"{path}: not a readable numpy file (no .npy/.npz header{'; the file is empty' if not head else ''})")
    try:
        data = np.load(p, allow_pickle=False)
    except ValueError as exc:
        if "pickle" in str(exc).lower():
            raise UsageFailure(f"{path}: the sample holds pickled Python objects, which are never loaded; save a numeric array") from None
        raise UsageFailure(f"{path}: not a readable numpy file ({exc})") from None
    except (OSError, EOFError) as exc:
        raise UsageFailure(f"{path}: not a readable numpy file ({exc})") from None
    except Exception as exc:  # noqa: BLE001 - zipfile.BadZipFile and friends from a corrupt .npz
        raise UsageFailure(f"{path}: not a readable numpy file ({type(exc).__name__}: {exc})") from None
    if isinstance(data, np.ndarray):
        return _checked(data, path), None
    try:
        keys = list(data.files)
        if not keys:
            raise UsageFailure(f"{path}: the .npz file holds no arrays")
        x_key = next((k for k in SAMPLE_KEYS if k in keys), None)
        y_key = next((k for k in LABEL_KEYS if k in keys), None)
        if x_key is None:
            x_key = next(k for k in keys if k != y_key)
        sample = _checked(data[x_key], f"{path}[{x_key}]")
        labels = data[y_key] if y_key is not None else None
    except UsageFailure:
        raise
    except ValueError as exc:
        if "allow_pickle" in str(exc) or "pickle" in str(exc).lower():
            raise UsageFailure(f"{path}: the sample holds pickled Python objects (an object array), which are never loaded; save a numeric array") from None
        raise UsageFailure(f"{path}: cannot read the arrays (ValueError: {exc})") from None
    except Exception as exc:  # noqa: BLE001 - truncated member inside the zip
        raise UsageFailure(f"{path}: cannot read the arrays ({type(exc).__name__}: {exc})") from None
    if labels is not None and len(labels) != len(sample):
        raise UsageFailure(f"{path}: {len(labels)} labels for {len(sample)} samples")
    return sample, labels


def _checked(array: Any, where: str) -> Any:
    if array.dtype.kind not in "biuf":
        raise UsageFailure(f"{where}: a sample must be a numeric array, got dtype {array.dtype}")
    if array.ndim == 0 or array.shape[0] == 0:
        raise UsageFailure(f"{where}: the sample is empty (shape {array.shape})")
    return array


def synthetic_images(batch: int = SYNTHETIC_BATCH, size: int = 224, channels: int = 3, seed: int = 0) -> Any:
    """uint8 images (N, H, W, C), as an image loader yields them before preprocessing."""
    import numpy as np

    rng = np.random.default_rng(seed)
    yy, xx = np.meshgrid(np.linspace(-1.0, 1.0, size), np.linspace(-1.0, 1.0, size), indexing="ij")
    images = np.empty((batch, size, size, channels), dtype=np.float64)
    for n in range(batch):
        phase = rng.uniform(0, 2 * np.pi, size=3)
        freq = rng.uniform(1.0, 4.0, size=3)
        structure = np.sin(freq[0] * np.pi * xx + phase[0]) * np.cos(freq[1] * np.pi * yy + phase[1])
        structure += 0.5 * np.sin(freq[2] * np.pi * (xx + yy) + phase[2])
        for c in range(channels):
            mean = SYNTHETIC_CHANNEL_MEANS[c % 3]
            spread = SYNTHETIC_CHANNEL_SPREADS[c % 3]
            noise = rng.normal(0.0, 0.35, size=(size, size))
            images[n, :, :, c] = mean + spread * (structure + noise) / 1.2
    return np.clip(images, 0, 255).round().astype(np.uint8)


def synthetic_tensor_like(shape: tuple[int, ...], seed: int = 0) -> Any:
    """float32 standard-normal data for models whose first layer is not an image layer."""
    import numpy as np

    return np.random.default_rng(seed).standard_normal(shape).astype(np.float32)
