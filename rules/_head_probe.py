"""Shared measurements of the head probes HED101-HED104 (imported inside `probe`; torch is
imported lazily here too, so the state-dict path of HED101 stays cheap)."""

from __future__ import annotations

import re
from typing import Any

#: name parts of a classifier's last layer in torchvision / timm / HF / common user code
CLASSIFIER_WORDS = ("fc", "classifier", "head", "heads", "last", "logits", "logit", "out", "output",
                    "cls", "pred", "predictions", "prediction", "linear", "classif", "clf", "score", "final")
_FC = re.compile(r"^(fc|linear|dense|out|head|classifier)\d*$")


def class_dim(output: Any) -> int | None:
    """The class dimension of a classifier output: the last one for (N, C) and (N, T, C),
    dim 1 for dense predictions (N, C, H, W) / (N, C, D, H, W); None for (N,) or scalars."""
    dims = output.dim()
    if dims < 2:
        return None
    return 1 if dims >= 4 else dims - 1


def units(output: Any) -> int | None:
    dim = class_dim(output)
    return None if dim is None else int(output.shape[dim])


def head_name(ctx: Any) -> str:
    head = ctx.eval_pass().head
    return head if head else "<model>"


def looks_like_classifier(name: str) -> bool:
    parts = [p for p in re.split(r"[._]", name.lower()) if p]
    return any(p in CLASSIFIER_WORDS or _FC.match(p) for p in parts)


def state_dict_head(tensors: dict[str, Any]) -> tuple[str, Any] | None:
    """(module prefix, weight) of the classifier in a state dict: the last `*.weight` of
    rank >= 2 in state-dict order (registration order: the head comes last) when it is a
    matrix or a 1x1 convolution and its name looks like a classifier; None otherwise."""
    last = None
    for name, tensor in tensors.items():
        if name.endswith("weight") and getattr(tensor, "dim", lambda: 0)() >= 2:
            last = (name, tensor)
    if last is None:
        return None
    name, weight = last
    if weight.dim() == 4 and tuple(weight.shape[2:]) != (1, 1):
        return None
    if weight.dim() not in (2, 4):
        return None
    prefix = name[: -len("weight")].rstrip(".")
    if not looks_like_classifier(prefix):
        return None
    return prefix or "<model>", weight


def activation(output: Any) -> tuple[str | None, dict]:
    """'softmax', 'log_softmax', 'sigmoid' or None for a float classifier output, with the
    numbers that decided it.

    softmax: >= 2 classes, no negative value, every row sums to 1 within 1e-3.
    log_softmax: >= 2 classes, no positive value, every row's logsumexp is 0 within 1e-3.
    sigmoid: at least 8 values, all in [0, 1], at least half strictly inside (0, 1), at
    most 5 % exact zeros (a ReLU output has many; a sigmoid saturates to 1.0, hardly to 0), and
    not softmax (raw logits of a linear head have negative values).
    """
    import torch

    if not isinstance(output, torch.Tensor) or not output.is_floating_point() or output.numel() == 0:
        return None, {}
    x = output.detach().double()
    if not bool(torch.isfinite(x).all()):
        return None, {}
    dim = class_dim(x)
    lo, hi = float(x.min()), float(x.max())
    info: dict[str, Any] = {"min": round(lo, 4), "max": round(hi, 4)}
    if dim is not None and x.shape[dim] >= 2:
        if lo >= 0:
            dev = float((x.sum(dim) - 1).abs().max())
            if dev <= 1e-3:
                info["row_sum_max_deviation"] = float(f"{dev:.2g}")
                return "softmax", info
        if hi <= 0:
            dev = float(torch.logsumexp(x, dim).abs().max())
            if dev <= 1e-3:
                info["logsumexp_max_deviation"] = float(f"{dev:.2g}")
                return "log_softmax", info
    if x.numel() >= 8 and lo >= 0 and hi <= 1:
        inside = float(((x > 0) & (x < 1)).double().mean())
        zeros = float((x == 0).double().mean())
        if inside >= 0.5 and zeros <= 0.05:
            info["fraction_strictly_inside_0_1"] = round(inside, 3)
            return "sigmoid", info
    return None, info


def loss_kind(loss: Any) -> tuple[str | None, str]:
    """('cross_entropy' | 'bce_with_logits' | 'nll' | 'bce' | None, display name) for a loss
    module, a functional loss, a functools.partial of one, or a name."""
    import functools

    if loss is None:
        return None, ""
    while isinstance(loss, functools.partial):
        loss = loss.func
    if isinstance(loss, str):
        label = loss
    elif isinstance(getattr(loss, "__name__", None), str):  # a function or a class
        label = loss.__name__
    else:  # a loss module instance
        label = type(loss).__name__
    key = re.sub(r"[^a-z]", "", label.lower())
    if key in ("crossentropyloss", "crossentropy", "categoricalcrossentropy", "sparsecategoricalcrossentropy", "ce"):
        return "cross_entropy", label
    if key in ("bcewithlogitsloss", "binarycrossentropywithlogits", "bcewithlogits"):
        return "bce_with_logits", label
    if key in ("nllloss", "nll", "nllloss2d"):
        return "nll", label
    if key in ("bceloss", "binarycrossentropy", "bce"):
        return "bce", label
    return None, label
