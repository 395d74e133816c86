"""Shared analysis for the learning-rate rules: recognising optimizers (Keras, tf.keras, TF1,
tensorflow_addons, torch.optim, transformers, timm, bitsandbytes) and learning-rate schedules,
following a model variable back to where it was built (through local functions, tuple returns,
parameters at their call sites, wrappers), finding which pretrained weights a model contains,
and ordering freeze events against the compile/optimizer they affect.

Rule-specific; not a rule module (the leading underscore keeps the registry out).
"""

from __future__ import annotations

import ast
from collections.abc import Iterable
from auditor.analysis.records import field
from auditor.analysis.records import record as dataclass
from typing import Any

from auditor import knowledge
from auditor.analysis.context import (
    MODEL_PASSTHROUGH_METHODS,
    UNKNOWN,
    ModelInfo,
    ModuleContext,
    _binop,
    kwarg,
)
from auditor.analysis.names import last
from auditor.analysis.context import param_default

from ._shared import is_parameter

# ---------------------------------------------------------------------------------- families

#: extra optimizer class names (lower case) beyond knowledge.OPTIMIZER_FAMILIES
_EXTRA_FAMILIES = {
    "rectifiedadam": "adam",
    "adamp": "adam",
    "nadamw": "adam",
    "adan": "adam",
    "lamb": "adam",
    "sgdp": "sgd",
    "momentum": "sgd",
    "nesterov": "sgd",
    "rmsproptf": "rmsprop",
}

#: TF1 `tf.train.*Optimizer` classes -> (family, default lr or None when required)
_TF1 = {
    "AdamOptimizer": ("adam", 0.001),
    "GradientDescentOptimizer": ("sgd", None),
    "MomentumOptimizer": ("sgd", None),
    "RMSPropOptimizer": ("rmsprop", None),
    "AdagradOptimizer": ("adagrad", None),
}

#: tensorflow_addons optimizers: keyword-only learning_rate (the first positional is weight_decay)
_TFA_DEFAULTS = {"adamw": 1e-3, "sgdw": 1e-3, "lamb": 1e-3, "rectifiedadam": 1e-3}

#: Keras learning-rate schedules whose first argument is the initial rate
_KERAS_SCHEDULES_INITIAL = {"ExponentialDecay", "CosineDecay", "CosineDecayRestarts", "InverseTimeDecay", "PolynomialDecay"}

#: wrappers that return (a view of) the same model
_MODEL_WRAPPERS = {
    "torch.nn.DataParallel",
    "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.DistributedDataParallel",
    "torch.compile",
    "torch.jit.script",
}

#: container constructors whose contents are the model
_CONTAINERS = {
    "keras.Model",
    "keras.Sequential",
    "torch.nn.Sequential",
    "torch.nn.ModuleList",
    "torch.nn.ModuleDict",
}


def family_of(name: str) -> str | None:
    """Threshold family of an optimizer class/string name (`AdamW` -> adam), None if unknown."""
    low = name.lower()
    for prefix in ("lookahead_", "fused", "paged"):
        if low.startswith(prefix):
            low = low[len(prefix) :]
    for suffix in ("8bit", "32bit"):
        if low.endswith(suffix):
            low = low[: -len(suffix)]
    return knowledge.OPTIMIZER_FAMILIES.get(low) or _EXTRA_FAMILIES.get(low)


@dataclass
class OptimizerSpec:
    """An optimizer construction as the rule needs it."""

    call: ast.AST  # the Call, or the string Constant for `compile(optimizer="adam")`
    framework: str  # "keras" or "torch"
    display: str  # "Adam", "SGD", "AdamW"
    family: str  # sgd / adam / rmsprop / adagrad
    lr: Any  # number, UNKNOWN, or None (unset and no known default)
    lr_origin: str  # "" or "Keras default for 'adam'", "ExponentialDecay initial value" ...
    momentum: float | None
    params: ast.expr | None = None  # torch: the params argument
    default_lr: Any = None  # torch: the optimizer's lr for groups without their own
    params_is_model: bool = False  # timm create_optimizer_v2(model, ...): a module, not an iterable


def optimizer_spec(ctx: ModuleContext, node: ast.AST) -> OptimizerSpec | None:
    """Recognise an optimizer construction (a Call) or a Keras optimizer string."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _keras_string(node)
    if not isinstance(node, ast.Call):
        return None
    name = ctx.call_name(node) or ""
    if not name:
        return None
    cls = last(name)
    if name.startswith("keras.optimizers.") and not name.startswith("keras.optimizers.schedules."):
        fam = family_of(cls)
        if fam is None:
            return None
        lr_node = kwarg(node, "learning_rate", 0) or kwarg(node, "lr")
        default = knowledge.DEFAULT_LR["keras"].get(cls.lower())
        lr, origin = _lr_value(ctx, lr_node, default, "Keras default")
        mom = _momentum(ctx, kwarg(node, "momentum", 1)) if fam == "sgd" else None
        return OptimizerSpec(node, "keras", cls, fam, lr, origin, mom)
    if name.startswith(("tensorflow.train.", "tensorflow.compat.v1.train.")) and cls in _TF1:
        fam, default = _TF1[cls]
        lr, origin = _lr_value(ctx, kwarg(node, "learning_rate", 0), default, "TensorFlow default")
        mom = _momentum(ctx, kwarg(node, "momentum", 1)) if cls == "MomentumOptimizer" else None
        if cls == "MomentumOptimizer" and mom is None:
            return None
        return OptimizerSpec(node, "keras", cls.replace("Optimizer", ""), fam, lr, origin, mom)
    if name.startswith("tensorflow_addons.optimizers."):
        fam = family_of(cls)
        if fam is None:
            return None
        lr, origin = _lr_value(ctx, kwarg(node, "learning_rate"), _TFA_DEFAULTS.get(cls.lower()), "tensorflow_addons default")
        mom = _momentum(ctx, kwarg(node, "momentum")) if fam == "sgd" else None
        return OptimizerSpec(node, "keras", cls, fam, lr, origin, mom)
    torch_like = (
        (name.startswith("torch.optim.") and name.count(".") == 2)
        or name in ("transformers.AdamW", "transformers.optimization.AdamW")
        or name.startswith("bitsandbytes.optim.")
    )
    if torch_like:
        fam = family_of(cls)
        if fam is None:
            return None
        default = knowledge.DEFAULT_LR["torch"].get(cls.lower())
        if name.startswith("bitsandbytes."):
            default = None
        lr, origin = _lr_value(ctx, kwarg(node, "lr", 1), default, "PyTorch default")
        mom = _momentum(ctx, kwarg(node, "momentum", 2)) if fam == "sgd" else None
        params = kwarg(node, "params", 0)
        return OptimizerSpec(node, "torch", cls, fam, lr, origin, mom, params, lr)
    if cls == "create_optimizer_v2" and name.startswith("timm"):
        opt_node = kwarg(node, "opt", 1)
        opt = "sgd" if opt_node is None else ctx.string(opt_node)
        if not opt:
            return None
        opt = opt.lower().split("_")[-1]
        fam = family_of(opt)
        if fam is None:
            return None
        lr_node = kwarg(node, "lr", 2)
        if lr_node is None:
            return None
        lr, origin = _lr_value(ctx, lr_node, None, "")
        mom = None
        if fam == "sgd":
            mnode = kwarg(node, "momentum")
            mom = 0.9 if mnode is None else _momentum(ctx, mnode)
        params = kwarg(node, "model_or_params", 0)
        return OptimizerSpec(node, "torch", opt, fam, lr, origin, mom, params, lr, params_is_model=True)
    return None


def _keras_string(node: ast.Constant) -> OptimizerSpec | None:
    name = node.value.strip().lower()
    fam = family_of(name)
    if fam is None or name not in knowledge.DEFAULT_LR["keras"]:
        return None
    display = {"sgd": "SGD", "adam": "Adam", "adamw": "AdamW", "rmsprop": "RMSprop", "adagrad": "Adagrad", "nadam": "Nadam", "adamax": "Adamax"}.get(name, name)
    return OptimizerSpec(node, "keras", display, fam, knowledge.DEFAULT_LR["keras"][name], f"Keras default for optimizer={node.value!r}", 0.0 if fam == "sgd" else None)


def _lr_value(ctx: ModuleContext, node: ast.AST | None, default: Any, default_text: str) -> tuple[Any, str]:
    if node is None:
        return default, (default_text if default is not None else "")
    target = ctx.resolve(node) if isinstance(node, (ast.Name, ast.Attribute)) else node
    if isinstance(target, ast.Call):
        sched = schedule_peak(ctx, target)
        if sched is not None:
            return sched
    v = value(ctx, node)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return UNKNOWN, ""
    return v, ""


def schedule_peak(ctx: ModuleContext, call: ast.Call) -> tuple[Any, str] | None:
    """The starting (or warm-up target) rate of a Keras schedule; None if not a known schedule."""
    name = ctx.call_name(call) or ""
    if not name.startswith(("keras.", "tensorflow.")):
        return None
    cls = last(name)
    if cls in _KERAS_SCHEDULES_INITIAL:
        initial = number(ctx, kwarg(call, "initial_learning_rate", 0))
        if initial is None:
            return UNKNOWN, ""
        if cls == "CosineDecay":
            target = kwarg(call, "warmup_target", 4)
            peak = number(ctx, target) if target is not None else None
            if peak is not None and peak > initial:
                return peak, "CosineDecay warm-up target"
        return initial, f"{cls} initial value"
    if cls == "PiecewiseConstantDecay":
        values = value(ctx, kwarg(call, "values", 1))
        if isinstance(values, tuple) and values:
            first = values[0]
            if isinstance(first, (int, float)) and not isinstance(first, bool):
                return first, "PiecewiseConstantDecay first value"
        return UNKNOWN, ""
    return None


def _momentum(ctx: ModuleContext, node: ast.AST | None) -> float | None:
    if node is None:
        return 0.0
    v = number(ctx, node)
    return float(v) if v is not None else None


# ---------------------------------------------------------------------------------- data flow
def local_functions(ctx: ModuleContext, call: ast.Call) -> list[ast.AST]:
    """Module-local function definitions a call may run (`f(...)`, `self.f(...)`)."""
    func = call.func
    if isinstance(func, ast.Name) and func.id in ctx.functions and ctx.imports.get(func.id) is None:
        return list(ctx.functions[func.id])
    if isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id in ("self", "cls"):
        klass = ctx.enclosing_class(call)
        found = [f for f in ctx.functions.get(func.attr, []) if klass is not None and ctx.enclosing_class(f) is klass]
        return found or [f for f in ctx.functions.get(func.attr, []) if ctx.enclosing_class(f) is not None]
    return []


def local_class(ctx: ModuleContext, call: ast.Call) -> ast.ClassDef | None:
    func = call.func
    if isinstance(func, ast.Name) and func.id in ctx.classes and ctx.imports.get(func.id) is None:
        return ctx.classes[func.id]
    return None


def returns_of(ctx: ModuleContext, func: ast.AST) -> list[ast.expr]:
    out = []
    for node in ast.walk(func):
        if isinstance(node, ast.Return) and node.value is not None and ctx.enclosing_function(node) is func:
            out.append(node.value)
    return out


def _unwrap(ctx: ModuleContext, node: ast.AST) -> ast.AST:
    while isinstance(node, ast.Call):
        func = node.func
        if isinstance(func, ast.Attribute) and func.attr in MODEL_PASSTHROUGH_METHODS and ctx.call_name(node) is None:
            node = func.value
            continue
        if (ctx.call_name(node) or "") in _MODEL_WRAPPERS and node.args:
            node = node.args[0]
            continue
        break
    return node


def origins(ctx: ModuleContext, node: ast.AST | list | None, limit: int = 80) -> list[ast.AST]:
    """The expressions a value may come from: follows names to their assignment in force,
    parameters to the arguments at every call site, local function calls to their returns
    (tuple returns by position), `.to(device)`-style chains and DataParallel wrappers."""
    out: list[ast.AST] = []
    starts = node if isinstance(node, list) else ([node] if node is not None else [])
    stack: list[tuple[ast.AST, int]] = [(n, 0) for n in starts]
    seen: set[int] = set()
    steps = 0
    while stack and steps < limit:
        steps += 1
        n, depth = stack.pop()
        if n is None or id(n) in seen or depth > 12:
            continue
        seen.add(id(n))
        n = _unwrap(ctx, n)
        if isinstance(n, (ast.Name, ast.Attribute)):
            key = ctx.key(n)
            nxt = bindings(ctx, key, n) if key else None
            if nxt is None:
                out.append(n)
            else:
                stack.extend((x, depth + 1) for x in nxt)
            continue
        if isinstance(n, ast.Call):
            funcs = local_functions(ctx, n)
            if funcs and local_class(ctx, n) is None:
                rets = [r for f in funcs for r in returns_of(ctx, f)]
                if rets:
                    stack.extend((r, depth + 1) for r in rets)
                    continue
            out.append(n)
            continue
        if isinstance(n, ast.IfExp):
            stack.append((n.body, depth + 1))
            stack.append((n.orelse, depth + 1))
            continue
        out.append(n)
    return out


def call_sites_of(ctx: ModuleContext, func: ast.AST) -> list[tuple[ast.Call, dict[str, ast.expr]]]:
    """Call sites of a module-local function with their bound arguments; `__init__` is called
    through its class (`Net(...)`)."""
    out = []
    if getattr(func, "name", None) == "__init__":
        klass = ctx.enclosing_class(func)
        if klass is not None:
            params = [a.arg for a in func.args.posonlyargs + func.args.args][1:]  # type: ignore[attr-defined]
            for call in ctx.calls:
                if isinstance(call.func, ast.Name) and call.func.id == klass.name:
                    bound = {}
                    for pname, arg in zip(params, call.args):
                        if isinstance(arg, ast.Starred):
                            break
                        bound[pname] = arg
                    bound.update({kw.arg: kw.value for kw in call.keywords if kw.arg})
                    out.append((call, bound))
        return out
    for call in ctx.call_sites(func):
        out.append((call, ctx.bind_arguments(call, func)))
    return out


def param_arguments(ctx: ModuleContext, func: ast.AST, key: str) -> list[ast.AST] | None:
    """Every expression a parameter receives: the argument at each call site (`__init__`
    through its class's instantiations); with no call site, the context's reading: the
    module-level variable of the same name, else the default."""
    found: list[ast.AST] = []
    sites = call_sites_of(ctx, func)
    default = param_default(func, key)
    for _, bound in sites:
        if key in bound:
            found.append(bound[key])
        elif default is not None:
            found.append(default)
    if not sites:
        outer = [r for r in ctx.assignments.get(key, ()) if r.scope is ctx.tree and r.value is not None and not r.augmented]
        if outer:
            found.append(outer[-1].value)
        elif default is not None:
            found.append(default)
    return found or None


def value(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> Any:
    """`ctx.value`, plus parameters inside their own function (every call site and the
    default must agree) and `self.x` set from an `__init__` parameter."""
    if node is None or depth > 8:
        return UNKNOWN
    d = depth + 1
    if isinstance(node, ast.Name):
        # a parameter: every call site must agree, `__init__` through its class's instantiations
        # (`ctx.value` looks only at direct calls of the function)
        record = ctx.assignment_at(node.id, node)
        if not is_parameter(record):
            return ctx.value(node)
        args = param_arguments(ctx, record.stmt, node.id)
        if not args:
            return UNKNOWN
        values = [value(ctx, a, d) for a in args]
        if all(x is not UNKNOWN and x == values[0] for x in values):
            return values[0]
        return UNKNOWN
    v = ctx.value(node)
    if v is not UNKNOWN:
        return v
    if isinstance(node, ast.Attribute):
        key = ctx.key(node)
        record = ctx.assignment_at(key, node) if key else None
        if record is not None and record.value is not None and not record.augmented:
            return value(ctx, record.value, d)
        if isinstance(node.value, ast.Name):
            # args = get_args() / parse_args() helpers returning parser.parse_args()
            defaults = getattr(ctx, "_argparse", {})
            for origin in origins(ctx, node.value):
                if isinstance(origin, ast.Subscript):
                    origin = origin.value
                if isinstance(origin, ast.Call) and isinstance(origin.func, ast.Attribute) and origin.func.attr in ("parse_args", "parse_known_args"):
                    if node.attr in defaults:
                        return value(ctx, defaults[node.attr], d)
                    return UNKNOWN
        return UNKNOWN
    if isinstance(node, ast.BinOp):
        return _binop(node.op, value(ctx, node.left, d), value(ctx, node.right, d))
    if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
        inner = value(ctx, node.operand, d)
        return -inner if isinstance(inner, (int, float)) and not isinstance(inner, bool) else UNKNOWN
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ("float", "int") and len(node.args) == 1:
        inner = value(ctx, node.args[0], d)
        if isinstance(inner, (int, float, str)) and not isinstance(inner, bool):
            try:
                return {"float": float, "int": int}[node.func.id](inner)
            except ValueError:
                return UNKNOWN
    if isinstance(node, (ast.Tuple, ast.List)):
        items = tuple(value(ctx, e, d) for e in node.elts)
        return UNKNOWN if any(i is UNKNOWN for i in items) else items
    return UNKNOWN


def number(ctx: ModuleContext, node: ast.AST | None) -> float | None:
    v = value(ctx, node)
    if isinstance(v, bool) or not isinstance(v, (int, float)):
        return None
    return v


def expand_record(ctx: ModuleContext, record, key: str) -> list[ast.AST] | None:
    """What an assignment record binds `key` to; None when it cannot be followed."""
    if record.augmented:
        return None
    if record.value is not None:
        return [record.value]
    stmt = record.stmt
    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
        return param_arguments(ctx, stmt, key)
    if isinstance(stmt, ast.Assign):
        found = []
        for target in stmt.targets:
            if isinstance(target, (ast.Tuple, ast.List)):
                index = next((i for i, e in enumerate(target.elts) if ctx.key(e) == key), None)
                if index is not None:
                    found.extend(_tuple_item(ctx, stmt.value, index))
        return found or None
    return None


def key_origins(ctx: ModuleContext, key: str, at: ast.AST) -> tuple[list[ast.AST], list[str]] | None:
    """Origins of the longest prefix of a dotted key that has an assignment in force at `at`,
    and the rest of the key: `model.layer4` -> (origins of `model`, ['layer4'])."""
    parts = key_parts(key)
    for i in range(len(parts), 0, -1):
        prefix = join_key(parts[:i])
        if ctx.assignment_at(prefix, at) is None:
            continue
        nxt = bindings(ctx, prefix, at)
        if nxt is None:
            return None
        return origins(ctx, list(nxt)), parts[i:]
    return None


def records_at(ctx: ModuleContext, key: str, node: ast.AST, depth: int = 0) -> list:
    """The assignments of `key` that may be in force at `node`: the last one before it, minus
    a branch whose condition is known to be false, plus what was in force before an `if` whose
    condition is unknown (sibling `elif`/`else` assignments come with it)."""
    record = ctx.assignment_at(key, node)
    if record is None or depth > 6:
        return []
    if record.value is None and isinstance(record.stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
        return [record]  # a parameter
    inside = {id(a) for a in ctx.ancestors(node)}
    extras: list = []
    child = record.stmt
    for anc in ctx.ancestors(record.stmt):
        if id(anc) in inside or isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef, ast.Module)):
            break
        if isinstance(anc, ast.If):
            in_body = any(child is s for s in anc.body)
            flag = value(ctx, anc.test)
            if flag is not UNKNOWN and bool(flag) != in_body:
                return records_at(ctx, key, anc, depth + 1)
            if flag is UNKNOWN:
                extras.extend(records_at(ctx, key, anc, depth + 1))
        child = anc
    out = [record]
    for r in extras:
        if all(r is not o for o in out):
            out.append(r)
    return out


def bindings(ctx: ModuleContext, key: str, node: ast.AST) -> list[ast.AST] | None:
    """The expressions `key` may hold at `node`: the assignments in force (see records_at;
    `with ... as key` binds the context expression, a parameter its arguments at the call sites)."""
    found: list[ast.AST] = []
    for record in records_at(ctx, key, node):
        nxt = expand_record(ctx, record, key)
        if nxt:
            found.extend(nxt)
    return found or None


def join_key(parts: list[str]) -> str:
    out = ""
    for p in parts:
        out += p if p.startswith("[") or not out else "." + p
    return out


def _tuple_item(ctx: ModuleContext, value: ast.AST, index: int) -> list[ast.AST]:
    if isinstance(value, (ast.Tuple, ast.List)) and index < len(value.elts):
        return [value.elts[index]]
    if isinstance(value, ast.Call):
        out = []
        for func in local_functions(ctx, value):
            for ret in returns_of(ctx, func):
                if isinstance(ret, (ast.Tuple, ast.List)) and index < len(ret.elts):
                    out.append(ret.elts[index])
        return out
    return []



# ---------------------------------------------------------------------------------- pretrained weights
@dataclass
class Pretrained:
    """Pretrained weights a trained model contains."""

    label: str  # "ResNet50", "resnet50", "bert-base-uncased", "weights loaded from 'x.pth'"
    anchors: list[ast.AST] = field(default_factory=list)  # constructor calls of the pretrained parts
    frozen_at_build: bool = False  # tensorflow_hub.KerasLayer without trainable=True


def model_label(ctx: ModuleContext, info: ModelInfo) -> str:
    if info.framework == "hf":
        name = ctx.string(kwarg(info.call, "pretrained_model_name_or_path", 0))
        if name:
            return name
    return info.arch


class PretrainedFinder:
    """Finds the pretrained weights inside a model expression (a data-flow slice)."""

    def __init__(self, ctx: ModuleContext):
        self.ctx = ctx
        self.by_call = {id(m.call): m for m in ctx.models}
        self._class_cache: dict[int, list[ModelInfo]] = {}

    def pretrained(self, info: ModelInfo) -> bool | None:
        """`info.pretrained`, re-read with this module's parameter resolution when the flag is
        an expression (`models.resnet18(pretrained=use_pretrained)` in a helper, or a class
        built with `Net(pretrained_backbone=False)`); the context's answer otherwise."""
        mine = self._pretrained_flag(info)
        return info.pretrained if mine is None else mine

    def _pretrained_flag(self, info: ModelInfo) -> bool | None:
        call = info.call
        if info.framework == "keras":
            node = kwarg(call, "weights", 1)
            if node is None or isinstance(node, ast.Constant):
                return None
            weights = value(self.ctx, node)
            return None if weights is UNKNOWN else isinstance(weights, str)
        for flag in ("pretrained", "weights"):
            node = kwarg(call, flag, 1 if (flag == "pretrained" and info.framework == "timm") else None)
            if node is None or isinstance(node, (ast.Constant, ast.Attribute)):
                continue
            v = value(self.ctx, node)
            if v is UNKNOWN:
                return None
            if flag == "pretrained":
                return bool(v) if isinstance(v, (bool, int)) else None
            return None if v is not None and not isinstance(v, str) else v is not None
        return None

    def info(self, node: ast.AST) -> ModelInfo | None:
        # `EfficientNetB0(weights=None)(x)` calls the model; models.py also lists that outer
        # call under the constructor's name (with the default weights): only the inner one counts
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Call):
            return None
        return self.by_call.get(id(node))

    def class_models(self, klass: ast.ClassDef, depth: int = 0) -> list[ModelInfo]:
        """Pretrained constructors built inside a local class (and its local base classes)."""
        key = id(klass)
        if key in self._class_cache:
            return self._class_cache[key]
        self._class_cache[key] = []
        found = []
        for node in ast.walk(klass):
            if isinstance(node, ast.Call):
                info = self.info(node)
                if info is not None and self.pretrained(info):
                    found.append(info)
        if depth < 3:
            for base in klass.bases:
                if isinstance(base, ast.Name) and base.id in self.ctx.classes:
                    found.extend(self.class_models(self.ctx.classes[base.id], depth + 1))
        self._class_cache[key] = found
        return found

    def hub_layer(self, node: ast.AST) -> bool:
        return isinstance(node, ast.Call) and (self.ctx.call_name(node) or "") in ("tensorflow_hub.KerasLayer", "tensorflow_hub.keras_layer.KerasLayer")

    def slice(self, starts: Iterable[ast.AST], budget: int = 4000) -> tuple[list[ModelInfo], list[ast.Call]]:
        """Pretrained constructors (and TF-Hub layers) an expression is built from."""
        ctx = self.ctx
        found: list[ModelInfo] = []
        hubs: list[ast.Call] = []
        stack = list(starts)
        seen: set[int] = set()
        while stack and budget > 0:
            node = stack.pop()
            if node is None or id(node) in seen:
                continue
            seen.add(id(node))
            budget -= 1
            if isinstance(node, ast.Call):
                info = self.info(node)
                if info is not None:
                    if self.pretrained(info):
                        found.append(info)
                    # the constructor's own arguments (input_tensor=...) are not weights
                    continue
                if self.hub_layer(node):
                    hubs.append(node)
                    continue
                klass = local_class(ctx, node)
                if klass is not None:
                    found.extend(self.class_models(klass))
                for func in local_functions(ctx, node):
                    stack.extend(returns_of(ctx, func))
                stack.append(node.func)
                stack.extend(node.args)
                stack.extend(kw.value for kw in node.keywords)
                # Sequential().add(...) style: the added layers belong to the model
                stmt = ctx.statement(node)
                if (ctx.call_name(node) or "") in _CONTAINERS and isinstance(stmt, ast.Assign) and _unwrap(ctx, stmt.value) is node:
                    keys = {ctx.key(t) for t in stmt.targets}
                    for add in ctx.method_calls("add", "append", "add_module"):
                        if ctx.key(add.func.value) in keys:  # type: ignore[attr-defined]
                            stack.extend(add.args)
                continue
            if isinstance(node, (ast.Name, ast.Attribute)) and isinstance(getattr(node, "ctx", None), ast.Load):
                key = ctx.key(node)
                record = ctx.assignment_at(key, node) if key else None
                if record is not None and not record.augmented:
                    if record.value is not None:
                        stack.append(record.value)
                    else:
                        stack.extend(origins(ctx, node))
                elif isinstance(node, ast.Attribute):
                    stack.append(node.value)  # base.output -> base
                continue
            if isinstance(node, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
                continue
            for child in ast.iter_child_nodes(node):
                if isinstance(child, ast.expr):
                    stack.append(child)
                elif isinstance(child, ast.comprehension):
                    stack.append(child.iter)
        return found, hubs


# ---------------------------------------------------------------------------------- ordering
def _chain(ctx: ModuleContext, node: ast.AST, depth: int = 0) -> list[tuple[ast.AST, ast.AST]]:
    """(scope, representative node) pairs where `node` executes: its own function, then the
    call sites of that function, recursively (module level ends the chain)."""
    func = ctx.enclosing_function(node)
    out = [(func or ctx.tree, node)]
    if func is None or depth > 4:
        return out
    for site in ctx.call_sites(func)[:8]:
        out.extend(_chain(ctx, site, depth + 1))
    return out


def may_run_before(ctx: ModuleContext, a: ast.AST, b: ast.AST) -> bool:
    """Can `a` execute before `b`? Exact within one function; across functions through their
    call sites (a reader's approximation: source order at the nearest common level)."""
    fa, fb = ctx.enclosing_function(a), ctx.enclosing_function(b)
    if fa is fb:
        return ctx.order.get(a, 0) < ctx.order.get(b, 0)
    chain_a, chain_b = _chain(ctx, a), _chain(ctx, b)
    for scope_a, rep_a in chain_a:
        for scope_b, rep_b in chain_b:
            if scope_a is scope_b and rep_a is not rep_b and ctx.order.get(rep_a, 0) < ctx.order.get(rep_b, 0):
                return True
    # nothing in common (library functions never called here): fall back to source order
    if not any(sa is sb for sa, _ in chain_a for sb, _ in chain_b):
        return ctx.order.get(a, 0) < ctx.order.get(b, 0)
    return False


def freeze_target_node(node: ast.AST) -> ast.AST | None:
    """The expression a freeze statement (`x.trainable = ...`, `x.requires_grad_(...)`)
    freezes, read from the statement (a FreezeEvent's node)."""
    if isinstance(node, ast.Assign):
        return node.targets[0].value if isinstance(node.targets[0], ast.Attribute) else None
    if isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute):
        return node.func.value
    return None


def key_parts(key: str) -> list[str]:
    """`model.layers[0].fc` -> ['model', 'layers', '[0]', 'fc']."""
    parts: list[str] = []
    buf = ""
    i = 0
    while i < len(key):
        ch = key[i]
        if ch == ".":
            if buf:
                parts.append(buf)
            buf = ""
        elif ch == "[":
            if buf:
                parts.append(buf)
            end = key.find("]", i)
            end = len(key) - 1 if end < 0 else end
            parts.append(key[i : end + 1])
            buf = ""
            i = end
        else:
            buf += ch
        i += 1
    if buf:
        parts.append(buf)
    return parts


def fmt(value: float) -> str:
    """0.001 -> '0.001', 1e-05 -> '1e-05', 0.0030000000000000005 -> '0.003'."""
    return f"{float(value):.6g}"
