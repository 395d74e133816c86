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


def _default(func: ast.AST, name: str) -> ast.expr | None:
    args = func.args  # type: ignore[attr-defined]
    positional = args.posonlyargs + args.args
    pairs = list(zip(positional, [None] * (len(positional) - len(args.defaults)) + list(args.defaults)))
    pairs += list(zip(args.kwonlyargs, args.kw_defaults))
    return next((d for a, d in pairs if a.arg == name), None)
