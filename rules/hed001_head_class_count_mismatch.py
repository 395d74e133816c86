"""HED001: the model's output layer has a different number of units than the file's class count."""

from __future__ import annotations

import ast
from typing import Iterator

from auditor import knowledge
from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule
from auditor.rules._heads import (
    Head,
    StatedCount,
    classification_loss_in_file,
    expressed_through_count,
    forward_out,
    head_assignment_layer,
    head_assignments,
    keras_model_heads,
    keras_trainings,
    literal_int,
    stated_class_count,
    torch_loss_calls,
    torch_tensor_out,
    torch_user_model_classes,
)


class HeadClassCountMismatch(StaticRule):
    """
    ## What it does
    Flags a classifier head whose number of outputs differs from the class count the file states.

    The head is found by following the model's construction: the `Dense` that produces the
    outputs passed to `Model(inputs, outputs)`, the last layer of a `Sequential` (list or
    `.add`), the layer a subclassed model's `call`/`forward` ends with, a torchvision head
    replacement (`model.fc = nn.Linear(...)`, `model.classifier[6] = ...`,
    `model.heads.head = ...`), `classes=` of a Keras application built without ImageNet
    weights, and `num_classes=` of `timm.create_model` or a torchvision builder. The class count
    is a constant such as `NUM_CLASSES = 10` (also `num_classes`, `n_classes`, `nb_classes`,
    `NUM_LABELS`, `CLASSES`) or a literal list of class names (`class_names = [...]`).

    The rule stays silent when the units are written through the class count
    (`Dense(len(class_names))`, `nn.Linear(f, num_classes)`), when the file states two
    different counts or computes its count at run time, for one-unit heads (binary sigmoid
    heads, regressors, discriminators) and for heads it cannot tie to a classification task.
    When the function that builds the head writes its other layers through a count
    (`def finetune(model, classes): ... nn.Linear(128, classes)`, called as
    `finetune(resnet18, 18)`), that count is the one the head must match; it wins over a
    list of names (which may only label a chart), and against a different count constant
    the rule stays silent.

    ## Why is this bad?
    A head with fewer outputs than classes makes some labels impossible: sparse cross-entropy
    then fails at run time on TensorFlow, or silently reads out of range on other backends. A
    head with more outputs trains, wastes probability mass on classes that never occur, and
    hides the bug until someone reads the confusion matrix. Either way the number was typed
    twice and one copy went stale.

    ## Example
    ```python
    import torch.nn as nn
    from torchvision import models

    NUM_CLASSES = 10

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
    model.fc = nn.Linear(model.fc.in_features, 5)
    ```

    ## Use instead
    ```python
    import torch.nn as nn
    from torchvision import models

    NUM_CLASSES = 10

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
    model.fc = nn.Linear(model.fc.in_features, NUM_CLASSES)
    ```

    ## References
    - Keras `Dense(units)`; `keras.applications.*(classes=...)`.
    - torchvision models: `num_classes` argument, `fc` / `classifier` / `heads.head` attributes.
    - timm `create_model(model_name, num_classes=...)`.
    """

    code = "HED001"
    name = "head-class-count-mismatch"
    category = "head"
    severity = Severity.ERROR
    requires = frozenset({"class", "label", "CLASS", "LABEL", "Class", "Label"})
    message = "head {head} outputs {units} classes but the file defines {count}"
    fix = "Build the head from the class count ({name}) instead of the literal {units}, so the two cannot drift apart."

    def check(self, ctx):
        count = stated_class_count(ctx)
        if count is None:
            return
        seen: set[int] = set()
        for head in _candidate_heads(ctx):
            if id(head.layer) in seen:
                continue
            seen.add(id(head.layer))
            node = head.units_node
            if node is None or expressed_through_count(ctx, node):
                continue
            units = literal_int(ctx, node)
            if units is None or units < 2:
                continue
            want = count
            local = _builder_count(ctx, head)
            if local is not None and local.value != count.value:
                if not count.from_list:
                    continue  # a count constant and the builder's own count disagree: ambiguous
                want = local  # a list of names (plot labels?) against the count the builder uses
            if units == want.value:
                continue
            yield self.finding(
                ctx,
                head.layer,
                head=head.label(ctx),
                units=units,
                count=want.desc,
                name=want.desc.split(" ", 1)[0],
                evidence={"units": units, "class_count": want.value},
            )


def _builder_count(ctx, head: Head) -> StatedCount | None:
    """The class count the function building the head uses for its other layers:
    `def finetune(model, classes): model.fc = nn.Linear(512, 128); model.fc2 = nn.Linear(128,
    classes)` called as `finetune(resnet18, 18)` -> classes = 18. None when that function
    writes no layer through a count, or writes it with several values."""
    func = ctx.enclosing_function(head.layer)
    if func is None:
        return None
    found: dict[int, str] = {}
    for call in ctx.calls_to("torch.nn.Linear", "keras.layers.Dense"):
        if call is head.layer or ctx.enclosing_function(call) is not func:
            continue
        is_torch = (ctx.call_name(call) or "").startswith("torch.")
        node = kwarg(call, "out_features", 1) if is_torch else kwarg(call, "units", 0)
        if node is None or not expressed_through_count(ctx, node):
            continue
        value = literal_int(ctx, node)
        if value is None:
            v = ctx.value(node)
            value = v if isinstance(v, int) and not isinstance(v, bool) else None
        if value is None or value < 2:
            return None
        found.setdefault(value, f"{ast.unparse(node)} = {value}")
    if len(found) != 1:
        return None
    value, desc = next(iter(found.items()))
    return StatedCount(value, desc)


def _candidate_heads(ctx) -> Iterator[Head]:
    """Heads that certainly belong to a classifier."""
    # Keras models: a softmax output, or compiled with a cross-entropy loss
    ce_layers = {id(t.head.layer) for t in keras_trainings(ctx) if t.loss.kind in ("categorical", "sparse_categorical")}
    for head in keras_model_heads(ctx):
        if head.kind != "dense":
            continue
        if head.activation == "softmax" or id(head.layer) in ce_layers:
            yield head
    for training in keras_trainings(ctx):
        if training.head.kind == "dense" and training.loss.kind in ("categorical", "sparse_categorical"):
            yield training.head
    # builders: Keras applications without ImageNet weights, timm, torchvision
    for info in ctx.models:
        if info.framework == "keras":
            if not info.include_top or info.classes is None:
                continue
            weights = kwarg(info.call, "weights", 1)
            if weights is None or ctx.string(weights) == "imagenet":
                continue  # ImageNet weights with classes != 1000: HED002
            yield Head("keras", info.call, info.classes, "softmax", kind="app")
        elif info.framework == "timm" and info.classes is not None:
            yield Head("torch", info.call, info.classes, "linear", kind="builder")
        elif info.framework == "torchvision" and info.classes is not None and not info.pretrained and knowledge.torchvision_kind(info.arch) == "classification":
            yield Head("torch", info.call, info.classes, "linear", kind="builder")
    # torch head replacements
    for h in head_assignments(ctx):
        head = head_assignment_layer(ctx, h)
        if head is not None:
            yield head
    # torch user models whose outputs reach a classification loss (followed through the
    # training code), or the file's only model when it uses one
    if classification_loss_in_file(ctx):
        linked = set()
        for loss in torch_loss_calls(ctx):
            if loss.kind == "bce_with_logits":
                continue
            out = torch_tensor_out(ctx, loss.input)
            if out is not None and out.layer is not None:
                linked.add(id(out.layer))
        models = []
        for klass in torch_user_model_classes(ctx):
            out = forward_out(ctx, klass)
            if out is not None and out.layer is not None and out.activation in ("linear", "softmax", "log_softmax"):
                models.append((klass, out.layer))
        for klass, layer in models:
            if id(layer) in linked or len(models) == 1:
                yield Head("torch", layer, kwarg(layer, "out_features", 1), "linear", kind="linear", model=klass)
