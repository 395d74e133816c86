"""One real optimizer step on the audit sample, measured per layer (LRT101's probe).

Imported only inside `probe` (it imports torch). The step runs on the user's own model and
optimizer; the caller restores the snapshot (`ctx.restore()`) afterwards, which also drops
the optimizer state the step created (Adam's exp_avg, step counts, momentum buffers) and the
`_opt_called` flag an LR scheduler's wrapper sets. Memory: no extra copy of the weights; the
update is measured against the snapshot's pre-step clones (`ctx.state.tensors`), gradients
are freed as soon as the step is taken.
"""

from __future__ import annotations

import math
from typing import Any

import torch

from auditor.analysis.records import record
from auditor.dynamic.torch_context import primary_output


@record
class LayerUpdate:
    name: str
    ratio: float  # ||dw|| / ||w|| over the module's own updated parameters (momentum-adjusted)
    measured: float  # the raw one-step ratio
    group: int  # param group index of the module's (first) parameter
    lr: float


@record
class StepResult:
    layers: list  # LayerUpdate of the pretrained part, worst first
    head: Any  # LayerUpdate of the head or None
    head_name: Any
    optimizer: str
    loss: float
    loss_name: str
    targets: str  # "labels" or "own predictions"
    momentum_factor: dict  # group index -> factor applied to SGD's first step
    cosine: Any  # mean cosine similarity of the head's input before/after (None if not measured)
    cosine_min: Any


class Skip(Exception):
    """The step cannot be taken meaningfully: the message goes to the report's notes."""


def looks_untrained(model: torch.nn.Module) -> bool:
    """True when every BatchNorm still holds its initial statistics (mean 0, var 1, no batches
    tracked): a freshly constructed network, not pretrained weights. Without BatchNorm: False."""
    from ._batchnorm_probe import is_initial

    layers = [m for m in model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    return bool(layers) and all(is_initial(m) for m in layers)


def _targets(ctx: Any, output: torch.Tensor) -> tuple[torch.Tensor, str]:
    if ctx.labels is not None:
        target = torch.as_tensor(ctx.labels)
        if target.is_floating_point():
            target = target.to(output.dtype)
        elif target.dtype != torch.long and target.dtype != torch.bool:
            target = target.long()
        return target.to(output.device), "labels"
    reference = ctx.eval_pass().output
    if reference is None or reference.dim() != 2 or reference.shape[1] < 2:
        raise Skip("no labels and the output is not (N, classes): cannot build targets for the step (pass labels)")
    return reference.argmax(1).to(output.device), "own predictions"


def _loss(ctx: Any, output: torch.Tensor, target: torch.Tensor) -> tuple[torch.Tensor, str]:
    loss_fn = ctx.loss
    if loss_fn is None:
        if output.dim() != 2 or output.shape[1] < 2 or target.is_floating_point():
            raise Skip("no loss given and the output is not class logits: pass the loss to measure a step")
        loss_fn = torch.nn.CrossEntropyLoss()
    if not callable(loss_fn):
        raise Skip(f"the loss {loss_fn!r} is not callable")
    try:
        loss = loss_fn(output, target)
    except Exception as exc:  # noqa: BLE001 - the user's loss does not take these targets
        raise Skip(f"the loss failed on the sample: {type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}") from exc
    if not isinstance(loss, torch.Tensor) or not loss.requires_grad:
        raise Skip("the loss is not a differentiable tensor")
    if loss.dim() > 0:
        loss = loss.mean()
    name = type(loss_fn).__name__ if not hasattr(loss_fn, "__name__") else loss_fn.__name__
    return loss, name


def _momentum_factor(optimizer: Any, group: dict, params: list) -> float:
    """SGD with momentum starts its buffer at the first gradient: the first step moves lr*g,
    every later one (consistent gradients) up to lr*g*(1-dampening)/(1-momentum)."""
    if not isinstance(optimizer, torch.optim.SGD):
        return 1.0
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if momentum <= 0 or momentum >= 1:
        return 1.0
    if any("momentum_buffer" in optimizer.state.get(p, {}) and optimizer.state[p]["momentum_buffer"] is not None for p in params):
        return 1.0  # a resumed optimizer: the measured step already carries momentum
    dampening = float(group.get("dampening", 0.0) or 0.0)
    return (1.0 - dampening) / (1.0 - momentum)


def take_step(ctx: Any, *, feature_threshold: float) -> StepResult:
    """One real step (model.train(), forward with grad, loss, backward, optimizer.step()),
    then the per-layer update ratios. The head's input is measured again (one eval forward)
    only when the worst pretrained layer reaches `feature_threshold`. Leaves the model
    stepped: the caller restores."""
    model, optimizer = ctx.model, ctx.optimizer
    record_ = ctx.eval_pass()
    head_name = record_.head
    head_module = ctx.module(head_name) if head_name is not None else None
    head_ids = {id(p) for p in head_module.parameters()} if head_module is not None else set()
    saved = ctx.state.tensors
    group_of: dict[int, int] = {}
    for index, group in enumerate(optimizer.param_groups):
        for p in group["params"]:
            group_of.setdefault(id(p), index)
    stepped = [p for p in model.parameters() if id(p) in group_of and p.requires_grad]
    if not any(id(p) not in head_ids for p in stepped):
        raise Skip("only the head is trained: no pretrained weights move")
    factors = {i: _momentum_factor(optimizer, g, [p for p in g["params"] if p.requires_grad]) for i, g in enumerate(optimizer.param_groups)}

    # gradients only where the optimizer steps (a frozen-by-omission backbone costs no backward)
    for p in model.parameters():
        p.grad = None
        if id(p) not in group_of and p.requires_grad:
            p.requires_grad_(False)
    for group in optimizer.param_groups:
        for p in group["params"]:
            p.grad = None
    model.train()
    inputs = ctx.inputs()
    with torch.enable_grad():
        output = primary_output(ctx.call(inputs))
        if output is None or not output.requires_grad:
            raise Skip("the model's output does not depend on the optimizer's parameters")
        target, how = _targets(ctx, output)
        loss, loss_name = _loss(ctx, output, target)
        loss_value = float(loss.detach())
        loss.backward()
    del output, loss
    try:
        optimizer.step()
    except TypeError as exc:  # LBFGS and friends need a closure
        raise Skip(f"{type(optimizer).__name__}.step() needs arguments ({exc}): not measured") from exc
    for group in optimizer.param_groups:  # measured: free them now (the snapshot restores the user's)
        for p in group["params"]:
            p.grad = None
    for p in model.parameters():
        p.grad = None

    layers, head = [], None
    with torch.no_grad():
        for name, module in model.named_modules():
            own = [p for p in module._parameters.values() if p is not None and id(p) in group_of and id(p) in saved and saved[id(p)][2]]
            if not own:
                continue
            dsq = wsq = 0.0
            for p in own:
                before = saved[id(p)][1]
                if not p.is_floating_point():
                    continue
                dsq += float(torch.linalg.vector_norm(p.detach() - before, dtype=torch.float64)) ** 2
                wsq += float(torch.linalg.vector_norm(before, dtype=torch.float64)) ** 2
            if wsq <= 1e-24:
                continue  # an all-zero tensor has no scale to compare with
            group = group_of[id(own[0])]
            measured = math.sqrt(dsq / wsq)
            update = LayerUpdate(name, measured * factors[group], measured, group, float(_lr(optimizer.param_groups[group])))
            if module is head_module:
                head = update
            else:
                layers.append(update)
    layers.sort(key=lambda u: -u.ratio)

    cosine = cosine_min = None
    if layers and layers[0].ratio >= feature_threshold and head_module is not None and record_.features is not None:
        cosine, cosine_min = _feature_similarity(ctx, head_module, record_.features)
    name = type(optimizer).__name__
    return StepResult(layers, head, head_name, name, loss_value, loss_name, how, factors, cosine, cosine_min)


def _lr(group: dict) -> float:
    lr = group.get("lr", float("nan"))
    return float(lr.item()) if isinstance(lr, torch.Tensor) else float(lr)


def _feature_similarity(ctx: Any, head: torch.nn.Module, before: torch.Tensor) -> tuple[float, float]:
    """One eval forward of the stepped model, capturing the head's input like the eval pass."""
    captured: list[torch.Tensor] = []

    def hook(module: torch.nn.Module, args: tuple) -> None:
        if args and isinstance(args[0], torch.Tensor):
            x = args[0].detach()
            captured.clear()
            captured.append(x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1))

    # only the weight update: the train-mode step also moved BatchNorm statistics (the
    # BatchNorm rules judge those), put the buffers back so the cosine isolates the weights
    with torch.no_grad():
        for key, (tensor, saved, _rg, _grad) in ctx.state.tensors.items():
            if ctx.state.names[key][1] == "buffer" and tensor.shape == saved.shape and tensor.dtype == saved.dtype:
                tensor.copy_(saved)
    handle = head.register_forward_pre_hook(hook)
    try:
        ctx.model.eval()
        with torch.no_grad():
            ctx.call(ctx.inputs())
    finally:
        handle.remove()
    if not captured or captured[0].shape != before.shape:
        return None, None
    cos = torch.nn.functional.cosine_similarity(before.double(), captured[0].double(), dim=1, eps=1e-12)
    return float(cos.mean()), float(cos.min())
