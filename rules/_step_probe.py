"""One real optimizer step on the audit sample, measured per layer (LRT101's probe), written
once for PyTorch and Keras.

Imported only inside `probe`. The framework adapters take the step and return plain numbers
per layer (squared norms of the update and of the weights before it); everything after that
(ratios, the momentum adjustment, ordering, the head's feature similarity) is shared numpy
code here:
- PyTorch (`_torch_step`, torch imported inside): `model.train()`, a forward with gradients,
  the loss, `backward()` and `optimizer.step()` on the user's own optimizer. The caller
  restores the snapshot (`ctx.restore()`), which also drops the optimizer state the step
  created (Adam's exp_avg, step counts, momentum buffers) and the `_opt_called` flag an LR
  scheduler's wrapper sets. Memory: no extra copy of the weights; the update is measured
  against the snapshot's pre-step clones (`ctx.state.tensors`), gradients are freed as soon
  as the step is taken.
- Keras (`auditor.dynamic.keras_step`): `model(x, training=True)` under `tf.GradientTape` or
  torch autograd, then `optimizer.apply(grads, variables)`; an unbuilt optimizer steps as a
  clone so the audit never builds the user's. Never `fit`/`train_on_batch`/`compile`.
"""

from __future__ import annotations

import math
from typing import Any

import numpy as np

from auditor.analysis.records import record


@record
class LayerUpdate:
    name: str
    ratio: float  # ||dw|| / ||w|| over the module's own updated parameters (momentum-adjusted)
    measured: float  # the raw one-step ratio
    group: int  # param group index of the module's (first) parameter (Keras: always 0)
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
    framework: str = "torch"
    note: str = ""  # how the step differs from the user's training step (Keras: a clone of the optimizer)


@record
class _Raw:
    """What a framework adapter measured: per layer (name, group, ||dw||^2, ||w||^2, is_head)."""

    layers: list
    lrs: dict  # group -> learning rate
    factors: dict  # group -> momentum factor
    head_name: Any
    optimizer: str
    loss: float
    loss_name: str
    targets: str
    features_after: Any  # callable -> numpy (N, -1) or None
    note: str = ""


class Skip(Exception):
    """The step cannot be taken meaningfully: the message goes to the report's notes."""


def momentum_factor(momentum: float, dampening: float = 0.0, nesterov: bool = False) -> float:
    """Steady-state step / first step of SGD with momentum under consistent gradients. Both
    frameworks start the momentum buffer at the first gradient (PyTorch: buf = g; Keras:
    m = -lr g), so the first step is lr g ((1 + momentum) lr g with Nesterov), every later one
    up to lr g (1 - dampening) / (1 - momentum) (Nesterov: lr g / (1 - momentum))."""
    if not 0 < momentum < 1:
        return 1.0
    if nesterov:
        return (1.0 + momentum * (1.0 - dampening) / (1.0 - momentum)) / (1.0 + momentum)
    return (1.0 - dampening) / (1.0 - momentum)


def looks_untrained(ctx: Any) -> bool:
    """True when every BatchNorm still holds its initial statistics (mean 0, var 1, no batches
    tracked): a freshly constructed network, not pretrained weights. Without BatchNorm: False."""
    if getattr(ctx, "framework", "torch") == "keras":
        from auditor.dynamic.keras_step import looks_untrained as keras_untrained

        return keras_untrained(ctx)
    import torch

    from ._batchnorm_probe import is_initial

    layers = [m for m in ctx.model.modules() if isinstance(m, torch.nn.modules.batchnorm._BatchNorm) and m.running_mean is not None]
    return bool(layers) and all(is_initial(m) for m in layers)


def take_step(ctx: Any, *, feature_threshold: float) -> StepResult:
    """One real step, then the per-layer update ratios. The head's input is measured again (one
    eval forward) only when the worst pretrained layer reaches `feature_threshold`. Leaves the
    model stepped: the caller restores."""
    raw = _keras_step(ctx) if getattr(ctx, "framework", "torch") == "keras" else _torch_step(ctx)
    layers, head = [], None
    for name, group, dsq, wsq, is_head in raw.layers:
        if wsq <= 1e-24:
            continue  # an all-zero tensor has no scale to compare with
        measured = math.sqrt(dsq / wsq)
        update = LayerUpdate(name, measured * raw.factors.get(group, 1.0), measured, group, float(raw.lrs.get(group, float("nan"))))
        if is_head:
            head = update
        else:
            layers.append(update)
    layers.sort(key=lambda u: -u.ratio)

    cosine = cosine_min = None
    before = ctx.eval_pass().features
    if layers and layers[0].ratio >= feature_threshold and raw.features_after is not None and before is not None:
        after = raw.features_after()
        cosine, cosine_min = feature_similarity(before, after)
    framework = getattr(ctx, "framework", "torch")
    return StepResult(layers, head, raw.head_name, raw.optimizer, raw.loss, raw.loss_name, raw.targets, raw.factors,
                      cosine, cosine_min, framework, raw.note)


def feature_similarity(before: Any, after: Any) -> tuple[Any, Any]:
    """(mean, min) cosine similarity per sample of two (N, -1) feature matrices."""
    from ._head_probe import to_numpy

    a, b = to_numpy(before), to_numpy(after)
    if a is None or b is None or a.shape != b.shape:
        return None, None
    a, b = a.astype(np.float64), b.astype(np.float64)
    norms = np.maximum(np.linalg.norm(a, axis=1), 1e-12) * np.maximum(np.linalg.norm(b, axis=1), 1e-12)
    cos = (a * b).sum(axis=1) / norms
    return float(cos.mean()), float(cos.min())


# -- Keras ---------------------------------------------------------------------------------------
def _keras_step(ctx: Any) -> _Raw:
    from auditor.dynamic import keras_step

    from ._head_probe import primary_loss

    targets, how, from_logits = _keras_targets(ctx)
    try:
        step = keras_step.take_step(ctx, loss=primary_loss(ctx.loss), targets=targets, default_from_logits=from_logits)
    except keras_step.StepSkipped as skip:
        raise Skip(str(skip)) from skip
    factor = 1.0 if step.resumed else momentum_factor(step.momentum, 0.0, step.nesterov)
    note = step.optimizer_note
    if getattr(ctx, "optimizer_source", None) == "model.compile()":
        note = "the optimizer model.compile() stored" + (f"; {note}" if note else "")
    layers = [(name, 0, dsq, wsq, is_head) for name, dsq, wsq, is_head in step.updates]
    return _Raw(layers, {0: step.lr}, {0: factor}, step.head, step.optimizer, step.loss, step.loss_name, how,
                step.features_after, note)


def _keras_targets(ctx: Any) -> tuple[np.ndarray, str, bool]:
    """(targets in the form the loss takes, "labels" / "own predictions", from_logits for the
    default loss). Integer labels are one-hot encoded for a categorical (one-hot) loss and
    one-hot labels turned into ids for a sparse one, so the step measures the learning rate
    even where HED101 reports the labels' encoding."""
    from ._head_probe import labels_kind, loss_spec, output_kind

    output = ctx.eval_pass().output
    kind = output_kind(ctx, output)
    from_logits = kind.kind not in ("softmax", "sigmoid")
    spec = loss_spec(ctx.loss, "keras")
    units = kind.units
    if ctx.labels is not None:
        labels = np.asarray(ctx.labels)
        found = labels_kind(labels)
        if spec is not None and found is not None and units:
            if spec.targets == "one_hot" and found.kind == "sparse" and found.high is not None and 0 <= found.low and found.high < units:
                return np.eye(units, dtype=np.float32)[labels.reshape(-1).astype(np.int64)], "labels (one-hot encoded for the loss)", from_logits
            if spec.targets == "sparse" and found.kind == "one_hot" and found.classes == units:
                return labels.argmax(-1), "labels (class ids for the loss)", from_logits
        return labels, "labels", from_logits
    if output is None or np.ndim(output) != 2 or output.shape[1] < 2:
        raise Skip("no labels and the output is not (N, classes): cannot build targets for the step (pass labels)")
    if spec is not None and spec.family == "binary":
        raise Skip("no labels for a binary loss: cannot build targets for the step (pass labels)")
    ids = np.asarray(output).argmax(1)
    if spec is not None and spec.targets == "one_hot":
        return np.eye(output.shape[1], dtype=np.float32)[ids], "own predictions", from_logits
    return ids, "own predictions", from_logits


# -- PyTorch -------------------------------------------------------------------------------------
def _torch_targets(ctx: Any, output: Any) -> tuple[Any, str]:
    import torch

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


def _torch_loss(ctx: Any, output: Any, target: Any) -> tuple[Any, str]:
    import torch

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


def _torch_momentum_factor(optimizer: Any, group: dict, params: list) -> float:
    import torch

    if not isinstance(optimizer, torch.optim.SGD):
        return 1.0
    momentum = float(group.get("momentum", 0.0) or 0.0)
    if any("momentum_buffer" in optimizer.state.get(p, {}) and optimizer.state[p]["momentum_buffer"] is not None for p in params):
        return 1.0  # a resumed optimizer: the measured step already carries momentum
    return momentum_factor(momentum, float(group.get("dampening", 0.0) or 0.0), bool(group.get("nesterov", False)))


def _torch_step(ctx: Any) -> _Raw:
    """model.train(), forward with grad, loss, backward, optimizer.step() on the user's own
    optimizer; squared norms per module against the snapshot's clones."""
    import torch

    from auditor.dynamic.torch_context import primary_output

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
    factors = {i: _torch_momentum_factor(optimizer, g, [p for p in g["params"] if p.requires_grad]) for i, g in enumerate(optimizer.param_groups)}

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
        target, how = _torch_targets(ctx, output)
        loss, loss_name = _torch_loss(ctx, output, target)
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

    layers = []
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
            layers.append((name, group_of[id(own[0])], dsq, wsq, module is head_module))
    lrs = {i: _lr(g) for i, g in enumerate(optimizer.param_groups)}
    features = (lambda: _torch_features_after(ctx, head_module)) if head_module is not None else None
    return _Raw(layers, lrs, factors, head_name, type(optimizer).__name__, loss_value, loss_name, how, features)


def _lr(group: dict) -> float:
    lr = group.get("lr", float("nan"))
    return float(lr.item()) if hasattr(lr, "item") else float(lr)


def _torch_features_after(ctx: Any, head: Any) -> Any:
    """One eval forward of the stepped model, capturing the head's input like the eval pass."""
    import torch

    captured: list = []

    def hook(module: Any, args: tuple) -> None:
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
    return captured[0] if captured else None
