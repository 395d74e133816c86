"""LOD101: the model, saved and loaded back as a server does, answers differently."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class ServingOutputMismatch(DynamicRule):
    """
    ## What it does
    Saves the model in the format it is served from, loads it back as a server would, and reports when the reloaded model's output on the sample differs from the model's own beyond numerical noise.

    The round trip runs in a temporary directory that is removed afterwards (nothing else is
    written; the audited model is only read):

    - **PyTorch module**: `torch.save(model.state_dict(), path)`, then
      `torch.load(path, weights_only=True)` and `load_state_dict(state, strict=True)` into a
      copy of the model whose saved tensors are NaN until the state dict fills them, and
      whose state outside the state dict is what a fresh instance of each class has (a
      server rebuilds the class and loads the weights; that part is LOD103), then `.eval()`.
    - **TorchScript module** (a `ScriptModule`, or a `.pt` archive audited with `--trust`):
      `torch.jit.save`, `torch.jit.load`, `.eval()`.
    - **Keras model**: `model.save("model.keras")`, then
      `keras.saving.load_model(path, safe_mode=True, compile=False)` (with `custom_objects`
      holding the model's own classes when it cannot find them by itself: LOD102).

    The copy runs once on the sample and its output is compared with the eval pass
    (`model.eval()` under `torch.no_grad()`, or `model(x, training=False)`). A difference
    explained by a more specific rule is left to it: state that is not saved (LOD103), a
    Keras constructor argument `get_config()` loses (LOD102). Evidence names the tensors or
    variables that did not come back bit for bit (`tensors_changed`), which is usually the
    cause: a `state_dict()` override or state-dict hook that writes something `load_state_dict`
    does not undo (weights cast to half precision "to make checkpoints smaller", keys or
    layouts converted for an old loader), a Keras layer whose `save_own_variables` /
    `load_own_variables` skips a variable.

    `torch.jit.script`/`torch.export` of a plain module are not attempted: they are other
    serving formats whose failures are not bugs of the model, and they cost 4 to 25 forward
    passes on a ResNet-50. A `torch.export` program (`.pt2`) is audited from the archive it
    is served from and is not round-tripped again.

    ## Why is this bad?
    The accuracy measured on the in-memory model is not the accuracy of the served one.
    Nothing fails: the file loads without an error and serves plausible but different
    predictions, typically found weeks later as "the model scores lower in production".

    ## Example
    ```python
    class Net(nn.Module):
        def state_dict(self, *args, **kwargs):  # "halve the checkpoint size"
            state = super().state_dict(*args, **kwargs)
            return {k: v.half() if v.is_floating_point() else v for k, v in state.items()}

    torch.save(model.state_dict(), "model.pt")  # the server loads float16-rounded weights
    ```

    ## Use instead
    ```python
    torch.save(model.state_dict(), "model.pt")  # full precision; convert explicitly for serving:
    # model.half() on the server, and evaluate the converted model before shipping it
    ```

    ## Thresholds
    The outputs differ when `max |reloaded - reference| > tol * max(1, max |reference|)`,
    with `tol` = 1e-5 for float32 outputs (84 float32 ulps at 1.0), 1e-9 float64, 1e-2
    float16, 2e-2 bfloat16: relative to the output's scale, absolute below 1. NaN in the
    same places counts as equal; NaN or infinity that appears or disappears, or another
    shape, is a difference. A correct round trip measures 0 on our fixtures (bit-identical
    weights, same kernels). Nothing is compared when two inference runs of the model itself
    already disagree (DET101 reports that). Cost: one save, one load and one forward pass
    of the copy (a ResNet-50 state-dict round trip: about 2 forward passes of time).

    ## References
    - PyTorch "Saving and loading models" (state_dict is the recommended serving format;
      `model.eval()` after loading); `torch.load(weights_only=True)` is the default since
      PyTorch 2.6 (FRAMEWORK_FACTS §6.1).
    - Keras "Save, serialize, and export models" guide; `keras.saving.load_model(safe_mode=True)`
      (FRAMEWORK_FACTS §6.2).
    """

    code = "LOD101"
    name = "serving-output-mismatch"
    category = "loading"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "the model answers differently after {format_text}: largest output difference {max_abs} ({relative} of the output scale, tolerance {tolerance}){cause}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._serving_probe import FORMAT_TEXT, ROOT, changed_text, serving

        result = serving(ctx)
        findings = []
        for trip in result.trips:
            if trip.output is None or trip.failures:
                continue
            cmp = result.comparison(trip)
            if cmp is None or not cmp.mismatch:
                continue
            explained = bool(trip.lost) or (trip.format == "keras" and bool(trip.lost_args))
            if explained and not trip.changed:
                continue  # LOD103 / LOD102 name the cause
            evidence = {"format": trip.format, **cmp.evidence()}
            if trip.changed:
                evidence["tensors_changed"] = changed_text(trip.changed)
                evidence["tensors_changed_count"] = len(trip.changed)
            flags = ", ".join(f"{name} ({'trainable' if here else 'frozen'} here, {'trainable' if back else 'frozen'} after loading)" for name, here, back in trip.flags[:3])
            if flags:
                evidence["trainable_flags_changed"] = flags
            cause = ""
            if trip.changed:
                cause = f"; {'tensors' if ctx.framework == 'torch' else 'variables'} that do not come back equal: {changed_text(trip.changed)}"
            elif flags:
                cause = f"; trainable flags that do not come back: {flags}"
            if ctx.framework == "keras" and flags and not trip.changed:
                hint = "A layer's trainable flag set after construction is not in a subclassed model's config: make the call independent of it (pass training=False to a frozen base explicitly, not training=True), or rebuild the flag in __init__/from_config; compare the loaded model's predictions before shipping it."
            elif ctx.framework == "keras":
                hint = "Make every layer's saved state round-trip: save_own_variables/load_own_variables must write and read every variable, and get_config() must return every constructor argument; load the saved file and compare its predictions before shipping it."
            elif trip.format == "torchscript":
                hint = "Export again from the Python model after model.eval() and compare the loaded archive's outputs before shipping it."
            else:
                hint = "Make state_dict() and load_state_dict() inverse: drop state_dict overrides or hooks that convert tensors (dtype, layout, keys) without the matching load hook, and compare a reloaded model's outputs before shipping it."
            findings.append(
                self.finding(
                    ctx,
                    ROOT,
                    evidence=evidence,
                    format_text=FORMAT_TEXT.get(trip.format, trip.format),
                    max_abs=f"{cmp.max_abs:.3g}",
                    relative=f"{cmp.relative:.3g}",
                    tolerance=f"{cmp.tolerance:g}",
                    cause=cause,
                    fix_hint=hint,
                )
            )
        return findings
