"""The framework-neutral records a pass produces, shared by every framework's context.

Why a module of its own: probes read these records whatever the framework, and the Keras
context must not import torch (`torch_context` does) to build them. Values inside are the
framework's own arrays for PyTorch (tensors) and numpy arrays for Keras; shared probe math
converts them to numpy first (e.g. `rules/_preprocessing_probe.to_numpy`).
"""

from __future__ import annotations

from typing import Any

from auditor.analysis.records import record


@record
class TensorChange:
    """One parameter, buffer or variable that differs bit for bit from the snapshot."""

    name: str
    kind: str  # "parameter" (trainable) or "buffer" (BatchNorm statistics, seed state, ...)
    max_abs: float  # largest absolute change (nan when a value became or stopped being NaN)
    changed: int  # elements that differ
    numel: int
    module: str  # owning module's / layer's qualified name ("" = the root)


@record
class BatchNormObservation:
    """What one BatchNorm layer saw during a pass: per-channel statistics of its input."""

    name: str
    mean: Any  # float64 (C,); None in the train pass (statistics are taken in eval only)
    var: Any  # float64 (C,), population variance; None in the train pass
    count: int  # values per channel
    training: bool  # normalised with batch statistics (torch: module.training; keras: training and trainable)
    tracks: bool  # keeps running statistics (False: batch statistics in every mode)


@record
class ForwardRecord:
    """One pass: the output and what the hooks saw."""

    kind: str
    output: Any  # the primary output (torch: detached tensor; keras: numpy array)
    raw_output: Any
    batchnorm: dict  # name -> BatchNormObservation, in call order
    leaves: list  # names of modules/layers with their own weights, in call order
    head: Any  # name of the last module/layer with weights that ran (None if unknown)
    features: Any  # the head's input, flattened to (N, -1) (None if unknown)
    changes: list  # TensorChange for every parameter/buffer/variable the pass modified
    modes: dict  # module/layer name -> training flag during the pass
