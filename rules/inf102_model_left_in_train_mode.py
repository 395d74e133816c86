"""INF102: training behaviour reached from inference: a model (or part of it) left in training mode, or a Keras layer running its training path inside an inference call."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ModelLeftInTrainMode(DynamicRule):
    """
    ## What it does
    Flags training behaviour reached from inference: a PyTorch model handed over for inference or export while it, or some of its mode-dependent submodules, is still in training mode; a Keras layer that runs its training path inside `model(x, training=False)`/`predict()` or `model(x)`.

    **PyTorch**: flags a model handed to the audit for inference or export (the pipeline
    has no optimizer) whose root or some submodules are in training mode as given, when that
    mode matters: a Dropout (any `_DropoutNd`, `DropPath`/`StochasticDepth`), a BatchNorm, an
    InstanceNorm with running statistics or a multi-layer RNN with dropout is among the
    training modules, or the model's output measurably changes between `model.train()` and
    `model.eval()` (custom modules that branch on `self.training`). A TorchScript module
    (`torch.jit.script`/`trace`, loaded from a `.pt` archive) saved in training mode is the
    same mistake frozen into a file: whoever runs it gets training behaviour unless they
    call `.eval()` themselves. Target: `<model>` when the root module is in training mode,
    otherwise the first (registration order, so the outermost) training submodule that
    contains a mode-dependent layer. Modules that stay in training mode even after
    `model.eval()` (an overridden `train()`/`eval()`) are left to INF101 and DET101, which
    measure what that does; `model.eval()` would not fix them.

    **Keras 3** has no mode to leave on: each call resolves `training` (explicit argument,
    then the value already in the call context, then the `call()` default), so "train mode
    at inference" is a layer that runs its training path inside an inference call. Both
    calls inference code makes are checked: `model(x, training=False)` (what `predict()` and
    `evaluate()` run) and `model(x)` (serving code; the flag is left to the defaults). A
    layer counts when it has a training path (Dropout and its variants, GaussianNoise,
    GaussianDropout, AlphaDropout, the `Random*` augmentation layers, a trainable
    BatchNormalization, or a custom layer whose `call` takes `training` and owns seed
    generators or non-trainable variables) and, in the call, it drew random numbers, wrote
    its moving statistics, or received `training=True`. Causes, each named in the message:
    - **called with `training=True`**: `self.dropout(x, training=True)` or
      `self.bn(x, training=True)` in a subclassed `call()` (active even in `predict()`), or
      `layers.Dropout(0.3)(x, training=True)` / `base(x, training=True)` in a functional graph
      (Keras replaces a node's flag by the outer call's when one is given, so only `model(x)`
      keeps it). Target: the layer the literal was passed to (a nested model when the whole
      base was called that way); `caller` names the `call()` that passed it;
    - **`call()` defaults to `training=True`**: a Monte-Carlo dropout subclass, or a
      `RandomFlip`/`RandomRotation`/... augmentation layer inside the served model: `model(x)`
      augments the images it classifies;
    - **`call()` ignores the flag**: a subclass that calls `super().call(x, training=True)`.

    Keras 3 keeps the last resolved `training` in the call context and hands it to every
    later layer of the same call that is not given one: a hard-coded `training=True` or an
    augmentation layer also switches the BatchNormalization layers after it to batch
    statistics. Those layers are grouped under the layer that set the flag
    (`inherited_training` in the evidence); INF101 reports the moving statistics they write.

    ## Why is this bad?
    `nn.Module` starts in training mode and `torch.no_grad()`/`torch.inference_mode()` do
    not change that (FRAMEWORK_FACTS §4). In training mode dropout zeroes a fraction `p` of
    the activations at random and scales the rest by `1/(1-p)` (§3.3), so the same input
    gives different predictions; BatchNorm normalises each batch with its own statistics,
    so a prediction depends on the other images in the batch, a batch of one fails or
    degenerates, and the stored statistics are overwritten with the inference data (§3.1,
    §3.2). `max_abs_output_change` in the evidence is the measured difference between the
    training and the inference behaviour on the sample (PyTorch: `model.train()` vs
    `model.eval()`; Keras: `model(x)` vs `model(x, training=False)`).

    ## Example
    ```python
    model = torchvision.models.resnet50(weights="IMAGENET1K_V2")
    model.fc = nn.Linear(2048, 10)
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))
    pipeline = Pipeline(model, preprocess=weights.transforms(), sample=batch)  # still training
    ```
    Keras:
    ```python
    class Net(keras.Model):
        def call(self, x, training=None):
            x = self.pool(self.backbone(x, training=training))
            return self.head(self.dropout(x, training=True))  # "MC dropout", also in predict()

    model = keras.Sequential([keras.Input((224, 224, 3)), layers.RandomFlip("horizontal"), base, head])
    logits = model(images)  # RandomFlip defaults to training=True: flips, and BN after it trains
    ```

    ## Use instead
    ```python
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))
    model.eval()
    pipeline = Pipeline(model, preprocess=weights.transforms(), sample=batch)
    # export: torch.jit.script(model.eval()).save("model.pt")
    ```
    Keras:
    ```python
    class Net(keras.Model):
        def call(self, x, training=None):
            x = self.pool(self.backbone(x, training=training))
            return self.head(self.dropout(x, training=training))  # pass the flag through

    model = keras.Sequential([keras.Input((224, 224, 3)), base, head])  # augment in the input pipeline
    logits = model(images, training=False)  # or model.predict(images)
    ```

    ## Thresholds
    PyTorch: silent when no mode-dependent layer is in training mode and the output of the
    training pass equals the eval pass bit for bit; silent when the pipeline has an
    optimizer (a training pipeline is meant to be in training mode). Keras: any layer with a
    training path that behaves as in training in either call, whatever the optimizer (an
    inference call is an inference call); a frozen BatchNormalization (`trainable=False`)
    always infers and never counts; at most 8 places are reported. Cost: none on a clean
    model (it reads the shared eval and inference passes); one traced pass per call kind
    where something was seen (the `model(x)` one is shared with DET101).

    ## References
    - FRAMEWORK_FACTS §3.2 (BatchNorm in training mode), §3.3 (`nn.Dropout` is active iff
      `self.training`; Keras `Dropout` drops only when `training`), §4 (`no_grad`/
      `inference_mode` do not set eval mode; Keras call modes: `predict()` passes
      `training=False`).
    - FRAMEWORK_FACTS §3.1 (Keras BatchNormalization uses batch statistics and updates them
      when `training and trainable`).
    - Keras: `keras/src/layers/layer.py` (`Layer._resolve_and_populate_arg`: explicit
      argument > call context > `call()` default, and the resolved value is stored in the
      call context for later layers), `keras/src/models/functional.py` (`operation_fn`
      injects the outer call's flag into every node), `keras/src/layers/preprocessing/
      image_preprocessing/random_flip.py` (`call(self, data, training=True)`);
      keras-team/keras issue 20285 (a graph node's `training=False` overridden by `fit()`).
    - PyTorch docs: `nn.Module.eval`, `torch.jit.save` (the module's `training` flag is
      saved with it).
    """

    code = "INF102"
    name = "model-left-in-train-mode"
    category = "inference-mutation"
    severity = Severity.WARNING
    frameworks = ("torch", "keras")
    message = "{what} {state}: {layers} behave as in training"
    fix = "{fix_hint}"

    def probe(self, ctx):
        if ctx.framework == "keras":
            return self._keras(ctx)
        return self._torch(ctx)

    def _report(self, ctx, target: str, what: str, state: str, dependent: dict, head: dict, tail: dict, hint: str):
        """One finding: `dependent` maps each mode-dependent module/layer that behaves as in
        training to why (dropout, batchnorm, ...); evidence is `head`, what behaves as in
        training, then `tail` (the measurements)."""
        evidence = dict(head)
        kinds: dict[str, int] = {}
        for why in dependent.values():
            kinds[why] = kinds.get(why, 0) + 1
        layers = ", ".join(f"{n} {k}" for k, n in kinds.items()) or "layers that branch on self.training"
        evidence["mode_dependent"] = layers
        if dependent:
            names = list(dependent)
            evidence["first"] = ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
        evidence.update(tail)
        return self.finding(ctx, target, evidence=evidence, what=what, state=state, layers=layers, fix_hint=hint)

    def _torch(self, ctx):
        from ._inference_probe import ROOT, max_abs_diff, mode_dependent, outputs_equal, to_array

        if ctx.optimizer is not None:
            return []
        training = ctx.state.training_modules()
        if not training:
            return []
        eval_record = ctx.eval_pass()
        still_training = {name for name, flag in eval_record.modes.items() if flag}
        fixable = [name for name in training if name not in still_training]
        if not fixable:
            return []
        modules = dict(ctx.model.named_modules(remove_duplicate=False))
        dependent = {name: mode_dependent(modules[name]) for name in fixable if name in modules}
        dependent = {name: why for name, why in dependent.items() if why}
        root_training = "" in fixable
        change = None
        if root_training and ctx.inputs() is not None:
            train_out = to_array(ctx.train_pass().output)
            eval_out = to_array(eval_record.output)
            if train_out is not None and eval_out is not None:
                if not outputs_equal(train_out, eval_out):
                    change = max_abs_diff(train_out, eval_out)[0]
                elif not dependent:
                    return []
        if not dependent and change is None:
            return []
        if root_training:
            target = ROOT
        else:
            target = next(
                (name for name in fixable if any(d == name or d.startswith(name + ".") for d in dependent)),
                None,
            )
            if target is None:
                return []
        evidence = {}
        if change is not None:
            evidence["max_abs_output_change"] = float(f"{change:.4g}") if change == change else change
        scripted = bool(getattr(ctx, "scripted", False))
        if scripted:
            evidence["torchscript"] = True
        what = ("the TorchScript model" if scripted else "the model") if root_training else f"submodule {target}"
        script_hint = " (for TorchScript: script or trace after model.eval(), then save)" if scripted else ""
        hint = f"Call model.eval() before inference or export{script_hint}; call model.train() only in the training loop."
        return [self._report(ctx, target, what, "is in training mode but the pipeline has no optimizer (inference/export)", dependent, {"training_modules": len(fixable)}, evidence, hint)]

    def _keras(self, ctx):
        from ._inference_probe import EVAL_CALL, PLAIN_CALL, inference_seed, max_abs_diff, outputs_equal, seed_state_names, to_array, traced, training_reached

        eval_record, inf_record = ctx.eval_pass(), ctx.inference_pass()
        seeds = seed_state_names(ctx)
        layers = dict(ctx.layers())
        # cheap signals from the shared passes; a traced pass only when one of them fires
        eval_signal = any(flag for name, flag in eval_record.modes.items()) or any(
            c.module and c.kind == "buffer" and (c.name not in seeds or seeds[c.name]) for c in eval_record.changes
        )
        eval_out, inf_out = to_array(eval_record.output), to_array(inf_record.output)
        inference_signal = not outputs_equal(eval_out, inf_out) or any(c.module and c.name not in seeds for c in inf_record.changes)
        found: dict[str, object] = {}
        order: list[str] = []
        for signal, call, training, seed in ((eval_signal, EVAL_CALL, False, None), (inference_signal, PLAIN_CALL, None, "inference")):
            if not signal:
                continue
            if seed is None:
                _, tracer = traced(ctx, "training-false", training=False, share=True)
            else:  # the same pass DET101 traces first (shared)
                _, tracer = traced(ctx, "reseeded", seed=inference_seed(ctx), training=None, share=True)
            for reached in training_reached(ctx, tracer, call):
                known = found.get(reached.target)
                if known is None:
                    found[reached.target] = reached
                    order.append(reached.target)
                else:
                    known.calls.extend(c for c in reached.calls if c not in known.calls)
                    for name, why in reached.layers.items():
                        known.layers.setdefault(name, why)
        if not found:
            return []
        findings = []
        for index, target in enumerate(order[:MAX_FINDINGS]):
            reached = found[target]
            layer = layers.get(target)
            nested = layer is not None and bool(getattr(layer, "layers", None))
            what = f"{'nested model' if nested else 'layer'} {target} ({reached.kind})"
            calls = " and ".join(reached.calls)
            if reached.how == "received":
                state = f"is called with training=True by {reached.caller} inside {calls}"
                hint = (
                    f"Pass the flag through instead of a literal in the call() of {reached.caller} "
                    "(self.layer(x, training=training); in a functional model, call the layer without "
                    "training=True); keep Monte-Carlo sampling in an explicit method."
                )
            elif reached.how == "default":
                state = f"defaults to training=True in its call() and runs in training mode inside {calls}"
                hint = "Give call() a training=None (or False) default and pass the flag through; serve with model(x, training=False) or predict()."
            else:
                state = f"ignores the training flag it is called with and runs its training path inside {calls}"
                hint = f"Honour the training argument in the call() of {target}: forward it (super().call(x, training=training)) instead of forcing training behaviour."
            if reached.inherited and reached.how != "ignored":
                state += f", and Keras hands that training=True on to the layers called after it ({_names(reached.inherited)})"
            head = {"calls": calls, "training_arg": {"received": "True, passed by the caller", "default": "True, the call() default", "ignored": "ignored by call()"}[reached.how], "caller": reached.caller}
            if reached.inherited:
                head["inherited_training"] = _names(reached.inherited)
            tail = {}
            if PLAIN_CALL in reached.calls and not outputs_equal(eval_out, inf_out):
                change = max_abs_diff(inf_out, eval_out)[0]
                tail["max_abs_output_change"] = float(f"{change:.4g}") if change == change else change
            if index == MAX_FINDINGS - 1 and len(order) > MAX_FINDINGS:
                tail["more_places"] = len(order) - index - 1
            findings.append(self._report(ctx, target, what, state, reached.layers, head, tail, hint))
        return findings


#: at most this many places are reported one by one (Keras)
MAX_FINDINGS = 8


def _names(names: list) -> str:
    return ", ".join(names[:3]) + (f" (+{len(names) - 3})" if len(names) > 3 else "")
