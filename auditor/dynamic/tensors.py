"""Audits of tensors alone: a state dict has no forward pass, but its tensors still show a
head's size and BatchNorm statistics that are NaN, negative or were never updated.

`StateDictContext` is the context probes with `needs = "tensors"` receive for a state-dict
file; `TorchContext.tensors` offers the same view of a live model, so those probes are
written once for both.
"""

from __future__ import annotations

from typing import Any

BN_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked", "weight", "bias")


class StateDictContext:
    """A state dict (name -> tensor) plus the pipeline's declared facts; nothing to run."""

    framework = "torch"
    has_forward = False
    synthetic = False

    def __init__(self, tensors: dict[str, Any], *, num_classes: int | None = None, pretrained: Any = None, source: str | None = None):
        self.tensors = tensors
        self.num_classes = num_classes
        self.pretrained = pretrained
        self.source = source
        self.labels = None
        self.notes: list[str] = [
            "a state dict has no forward pass: only its tensors were audited (head size, BatchNorm statistics); load it into the model and audit file.py:NAME for the other probes"
        ]

    def restore(self) -> None:
        """Nothing runs, nothing to restore."""


def batchnorm_groups(tensors: dict[str, Any]) -> dict[str, dict[str, Any]]:
    """prefix -> {running_mean, running_var, [num_batches_tracked, weight, bias]} for every
    module in a state dict that carries running statistics (BatchNorm, FrozenBatchNorm2d)."""
    groups: dict[str, dict[str, Any]] = {}
    for name, tensor in tensors.items():
        prefix, _, leaf = name.rpartition(".")
        if leaf == "running_mean" and f"{prefix}.running_var".lstrip(".") in tensors:
            groups[prefix] = {}
    for prefix in groups:
        for leaf in BN_SUFFIXES:
            key = f"{prefix}.{leaf}" if prefix else leaf
            if key in tensors:
                groups[prefix][leaf] = tensors[key]
    return groups


def flatten_state_dict(obj: Any) -> dict[str, Any] | None:
    """The tensors of a checkpoint: a plain state dict, or one nested under a usual key
    ("state_dict", "model", "model_state_dict", "net", "module", "ema"); "module." prefixes
    from DataParallel are stripped. None when `obj` holds no tensors at all."""
    import torch

    if isinstance(obj, dict):
        if obj and all(isinstance(k, str) for k in obj) and all(isinstance(v, torch.Tensor) for v in obj.values()):
            tensors = dict(obj)
        else:
            for key in ("state_dict", "model_state_dict", "model", "net", "module", "ema", "model_ema", "params"):
                inner = obj.get(key)
                if isinstance(inner, dict):
                    found = flatten_state_dict(inner)
                    if found:
                        return found
            tensors = {k: v for k, v in obj.items() if isinstance(k, str) and isinstance(v, torch.Tensor)}
        if not tensors:
            return None
        if all(k.startswith("module.") for k in tensors):
            tensors = {k[len("module."):]: v for k, v in tensors.items()}
        return tensors
    return None
