"""INF101: running the model for inference changes its parameters, buffers or variables."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule

#: at most this many modules are reported one by one; the rest are summed up on "<model>"
MAX_MODULE_FINDINGS = 8


class InferenceMutatesState(DynamicRule):
    """
    ## What it does
    Reports every parameter, buffer or variable that an inference call (PyTorch: eval, no_grad or inference_mode; Keras: `model(x, training=False)`, `predict()`, `model(x)`) changes.

    Runs the model the way inference runs it and reports every parameter, buffer or variable
    that the call changed, compared bit for bit with its value before the call.

    **PyTorch**: `model.eval()` (the model's own `eval()`/`train()` overrides honoured) under
    `torch.no_grad()`, and again under `torch.inference_mode()`.

    **Keras 3**: `model(x, training=False)`, which is the call `predict()` and `evaluate()`
    make (the audit never calls `predict()` itself, because it would trace a `tf.function`),
    and plain `model(x)`, which leaves the training flag to Keras (a layer's `call()` default
    applies). Every variable counts, trainable or not. Seed-generator states (Dropout's,
    and the global generator that `keras.random.*(seed=None)` draws from) are left to
    DET101: a random draw is nondeterminism, not a written weight.

    Typical causes, each named in the finding's `cause`:
    - a BatchNorm layer that runs in training mode at inference. PyTorch: still in training
      mode after `model.eval()` (an overridden `train()`/`eval()` switches it back), or a
      functional `F.batch_norm(..., training=True)`. Keras: a `BatchNormalization` called
      with a literal `training=True` (`self.bn(x, training=True)` in a subclassed model, or
      `base(x, training=True)` in a functional graph, which `model(x)` keeps), a `call()`
      that defaults to `training=True`, or an earlier layer whose `call()` defaults to it
      (`RandomFlip` and the other augmentation layers), or any earlier layer of the same
      call that got `training=True`: Keras 3 keeps the last resolved flag in the call
      context and hands it to every layer called after it that is not given one, even
      inside `model(x, training=False)`.
      The statistics (`running_mean`/`running_var`/`num_batches_tracked`, or
      `moving_mean`/`moving_variance`) move towards the inference data on every call;
    - a custom buffer or variable written in `forward`/`call()`: a call counter, a feature
      cache, an exponential moving average, a calibration observer
      (`self.count.assign_add(1)`, `self.running_mean.assign(...)`);
    - a parameter or weight updated in place (`self.fc.weight.data.mul_(...)`,
      `self.kernel.assign(self.kernel / norm)`: weight normalisation done by hand).

    One finding per module/layer: the target is its first changed tensor (PyTorch
    `bn1.running_mean`, Keras `bn2/moving_mean`: the qualified layer name, then the
    variable), `also_changed` lists the others and `max_abs` is the largest absolute change
    among them. When more than 8 modules change, the first 7 are reported one by one and
    one more finding on `<model>` counts the rest. Python attributes (`self.calls += 1` on
    an int) are not tensors and are not seen here; DET101 sees them when they change outputs.

    ## Why is this bad?
    Inference must be a pure function of the input. `torch.no_grad()` and
    `torch.inference_mode()` only switch off autograd, and `eval()` only flips the
    `training` flags; neither stops code that writes tensors (FRAMEWORK_FACTS §4). Keras has
    no mode at all: what a layer does depends on the `training` value each call resolves
    (explicit argument, then the enclosing call's, then the `call()` default), so one
    hard-coded `True` or one augmentation layer inside the model is enough. A model whose
    predictions change its weights drifts a little with every request: BatchNorm statistics
    forget the training distribution (momentum 0.1 in PyTorch, 0.99 in Keras: each batch
    moves them 10 % or 1 % of the way, §3), a counter changes what later calls compute, and
    two replicas that served different traffic no longer agree. Saving such a model after
    an evaluation loop silently ships the drifted statistics.

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
    Keras:
    ```python
    class FeatureStats(keras.layers.Layer):
        def build(self, shape):
            self.running_mean = self.add_weight(shape=(shape[-1],), initializer="zeros", trainable=False)

        def call(self, x):  # runs in predict() too
            self.running_mean.assign(0.9 * self.running_mean + 0.1 * keras.ops.mean(x, axis=0))
            return x


    class Net(keras.Model):
        def call(self, x, training=None):
            x = self.bn(self.conv(x), training=True)  # "always use batch statistics"
            return self.head(self.stats(self.pool(x)))
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
    Keras:
    ```python
    class FeatureStats(keras.layers.Layer):
        def call(self, x, training=None):
            if training:  # only inside fit()
                self.running_mean.assign(0.9 * self.running_mean + 0.1 * keras.ops.mean(x, axis=0))
            return x


    class Net(keras.Model):
        def call(self, x, training=None):
            x = self.bn(self.conv(x), training=training)  # pass the flag through
            return self.head(self.stats(self.pool(x), training=training))
    ```
    Keep statistics that must adapt (test-time adaptation, EMA teachers) in an explicit
    update step that the inference path never calls. Keep augmentation layers out of the
    served model, or serve with `model(x, training=False)` / `predict()`.

    ## Thresholds
    Any bit that differs is reported (bit-for-bit comparison, NaN == NaN); `max_abs` and
    `changed`/`numel` show how large the change was; `passes` names the calls that changed
    it (`eval+no_grad`, `eval+inference_mode`; Keras `model(x, training=False)`, `model(x)`).
    Costs no pass of its own: it reads the eval and inference passes every audit runs.

    ## References
    - FRAMEWORK_FACTS §3.2: `_BatchNorm` updates `running_mean`/`running_var`/
      `num_batches_tracked` whenever `module.training` and `track_running_stats`
      (`torch/nn/modules/batchnorm.py`).
    - FRAMEWORK_FACTS §3.1: Keras `BatchNormalization` updates `moving_mean`/
      `moving_variance` when `training and self.trainable`
      (`keras/src/layers/normalization/batch_normalization.py`).
    - FRAMEWORK_FACTS §4: `no_grad()`/`inference_mode()` do not set eval mode; Keras call
      modes (explicit argument > enclosing call > `call()` default; `predict()` passes
      `training=False`); custom buffers written in `forward` are detected by diffing the state.
    - Keras: `keras/src/layers/layer.py` (`Layer.__call__` resolves `training` and stores it
      in the call context), `keras/src/layers/preprocessing/image_preprocessing/random_flip.py`
      (`call(self, data, training=True)`).
    - PyTorch docs: `torch.autograd.grad_mode.inference_mode`, `nn.Module.eval`.
    """

    code = "INF101"
    name = "inference-mutates-state"
    category = "inference-mutation"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "an inference pass changes {tensor} ({kind}, {changed} of {numel} values, largest change {max_abs}): {cause}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._inference_probe import EVAL_CALL, PLAIN_CALL, is_batchnorm, lookup, module_order, seed_state_names

        if ctx.framework == "keras":
            passes = [(EVAL_CALL, ctx.eval_pass()), (PLAIN_CALL, ctx.inference_pass())]
        else:
            passes = [("eval+no_grad", ctx.eval_pass()), ("eval+inference_mode", ctx.inference_pass())]
        seeds = seed_state_names(ctx)  # random draws are DET101's: Keras seed-generator states
        by_module: dict[str, dict] = {}
        order: list[str] = []
        for label, record in passes:
            for change in record.changes:
                if change.name in seeds:
                    continue
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
        registered = {name: i for i, name in enumerate(module_order(ctx))}
        order.sort(key=lambda m: registered.get(m, len(registered)))
        shown = order if len(order) <= MAX_MODULE_FINDINGS else order[: MAX_MODULE_FINDINGS - 1]
        causes = _CAUSES[ctx.framework]
        for module_name in shown:
            group = by_module[module_name]
            changes = list(group["changes"].values())
            first = changes[0]
            module = lookup(ctx, module_name)
            training = group["modes"].get(module_name)
            cause, hint = causes(first, training, is_batchnorm(ctx, module), changes)
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
                tensor=f"{len(names)} tensors in {len(rest)} more {'layers' if ctx.framework == 'keras' else 'modules'}",
                kind="variables" if ctx.framework == "keras" else "parameters/buffers",
                changed=sum(c.changed for m in rest for c in by_module[m]["changes"].values()),
                numel=sum(c.numel for m in rest for c in by_module[m]["changes"].values()),
                max_abs=_num(max(c.max_abs for m in rest for c in by_module[m]["changes"].values())),
                cause="same pattern as the modules reported above",
                fix_hint="Fix the modules reported above; the same cause applies to these.",
            )


def _torch_cause(change, training, batchnorm: bool, changes) -> tuple[str, str]:
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


def _keras_cause(change, training, batchnorm: bool, changes) -> tuple[str, str]:
    if batchnorm:
        return (
            "BatchNormalization runs with training=True inside an inference call (training=True "
            "hard-coded where it is called, a call() that defaults to or forces it, or an earlier "
            "layer of the same call that got training=True, e.g. Dropout(x, training=True) or a "
            "RandomFlip, whose value Keras hands on to the layers called after it), so each "
            "inference batch moves its moving statistics",
            "Pass the flag through instead of a literal (self.bn(x, training=training)); call a "
            "frozen base with base(x, training=False) as the Keras transfer-learning guide does.",
        )
    if change.kind == "parameter":
        return (
            "a trainable weight is assign()ed in call()",
            "Do not assign weights in call(); compute a local tensor (w = self.kernel * s) or use a "
            "kernel_constraint, which the optimizer applies after each update.",
        )
    return (
        "a non-trainable variable is assign()ed in call() (counter, running statistic, cache)",
        "Update it only when training is True (if training: self.count.assign_add(1)), or in an "
        "explicit update method; keep per-call values in local tensors.",
    )


_CAUSES = {"torch": _torch_cause, "keras": _keras_cause}


def _num(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.4g}")
