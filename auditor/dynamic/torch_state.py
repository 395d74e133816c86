"""Snapshot and bit-for-bit restore of everything a PyTorch probe can touch.

Why a hand-written snapshot and not `state_dict()`: a state dict misses `requires_grad`,
`.grad`, the train/eval flag of every module, tensors replaced by assignment (a probe or a
user's forward may rebind `module.running_mean`), the optimizer's param groups and private
attributes, and the random generators. The audit contract promises all of them back exactly.
Memory: one clone of every parameter and buffer (1x the model's bytes) plus optimizer state.
"""

from __future__ import annotations

import copy
import random
from typing import Any

import torch

from auditor.dynamic.records import TensorChange


def _bits(t: torch.Tensor) -> torch.Tensor:
    """A view whose equality is bit equality (NaN == NaN, -0.0 != 0.0)."""
    t = t.detach()
    if t.is_complex():
        t = torch.view_as_real(t)
    if not t.is_contiguous():
        t = t.contiguous()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.element_size() == 1:
        return t.view(torch.uint8)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def bitwise_equal(a: torch.Tensor, b: torch.Tensor) -> bool:
    if a.shape != b.shape or a.dtype != b.dtype:
        return False
    return bool(torch.equal(_bits(a), _bits(b)))


class TorchState:
    """Everything `audit()` promises to give back, captured once before the first probe."""

    def __init__(self, model: torch.nn.Module, optimizer: Any = None):
        self.model = model
        self.optimizer = optimizer
        self.grad_enabled = torch.is_grad_enabled()
        self.modules = []
        for name, module in model.named_modules(remove_duplicate=False):
            self.modules.append(
                (module, module.training, dict(module._parameters), dict(module._buffers), set(getattr(module, "_non_persistent_buffers_set", ())))
            )
        self.tensors: dict[int, tuple] = {}
        self.names: dict[int, tuple[str, str, str]] = {}
        with torch.no_grad():
            for module_name, module in model.named_modules(remove_duplicate=False):
                for kind, table in (("parameter", module._parameters), ("buffer", module._buffers)):
                    for short, tensor in table.items():
                        if tensor is None or id(tensor) in self.tensors:
                            continue
                        full = f"{module_name}.{short}" if module_name else short
                        grad = tensor.grad.detach().clone() if kind == "parameter" and tensor.grad is not None else None
                        self.tensors[id(tensor)] = (tensor, tensor.detach().clone(), tensor.requires_grad, grad)
                        self.names[id(tensor)] = (full, kind, module_name)
        self.optimizer_state = _capture_optimizer(optimizer) if optimizer is not None else None
        self.rng = _capture_rng()

    # -- restore ---------------------------------------------------------------------------
    def restore(self) -> None:
        """Put everything back: module flags and tensor bindings, values bit for bit,
        requires_grad and grads, optimizer, random generators, grad mode."""
        for module, training, params, buffers, non_persistent in self.modules:
            module.training = training
            if not _same_binding(module._parameters, params):
                module._parameters.clear()
                module._parameters.update(params)
            if not _same_binding(module._buffers, buffers):
                module._buffers.clear()
                module._buffers.update(buffers)
            if hasattr(module, "_non_persistent_buffers_set"):
                module._non_persistent_buffers_set.clear()
                module._non_persistent_buffers_set.update(non_persistent)
        with torch.no_grad():
            for tensor, saved, requires_grad, grad in self.tensors.values():
                if tensor.shape != saved.shape or tensor.dtype != saved.dtype or tensor.device != saved.device:
                    tensor.data = saved.clone()
                else:
                    tensor.copy_(saved)
                if tensor.is_leaf and tensor.requires_grad != requires_grad:
                    tensor.requires_grad_(requires_grad)
                if isinstance(tensor, torch.nn.Parameter) or tensor.grad is not None or grad is not None:
                    tensor.grad = grad.clone() if grad is not None else None
        if self.optimizer_state is not None:
            _restore_optimizer(self.optimizer, self.optimizer_state)
        _restore_rng(self.rng)
        torch.set_grad_enabled(self.grad_enabled)

    # -- diff ------------------------------------------------------------------------------
    def changes(self) -> list[TensorChange]:
        """Every parameter and buffer whose bits differ from the snapshot."""
        out = []
        with torch.no_grad():
            for key, (tensor, saved, _, _) in self.tensors.items():
                if bitwise_equal(tensor, saved):
                    continue
                name, kind, module = self.names[key]
                out.append(_describe_change(name, kind, module, tensor, saved))
        return out

    def training_modules(self) -> list[str]:
        """Modules that were in train mode when the snapshot was taken."""
        names = [name for name, _ in self.model.named_modules(remove_duplicate=False)]
        return [name for name, (_, training, *_r) in zip(names, self.modules) if training]


def _same_binding(current: dict, saved: dict) -> bool:
    """Same names bound to the same tensor objects (identity: tensors' == is elementwise)."""
    return list(current.keys()) == list(saved.keys()) and all(current[k] is v for k, v in saved.items())


def _describe_change(name: str, kind: str, module: str, tensor: torch.Tensor, saved: torch.Tensor) -> TensorChange:
    numel = saved.numel()
    if tensor.shape != saved.shape:
        return TensorChange(name, kind, float("nan"), numel, numel, module)
    a, b = tensor.detach(), saved
    diff_mask = _bits(a) != _bits(b)
    changed = int(diff_mask.sum())
    if a.is_floating_point() or a.is_complex():
        delta = (a.double() - b.double()).abs()
        delta = delta[diff_mask]
        max_abs = float(delta.max()) if delta.numel() else 0.0
    elif a.dtype == torch.bool:
        max_abs = 1.0
    else:
        max_abs = float((a.long() - b.long()).abs().max())
    return TensorChange(name, kind, max_abs, changed, numel, module)


def _clone_value(value: Any) -> Any:
    if isinstance(value, torch.Tensor):
        return value.detach().clone()
    return copy.deepcopy(value)


def _capture_optimizer(optimizer: Any) -> dict:
    state = {param: {k: _clone_value(v) for k, v in entry.items()} for param, entry in optimizer.state.items()}
    groups = [{k: (list(v) if k == "params" else _clone_value(v)) for k, v in group.items()} for group in optimizer.param_groups]
    attributes = {k: v for k, v in vars(optimizer).items() if k not in ("state", "param_groups")}
    return {"state": state, "groups": groups, "group_objects": list(optimizer.param_groups), "attributes": attributes}


def _restore_optimizer(optimizer: Any, saved: dict) -> None:
    optimizer.state.clear()
    for param, entry in saved["state"].items():
        optimizer.state[param] = {k: _clone_value(v) for k, v in entry.items()}
    optimizer.param_groups[:] = saved["group_objects"]
    for group, values in zip(saved["group_objects"], saved["groups"]):
        group.clear()
        group.update({k: (list(v) if k == "params" else _clone_value(v)) for k, v in values.items()})
    current = vars(optimizer)
    for key in [k for k in current if k not in saved["attributes"] and k not in ("state", "param_groups")]:
        delattr(optimizer, key)
    for key, value in saved["attributes"].items():
        if current.get(key, _MISSING) is not value:
            setattr(optimizer, key, value)


_MISSING = object()


def _capture_rng() -> dict:
    import sys

    rng = {"torch": torch.get_rng_state(), "python": random.getstate()}
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        rng["numpy"] = numpy.random.get_state()
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        rng["cuda"] = torch.cuda.get_rng_state_all()
    return rng


def _restore_rng(rng: dict) -> None:
    import sys

    torch.set_rng_state(rng["torch"])
    random.setstate(rng["python"])
    if "numpy" in rng:
        sys.modules["numpy"].random.set_state(rng["numpy"])
    if "cuda" in rng:
        torch.cuda.set_rng_state_all(rng["cuda"])
