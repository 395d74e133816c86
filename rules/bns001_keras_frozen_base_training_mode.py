"""BNS001: a frozen Keras base model used in the new model without `training=False`."""

from __future__ import annotations

import ast

from auditor.analysis.context import UNKNOWN, FreezeEvent, kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from ._modes import analysis, mentions_batchnorm, place
from ._shared import call_site_freezes, helper_freeze_statements, is_parameter, lifted_helper

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


class KerasFrozenBaseTrainingMode(StaticRule):
    """
    ## What it does
    Flags a Keras base model frozen with `base.trainable = False` and then used in the new
    model without `training=False`.

    Forms recognised: called as `base(inputs)` or `base(x, training=True)`
    while building a functional or subclassed model, put in a `Sequential([base, ...])` or
    `model.add(base)`, or wired in through `base.output`. Only bases that contain
    BatchNormalization are judged (every Keras application except VGG16/VGG19/ConvNeXt,
    models of the file that add `BatchNormalization` layers). A warning; an error when the
    file later unfreezes that base (`base.trainable = True`, or a loop setting
    `layer.trainable = True`) for fine-tuning.

    ## Why is this bad?
    While `trainable` is False, Keras runs BatchNormalization in inference mode whatever the
    call says. Fine-tuning then unfreezes the base, and from that moment `fit()` passes
    `training=True` down to it: every BatchNormalization layer normalises with the
    statistics of the current batch and overwrites its moving mean and variance. The
    pretrained statistics are replaced by noisy estimates from small batches of a new data
    set, and the first fine-tuning epochs destroy what the head has learnt. The Keras
    transfer-learning guide therefore builds the model with `base(inputs, training=False)`,
    which keeps BatchNormalization in inference mode even after unfreezing.

    ## Example
    ```python
    import keras

    base = keras.applications.ResNet50(weights="imagenet", include_top=False)
    base.trainable = False

    inputs = keras.Input(shape=(224, 224, 3))
    x = base(inputs)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    ```

    ## Use instead
    ```python
    import keras

    base = keras.applications.ResNet50(weights="imagenet", include_top=False)
    base.trainable = False

    inputs = keras.Input(shape=(224, 224, 3))
    x = base(inputs, training=False)
    x = keras.layers.GlobalAveragePooling2D()(x)
    outputs = keras.layers.Dense(10)(x)
    model = keras.Model(inputs, outputs)
    ```

    ## Known problems
    Bases whose content the file does not show (`hub.KerasLayer`, `load_model(...)`, models
    of other modules) are not judged. An unfreezing step that keeps BatchNormalization
    frozen (`if not isinstance(layer, BatchNormalization): layer.trainable = True`, or
    re-freezing the BatchNormalization layers afterwards) is recognised and silences the rule.
    So is a base wrapped into a fixed feature extractor that fit() never trains: a model
    built on it that is only called without `training=True` outside `call()` (from a custom
    `train_step`, or eagerly on data), predicted with or saved, never compiled, fitted or
    built into another model. Inside `call()`, `training=training` is reported even when
    the parameter defaults to False, since fit() passes True.

    `base(inputs, training=False)` in a functional or Sequential model protects the frozen
    base, but in Keras 3 (measured on 3.15) it does not survive unfreezing: the outer
    model's call passes fit()'s `training=True` to every nested model of its graph and
    overrides the `training=False` recorded there (keras-team/keras#20285). When you unfreeze
    the base for fine-tuning, set `trainable = False` again on its BatchNormalization layers,
    or call the base with an explicit `training=False` from a subclassed model's `call()`.
    The dynamic probe BNS103 (`auditor audit`) measures which layers would move.

    ## References
    - FRAMEWORK_FACTS §3.1 (K-bn, K-guide): `trainable=False` puts BatchNormalization in
      inference mode; without `training=False` it trains again once unfrozen.
    - Keras transfer-learning guide, "Fine-tuning" (keras.io/guides/transfer_learning).
    """

    code = "BNS001"
    name = "keras-frozen-base-training-mode"
    category = "batchnorm"
    severity = Severity.WARNING
    requires = frozenset({"trainable"})
    message = "{base} ({label}, frozen at {freeze_at}) {how}{later}"
    fix = "{fix_text}"

    def check(self, ctx):
        a = analysis(ctx)
        # a freeze inside a helper counts where the helper is called (the context's lifted events)
        keras_events = [e for e in call_site_freezes(ctx) if e.framework == "keras"]
        if not any(e.frozen for e in keras_events):
            return
        done: set = set()
        for ev in keras_events:
            if not ev.frozen or ev.partial or not ev.target or ev.target == "?":
                continue
            if "[" in ev.target or ev.target.count(".") > (1 if ev.target.startswith("self.") else 0):
                continue  # model.layers[0], model.backbone: not a variable we can follow
            shallow = _origins(ctx, a, ev)
            if not shallow:
                continue
            base_origins = list(dict.fromkeys(shallow + a.deep_origins(shallow)))
            ident = tuple(sorted(id(o) for o in base_origins))
            if ident in done:
                continue
            if not all(_is_model(ctx, a, o) for o in a.deep_origins(shallow)):
                continue  # a single frozen layer, not a base model
            bn, _, label = a.keras_features(_probe_node(ctx, ev))
            if bn is not True:
                continue
            usages = [u for u in _usages(ctx, a, base_origins) if not _fixed_extractor_only(ctx, a, u, base_origins)]
            if not usages:
                continue
            containers = [c for _, _, _, c in usages if c is not None]
            unfreeze, bn_aware = _unfreezes(ctx, a, keras_events, ev, base_origins, containers)
            if bn_aware and unfreeze is None:
                continue  # the fine-tuning step keeps BatchNormalization frozen on purpose
            done.add(ident)
            later = ""
            severity = Severity.WARNING
            if unfreeze is not None:
                severity = Severity.ERROR
                later = (
                    f"; it is unfrozen again ({place(ctx, unfreeze.node)}), so from then on fit() runs its "
                    "BatchNormalization layers in training mode and overwrites their moving mean/variance"
                )
            else:
                later = (
                    "; once it is unfrozen for fine-tuning, fit() will run its BatchNormalization layers in training "
                    "mode and overwrite their moving mean/variance"
                )
            # report the use that runs after the freeze where there is one
            usages.sort(key=lambda u: not _runs_after(ctx, a, u[0], ev.node))
            for node, how, fix_text, _ in usages[:1]:
                yield self.finding(
                    ctx,
                    node,
                    severity=severity,
                    base=_base_name(ctx, node) or ev.target,
                    label=label,
                    freeze_at=place(ctx, ev.node),
                    how=how,
                    later=later,
                    fix_text=fix_text,
                    evidence={"base": ev.target, "unfrozen_later": unfreeze is not None},
                )


def _runs_after(ctx, a, node: ast.AST, freeze: ast.AST, depth: int = 0) -> bool:
    """Does `node` run after the freeze (source order, or through the calls of its function /
    the construction of its class)?"""
    if depth > 3:
        return False
    scope = a.scope_of(node)
    if scope is a.scope_of(freeze) or scope is ctx.tree:
        return ctx.order.get(node, 0) > ctx.order.get(freeze, 0)
    if not isinstance(scope, _FUNCS):
        return False
    sites = a.call_sites(scope)
    klass = ctx.enclosing_class(scope)
    if scope.name == "call" and klass is not None:
        sites = [c for c in ctx.calls if isinstance(c.func, ast.Name) and c.func.id == klass.name]
    return any(_runs_after(ctx, a, s, freeze, depth + 1) for s in sites)


def _is_model(ctx, a, origin: ast.AST) -> bool:
    """A model (application, Sequential, functional, subclass), not a single layer."""
    name = ctx.call_name(origin) if isinstance(origin, ast.Call) else None
    if name and name.startswith("keras.layers."):
        return False
    return True


def _base_name(ctx, node: ast.AST) -> str | None:
    """The base's name at the usage: `base` of `base(x)`, `[base, ...]`, `.add(base)`, `base.output`."""
    if isinstance(node, ast.Call):
        if isinstance(node.func, ast.Attribute) and node.func.attr == "add" and node.args:
            return ctx.key(node.args[0])
        return ctx.key(node.func)
    if isinstance(node, ast.Attribute) and node.attr in ("output", "outputs"):
        owner = node.value
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute):
            owner = owner.func.value
        elif isinstance(owner, ast.Subscript) and isinstance(owner.value, ast.Attribute):
            owner = owner.value.value
        return ctx.key(owner)
    return ctx.key(node)


def _probe_node(ctx, ev) -> ast.AST:
    """An expression naming the frozen base at the freeze (for feature lookup)."""
    node = ev.node
    if isinstance(node, ast.Assign):
        target = node.targets[0]
        if isinstance(target, ast.Attribute) and ctx.key(target.value) == ev.target:
            return target.value
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and sub.id == ev.target:
            return sub
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.For, ast.AsyncFor)):
            for sub in ast.walk(anc.iter):
                if isinstance(sub, ast.Name) and sub.id == ev.target:
                    return sub
    return node


def _origins(ctx, a, ev: FreezeEvent) -> list[ast.AST]:
    # the freeze may come from `base = App(..., trainable=False)` itself
    if isinstance(ev.node, ast.Call) and lifted_helper(ctx, ev) is None:
        return [ev.node]
    return [o for o in a.origins_of_key(ev.target, ev.node) if isinstance(o, ast.Call)]


def _same(ctx, a, node: ast.AST, origins: list[ast.AST]) -> bool:
    return any(o in origins for o in a.origins(node))


def _usages(ctx, a, origins: list[ast.AST]):
    """(node, how, fix, container call) for each use of the base in a model being built."""
    for call in ctx.calls:
        f = call.func
        name = ctx.call_name(call) or ""
        # x = base(inputs) / base(x, training=True)
        if isinstance(f, (ast.Name, ast.Attribute)) and not name and ctx.key(f) and _same(ctx, a, f, origins):
            fkey = ctx.key(f)
            training = kwarg(call, "training")
            inputs = call.args[0] if call.args else kwarg(call, "inputs")
            func = ctx.enclosing_function(call)
            in_call_method = func is not None and func.name == "call" and ctx.enclosing_class(call) is not None
            building = in_call_method or (inputs is not None and a.reaches_keras_input(inputs))
            if not building:
                continue  # an eager call on data, not part of a model that fit() trains
            if training is not None:
                value = ctx.value(training)
                if in_call_method and isinstance(training, ast.Name) and is_parameter(ctx.assignment_at(training.id, training)):
                    value = UNKNOWN  # `def call(self, x, training=False)`: fit() passes True, the default is not what runs
                if value is False:
                    continue
                if value is True:
                    yield call, "is called with training=True", f"Call it as {fkey}(x, training=False).", None
                    continue
                if in_call_method and isinstance(training, ast.Name) and training.id == "training":
                    yield (call, "is called with training=training inside call(), which fit() sets to True",
                           f"Call it as {fkey}(x, training=False) inside call().", None)
                continue
            if in_call_method:
                yield call, "is called inside call() without training=False", f"Call it as {fkey}(x, training=False).", None
                continue
            yield call, f"is called as {fkey}({_short(inputs)}) in a functional model without training=False", f"Call it as {fkey}({_short(inputs)}, training=False).", None
            continue
        # keras.Sequential([base, ...])
        if name == "keras.Sequential":
            layers = kwarg(call, "layers", 0)
            if isinstance(layers, (ast.List, ast.Tuple)):
                for el in layers.elts:
                    if isinstance(el, (ast.Name, ast.Attribute)) and ctx.key(el) and _same(ctx, a, el, origins):
                        yield (el, "is a layer of keras.Sequential, which calls it without training=False",
                               f"Build a functional model instead: x = {ctx.key(el)}(inputs, training=False).", call)
            continue
        # model.add(base)
        if isinstance(f, ast.Attribute) and f.attr == "add" and call.args and isinstance(call.args[0], (ast.Name, ast.Attribute)):
            seq = [o for o in a.origins(f.value) if isinstance(o, ast.Call) and ctx.call_name(o) == "keras.Sequential"]
            if seq and _same(ctx, a, call.args[0], origins):
                yield (call, f"is added to a Sequential model ({ctx.key(f.value)}.add), which calls it without training=False",
                       f"Build a functional model instead: x = {ctx.key(call.args[0])}(inputs, training=False).", seq[0])
    # base.output / base.get_layer(...).output / base.layers[i].output
    for node in ctx.nodes_of(ast.Attribute):
        if not (node.attr in ("output", "outputs") and isinstance(node.ctx, ast.Load)):
            continue
        owner = node.value
        if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute) and owner.func.attr == "get_layer":
            owner = owner.func.value
        elif isinstance(owner, ast.Subscript) and isinstance(owner.value, ast.Attribute) and owner.value.attr == "layers":
            owner = owner.value.value
        if isinstance(owner, (ast.Name, ast.Attribute)) and ctx.key(owner) and _same(ctx, a, owner, origins) and _feeds_layers(ctx, node):
            yield (node, f"is wired into the new model through {ast.unparse(node)}, so its layers get fit()'s training flag",
                   f"Build the head on a call instead: x = {ctx.key(owner)}(inputs, training=False).", None)


def _feeds_layers(ctx, node: ast.AST) -> bool:
    """Is `base.output` used to build a model (an argument of a call), not printed?"""
    parent = ctx.parent(node)
    stmt = ctx.statement(node)
    if isinstance(parent, ast.Call) and isinstance(parent.func, ast.Name) and parent.func.id in ("print", "len", "type"):
        return False
    if isinstance(parent, ast.Attribute):  # base.output.shape, base.output.name
        return False
    if isinstance(parent, (ast.Call, ast.keyword, ast.List, ast.Tuple)):
        return True
    return isinstance(stmt, ast.Assign)


def _short(node: ast.AST) -> str:
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001
        return "inputs"
    return text if len(text) <= 30 else "inputs"


def _unfreezes(ctx, a, events, freeze, origins, containers):
    """The first later unfreeze of the base (or of a model built from it) that lets its
    BatchNormalization layers train, and whether some unfreeze keeps them frozen."""
    bn_aware = False
    found = None
    refreezes = []
    for ev in events:
        if ev is freeze:
            continue
        target_ok = False
        if ev.target and ev.target != "?" and "[" not in ev.target and ev.target.count(".") <= (1 if ev.target.startswith("self.") else 0):
            ev_shallow = _origins(ctx, a, ev)
            ev_origins = ev_shallow + a.deep_origins(ev_shallow)
            if any(o in origins for o in ev_origins) or any(o in containers for o in ev_origins):
                target_ok = True
            elif any(isinstance(o, ast.Call) and ctx.call_name(o) == "keras.Model" and _built_from(ctx, a, o, origins) for o in ev_origins):
                target_ok = True
        if not target_ok:
            continue
        if _keeps_bn_frozen(ctx, ev):
            bn_aware = True
            if ev.frozen:
                refreezes.append(ev)
            continue
        if ev.frozen:
            continue
        if ctx.order.get(ev.node, 0) <= ctx.order.get(freeze.node, 0):
            continue
        if found is None:
            found = ev
    if found is not None and any(ctx.order.get(r.node, 0) > ctx.order.get(found.node, 0) for r in refreezes):
        found = None  # BatchNormalization layers are frozen again right after unfreezing
    return found, bn_aware


def _built_from(ctx, a, model_call: ast.Call, origins) -> bool:
    outputs = kwarg(model_call, "outputs", 1)
    if outputs is None:
        return False
    _, _, reached = a.trace_keras_graph(outputs)
    return any(o in origins for o in reached)


def _keeps_bn_frozen(ctx, ev) -> bool:
    """`if not isinstance(layer, BatchNormalization): layer.trainable = True` and friends; for a
    call of a helper, every statement of the helper that may set the flag this way."""
    helper = lifted_helper(ctx, ev)
    if helper is not None:
        sources = helper_freeze_statements(ctx, helper, "keras", ev.frozen)
        return bool(sources) and all(_guarded_by_bn_test(ctx, n) for n in sources)
    return _guarded_by_bn_test(ctx, ev.node)


def _guarded_by_bn_test(ctx, node: ast.AST) -> bool:
    for anc in ctx.ancestors(node):
        if isinstance(anc, _FUNCS):
            break
        if isinstance(anc, (ast.If, ast.IfExp)) and mentions_batchnorm(anc.test):
            return True
        if isinstance(anc, ast.comprehension) and any(mentions_batchnorm(c) for c in anc.ifs):
            return True
    return False


# ------------------------------------------------------------------ models fit() never trains
#: uses of a model that train it with fit()'s training flag
_FIT_METHODS = frozenset({"fit", "fit_generator", "train_on_batch", "compile"})
#: uses of a model that neither train it nor build a bigger model from it
_NEUTRAL_METHODS = frozenset(
    {
        "predict", "predict_on_batch", "predict_step", "summary", "save", "save_weights", "load_weights", "evaluate",
        "count_params", "to_json", "get_config", "trainable_variables", "trainable_weights", "non_trainable_weights",
        "weights", "variables", "name", "export",
    }
)
_STEP_METHODS = frozenset({"train_step", "test_step", "predict_step"})


def _fixed_extractor_only(ctx, a, usage, origins) -> bool:
    """Is every model built on this use of the base a fixed feature extractor: a model that is
    never compiled, fitted or built into another model, only called without `training=True`
    outside `call()` (a custom `train_step` that feeds its features to the trained parts, an
    eager call on data)? Such a call runs BatchNormalization in inference mode whatever its
    `trainable` flag, so the training flag of fit() never reaches the base."""
    node, _, _, container = usage
    if container is not None:
        models = [container]
    else:
        func = ctx.enclosing_function(node)
        if func is not None and func.name == "call" and ctx.enclosing_class(node) is not None:
            return False  # part of a subclassed model's forward pass
        models = [c for c in ctx.calls if ctx.call_name(c) in ("keras.Model", "keras.models.Model") and _built_from(ctx, a, c, origins)]
    if not models:
        return False
    return all(_never_gets_training_flag(ctx, a, m) for m in models)


def _never_gets_training_flag(ctx, a, model: ast.Call) -> bool:
    holders: set[str] = set()
    uses = []
    for node in ctx.nodes_of(ast.Name, ast.Attribute):
        if not isinstance(node.ctx, ast.Load):
            continue
        key = ctx.key(node)
        if not key:
            continue
        found = a.origins(node)
        if model in found or model in a.deep_origins(found):
            holders.add(key.rsplit(".", 1)[-1])
            uses.append(node)
    if not uses:
        return False
    # the same model reached through a path the data flow does not follow (`outer.extractor`,
    # a global read inside a method, which resolves to the name's last binding): every other
    # read of a name that holds it counts as a use too
    for node in ctx.nodes_of(ast.Name, ast.Attribute):
        if isinstance(node.ctx, ast.Load) and (node.id if isinstance(node, ast.Name) else node.attr) in holders and node not in uses:
            uses.append(node)
    return all(_neutral_use(ctx, a, u) for u in uses)


def _neutral_use(ctx, a, node: ast.AST) -> bool:
    parent = ctx.parent(node)
    if isinstance(parent, ast.Attribute) and parent.value is node:
        if parent.attr in _FIT_METHODS:
            return False
        if parent.attr in _NEUTRAL_METHODS:
            return True
        if parent.attr == "trainable" and isinstance(parent.ctx, ast.Store):
            return True
        return False  # .output / .layers / .get_layer: a bigger model may be built from it
    if isinstance(parent, ast.Call) and parent.func is node:
        training = kwarg(parent, "training")
        if training is not None:
            if isinstance(training, ast.Name) and is_parameter(ctx.assignment_at(training.id, training)):
                return False  # `training=training`: whatever its caller (fit) passes
            return ctx.value(training) is False
        func = ctx.enclosing_function(parent)
        if func is not None and func.name == "call" and ctx.enclosing_class(parent) is not None:
            return False  # inside a layer's call(): the outer training flag reaches it
        inputs = parent.args[0] if parent.args else kwarg(parent, "inputs")
        return inputs is not None and not a.reaches_keras_input(inputs)
    if isinstance(parent, (ast.Return, ast.Assign)) and getattr(parent, "value", None) is node:
        return True  # the uses of what receives it are judged on their own
    if isinstance(parent, (ast.Call, ast.keyword)):
        call = parent if isinstance(parent, ast.Call) else ctx.parent(parent)
        if isinstance(call, ast.Call) and not ctx.call_name(call) and isinstance(call.func, ast.Name):
            callee = call.func.id
            # a local class or function: its uses of the parameter are judged on their own
            return callee in ctx.classes or bool(ctx.functions.get(callee))
        if isinstance(call, ast.Call) and isinstance(call.func, ast.Name) and call.func.id in ("print", "len", "type", "id"):
            return True
        return False
    return False
