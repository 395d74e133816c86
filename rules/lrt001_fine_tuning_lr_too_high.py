"""LRT001: an optimizer's learning rate is too high for fine-tuning pretrained weights."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from auditor.analysis.records import field
from auditor.analysis.records import record as dataclass
from typing import Any

from auditor import knowledge
from auditor.analysis.context import UNKNOWN, ModuleContext, kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from ._optimizers import (
    OptimizerSpec,
    PretrainedFinder,
    call_sites_of,
    fmt,
    freeze_target_node,
    key_origins,
    key_parts,
    local_class,
    may_run_before,
    model_label,
    optimizer_spec,
    origins,
    param_default,
    value,
)
from ._shared import call_site_freezes, helper_condition, helper_freeze_statements, is_parameter, lifted_helper

#: attributes that hold a (new) classification head
HEAD_ATTRS = frozenset(
    {
        "fc", "classifier", "head", "heads", "last_linear", "logits", "top", "output_layer", "final_layer",
        "classif", "cls", "score", "new_fc", "fc_out", "out_fc", "linear_head", "cls_head", "classification_head",
        "new_head", "custom_head", "_fc", "head_fc",
    }
)
#: attributes that hold the pretrained trunk
BACKBONE_ATTRS = frozenset(
    {
        "features", "backbone", "base", "base_model", "encoder", "body", "feature_extractor", "bert", "roberta",
        "distilbert", "deberta", "vit", "resnet", "pretrained", "pretrained_model", "cnn", "conv_base", "trunk",
    }
)

#: torchvision / timm / transformers trunk parts (frozen with the backbone)
_TRUNK_ATTRS = frozenset(
    {"conv1", "bn1", "layer1", "layer2", "layer3", "layer4", "blocks", "stem", "stages", "embeddings", "patch_embed", "conv_stem", "encoder_layers"}
)

_SOURCES = {
    "adam": "Keras guide 1e-5, BERT 2e-5..5e-5",
    "rmsprop": "Keras guide Adam 1e-5; RMSprop steps scale like Adam's",
    "adagrad": "Keras guide Adam 1e-5; Adagrad gets one decade above Adam",
    "sgd": "PyTorch tutorial 1e-3, BiT 3e-3 at batch 512",
}
_HEAD_SOURCE = "head-only: the Keras guide trains a new head with Adam 1e-3"
#: suggested range for whole-model fine-tuning (head-only: x HEAD_ONLY_FACTOR)
_SUGGEST = {"adam": (1e-5, 1e-4), "rmsprop": (1e-5, 1e-4), "adagrad": (1e-4, 1e-3), "sgd-momentum": (1e-3, 3e-3), "sgd": (1e-2, 3e-2)}
_RESUME_WORDS = ("resume", "exists", "isfile", "restore", "continue")
_LR_OVERRIDES = ("LearningRateScheduler",)


@dataclass
class Link:
    """How an optimized model reaches pretrained weights."""

    label: str
    anchors: set = field(default_factory=set)  # ids of the model's own origin calls
    pretrained: set = field(default_factory=set)  # ids of the pretrained constructor calls
    klass: ast.ClassDef | None = None  # a local class that builds the pretrained part
    frozen_at_build: bool = False


class FineTuningLrTooHigh(StaticRule):
    """
    ## What it does
    Flags an optimizer whose learning rate is above what fine-tuning pretrained weights tolerates for its family.

    The rule follows the optimizer to the model it trains (Keras `compile`, torch
    `optimizer(params)`, including param groups, schedules and models built in helper
    functions) and reports only when that model holds pretrained weights (`weights="imagenet"`,
    the Keras default; `pretrained=True`; `weights=ResNet50_Weights.DEFAULT`; `from_pretrained`;
    `torch.hub.load`; or a checkpoint loaded with `load_state_dict` / `load_weights`). The
    learning rate comes from a literal, a constant, an argparse default, a config dict or class,
    the framework default when it is unset (`optimizer="adam"` is Keras Adam at 1e-3), a Keras
    schedule's initial value or a torch `OneCycleLR`/`CyclicLR` peak.

    Head-only training (Keras: every pretrained base is frozen when that `compile` runs, and no
    later `trainable = True` undid it; torch: the optimizer gets only `model.fc` / `classifier` /
    `head` parameters, or the backbone has `requires_grad=False` and was not unfrozen) gets 10x
    more room (`knowledge.HEAD_ONLY_FACTOR`). Warnings and errors follow the two thresholds below.

    ## Thresholds
    Auditor policy from FRAMEWORK_FACTS 5.2 (`knowledge.LR_THRESHOLDS`, `lr_threshold()`), each
    anchored in 5.1's sources; "at or above" counts:

    | family | warning | error | why |
    | --- | --- | --- | --- |
    | Adam, AdamW, Adamax, Nadam, RAdam, LAMB, Lion | 1e-3 | 1e-2 | 1e-3 is the framework default [K-opt][PT-optdocs], 20-100x BERT's 2e-5..5e-5 [BERT] and 100x the Keras guide's 1e-5 [K-guide]; fastai's top group reaches 1e-3 [FA-ft], hence only a warning |
    | RMSprop | 1e-3 | 1e-2 | steps of about lr, like Adam; PyTorch's default 1e-2 [PT-optdocs] is an error |
    | Adagrad | 1e-2 | 1e-1 | its accumulator only shrinks steps: one decade above Adam |
    | SGD, momentum 0.9 | 0.01 | 0.1 | 10x the PyTorch tutorial's 1e-3 [PT-tut], 3x BiT's 0.003 at batch 512 [BIT]; 0.1 is the from-scratch ImageNet rate [TIMM-train] |
    | SGD, other momentum | x (1 - momentum) / 0.1 | same | the steady-state step is lr / (1 - momentum) |
    | SGD without momentum | 0.1 | 1.0 | plain SGD at 0.1 steps like momentum-0.9 SGD at 0.01 |

    Unset rates use the framework default (`knowledge.DEFAULT_LR`, [K-opt][PT-optdocs]): Keras
    `optimizer="adam"` 1e-3, `"sgd"` 0.01, `compile()` without an optimizer is RMSprop 1e-3;
    PyTorch RMSprop and Adagrad 1e-2; transformers `TrainingArguments` 5e-5.

    ## Known problems
    The thresholds are a policy, not a law: a deliberate head-only Adam at exactly 1e-2 (some
    Keras examples) is reported as a warning. Models built in another module, rates read from
    YAML/JSON files or the environment, and rates changed after construction
    (`LearningRateScheduler`, writes to `param_groups`) are not followed; the rule then stays
    silent. A torch optimizer whose every `.step()` follows forward passes on made-up tensors
    only (`model(torch.rand(1, 3, 224, 224))`: autograd demos, memory or speed benchmarks)
    fine-tunes nothing and is not reported.

    ## Why is this bad?
    Pretrained features are destroyed in the first few hundred steps by a learning rate chosen for
    training from scratch. Adam's default 1e-3 is 20-100x BERT's fine-tuning range and 100x the
    Keras guide's 1e-5; the run still converges, just to a worse model than the pretrained
    features allowed, and nothing reports it.

    ## Example
    ```python
    import keras

    base = keras.applications.ResNet50(weights="imagenet", include_top=False, pooling="avg")
    outputs = keras.layers.Dense(10, activation="softmax")(base.output)
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-2), loss="sparse_categorical_crossentropy")
    ```

    ## Use instead
    ```python
    import keras

    base = keras.applications.ResNet50(weights="imagenet", include_top=False, pooling="avg")
    outputs = keras.layers.Dense(10, activation="softmax")(base.output)
    model = keras.Model(base.input, outputs)
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=1e-5), loss="sparse_categorical_crossentropy")
    ```

    ## References
    - FRAMEWORK_FACTS 5.1 / 5.2: [K-guide] Keras transfer-learning guide (Adam 1e-5 after
      unfreezing, head with Adam 1e-3); [PT-tut] PyTorch transfer-learning tutorial (SGD 1e-3,
      momentum 0.9); [BERT] Appendix A.3 (Adam 5e-5, 3e-5, 2e-5); [BIT] BiT-HyperRule (SGD 0.003
      at batch 512); [ULMFIT]; [FA-ft] fastai `fine_tune`; [TIMM-train] timm `lr_base`.
    - Framework defaults: [K-opt] `keras/src/optimizers/*.py`, [PT-optdocs] torch.optim docs.
    - Thresholds: `auditor.knowledge.LR_THRESHOLDS`, `OPTIMIZER_FAMILIES`, `DEFAULT_LR`,
      `HEAD_ONLY_FACTOR`, `lr_threshold()`.
    """

    code = "LRT001"
    name = "fine-tuning-lr-too-high"
    category = "learning-rate"
    severity = Severity.WARNING
    requires = frozenset({"optim", "compile", "TrainingArguments"})
    message = (
        "{opt} learning rate {lr}{origin} on pretrained {arch} weights{group}: at or above the fine-tuning "
        "{level} threshold {threshold} for {family}{head} (sources: {sources})"
    )
    fix = "Lower the learning rate to {suggest}."

    def check(self, ctx: ModuleContext) -> Iterator:
        analysis = _Analysis(ctx)
        yield from analysis.run(self)


class _Analysis:
    def __init__(self, ctx: ModuleContext):
        self.ctx = ctx
        self.finder = PretrainedFinder(ctx)
        self.best: dict[int, tuple] = {}  # report node id -> (rank, finding kwargs)
        self._rewritten: set[int] | None = None

    # ------------------------------------------------------------------ driver
    def run(self, rule: FineTuningLrTooHigh) -> Iterator:
        ctx = self.ctx
        keras_overridden = any((ctx.call_name(c) or "").endswith(_LR_OVERRIDES) for c in ctx.calls)
        if not keras_overridden:
            for call in ctx.method_calls("compile"):
                self._keras_compile(call)
        scheduled = self._torch_schedulers()
        for call in ctx.calls:
            if id(call) in scheduled:
                continue
            spec = optimizer_spec(ctx, call)
            if spec is not None and spec.framework == "torch":
                self._torch_optimizer(spec, spec.default_lr, spec.lr_origin, call, None)
        self._hf_trainers()
        for node_id, (_, node, kwargs) in sorted(self.best.items(), key=lambda kv: ctx.order.get(kv[1][1], 0)):
            yield rule.finding(ctx, node, **kwargs)

    def _report(self, node: ast.AST, spec: OptimizerSpec, lr: float, origin: str, link: Link, head_only: bool, group: str = "") -> None:
        family = spec.family
        momentum = spec.momentum if family == "sgd" else None
        th = knowledge.lr_threshold(family, momentum, head_only)
        eps = 1e-9
        if lr >= th.error * (1 - eps):
            level, threshold, severity, rank = "error", th.error, Severity.ERROR, 2
        elif lr >= th.warn * (1 - eps):
            level, threshold, severity, rank = "warning", th.warn, Severity.WARNING, 1
        else:
            return
        family_text = "Adam-family optimizers" if th.family == "Adam-family" else th.family
        key = "sgd-momentum" if family == "sgd" and momentum else family
        lo, hi = _SUGGEST[key]
        scale = (1.0 - momentum) / 0.1 if family == "sgd" and momentum and momentum < 1 else 1.0
        factor = knowledge.HEAD_ONLY_FACTOR if head_only else 1.0
        lo, hi = lo * scale * factor, hi * scale * factor
        if head_only:
            suggest = f"{fmt(lo)}..{fmt(hi)} for a head trained on a frozen backbone (keep it under {fmt(th.warn)})"
        else:
            suggest = (
                f"{fmt(lo)}..{fmt(hi)} for {spec.display} on pretrained weights (below {fmt(th.warn)}), "
                "or freeze the backbone and train only the new head first"
            )
        sources = _SOURCES[family] + ("; " + _HEAD_SOURCE if head_only else "")
        kwargs = dict(
            severity=severity,
            evidence={"lr": lr, "family": family, "threshold": threshold, "head_only": head_only, "optimizer": spec.display, "momentum": momentum},
            opt=spec.display,
            lr=fmt(lr),
            origin=f" ({origin})" if origin else "",
            arch=link.label,
            group=group,
            level=level,
            threshold=fmt(threshold),
            family=family_text,
            head=" when only the new head trains (head-only: 10x room)" if head_only else "",
            sources=sources,
            suggest=suggest,
        )
        previous = self.best.get(id(node))
        if previous is None or rank > previous[0]:
            self.best[id(node)] = (rank, node, kwargs)

    # ------------------------------------------------------------------ Keras
    def _keras_compile(self, call: ast.Call) -> None:
        ctx = self.ctx
        if ctx.call_name(call) is not None:  # torch.compile, re.compile
            return
        receiver = call.func.value  # type: ignore[attr-defined]
        if _is_overridden_compile(ctx, receiver):
            return
        link = self._keras_link(receiver, call)
        if link is None:
            return
        opt_node = kwarg(call, "optimizer", 0)
        specs: list[OptimizerSpec] = []
        if opt_node is None:
            if any(kw.arg is None for kw in call.keywords) or not self._has_fit(receiver):
                return
            spec = optimizer_spec(ctx, ast.Constant("rmsprop"))
            if spec is None:
                return
            spec.call = call
            spec.lr_origin = "Keras compile() default optimizer='rmsprop'"
            specs.append(spec)
        else:
            # `def compile_and_train(model, optimizer=...)` called once per phase: judge each
            # optimizer with the freeze state at the call site that passes it
            record = ctx.assignment_at(opt_node.id, opt_node) if isinstance(opt_node, ast.Name) else None
            contexts = [(opt_node, None)]
            if is_parameter(record):
                owner = record.stmt
                sites = call_sites_of(ctx, owner)
                if sites:
                    default = param_default(owner, opt_node.id)
                    contexts = [(bound.get(opt_node.id, default), site) for site, bound in sites]
            for expr, site in contexts:
                if expr is None:
                    continue
                head_only = self._keras_head_only(link, receiver, call, site)
                for origin in origins(ctx, expr):
                    spec = optimizer_spec(ctx, origin)
                    if spec is not None and spec.framework == "keras" and isinstance(spec.lr, (int, float)) and not isinstance(spec.lr, bool):
                        if isinstance(origin, ast.Constant) and not self._any_fit():
                            continue  # compile("adam") just to evaluate a model
                        self._report(spec.call, spec, float(spec.lr), spec.lr_origin, link, head_only)
            return
        head_only = self._keras_head_only(link, receiver, call)
        for spec in specs:
            if not isinstance(spec.lr, (int, float)) or isinstance(spec.lr, bool):
                continue
            self._report(spec.call, spec, float(spec.lr), spec.lr_origin, link, head_only)

    def _any_fit(self) -> bool:
        return any(True for _ in self.ctx.method_calls("fit", "fit_generator", "train_on_batch", "apply_gradients"))

    def _has_fit(self, receiver: ast.AST) -> bool:
        key = self.ctx.key(receiver)
        return any(self.ctx.key(c.func.value) == key for c in self.ctx.method_calls("fit", "fit_generator", "train_on_batch"))  # type: ignore[attr-defined]

    def _keras_link(self, receiver: ast.AST, at: ast.AST) -> Link | None:
        ctx = self.ctx
        model_origins = origins(ctx, receiver)
        anchors = {id(o) for o in model_origins}
        infos, hubs = self.finder.slice(model_origins)
        pretrained = [i for i in infos if self.finder.pretrained(i)]
        if pretrained or hubs:
            label = model_label(ctx, pretrained[0]) if pretrained else "TF-Hub"
            link = Link(label, anchors, {id(i.call) for i in pretrained} | {id(h) for h in hubs})
            link.frozen_at_build = bool(hubs) and not pretrained and all(_hub_frozen(ctx, h) for h in hubs)
            return link
        # weights loaded into the model (or a part of it) before this compile
        parts = {id(i.call) for i in infos} | anchors
        loaded = self._loaded_weights(parts, at, ("load_weights",), receiver)
        if loaded:
            return Link(loaded, anchors, parts)
        return None

    def _keras_head_only(self, link: Link, receiver: ast.AST, compile_call: ast.Call, site: ast.AST | None = None) -> bool:
        """Is every pretrained base frozen when this compile runs (reached through `site`,
        a call of the function holding the compile, when given)?"""
        ctx = self.ctx
        state = "frozen" if link.frozen_at_build else "trainable"
        model_node = origins(ctx, receiver)
        owner = ctx.enclosing_function(compile_call)
        for event in call_site_freezes(ctx):
            if event.framework != "keras":
                continue
            if site is None:
                if not may_run_before(ctx, event.node, compile_call):
                    continue
            elif not (
                may_run_before(ctx, event.node, site)
                or (ctx.enclosing_function(event.node) is owner and ctx.order.get(event.node, 0) < ctx.order.get(compile_call, 0))
            ):
                continue
            scope = self._event_scope(event)
            if scope == "skip":
                continue
            where = self._event_target(event, link)
            if where is None:
                continue
            level, sub = where
            if level == "model" and sub:
                if sub[0] == "layers" and len(sub) >= 2 and self._sequential_item_is_pretrained(model_node, sub[1], link):
                    sub = []
                else:
                    continue  # one layer of the outer model we cannot place
            effective = _classify(level, sub, scope)
            if effective is None:
                continue
            state = _next_state(state, event.frozen, effective == "full")
        return state == "frozen"

    def _sequential_item_is_pretrained(self, model_nodes: list, index: str, link: Link) -> bool:
        try:
            i = int(index.strip("[]"))
        except ValueError:
            return False
        for node in model_nodes:
            if isinstance(node, ast.Call) and (self.ctx.call_name(node) or "") == "keras.Sequential" and node.args:
                layers = node.args[0]
                if isinstance(layers, (ast.List, ast.Tuple)) and -len(layers.elts) <= i < len(layers.elts):
                    item = layers.elts[i]
                    return any(id(o) in link.pretrained for o in origins(self.ctx, item))
        return False

    # ------------------------------------------------------------------ torch
    def _torch_schedulers(self) -> set[int]:
        """OneCycleLR / CyclicLR replace the optimizer's rate by their own peak: report that."""
        ctx = self.ctx
        wrapped: set[int] = set()
        for call in ctx.calls_to("torch.optim.lr_scheduler.OneCycleLR", "torch.optim.lr_scheduler.CyclicLR"):
            name = ctx.call_name(call) or ""
            peak_node = kwarg(call, "max_lr", 1 if name.endswith("OneCycleLR") else 2)
            for origin in origins(ctx, kwarg(call, "optimizer", 0)):
                spec = optimizer_spec(ctx, origin)
                if spec is None or spec.framework != "torch":
                    continue
                wrapped.add(id(origin))
                peak = value(ctx, peak_node)
                label = name.rsplit(".", 1)[-1] + " max_lr"
                if isinstance(peak, tuple):
                    self._torch_optimizer(spec, None, label, call, list(peak))
                elif isinstance(peak, (int, float)) and not isinstance(peak, bool):
                    self._torch_optimizer(spec, peak, label, call, None)
        return wrapped

    def _hf_trainers(self) -> None:
        """transformers `Trainer(model, args=TrainingArguments(learning_rate=...))`: AdamW at
        `learning_rate` (default 5e-5) unless `optim=` names another family."""
        ctx = self.ctx
        for call in ctx.calls_to("transformers.Trainer", "transformers.Seq2SeqTrainer", "transformers.trainer.Trainer"):
            if kwarg(call, "optimizers") is not None or any(kw.arg is None for kw in call.keywords):
                continue
            model = kwarg(call, "model", 0)
            args = kwarg(call, "args", 1)
            if model is None or args is None:
                continue
            for origin in origins(ctx, args):
                if not isinstance(origin, ast.Call) or not (ctx.call_name(origin) or "").endswith(("TrainingArguments",)):
                    continue
                lr_node = kwarg(origin, "learning_rate")
                lr = 5e-5 if lr_node is None else value(ctx, lr_node)
                if isinstance(lr, bool) or not isinstance(lr, (int, float)):
                    continue
                optim_node = kwarg(origin, "optim")
                optim = "adamw_torch" if optim_node is None else value(ctx, optim_node)
                if not isinstance(optim, str):
                    optim = getattr(optim, "value", None) if optim is not UNKNOWN else None
                    if not isinstance(optim, str):
                        continue
                low = optim.lower()
                family = "adam" if low.startswith(("adam", "lion", "paged_adam", "paged_lion")) else low if low in ("sgd", "rmsprop", "adagrad") else None
                if family is None:
                    continue
                display = {"adam": "AdamW", "sgd": "SGD", "rmsprop": "RMSprop", "adagrad": "Adagrad"}[family]
                spec = OptimizerSpec(origin, "torch", f"{display} (Trainer)", family, lr, "", 0.0 if family == "sgd" else None)
                hit = self._torch_link(model, call)
                if hit is None:
                    continue
                link, sub = hit
                head_only = self._torch_part_head_only(link, sub, None, call)
                self._report(origin, spec, float(lr), "TrainingArguments default" if lr_node is None else "", link, head_only)

    def _rewritten_optimizers(self) -> set[int]:
        """Optimizer constructions whose rate is overwritten later:
        `for g in opt.param_groups: g["lr"] = ...` (LR finders, manual schedules)."""
        ctx = self.ctx
        out: set[int] = set()
        for node in ctx.nodes_of(ast.For, ast.AsyncFor):
            it = node.iter
            if not (isinstance(it, ast.Attribute) and it.attr == "param_groups"):
                continue
            writes = any(
                isinstance(t, ast.Subscript) and ctx.value(t.slice) == "lr"
                for sub in ast.walk(node)
                if isinstance(sub, (ast.Assign, ast.AugAssign))
                for t in (sub.targets if isinstance(sub, ast.Assign) else [sub.target])
            )
            if writes:
                out.update(id(o) for o in origins(ctx, it.value))
        return out

    def _torch_optimizer(self, spec: OptimizerSpec, default_lr: Any, origin: str, report_at: ast.AST, per_group: list | None) -> None:
        ctx = self.ctx
        if spec.params is None:
            return
        if self._rewritten is None:
            self._rewritten = self._rewritten_optimizers()
        if id(spec.call) in self._rewritten:
            return
        groups = _param_groups(ctx, spec.params)
        if groups is None:
            return
        for index, (group_node, params, lr_node) in enumerate(groups):
            if per_group is not None:
                if index >= len(per_group):
                    return
                lr, lr_origin = per_group[index], origin
            elif lr_node is not None:
                lr, lr_origin = value(ctx, lr_node), ""
            else:
                lr, lr_origin = default_lr, origin
            if isinstance(lr, bool) or not isinstance(lr, (int, float)) or lr is UNKNOWN:
                continue
            parts = _param_parts(ctx, params)
            if not parts and spec.params_is_model:
                parts = [(params, None)]  # timm create_optimizer_v2(model, ...)
            linked = []
            for receiver, filt in parts:
                hit = self._torch_link(receiver, spec.call)
                if hit is not None:
                    linked.append((hit, filt))
            if not linked:
                continue
            kinds = [self._torch_part_kind(link, sub, filt, spec.call) for (link, sub), filt in linked]
            if all(k == "frozen" for k in kinds):
                continue  # a group of frozen backbone parameters: nothing in it trains
            if all(self._synthetic_steps_only(spec, l) for (l, _), _ in linked):
                return  # every step follows a forward pass on torch.rand(...): a demo or benchmark
            head_only = all(k != "trainable" for k in kinds)
            link = linked[0][0][0]
            group = ""
            if len(groups) > 1:
                group = f" (param group {index + 1}: {ast.unparse(params)[:60]})"
            node = group_node if (group_node is not None and per_group is None and len(groups) > 1) else report_at
            self._report(node, spec, float(lr), lr_origin, link, head_only, group)

    def _synthetic_steps_only(self, spec: OptimizerSpec, link: Link) -> bool:
        """Does this optimizer only ever step on random tensors? Every forward pass of the
        linked model takes `torch.rand(...)`-style input, and every `.step()` of the optimizer
        sits in a scope that runs such a forward pass (an autograd demo, a memory or speed
        benchmark): nothing is fine-tuned, whatever the rate."""
        ctx = self.ctx
        steps = [
            c for c in ctx.method_calls("step")
            if any(o is spec.call for o in origins(ctx, c.func.value))  # type: ignore[attr-defined]
        ]
        if not steps:
            return False
        forwards = []
        for call in ctx.calls:
            func = call.func
            target = func.value if isinstance(func, ast.Attribute) and func.attr == "forward" else func
            if not isinstance(target, (ast.Name, ast.Attribute)) or ctx.call_name(call):
                continue
            if isinstance(target, ast.Name) and target.id == "self":
                continue
            if any(id(o) in link.anchors for o in origins(ctx, target)):
                forwards.append(call)
        if not forwards or not all(call.args and _random_tensor(ctx, call.args[0]) for call in forwards):
            return False
        scopes = {id(ctx.scope(c)) for c in forwards}
        return all(id(ctx.scope(s)) in scopes for s in steps)

    def _torch_link(self, receiver: ast.AST, at: ast.AST) -> tuple[Link, list[str]] | None:
        """Walk `model.backbone.layer4` down to the first part that holds pretrained weights;
        return the link and the attribute path below it."""
        path: list[str] = []
        node = receiver
        while node is not None:
            link = self._torch_model_link(node, at)
            if link is not None:
                return link, list(reversed(path))
            if isinstance(node, ast.Attribute):
                path.append(node.attr)
                node = node.value
            elif isinstance(node, ast.Subscript):
                path.append("[...]")
                node = node.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_classifier":
                path.append("classifier")  # timm: the head module
                node = node.func.value
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get_submodule", "__getattr__"):
                path.append("?")
                node = node.func.value
            else:
                break
        return None

    def _torch_model_link(self, node: ast.AST, at: ast.AST) -> Link | None:
        ctx = self.ctx
        if isinstance(node, ast.Name) and node.id == "self":
            klass = ctx.enclosing_class(node)
            if klass is not None:
                infos = self.finder.class_models(klass)
                if infos:
                    return Link(model_label(ctx, infos[0]), {id(klass)}, {id(i.call) for i in infos}, klass)
            return None
        model_origins = origins(ctx, node)
        anchors = {id(o) for o in model_origins}
        for o in model_origins:
            info = self.finder.info(o)
            if info is not None:
                if self.finder.pretrained(info):
                    return Link(model_label(ctx, info), anchors, {id(info.call)})
                continue
            if isinstance(o, ast.Call):
                klass = local_class(ctx, o)
                if klass is not None:
                    infos = self.finder.class_models(klass)
                    if infos:
                        return Link(model_label(ctx, infos[0]), anchors, {id(i.call) for i in infos}, klass)
                    continue
                if (ctx.call_name(o) or "").startswith("torch.nn.Sequential"):
                    infos, _ = self.finder.slice([o])
                    pre = [i for i in infos if self.finder.pretrained(i)]
                    if pre:
                        return Link(model_label(ctx, pre[0]), anchors, {id(i.call) for i in pre})
        if not anchors or all(isinstance(o, (ast.Name, ast.Attribute)) for o in model_origins):
            return None
        loaded = self._loaded_weights(anchors, at, ("load_state_dict",), node)
        if loaded:
            return Link(loaded, anchors, anchors)
        return None

    def _torch_part_head_only(self, link: Link, sub: list[str], filt: str | None, at: ast.AST) -> bool:
        return self._torch_part_kind(link, sub, filt, at) != "trainable"

    def _torch_part_kind(self, link: Link, sub: list[str], filt: str | None, at: ast.AST) -> str:
        """'head' (a new head, or everything but a frozen backbone), 'frozen' (only frozen
        backbone parameters) or 'trainable' (pretrained weights that train)."""
        sub = [s for s in sub if s != "module"]
        if filt == "head" or (sub and sub[0] in HEAD_ATTRS):
            return "head"
        frozen = self._torch_backbone_frozen(link, at)
        if not frozen:
            return "trainable"
        if sub and (sub[0] in BACKBONE_ATTRS or sub[0] in _TRUNK_ATTRS):
            return "frozen"
        return "head"

    def _torch_backbone_frozen(self, link: Link, at: ast.AST) -> bool:
        state = "trainable"
        for event in call_site_freezes(self.ctx):
            if event.framework != "torch" or not may_run_before(self.ctx, event.node, at):
                continue
            scope = self._event_scope(event)
            if scope == "skip":
                continue
            where = self._event_target(event, link)
            if where is None:
                continue
            effective = _classify(where[0], where[1], scope)
            if effective is None:
                continue
            state = _next_state(state, event.frozen, effective == "full")
        return state == "frozen"

    # ------------------------------------------------------------------ freeze events
    def _event_target(self, event, link: Link) -> tuple[str, list[str]] | None:
        """Does a freeze event touch the linked model? ('base', rest) for the pretrained part,
        ('model', rest) for the model as a whole or one of its attributes."""
        ctx = self.ctx
        parts = key_parts(event.target)
        if not parts:
            return None
        if parts[0] in ("self", "cls") and link.klass is not None and ctx.enclosing_class(event.node) is link.klass:
            found = key_origins(ctx, event.target, event.node)
            if found is not None and any(id(o) in link.pretrained for o in found[0]):
                return "base", found[1]
            return "model", parts[1:]
        found = key_origins(ctx, event.target, event.node)
        if found is None:
            return None
        nodes, rest = found
        ids = {id(n) for n in nodes}
        if ids & link.anchors:
            return "model", rest
        if ids & link.pretrained:
            return "base", rest
        return None

    def _event_scope(self, event) -> str:
        """'full' (the whole target), 'partial' (a slice, a filtered subset or a sub-module of
        each loop item) or 'skip' (a branch that does not run). For a call of a freeze helper
        (`freeze_backbone_if(net, feature_extract)`): the branches around the call, then those
        around the helper's own freeze statements, its parameters bound to this call."""
        ctx = self.ctx
        helper = lifted_helper(ctx, event)
        if helper is None:
            return self._statement_scope(event.node, freeze_target_node(event.node), event.frozen)
        outer = self._statement_scope(event.node, None, event.frozen)
        statements = helper_freeze_statements(ctx, helper, event.framework, event.frozen)
        if outer == "skip" or not statements:
            return outer
        inner = [self._statement_scope(s, freeze_target_node(s), event.frozen, (helper, event.node)) for s in statements]
        inner = [i for i in inner if i != "skip"]
        if not inner:
            return "skip"
        return "partial" if outer == "partial" or "partial" in inner else "full"

    def _statement_scope(self, node: ast.AST, receiver: ast.AST | None, frozen: bool, call: tuple | None = None) -> str:
        ctx = self.ctx
        receiver_key = ctx.key(receiver) if receiver is not None else None
        loop_vars: set[str] = set()
        partial = False
        for anc in ctx.ancestors(node):
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            if isinstance(anc, (ast.For, ast.AsyncFor)):
                names = {t.id for t in ast.walk(anc.target) if isinstance(t, ast.Name)}
                loop_vars |= names
                root = (receiver_key or "").split(".", 1)[0].split("[", 1)[0]
                if root in names:
                    if isinstance(_strip_iter(anc.iter), ast.Subscript):
                        partial = True
                    if receiver_key and receiver_key != root:
                        partial = True  # layer.bn.trainable: a part of each item
        child = node
        for anc in ctx.ancestors(node):
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                break
            if isinstance(anc, ast.If):
                in_body = any(child is s for s in anc.body)
                names = {n.id for n in ast.walk(anc.test) if isinstance(n, ast.Name)}
                if names & loop_vars:
                    if not (in_body and _excludes_head_only(anc.test)):
                        partial = True
                else:
                    flag = self._condition(anc.test, call)
                    if flag is not UNKNOWN:
                        if bool(flag) != in_body:
                            return "skip"
                    elif not frozen:
                        return "skip"  # an unfreeze we cannot tell runs: assume it does not
            child = anc
        return "partial" if partial else "full"

    def _condition(self, test: ast.AST, call: tuple | None) -> Any:
        """The value of an `if` test; inside a helper reached through `call` (helper, call
        node), a test on one of its parameters reads the argument of that call."""
        if call is not None:
            flag = helper_condition(self.ctx, test, *call)
            if flag is not UNKNOWN:
                return flag
        return value(self.ctx, test)

    # ------------------------------------------------------------------ loaded checkpoints
    def _loaded_weights(self, anchors: set[int], at: ast.AST, methods: tuple[str, ...], user: ast.AST) -> str | None:
        """A `model.load_state_dict(...)` / `model.load_weights(...)` of pretrained weights
        into one of `anchors` before `at`; not a resume (optimizer state loaded too, or a
        branch on resume/exists) and not a checkpoint this same file writes. `user` is the
        model expression at `at`: a load in the same function must name the same variable
        (two models built by one factory share their origin)."""
        ctx = self.ctx
        if any(self._is_optimizer(c.func.value) for c in ctx.method_calls("load_state_dict")):  # type: ignore[attr-defined]
            return None
        saved = self._saved_fragments()
        for call in ctx.method_calls(*methods):
            if not call.args or not may_run_before(ctx, call, at):
                continue
            node = call.func.value  # type: ignore[attr-defined]
            hit = False
            while node is not None:
                if {id(o) for o in origins(ctx, node)} & anchors:
                    hit = True
                    break
                node = node.value if isinstance(node, ast.Attribute) else None
            if not hit:
                continue
            if ctx.enclosing_function(call) is ctx.enclosing_function(user) and _root_key(ctx, call.func.value) != _root_key(ctx, user):  # type: ignore[attr-defined]
                continue
            if self._in_resume_branch(call):
                continue
            arg = call.args[0]
            # load_state_dict(pretrained.state_dict())
            for o in origins(ctx, arg):
                if isinstance(o, ast.Call) and isinstance(o.func, ast.Attribute) and o.func.attr == "state_dict":
                    src = self.finder.info(_first(origins(ctx, o.func.value)))
                    if src is not None and self.finder.pretrained(src):
                        return model_label(ctx, src)
            text = ctx.string_fragments(arg)
            for o in origins(ctx, arg):
                if isinstance(o, ast.Call) and o.args:
                    text += " " + ctx.string_fragments(o.args[0])
            words = [w for w in text.split() if w]
            if any(w in saved for w in words if len(w) > 3):
                continue  # this script's own checkpoint
            names = {ctx.call_name(o) or "" for o in origins(ctx, arg) if isinstance(o, ast.Call)}
            if any(n.endswith(("load_state_dict_from_url", "load_url")) for n in names):
                return "downloaded (load_state_dict_from_url)"
            path = next((w for w in words if "." in w or "/" in w), None)
            if path is None:
                continue
            return repr(path)
        return None

    def _saved_fragments(self) -> set[str]:
        ctx = self.ctx
        out: set[str] = set()
        for call in ctx.calls:
            name = ctx.call_name(call) or ""
            method = call.func.attr if isinstance(call.func, ast.Attribute) else ""
            node = None
            if name in ("torch.save",) and len(call.args) > 1:
                node = call.args[1]
            elif method in ("save_weights", "save", "save_pretrained") and call.args:
                node = call.args[0]
            elif name.endswith("ModelCheckpoint"):
                node = kwarg(call, "filepath", 0)
            if node is not None:
                out.update(w for w in ctx.string_fragments(node).split() if len(w) > 3)
                for o in origins(ctx, node):
                    out.update(w for w in ctx.string_fragments(o).split() if len(w) > 3)
        return out

    def _in_resume_branch(self, call: ast.Call) -> bool:
        for anc in self.ctx.ancestors(call):
            if isinstance(anc, ast.If):
                text = ast.unparse(anc.test).lower()
                if any(w in text for w in _RESUME_WORDS):
                    return True
        return False

    def _is_optimizer(self, node: ast.AST) -> bool:
        return any(optimizer_spec(self.ctx, o) is not None for o in origins(self.ctx, node))


# ---------------------------------------------------------------------- helpers
def _root_key(ctx: ModuleContext, node: ast.AST) -> str | None:
    """`model.module.backbone` -> 'model'; `self.net.fc` -> 'self.net'."""
    key = ctx.key(node)
    if not key:
        return None
    parts = key_parts(key)
    return ".".join(parts[:2]) if parts[0] in ("self", "cls") and len(parts) > 1 else parts[0]


def _first(items):
    return items[0] if items else None


def _classify(level: str, sub: list[str], scope: str) -> str | None:
    """How a freeze event on `<level>.<sub...>` acts on the pretrained weights: 'full',
    'partial', or None (it touches only the head)."""
    sub = [s for s in sub if s != "module"]
    if not sub:
        return scope
    if sub[0] in HEAD_ATTRS:
        return None
    if level == "model" and sub[0] in BACKBONE_ATTRS:
        return scope
    return "partial"


def _next_state(state: str, frozen: bool, full: bool) -> str:
    if frozen:
        return "frozen" if full else ("partial" if state == "trainable" else state)
    if full:
        return "trainable"
    return "partial" if state == "frozen" else state


def _strip_iter(node: ast.AST) -> ast.AST:
    """`enumerate(base.layers[:100])`, `model.features[:3].parameters()` -> the subscript."""
    while isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Name) and func.id in ("enumerate", "list", "tuple", "iter", "reversed", "filter") and node.args:
            node = node.args[-1] if func.id == "filter" else node.args[0]
        elif isinstance(func, ast.Attribute) and func.attr in ("named_parameters", "parameters", "children", "named_children", "modules", "named_modules", "values"):
            node = func.value
        else:
            return node
    while isinstance(node, ast.Attribute) and node.attr in ("layers", "submodules"):
        node = node.value
    return node


def _excludes_head_only(test: ast.AST) -> bool:
    """`"fc" not in name`, `not name.startswith("classifier")`, and-ed together."""
    if isinstance(test, ast.BoolOp) and isinstance(test.op, ast.And):
        return all(_excludes_head_only(v) for v in test.values)
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and isinstance(test.ops[0], ast.NotIn):
        left = test.left
        return isinstance(left, ast.Constant) and isinstance(left.value, str) and _is_head_word(left.value)
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = test.operand
        if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr == "startswith" and inner.args:
            arg = inner.args[0]
            values = [arg] if not isinstance(arg, ast.Tuple) else arg.elts
            return all(isinstance(v, ast.Constant) and isinstance(v.value, str) and _is_head_word(v.value) for v in values)
        if isinstance(inner, ast.Compare) and len(inner.ops) == 1 and isinstance(inner.ops[0], ast.In):
            left = inner.left
            return isinstance(left, ast.Constant) and isinstance(left.value, str) and _is_head_word(left.value)
    return False


def _is_head_word(text: str) -> bool:
    first = text.strip(".").split(".")[0]
    return first in HEAD_ATTRS


def _hub_frozen(ctx: ModuleContext, call: ast.Call) -> bool:
    node = kwarg(call, "trainable")
    return node is None or value(ctx, node) is False


def _is_overridden_compile(ctx: ModuleContext, receiver: ast.AST) -> bool:
    """A custom Model subclass with its own compile(...) signature (GANs, distillers)."""
    for o in origins(ctx, receiver):
        if isinstance(o, ast.Call):
            klass = local_class(ctx, o)
            if klass is not None and any(isinstance(s, ast.FunctionDef) and s.name == "compile" for s in klass.body):
                return True
    if isinstance(receiver, ast.Name) and receiver.id == "self":
        klass = ctx.enclosing_class(receiver)
        if klass is not None and any(isinstance(s, ast.FunctionDef) and s.name == "compile" for s in klass.body):
            return True
    return False


def _param_groups(ctx: ModuleContext, params: ast.expr) -> list[tuple[ast.AST | None, ast.expr, ast.expr | None]] | None:
    """[(group node, params expr, lr expr or None)]; one group for a plain iterable."""
    target = ctx.resolve(params) if isinstance(params, (ast.Name, ast.Attribute)) else params
    if isinstance(target, (ast.List, ast.Tuple)) and target.elts and all(_is_group(ctx, e) for e in target.elts):
        groups = []
        for elt in target.elts:
            d = _group_dict(ctx, elt)
            if d is None or "params" not in d:
                return None
            groups.append((elt, d["params"], d.get("lr")))
        return groups
    if isinstance(target, (ast.ListComp, ast.GeneratorExp)) and isinstance(target.elt, ast.Dict):
        return None  # groups built in a loop: too dynamic
    return [(None, params, None)]


def _is_group(ctx: ModuleContext, node: ast.AST) -> bool:
    target = ctx.resolve(node) if isinstance(node, ast.Name) else node
    return isinstance(target, ast.Dict) or (isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id == "dict")


def _group_dict(ctx: ModuleContext, node: ast.AST) -> dict[str, ast.expr] | None:
    target = ctx.resolve(node) if isinstance(node, ast.Name) else node
    out: dict[str, ast.expr] = {}
    if isinstance(target, ast.Dict):
        for k, v in zip(target.keys, target.values):
            if k is None:
                return None
            key = ctx.value(k)
            if isinstance(key, str):
                out[key] = v
        return out
    if isinstance(target, ast.Call):
        for kw in target.keywords:
            if kw.arg is None:
                return None
            out[kw.arg] = kw.value
        return out
    return None


def _param_parts(ctx: ModuleContext, expr: ast.AST, depth: int = 0) -> list[tuple[ast.AST, str | None]]:
    """The modules whose parameters an expression collects: [(module expr, filter)] where
    filter is 'head' / 'backbone' (a name test) / 'trainable' (requires_grad test) / None."""
    out: list[tuple[ast.AST, str | None]] = []
    seen: set[int] = set()

    def visit(node: ast.AST | None, filt: str | None, d: int) -> None:
        if node is None or d > 10 or id(node) in seen:
            return
        seen.add(id(node))
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Attribute) and func.attr in ("parameters", "named_parameters"):
                out.append((func.value, filt))
                return
            if isinstance(func, ast.Name) and func.id == "filter" and len(node.args) == 2:
                visit(node.args[1], filt or "trainable", d + 1)
                return
            if isinstance(func, ast.Name) and func.id in ("list", "tuple", "iter", "set"):
                for a in node.args:
                    visit(a, filt, d + 1)
                return
            if (ctx.call_name(node) or "") in ("itertools.chain", "itertools.chain.from_iterable"):
                for a in node.args:
                    visit(a, filt, d + 1)
                return
            if isinstance(func, ast.Attribute) and func.attr in ("values",):
                visit(func.value, filt, d + 1)
                return
            for o in origins(ctx, node):
                if o is not node:
                    visit(o, filt, d + 1)
            return
        if isinstance(node, (ast.ListComp, ast.GeneratorExp, ast.SetComp)):
            f = filt
            for gen in node.generators:
                for cond in gen.ifs:
                    f = _filter_kind(cond) or f
                visit(gen.iter, f, d + 1)
            return
        if isinstance(node, (ast.List, ast.Tuple)):
            for e in node.elts:
                visit(e.value if isinstance(e, ast.Starred) else e, filt, d + 1)
            return
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Add):
            visit(node.left, filt, d + 1)
            visit(node.right, filt, d + 1)
            return
        if isinstance(node, ast.Attribute) and node.attr in ("weight", "bias"):
            out.append((node.value, filt))
            return
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = ctx.key(node)
            record = ctx.assignment_at(key, node) if key else None
            if record is not None and isinstance(record.stmt, (ast.For, ast.AsyncFor)) and record.value is None:
                visit(record.stmt.iter, filt, d + 1)
                return
            found = origins(ctx, node)
            for o in found:
                if o is node:
                    return
                if isinstance(o, ast.List) and not o.elts and key:
                    # params = []; params.append(p) / params.extend(...) / params += [...]
                    for call in ctx.method_calls("append", "extend"):
                        if ctx.key(call.func.value) == key:  # type: ignore[attr-defined]
                            for a in call.args:
                                visit(a, filt or _enclosing_filter(ctx, call), d + 1)
                    continue
                visit(o, filt, d + 1)
            return

    visit(expr, None, depth)
    return out


def _filter_kind(cond: ast.AST) -> str | None:
    text = ast.unparse(cond)
    if "requires_grad" in text:
        return "trainable"
    if _excludes_head_only(cond):
        return "backbone"
    if isinstance(cond, ast.Compare) and len(cond.ops) == 1 and isinstance(cond.ops[0], ast.In):
        left = cond.left
        if isinstance(left, ast.Constant) and isinstance(left.value, str) and _is_head_word(left.value):
            return "head"
    if isinstance(cond, ast.Call) and isinstance(cond.func, ast.Attribute) and cond.func.attr == "startswith" and cond.args:
        arg = cond.args[0]
        if isinstance(arg, ast.Constant) and isinstance(arg.value, str) and _is_head_word(arg.value):
            return "head"
    return "subset"


def _enclosing_filter(ctx: ModuleContext, node: ast.AST) -> str | None:
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
            break
        if isinstance(anc, ast.If):
            return _filter_kind(anc.test)
    return None


#: constructors of synthetic input tensors
_RANDOM_TENSORS = frozenset(
    {
        "torch.rand", "torch.randn", "torch.randint", "torch.rand_like", "torch.randn_like", "torch.randint_like",
        "torch.zeros", "torch.ones", "torch.empty", "torch.full", "torch.zeros_like", "torch.ones_like",
    }
)
_TENSOR_PASSTHROUGH = frozenset(
    {"to", "cuda", "cpu", "float", "half", "double", "bfloat16", "requires_grad_", "unsqueeze", "view", "reshape", "contiguous", "detach", "clone"}
)


def _random_tensor(ctx: ModuleContext, node: ast.AST, depth: int = 0) -> bool:
    """Is this input a tensor made up on the spot (`torch.rand(1, 3, 224, 224).cuda()`)?"""
    if depth > 10:
        return False
    if isinstance(node, ast.Name):
        target = ctx.resolve(node)
        return target is not None and target is not node and _random_tensor(ctx, target, depth + 1)
    if isinstance(node, ast.Call):
        func = node.func
        if (ctx.call_name(node) or "") in _RANDOM_TENSORS:
            return True
        if isinstance(func, ast.Attribute) and func.attr in _TENSOR_PASSTHROUGH:
            return _random_tensor(ctx, func.value, depth + 1)
    return False
