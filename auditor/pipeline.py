"""`Pipeline`: what the dynamic audit measures (contract: `from auditor import Pipeline`).

A plain holder, framework-free: constructing one imports nothing, so a user's module can
build pipelines at import time without paying for an auditor-side framework import.
"""

from __future__ import annotations

from typing import Any, Callable


class Pipeline:
    """A model plus what the user feeds it and trains it with.

    Only `model` is required. Every other field sharpens a probe: `sample` gives real data
    (otherwise a deterministic synthetic batch is used), `pretrained` names the family the
    weights came from (so preprocessing can be compared with the reference one), `optimizer`
    and `loss` let the learning-rate probe take a real step.
    """

    def __init__(
        self,
        model: Any,
        preprocess: Callable[[Any], Any] | None = None,
        sample: Any = None,
        labels: Any = None,
        num_classes: int | None = None,
        optimizer: Any = None,
        loss: Any = None,
        pretrained: Any = None,
    ):
        if model is None:
            raise TypeError("Pipeline needs a model")
        if preprocess is not None and not callable(preprocess):
            raise TypeError(f"preprocess must be callable, got {type(preprocess).__name__}")
        if num_classes is not None:
            if isinstance(num_classes, bool) or int(num_classes) != num_classes or num_classes < 1:
                raise ValueError(f"num_classes must be a positive integer, got {num_classes!r}")
            num_classes = int(num_classes)
        self.model = model
        self.preprocess = preprocess
        self.sample = sample
        self.labels = labels
        self.num_classes = num_classes
        self.optimizer = optimizer
        self.loss = loss
        self.pretrained = pretrained

    @property
    def framework(self) -> str | None:
        """"torch" or "keras", read from the model's class hierarchy without importing either."""
        return framework_of(self.model)

    def replace(self, **changes: Any) -> "Pipeline":
        fields = dict(vars(self))
        fields.update(changes)
        return Pipeline(**fields)

    def __repr__(self) -> str:
        parts = [f"model={type(self.model).__name__}"]
        for key in ("preprocess", "sample", "labels", "num_classes", "optimizer", "loss", "pretrained"):
            value = getattr(self, key)
            if value is not None:
                shown = getattr(value, "shape", None)
                parts.append(f"{key}={tuple(shown) if shown is not None else type(value).__name__ if key in ('preprocess', 'optimizer', 'loss') else value!r}")
        return f"Pipeline({', '.join(parts)})"


def framework_of(model: Any) -> str | None:
    """Which framework a model object belongs to, by the modules of its classes (no import)."""
    for klass in type(model).__mro__:
        root = (klass.__module__ or "").split(".", 1)[0]
        if root == "keras" or klass.__module__.startswith(("tensorflow.python.keras", "tf_keras")):
            return "keras"
        if root == "torch":
            return "torch"
    return None
