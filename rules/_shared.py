"""Small helpers over the shared analysis context that several rule families use.

Parameters: `ctx.assignment_at` returns, for a use of a parameter inside its function, the
parameter's own binding (an `Assignment` whose statement is the FunctionDef and whose value
is None). Freezes in helpers: `ctx.freezes` holds, besides the event inside a helper such as
`def freeze(m): m.trainable = False`, one event per call of the helper, located at the call,
with the target bound to the caller's argument (`freeze(encoder)` -> `encoder`).
"""

from __future__ import annotations

import ast
from typing import Any

from auditor.analysis.context import UNKNOWN, ModuleContext, kwarg
from auditor.analysis.context import param_default as _default

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)


def is_parameter(record) -> bool:
    """Is this binding (from `ctx.assignment_at`) a function's parameter?"""
    return record is not None and record.value is None and isinstance(record.stmt, _FUNCS) and record.scope is record.stmt


# ------------------------------------------------------------------------- freezes in helpers
def call_site_freezes(ctx: ModuleContext) -> list:
    """`ctx.freezes` as the freeze rules read them: a freeze inside a helper counts where the
    helper is called. In-helper events that the context reports again at every call (bound to
    the caller's argument) are left out, and so are call-site events that name one of the
    helper's own local variables (meaningless, or another variable, at the call) and those
    whose freeze sits in a branch the call does not take (`freeze_if(net, False)` with
    `if enabled: ...` inside)."""
    cached = ctx.__dict__.get("_call_site_freezes")
    if cached is None:
        meaningful = [e for e in ctx.freezes if _lifted_is_meaningful(ctx, e)]
        cached = [e for e in meaningful if not _superseded_by_lift(ctx, e, meaningful) and not _not_run_by_call(ctx, e)]
        ctx.__dict__["_call_site_freezes"] = cached
    return cached


def lifted_helper(ctx: ModuleContext, ev) -> ast.AST | None:
    """For an event the context lifted to a call of a helper (`freeze(encoder)`, event at
    the call): the helper's definition. None for any other event (a freeze statement, or a
    layer built frozen: `base = App(..., trainable=False)`)."""
    call = ev.node
    if not isinstance(call, ast.Call):
        return None
    cache = ctx.__dict__.setdefault("_lifted_helpers", {})
    key = (id(call), ev.framework)
    if key not in cache:
        f = call.func
        name = f.id if isinstance(f, ast.Name) else f.attr if isinstance(f, ast.Attribute) else None
        cache[key] = next(
            (func for func in ctx.functions.get(name or "", []) if call in ctx.call_sites(func) and helper_freeze_statements(ctx, func, ev.framework)),
            None,
        )
    return cache[key]


def helper_freeze_statements(ctx: ModuleContext, func: ast.AST, framework: str, frozen: bool | None = None) -> list[ast.AST]:
    """A helper's statements that set `.trainable` (keras) or `.requires_grad` /
    `requires_grad_()` (torch); with `frozen`, only those that may act in that direction (a
    constant flag the other way is left out, a parameter flag is kept)."""
    attr = "trainable" if framework == "keras" else "requires_grad"
    out = []
    for node in ast.walk(func):
        flag: ast.AST | None
        if isinstance(node, ast.Assign) and any(isinstance(t, ast.Attribute) and t.attr == attr for t in node.targets):
            flag = node.value
        elif framework == "torch" and isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "requires_grad_":
            flag = kwarg(node, "requires_grad", 0)
        else:
            continue
        if frozen is not None:
            value = True if flag is None else ctx.value(flag)
            if isinstance(value, bool) and (not value) != frozen:
                continue
        out.append(node)
    return out


def _key_root(key: str) -> str:
    return key.split(".", 1)[0].split("[", 1)[0]


def _lifted_is_meaningful(ctx: ModuleContext, ev) -> bool:
    """False for an event lifted from `def create(flag): base = App(); base.trainable = flag`
    to `create(False)` under the name `base`: a local of the helper, not what the call passes."""
    helper = lifted_helper(ctx, ev)
    if helper is None:
        return True
    root = _key_root(ev.target or "")
    passed = {_key_root(k) for k in (ctx.key(a) for a in ctx.bind_arguments(ev.node, helper).values()) if k}
    if root in passed:
        return True  # the target is (part of) what the call passes
    return not any(r.scope is helper and not is_parameter(r) for r in ctx.assignments.get(root, ()))


def _superseded_by_lift(ctx: ModuleContext, ev, events: list) -> bool:
    """An event inside a helper whose target (or flag) is a parameter, reported again at every
    call of the helper. The call-site events say what is frozen and when; the in-function one
    only names the parameter."""
    func = ctx.enclosing_function(ev.node)
    if func is None:
        return False
    sites = ctx.call_sites(func)
    if not sites:
        return False
    args = func.args  # type: ignore[attr-defined]
    params = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
    node = ev.node
    flag = node.value if isinstance(node, ast.Assign) else kwarg(node, "requires_grad", 0) if isinstance(node, ast.Call) else None
    if _key_root(ev.target or "") not in params and not (isinstance(flag, ast.Name) and flag.id in params):
        return False
    at_calls = {id(e.node) for e in events if e.framework == ev.framework and e.node is not node}
    # a call the context did not lift because it skips the freeze's branch is covered too
    return all(id(c) in at_calls or _branch_not_taken(ctx, node, func, c) for c in sites)


def helper_condition(ctx: ModuleContext, test: ast.AST, helper: ast.AST, call: ast.Call) -> Any:
    """The value of an `if` test inside a helper that reads one of its parameters (`if
    enabled:`, `if not enabled:`), for one call of the helper; UNKNOWN otherwise."""
    negate = isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not)
    name = test.operand if negate else test  # type: ignore[attr-defined]
    if not isinstance(name, ast.Name):
        return UNKNOWN
    record = ctx.assignment_at(name.id, name)
    if not is_parameter(record) or record.stmt is not helper:
        return UNKNOWN
    arg = ctx.bind_arguments(call, helper).get(name.id)
    if arg is None:
        arg = _default(helper, name.id)
    flag = ctx.value(arg) if arg is not None else UNKNOWN
    return flag if flag is UNKNOWN or not negate else not flag


def _not_run_by_call(ctx: ModuleContext, ev) -> bool:
    """A call-site event whose freeze statements all sit in branches of the helper that this
    call does not take."""
    helper = lifted_helper(ctx, ev)
    if helper is None:
        return False
    statements = helper_freeze_statements(ctx, helper, ev.framework, ev.frozen)
    return bool(statements) and all(_branch_not_taken(ctx, s, helper, ev.node) for s in statements)


def _branch_not_taken(ctx: ModuleContext, stmt: ast.AST, helper: ast.AST, call: ast.Call) -> bool:
    child = stmt
    for anc in ctx.ancestors(stmt):
        if anc is helper:
            return False
        if isinstance(anc, ast.If):
            in_body = any(child is s for s in anc.body)
            if in_body or any(child is s for s in anc.orelse):
                flag = helper_condition(ctx, anc.test, helper, call)
                if flag is not UNKNOWN and bool(flag) != in_body:
                    return True
        child = anc
    return False



# ------------------------------------------------------------------------- branches that never run
def in_dead_branch(ctx: ModuleContext, node: ast.AST) -> bool:
    """Is `node` in a branch of an `if` whose test the file decides the other way?

    `model_name = "squeezenet"` ... `elif model_name == "inception": freeze(model)`: that
    freeze never runs. Tests are evaluated with `static_truth` (comparisons of constants,
    names bound to constants, parameters that every call site of the function agrees on);
    anything else counts as live."""
    child = node
    for anc in ctx.ancestors(node):
        if isinstance(anc, ast.If):
            in_body = any(child is s for s in anc.body)
            if in_body or any(child is s for s in anc.orelse):
                truth = static_truth(ctx, anc.test)
                if truth is not None and truth != in_body:
                    return True
        elif isinstance(anc, ast.IfExp):
            if child is anc.body or child is anc.orelse:
                truth = static_truth(ctx, anc.test)
                if truth is not None and truth != (child is anc.body):
                    return True
        child = anc
    return False


_COMPARE = {
    ast.Eq: lambda a, b: a == b,
    ast.NotEq: lambda a, b: a != b,
    ast.In: lambda a, b: a in b,
    ast.NotIn: lambda a, b: a not in b,
    ast.Is: lambda a, b: a is b,
    ast.IsNot: lambda a, b: a is not b,
}
_SIMPLE = (str, int, float, bool, type(None))


def static_truth(ctx: ModuleContext, test: ast.AST, depth: int = 0) -> bool | None:
    """The truth of a simple `if` test when the file fixes it, else None. Only plain values
    count (strings, numbers, booleans, None, tuples of them), and a function's parameter only
    when the function is called in this file (a function nobody here calls may be called
    with anything)."""
    if depth > 10:
        return None
    if isinstance(test, ast.BoolOp):
        parts = [static_truth(ctx, v, depth + 1) for v in test.values]
        if isinstance(test.op, ast.And):
            if any(p is False for p in parts):
                return False
            return True if all(p is True for p in parts) else None
        if any(p is True for p in parts):
            return True
        return False if all(p is False for p in parts) else None
    if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
        inner = static_truth(ctx, test.operand, depth + 1)
        return None if inner is None else not inner
    if isinstance(test, ast.Compare) and len(test.ops) == 1 and type(test.ops[0]) in _COMPARE:
        left = _plain_value(ctx, test.left)
        right = _plain_value(ctx, test.comparators[0])
        if left is UNKNOWN or right is UNKNOWN:
            return None
        if isinstance(test.ops[0], (ast.In, ast.NotIn)) and not isinstance(right, (tuple, str)):
            return None
        try:
            return bool(_COMPARE[type(test.ops[0])](left, right))
        except TypeError:
            return None
    if isinstance(test, (ast.Name, ast.Constant)):
        v = _plain_value(ctx, test)
        return None if v is UNKNOWN else bool(v)
    return None


def _plain_value(ctx: ModuleContext, node: ast.AST) -> Any:
    if isinstance(node, ast.Name):
        record = ctx.assignment_at(node.id, node)
        if record is None:
            return UNKNOWN
        if is_parameter(record) and not ctx.call_sites(record.stmt):
            return UNKNOWN
    elif not isinstance(node, (ast.Constant, ast.Tuple, ast.List, ast.Attribute)):
        return UNKNOWN
    if _from_command_line(ctx, node, 0):
        return UNKNOWN  # an argparse default: the command line may choose the other branch
    v = ctx.value(node)
    if isinstance(v, tuple) and all(isinstance(e, _SIMPLE) for e in v):
        return v
    return v if isinstance(v, _SIMPLE) else UNKNOWN


def _from_command_line(ctx: ModuleContext, node: ast.AST | None, depth: int) -> bool:
    """Does this value come (through names and call sites) from `parser.parse_args()`?"""
    if node is None or depth > 12:
        return False
    if isinstance(node, ast.Attribute):
        base = node.value
        while isinstance(base, ast.Attribute):
            base = base.value
        target = ctx.resolve(base) if isinstance(base, ast.Name) else base
        if isinstance(target, ast.Subscript):
            target = target.value
        if isinstance(target, ast.Call) and isinstance(target.func, ast.Attribute) and target.func.attr in ("parse_args", "parse_known_args"):
            return True
    if isinstance(node, ast.Name):
        record = ctx.assignment_at(node.id, node)
        if record is None:
            return False
        if is_parameter(record):
            return any(_from_command_line(ctx, a, depth + 1) for a in ctx.parameter_arguments(record.stmt, node.id) or ())
        return record.value is not None and _from_command_line(ctx, record.value, depth + 1)
    if isinstance(node, (ast.Tuple, ast.List, ast.BinOp, ast.Subscript)):
        return any(_from_command_line(ctx, c, depth + 1) for c in ast.iter_child_nodes(node) if isinstance(c, ast.expr))
    return False
