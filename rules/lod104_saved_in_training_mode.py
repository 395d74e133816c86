"""LOD104: a serving artefact with training behaviour frozen into its graph."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class SavedInTrainingMode(DynamicRule):
    """
    ## What it does
    Reports a TorchScript module or `torch.export` program that was traced or exported while the model was in training mode: its dropout and batch-norm operations run training behaviour whatever `.eval()` says.

    Reads the graph of the audited artefact (no forward pass): every `dropout` /
    `feature_dropout` / `alpha_dropout` whose `train` argument, and every `batch_norm` whose
    `training` argument, is the constant `True`. `torch.jit.trace` and `torch.export` record
    the Python value of `self.training` at trace time, so a model traced in training mode
    keeps dropping activations and normalising with the batch's statistics (and updating the
    running statistics) after `loaded.eval()`; a scripted module reads `self.training` at run
    time and is not affected (its saved training flag is INF102's). Applies to a
    `ScriptModule` passed in a `Pipeline` and to `.pt` / `.pt2` archives audited with
    `--trust`.

    A live `nn.Module` that is still in training mode is INF102's finding, whose fix
    (`model.eval()` before tracing or exporting) also prevents this one. Keras models carry
    no training mode: the `training` flag is an argument of each call, `predict()` and
    `model(x, training=False)` pass False, and a `training=True` written into a functional
    graph is reported by the inference probes (INF/DET); so this rule is PyTorch only.

    ## Why is this bad?
    The artefact is what production runs. With dropout frozen on, the same request gets a
    different answer each time and every answer is noisier; with batch norm frozen in
    training mode, a prediction depends on the other requests in the batch, a batch of one
    fails or degenerates, and each call overwrites the running statistics. `.eval()` on the
    loaded module, the usual remedy, changes nothing in a trace.

    ## Example
    ```python
    model.train()
    ...  # training loop
    traced = torch.jit.trace(model, example)  # traced in training mode
    traced.eval()  # too late: the trace recorded train=True
    traced.save("model.pt")
    ```

    ## Use instead
    ```python
    model.eval()
    traced = torch.jit.trace(model, example)  # or torch.export.export(model, (example,))
    traced.save("model.pt")
    ```

    ## Thresholds
    Any dropout with a non-zero (or non-constant) probability or batch-norm operation whose
    training argument is the constant `True`. Evidence counts them by kind and names up to
    three modules.

    ## References
    - PyTorch docs, `torch.jit.trace` ("the trace ... records ... only the code path for the
      given input"; module mode is read at trace time), `torch.export` (export the model in
      eval mode for inference).
    - FRAMEWORK_FACTS §3.2, §3.3 (BatchNorm and dropout in training mode), §4.
    """

    code = "LOD104"
    name = "saved-in-training-mode"
    category = "loading"
    severity = Severity.ERROR
    frameworks = ("torch",)
    message = "the {artefact} was traced in training mode: its graph fixes training=True in {ops} ({modules}), which .eval() cannot turn off"
    fix = "Call model.eval() on the Python model before torch.jit.trace / torch.export, then save the artefact again."

    def probe(self, ctx):
        from auditor.dynamic.serving import frozen_training_ops

        from ._serving_probe import ROOT

        artefact, frozen = frozen_training_ops(ctx.model)
        if not frozen:
            return []
        counts: dict[str, int] = {}
        modules: list[str] = []
        for module, kind in frozen:
            counts[kind] = counts.get(kind, 0) + 1
            if module not in modules:
                modules.append(module)
        ops = ", ".join(f"{n} {kind} op{'s' if n > 1 else ''}" for kind, n in counts.items())
        listed = ", ".join(modules[:3]) + (f" (+{len(modules) - 3})" if len(modules) > 3 else "")
        evidence = {"artefact": artefact, **{f"{kind}_ops": n for kind, n in counts.items()}, "modules": listed}
        evidence["training_flag"] = bool(getattr(ctx.model, "training", False))
        return [self.finding(ctx, ROOT, evidence=evidence, artefact=artefact, ops=ops, modules=listed)]
