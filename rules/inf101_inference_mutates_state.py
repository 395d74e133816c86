"""INF101: running the model for inference changes its parameters or buffers."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule

#: at most this many modules are reported one by one; the rest are summed up on "<model>"
MAX_MODULE_FINDINGS = 8


class InferenceMutatesState(DynamicRule):
    """
    ## What it does
    Reports every parameter or buffer that a forward pass in inference mode (eval, no_grad or inference_mode) changes.

    Runs the model the way inference runs it and reports every parameter or buffer that the
    forward pass changed: `model.eval()` (the model's own `eval()`/`train()` overrides
    honoured) under `torch.no_grad()`, and again under `torch.inference_mode()`. Each tensor
    is compared bit for bit with its value before the pass.

    Typical causes, each named in the finding's `cause`:
    - a BatchNorm layer still in training mode after `model.eval()`, because an overridden
      `train()`/`eval()` switches it back, or a functional `F.batch_norm(...,
      training=True)` writes the running statistics: `running_mean`, `running_var` and
      `num_batches_tracked` move towards the inference data on every call;
    - a custom buffer written in `forward`: a call counter, a feature cache, an
      exponential moving average, a calibration observer;
    - a parameter updated in place in `forward` (`self.fc.weight.data.mul_(...)`, weight
      normalisation done by hand).

    One finding per module: the target is the module's first changed tensor (e.g.
    `bn1.running_mean`), `also_changed` lists the module's other changed tensors and
    `max_abs` is the largest absolute change among them. When more than 8 modules change,
    the first 7 are reported one by one and one more finding on `<model>` counts the rest.
    Python attributes (`self.calls += 1` on an int) are not tensors and are not seen.

    ## Why is this bad?
    Inference must be a pure function of the input. `torch.no_grad()` and
    `torch.inference_mode()` only switch off autograd, and `eval()` only flips the
    `training` flags; neither stops code that writes tensors (FRAMEWORK_FACTS §4). A model
    whose predictions change its weights drifts a little with every request: BatchNorm
    statistics forget the training distribution (momentum 0.1 means each batch moves them
    10 % of the way, §3.2), a counter changes what later calls compute, and two replicas
    that served different traffic no longer agree. Saving such a model after an
    evaluation loop silently ships the drifted statistics.

    ## Example
    ```python
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
            self.fc = nn.Linear(16, 10)
            self.register_buffer("calls", torch.zeros((), dtype=torch.long))

        def train(self, mode=True):
            super().train(mode)
            self.body[1].train()  # "keep BN adapting": also after model.eval()
            return self

        def forward(self, x):
            self.calls += 1
            return self.fc(self.body(x).mean((2, 3)))
    ```

    ## Use instead
    ```python
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.body = nn.Sequential(nn.Conv2d(3, 16, 3), nn.BatchNorm2d(16), nn.ReLU())
            self.fc = nn.Linear(16, 10)

        def forward(self, x):  # eval() reaches every layer; nothing is written
            return self.fc(self.body(x).mean((2, 3)))
    ```
    Keep statistics that must adapt (test-time adaptation, EMA teachers) in an explicit
    update step that the inference path never calls.

    ## Thresholds
    Any bit that differs is reported (bit-for-bit comparison, NaN == NaN); `max_abs` and
    `changed`/`numel` show how large the change was.

    ## References
    - FRAMEWORK_FACTS §3.2: `_BatchNorm` updates `running_mean`/`running_var`/
      `num_batches_tracked` whenever `module.training` and `track_running_stats`
      (`torch/nn/modules/batchnorm.py`).
    - FRAMEWORK_FACTS §4: `no_grad()`/`inference_mode()` do not set eval mode; custom
      buffers written in `forward` are detected by diffing the state.
    - PyTorch docs: `torch.autograd.grad_mode.inference_mode`, `nn.Module.eval`.
    """

    code = "INF101"
    name = "inference-mutates-state"
    category = "inference-mutation"
    severity = Severity.ERROR
    message = "an inference pass changes {tensor} ({kind}, {changed} of {numel} values, largest change {max_abs}): {cause}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        import torch

        from auditor.dynamic.torch_context import is_batchnorm

        passes = [("eval+no_grad", ctx.eval_pass()), ("eval+inference_mode", ctx.inference_pass())]
        by_module: dict[str, dict] = {}
        order: list[str] = []
        for label, record in passes:
            for change in record.changes:
                group = by_module.get(change.module)
                if group is None:
                    group = by_module[change.module] = {"changes": {}, "passes": [], "modes": record.modes}
                    order.append(change.module)
                if change.name not in group["changes"]:
                    group["changes"][change.name] = change
                if label not in group["passes"]:
                    group["passes"].append(label)
        if not order:
            return
        registered = {name: i for i, name in enumerate(n for n, _ in ctx.model.named_modules(remove_duplicate=False))}
        order.sort(key=lambda m: registered.get(m, len(registered)))
        shown = order if len(order) <= MAX_MODULE_FINDINGS else order[: MAX_MODULE_FINDINGS - 1]
        for module_name in shown:
            group = by_module[module_name]
            changes = list(group["changes"].values())
            first = changes[0]
            try:
                module = ctx.module(module_name)
            except AttributeError:
                module = None
            training = group["modes"].get(module_name)
            cause, hint = _cause(module, first, training, is_batchnorm(module) if isinstance(module, torch.nn.Module) else False, changes)
            largest = max((c.max_abs for c in changes), key=lambda v: (v == v, v))
            evidence = {
                "kind": first.kind,
                "max_abs": _num(largest),
                "changed": f"{first.changed}/{first.numel}",
                "passes": ", ".join(group["passes"]),
                "module_training_during_eval": training,
            }
            if len(changes) > 1:
                evidence["also_changed"] = ", ".join(c.name for c in changes[1:])
            evidence["cause"] = cause
            yield self.finding(
                ctx,
                first.name,
                evidence=evidence,
                tensor=first.name,
                kind=first.kind,
                changed=first.changed,
                numel=first.numel,
                max_abs=_num(largest),
                cause=cause,
                fix_hint=hint,
            )
        rest = order[len(shown):]
        if rest:
            names = [c.name for m in rest for c in by_module[m]["changes"].values()]
            yield self.finding(
                ctx,
                "<model>",
                evidence={"modules": len(rest), "tensors": len(names), "first": ", ".join(names[:5])},
                tensor=f"{len(names)} tensors in {len(rest)} more modules",
                kind="parameters/buffers",
                changed=sum(c.changed for m in rest for c in by_module[m]["changes"].values()),
                numel=sum(c.numel for m in rest for c in by_module[m]["changes"].values()),
                max_abs=_num(max(c.max_abs for m in rest for c in by_module[m]["changes"].values())),
                cause="same pattern as the modules reported above",
                fix_hint="Fix the modules reported above; the same cause applies to these.",
            )


def _cause(module, change, training, batchnorm: bool, changes) -> tuple[str, str]:
    stats = any(c.name.endswith(("running_mean", "running_var", "num_batches_tracked")) for c in changes)
    if batchnorm and training:
        return (
            "BatchNorm is still in training mode after model.eval() (an overridden train()/eval() "
            "switches it back), so each inference batch overwrites its running statistics",
            "Let eval() reach this layer: drop the override that calls .train() on it, or freeze the "
            "statistics with track_running_stats=False / FrozenBatchNorm2d if they must never move.",
        )
    if stats:
        return (
            "running statistics written although the layer is in eval mode (F.batch_norm(..., "
            "training=True) or a manual update in forward)",
            "Pass training=self.training to F.batch_norm (or use nn.BatchNorm*d) so eval() stops the update.",
        )
    if change.kind == "parameter":
        return (
            "a parameter is modified in place during forward (e.g. weight.data.mul_())",
            "Do not write parameters in forward; apply the transformation to a local tensor "
            "(w = self.weight * s) or use torch.nn.utils.parametrize.",
        )
    return (
        "a buffer is written in forward (counter, cache, moving average)",
        "Update the buffer only when self.training is True (or in an explicit update method), "
        "or keep per-call values in local variables.",
    )


def _num(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.4g}")
