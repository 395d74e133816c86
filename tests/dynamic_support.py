"""Helpers for dynamic-audit tests: load fixture modules, and capture everything `audit()`
promises to restore so a test can compare it bit for bit afterwards."""

from __future__ import annotations

import importlib.util
import random
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
DYNAMIC = ROOT / "fixtures" / "dynamic"


def audit_cli(*args: Any, **kwargs: Any) -> Any:
    """`auditor audit ARGS...` through click's CliRunner (stdout and stderr apart)."""
    from click.testing import CliRunner

    from auditor.cli import main

    return CliRunner().invoke(main, ["audit", *map(str, args)], **kwargs)


def one_line_exit_2(result: Any, *needles: str) -> str:
    """The contract for bad input: exit 2, exactly one `auditor: error:` line on stderr
    holding every needle, no traceback. Returns the line."""
    assert result.exit_code == 2, (result.exit_code, result.output)
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1, result.stderr
    assert "Traceback" not in result.output
    assert lines[0].startswith("auditor: error: ")
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


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
    modes, requires_grad, grads, optimizer state and groups, RNG states. Keras pipelines:
    see capture_keras."""
    if pipeline.framework == "keras":
        return capture_keras(pipeline)
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
    if before.get("framework") == "keras":
        return assert_keras_restored(pipeline, before)
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


# -- Keras ------------------------------------------------------------------------------------
def _keras_layers(model: Any) -> list:
    out, stack, seen = [], [model], set()
    while stack:
        layer = stack.pop()
        if id(layer) in seen:
            continue
        seen.add(id(layer))
        out.append(layer)
        stack.extend(layer._flatten_layers(include_self=False, recursive=False))
    return out


def capture_keras(pipeline: Any) -> dict:
    """Every variable (values, identity, own trainable flag; seed states included), every
    layer's trainable flag, the optimizer's variables (iterations, slots, learning rate) and
    whether it is built, the model's traced functions, and the RNG states."""
    import keras
    import numpy as np

    model = pipeline.model
    optimizers = [o for o in (pipeline.optimizer, getattr(model, "optimizer", None)) if o is not None]
    variables = {id(v): (v, np.array(keras.ops.convert_to_numpy(v), copy=True), bool(v.trainable)) for v in model.variables}
    opt = {}
    for o in optimizers:
        opt[id(o)] = (bool(o.built), [(v.path, np.array(keras.ops.convert_to_numpy(v), copy=True)) for v in o.variables])
    functions = {a: getattr(model, a, None) for a in ("train_function", "test_function", "predict_function")}
    state = {
        "framework": "keras",
        "variables": variables,
        "trainable": [(layer.name, layer, bool(layer.trainable)) for layer in _keras_layers(model)],
        "optimizers": opt,
        "optimizer_objects": optimizers,
        "functions": functions,
        "numpy_rng": np.random.get_state(),
        "python_rng": random.getstate(),
    }
    if keras.config.backend() == "torch":
        import torch

        state["torch_rng"] = torch.get_rng_state().clone()
    return state


def assert_keras_restored(pipeline: Any, before: dict) -> None:
    import numpy as np

    after = capture_keras(pipeline)
    assert before["variables"].keys() == after["variables"].keys(), "variables were added or removed"
    for key, (variable, saved, trainable) in before["variables"].items():
        now_var, now, now_trainable = after["variables"][key]
        assert now_var is variable
        assert now.shape == saved.shape and now.dtype == saved.dtype, variable.path
        assert np.array_equal(np.atleast_1d(now).view(np.uint8), np.atleast_1d(saved).view(np.uint8)), f"{variable.path} changed"
        assert now_trainable == trainable, f"{variable.path}.trainable changed"
    assert [(n, id(l), t) for n, l, t in before["trainable"]] == [(n, id(l), t) for n, l, t in after["trainable"]], "trainable flags changed"
    for key, (built, values) in before["optimizers"].items():
        now_built, now_values = after["optimizers"][key]
        assert now_built == built, "the optimizer was built by the audit"
        assert [p for p, _ in values] == [p for p, _ in now_values], "optimizer variables added or removed"
        for (path, saved), (_, now) in zip(values, now_values):
            assert np.array_equal(np.atleast_1d(now).view(np.uint8), np.atleast_1d(saved).view(np.uint8)), f"optimizer {path} changed"
    for attr, value in before["functions"].items():
        assert after["functions"][attr] is value, f"model.{attr} was left behind"
    nb, na = before["numpy_rng"], after["numpy_rng"]
    assert nb[0] == na[0] and np.array_equal(nb[1], na[1]) and nb[2:] == na[2:], "numpy RNG changed"
    assert before["python_rng"] == after["python_rng"], "python RNG changed"
    if "torch_rng" in before:
        import torch

        assert torch.equal(before["torch_rng"], after["torch_rng"]), "torch RNG changed"
