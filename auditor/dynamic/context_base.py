"""What every framework's audit context shares: memoised measurements, the synthetic-input
size of a family, the reference preparation of synthetic images, and the shape/dtype words
of one-line errors. numpy only, so the Keras context never imports torch through it."""

from __future__ import annotations

from typing import Any, Callable


class MemoisedContext:
    """Each measurement runs at most once per audit: five probes that each ran their own
    passes would cost a dozen forward passes or more; the budget is about eight."""

    _memo: dict

    def inputs(self) -> Any:
        """The model input (memoised): the preprocessed sample."""
        if "inputs" not in self._memo:
            self._memo["inputs"] = self.preprocessed()  # type: ignore[attr-defined]
        return self._memo["inputs"]

    def _memoised(self, key: str, compute: Callable[[], Any]) -> Any:
        if key not in self._memo:
            self._memo[key] = compute()
        return self._memo[key]

    def memo(self, key: str, compute: Callable[[], Any]) -> Any:
        """Share any other measurement between probes (computed once per audit)."""
        return self._memoised("user:" + key, compute)

    def restore(self) -> None:
        self.state.restore()  # type: ignore[attr-defined]


def family_input_size(pretrained: Any) -> int:
    """The input size a family's weights were trained at (Inception and Xception: 299)."""
    text = str(pretrained or "").lower()
    if any(k in text for k in ("inception", "xception")):
        return 299
    return 224


def reference_images(images: Any, pretrained: Any) -> Any:
    """Synthetic uint8 images (N, H, W, C) prepared the way the pretrained family expects
    (ImageNet normalisation when the family is unknown), as float32 NHWC."""
    import numpy as np

    from auditor.dynamic.reference import reference_spec
    from auditor.knowledge import IMAGENET_MEAN, IMAGENET_STD

    spec = reference_spec(pretrained) if pretrained else None
    if spec is not None:
        return np.ascontiguousarray(spec.apply(images)).astype(np.float32)
    channels = images.shape[-1]
    mean = np.array((IMAGENET_MEAN * 2)[:channels])
    std = np.array((IMAGENET_STD * 2)[:channels])
    return ((images / 255.0 - mean) / std).astype(np.float32)


def synthetic_note(what: str, fed_to: str = "the model") -> str:
    """The report note that says the sample was made up, and what that costs."""
    return f"no sample given: a deterministic synthetic batch of {what} was fed to {fed_to}; verdicts that depend on real data have lower confidence (pass --sample)"


def prepared_with(pretrained: Any) -> str:
    """How `reference_images` prepared the synthetic images, in words for that note."""
    return f"the reference preprocessing of {pretrained}" if pretrained else "ImageNet normalisation"


def output_array(value: Any) -> Any:
    """A pass's primary output as a numpy array (None when it is not an array or tensor).
    Keras records already hold numpy; a torch tensor is detached and copied to the host
    (bfloat16 widened to float32, exactly). torch is read from sys.modules, never imported."""
    import sys

    import numpy as np

    if value is None:
        return None
    if isinstance(value, np.ndarray):
        return value
    torch = sys.modules.get("torch")
    if torch is not None and isinstance(value, torch.Tensor):
        t = value.detach()
        if t.dtype == torch.bfloat16:
            t = t.float()
        return t.cpu().numpy()
    return None


def shape_text(value: Any) -> str:
    shape = getattr(value, "shape", None)
    if shape is not None:
        return str(tuple(shape))
    if isinstance(value, dict):
        return "{" + ", ".join(f"{k}: {shape_text(v)}" for k, v in value.items()) + "}"
    if isinstance(value, (list, tuple)):
        return "[" + ", ".join(shape_text(v) for v in value) + "]"
    return type(value).__name__


def dtype_text(value: Any) -> str:
    dtype = getattr(value, "dtype", None)
    return str(dtype).replace("torch.", "") if dtype is not None else ""
