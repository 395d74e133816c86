"""Where a script freezes or unfreezes weights, and what it freezes.

Keras: `base.trainable = False`, `for layer in base.layers[:100]: layer.trainable = False`.
PyTorch: `for p in backbone.parameters(): p.requires_grad = False`, the `named_parameters()`
form with a name test, `backbone.requires_grad_(False)`, nested `children()` loops.
The target is reported as the key of the container (`base`, `model.features`), so rules can
match it against the variables they track.
"""

from __future__ import annotations

import ast

from auditor.analysis.context import FreezeEvent, ModuleContext, param_default

_ITER_METHODS = {"parameters", "named_parameters", "children", "named_children", "modules", "named_modules", "values"}
_KERAS_ITER_ATTRS = {"layers", "submodules", "_flatten_layers"}


def collect_freezes(ctx: ModuleContext) -> list[FreezeEvent]:
    events: list[FreezeEvent] = []
    #: (statement, receiver, framework, flag expression) before the flag is evaluated
    raw: list[tuple[ast.AST, ast.AST, str, ast.AST | None]] = []
    for key, records in ctx.assignments.items():
        attr = key.rsplit(".", 1)[-1]
        if attr not in ("trainable", "requires_grad") or "." not in key:
            continue
        for record in records:
            if record.value is None or record.augmented or not isinstance(record.stmt, ast.Assign):
                continue
            target_node = record.stmt.targets[0]
            if not isinstance(target_node, ast.Attribute):
                target_node = next((t for t in record.stmt.targets if isinstance(t, ast.Attribute) and t.attr == attr), None)
                if target_node is None:
                    continue
            raw.append((record.stmt, target_node.value, "keras" if attr == "trainable" else "torch", record.value))
    for call in ctx.method_calls("requires_grad_"):
        flag_node = call.args[0] if call.args else next((k.value for k in call.keywords if k.arg == "requires_grad"), None)
        raw.append((call, call.func.value, "torch", flag_node))  # type: ignore[attr-defined]
    for stmt, receiver, framework, flag_node in raw:
        flag = True if flag_node is None else ctx.value(flag_node)
        event = _event(ctx, stmt, receiver, framework, not flag) if isinstance(flag, bool) else None
        if event is not None:
            events.append(event)
        events.extend(_lifted(ctx, stmt, receiver, framework, flag_node, event))
    for call in ctx.calls:
        # keras layers built frozen: hub.KerasLayer(url, trainable=False), Layer(trainable=False)
        for kw in call.keywords:
            if kw.arg == "trainable" and ctx.value(kw.value) is False:
                stmt = ctx.statement(call)
                if isinstance(stmt, ast.Assign) and stmt.value is call and ctx.key(stmt.targets[0]):
                    events.append(FreezeEvent(call, "keras", ctx.key(stmt.targets[0]) or "", True, False))
    events.sort(key=lambda e: ctx.order.get(e.node, 0))
    return events


def _lifted(
    ctx: ModuleContext, stmt: ast.AST, receiver: ast.AST, framework: str, flag_node: ast.AST | None, event: FreezeEvent | None
) -> list[FreezeEvent]:
    """A freeze inside a helper (`def freeze(m, flag=False): m.trainable = flag`) freezes, at
    each call site, what the call passes: one event per call, at the call, with the target
    and the flag bound from the call's arguments."""
    func = ctx.enclosing_function(stmt)
    if func is None:
        return []
    args = func.args  # type: ignore[attr-defined]
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    probe = event or _event(ctx, stmt, receiver, framework, True)
    root = probe.target.split(".", 1)[0].split("[", 1)[0]
    flag_param = flag_node.id if isinstance(flag_node, ast.Name) and flag_node.id in params else None
    if root not in params and flag_param is None:
        return []
    if root not in params and any(r.scope is func for r in ctx.assignments.get(root, ())):
        return []  # the helper freezes its own local object: nothing at the call site
    conditions = _parameter_conditions(ctx, stmt, func, params)
    out = []
    for call in ctx.call_sites(func):
        bound = ctx.bind_arguments(call, func)
        if not _branch_taken(ctx, func, bound, conditions):
            continue
        target = probe.target
        if root in params:
            arg = bound.get(root)
            key = ctx.key(arg) if arg is not None else None
            if not key:
                continue
            target = key + probe.target[len(root) :]
        frozen = probe.frozen if event is not None else None
        if flag_param is not None:
            flag_arg = bound.get(flag_param)
            if flag_arg is None:
                flag_arg = param_default(func, flag_param)
            value = ctx.value(flag_arg) if flag_arg is not None else None
            frozen = (not value) if isinstance(value, bool) else None
        if frozen is None:
            continue
        out.append(FreezeEvent(call, framework, target, frozen, probe.partial))
    return out


def _parameter_conditions(ctx: ModuleContext, stmt: ast.AST, func: ast.AST, params: set[str]) -> list[tuple[str, bool]]:
    """The `if flag:` / `if not flag:` tests on parameters that guard a statement inside its
    function, as (parameter, value the statement needs)."""
    out = []
    child = stmt
    for anc in ctx.ancestors(stmt):
        if anc is func:
            break
        if isinstance(anc, ast.If):
            test, wanted = anc.test, child not in anc.orelse
            if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
                test, wanted = test.operand, not wanted
            if isinstance(test, ast.Name) and test.id in params:
                out.append((test.id, wanted))
        child = anc
    return out


def _branch_taken(ctx: ModuleContext, func: ast.AST, bound: dict, conditions: list[tuple[str, bool]]) -> bool:
    """False when a call's arguments certainly skip the guarded statement."""
    for name, wanted in conditions:
        arg = bound.get(name)
        if arg is None:
            arg = param_default(func, name)
        if arg is None:
            continue
        value = ctx.value(arg)
        if value is not None and not isinstance(value, (bool, int, float, str)):
            continue  # unknown: keep the event
        if bool(value) != wanted:
            return False
    return True


def _event(ctx: ModuleContext, node: ast.AST, receiver: ast.AST, framework: str, frozen: bool) -> FreezeEvent:
    """Lift a per-parameter/per-layer freeze to the container it iterates over."""
    partial = False
    target = ctx.key(receiver) or "?"
    receiver_key = target
    for anc in ctx.ancestors(node):
        if isinstance(anc, (ast.If, ast.IfExp)):
            partial = True
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            break
        if isinstance(anc, (ast.For, ast.comprehension)):
            names = {ctx.key(t) for t in (anc.target.elts if isinstance(anc.target, ast.Tuple) else [anc.target])}
            root = receiver_key.split(".", 1)[0].split("[", 1)[0]
            if root in names:
                container, sliced = _container(ctx, anc.iter)
                if container:
                    partial = partial or sliced or "." in receiver_key
                    target = container
                    receiver_key = container
    return FreezeEvent(node, framework, target, frozen, partial)


def _container(ctx: ModuleContext, node: ast.AST) -> tuple[str | None, bool]:
    """`base.layers[:100]` -> ('base', True); `model.named_parameters()` -> ('model', False)."""
    sliced = False
    while True:
        if isinstance(node, ast.Call):
            func = node.func
            if isinstance(func, ast.Name) and func.id in ("enumerate", "list", "tuple", "iter", "reversed", "zip", "filter") and node.args:
                node = node.args[-1] if func.id == "filter" else node.args[0]
                continue
            if isinstance(func, ast.Attribute) and func.attr in _ITER_METHODS:
                node = func.value
                continue
            return None, sliced
        if isinstance(node, ast.Subscript):
            sliced = True
            node = node.value
            continue
        if isinstance(node, ast.Attribute) and node.attr in _KERAS_ITER_ATTRS:
            node = node.value
            continue
        key = ctx.key(node)
        return key, sliced
