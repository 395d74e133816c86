"""LOD103: state the model uses is not in the saved file."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class UnsavedBuffers(DynamicRule):
    """
    ## What it does
    Names the buffers, tensors and numbers the model uses that its saved file does not carry (a buffer registered with `persistent=False`, a tensor or layer kept in a plain attribute or list, a calibrated float), when a model loaded as a server loads it answers differently without them.

    **PyTorch.** A state dict holds parameters and persistent buffers only. A server builds
    the model from its class and loads the state dict, so everything else has whatever value
    the constructor gives it. The probe finds, per module, the state outside the state dict:
    buffers registered with `persistent=False`, tensors kept in plain attributes
    (`self.mean = torch.tensor(...)`), tensors or modules in plain lists and dicts (a
    `[nn.Linear(...), ...]` instead of `nn.ModuleList`: their weights are never saved), and
    float attributes of user classes (a temperature set after calibration). It rebuilds the
    owning module's class as a server would (constructor arguments read from same-named
    attributes, defaults otherwise), compares, puts the rebuilt values into the server-like
    copy of LOD101's state-dict round trip, and reports each value that differs when that
    copy's output differs from the model's beyond LOD101's tolerance. A module whose class
    cannot be rebuilt (a required argument that is not kept as an attribute) is listed in
    the report's notes instead. Only modules that hold such state are rebuilt, each class
    and argument set once; the rebuild calls the constructor as a server does, but never
    passes an argument whose name says it loads weights (`pretrained`, `weights`,
    `checkpoint`, `url`, ...) from an attribute, and a module with a custom
    `_save_to_state_dict` or `get_extra_state` is trusted to save its own state.

    **Keras.** `model.save` writes the config and the variables. A custom layer's arrays or
    tensors kept as plain attributes (not `add_weight` variables) and float attributes that
    are not constructor arguments (set by a custom `adapt()` or after training) are rebuilt
    by `from_config` with their initial values; each one that differs in the loaded model is
    reported when the loaded model's output differs.

    ## Why is this bad?
    The model in memory works; the served one silently uses the constructor's values:
    normalisation statistics of zeros and ones, a randomly initialised block, a temperature
    of 1.0. Accuracy drops with no error at load time (`load_state_dict(strict=True)` cannot
    notice what was never in the file).

    ## Example
    ```python
    class Standardize(nn.Module):
        def __init__(self, channels=3):
            super().__init__()
            self.register_buffer("mean", torch.zeros(channels), persistent=False)
            self.register_buffer("std", torch.ones(channels), persistent=False)

        def fit(self, x):  # statistics computed from the training data
            self.mean, self.std = x.mean((0, 2, 3)), x.std((0, 2, 3))
    ```

    ## Use instead
    ```python
    class Standardize(nn.Module):
        def __init__(self, channels=3):
            super().__init__()
            self.register_buffer("mean", torch.zeros(channels))  # persistent: in the state dict
            self.register_buffer("std", torch.ones(channels))

        def fit(self, x):
            self.mean.copy_(x.mean((0, 2, 3)))
            self.std.copy_(x.std((0, 2, 3)))
    ```
    Layers: `nn.ModuleList`/`nn.ModuleDict`, not plain lists. Keras: `self.add_weight(...,
    trainable=False)` for computed statistics (or a built-in `Normalization` layer).

    ## Thresholds
    A value is lost when it differs at all from the rebuilt (PyTorch) or loaded (Keras)
    model's; it is reported only when the server-like copy's output differs beyond LOD101's
    tolerance (`tol` = 1e-5 for float32, times `max(1, max |output|)`). Severity: error;
    warning when the rebuild had to take some constructor arguments at their defaults (named
    in `assumed_defaults`), because the real constructor call may differ.

    ## References
    - PyTorch `nn.Module.register_buffer(persistent=False)` ("will not be part of this
      module's state_dict"), `nn.ModuleList`; "Saving and loading models" tutorial.
    - Keras "Making new layers and models via subclassing" (non-trainable weights via
      `add_weight(trainable=False)`), "Customizing saving and serialization".
    """

    code = "LOD103"
    name = "unsaved-buffers"
    category = "loading"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "{name} ({kind}) is not saved with the model: {detail}; a model loaded from the saved file {effect}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._serving_probe import serving

        result = serving(ctx)
        findings = []
        for trip in result.trips:
            if not trip.lost:
                continue
            cmp = result.comparison(trip)
            crashed = next((f for f in trip.failures if f.kind == "lost"), None)
            if crashed is None and (cmp is None or not cmp.mismatch):
                continue  # the sample's output does not depend on it (noted below)
            if crashed is not None:
                effect = f"fails on the sample ({crashed.error})"
            else:
                effect = f"answers differently (largest output difference {cmp.max_abs:.3g}, tolerance {cmp.tolerance:g} of the output scale)"
            for lost in trip.lost:
                evidence = {"format": trip.format, "kind": lost.kind, "owner": lost.owner or "<model>", "difference": lost.detail}
                if cmp is not None and crashed is None:
                    evidence.update(cmp.evidence())
                if crashed is not None:
                    evidence["error"] = crashed.error
                if lost.assumed:
                    evidence["assumed_defaults"] = ", ".join(lost.assumed)
                findings.append(
                    self.finding(
                        ctx,
                        lost.name,
                        severity=Severity.WARNING if lost.assumed else None,
                        evidence=evidence,
                        name=lost.name,
                        kind=lost.kind,
                        detail=lost.detail,
                        effect=effect,
                        fix_hint=_hint(ctx.framework, lost),
                    )
                )
        return findings


def _hint(framework: str, lost) -> str:
    if framework == "keras":
        if lost.kind == "number attribute":
            return "Make the value a constructor argument returned by get_config(), or a variable (self.add_weight(..., trainable=False)) assigned after computing it."
        return "Keep computed arrays in variables (self.add_weight(shape, trainable=False) in build(), then .assign(...)), so model.save writes them."
    if lost.kind == "non-persistent buffer":
        return "Register it as a persistent buffer (drop persistent=False), or recompute it in the constructor from saved values."
    if lost.kind == "unregistered module":
        return "Hold submodules in nn.ModuleList / nn.ModuleDict (or as attributes), so their parameters are registered and saved."
    if lost.kind == "number attribute":
        return "Store the value as a buffer (self.register_buffer(name, torch.tensor(value))) or an nn.Parameter, so the state dict carries it."
    return "Register the tensor as a buffer (self.register_buffer(name, tensor)) instead of a plain attribute, so the state dict carries it and .to(device) moves it."
