"""INF001: PyTorch inference, evaluation or export code that reaches a model still in training mode."""

from __future__ import annotations

import ast

from auditor.finding import Severity
from auditor.rule import StaticRule

from ._modes import (
    TRAIN,
    ModuleDesc,
    analysis,
    decorator_names,
    enclosing_functions,
    is_inference_name,
    is_unit_test,
    name_parts,
)

_NO_GRAD = {
    "torch.no_grad", "torch.inference_mode", "torch.autograd.no_grad", "torch.autograd.inference_mode",
    "torch.autograd.grad_mode.no_grad", "torch.autograd.grad_mode.inference_mode",
}
#: export call -> what happens to the model there
_EXPORTS = {
    "torch.save": "is saved whole with torch.save",
    "torch.jit.trace": "is traced with torch.jit.trace",
    "torch.jit.trace_module": "is traced with torch.jit.trace_module",
    "torch.jit.script": "is scripted with torch.jit.script",
    "torch.onnx.export": "is exported with torch.onnx.export",
    "torch.onnx.dynamo_export": "is exported with torch.onnx.dynamo_export",
    "torch.export.export": "is exported with torch.export.export",
}
#: methods of a model that are not a forward pass
_NOT_FORWARD = {"parameters", "named_parameters", "state_dict", "modules", "children", "named_modules", "to", "cuda", "cpu",
                "eval", "train", "load_state_dict", "zero_grad", "apply", "register_forward_hook", "half", "float"}


class TorchInferenceWithoutEval(StaticRule):
    """
    ## What it does
    Flags PyTorch inference, evaluation and export code that reaches a model which is still in
    training mode: no `model.eval()` since it was built or since the last `model.train()`.

    Sites are model calls inside `torch.no_grad()` / `torch.inference_mode()` blocks and
    `@torch.no_grad()` functions, model calls in functions named like predict / evaluate /
    infer / inference / test / validate / val, and `torch.save(model)`, `torch.jit.trace`,
    `torch.jit.script`, `torch.onnx.export`, `torch.export.export` of the model. The mode is
    the most recent mode-setting statement on that model before the site (`.eval()`,
    `.train(False)`, `.train()`, `model = build().eval()`, a freshly constructed module, a
    local function that switches the model it receives, a `.train()` later in the same loop
    that runs before the site from the second iteration on); when the model is a parameter,
    the state at each call site of the function counts, and a module-level model used in a
    function nobody in the file calls (a web handler) counts when no code ever switches it.
    Only models that behave differently in the two modes are judged: torchvision / timm
    builders and `nn.Module` classes of the file that contain BatchNorm or Dropout.

    ## Why is this bad?
    `torch.no_grad()` and `torch.inference_mode()` only switch off autograd; they do not
    switch the model to evaluation mode (the `inference_mode` docs say `model.eval()` is still
    needed). In training mode every `BatchNorm` layer normalises with the statistics of the
    current batch and overwrites its `running_mean` / `running_var` with the inference data,
    so each prediction changes the model; every `Dropout` zeroes random activations, so the
    same input gives different outputs. Exporting or tracing in training mode bakes that
    behaviour into the exported graph.

    ## Example
    ```python
    import torch
    from torchvision import models

    model = models.resnet50(weights="IMAGENET1K_V2")
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))

    with torch.no_grad():
        logits = model(torch.randn(8, 3, 224, 224))
    ```

    ## Use instead
    ```python
    import torch
    from torchvision import models

    model = models.resnet50(weights="IMAGENET1K_V2")
    model.load_state_dict(torch.load("finetuned.pt", weights_only=True))
    model.eval()

    with torch.no_grad():
        logits = model(torch.randn(8, 3, 224, 224))
    ```

    ## Known problems
    Models loaded whole (`torch.load`, `torch.jit.load`, `torch.export.load`) keep the mode
    they were saved in, `from_pretrained()` returns eval mode, and a model handed to an
    imported function (a trainer of another module) may come back in either mode: these are
    not judged. Neither are parameters of functions that nothing in the file calls, nor
    methods reached only from outside the module (Lightning's `validation_step`).
    Dropout left active on purpose is not reported for models without BatchNorm: calls in a
    function named for sampling or Monte Carlo / uncertainty estimates (`def sample(...)`,
    `mc_predict`) and the same input passed repeatedly in a comprehension over `range()`
    (`torch.stack([model(x) for _ in range(30)])`).

    ## References
    - FRAMEWORK_FACTS §4 (PT-infmode, PT-docs-eval): `no_grad` / `inference_mode` do not set eval mode.
    - FRAMEWORK_FACTS §3.2 (PT-bn): BatchNorm running statistics update whenever `module.training`.
    - FRAMEWORK_FACTS §3.3: `nn.Dropout` is active iff `self.training`.
    """

    code = "INF001"
    name = "torch-inference-without-eval"
    category = "inference-mutation"
    severity = Severity.ERROR
    requires = frozenset({"torch"})
    message = "{model} ({label}) {site} while still in training mode ({reason}): {consequence}"
    fix = "Call {model}.eval() before {site_short} (and {model}.train() again before training resumes)."

    def check(self, ctx):
        if "torch" not in ctx.frameworks:
            return
        a = analysis(ctx)
        self._trains_memo: dict = {}
        seen: set = set()
        for call in ctx.calls:
            found = self._site(ctx, call)
            if found is None:
                continue
            target, where, where_short, group, export = found
            key = ctx.key(target)
            if not key or (key, id(group)) in seen:
                continue
            descs = [_class_in_force(ctx, a, d) for d in a.torch_modules(target)]
            if not descs or not all(d.framework == "torch" and d.sensitive for d in descs):
                continue
            if all(not d.bn and d.dropout for d in descs) and _sampling(ctx, call):
                continue  # dropout noise on purpose: sampling / Monte Carlo dropout
            modes = a.mode_at(key, call)
            if modes != frozenset({TRAIN}):
                continue
            seen.add((key, id(group)))
            desc = descs[0]
            yield self.finding(
                ctx,
                call,
                model=key,
                label=desc.label,
                site=where,
                site_short=where_short,
                reason=a.train_reason(key, call),
                consequence=_consequence(desc, export),
                evidence={"model": key, "site": where_short},
            )

    def _trains(self, func: ast.AST) -> bool:
        """Does the function run a training step (backward / optimizer step)?"""
        if func not in self._trains_memo:
            self._trains_memo[func] = any(
                isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("backward", "step", "zero_grad")
                for node in ast.walk(func)
            )
        return self._trains_memo[func]

    def _in_training_step(self, ctx, call: ast.Call) -> bool:
        """A no-grad forward pass inside a training step (a GAN's generator sample for the
        discriminator step, a metric on the training batch): the innermost loop around it, or
        the function when there is no loop, also runs backward()/step()."""
        region = None
        for anc in ctx.ancestors(call):
            if isinstance(anc, (ast.For, ast.AsyncFor, ast.While)):
                region = anc
                break
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
                region = anc
                break
        if region is None:
            return False
        return self._trains(region)

    # ------------------------------------------------------------------ sites
    def _site(self, ctx, call: ast.Call):
        """(model expression, site text, short site text, grouping node, export name) or None."""
        funcs = list(enclosing_functions(ctx, call))
        if any(is_unit_test(ctx, f) for f in funcs):
            return None  # test suites run modules in training mode on purpose
        if any(_recalibrates_batchnorm(f) for f in funcs):
            return None  # re-estimating BatchNorm statistics (swa_utils.update_bn style) is train mode on purpose
        name = ctx.call_name(call) or ""
        if name in _EXPORTS:
            target = call.args[0] if call.args else None
            if name == "torch.save" and target is None:
                return None
            if target is None:
                for kw in call.keywords:
                    if kw.arg in ("model", "mod", "obj", "f"):
                        target = kw.value
                        break
            if not isinstance(target, (ast.Name, ast.Attribute)):
                return None
            return target, _EXPORTS[name], f"calling {name}", call, name
        f = call.func
        if name:  # an imported function, not a model variable
            return None
        if isinstance(f, ast.Attribute) and f.attr == "forward":
            target = f.value
        elif isinstance(f, ast.Attribute) and f.attr in _NOT_FORWARD:
            return None
        else:
            target = f
        if not isinstance(target, (ast.Name, ast.Attribute)):
            return None
        if isinstance(target, ast.Name) and target.id in ("self", "super"):
            return None
        if isinstance(target, ast.Name) and (target.id in ctx.functions or target.id in ctx.classes):
            return None
        # inside a no_grad / inference_mode block (within the same function)
        for anc in ctx.ancestors(call):
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
                break
            if isinstance(anc, (ast.With, ast.AsyncWith)):
                for item in anc.items:
                    expr = item.context_expr
                    qual = ctx.call_name(expr) if isinstance(expr, ast.Call) else ctx.qualname(expr)
                    if qual in _NO_GRAD:
                        if isinstance(expr, ast.Call) and expr.args and ctx.value(expr.args[0]) is False:
                            continue  # inference_mode(False)
                        if self._in_training_step(ctx, call):
                            return None
                        short = "torch.inference_mode()" if "inference_mode" in qual else "torch.no_grad()"
                        return target, f"is called inside a `with {short}` block", f"the `with {short}` block", anc, None
                    if qual == "torch.set_grad_enabled" and isinstance(expr, ast.Call) and expr.args and ctx.value(expr.args[0]) is False:
                        if self._in_training_step(ctx, call):
                            return None
                        return target, "is called inside a `with torch.set_grad_enabled(False)` block", "the no-grad block", anc, None
        if not funcs:
            return None
        func = funcs[0]
        for dec in decorator_names(ctx, func):
            if dec in _NO_GRAD:
                short = "inference_mode" if "inference_mode" in dec else "no_grad"
                return target, f"is called in @torch.{short}() function {func.name}()", f"calling {func.name}()", func, None
        if is_inference_name(func.name) and not self._trains(func):
            return target, f"is called in inference function {func.name}()", f"calling {func.name}()", func, None
        return None




#: words in a function name that say its outputs are meant to be random draws
_MC_WORDS = ("mc", "monte", "carlo", "uncertainty", "uncertain", "bayes", "bayesian", "stochastic")
#: ... unless the name is also a prediction / evaluation one (`evaluate_samples`)
_SAMPLING_WORDS = ("sample", "samples", "sampling")


def _sampling(ctx, call: ast.Call) -> bool:
    """Random outputs are the point: the call is in a function named for sampling / Monte
    Carlo / uncertainty (`def sample(...)`, `mc_predict`; not `evaluate_samples`), or it is
    repeated on the same input in a comprehension over range() (`[model(x) for _ in
    range(30)]`). Only used for models in which Dropout is the one mode-dependent layer we
    can see (BatchNorm would still be corrupted)."""
    for anc in ctx.ancestors(call):
        if isinstance(anc, (ast.ListComp, ast.SetComp, ast.GeneratorExp)):
            targets = {n.id for g in anc.generators for n in ast.walk(g.target) if isinstance(n, ast.Name)}
            ranged = all(isinstance(g.iter, ast.Call) and isinstance(g.iter.func, ast.Name) and g.iter.func.id == "range" for g in anc.generators)
            used = any(isinstance(n, ast.Name) and n.id in targets for n in ast.walk(call))
            if ranged and not used:
                return True
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
            parts = name_parts(anc.name)
            if any(p in _MC_WORDS for p in parts):
                return True
            if any(p in _SAMPLING_WORDS for p in parts) and not is_inference_name(anc.name):
                return True
    return False


def _class_in_force(ctx, a, desc: ModuleDesc) -> ModuleDesc:
    """A class defined twice at module level (a notebook that grows `Classifier` a Dropout
    in a later cell): `Classifier()` at module level builds the definition in force at that
    point, not the last one in the file."""
    call = desc.node
    if not isinstance(call, ast.Call) or not isinstance(call.func, ast.Name):
        return desc
    name = call.func.id
    last_def = ctx.classes.get(name)
    if last_def is None or ctx.enclosing_function(call) is not None:
        return desc
    at = ctx.order.get(call, 0)
    defs = [n for n in ctx.tree.body if isinstance(n, ast.ClassDef) and n.name == name]
    before = [d for d in defs if ctx.order.get(d, 0) < at]
    if len(defs) < 2 or not before or before[-1] is last_def:
        return desc
    bn, drop = a.torch_class_features(before[-1])
    return ModuleDesc(desc.framework, desc.label, bn, drop, desc.initial, desc.node)


def _consequence(desc, export: str | None) -> str:
    layers = desc.layers_text()
    if export == "torch.save":
        return (f"the file stores the training flag, so whoever loads it runs {layers} in training mode unless they "
                "call .eval() themselves")
    if export == "torch.jit.script":
        return f"the scripted module is saved in training mode, with {layers} active as in training"
    if export is not None:
        parts = []
        if desc.bn:
            parts.append("BatchNorm normalising each batch with its own statistics")
        if desc.dropout:
            parts.append("Dropout randomly zeroing activations")
        return "the exported graph records training-mode behaviour: " + " and ".join(parts or ["BatchNorm/Dropout in training mode"])
    parts = []
    if desc.bn:
        parts.append("BatchNorm normalises with the batch's statistics and overwrites running_mean/running_var with this data")
    if desc.dropout:
        parts.append("Dropout (or stochastic depth) zeroes random activations, so outputs are random")
    return "; ".join(parts)


_RECALIBRATION_NAMES = ("calib", "update_bn", "recompute_bn", "bn_stat", "adapt_bn", "recalib", "reestimate")


def _recalibrates_batchnorm(func: ast.AST) -> bool:
    """A function that re-estimates BatchNorm running statistics on purpose: it resets them
    (`reset_running_stats()`), sets `.momentum` (None = exact average), or is named for it
    (`calibrate_bn`, `update_bn`: torch.optim.swa_utils.update_bn runs train() + no_grad)."""
    name = getattr(func, "name", "").lower()
    if any(word in name for word in _RECALIBRATION_NAMES):
        return True
    for node in ast.walk(func):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "reset_running_stats":
            return True
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == "momentum" for t in node.targets):
            return True
    return False
