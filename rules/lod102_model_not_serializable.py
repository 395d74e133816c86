"""LOD102: the model cannot be saved or loaded back in its serving format."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ModelNotSerializable(DynamicRule):
    """
    ## What it does
    Reports a model that cannot be saved, or loaded back as a server loads it, in its serving format: a custom Keras layer that does not round-trip (unregistered, a `get_config()` missing constructor arguments, a load error) or a PyTorch state dict `torch.load(weights_only=True)` refuses.

    It runs the round trip of LOD101 (in a temporary directory that is removed) and names the
    layer or module each failure points at, with the error in one line:

    - **Keras, not registered**: `keras.saving.load_model(path, safe_mode=True)` fails with
      "Could not locate class 'X'" because the class was not decorated with
      `@keras.saving.register_keras_serializable()`; the probe loads again with
      `custom_objects` holding the model's own classes, and when that works the finding is a
      warning: every server must then pass `custom_objects={"X": X}`. The same for a plain
      Python function a layer holds (`Dense(..., activation=my_fn)`).
    - **Keras, does not rebuild**: even with `custom_objects` the load fails (`from_config`
      raises: `get_config()` misses a required constructor argument, returns an object
      that is not serialisable, ...), or `model.save` itself fails. The layer is found by
      rebuilding each custom layer from its own `get_config()` in memory.
    - **Keras, constructor argument lost**: the model loads, but a custom layer's
      constructor argument (kept as a same-named attribute, e.g. `self.factor`) comes back
      with another value, because `get_config()` does not return it and the loaded layer
      gets the default. An error when the output differs (LOD101's tolerance), a warning
      otherwise.
    - **Keras, Lambda**: `safe_mode=True` refuses to deserialise a `Lambda` layer's
      Python lambda; a server must pass `safe_mode=False`, which runs code from the file.
    - **PyTorch**: `torch.save(model.state_dict())` fails, `torch.load(weights_only=True)`
      (the default since PyTorch 2.6) refuses the file because a module's
      `get_extra_state()` returns an object of a custom class, or
      `load_state_dict(strict=True)` fails (a `state_dict()` override or hook that renames or
      reshapes entries without the matching load hook). TorchScript: `torch.jit.save` or
      `torch.jit.load` fails.

    ## Why is this bad?
    The file the training job writes is not a model a server can load: the deployment fails
    at start-up, or works only where someone passes the right `custom_objects`, turns
    `safe_mode` off, or loads with `weights_only=False` (which runs any code the file names).
    A constructor argument that `get_config()` loses is worse: the model loads and serves
    with the default value, silently.

    ## Example
    ```python
    class Scale(keras.layers.Layer):  # not registered
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def get_config(self):
            return super().get_config()  # forgets factor

        def call(self, x):
            return x * self.factor
    ```

    ## Use instead
    ```python
    @keras.saving.register_keras_serializable(package="my_project")
    class Scale(keras.layers.Layer):
        def __init__(self, factor=1.0, **kwargs):
            super().__init__(**kwargs)
            self.factor = factor

        def get_config(self):
            return {**super().get_config(), "factor": self.factor}

        def call(self, x):
            return x * self.factor
    ```
    PyTorch: return tensors and plain Python containers (dict, list, str, int, float) from
    `get_extra_state()`, so `torch.load(weights_only=True)` accepts the file.

    ## Thresholds
    Any error while saving or loading. A lost constructor argument: any value that differs
    (`!=`, arrays element-wise) between the layer and its reloaded copy; severity error when
    the reloaded output differs beyond LOD101's tolerance, warning otherwise. Not registered
    but loadable with `custom_objects`: warning.

    ## References
    - Keras "Customizing saving and serialization" guide: `get_config`, `from_config`,
      `register_keras_serializable`, `custom_objects`; `safe_mode` (FRAMEWORK_FACTS §6.2).
    - PyTorch `torch.load(weights_only=True)` default since 2.6,
      `torch.serialization.add_safe_globals`, `nn.Module.get_extra_state` (FRAMEWORK_FACTS §6.1).
    """

    code = "LOD102"
    name = "model-not-serializable"
    category = "loading"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "{what} does not survive {format_text}: {problem}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._serving_probe import FORMAT_TEXT, ROOT, serving

        result = serving(ctx)
        findings = []
        for trip in result.trips:
            format_text = FORMAT_TEXT.get(trip.format, trip.format)
            for failure in trip.failures:
                if failure.kind == "lost":
                    continue  # LOD103
                evidence = {"format": trip.format, "stage": failure.stage, "error": failure.error}
                if failure.detail:
                    evidence["object"] = failure.detail
                what, problem, hint = _describe(ctx, failure)
                findings.append(
                    self.finding(
                        ctx,
                        failure.target or ROOT,
                        severity=Severity.WARNING if failure.loads_with_custom_objects else None,
                        evidence=evidence,
                        what=what,
                        format_text=format_text,
                        problem=problem,
                        fix_hint=hint,
                    )
                )
            cmp = result.comparison(trip)
            mismatch = bool(cmp is not None and cmp.mismatch)
            for lost in trip.lost_args:
                evidence = {"format": trip.format, "argument": lost.arg, "value": lost.live, "after_load": lost.loaded, "in_get_config": lost.in_config}
                if cmp is not None:
                    evidence.update({"max_abs_output_diff": cmp.evidence()["max_abs_diff"], "tolerance": cmp.tolerance})
                layer = ctx.module(lost.layer) if lost.layer != ROOT else ctx.model
                cls = type(layer).__name__
                problem = (
                    f"constructor argument `{lost.arg}` is {lost.live} but comes back as {lost.loaded}"
                    + (" (get_config() does not return it)" if not lost.in_config else " (get_config() returns another value)")
                    + ("; the reloaded model's output differs" if mismatch else "")
                )
                findings.append(
                    self.finding(
                        ctx,
                        lost.layer,
                        severity=Severity.ERROR if mismatch else Severity.WARNING,
                        evidence=evidence,
                        what=f"custom layer {lost.layer} ({cls})" if lost.layer != ROOT else f"the model ({cls})",
                        format_text=format_text,
                        problem=problem,
                        fix_hint=f"Return every constructor argument from {cls}.get_config(): `return {{**super().get_config(), \"{lost.arg}\": self.{lost.arg}}}`.",
                    )
                )
        return findings


def _describe(ctx, failure):
    """(what, problem, fix) for one failed step."""
    from ._serving_probe import ROOT

    target = failure.target or ROOT
    keras = ctx.framework == "keras"
    layer = None
    if target != ROOT:
        try:
            layer = ctx.module(target)
        except Exception:  # noqa: BLE001
            layer = None
    obj = layer if layer is not None else ctx.model
    cls = type(obj).__name__
    noun = "layer" if keras else "module"
    custom = keras and (type(obj).__module__ or "").split(".")[0] not in ("keras", "tf_keras", "keras_hub", "keras_cv", "keras_nlp")
    what = f"{'custom ' if custom else ''}{noun} {target} ({cls})" if target != ROOT else f"the model ({cls})"
    if failure.kind == "unregistered":
        name = failure.detail.rsplit(".", 1)[-1] if failure.detail else cls
        word = "function" if "locate function" in failure.error else "class"
        problem = f"load_model cannot find {word} {name} ({failure.error}); it loads only when the server passes custom_objects"
        hint = f"Decorate {name} with @keras.saving.register_keras_serializable(package=...) and import its module before load_model, or load with custom_objects={{'{name}': {name}}}."
    elif failure.kind == "safe_mode":
        problem = f"load_model(safe_mode=True) refuses its Python lambda ({failure.error})"
        hint = "Replace the Lambda layer with a registered custom layer (a class with call() and get_config()), so the model loads with safe_mode=True."
    elif failure.kind == "weights_only":
        problem = f"torch.load(weights_only=True) refuses the saved state dict ({failure.error})"
        hint = "Return only tensors and plain containers (dict, list, str, int, float, bool) from get_extra_state(), or register the class with torch.serialization.add_safe_globals on the server."
    elif keras:
        step = {"save": "model.save fails", "load": "load_model fails even with the model's own classes as custom_objects", "run": "the loaded model fails on the sample"}[failure.stage]
        problem = f"{step}: {failure.error}"
        hint = f"Make {cls}.get_config() return every constructor argument as plain values (serialise nested layers/objects and rebuild them in from_config), so {cls}.from_config({cls}().get_config()) works."
    else:
        step = {"save": "saving fails", "load": "loading fails", "run": "the reloaded model fails on the sample"}[failure.stage]
        problem = f"{step}: {failure.error}"
        hint = "Make state_dict() and load_state_dict(strict=True) inverse (no state_dict override or hook that renames, drops or reshapes entries without the matching load hook), and keep every saved value a tensor or plain container."
    return what, problem, hint
