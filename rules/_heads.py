"""Shared analysis for the `head` family (HED001-HED006): which layer produces a model's
outputs, with which activation and how many units; which loss consumes them; and how many
classes the file says the task has.

Everything here follows data flow the way a reader would:

* Keras functional models: `Model(inputs, outputs)` -> the expression `outputs` was assigned
  from -> `Dense(10)(x)`, through `Activation("softmax")` / `Softmax()` / `tf.nn.softmax`.
* Keras Sequential: the last layer of the list, then every `.add(...)` on that same object.
* Subclassed models (Keras `call`, torch `forward`): the layer behind the returned value.
* torch: `model.fc = nn.Linear(...)`, `model.classifier[6] = ...`, `nn.Sequential(...)` heads,
  builder arguments (`num_classes=`), and the modules a `forward` ends with.
* Losses: `model.compile(loss=...)` (strings, classes, instances, functions, variables) and
  torch criteria called on model outputs, following `outputs = model(x)` and parameters of
  training functions split out of the main script.

The module is private to the family (a leading underscore keeps the registry from scanning it).
"""

from __future__ import annotations

import ast
import re
import weakref
from auditor.analysis.records import record as dataclass
from auditor.analysis.records import replace
from typing import Any, Iterator

from auditor.analysis.context import MODEL_PASSTHROUGH_METHODS, UNKNOWN, ModelInfo, ModuleContext, kwarg
from auditor.analysis.names import last
from auditor.analysis.context import param_default as _param_default
from auditor.analysis.context import bind_parameters

from ._shared import is_parameter

_CACHE: "weakref.WeakKeyDictionary[ModuleContext, dict[str, Any]]" = weakref.WeakKeyDictionary()


def _cache(ctx: ModuleContext) -> dict[str, Any]:
    try:
        return _CACHE.setdefault(ctx, {})
    except TypeError:  # pragma: no cover - contexts are weak-referenceable; be safe anyway
        return {}


# ============================================================================ resolution


def unwrap(node: ast.AST | None) -> ast.AST | None:
    """Strip `.to(device)`, `.cuda()`, `.eval()` chains around a model expression."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODEL_PASSTHROUGH_METHODS:
        node = node.func.value
    return node


_FUNC_NODES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)


def _params(func: ast.AST) -> set[str]:
    args = func.args  # type: ignore[attr-defined]
    names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    if args.vararg:
        names.add(args.vararg.arg)
    if args.kwarg:
        names.add(args.kwarg.arg)
    return names


def _within(ctx: ModuleContext, node: ast.AST, outer: ast.AST) -> bool:
    return node is outer or any(a is outer for a in ctx.ancestors(node))


def param_binding(ctx: ModuleContext, node: ast.Name) -> tuple[ast.AST, str] | None:
    """Is this use of a name a parameter of an enclosing function (not re-bound locally before
    the use)? Returns (function, name), else None. The context's binding in force says so for
    functions; lambda parameters, which the context does not record, are found here."""
    record = ctx.assignment_at(node.id, node)
    if is_parameter(record):
        return record.stmt, node.id
    for anc in ctx.ancestors(node):
        if isinstance(anc, _FUNC_NODES) and node.id in _params(anc):
            if isinstance(anc, ast.Lambda) and (record is None or not _within(ctx, record.stmt, anc)):
                return anc, node.id
            return None
    return None



def _init_call_sites(ctx: ModuleContext, func: ast.AST) -> list[tuple[ast.Call, dict[str, ast.expr]]]:
    """`Trainer(model, ...)` for a parameter of `Trainer.__init__`."""
    klass = ctx.enclosing_class(func)
    if klass is None:
        return []
    args = func.args  # type: ignore[attr-defined]
    params = [a.arg for a in args.posonlyargs + args.args][1:]
    return [(call, _bind(params, call)) for call in _call_index(ctx).get(klass.name, []) if isinstance(call.func, ast.Name)]




def conditional(ctx: ModuleContext, key: str, record: Any, use: ast.AST) -> bool:
    """Is the assignment in force one of several that depend on a branch?

    `if n == 2: act = "sigmoid" else: act = "softmax"` -> at a later use of `act`,
    `assignment_at` returns the textually last one; a reader knows it depends on `n`."""
    stmt = record.stmt
    branch = None
    for anc in ctx.ancestors(stmt):
        if anc is record.scope:
            break
        if isinstance(anc, (ast.If, ast.Try)) and not _within(ctx, use, anc):
            branch = anc
    if branch is None:
        return False
    others = [r for r in ctx.assignments.get(key, []) if r is not record and r.scope is record.scope and r.index < ctx.order.get(use, 1 << 60)]
    return bool(others)


def resolve_deep(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> ast.AST | None:
    """Like `ctx.resolve` (names to the expression they were assigned from), plus parameters:
    a parameter whose every call site passes (something that resolves to) the same expression
    resolves to that expression, one without call sites to its default. Strips `.to(device)`."""
    steps = 0
    while node is not None and steps < 30:
        steps += 1
        node = unwrap(node)
        if isinstance(node, ast.Name):
            binding = param_binding(ctx, node)
            if binding:
                if depth > 6:
                    return node
                resolved = _resolve_param(ctx, binding[0], binding[1], depth)
                if resolved is None:
                    return node
                node = resolved
                continue
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = ctx.key(node)
            record = ctx.assignment_at(key, node) if key else None
            if record is None or record.value is None or record.augmented or conditional(ctx, key, record, node):
                return node
            node = record.value
            continue
        return node
    return node


def call_sites(ctx: ModuleContext, func: ast.AST) -> list[tuple[ast.Call, dict[str, ast.expr]]]:
    """(call, bound arguments) for every call of a local function: `f(...)` for a function,
    `self.f(...)` for a method, `Cls(...)` for `Cls.__init__`, and `Cls(...)(x)` / `layer(x)`
    (an instance) for a Keras `call` or a torch `forward`. Indexed once per module."""
    name = getattr(func, "name", "")
    klass = ctx.parent(func)
    if not isinstance(klass, ast.ClassDef):
        return [(call, ctx.bind_arguments(call, func)) for call in _call_index(ctx).get(name, []) if isinstance(call.func, ast.Name)]
    if name == "__init__":
        return _init_call_sites(ctx, func)
    sites = [
        (call, ctx.bind_arguments(call, func))
        for call in _call_index(ctx).get(name, [])
        if isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id in ("self", "cls")
    ]
    if name in ("call", "forward", "__call__"):
        args = func.args  # type: ignore[attr-defined]
        params = [a.arg for a in args.posonlyargs + args.args][1:]
        for call in _instance_calls(ctx).get(klass.name, []):
            sites.append((call, _bind(params, call)))
    return sites


def _call_index(ctx: ModuleContext) -> dict[str, list[ast.Call]]:
    """Calls by the called name: `f(...)` under "f", `self.f(...)` / `x.f(...)` under "f"."""
    cache = _cache(ctx)
    index = cache.get("call_index")
    if index is None:
        index = {}
        for call in ctx.calls:
            f = call.func
            if isinstance(f, ast.Name):
                index.setdefault(f.id, []).append(call)
            elif isinstance(f, ast.Attribute):
                index.setdefault(f.attr, []).append(call)
        cache["call_index"] = index
    return index


_bind = bind_parameters


def _instance_calls(ctx: ModuleContext) -> dict[str, list[ast.Call]]:
    """Calls of instances of local classes: `Cls(...)(x)`, `layer(x)` with `layer = Cls(...)`,
    `self.block(x)` with `self.block = Cls(...)`."""
    cache = _cache(ctx)
    index = cache.get("instance_calls")
    if index is not None:
        return index
    index = {}
    cache["instance_calls"] = index
    if not ctx.classes:
        return index
    for call in ctx.calls:
        f = call.func
        target = None
        if isinstance(f, ast.Call):
            target = f
        elif isinstance(f, (ast.Name, ast.Attribute)) and ctx.call_name(call) is None:
            key = ctx.key(f)
            if key and key in ctx.assignments:
                target = unwrap(ctx.resolve(f))
        if isinstance(target, ast.Call) and isinstance(target.func, ast.Name) and target.func.id in ctx.classes:
            index.setdefault(target.func.id, []).append(call)
    return index


def _resolve_param(ctx: ModuleContext, func: ast.AST, name: str, depth: int) -> ast.AST | None:
    if isinstance(func, ast.Lambda):
        return None
    sites = call_sites(ctx, func)
    candidates = []
    for call, bound in sites:
        if any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args):
            return None
        if name in bound:
            candidates.append(resolve_deep(ctx, bound[name], depth + 1))
        else:
            default = _param_default(func, name)
            if default is None:
                return None
            candidates.append(resolve_deep(ctx, default, depth + 1))
    if not candidates:
        default = _param_default(func, name)
        return resolve_deep(ctx, default, depth + 1) if default is not None else None
    first = candidates[0]
    if first is not None and all(c is first for c in candidates):
        return first
    return None


#: calls that wrap a model and behave like it
MODEL_WRAPPERS = {
    "torch.nn.DataParallel",
    "torch.nn.parallel.DataParallel",
    "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.parallel.distributed.DistributedDataParallel",
    "torch.compile",
}


def construction(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> ast.AST | None:
    """The constructor call a model expression comes from: `resolve_deep`, then through calls
    of local builder functions (`model = build_model().to(device)` -> the `resnet50(...)`
    call that `build_model` returns, when all its returns agree)."""
    node = unwrap(resolve_deep(ctx, node))
    while isinstance(node, ast.Call) and ctx.call_name(node) in MODEL_WRAPPERS and node.args and depth < 6:
        depth += 1
        node = unwrap(resolve_deep(ctx, node.args[0]))  # nn.DataParallel(model), torch.compile(model)
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Name) and node.func.id in ctx.functions and depth < 6:
        defs = ctx.functions[node.func.id]
        if len(defs) != 1:
            return node
        returns = [r for r in _returns(defs[0]) if r.value is not None]
        targets = [unwrap(resolve_deep(ctx, r.value)) for r in returns]
        if not targets or any(t is not targets[0] for t in targets):
            return node
        depth += 1
        node = targets[0]
    return node


def value_deep(ctx: ModuleContext, node: ast.AST | None) -> Any:
    """`ctx.value`, but a parameter is evaluated through its call sites (see `param_binding`)."""
    if isinstance(node, (ast.Name, ast.Attribute)):
        target = resolve_deep(ctx, node)
        if target is node or isinstance(target, ast.Name) and param_binding(ctx, target) is not None:
            if isinstance(node, ast.Name) and param_binding(ctx, node) is not None:
                return UNKNOWN
            key = ctx.key(node)
            record = ctx.assignment_at(key, node) if key else None
            if record is not None and conditional(ctx, key, record, node):
                return UNKNOWN
            return ctx.value(node)
        return ctx.value(target)
    return ctx.value(node)


def literal_int(ctx: ModuleContext, node: ast.AST | None) -> int | None:
    """An int written as a literal, directly or as the argument of every call site of the
    parameter it is passed through. Named constants (`N_CLUSTERS = 20`) are not literals."""
    if isinstance(node, ast.Constant):
        return _int(node.value)
    binding = param_binding(ctx, node) if isinstance(node, ast.Name) else None
    if not binding or isinstance(binding[0], ast.Lambda):
        return None
    func, name = binding
    sites = call_sites(ctx, func)
    args = [bound.get(name, _param_default(func, name)) for _, bound in sites] or [_param_default(func, name)]
    values = {_int(a.value) if isinstance(a, ast.Constant) else None for a in args}
    if len(values) == 1:
        return values.pop()
    return None


def short(node: ast.AST | None, limit: int = 40) -> str:
    if node is None:
        return "?"
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - unparse of odd trees
        return "?"
    text = " ".join(text.split())
    return text if len(text) <= limit else text[: limit - 1] + "…"


def _int(value: Any) -> int | None:
    if isinstance(value, bool) or not isinstance(value, int):
        return None
    return value


# ============================================================================ class counts

#: names whose (int) value states the number of classes
COUNT_NAMES = {
    "num_classes", "n_classes", "nb_classes", "num_labels", "n_labels", "number_of_classes", "num_class", "n_class",
    "nclasses", "numclasses", "nb_class", "no_of_classes", "class_count", "classes_count", "num_categories", "n_categories",
    "num_outputs_classes", "classes",
}
#: names whose literal list/tuple of strings states the class names
LIST_NAMES = {
    "class_names", "classes", "labels", "class_labels", "label_names", "categories", "classnames", "target_names",
    "class_list", "labels_list", "class_name", "classes_names", "category_names",
}
#: parts of a name that say "this is derived from the class count" (units fine by construction)
_CLASSY = re.compile(r"class|label|categor", re.I)


@dataclass(frozen=True)
class StatedCount:
    value: int
    desc: str  # "NUM_CLASSES = 10", "class_names (10 names)"
    from_list: bool = False  # the length of a list of names, not a count constant


def stated_class_count(ctx: ModuleContext) -> StatedCount | None:
    """The one class count the file states; None when it states none, several different ones,
    or one we cannot evaluate."""
    cache = _cache(ctx)
    if "count" in cache:
        return cache["count"]
    result = _stated_class_count(ctx)
    cache["count"] = result
    return result


def _stated_class_count(ctx: ModuleContext) -> StatedCount | None:
    found: dict[int, StatedCount] = {}
    for key, records in ctx.assignments.items():
        if "." in key or "[" in key:
            continue
        low = key.lower()
        is_count = low in COUNT_NAMES
        is_list = low in LIST_NAMES
        if not (is_count or is_list):
            continue
        for record in records:
            if not isinstance(record.stmt, (ast.Assign, ast.AnnAssign)) or record.value is None or record.augmented:
                continue
            value = ctx.value(record.value)
            number = _int(value)
            if number is not None and is_count:
                if number >= 2:
                    found.setdefault(number, StatedCount(number, f"{key} = {number}"))
                continue
            if isinstance(value, tuple) and is_list:
                if len(value) >= 2 and all(isinstance(v, str) for v in value):
                    found.setdefault(len(value), StatedCount(len(value), f"{key} with {len(value)} names", from_list=True))
                continue
            if value is UNKNOWN and is_count and not is_list:
                return None  # a count computed at run time: the file's class count is not static
    if len(found) != 1:
        return None
    return next(iter(found.values()))


def expressed_through_count(ctx: ModuleContext, node: ast.AST | None) -> bool:
    """Units written via the class count (`num_classes`, `len(class_names)`, `args.n_classes`)."""
    if node is None:
        return False
    for sub in ast.walk(node):
        if isinstance(sub, ast.Name) and _CLASSY.search(sub.id):
            return True
        if isinstance(sub, ast.Attribute) and _CLASSY.search(sub.attr):
            return True
        if isinstance(sub, ast.Constant) and isinstance(sub.value, str) and _CLASSY.search(sub.value):
            return True  # cfg["num_classes"]
    return False


# ============================================================================ heads

KERAS_DENSE = "keras.layers.Dense"
KERAS_ACTIVATION_LAYERS = {"keras.layers.Activation", "keras.layers.Softmax"}
KERAS_SEQUENTIAL = "keras.Sequential"
KERAS_MODEL = "keras.Model"

_SOFTMAX_NAMES = {
    "keras.activations.softmax", "torch.softmax", "tensorflow.math.softmax", "keras.layers.activations.softmax",
}
_SIGMOID_NAMES = {
    "keras.activations.sigmoid", "tensorflow.nn.sigmoid", "tensorflow.sigmoid", "tensorflow.math.sigmoid",
    "keras.ops.sigmoid", "keras.backend.sigmoid", "torch.sigmoid", "torch.nn.functional.sigmoid", "torch.special.expit",
    "torch.Tensor.sigmoid",
}
_LOG_SOFTMAX_NAMES = {
    "torch.log_softmax", "torch.nn.functional.log_softmax", "torch.special.log_softmax", "torch.Tensor.log_softmax",
    "tensorflow.nn.log_softmax", "keras.activations.log_softmax", "keras.ops.log_softmax",
}
_LINEAR_NAMES = {"keras.activations.linear"}


def function_activation(name: str | None) -> str | None:
    """'softmax' / 'sigmoid' / 'log_softmax' for a canonical function name, else None."""
    if not name:
        return None
    if name in _SOFTMAX_NAMES:
        return "softmax"
    if name in _SIGMOID_NAMES:
        return "sigmoid"
    if name in _LOG_SOFTMAX_NAMES:
        return "log_softmax"
    return None


def keras_activation(ctx: ModuleContext, node: ast.AST | None) -> str | None:
    """Normalised Keras activation: 'linear', 'softmax', 'sigmoid', another name, or None (unknown)."""
    if node is None:
        return "linear"
    if isinstance(node, ast.Constant) and node.value is None:
        return "linear"
    qual = ctx.qualname(node) if isinstance(node, (ast.Name, ast.Attribute)) else None
    if qual:
        act = function_activation(qual)
        if act:
            return act
        if qual in _LINEAR_NAMES:
            return "linear"
        if qual.startswith(("keras.activations.", "tensorflow.nn.", "tensorflow.math.", "tensorflow.")):
            return last(qual).lower()
    value = value_deep(ctx, node)
    if value is None:
        return "linear"
    if isinstance(value, str):
        return value.strip().lower() or "linear"
    return None


def last_axis(ctx: ModuleContext, node: ast.AST | None) -> bool:
    """An `axis=`/`dim=` argument that is absent (Keras default -1) or -1."""
    if node is None:
        return True
    return value_deep(ctx, node) in (-1, None)


def keras_layer_activation(ctx: ModuleContext, layer: ast.Call) -> str | None:
    """Activation applied by an `Activation(...)` or `Softmax(...)` layer."""
    if ctx.call_name(layer) == "keras.layers.Softmax":
        return "softmax" if last_axis(ctx, kwarg(layer, "axis", 0)) else None
    return keras_activation(ctx, kwarg(layer, "activation", 0))


@dataclass
class Head:
    """The layer that produces a model's outputs."""

    framework: str  # "keras" / "torch"
    layer: ast.Call  # Dense / Linear / Conv2d / builder call
    units_node: ast.expr | None
    activation: str | None  # "linear", "softmax", "sigmoid", "log_softmax", other, None = unknown
    activation_node: ast.AST | None = None  # where a separate activation was applied
    kind: str = "dense"  # "dense", "linear", "conv", "app", "builder"
    model: ast.AST | None = None  # the construction the head belongs to

    def units(self, ctx: ModuleContext) -> int | None:
        return _int(value_deep(ctx, self.units_node)) if self.units_node is not None else None

    def label(self, ctx: ModuleContext) -> str:
        units = short(self.units_node, 24)
        if self.kind == "dense":
            return f"Dense({units})"
        if self.kind == "linear":
            in_node = kwarg(self.layer, "in_features", 0)
            return f"nn.Linear({short(in_node, 28)}, {units})"
        if self.kind == "conv":
            in_node = kwarg(self.layer, "in_channels", 0)
            return f"nn.Conv2d({short(in_node, 28)}, {units}, ...)"
        name = self.layer.func
        return f"{short(name, 40)}(..., {'classes' if self.framework == 'keras' else 'num_classes'}={units})"


def _layer_call(ctx: ModuleContext, func: ast.AST, depth: int) -> ast.AST | None:
    """The construction behind a called layer: `Dense(10)` in `Dense(10)(x)`, or what
    `self.fc` / `dense` was assigned from."""
    if isinstance(func, ast.Call):
        return func
    return construction(ctx, func, depth + 1)


def keras_tensor_head(ctx: ModuleContext, expr: ast.AST | None, depth: int = 0) -> Head | None:
    """The Dense layer that produces a (Keras) tensor expression."""
    if expr is None or depth > 12:
        return None
    node = resolve_deep(ctx, expr, depth)
    if not isinstance(node, ast.Call):
        return None
    # `Dense(10)(x)`: ctx.call_name would name the layer class, so look at the callee itself
    name = None if isinstance(node.func, ast.Call) else ctx.call_name(node)
    act = function_activation(name)
    if act and node.args:
        if act != "sigmoid" and not last_axis(ctx, kwarg(node, "axis", 1)):
            act = None  # a softmax over another axis (attention pooling): not the head's activation
        inner = keras_tensor_head(ctx, node.args[0], depth + 1)
        return _with_activation(inner, act, node)
    if name is not None:
        return None  # some other library function: not a layer call
    layer = _layer_call(ctx, node.func, depth)
    if not isinstance(layer, ast.Call):
        return None
    lname = ctx.call_name(layer)
    dense = dense_head(ctx, layer)
    if dense is not None:
        return dense
    if lname in KERAS_ACTIVATION_LAYERS and node.args:
        act = keras_layer_activation(ctx, layer)
        inner = keras_tensor_head(ctx, node.args[0], depth + 1)
        return _with_activation(inner, act, layer)
    if lname in (KERAS_SEQUENTIAL, KERAS_MODEL) or (isinstance(layer.func, ast.Name) and (layer.func.id in ctx.classes or layer.func.id in ctx.functions)):
        return keras_construction_head(ctx, layer, depth + 1)
    return None


def dense_head(ctx: ModuleContext, layer: ast.AST | None, depth: int = 0) -> Head | None:
    """A Dense layer construction as a head: `Dense(10, activation=...)`, a
    `functools.partial(Dense, ...)` alias called with more arguments, or
    `TimeDistributed(Dense(...))`."""
    if not isinstance(layer, ast.Call) or depth > 4:
        return None
    name = ctx.call_name(layer)
    if name == KERAS_DENSE:
        return Head("keras", layer, kwarg(layer, "units", 0), keras_activation(ctx, kwarg(layer, "activation", 1)), kind="dense")
    if name == "keras.layers.TimeDistributed":
        return dense_head(ctx, resolve_deep(ctx, kwarg(layer, "layer", 0)), depth + 1)
    if name is None and isinstance(layer.func, (ast.Name, ast.Attribute)):
        alias = ctx.resolve(layer.func)
        if isinstance(alias, ast.Call) and ctx.call_name(alias) == "functools.partial" and alias.args:
            if ctx.qualname(alias.args[0]) == KERAS_DENSE and len(alias.args) == 1:
                units = kwarg(layer, "units", 0) or kwarg(alias, "units")
                act_node = kwarg(layer, "activation", 1) or kwarg(alias, "activation")
                return Head("keras", layer, units, keras_activation(ctx, act_node), kind="dense")
    return None


def _with_activation(inner: Head | None, act: str | None, node: ast.AST) -> Head | None:
    if inner is None:
        return None
    if inner.activation == "linear":
        inner.activation = act
    else:
        inner.activation = None  # an activation on top of an activation: not a case we judge
    inner.activation_node = node
    return inner


def _sequential_elements(ctx: ModuleContext, call: ast.Call) -> list[ast.AST] | None:
    """Layers of a Sequential construction: the list, then `.add(...)` calls on that object."""
    elements: list[ast.AST] = []
    first = kwarg(call, "layers", 0)
    if first is not None:
        target = ctx.resolve(first)
        if not isinstance(target, (ast.List, ast.Tuple)):
            return None
        if any(isinstance(e, ast.Starred) for e in target.elts):
            return None
        elements.extend(target.elts)
    adds = []
    for add in _adds(ctx):
        receiver = add.func.value  # type: ignore[attr-defined]
        if resolve_deep(ctx, receiver) is call and add.args:
            adds.append(add)
    adds.sort(key=lambda c: ctx.order[c])
    elements.extend(a.args[0] for a in adds)
    return elements


def _adds(ctx: ModuleContext) -> list[ast.Call]:
    cache = _cache(ctx)
    if "adds" not in cache:
        cache["adds"] = [c for c in ctx.method_calls("add") if isinstance(c.func, ast.Attribute)]
    return cache["adds"]


def sequential_head(ctx: ModuleContext, call: ast.Call, depth: int = 0) -> Head | None:
    elements = _sequential_elements(ctx, call)
    if not elements:
        return None
    layers = [resolve_deep(ctx, e, depth + 1) for e in elements]
    lastl = layers[-1]
    if not isinstance(lastl, ast.Call):
        return None
    name = ctx.call_name(lastl)
    head = dense_head(ctx, lastl)
    if head is not None:
        head.model = call
        return head
    if name in KERAS_ACTIVATION_LAYERS and len(layers) >= 2:
        act = keras_layer_activation(ctx, lastl)
        head = dense_head(ctx, layers[-2])
        if head is not None:
            head.model = call
            return _with_activation(head, act, lastl)
        return None
    if name in (KERAS_SEQUENTIAL, KERAS_MODEL) and depth < 6:
        return keras_construction_head(ctx, lastl, depth + 1)
    return None


def keras_construction_head(ctx: ModuleContext, call: ast.AST | None, depth: int = 0) -> Head | None:
    """Head of a Keras model construction: `Model(...)`, `Sequential(...)`, an application,
    a subclassed model's instantiation, or a call to a local builder function."""
    if not isinstance(call, ast.Call) or depth > 8:
        return None
    name = ctx.call_name(call)
    head: Head | None = None
    if name == KERAS_MODEL:
        outputs = kwarg(call, "outputs", 1)
        if outputs is None:
            outputs = kwarg(call, "output")
        if isinstance(outputs, (ast.List, ast.Tuple)) and len(outputs.elts) == 1:
            outputs = outputs.elts[0]  # `outputs=[y_proba]`
        head = keras_tensor_head(ctx, outputs, depth + 1)
    elif name == KERAS_SEQUENTIAL:
        head = sequential_head(ctx, call, depth + 1)
    elif name and name.startswith("keras.applications."):
        info = ctx.model_of(call)
        if info is not None and info.include_top:
            head = Head("keras", call, info.classes, "softmax", kind="app")
    elif isinstance(call.func, ast.Name) and call.func.id in ctx.classes:
        head = _subclass_head(ctx, ctx.classes[call.func.id], "call", depth + 1)
    elif isinstance(call.func, ast.Name) and call.func.id in ctx.functions:
        head = _function_head(ctx, call.func.id, depth + 1)
    if head is not None and head.model is None:
        head.model = call
    return head


def _returns(func: ast.AST) -> list[ast.Return]:
    out = []
    stack = list(ast.iter_child_nodes(func))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)):
            continue
        if isinstance(node, ast.Return):
            out.append(node)
        stack.extend(ast.iter_child_nodes(node))
    return out


def _agree(heads: list[Head | None]) -> Head | None:
    if not heads or any(h is None for h in heads):
        return None
    first = heads[0]
    if all(h.layer is first.layer and h.activation == first.activation for h in heads):  # type: ignore[union-attr]
        return first
    return None


def _function_head(ctx: ModuleContext, fname: str, depth: int) -> Head | None:
    defs = ctx.functions.get(fname) or []
    if len(defs) != 1:
        return None
    returns = [r for r in _returns(defs[0]) if r.value is not None]
    return _agree([keras_construction_head(ctx, unwrap(resolve_deep(ctx, r.value, depth)), depth + 1) for r in returns])


def _method(klass: ast.ClassDef, name: str) -> ast.FunctionDef | None:
    for stmt in klass.body:
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == name:
            return stmt  # type: ignore[return-value]
    return None


def _subclass_head(ctx: ModuleContext, klass: ast.ClassDef, method: str, depth: int) -> Head | None:
    func = _method(klass, method)
    if func is None:
        return None
    returns = [r for r in _returns(func) if r.value is not None]
    if method == "call":
        return _agree([keras_tensor_head(ctx, r.value, depth + 1) for r in returns])
    return None


def keras_model_heads(ctx: ModuleContext) -> list[Head]:
    """Heads of every Keras model built in the file (functional, Sequential, subclassed)."""
    cache = _cache(ctx)
    if "keras_heads" in cache:
        return cache["keras_heads"]
    heads: list[Head] = []
    seen: set[int] = set()
    for call in ctx.calls:
        name = ctx.call_name(call)
        if name not in (KERAS_MODEL, KERAS_SEQUENTIAL):
            continue
        head = keras_construction_head(ctx, call)
        if head is not None and id(head.layer) not in seen:
            seen.add(id(head.layer))
            heads.append(head)
    for klass in ctx.classes.values():
        if not _is_keras_model_class(ctx, klass):
            continue
        head = _subclass_head(ctx, klass, "call", 0)
        if head is not None and id(head.layer) not in seen:
            head.model = klass
            seen.add(id(head.layer))
            heads.append(head)
    cache["keras_heads"] = heads
    return heads


def _is_keras_model_class(ctx: ModuleContext, klass: ast.ClassDef) -> bool:
    for base in klass.bases:
        qual = ctx.qualname(base) or ""
        if qual in (KERAS_MODEL, "keras.models.Model"):
            return True
    return False


def keras_model_head(ctx: ModuleContext, model_expr: ast.AST | None) -> Head | None:
    """Head of the model an expression (a `compile` receiver) holds."""
    node = unwrap(resolve_deep(ctx, model_expr))
    if isinstance(node, ast.Call):
        return keras_construction_head(ctx, node)
    return None


# ============================================================================ Keras losses


@dataclass
class KerasLoss:
    kind: str  # "categorical", "sparse_categorical", "binary", "logits" (tf.nn.*_with_logits)
    from_logits: bool | None  # None: unknown
    node: ast.AST  # the loss expression
    label: str  # "binary_crossentropy", "keras.losses.BinaryCrossentropy(from_logits=True)"


_LOSS_STRINGS = {
    "categorical_crossentropy": "categorical",
    "categoricalcrossentropy": "categorical",
    "cce": "categorical",
    "sparse_categorical_crossentropy": "sparse_categorical",
    "sparsecategoricalcrossentropy": "sparse_categorical",
    "binary_crossentropy": "binary",
    "binarycrossentropy": "binary",
    "bce": "binary",
}
_LOSS_CLASSES = {
    "CategoricalCrossentropy": "categorical",
    "SparseCategoricalCrossentropy": "sparse_categorical",
    "BinaryCrossentropy": "binary",
    "CategoricalFocalCrossentropy": "categorical",
    "BinaryFocalCrossentropy": "binary",
}
_LOSS_FUNCTIONS = {
    "categorical_crossentropy": "categorical",
    "sparse_categorical_crossentropy": "sparse_categorical",
    "binary_crossentropy": "binary",
    "categorical_focal_crossentropy": "categorical",
    "binary_focal_crossentropy": "binary",
}
_TF_LOGIT_LOSSES = {
    "tensorflow.nn.softmax_cross_entropy_with_logits": "categorical",
    "tensorflow.nn.softmax_cross_entropy_with_logits_v2": "categorical",
    "tensorflow.nn.sparse_softmax_cross_entropy_with_logits": "sparse_categorical",
    "tensorflow.nn.sigmoid_cross_entropy_with_logits": "binary",
}


def _from_logits(ctx: ModuleContext, call: ast.Call, position: int | None = None) -> bool | None:
    node = kwarg(call, "from_logits", position)
    if node is None:
        if any(kw.arg is None for kw in call.keywords):
            return None
        return False
    value = value_deep(ctx, node)
    return value if isinstance(value, bool) else None


def keras_loss(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> KerasLoss | None:
    """What a `loss=` argument is."""
    if node is None or depth > 6:
        return None
    target = resolve_deep(ctx, node)
    if isinstance(target, ast.Constant) and isinstance(target.value, str):
        kind = _LOSS_STRINGS.get(target.value.strip().lower())
        return KerasLoss(kind, False, node, repr(target.value)) if kind else None
    if isinstance(target, ast.Call):
        name = ctx.call_name(target) or ""
        if name.startswith("keras.losses."):
            cls = last(name)
            if cls in _LOSS_CLASSES:
                return KerasLoss(_LOSS_CLASSES[cls], _from_logits(ctx, target, 0), node, short(target, 70))
        return None
    if isinstance(target, (ast.Name, ast.Attribute)):
        qual = ctx.qualname(target) or ""
        if qual.startswith(("keras.losses.", "keras.metrics.")) and last(qual) in _LOSS_FUNCTIONS:
            return KerasLoss(_LOSS_FUNCTIONS[last(qual)], False, node, qual)
        if qual in _TF_LOGIT_LOSSES:
            return KerasLoss(_TF_LOGIT_LOSSES[qual], True, node, qual)
        return None
    if isinstance(target, ast.Lambda) and isinstance(target.body, ast.Call):
        body = target.body
        qual = ctx.call_name(body) or ""
        if qual.startswith(("keras.losses.", "keras.metrics.")) and last(qual) in _LOSS_FUNCTIONS:
            return KerasLoss(_LOSS_FUNCTIONS[last(qual)], _from_logits(ctx, body, 3), node, short(body, 70))
        if qual in _TF_LOGIT_LOSSES:
            return KerasLoss(_TF_LOGIT_LOSSES[qual], True, node, short(body, 70))
    return None


@dataclass
class KerasTraining:
    """A loss applied to a Keras model's outputs, both resolved: `model.compile(loss=...)`,
    or a loss object / function called on `model(x)` in a custom training loop."""

    compile_call: ast.Call  # the compile call, or the loss call of a custom loop
    head: Head
    loss: KerasLoss


def keras_trainings(ctx: ModuleContext) -> list[KerasTraining]:
    cache = _cache(ctx)
    if "keras_trainings" in cache:
        return cache["keras_trainings"]
    out: list[KerasTraining] = []
    for call in ctx.method_calls("compile"):
        if has_splat(call):
            continue
        loss_node = kwarg(call, "loss", 1)
        if loss_node is None:
            continue
        loss = keras_loss(ctx, loss_node)
        if loss is None:
            continue
        head = keras_model_head(ctx, call.func.value)  # type: ignore[attr-defined]
        if head is None:
            continue
        out.append(KerasTraining(call, head, loss))
    out.extend(_keras_loop_losses(ctx))
    cache["keras_trainings"] = out
    return out


def _keras_loop_losses(ctx: ModuleContext) -> list[KerasTraining]:
    """`loss_fn(y, model(x, training=True))` with `loss_fn = keras.losses.X(...)`, and
    `keras.losses.x_crossentropy(y, logits, from_logits=True)`."""
    out = []
    if "keras" not in ctx.frameworks and "tensorflow" not in ctx.frameworks:
        return out
    if not ctx.mentions("rossentropy", "with_logits"):
        return out
    # loss objects built in this file; without any, only direct function calls can be losses
    has_loss_objects = any(
        (ctx.call_name(c) or "").startswith("keras.losses.") and last(ctx.call_name(c)) in _LOSS_CLASSES for c in ctx.calls if not isinstance(c.func, ast.Call)
    )
    for call in ctx.calls:
        if len(call.args) < 2 and kwarg(call, "y_pred") is None and kwarg(call, "logits") is None:
            continue
        loss: KerasLoss | None = None
        pred: ast.AST | None = None
        if isinstance(call.func, ast.Call):
            ctor = call.func
        elif has_loss_objects and ctx.call_name(call) is None and isinstance(call.func, (ast.Name, ast.Attribute)):
            ctor = resolve_deep(ctx, call.func)
        else:
            ctor = None
            name = ctx.call_name(call) or ""
            if name.startswith(("keras.losses.", "keras.metrics.")) and last(name) in _LOSS_FUNCTIONS:
                loss = KerasLoss(_LOSS_FUNCTIONS[last(name)], _from_logits(ctx, call, 2), call, short(call, 70))
                pred = kwarg(call, "y_pred", 1)
            elif name in _TF_LOGIT_LOSSES:
                loss = KerasLoss(_TF_LOGIT_LOSSES[name], True, call, name)
                pred = kwarg(call, "logits")
        if isinstance(ctor, ast.Call):
            loss = keras_loss(ctx, ctor)
            pred = kwarg(call, "y_pred", 1)
        if loss is None or pred is None:
            continue
        target = resolve_deep(ctx, pred)
        if not isinstance(target, ast.Call) or isinstance(target.func, ast.Call) or ctx.call_name(target) is not None:
            continue
        head = keras_model_head(ctx, target.func)
        if head is None:
            continue
        out.append(KerasTraining(call, head, loss))
    return out


def has_splat(call: ast.Call) -> bool:
    return any(kw.arg is None for kw in call.keywords) or any(isinstance(a, ast.Starred) for a in call.args)


# ============================================================================ torch

TORCH_LINEAR = "torch.nn.Linear"
TORCH_SEQUENTIAL = "torch.nn.Sequential"
TORCH_ACT_MODULES = {
    "torch.nn.Softmax": "softmax",
    "torch.nn.Sigmoid": "sigmoid",
    "torch.nn.LogSoftmax": "log_softmax",
    "torch.nn.Softmax2d": "softmax",
}
#: tensor methods that keep the activation of what they are called on
_DTYPE_METHODS = {"float", "double", "half", "to", "cpu", "cuda", "contiguous", "type"}
_SHAPE_METHODS = {"view", "reshape", "squeeze", "unsqueeze", "flatten", "float", "double", "half", "to", "cpu", "cuda", "contiguous", "view_as", "reshape_as", "type"}
#: attribute names of classifier heads on torchvision / timm / user wrappers
HEAD_ATTRS = {"fc", "classifier", "head", "heads", "last_linear", "classif", "_fc", "fc_out", "out_fc", "logits"}
#: torchvision families: index of the last layer of `classifier`
_LAST_CLASSIFIER_INDEX = {
    "vgg": 6,
    "alexnet": 6,
    "mobilenet_v3": 3,
    "mobilenet_v2": 1,
    "efficientnet": 1,
    "mnasnet": 1,
    "convnext": 2,
    "squeezenet": 1,
    "maxvit": 5,
}


@dataclass
class TorchOut:
    """What a torch expression evaluates to at its end."""

    activation: str | None  # "linear", "softmax", "sigmoid", "log_softmax", None = unknown
    layer: ast.Call | None = None  # the Linear producing it, where known
    activation_node: ast.AST | None = None
    dim: Any = UNKNOWN  # softmax dim where known
    reshaped: bool = False  # a view/squeeze/... after the layer: its unit axis may have moved


def _torch_module_out(ctx: ModuleContext, module: ast.AST | None, depth: int) -> TorchOut | None:
    """The output of calling a module construction."""
    if not isinstance(module, ast.Call) or depth > 10:
        return None
    name = ctx.call_name(module)
    if name in MODEL_WRAPPERS and module.args:
        return _torch_module_out(ctx, construction(ctx, module.args[0]), depth + 1)
    if name == TORCH_LINEAR:
        return TorchOut("linear", module)
    if name in TORCH_ACT_MODULES:
        return TorchOut(TORCH_ACT_MODULES[name], None, module, _dim(ctx, module, 0))
    if name == TORCH_SEQUENTIAL:
        return _sequential_out(ctx, module, depth)
    if isinstance(module.func, ast.Name) and module.func.id in ctx.classes:
        return forward_out(ctx, ctx.classes[module.func.id], depth + 1)
    if ctx.model_of(module) is not None:
        return _replaced_head_out(ctx, module, depth)
    return None


def _dim(ctx: ModuleContext, call: ast.Call, position: int | None) -> Any:
    node = kwarg(call, "dim", position)
    if node is None:
        return None
    return value_deep(ctx, node)


def sequential_modules(ctx: ModuleContext, seq: ast.Call) -> list[ast.AST | None] | None:
    """The modules of `nn.Sequential(a, b, c)` or `nn.Sequential(OrderedDict([("fc", a), ...]))`."""
    if any(isinstance(a, ast.Starred) for a in seq.args) or not seq.args:
        return None
    args = list(seq.args)
    if len(args) == 1:
        only = resolve_deep(ctx, args[0])
        if isinstance(only, ast.Call) and (ctx.call_name(only) or "").endswith("OrderedDict") and only.args:
            pairs = resolve_deep(ctx, only.args[0])
            if not isinstance(pairs, (ast.List, ast.Tuple)):
                return None
            args = []
            for pair in pairs.elts:
                if not (isinstance(pair, ast.Tuple) and len(pair.elts) == 2):
                    return None
                args.append(pair.elts[1])
        elif isinstance(only, ast.Dict):
            args = list(only.values)
    return [resolve_deep(ctx, a) for a in args]


def _sequential_out(ctx: ModuleContext, seq: ast.Call, depth: int) -> TorchOut | None:
    mods = sequential_modules(ctx, seq)
    if not mods:
        return None
    return _chain_out(ctx, mods, depth)


def _chain_out(ctx: ModuleContext, mods: list[ast.AST | None], depth: int) -> TorchOut | None:
    if not mods:
        return None
    lastm = mods[-1]
    out = _torch_module_out(ctx, lastm, depth + 1)
    if out is None:
        return None
    if out.layer is None and out.activation in ("softmax", "sigmoid", "log_softmax") and len(mods) >= 2:
        prev = _torch_module_out(ctx, mods[-2], depth + 1)
        if prev is not None and prev.activation == "linear":
            out.layer = prev.layer
    return out


def _replaced_head_out(ctx: ModuleContext, model_call: ast.Call, depth: int) -> TorchOut | None:
    """A torchvision/timm model whose head was replaced: what the new head ends with."""
    outs = []
    for h in head_assignments(ctx):
        if h.base_model is model_call and (h.subscript is None or _last_slot(ctx, h)):
            outs.append(h)
    if len(outs) != 1:
        return None
    return _torch_module_out(ctx, resolve_deep(ctx, outs[0].value, depth + 1), depth + 1)


def forward_out(ctx: ModuleContext, klass: ast.ClassDef, depth: int = 0) -> TorchOut | None:
    cache = _cache(ctx).setdefault("forward", {})
    if klass in cache:
        return cache[klass]
    cache[klass] = None  # recursion guard
    func = _method(klass, "forward")
    result = None
    if func is not None and depth < 8:
        returns = [r for r in _returns(func) if r.value is not None]
        outs = [torch_tensor_out(ctx, r.value, depth + 1) for r in returns]
        if outs and all(o is not None for o in outs):
            first = outs[0]
            if all(o.activation == first.activation and o.layer is first.layer for o in outs):  # type: ignore[union-attr]
                result = first
    cache[klass] = result
    return result


def torch_tensor_out(ctx: ModuleContext, expr: ast.AST | None, depth: int = 0) -> TorchOut | None:
    """How a tensor expression ends: `F.softmax(...)`, `model(x)` of a model ending in
    `nn.Softmax`, `self.fc(x)` (linear), ..."""
    if expr is None or depth > 14:
        return None
    node = resolve_deep(ctx, expr, depth)
    if not isinstance(node, ast.Call):
        return None
    name = None if isinstance(node.func, ast.Call) else ctx.call_name(node)
    act = function_activation(name)
    if act:
        inner = torch_tensor_out(ctx, node.args[0], depth + 1) if node.args else None
        return TorchOut(act, _direct_layer(inner), node, _dim(ctx, node, 1))
    if name is not None:
        return None
    func = node.func
    if isinstance(func, ast.Attribute) and func.attr in ("softmax", "sigmoid", "log_softmax"):
        receiver = resolve_deep(ctx, func.value, depth + 1)
        # `x.softmax(dim=1)` on a tensor, not `self.softmax(x)` on a module attribute
        if not (isinstance(receiver, ast.Call) and _torch_module_out(ctx, receiver, depth + 1) is not None and ctx.call_name(receiver)):
            if not _is_module_attr(ctx, func):
                inner = torch_tensor_out(ctx, func.value, depth + 1)
                return TorchOut(func.attr, _direct_layer(inner), node, _dim(ctx, node, 0))
    if isinstance(func, ast.Name) and func.id == "self":
        klass = ctx.enclosing_class(node)  # `logits = self(x)` in a LightningModule step
        return forward_out(ctx, klass, depth + 1) if klass is not None else None
    if isinstance(func, ast.Attribute) and func.attr in _SHAPE_METHODS:
        inner = torch_tensor_out(ctx, func.value, depth + 1)
        if inner is None or func.attr in _DTYPE_METHODS:
            return inner
        return replace(inner, reshaped=True)
    module = _layer_call(ctx, func, depth)
    out = _torch_module_out(ctx, module, depth + 1) if isinstance(module, ast.Call) else None
    if out is None:
        return None
    if out.activation in ("softmax", "sigmoid", "log_softmax") and out.layer is None and out.activation_node is module and node.args:
        inner = torch_tensor_out(ctx, node.args[0], depth + 1)
        return TorchOut(out.activation, _direct_layer(inner), module, out.dim)
    return out


def _direct_layer(inner: TorchOut | None) -> ast.Call | None:
    """The Linear right under an activation (none when a reshape came in between)."""
    if inner is None or inner.activation != "linear" or inner.reshaped:
        return None
    return inner.layer


def _is_module_attr(ctx: ModuleContext, func: ast.Attribute) -> bool:
    """`self.softmax(x)`: an attribute holding a module, not the tensor method."""
    if isinstance(func.value, ast.Name) and func.value.id == "self":
        return True
    return False


# ----------------------------------------------------------------------------- head assignments


@dataclass
class HeadAssignment:
    """`model.fc = nn.Linear(...)`, `model.classifier[6] = ...`, `model.heads.head = ...`."""

    stmt: ast.Assign
    target: ast.expr
    key: str
    attr: str  # "fc", "classifier", "head", ...
    subscript: Any  # index for `classifier[6]`, None otherwise
    base: ast.expr  # the model expression the head hangs off
    base_model: ast.AST | None  # its construction (resolved), where known
    value: ast.expr


def head_assignments(ctx: ModuleContext) -> list[HeadAssignment]:
    cache = _cache(ctx)
    if "head_assignments" in cache:
        return cache["head_assignments"]
    out = []
    for node in ctx.nodes_of(ast.Assign):
        if len(node.targets) != 1:
            continue
        target = node.targets[0]
        sub = None
        core = target
        if isinstance(core, ast.Subscript):
            sub = ctx.value(core.slice)
            if _int(sub) is None:
                continue
            core = core.value
        if not isinstance(core, ast.Attribute) or core.attr not in HEAD_ATTRS:
            continue
        base = core.value
        # `model.heads.head`, `model.head.fc`: the model is one level further out
        if isinstance(base, ast.Attribute) and base.attr in HEAD_ATTRS:
            base = base.value
        key = ctx.key(target)
        if not key:
            continue
        if isinstance(base, ast.Name) and base.id == "self":
            continue  # a module's own layer: judged through its forward()
        base_model = construction(ctx, base)
        out.append(HeadAssignment(node, target, key, core.attr, sub, base, base_model, node.value))
    cache["head_assignments"] = out
    return out


def head_assignment_layer(ctx: ModuleContext, h: HeadAssignment) -> Head | None:
    """The final Linear (or Conv2d) of an assigned head, if it is the model's last layer."""
    value = resolve_deep(ctx, h.value)
    if not isinstance(value, ast.Call):
        return None
    if h.subscript is not None and not _last_slot(ctx, h):
        return None
    return _module_final_layer(ctx, value, h)


def _module_final_layer(ctx: ModuleContext, module: ast.Call, h: HeadAssignment | None) -> Head | None:
    name = ctx.call_name(module)
    if name == TORCH_LINEAR:
        return Head("torch", module, kwarg(module, "out_features", 1), "linear", kind="linear", model=h.base_model if h else None)
    if name == "torch.nn.Conv2d":
        return Head("torch", module, kwarg(module, "out_channels", 1), "linear", kind="conv", model=h.base_model if h else None)
    mods = sequential_modules(ctx, module) if name == TORCH_SEQUENTIAL else None
    if mods:
        # the last Linear/Conv2d, followed only by activations, dropout, flatten and pooling
        for m in reversed(mods):
            if not isinstance(m, ast.Call):
                return None
            mname = ctx.call_name(m) or ""
            if mname in (TORCH_LINEAR, "torch.nn.Conv2d"):
                return _module_final_layer(ctx, m, h)
            if mname in TORCH_ACT_MODULES or mname in (
                "torch.nn.Dropout", "torch.nn.Flatten", "torch.nn.ReLU", "torch.nn.AdaptiveAvgPool2d", "torch.nn.Identity",
            ):
                continue
            return None
    return None


def _last_slot(ctx: ModuleContext, h: HeadAssignment) -> bool:
    """`classifier[6] = ...` replaces the final layer (VGG/AlexNet: 6; MobileNetV3: 3; ...)."""
    if h.subscript == -1:
        return True
    # `model.classifier[6] = nn.Linear(model.classifier[6].in_features, N)`
    for sub in ast.walk(h.value):
        if isinstance(sub, ast.Attribute) and sub.attr in ("in_features", "in_channels") and ctx.key(sub.value) == h.key:
            return True
    info = h.base_model and ctx.model_of(h.base_model)
    if isinstance(info, ModelInfo) and info.framework == "torchvision" and h.attr == "classifier":
        arch = info.arch.lower()
        for prefix, index in sorted(_LAST_CLASSIFIER_INDEX.items(), key=lambda kv: -len(kv[0])):
            if arch.startswith(prefix):
                return h.subscript == index
    return False


# ----------------------------------------------------------------------------- torch losses

TORCH_LOSS_CLASSES = {
    "torch.nn.CrossEntropyLoss": "cross_entropy",
    "torch.nn.BCEWithLogitsLoss": "bce_with_logits",
    "torch.nn.NLLLoss": "nll",
}
TORCH_LOSS_FUNCTIONS = {
    "torch.nn.functional.cross_entropy": "cross_entropy",
    "torch.nn.functional.binary_cross_entropy_with_logits": "bce_with_logits",
    "torch.nn.functional.nll_loss": "nll",
}
LOSS_LABEL = {
    "cross_entropy": "nn.CrossEntropyLoss",
    "bce_with_logits": "nn.BCEWithLogitsLoss",
    "nll": "nn.NLLLoss",
}


@dataclass
class TorchLossCall:
    call: ast.Call  # where the loss is computed
    kind: str  # "cross_entropy" / "bce_with_logits" / "nll"
    input: ast.expr  # the predictions argument
    label: str  # "nn.CrossEntropyLoss", "F.cross_entropy"


def torch_loss_calls(ctx: ModuleContext) -> list[TorchLossCall]:
    cache = _cache(ctx)
    if "torch_losses" in cache:
        return cache["torch_losses"]
    out: list[TorchLossCall] = []
    class_losses = ctx.mentions("CrossEntropyLoss", "BCEWithLogitsLoss", "NLLLoss") and any(
        ctx.call_name(c) in TORCH_LOSS_CLASSES for c in ctx.calls if not isinstance(c.func, ast.Call)
    )
    if "torch" in ctx.frameworks or ctx.star_imports:
        for call in ctx.calls:
            name = None if isinstance(call.func, ast.Call) else ctx.call_name(call)
            if name in TORCH_LOSS_FUNCTIONS:
                pred = kwarg(call, "input", 0)
                if pred is not None:
                    short_name = "F." + last(name)
                    out.append(TorchLossCall(call, TORCH_LOSS_FUNCTIONS[name], pred, short_name))
                continue
            if name is not None or not call.args:
                continue
            func = call.func
            if isinstance(func, ast.Call):
                ctor = func
            elif isinstance(func, (ast.Name, ast.Attribute)) and class_losses:
                ctor = resolve_deep(ctx, func)
            else:
                continue
            if not isinstance(ctor, ast.Call):
                continue
            cname = ctx.call_name(ctor)
            if cname in TORCH_LOSS_CLASSES:
                pred = kwarg(call, "input", 0)
                if pred is not None:
                    out.append(TorchLossCall(call, TORCH_LOSS_CLASSES[cname], pred, LOSS_LABEL[TORCH_LOSS_CLASSES[cname]]))
    cache["torch_losses"] = out
    return out


def classification_loss_in_file(ctx: ModuleContext) -> bool:
    if torch_loss_calls(ctx):
        return True
    return any(ctx.call_name(c) in TORCH_LOSS_CLASSES or ctx.call_name(c) in TORCH_LOSS_FUNCTIONS for c in ctx.calls)


# ----------------------------------------------------------------------------- torch models


def torch_user_model_classes(ctx: ModuleContext) -> Iterator[ast.ClassDef]:
    """Local classes with a `forward` that are used as models (instantiated, never as a
    sub-module `self.x = Cls(...)` of another class)."""
    for klass in ctx.classes.values():
        if _method(klass, "forward") is None:
            continue
        instantiations = [c for c in _call_index(ctx).get(klass.name, []) if isinstance(c.func, ast.Name)]
        if not instantiations:
            continue
        submodule = False
        for inst in instantiations:
            stmt = ctx.statement(inst)
            if ctx.enclosing_class(inst) is not None:
                submodule = True
            if isinstance(stmt, ast.Assign) and any(ctx.key(t) and (ctx.key(t) or "").startswith("self.") for t in stmt.targets):
                submodule = True
        if not submodule:
            yield klass
