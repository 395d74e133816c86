"""Recognising pretrained-architecture constructors and following them through variables.

Covers Keras applications (`keras.applications.X` and `keras.applications.<module>.X`, under
every alias), torchvision builders (`models.resnet50(weights=...)`, `pretrained=True`,
`get_model("resnet50")`, `torch.hub.load("pytorch/vision", "resnet50")`), timm
`create_model("name", pretrained=True)` and Hugging Face `*.from_pretrained(...)`.
"""

from __future__ import annotations

import ast

from auditor import knowledge
from auditor.analysis.context import MODEL_PASSTHROUGH_METHODS, UNKNOWN, ModelInfo, ModuleContext, kwarg
from auditor.analysis.names import last

def collect_models(ctx: ModuleContext) -> list[ModelInfo]:
    found: list[ModelInfo] = []
    for call in ctx.calls:
        info = _model_from_call(ctx, call)
        if info is None:
            continue
        stmt = ctx.statement(call)
        if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
            # only when the call is the assigned value (possibly through .to()/.eval() chains)
            if _unwrap(stmt.value) is call:
                info.keys = [k for k in (ctx.key(t) for t in targets) if k]
        found.append(info)
    return found


def _unwrap(node: ast.AST | None) -> ast.AST | None:
    """Strip `.to(device)`, `.eval()`, `.cuda()` ... chains around a constructor call."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODEL_PASSTHROUGH_METHODS:
        node = node.func.value
    return node


def model_of(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> ModelInfo | None:
    if node is None or depth > 10:
        return None
    node = _unwrap(ctx.resolve(node))
    node = _unwrap(ctx.resolve(node))
    if isinstance(node, ast.Call):
        for info in ctx.models:
            if info.call is node:
                return info
    return None


def _model_from_call(ctx: ModuleContext, call: ast.Call) -> ModelInfo | None:
    if isinstance(call.func, ast.Call):
        return None  # `ResNet50(weights=None)(x)` applies a model; the inner call built it
    name = ctx.call_name(call)
    if name is None and isinstance(call.func, ast.Name):
        name = ctx.qualname(call.func, follow_parameters=True)  # `def build(arch): arch(...)`
    if name:
        if name.startswith("keras.applications."):
            return _keras_app(ctx, call, name)
        if name.startswith("torchvision.models."):
            return _torchvision(ctx, call, name)
        if name in ("timm.create_model",):
            return _timm(ctx, call)
        if name in ("torch.hub.load",):
            return _hub(ctx, call)
    if isinstance(call.func, ast.Attribute) and call.func.attr == "from_pretrained":
        owner = ctx.qualname(call.func.value) or ctx.key(call.func.value) or "from_pretrained"
        return ModelInfo("hf", last(owner), None, True, call)
    return None


def _keras_app(ctx: ModuleContext, call: ast.Call, name: str) -> ModelInfo | None:
    parts = name.split(".")
    ctor = parts[-1]
    if len(parts) == 4 and parts[2] in knowledge.KERAS_FAMILIES:
        module = parts[2]
        if ctor not in knowledge.KERAS_FAMILIES[module][1] and ctor not in knowledge.KERAS_CONSTRUCTORS:
            return None
    elif ctor in knowledge.KERAS_CONSTRUCTORS:
        module = knowledge.KERAS_CONSTRUCTORS[ctor]
    else:
        return None
    if module == "resnet50":
        module = "resnet"
    weights = kwarg(call, "weights", 1)
    if weights is None:
        pretrained: bool | None = True  # Keras applications default to weights="imagenet"
    else:
        value = ctx.value(weights)
        if value is None:
            pretrained = False
        elif isinstance(value, str):
            pretrained = True
        else:
            pretrained = None
    include_top_node = kwarg(call, "include_top", 0)
    include_top = True if include_top_node is None else _bool(ctx.value(include_top_node))
    prep = kwarg(call, "include_preprocessing")
    include_prep = None if prep is None else _bool(ctx.value(prep))
    if prep is None and knowledge.KERAS_FAMILIES[module][0] == "builtin":
        include_prep = True
    return ModelInfo("keras", ctor, module, pretrained, call, include_top, include_prep, kwarg(call, "classes"))


def _torchvision(ctx: ModuleContext, call: ast.Call, name: str) -> ModelInfo | None:
    builder = last(name)
    if builder in ("get_model",):
        arch = ctx.string(kwarg(call, "name", 0))
        if arch is None:
            return None
        builder = arch
    if not builder[:1].islower() or knowledge.torchvision_kind(builder) is None:
        return None
    return ModelInfo(
        "torchvision",
        builder,
        knowledge.torchvision_family(builder) or builder,
        _torch_pretrained(ctx, call),
        call,
        classes=kwarg(call, "num_classes"),
    )


def _torch_pretrained(ctx: ModuleContext, call: ast.Call) -> bool | None:
    weights = kwarg(call, "weights")
    if weights is not None:
        if isinstance(weights, ast.Constant) and weights.value is None:
            return False
        value = ctx.value(weights)
        if value is None:
            return False
        if isinstance(value, str) or isinstance(weights, ast.Attribute):
            return True
        resolved = ctx.resolve(weights)
        if isinstance(resolved, ast.Attribute) or (isinstance(resolved, ast.Call) and ctx.key(resolved.func) and "Weights" in (ctx.key(resolved.func) or "")):
            return True
        return None
    for flag in ("pretrained", "pretrained_backbone", "weights_backbone"):
        node = kwarg(call, flag)
        if node is not None:
            value = ctx.value(node)
            if flag == "weights_backbone":
                return value is not None if value is not UNKNOWN else None
            return _bool(value)
    if call.args and not any(isinstance(a, ast.Starred) for a in call.args):
        value = ctx.value(call.args[0])
        if isinstance(value, bool):
            return value  # legacy positional pretrained
    return False


def _timm(ctx: ModuleContext, call: ast.Call) -> ModelInfo | None:
    arch = ctx.string(kwarg(call, "model_name", 0))
    pretrained_node = kwarg(call, "pretrained", 1)
    pretrained = False if pretrained_node is None else _bool(ctx.value(pretrained_node))
    if pretrained is False and kwarg(call, "checkpoint_path") is not None:
        pretrained = True
    return ModelInfo("timm", arch or "timm model", arch, pretrained, call, classes=kwarg(call, "num_classes"))


def _hub(ctx: ModuleContext, call: ast.Call) -> ModelInfo | None:
    repo = ctx.string(kwarg(call, "repo_or_dir", 0)) or ""
    arch = ctx.string(kwarg(call, "model", 1))
    if arch is None:
        return None
    pretrained_node = kwarg(call, "pretrained")
    weights_node = kwarg(call, "weights")
    if pretrained_node is not None:
        pretrained = _bool(ctx.value(pretrained_node))
    elif weights_node is not None:
        pretrained = ctx.value(weights_node) is not None
    else:
        pretrained = True  # hub entry points of public repos mostly default to pretrained
    if "pytorch/vision" in repo and knowledge.torchvision_kind(arch):
        return ModelInfo("torchvision", arch, knowledge.torchvision_family(arch) or arch, pretrained, call)
    return ModelInfo("hub", arch, arch, pretrained, call)


def _bool(value: object) -> bool | None:
    if isinstance(value, bool):
        return value
    if value is None:
        return False
    if isinstance(value, (int, float)):
        return bool(value)
    return None
