"""Shared analysis for the PyTorch-side preprocessing rules (PRE003, PRE004).

Two questions these rules ask of a file:

1. Which image pipelines (torchvision / albumentations transforms, `Normalize` calls) feed which
   pretrained models, and what do those models expect?
2. What does a `Normalize` step actually compute (values resolved through constants, timm
   constants, `[0.5] * 3`, `np.array([...])`, and the pixel scale of the steps before it)?

For (1) a small labelled data-flow pass (`Flow`) follows values from their source calls
(a `Compose`, a `Normalize`, a model constructor) through assignments, tuple unpacking, `for`
loops, comprehensions, container mutation (`tfs.append(...)`, `ds.transform = tf`), module-local
function calls (context-sensitive: parameters are placeholders substituted at each call site)
and local class instantiation. Two labels "meet" where one call combines them: `model(x)`,
`train(model, loader)` (through the callee's body when it is local), `Trainer(model, loader)`,
`nn.Sequential(norm, model)`. When the flow finds no meeting, the rules fall back to the file as
a whole only if every model the file builds is a pretrained model the rule knows; otherwise they
stay silent.
"""

from __future__ import annotations

import ast
import weakref
from collections.abc import Iterable
from auditor.analysis.records import field
from auditor.analysis.records import record as dataclass
from itertools import combinations
from typing import Any

from auditor import knowledge
from auditor.analysis.context import UNKNOWN, ModelInfo, ModuleContext, kwarg
from auditor.analysis.names import last
from auditor.analysis.context import param_default as _param_default

# ---------------------------------------------------------------------------- call classes

TV_TRANSFORM_MODULES = ("torchvision.transforms", "torchvision.transforms.v2", "torchvision.transforms.transforms", "torchvision.transforms.v2.transforms")
TV_FUNCTIONAL_MODULES = ("torchvision.transforms.functional", "torchvision.transforms.v2.functional", "torchvision.transforms.functional_tensor")

COMPOSE_NAMES = {"Compose", "Sequential", "RandomApply", "RandomChoice", "RandomOrder", "OneOf", "SomeOf"}

#: names that are L2 / unicode normalisation, not mean/std
L2_NORMALIZE = {
    "torch.nn.functional.normalize",
    "torch.linalg.norm",
    "unicodedata.normalize",
    "sklearn.preprocessing.normalize",
    "keras.utils.normalize",
    "numpy.linalg.norm",
}


def _module_and_name(qual: str | None) -> tuple[str, str]:
    if not qual or "." not in qual:
        return "", qual or ""
    mod, _, name = qual.rpartition(".")
    return mod, name


def is_tv_transform(ctx: ModuleContext, call: ast.Call, *names: str) -> bool:
    mod, name = _module_and_name(ctx.call_name(call))
    return name in names and mod in TV_TRANSFORM_MODULES


def is_tv_functional(ctx: ModuleContext, call: ast.Call, *names: str) -> bool:
    mod, name = _module_and_name(ctx.call_name(call))
    return name in names and mod in TV_FUNCTIONAL_MODULES


def is_albumentations(ctx: ModuleContext, call: ast.Call, *names: str) -> bool:
    qual = ctx.call_name(call) or ""
    return qual.startswith("albumentations") and last(qual) in names


def is_kornia_normalize(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.call_name(call) or ""
    return qual.startswith("kornia") and last(qual) == "Normalize"


def is_compose(ctx: ModuleContext, call: ast.Call) -> bool:
    qual = ctx.call_name(call) or ""
    name = last(qual)
    if name not in COMPOSE_NAMES:
        return False
    return qual.startswith(("torchvision.transforms", "albumentations", "torch.nn.Sequential", "kornia"))


@dataclass
class NormalizeCall:
    """One mean/std normalisation step."""

    call: ast.Call
    library: str  # "torchvision", "functional", "albumentations", "kornia"
    mean_node: ast.expr | None
    std_node: ast.expr | None
    max_pixel_node: ast.expr | None = None  # albumentations

    @property
    def label(self) -> str:
        return {"functional": "normalize", "albumentations": "A.Normalize"}.get(self.library, "Normalize")


def _starred_pair(ctx: ModuleContext, call: ast.Call) -> tuple[ast.expr, ast.expr] | None:
    """`Normalize(*stats)` with `stats = ((means), (stds))`."""
    if call.args and isinstance(call.args[0], ast.Starred):
        target = ctx.resolve(call.args[0].value)
        if isinstance(target, (ast.Tuple, ast.List)) and len(target.elts) == 2:
            return target.elts[0], target.elts[1]
    return None


def normalize_calls(ctx: ModuleContext) -> list[NormalizeCall]:
    out: list[NormalizeCall] = []
    for call in ctx.calls:
        if is_tv_transform(ctx, call, "Normalize"):
            pair = _starred_pair(ctx, call)
            if pair is not None:
                out.append(NormalizeCall(call, "torchvision", *pair))
                continue
            out.append(NormalizeCall(call, "torchvision", kwarg(call, "mean", 0), kwarg(call, "std", 1)))
        elif is_tv_functional(ctx, call, "normalize"):
            out.append(NormalizeCall(call, "functional", kwarg(call, "mean", 1), kwarg(call, "std", 2)))
        elif is_albumentations(ctx, call, "Normalize"):
            out.append(NormalizeCall(call, "albumentations", kwarg(call, "mean", 0), kwarg(call, "std", 1), kwarg(call, "max_pixel_value", 2)))
        elif is_kornia_normalize(ctx, call):
            out.append(NormalizeCall(call, "kornia", kwarg(call, "mean", 0), kwarg(call, "std", 1)))
    return out


def is_tensor_conversion(ctx: ModuleContext, call: ast.Call) -> bool:
    """A step that turns images into float tensors in [0, 1] (or, for albumentations'
    ToTensorV2, into tensors of the raw pixels)."""
    if is_tv_transform(ctx, call, "ToTensor", "ConvertImageDtype"):
        return True
    if is_tv_transform(ctx, call, "ToDtype"):
        return ctx.value(kwarg(call, "scale", 1)) is True
    return is_tv_functional(ctx, call, "to_tensor") or is_albumentations(ctx, call, "ToTensorV2", "ToTensor")


# ---------------------------------------------------------------------------- evidence of normalisation


def normalization_evidence(ctx: ModuleContext) -> list[ast.AST]:
    """Everything in the file that normalises images one way or another (any library, a
    preset's `.transforms()`, timm's data config, a Hugging Face processor, manual arithmetic).
    Generous on purpose: PRE004 stays silent when any of it is present."""
    found: list[ast.AST] = []
    for call in ctx.calls:
        qual = ctx.call_name(call)
        func = call.func
        fname = func.attr if isinstance(func, ast.Attribute) else func.id if isinstance(func, ast.Name) else ""
        lower = fname.lower()
        full = (qual or ctx.key(func) or fname).lower()
        if qual in L2_NORMALIZE or "l2_norm" in lower:
            continue
        if "normaliz" in lower or "standardiz" in lower or fname == "transforms" and isinstance(func, ast.Attribute) or qual and qual.startswith("timm.") and any(w in lower for w in ("config", "transform", "loader")) or any(w in full for w in ("processor", "featureextractor", "feature_extractor")):
            found.append(call)
        elif lower in ("sub_", "sub", "div_", "div") and isinstance(func, ast.Attribute) and (
            (isinstance(func.value, ast.Call) and isinstance(func.value.func, ast.Attribute) and func.value.func.attr in ("sub_", "sub"))
            or _mentions_stat(call.args)
        ):
            found.append(call)  # x.sub_(mean).div_(std)
        elif lower in ("create_model_and_transforms", "get_preprocessing_fn", "get_preprocessing"):
            found.append(call)
    for node in ctx.nodes_of(ast.Attribute, ast.BinOp, ast.AugAssign):
        if isinstance(node, ast.Attribute):
            if node.attr in ("image_mean", "image_std", "pretrained_cfg", "default_cfg"):
                found.append(node)
            elif node.attr == "transforms" and "weight" in (ctx.key(node.value) or ctx.qualname(node.value) or "").lower():
                found.append(node)  # transform=weights.transforms (passed uncalled)
        elif isinstance(node, ast.BinOp):
            if isinstance(node.op, ast.Div) and isinstance(node.left, ast.BinOp) and isinstance(node.left.op, ast.Sub):
                if _mentions_stat([node.left.right, node.right]) or _stat_like(ctx, node.left.right):
                    found.append(node)  # (x - mean) / std
            elif isinstance(node.op, ast.Sub) and (_mentions_stat([node.right]) or _is_rescale(node)):
                found.append(node)  # x - mean, x / 127.5 - 1
        elif isinstance(node, ast.AugAssign) and isinstance(node.op, (ast.Sub, ast.Div)) and _mentions_stat([node.value]):
            found.append(node)
    return found


def arithmetic_renormalization(ctx: ModuleContext) -> list[ast.AST]:
    """Hand-written (re)normalisation: `(x - mean) / std`, `x.sub_(m).div_(s)`, `x / 127.5 - 1`,
    and the [-1, 1] -> [0, 1] undo `(x + 1) / 2` / `x * 0.5 + 0.5` that GAN code uses before
    feeding a pretrained perceptual-loss network. Data may be re-normalised between a
    Normalize and the model wherever this appears."""
    found = [n for n in normalization_evidence(ctx) if not isinstance(n, (ast.Call, ast.Attribute)) or _is_sub_div(n)]
    for node in ctx.nodes_of(ast.BinOp, ast.Call):
        if isinstance(node, ast.BinOp):
            left = node.left
            if isinstance(left, ast.BinOp) and (
                (isinstance(node.op, ast.Div) and isinstance(left.op, ast.Add) and _const(node.right) == 2 and _const(left.right) == 1)
                or (isinstance(node.op, ast.Add) and isinstance(left.op, ast.Mult) and _const(node.right) == 0.5 and _const(left.right) == 0.5)
            ):
                found.append(node)  # (x + 1) / 2, x * 0.5 + 0.5
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("div", "div_", "add", "add_"):
            inner = node.func.value
            if isinstance(inner, ast.Call) and isinstance(inner.func, ast.Attribute) and inner.func.attr in ("add", "add_", "mul", "mul_"):
                found.append(node)  # x.add(1).div(2), x.mul(0.5).add(0.5)
    return found


def _is_sub_div(node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("sub_", "sub", "div_", "div")


def _const(node: ast.AST) -> Any:
    return node.value if isinstance(node, ast.Constant) else None


_STAT_WORDS = {"mean", "means", "std", "stds", "mu", "sigma", "avg", "stdev", "stddev"}


def _mentions_stat(nodes: Iterable[ast.AST]) -> bool:
    for node in nodes:
        for sub in ast.walk(node):
            name = sub.id if isinstance(sub, ast.Name) else sub.attr if isinstance(sub, ast.Attribute) else ""
            if name and _STAT_WORDS & set(name.lower().split("_")):
                return True
    return False


def _stat_like(ctx: ModuleContext, node: ast.AST) -> bool:
    """A constant that looks like a per-channel mean: a number or a short list of numbers."""
    value = ctx.value(node)
    return stat_vector(value) is not None


def _is_rescale(node: ast.BinOp) -> bool:
    """`x / 127.5 - 1`, `x * 2 - 1`: a fixed rescale to [-1, 1]."""
    left = node.left
    return (
        isinstance(left, ast.BinOp)
        and isinstance(left.op, (ast.Div, ast.Mult))
        and isinstance(left.right, ast.Constant)
        and isinstance(node.right, ast.Constant)
    )


# ---------------------------------------------------------------------------- pipelines


def pipeline_root(ctx: ModuleContext, call: ast.Call) -> ast.expr:
    """The outermost pipeline that holds `call`: a Compose-like call (nested Composes and list
    literals included), else a list literal of steps, else the call itself."""
    root: ast.expr = call
    node: ast.AST = call
    while True:
        parent = ctx.parent(node)
        if isinstance(parent, (ast.List, ast.Tuple)):
            node = root = parent
            continue
        if isinstance(parent, ast.keyword) and parent.arg == "transforms":
            parent = ctx.parent(parent)
        if isinstance(parent, ast.Call) and is_compose(ctx, parent) and node is not parent.func:
            node = root = parent
            continue
        return root


def compose_elements(ctx: ModuleContext, compose: ast.Call) -> list[ast.expr] | None:
    """The steps of a Compose in order (list literal, or a name bound to one), else None."""
    arg = kwarg(compose, "transforms", 0)
    if arg is None:
        return None
    if isinstance(arg, ast.Name):
        arg = ctx.resolve(arg)
    if isinstance(arg, (ast.List, ast.Tuple)):
        return list(arg.elts)
    return None


def pixel_scale_before(ctx: ModuleContext, norm: ast.Call) -> tuple[str | None, str]:
    """The pixel scale reaching `norm` inside its Compose: ("unit", step) for [0, 1] floats,
    ("raw", step) for 0-255 floats, (None, "") when not known."""
    parent = ctx.parent(norm)
    if not isinstance(parent, (ast.List, ast.Tuple)):
        return None, ""
    owner = ctx.parent(parent)
    if isinstance(owner, ast.keyword):
        owner = ctx.parent(owner)
    if not (isinstance(owner, ast.Call) and is_compose(ctx, owner)):
        stmt = ctx.statement(parent)
        if not (isinstance(stmt, ast.Assign) and stmt.value is parent):
            return None, ""  # a list built some other way: the steps before are not all here
    scale: str | None = None
    step = ""
    uint8_tensor = False
    for elt in parent.elts:
        if elt is norm:
            return scale, step
        if not isinstance(elt, ast.Call):
            scale, step = None, ""
        elif is_tv_transform(ctx, elt, "ToTensor"):
            scale, step = "unit", "ToTensor()"
        elif is_tv_transform(ctx, elt, "ConvertImageDtype"):
            scale, step = "unit", "ConvertImageDtype"
        elif is_tv_transform(ctx, elt, "PILToTensor", "ToImage", "ToImageTensor"):
            uint8_tensor = True
            scale, step = None, ""
        elif is_tv_transform(ctx, elt, "ToDtype"):
            flag_node = kwarg(elt, "scale", 1)
            flag = ctx.value(flag_node)
            if flag is True:
                scale, step = "unit", "ToDtype(scale=True)"
            elif uint8_tensor and (flag_node is None or flag is False) and _float_dtype(ctx, kwarg(elt, "dtype", 0)):
                scale, step = "raw", "ToDtype(torch.float32) without scale=True"
            else:
                scale, step = None, ""
        elif is_tv_transform(ctx, elt, "Lambda") or not (ctx.call_name(elt) or "").startswith("torchvision.transforms"):
            scale, step = None, ""
        # geometric and colour steps keep the scale
    return None, ""


def _float_dtype(ctx: ModuleContext, node: ast.AST | None) -> bool:
    qual = ctx.qualname(node) if node is not None else None
    return bool(qual) and qual in ("torch.float32", "torch.float", "torch.float64", "torch.float16", "torch.half", "torch.double", "torch.bfloat16")


# ---------------------------------------------------------------------------- stat values


def stat_value(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> tuple[float, ...] | None:
    """`ctx.value` for statistics, plus element-wise arithmetic on arrays:
    `np.array([123.675, 116.28, 103.53]) / 255`, `torch.tensor(MEAN) * 255`."""
    if node is None or depth > 8:
        return None
    vec = stat_vector(ctx.value(node))
    if vec is not None:
        return vec
    if isinstance(node, ast.Name):
        target = ctx.resolve(node)
        return stat_value(ctx, target, depth + 1) if target is not node and target is not None else None
    if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Div, ast.Mult, ast.Add, ast.Sub)):
        left, right = stat_value(ctx, node.left, depth + 1), stat_value(ctx, node.right, depth + 1)
        if left is None or right is None:
            return None
        if len(left) != len(right):
            if len(left) == 1:
                left = left * len(right)
            elif len(right) == 1:
                right = right * len(left)
            else:
                return None
        try:
            op = {ast.Div: lambda a, b: a / b, ast.Mult: lambda a, b: a * b, ast.Add: lambda a, b: a + b, ast.Sub: lambda a, b: a - b}[type(node.op)]
            return tuple(op(a, b) for a, b in zip(left, right))
        except ZeroDivisionError:
            return None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("view", "reshape", "float", "to", "tolist", "unsqueeze"):
        return stat_value(ctx, node.func.value, depth + 1)
    return None


def stat_vector(value: Any) -> tuple[float, ...] | None:
    """A mean/std value as a flat tuple of floats (1 or 3 entries), else None."""
    if isinstance(value, bool):
        return None
    if isinstance(value, (int, float)):
        return (float(value),)
    if isinstance(value, (tuple, list)):
        if len(value) == 1 and isinstance(value[0], (tuple, list)):
            return stat_vector(value[0])
        if len(value) not in (1, 3) or not all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return None
        return tuple(float(v) for v in value)
    return None


def broadcast(v: tuple[float, ...]) -> tuple[float, float, float]:
    return (v[0],) * 3 if len(v) == 1 else v  # type: ignore[return-value]


def stats_match(mean: tuple[float, ...], std: tuple[float, ...], want_mean: tuple, want_std: tuple) -> bool:
    """The tolerance: max |mean difference| <= 0.05 and every std ratio within [0.75, 1.33]
    (dataset statistics such as CIFAR's stay close to ImageNet's)."""
    m, s = broadcast(mean), broadcast(std)
    if max(abs(a - b) for a, b in zip(m, want_mean)) > 0.05:
        return False
    return all(0.75 <= a / b <= 1.33 for a, b in zip(s, want_std))


def fmt(v: Iterable[float]) -> str:
    items = [f"{x:.6g}" for x in v]
    if len(items) == 1:
        return f"({items[0]},)"
    return "(" + ", ".join(items) + ")"


# ---------------------------------------------------------------------------- what models expect

StatSet = tuple[str, tuple, tuple]

_HUB_EXTRA: list[StatSet] = [
    ("Kinetics", knowledge.KINETICS_MEAN, knowledge.KINETICS_STD),
    ("Kinetics (0.45)", (0.45,) * 3, (0.225,) * 3),
]
_UNCERTAIN_TIMM_TAGS = ("clip", "laion", "openai", "siglip", "dfn", "metaclip", "bit", "goog", "mim", "eva", "dino")


@dataclass
class Expectation:
    """What one pretrained model expects from the pipeline in front of it."""

    model: ModelInfo
    kind: str  # "stats" (accepted sets), "internal" (normalises inside: detection)
    sets: list[StatSet] = field(default_factory=list)
    certain: bool = True  # one known set, not "any of"
    source: str = ""  # "torchvision ImageNet weights", "timm's resnet50 weights", ...

    @property
    def name(self) -> str:
        if self.model.framework == "timm" and not self.model.family:
            return "a timm model"
        return self.model.arch

    def describe(self) -> str:
        if self.kind == "internal":
            return "it normalises inside the model (GeneralizedRCNNTransform with ImageNet mean/std) and takes float images in [0, 1]"
        if self.certain:
            _, m, s = self.sets[0]
            return f"{self.source} expect mean={fmt(m)}, std={fmt(s)}"
        names = ", ".join(n for n, _, _ in self.sets)
        return f"{self.source} use one of the known stat sets ({names})"


def pretrained_through_parameter(ctx: ModuleContext, model: ModelInfo) -> bool | None:
    """`timm.create_model(name, pretrained=pretrained)` inside `def __init__(self, cfg,
    pretrained=False)` (or a builder function): pretrained when every call site of the
    enclosing function (instantiations of the class, for `__init__`) passes a true value."""
    if model.framework not in ("timm", "torchvision"):
        return None
    if model.framework == "timm":
        node = kwarg(model.call, "pretrained", 1)
    else:
        node = kwarg(model.call, "weights") or kwarg(model.call, "pretrained")
    if not isinstance(node, ast.Name):
        return None
    func = ctx.enclosing_function(model.call)
    if func is None:
        return None
    params = [a.arg for a in func.args.posonlyargs + func.args.args]  # type: ignore[attr-defined]
    kwonly = [a.arg for a in func.args.kwonlyargs]  # type: ignore[attr-defined]
    if node.id not in params + kwonly:
        return None
    record = ctx.assignments.get(node.id, [])
    if any(r.stmt is not func and r.scope is func for r in record):
        return None  # reassigned inside the function
    klass = ctx.enclosing_class(func)
    if func.name == "__init__" and klass is not None:  # type: ignore[attr-defined]
        sites = [c for c in ctx.calls if isinstance(c.func, ast.Name) and c.func.id == klass.name]
    else:
        sites = ctx.call_sites(func)
    if params and params[0] in ("self", "cls"):
        params = params[1:]
    default = _param_default(func, node.id)
    values = []
    for call in sites:
        if any(isinstance(a, ast.Starred) for a in call.args) or any(kw.arg is None for kw in call.keywords):
            return None
        bound = {kw.arg: kw.value for kw in call.keywords}
        for name, arg in zip(params, call.args):
            bound.setdefault(name, arg)
        values.append(bound.get(node.id, default))
    if not sites:
        values.append(default)
    verdicts = [_truthy_weights(ctx, v, model.framework) for v in values]
    return True if verdicts and all(v is True for v in verdicts) else None



def _truthy_weights(ctx: ModuleContext, node: ast.AST | None, framework: str) -> bool | None:
    if node is None:
        return None
    value = ctx.value(node)
    if value is True or (isinstance(value, str) and value and framework == "torchvision"):
        return True
    if framework == "torchvision" and isinstance(node, ast.Attribute) and "Weights" in (ctx.key(node) or ""):
        return True
    return None


def expectation(model: ModelInfo, ctx: ModuleContext | None = None) -> Expectation | None:
    """None where the model is not one these rules judge (not pretrained, unknown source)."""
    pretrained = model.pretrained
    if pretrained is not True and ctx is not None:
        # a flag that is a parameter: the context values it through `ctx.call_sites`, which for
        # `__init__` does not see the class's instantiations (it falls back to the default)
        pretrained = pretrained_through_parameter(ctx, model) or pretrained
    if pretrained is not True:
        return None
    if model.framework == "torchvision":
        kind = knowledge.torchvision_kind(model.arch)
        arch = model.arch.lower()
        if kind == "detection":
            return Expectation(model, "internal", source="torchvision detection weights")
        if kind in ("classification", "segmentation"):
            flag = kwarg(model.call, "transform_input")
            if arch.startswith(("inception_v3", "googlenet")) and isinstance(flag, ast.Constant) and flag.value is False:
                # without transform_input the ported TF weights see the input as is: (0.5, 0.5)
                sets = [("Inception (0.5)", knowledge.INCEPTION_MEAN, knowledge.INCEPTION_STD)]
                return Expectation(model, "stats", sets, source=f"torchvision {model.arch} weights with transform_input=False")
            return Expectation(model, "stats", [("ImageNet", knowledge.IMAGENET_MEAN, knowledge.IMAGENET_STD)], source="torchvision ImageNet weights")
        if kind == "video":
            if arch.startswith("mvit"):
                sets = [("Kinetics (0.45)", (0.45,) * 3, (0.225,) * 3)]
            elif arch.startswith("swin3d"):
                sets = [("ImageNet", knowledge.IMAGENET_MEAN, knowledge.IMAGENET_STD)]
            else:
                sets = [("Kinetics", knowledge.KINETICS_MEAN, knowledge.KINETICS_STD)]
            return Expectation(model, "stats", sets, source="torchvision Kinetics-400 weights")
        return None
    if model.framework == "timm":
        name = (model.family or "").lower()
        certain = None
        if name and not any(t in name for t in _UNCERTAIN_TIMM_TAGS):
            certain = knowledge.timm_expected_stats(name)
        if certain is not None:
            return Expectation(model, "stats", [certain], source=f"timm's {model.arch} weights")
        sets = [(n, m, s) for n, (m, s) in knowledge.KNOWN_STATS.items()]
        return Expectation(model, "stats", sets, certain=False, source="timm's pretrained weights")
    if model.framework == "hub":
        arch = (model.arch or "").lower()
        if arch in ("custom",) or not arch:
            return None
        src = _hub_source(model)
        if src == "local":
            return None
        sets = [(n, m, s) for n, (m, s) in knowledge.KNOWN_STATS.items()] + _HUB_EXTRA
        return Expectation(model, "stats", sets, certain=False, source=f"torch.hub weights for {model.arch}")
    return None


def _hub_source(model: ModelInfo) -> str | None:
    node = kwarg(model.call, "source")
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return node.value
    return None


def needs_normalization(exp: Expectation | None) -> bool:
    """PRE004 judges torchvision classification/segmentation and timm models only."""
    if exp is None or exp.kind != "stats":
        return False
    if exp.model.framework == "timm":
        return True
    return exp.model.framework == "torchvision" and knowledge.torchvision_kind(exp.model.arch) in ("classification", "segmentation")


# ---------------------------------------------------------------------------- data flow

#: calls whose result carries no data from their arguments (sizes, names, layer configs)
_OPAQUE_BUILTINS = {"len", "range", "int", "float", "str", "bool", "print", "isinstance", "issubclass", "type", "hasattr", "id", "repr", "format", "open", "round"}
_NN_CONTAINERS = {"Sequential", "ModuleList", "ModuleDict", "DataParallel", "DistributedDataParallel"}
#: attributes that are metadata, not data or weights
_OPAQUE_ATTRS = {"shape", "classes", "class_to_idx", "in_features", "out_features", "in_channels", "out_channels", "num_features", "size", "dtype", "device", "item", "ndim", "numel", "__len__", "idx_to_class"}

_MUTATORS = {"append", "extend", "insert", "add", "update", "setdefault", "__setitem__", "appendleft"}
_SELF = ("self", "cls")


class Flow:
    """Labelled forward data flow over one module (see the module docstring)."""

    MAX_ROUNDS = 8

    def __init__(self, ctx: ModuleContext, sources: dict[ast.AST, frozenset], entity_nodes: Iterable[ast.AST] = ()):
        self.ctx = ctx
        self.sources = sources
        #: model constructors: their own label meets their arguments (`FasterRCNN(backbone)`)
        self.entity_nodes = set(entity_nodes)
        self.records: list = [r for recs in ctx.assignments.values() for r in recs]
        self.table: dict[int, frozenset] = {}
        self.mutations: dict[int, frozenset] = {}
        self.returns: dict[ast.AST, frozenset] = {}
        self.meet_summary: dict[ast.AST, set] = {}
        self.meetings: set[frozenset] = set()
        self.where: dict[frozenset, ast.AST | None] = {}
        self.class_labels: dict[ast.ClassDef, frozenset] = {}
        self._memo: dict[ast.AST, frozenset] = {}
        self._lookups: dict = {}
        self._func_returns = self._collect_returns()
        self._mutation_sites = [
            n
            for n in ctx.nodes_of(ast.Assign, ast.Call)
            if (isinstance(n, ast.Assign) and any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in n.targets))
            or (isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute) and n.func.attr in _MUTATORS)
        ]
        self._classes_by_id = {id(k): k for k in ctx.classes.values()}
        self._compute_class_labels()
        self._propagate()
        self._meet()

    # -- setup
    def _collect_returns(self) -> dict[ast.AST, list[ast.expr]]:
        out: dict[ast.AST, list[ast.expr]] = {}
        for defs in self.ctx.functions.values():
            for d in defs:
                out[d] = []
        for node in self.ctx.nodes_of(ast.Return, ast.Yield, ast.YieldFrom):
            if node.value is not None:
                fn = self.ctx.enclosing_function(node)
                if fn in out:
                    out[fn].append(node.value)
        return out

    def _compute_class_labels(self) -> None:
        for klass in self.ctx.classes.values():
            labs: set = set()
            for src, lab in self.sources.items():
                if any(a is klass for a in self.ctx.ancestors(src)):
                    labs |= lab
            self.class_labels[klass] = frozenset(labs)

    # -- label computation
    def labels(self, node: ast.AST | None) -> frozenset:
        if node is None:
            return frozenset()
        memo = self._memo.get(node)
        if memo is not None:
            return memo
        self._memo[node] = frozenset()  # cycle guard
        try:
            out = self._labels(node)
        except RecursionError:
            out = frozenset()
        self._memo[node] = out
        return out

    def _labels(self, node: ast.AST) -> frozenset:
        ctx = self.ctx
        out: set = set(self.sources.get(node, ()))
        if isinstance(node, (ast.Name, ast.Attribute, ast.Subscript)):
            if isinstance(getattr(node, "ctx", None), ast.Store):
                return frozenset(out)
            if isinstance(node, ast.Attribute) and node.attr in _OPAQUE_ATTRS:
                return frozenset(out)
            key = ctx.key(node)
            record = self.lookup(key, node) if key else None
            if record is not None:
                out |= self.table.get(id(record), frozenset())
            if isinstance(node, ast.Attribute):
                out |= self.labels(node.value)
            elif isinstance(node, ast.Subscript) and record is None:
                out |= self._subscript(node)
            return frozenset(out)
        if isinstance(node, ast.Call):
            defs = self.local_defs(node)
            if defs:
                for d in defs:
                    out |= self._substitute(self.returns.get(d, frozenset()), d, node)
                return frozenset(out)
            if self.opaque(node):
                return frozenset(out)
            klass = self.local_class(node)
            if klass is not None:
                out |= self.class_labels.get(klass, frozenset())
            for part in self._call_parts(node):
                out |= self.labels(part)
            return frozenset(out)
        if isinstance(node, ast.Lambda):
            out |= self.labels(node.body)
            return frozenset(out)
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            return frozenset(out)
        for child in ast.iter_child_nodes(node):
            if not isinstance(child, (ast.expr_context, ast.operator, ast.cmpop, ast.unaryop, ast.boolop)):
                out |= self.labels(child)
        return frozenset(out)

    def lookup(self, key: str, node: ast.AST):
        """`ctx.assignment_at`, plus the binding it cannot see for a use in a comprehension's
        element (`[f(x) for x in xs]`: the element comes before its `for` in walk order)."""
        cache_key = (key, node)
        if cache_key in self._lookups:
            return self._lookups[cache_key]
        result = self._lookup(key, node)
        self._lookups[cache_key] = result
        return result

    def _lookup(self, key: str, node: ast.AST):
        ctx = self.ctx
        record = ctx.assignment_at(key, node)
        if "." in key or "[" in key:
            return record
        child: ast.AST = node
        for anc in ctx.ancestors(node):
            if isinstance(anc, (ast.ListComp, ast.SetComp, ast.GeneratorExp, ast.DictComp)):
                binding = [r for r in ctx.assignments.get(key, ()) if any(r.stmt is g for g in anc.generators) and r.stmt is not child]
                if binding and (record is None or record.scope is not binding[-1].scope or record.index < binding[-1].index):
                    return binding[-1]
            elif isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
                return record
            child = anc
        return record

    def _subscript(self, node: ast.Subscript) -> frozenset:
        index = self.ctx.value(node.slice)
        base = self.ctx.resolve(node.value)
        if index is not UNKNOWN and isinstance(base, ast.Dict):
            for k, v in zip(base.keys, base.values):
                if k is not None and self.ctx.value(k) == index:
                    return self.labels(v)
        return self.labels(node.value)

    def _call_parts(self, call: ast.Call) -> list[ast.AST]:
        parts: list[ast.AST] = [call.func]
        parts.extend(call.args)
        parts.extend(kw.value for kw in call.keywords)
        return parts

    def opaque(self, call: ast.Call) -> bool:
        """A call whose result carries none of its arguments' data: `len(...)`, `print(...)`,
        and `torch.nn` layer constructors (`nn.Linear(n, len(classes))`)."""
        func = call.func
        if isinstance(func, ast.Name) and func.id in _OPAQUE_BUILTINS and func.id not in self.ctx.imports and func.id not in self.ctx.functions:
            return True
        qual = self.ctx.call_name(call) or ""
        return qual.startswith("torch.nn.") and last(qual)[:1].isupper() and last(qual) not in _NN_CONTAINERS

    def local_defs(self, call: ast.Call) -> list[ast.AST]:
        ctx = self.ctx
        func = call.func
        if isinstance(func, ast.Name) and func.id in ctx.functions and func.id not in ctx.imports:
            return [d for d in ctx.functions[func.id] if not isinstance(ctx.parent(d), ast.ClassDef)]
        if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in _SELF:
            klass = ctx.enclosing_class(call)
            return [d for d in ctx.functions.get(func.attr, []) if ctx.parent(d) is klass]
        return []

    def local_class(self, call: ast.Call) -> ast.ClassDef | None:
        func = call.func
        if isinstance(func, ast.Name) and func.id in self.ctx.classes and func.id not in self.ctx.imports:
            return self.ctx.classes[func.id]
        return None

    def _substitute(self, labs: Iterable, func: ast.AST, call: ast.Call) -> frozenset:
        out: set = set()
        bound = None
        for lab in labs:
            if isinstance(lab, tuple) and lab[0] == "P" and lab[1] is func:
                if bound is None:
                    bound = self.ctx.bind_arguments(call, func)
                if lab[2] in bound:
                    out |= self.labels(bound[lab[2]])
            else:
                out.add(lab)
        return frozenset(out)

    def _record_labels(self, rec) -> frozenset:
        out: set = set(self.mutations.get(id(rec), ()))
        stmt = rec.stmt
        if rec.value is not None:
            out |= self.labels(rec.value)
            if rec.augmented:
                prev = self.lookup(rec.key, stmt)
                if prev is not None and prev is not rec:
                    out |= self.table.get(id(prev), frozenset())
        elif isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if rec.key not in _SELF:
                out.add(("P", stmt, rec.key))
        elif isinstance(stmt, (ast.For, ast.AsyncFor, ast.comprehension)):
            out |= self.labels(stmt.iter)
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign)) and stmt.value is not None:
            out |= self.labels(stmt.value)
        return frozenset(out)

    def _root_record(self, target: ast.AST, at: ast.AST):
        node = target
        while isinstance(node, (ast.Attribute, ast.Subscript)):
            node = node.value
            key = self.ctx.key(node)
            if key:
                rec = self.lookup(key, at)
                if rec is not None:
                    return rec
        return None

    def _collect_mutations(self) -> dict[int, frozenset]:
        muts: dict[int, set] = {}

        def add(target: ast.AST, at: ast.AST, labs: frozenset) -> None:
            if not labs:
                return
            rec = self._root_record(target, at)
            if rec is not None:
                muts.setdefault(id(rec), set()).update(labs)

        for node in self._mutation_sites:
            if isinstance(node, ast.Assign):
                labs = None
                for t in node.targets:
                    if isinstance(t, (ast.Attribute, ast.Subscript)):
                        labs = self.labels(node.value) if labs is None else labs
                        add(t, node, labs)
            elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in _MUTATORS:
                labs = frozenset().union(*(self.labels(a) for a in node.args)) if node.args else frozenset()
                add(node.func, node, labs)
        return {k: frozenset(v) for k, v in muts.items()}

    def _propagate(self) -> None:
        for _ in range(self.MAX_ROUNDS):
            self._memo = {}
            table = {id(r): self._record_labels(r) for r in self.records}
            returns = {d: frozenset().union(*(self.labels(v) for v in vals)) for d, vals in self._func_returns.items()}
            old = (self.table, self.returns, self.mutations)
            self.table, self.returns = table, returns
            self._memo = {}
            self.mutations = self._collect_mutations()
            if (self.table, self.returns, self.mutations) == old:
                break
        self._memo = {}

    # -- meetings
    def _slots(self, call: ast.Call) -> list[frozenset]:
        slots: list[frozenset] = []
        func = call.func
        klass = self.local_class(call)
        if klass is not None:
            slots.append(self.class_labels.get(klass, frozenset()))
        elif isinstance(func, ast.Attribute):
            slots.append(self.labels(func.value))
        else:
            slots.append(self.labels(func))
        if call in self.entity_nodes:
            slots.append(self.sources[call])
        for arg in list(call.args) + [kw.value for kw in call.keywords]:
            if isinstance(arg, ast.Starred):
                arg = arg.value
            if isinstance(arg, (ast.List, ast.Tuple)):
                slots.extend(self.labels(e) for e in arg.elts)
            else:
                slots.append(self.labels(arg))
        return slots

    def _pairs_of_call(self, call: ast.Call) -> set:
        pairs: set = set()
        defs = self.local_defs(call)
        if defs:
            for d in defs:
                for pair in list(self.meet_summary.get(d, ())):
                    a, b = tuple(pair) if len(pair) == 2 else (next(iter(pair)),) * 2
                    for x in self._substitute([a], d, call):
                        for y in self._substitute([b], d, call):
                            if x != y:
                                pairs.add(frozenset((x, y)))
            return pairs
        for s1, s2 in combinations(self._slots(call), 2):
            for x in s1:
                for y in s2:
                    if x != y:
                        pairs.add(frozenset((x, y)))
        return pairs

    def _file(self, pair: frozenset, where: ast.AST | None = None) -> bool:
        owners = {lab[1] for lab in pair if isinstance(lab, tuple) and lab[0] == "P"}
        if not owners:
            if pair in self.meetings:
                return False
            self.meetings.add(pair)
            self.where[pair] = where  # for debugging and evidence
            return True
        changed = False
        for owner in owners:
            bucket = self.meet_summary.setdefault(owner, set())
            if pair not in bucket:
                bucket.add(pair)
                changed = True
        return changed

    def _meet(self) -> None:
        assigns = [n for n in self.ctx.nodes_of(ast.Assign) if any(isinstance(t, (ast.Attribute, ast.Subscript)) for t in n.targets)]
        for _ in range(self.MAX_ROUNDS):
            changed = False
            for call in self.ctx.calls:
                for pair in self._pairs_of_call(call):
                    changed |= self._file(pair, call)
            for node in assigns:
                value = self.labels(node.value)
                for t in node.targets:
                    if isinstance(t, (ast.Attribute, ast.Subscript)):
                        base = self.labels(t.value)
                        for x in base:
                            for y in value:
                                if x != y:
                                    changed |= self._file(frozenset((x, y)), node)
            if not changed:
                break

    def meets(self, a: Any, b: Any) -> bool:
        return frozenset((a, b)) in self.meetings

    def partners(self, a: Any) -> set:
        out = set()
        for pair in self.meetings:
            if a in pair:
                out |= set(pair) - {a}
        return out


# ---------------------------------------------------------------------------- the file's models

_DETECTION_WRAPPERS = {"FasterRCNN", "MaskRCNN", "KeypointRCNN", "RetinaNet", "FCOS", "SSD", "SSDLite", "GeneralizedRCNN"}


@dataclass
class ModelEntity:
    """A model the file builds: a known constructor or an instantiated local nn.Module class."""

    label: Any
    node: ast.AST
    expectation: Expectation | None = None
    detection: bool = False
    wraps_known: bool = False  # a local class whose body builds a judged pretrained model
    reloaded: bool = False  # load_state_dict(torch.load(...)) replaced the pretrained weights


def _module_like_classes(ctx: ModuleContext) -> set[str]:
    out: set[str] = set()
    changed = True
    while changed:
        changed = False
        for name, klass in ctx.classes.items():
            if name in out:
                continue
            for base in klass.bases:
                bname = ctx.qualname(base) or ctx.key(base) or ""
                if bname.endswith("Module") or last(bname) in out or last(bname) in ("Module", "LightningModule"):
                    out.add(name)
                    changed = True
                    break
    return out


@dataclass
class Analysis:
    ctx: ModuleContext
    entities: list[ModelEntity]
    flow: Flow | None
    norms: list[NormalizeCall]
    roots: list[ast.expr]

    _evidence: list[ast.AST] | None = None
    _renormalization: list[ast.AST] | None = None

    @property
    def evidence(self) -> list[ast.AST]:
        """`normalization_evidence(ctx)`, computed once per module."""
        if self._evidence is None:
            self._evidence = normalization_evidence(self.ctx)
        return self._evidence

    @property
    def renormalization(self) -> list[ast.AST]:
        """`arithmetic_renormalization(ctx)`, computed once per module."""
        if self._renormalization is None:
            self._renormalization = arithmetic_renormalization(self.ctx)
        return self._renormalization

    def judged(self) -> list[ModelEntity]:
        return [e for e in self.entities if e.expectation is not None]

    def associated(self, label: Any, want) -> tuple[list[ModelEntity], bool] | None:
        """The judged models that `label` (a pipeline or Normalize) feeds, and whether that came
        from the data flow (True) or from the whole-file fallback (False). None: silent."""
        met: list[ModelEntity] = []
        other = False
        if self.flow is not None:
            partners = self.flow.partners(label)
            judged_labels = [e.label for e in self.entities if e.expectation is not None and want(e)]
            for ent in self.entities:
                if ent.label in partners:
                    if ent.expectation is not None and want(ent):
                        met.append(ent)
                    elif not ent.wraps_known and not any(self.flow.meets(ent.label, j) for j in judged_labels):
                        other = True  # a model of its own (not a head or wrapper of a judged one)
        if self.flow is not None:
            detection = [e for e in self.entities if e.detection and e.label in partners]
            if detection:
                # data that enters a detection model is normalised inside it, whatever
                # backbone label travels along (`FasterRCNN(mobilenet_v2(...).features)`)
                met = [e for e in detection if e.expectation is not None and want(e)]
                return (met, True) if met else None
        if other:
            return None  # the pipeline also feeds a model of another kind: ambiguous
        if met:
            return met, True
        # fallback: every model in the file is one we judge for this rule
        judged = [e for e in self.entities if e.expectation is not None and want(e)]
        if not judged:
            return None
        for ent in self.entities:
            if ent in judged or ent.wraps_known:
                continue
            if self.flow is not None and any(self.flow.meets(ent.label, j.label) for j in judged):
                continue  # a head or wrapper combined with the pretrained model
            return None
        return judged, False


_CACHE: weakref.WeakKeyDictionary[ModuleContext, Analysis] = weakref.WeakKeyDictionary()


def analyse(ctx: ModuleContext) -> Analysis:
    cached = _CACHE.get(ctx)
    if cached is not None:
        return cached
    entities: list[ModelEntity] = []
    for info in ctx.models:
        exp = expectation(info, ctx)
        det = info.framework == "torchvision" and knowledge.torchvision_kind(info.arch) == "detection"
        entities.append(ModelEntity(info.call, info.call, exp, det))
    module_classes = _module_like_classes(ctx)
    judged_calls = {e.node for e in entities if e.expectation is not None}
    for call in ctx.calls:
        qual = ctx.call_name(call) or ""
        if qual.startswith("torchvision.models.detection") and last(qual) in _DETECTION_WRAPPERS:
            entities.append(ModelEntity(call, call, None, True))
            continue
        func = call.func
        if isinstance(func, ast.Name) and func.id in module_classes and func.id not in ctx.imports:
            klass = ctx.classes[func.id]
            wraps = any(any(a is klass for a in ctx.ancestors(c)) for c in judged_calls)
            entities.append(ModelEntity(call, call, None, False, wraps))
    norms = normalize_calls(ctx)
    roots: list[ast.expr] = []
    seen: set = set()
    for call in ctx.calls:
        if is_tensor_conversion(ctx, call):
            root = pipeline_root(ctx, call)
            if root not in seen:
                seen.add(root)
                roots.append(root)
    flow = None
    if any(e.expectation is not None for e in entities) and (norms or roots):
        sources: dict[ast.AST, frozenset] = {}
        for ent in entities:
            sources[ent.node] = frozenset({ent.label})
        for n in norms:
            sources.setdefault(n.call, frozenset())
            sources[n.call] = sources[n.call] | {n.call}
        for r in roots:
            sources.setdefault(r, frozenset())
            sources[r] = sources[r] | {r}
        flow = Flow(ctx, sources, [e.node for e in entities])
        # weights overwritten from a local checkpoint are no longer the pretrained weights:
        # what that checkpoint expects is unknown, so these models are not judged
        # (only an unconditional reload counts: under `if args.resume:` the default run still
        # starts from the pretrained weights and their preprocessing)
        for call in ctx.method_calls("load_state_dict"):
            if not (call.args or call.keywords) or not _loads_checkpoint(ctx, (call.args or [call.keywords[0].value])[0]):
                continue
            if _conditional(ctx, call):
                continue
            receiver = flow.labels(call.func.value)  # type: ignore[attr-defined]
            for ent in entities:
                if ent.expectation is not None and ent.label in receiver:
                    ent.expectation = None
                    ent.reloaded = True
    result = Analysis(ctx, entities, flow, norms, roots)
    _CACHE[ctx] = result
    return result


def _conditional(ctx: ModuleContext, node: ast.AST) -> bool:
    """Is `node` inside an `if` (or a try/except fallback) of its own function or module?"""
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.Module)):
            return False
        if isinstance(anc, (ast.If, ast.IfExp, ast.ExceptHandler)):
            return True
    return False


_CHECKPOINT_LOADERS = ("torch.load", "safetensors.torch.load_file", "safetensors.torch.load", "torch.jit.load")


def _loads_checkpoint(ctx: ModuleContext, node: ast.AST, depth: int = 0) -> bool:
    """Does this expression come from a checkpoint file (`torch.load(path)`, `ckpt["model"]`)?"""
    if node is None or depth > 6:
        return False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Call) and (ctx.call_name(sub) or "") in _CHECKPOINT_LOADERS:
            return True
        if isinstance(sub, ast.Name):
            target = ctx.resolve(sub)
            if target is not None and target is not sub and _loads_checkpoint(ctx, target, depth + 1):
                return True
    return False


def display_name(ctx: ModuleContext, node: ast.AST) -> str:
    """How a reader refers to a pipeline: `val_transform`, `data_transforms['val']`, else the call."""
    parent = ctx.parent(node)
    stmt = ctx.statement(node)
    if isinstance(stmt, (ast.Assign, ast.AnnAssign)):
        targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target]
        if stmt.value is node and len(targets) == 1:
            key = ctx.key(targets[0])
            if key:
                return key
        if isinstance(parent, ast.Dict) and parent is stmt.value and len(targets) == 1:
            key = ctx.key(targets[0])
            for k, v in zip(parent.keys, parent.values):
                if v is node and isinstance(k, ast.Constant) and key:
                    return f"{key}[{k.value!r}]"
    if isinstance(parent, ast.keyword) and parent.arg:
        return f"the {parent.arg}= pipeline"
    if isinstance(parent, ast.Return) and isinstance(node, ast.Call):
        func = ctx.enclosing_function(node)
        name = last(ctx.call_name(node) or ctx.key(node.func) or "") or "pipeline"
        if func is not None:
            return f"the {name} returned by {func.name}()"  # type: ignore[attr-defined]
    if isinstance(node, ast.Call):
        name = last(ctx.call_name(node) or ctx.key(node.func) or "")
        if name in COMPOSE_NAMES:
            return f"{name}([...])"
        return f"{name or 'the call'}(...)"
    return "the transform list"
