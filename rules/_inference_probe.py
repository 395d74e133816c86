"""Shared measurements of INF101, INF102, DET101 and HED104 (PyTorch; imported inside `probe`).

`CallTracer` attaches forward pre-hooks and hooks to every module for one pass and keeps, per
module call in call order (post-order: a child finishes before its parent), a cheap
fingerprint of its first input and primary output instead of the activations themselves, the
name of the enclosing module that was running when the call started, and whether the values
are finite. Two tracers of two passes are compared call by call to find the first module whose
output differs while its input does not (the module that introduced the difference) or, when
the input already differs, the enclosing module whose own forward code (functional calls
between submodules) did it.
"""

from __future__ import annotations

from typing import Any

import torch

from auditor.dynamic.torch_context import primary_output, reseed
from auditor.dynamic.torch_state import _bits

ROOT = "<model>"


def display(name: str) -> str:
    return name if name else ROOT


def fingerprint(value: Any, weights: dict | None = None) -> tuple | None:
    """(shape, dtype, position-weighted hash of the bits, non-finite count): equal
    fingerprints mean equal tensors for every practical purpose (a permutation or one flipped
    bit changes the hash); costs one elementwise product and a sum, no copy is kept."""
    t = value if isinstance(value, torch.Tensor) else primary_output(value)
    if not isinstance(t, torch.Tensor):
        return None
    t = t.detach()
    bits = _bits(t).reshape(-1).to(torch.int64)
    key = (bits.numel(), str(bits.device))
    w = weights.get(key) if weights is not None else None
    if w is None:
        w = torch.arange(bits.numel(), device=bits.device, dtype=torch.int64) % 1_000_003 + 1
        if weights is not None:
            weights[key] = w
    digest = int((bits * w).sum())  # int64 wraps around: still a deterministic digest
    nonfinite = int((~torch.isfinite(t)).sum()) if t.is_floating_point() or t.is_complex() else 0
    return (tuple(t.shape), str(t.dtype), digest, nonfinite)


class Call:
    __slots__ = ("name", "kind", "parent", "inp", "out")

    def __init__(self, name: str, kind: str, parent: str | None, inp: tuple | None, out: tuple | None):
        self.name, self.kind, self.parent, self.inp, self.out = name, kind, parent, inp, out


class CallTracer:
    """Hooks for one pass; `calls` in completion order. Use as a context manager around
    `ctx.run(..., hooks=False)` (the context's own recorder is not needed)."""

    def __init__(self, model: torch.nn.Module):
        self.model = model
        self.calls: list[Call] = []
        self.stack: list[tuple[str, tuple | None]] = []
        self.handles: list[Any] = []
        self.model_input: tuple | None = None
        self.weights: dict = {}  # position weights per (numel, device), shared by all calls

    def __enter__(self) -> "CallTracer":
        for name, module in self.model.named_modules():
            self.handles.append(module.register_forward_pre_hook(self._pre(name)))
            self.handles.append(module.register_forward_hook(self._post(name, type(module).__name__)))
        return self

    def __exit__(self, *exc: Any) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()
        self.weights.clear()

    def _pre(self, name: str):
        def hook(module, args):
            inp = fingerprint(args[0], self.weights) if args else None
            if not self.stack and self.model_input is None:
                self.model_input = inp
            self.stack.append((name, inp))

        return hook

    def _post(self, name: str, kind: str):
        def hook(module, args, output):
            inp = None
            if self.stack and self.stack[-1][0] == name:
                inp = self.stack.pop()[1]
            parent = self.stack[-1][0] if self.stack else None
            self.calls.append(Call(name, kind, parent, inp, fingerprint(output, self.weights)))

        return hook


def traced(ctx: Any, kind: str, *, seed: int | None = None, grad: str = "no_grad") -> tuple[Any, CallTracer | None]:
    """One eval-mode pass through `ctx.run` with a CallTracer attached (none for TorchScript,
    which has no Python hooks). `seed`: reseed torch (all devices), Python's `random` and
    NumPy's global generator first (the run restores all of them afterwards). Restores."""
    if seed is not None:
        reseed(seed)
    tracer = None if getattr(ctx, "scripted", False) else CallTracer(ctx.model)
    try:
        if tracer is not None:
            with tracer:
                record = ctx.run(kind, mode="eval", grad=grad, hooks=False)
        else:
            record = ctx.run(kind, mode="eval", grad=grad, hooks=False)
    finally:
        ctx.restore()
    return record, tracer


def first_divergence(a: CallTracer | None, b: CallTracer | None) -> tuple[str | None, str]:
    """(target module, how) of the first call whose output differs between two traced passes.
    The call's own module when its input is identical; its enclosing module when the input
    already differs (the difference came from functional code in the parent's forward)."""
    if a is None or b is None:
        return None, "not localised (TorchScript modules take no Python hooks)"
    for x, y in zip(a.calls, b.calls):
        if x.name != y.name:
            return display(x.parent or ""), f"control flow differs: {display(x.name)} vs {display(y.name)} were called"
        if x.out == y.out:
            continue
        if x.inp == y.inp:
            return display(x.name), f"{display(x.name)} ({x.kind}) gives different outputs for the same input"
        parent = x.parent if x.parent is not None else ""
        return display(parent), f"the input of {display(x.name)} ({x.kind}) already differs: the difference comes from code in the forward of {display(parent)} outside its submodules"
    if len(a.calls) != len(b.calls):
        return ROOT, "the passes called different numbers of modules"
    return None, "no module output differs"


def first_nonfinite(tracer: CallTracer | None) -> tuple[str | None, str, bool]:
    """(target, how, input_nonfinite) for the first call whose output holds NaN/inf."""
    if tracer is None:
        return None, "not localised (TorchScript modules take no Python hooks)", False
    if tracer.model_input is not None and tracer.model_input[3] > 0:
        return None, "the model input already holds non-finite values", True
    for call in tracer.calls:
        if call.out is None or call.out[3] == 0:
            continue
        if call.inp is None or call.inp[3] == 0:
            return display(call.name), f"{display(call.name)} ({call.kind}) turns a finite input into non-finite values", False
        parent = call.parent if call.parent is not None else ""
        return display(parent), f"the input of {display(call.name)} ({call.kind}) is already non-finite: produced by code in the forward of {display(parent)} outside its submodules", False
    return None, "no module output is non-finite", False


def max_abs_diff(a: torch.Tensor, b: torch.Tensor) -> tuple[float, float]:
    """(largest absolute difference, that relative to the largest |reference| value); NaN
    when shapes differ. NaN/inf positions count as infinitely different."""
    if a.shape != b.shape:
        return float("nan"), float("nan")
    x, y = a.detach().double(), b.detach().double()
    same = (_bits(a) == _bits(b))
    diff = (x - y).abs()
    diff = torch.where(same, torch.zeros_like(diff), torch.nan_to_num(diff, nan=float("inf")))
    m = float(diff.max()) if diff.numel() else 0.0
    scale = float(y[torch.isfinite(y)].abs().max()) if bool(torch.isfinite(y).any()) else 0.0
    return m, (m / scale if scale > 0 else float("inf") if m > 0 else 0.0)


def class_name(module: torch.nn.Module) -> str:
    """The Python class name, also for TorchScript modules (`original_name`)."""
    if isinstance(module, torch.jit.ScriptModule):
        return str(getattr(module, "original_name", type(module).__name__))
    return type(module).__name__


_DROPOUT = ("Dropout", "Dropout1d", "Dropout2d", "Dropout3d", "AlphaDropout", "FeatureAlphaDropout", "DropPath", "StochasticDepth")


def mode_dependent(module: torch.nn.Module) -> str | None:
    """Why this module behaves differently in train and eval mode, or None."""
    name = class_name(module)
    if isinstance(module, torch.nn.modules.dropout._DropoutNd) or name in _DROPOUT:
        if float(getattr(module, "p", getattr(module, "drop_prob", 1.0)) or 0.0) > 0:
            return "dropout"
        return None
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm) or (name.startswith(("BatchNorm", "SyncBatchNorm")) and hasattr(module, "running_mean")):
        return "batchnorm"
    if isinstance(module, torch.nn.modules.instancenorm._InstanceNorm) and module.track_running_stats:
        return "instancenorm"
    if isinstance(module, torch.nn.RNNBase) and module.dropout > 0 and module.num_layers > 1:
        return "rnn-dropout"
    return None
