"""HED002: a pretrained model keeps its 1000-class ImageNet head on a task with another class count."""

from __future__ import annotations

import ast

from auditor import knowledge
from auditor.analysis.context import ModelInfo, kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import (
    value_deep,
    KERAS_SEQUENTIAL,
    _sequential_elements,
    construction,
    head_assignments,
    resolve_deep,
    stated_class_count,
    torch_loss_calls,
)

IMAGENET_CLASSES = 1000

#: torchvision family -> the attribute that holds its classifier
_TV_HEAD_ATTR = {
    "resnet": "fc",
    "resnext": "fc",
    "wide_resnet": "fc",
    "regnet": "fc",
    "googlenet": "fc",
    "inception_v3": "fc",
    "shufflenet": "fc",
    "vgg": "classifier[6]",
    "alexnet": "classifier[6]",
    "mobilenet": "classifier[-1]",
    "efficientnet": "classifier[1]",
    "mnasnet": "classifier[1]",
    "convnext": "classifier[2]",
    "densenet": "classifier",
    "squeezenet": "classifier[1]",
    "maxvit": "classifier[5]",
    "vit": "heads.head",
    "swin": "head",
}


class PretrainedHeadNotReplaced(StaticRule):
    """
    ## What it does
    Flags an ImageNet-pretrained model that keeps its 1000-class head on a task with another class count.

    Keras: an application built with `weights="imagenet"` and `include_top=True` (the
    default) that is compiled or fitted directly, or whose 1000-way softmax output feeds new
    layers, while the file states a class count other than 1000; and `classes=N` (N != 1000)
    together with ImageNet weights and `include_top=True`, which Keras rejects when it builds
    the model. PyTorch: a pretrained torchvision or timm model that is trained (its parameters
    go to an optimizer or its outputs to a loss) without replacing `fc` / `classifier` /
    `head` or calling `reset_classifier`, while the file states another class count; and a
    torchvision builder given pretrained weights together with `num_classes=N` (N != 1000),
    which torchvision rejects.

    ## Why is this bad?
    The pretrained top predicts the 1000 ImageNet classes. Trained as is on, say, 10 classes,
    the labels 0-9 are mapped onto "tench", "goldfish", ... and 990 outputs stay in the
    softmax: the loss is dominated by classes that never occur and accuracy is poor. Stacking
    new `Dense` layers on the 1000-way softmax discards most of the features' information.
    With `classes=N` or `num_classes=N` next to ImageNet weights the framework raises when the
    model is built.

    ## Example
    ```python
    from tensorflow import keras

    NUM_CLASSES = 5

    model = keras.applications.ResNet50(weights="imagenet")
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ```

    ## Use instead
    ```python
    from tensorflow import keras

    NUM_CLASSES = 5

    base = keras.applications.ResNet50(weights="imagenet", include_top=False, pooling="avg")
    base.trainable = False
    inputs = keras.Input((224, 224, 3))
    features = base(inputs, training=False)
    outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(features)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    ```

    ## References
    - `keras/src/applications/*.py`: "If using `weights='imagenet'` with `include_top=True`,
      `classes` should be 1000".
    - torchvision `_utils._ovewrite_named_param`: `num_classes` must match the weights' categories.
    - PyTorch transfer-learning tutorial (PT-tut): `model.fc = nn.Linear(num_ftrs, 2)`.
    - timm `create_model(..., num_classes=N)` / `model.reset_classifier(N)`.
    """

    code = "HED002"
    name = "pretrained-head-not-replaced"
    category = "head"
    severity = Severity.ERROR
    requires = frozenset({"applications", "torchvision", "timm", "imagenet", "pretrained"})
    message = "{model} {detail}"
    fix = "{fix}"

    def check(self, ctx):
        count = stated_class_count(ctx)
        for info in ctx.models:
            if info.framework == "keras":
                yield from self._keras(ctx, info, count)
            elif info.framework in ("torchvision", "timm"):
                yield from self._torch(ctx, info, count)

    # ------------------------------------------------------------------ Keras
    def _keras(self, ctx, info: ModelInfo, count):
        if info.include_top is not True:
            return
        weights = kwarg(info.call, "weights", 1)
        if weights is not None and ctx.string(weights) != "imagenet":
            return
        arch = info.arch
        if info.classes is not None:
            classes = value_deep(ctx, info.classes)
            if isinstance(classes, int) and not isinstance(classes, bool) and classes != IMAGENET_CLASSES:
                yield self.finding(
                    ctx,
                    info.call,
                    model=f"{arch}(weights='imagenet', classes={classes})",
                    detail="with include_top=True: ImageNet weights need classes=1000 (Keras raises ValueError when it builds the model)",
                    fix=f"Use {arch}(weights='imagenet', include_top=False, pooling='avg') and add Dense({classes}) on top, or drop the ImageNet weights.",
                )
            return
        if _keras_top_removed(ctx, info):
            return
        wanted = count.desc if count is not None and count.value != IMAGENET_CLASSES else None
        how = None
        if wanted and _compiled_or_fitted(ctx, info):
            how = f"is compiled/fitted with its 1000-class ImageNet head (include_top=True is the default) but the file defines {wanted}"
        elif (count is None or count.value != IMAGENET_CLASSES) and _built_on_output(ctx, info):
            how = "keeps its 1000-class ImageNet softmax (include_top=True is the default) and new layers are stacked on that output"
            if wanted:
                how += f"; the file defines {wanted}"
        if how:
            yield self.finding(
                ctx,
                info.call,
                model=f"{arch}(weights='imagenet')",
                detail=how,
                fix=f"Pass include_top=False (with pooling='avg') to {arch} and put your own Dense(n_classes) head on base.output.",
            )

    # ------------------------------------------------------------------ torch
    def _torch(self, ctx, info: ModelInfo, count):
        if info.pretrained is not True:
            return
        if info.framework == "torchvision" and knowledge.torchvision_kind(info.arch) != "classification":
            return  # detection / segmentation heads count classes differently (background)
        label = _torch_label(ctx, info)
        if info.framework == "torchvision" and info.classes is not None:
            n = value_deep(ctx, info.classes)
            if isinstance(n, int) and not isinstance(n, bool) and n != IMAGENET_CLASSES:
                attr = _TV_HEAD_ATTR.get(info.family or "", "fc")
                yield self.finding(
                    ctx,
                    info.call,
                    model=f"{info.arch}(<ImageNet weights>, num_classes={n})",
                    detail="cannot be built: torchvision raises ValueError because the pretrained weights have 1000 classes",
                    fix=f"Build {info.arch} with the weights and no num_classes, then replace model.{attr} with a {n}-output layer.",
                )
            return
        if info.framework == "timm" and info.classes is not None:
            return  # timm builds a fresh head of that size
        if count is None or count.value == IMAGENET_CLASSES:
            return
        if _head_replaced_somewhere(ctx, info):
            return
        if not _trained_torch(ctx, info):
            return
        if info.framework == "timm":
            fix = f"Pass num_classes={count.value} to timm.create_model (or call model.reset_classifier({count.value}))."
            where = "without num_classes or reset_classifier"
        else:
            attr = _TV_HEAD_ATTR.get(info.family or "", "fc")
            fix = f"Replace the head before training, e.g. model.{attr} = nn.Linear(model.{attr}.in_features, {count.value})."
            where = f"without replacing model.{attr}"
        yield self.finding(
            ctx,
            info.call,
            model=label,
            detail=f"is trained with its 1000-class ImageNet head {where}, but the file defines {count.desc}",
            fix=fix,
        )


#: libraries whose functions do not replace a model's head
_KNOWN_LIBRARIES = (
    "torch.", "torchvision.", "timm.", "numpy.", "keras.", "tensorflow.", "copy.", "torchsummary.", "torchinfo.",
    "thop.", "fvcore.", "wandb.", "mlflow.", "pytorch_lightning.", "lightning.", "matplotlib.", "tqdm.",
)
_BUILTINS = {"print", "len", "isinstance", "type", "str", "repr", "id", "list", "dict", "getattr", "hasattr", "vars", "dir", "iter", "next", "enumerate", "zip", "sum"}


def _torch_label(ctx, info: ModelInfo) -> str:
    if info.framework == "timm":
        return f"timm.create_model({info.arch!r}, pretrained=True)"
    return f"{info.arch} (ImageNet weights)"


def _resolves_to(ctx, expr, call) -> bool:
    return construction(ctx, expr) is call


def _base_name(node):
    while isinstance(node, (ast.Attribute, ast.Subscript)):
        node = node.value
    return node


def _compiled_or_fitted(ctx, info: ModelInfo) -> bool:
    """Fitted, or compiled and not only evaluated (compiling an ImageNet model to evaluate it on
    ImageNet is fine)."""
    uses = {call.func.attr for call in ctx.method_calls("compile", "fit", "fit_generator", "train_on_batch", "evaluate", "evaluate_generator") if _resolves_to(ctx, call.func.value, info.call)}
    if uses & {"fit", "fit_generator", "train_on_batch"}:
        return True
    return "compile" in uses and not uses & {"evaluate", "evaluate_generator"}


def _keras_top_removed(ctx, info: ModelInfo) -> bool:
    """Old-style surgery: `model.layers.pop()`, `model.outputs = [...]`."""
    for call in ctx.method_calls("pop"):
        recv = call.func.value
        if isinstance(recv, ast.Attribute) and recv.attr == "layers" and _resolves_to(ctx, recv.value, info.call):
            return True
    for key in ctx.assignments:
        if key.endswith((".outputs", ".output", ".layers")):
            for record in ctx.assignments[key]:
                stmt = record.stmt
                if isinstance(stmt, ast.Assign) and isinstance(stmt.targets[0], ast.Attribute) and _resolves_to(ctx, stmt.targets[0].value, info.call):
                    return True
    return False


def _is_model_output(ctx, node, info: ModelInfo) -> bool:
    """`base.output`, `base.outputs[0]`, `base(x)`."""
    node = resolve_deep(ctx, node)
    if isinstance(node, ast.Subscript):
        node = node.value
    if isinstance(node, ast.Attribute) and node.attr in ("output", "outputs"):
        return _resolves_to(ctx, node.value, info.call)
    if isinstance(node, ast.Call) and not isinstance(node.func, ast.Call) and ctx.call_name(node) is None:
        return _resolves_to(ctx, node.func, info.call)
    return False


def _built_on_output(ctx, info: ModelInfo) -> bool:
    # functional: SomeLayer(...)(base.output) / SomeLayer(...)(base(x))
    for call in ctx.calls:
        if isinstance(call.func, ast.Call) and call.args:
            layer_name = ctx.call_name(call.func) or ""
            if layer_name.startswith("keras.layers.") and _is_model_output(ctx, call.args[0], info):
                return True
    # Sequential([base, Dense(...)]) / model.add(base); model.add(Dense(...))
    for call in ctx.calls:
        if ctx.call_name(call) != KERAS_SEQUENTIAL:
            continue
        elements = _sequential_elements(ctx, call) or []
        if any(_resolves_to(ctx, element, info.call) for element in elements[:-1]):
            return True
    return False


def _head_replaced_somewhere(ctx, info: ModelInfo) -> bool:
    """Any head surgery that may concern this model: we stay silent."""
    for h in head_assignments(ctx):
        if h.base_model is info.call or not _is_other_model(ctx, h.base_model, info):
            return True
    if any(True for _ in ctx.method_calls("reset_classifier", "replace_head", "reset_head")):
        return True
    for call in ctx.calls:
        if isinstance(call.func, ast.Name) and call.func.id == "setattr" and call.args and _resolves_to(ctx, call.args[0], info.call):
            return True
        # handed to a helper imported from the project (`set_head(model, n)`): it may replace the head
        if isinstance(call.func, ast.Call) or not call.args:
            continue
        name = ctx.call_name(call)
        if name is not None:
            foreign = not name.startswith(_KNOWN_LIBRARIES) and name not in _BUILTINS
        else:
            f = call.func
            foreign = isinstance(f, ast.Name) and f.id not in ctx.functions and f.id not in ctx.classes and f.id not in ctx.assignments and f.id not in _BUILTINS
        if foreign and any(_resolves_to(ctx, a, info.call) for a in call.args):
            return True
    # any module assigned as an attribute of this model: `model.last_layer = nn.Linear(...)`
    for key, records in ctx.assignments.items():
        if "." not in key:
            continue
        for record in records:
            stmt = record.stmt
            if not isinstance(stmt, ast.Assign) or not isinstance(stmt.targets[0], (ast.Attribute, ast.Subscript)):
                continue
            base = _base_name(stmt.targets[0])
            if _resolves_to(ctx, base, info.call):
                value = resolve_deep(ctx, stmt.value)
                name = ctx.call_name(value) if isinstance(value, ast.Call) else None
                if name and name.startswith("torch.nn."):
                    return True
    return False


def _is_other_model(ctx, node, info: ModelInfo) -> bool:
    if not isinstance(node, ast.Call) or node is info.call:
        return False
    return any(m.call is node for m in ctx.models)


def _trained_torch(ctx, info: ModelInfo) -> bool:
    """Its parameters go to an optimizer, or its outputs to a loss."""
    for call in ctx.calls_to("torch.optim.*"):
        name = ctx.call_name(call) or ""
        if ".lr_scheduler." in name or ".swa_utils." in name:
            continue
        params = kwarg(call, "params", 0)
        if params is None:
            continue
        params = resolve_deep(ctx, params)
        for sub in ast.walk(params):
            if isinstance(sub, ast.Call) and isinstance(sub.func, ast.Attribute) and sub.func.attr in ("parameters", "named_parameters"):
                if _resolves_to(ctx, _base_name(sub.func.value), info.call):
                    return True
    for loss in torch_loss_calls(ctx):
        pred = resolve_deep(ctx, loss.input)
        while isinstance(pred, ast.Call) and isinstance(pred.func, ast.Attribute) and pred.func.attr in ("squeeze", "view", "reshape", "float"):
            pred = resolve_deep(ctx, pred.func.value)
        if isinstance(pred, ast.Call) and not isinstance(pred.func, ast.Call) and _resolves_to(ctx, pred.func, info.call):
            return True
    return False
