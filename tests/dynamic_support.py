"""Helpers for dynamic-audit tests: load fixture modules, and capture everything `audit()`
promises to restore so a test can compare it bit for bit afterwards."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DYNAMIC = ROOT / "fixtures" / "dynamic"


def dynamic_fixtures() -> list[Path]:
    return sorted(p for p in DYNAMIC.rglob("*.py") if p.name.startswith(("bad_", "clean_")))


def load_fixture(path: Path) -> Any:
    name = "dynfix_" + "_".join(path.relative_to(DYNAMIC).with_suffix("").parts)
    spec = importlib.util.spec_from_file_location(name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def expected_pairs(module: Any) -> list[tuple[str, str | None]]:
    expect = getattr(module, "EXPECT", {}) or {}
    return sorted((code, target) for code, targets in expect.items() for target in targets)


def found_pairs(findings) -> list[tuple[str, str | None]]:
    return sorted((f.rule, f.target) for f in findings)


def _bits(t):
    import torch

    t = t.detach().contiguous()
    if t.dtype == torch.bool:
        return t.to(torch.uint8)
    if t.element_size() == 1:
        return t.view(torch.uint8)
    return t.view({2: torch.int16, 4: torch.int32, 8: torch.int64}[t.element_size()])


def capture(pipeline: Any) -> dict:
    """Everything the audit must give back, cloned: tensors by object identity and name,
    modes, requires_grad, grads, optimizer state and groups, RNG states."""
    import numpy as np
    import torch

    model = pipeline.model
    tensors = {}
    for name, t in list(model.named_parameters(remove_duplicate=False)) + list(model.named_buffers(remove_duplicate=False)):
        tensors[name] = (t, t.detach().clone(), t.requires_grad, None if t.grad is None else t.grad.clone())
    opt = pipeline.optimizer
    opt_state = None
    if opt is not None:
        opt_state = {
            "state": {id(p): {k: (v.clone() if isinstance(v, torch.Tensor) else v) for k, v in s.items()} for p, s in opt.state.items()},
            "groups": [{k: (list(map(id, v)) if k == "params" else v) for k, v in g.items()} for g in opt.param_groups],
        }
    return {
        "tensors": tensors,
        "modes": {name: m.training for name, m in model.named_modules(remove_duplicate=False)},
        "optimizer": opt_state,
        "torch_rng": torch.get_rng_state().clone(),
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
        "grad_enabled": torch.is_grad_enabled(),
    }


def assert_restored(pipeline: Any, before: dict) -> None:
    import numpy as np
    import torch

    after = capture(pipeline)
    assert before["tensors"].keys() == after["tensors"].keys()
    for name, (obj, saved, rg, grad) in before["tensors"].items():
        now_obj, now, now_rg, now_grad = after["tensors"][name]
        assert now_obj is obj, f"{name} was rebound"
        assert now.shape == saved.shape and now.dtype == saved.dtype, name
        assert torch.equal(_bits(now), _bits(saved)), f"{name} changed"
        assert now_rg == rg, f"{name}.requires_grad changed"
        assert (grad is None) == (now_grad is None), f"{name}.grad changed"
        if grad is not None:
            assert torch.equal(_bits(grad), _bits(now_grad)), f"{name}.grad changed"
    assert before["modes"] == after["modes"], "train/eval modes changed"
    if before["optimizer"] is not None:
        b, a = before["optimizer"], after["optimizer"]
        assert b["state"].keys() == a["state"].keys(), "optimizer state keys changed"
        for pid, entry in b["state"].items():
            assert entry.keys() == a["state"][pid].keys()
            for key, value in entry.items():
                other = a["state"][pid][key]
                if isinstance(value, torch.Tensor):
                    assert torch.equal(_bits(value), _bits(other)), f"optimizer state {key} changed"
                else:
                    assert value == other
        assert b["groups"] == a["groups"], "optimizer param groups changed"
    assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch RNG changed"
    nb, na = before["numpy_rng"], after["numpy_rng"]
    assert nb[0] == na[0] and np.array_equal(nb[1], na[1]) and nb[2:] == na[2:], "numpy RNG changed"
    assert before["python_rng"] == after["python_rng"], "python RNG changed"
    assert before["grad_enabled"] == after["grad_enabled"]
