"""`ModuleContext`: one parse and one walk of a module, indexed for rules to query.

Rules must understand code the way a reader does, not grep it. So the context resolves
imports and aliases to canonical names (`names.canonical`), knows which value a name holds at
a given line (scope-aware, last assignment before the use), evaluates simple constant
expressions (arithmetic, `len(...)`, `[0.5] * 3`, argparse defaults, config dicts, class
attributes), and knows which pretrained architecture a variable holds (`model_of`).

Everything is computed in one walk of the tree at construction; the query methods only read
those indices, so running twenty rules costs one traversal.
"""

from __future__ import annotations

import ast
import fnmatch
from collections import defaultdict
from typing import Any, Iterable, Iterator, NamedTuple

from auditor import knowledge
from auditor.analysis.names import canonical, last
from auditor.analysis.source import SourceUnit


class _Unknown:
    _instance = None

    def __new__(cls) -> "_Unknown":
        if cls._instance is None:
            cls._instance = super().__new__(cls)
        return cls._instance

    def __repr__(self) -> str:
        return "UNKNOWN"

    def __bool__(self) -> bool:
        return False


#: the value of an expression the context cannot determine
UNKNOWN: Any = _Unknown()

Scope = ast.AST  # ast.Module, a function definition, a Lambda or a ClassDef

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)
#: methods that return the same model (for following `model = build().to(device).eval()`)
MODEL_PASSTHROUGH_METHODS = frozenset(
    {"to", "cuda", "cpu", "eval", "train", "float", "half", "double", "bfloat16", "requires_grad_", "share_memory", "to_empty"}
)


class Location(NamedTuple):
    line: int | None = None
    column: int | None = None
    end_line: int | None = None
    end_column: int | None = None
    cell: int | None = None


class Assignment:
    """One binding of a name or attribute key. `value` is None when bound by something we do
    not evaluate (a for target, unpacking, a parameter); `index` is the walk order."""

    __slots__ = ("key", "value", "stmt", "scope", "index", "augmented")

    def __init__(self, key: str, value: ast.expr | None, stmt: ast.AST, scope: Scope, index: int, augmented: bool = False):
        self.key = key
        self.value = value
        self.stmt = stmt
        self.scope = scope
        self.index = index
        self.augmented = augmented

    @property
    def line(self) -> int:
        return getattr(self.stmt, "lineno", 0)


class ModelInfo:
    """A pretrained-architecture constructor call, as a reader would describe it.

    framework: "keras", "torchvision", "timm", "hf" or "hub"; arch: constructor or
    architecture name ("ResNet50", "resnet50"); family: keras.applications module,
    torchvision family or timm name; pretrained: True / False / None (unknown); keys: the
    variables assigned from it.
    """

    __slots__ = ("framework", "arch", "family", "pretrained", "call", "include_top", "include_preprocessing", "classes", "keys")

    def __init__(
        self,
        framework: str,
        arch: str,
        family: str | None,
        pretrained: bool | None,
        call: ast.Call,
        include_top: bool | None = None,
        include_preprocessing: bool | None = None,
        classes: ast.expr | None = None,
        keys: list[str] | None = None,
    ):
        self.framework = framework
        self.arch = arch
        self.family = family
        self.pretrained = pretrained
        self.call = call
        self.include_top = include_top
        self.include_preprocessing = include_preprocessing
        self.classes = classes
        self.keys = keys if keys is not None else []

    def __repr__(self) -> str:
        return f"ModelInfo({self.framework}, {self.arch}, family={self.family}, pretrained={self.pretrained}, keys={self.keys})"

    @property
    def label(self) -> str:
        return self.arch


class FreezeEvent(NamedTuple):
    """A statement that freezes (or unfreezes) weights: `base.trainable = False`,
    `for p in backbone.parameters(): p.requires_grad = False`, `m.requires_grad_(False)`."""

    node: ast.AST
    framework: str  # "keras" or "torch"
    target: str  # key of what is (un)frozen: "base_model", "model.features", "model"
    frozen: bool
    partial: bool  # a slice of layers, or a conditional freeze inside the loop


class ModuleContext:
    def __init__(self, unit: SourceUnit, tree: ast.Module):
        self.unit = unit
        self.display_path = unit.path
        self.source = unit.text
        self.tree = tree
        self.parents: dict[ast.AST, ast.AST] = {}
        self.scope_of_node: dict[ast.AST, Scope] = {}
        self.imports: dict[str, str] = {}
        self.star_imports: list[str] = []
        self.calls: list[ast.Call] = []
        self.assignments: dict[str, list[Assignment]] = defaultdict(list)
        self.functions: dict[str, list[ast.AST]] = defaultdict(list)
        self.classes: dict[str, ast.ClassDef] = {}
        self.order: dict[ast.AST, int] = {}
        self._call_names: dict[ast.Call, str | None] = {}
        #: every node by its exact type, in source order (`nodes_of`): rules query this
        #: instead of walking the tree again
        self.by_type: dict[type, list[ast.AST]] = {}
        self._argparse: dict[str, ast.expr] = {}
        self._aliases: dict[str, str | None] = {}
        self._param_sources: dict[tuple[int, str], ast.AST | None] = {}
        self._parameter_names: set[str] = set()  # filled by the walk
        self._call_index: dict[str, list[ast.Call]] | None = None
        self._resolving: set[int] = set()
        self._param_values: dict[tuple[int, str], Any] = {}
        self._walk()
        self._models: list[ModelInfo] | None = None
        self._freezes: list[FreezeEvent] | None = None

    # ------------------------------------------------------------------ the one walk
    def _walk(self) -> None:
        """Pre-order, source-order traversal that fills every index at once. Hand-rolled
        (no `ast.iter_child_nodes`, type dispatch instead of isinstance chains): this loop is
        most of the cost of checking a file."""
        counter = 0
        order = self.order
        parents = self.parents
        scope_of = self.scope_of_node
        by_type = self.by_type
        calls = self.calls
        AST = ast.AST
        stack: list[tuple[ast.AST, Scope]] = [(self.tree, self.tree)]
        pop = stack.pop
        push = stack.append
        while stack:
            node, scope = pop()
            order[node] = counter
            counter += 1
            scope_of[node] = scope
            kind = type(node)
            bucket = by_type.get(kind)
            if bucket is None:
                by_type[kind] = [node]
            else:
                bucket.append(node)
            inner_scope = scope
            if kind is ast.Call:
                calls.append(node)
            elif kind in _BINDING_NODES:
                self._record_bindings(node, scope, counter)
            elif kind is ast.FunctionDef or kind is ast.AsyncFunctionDef:
                self.functions[node.name].append(node)  # type: ignore[attr-defined]
                inner_scope = node
                for arg in _all_args(node.args):  # type: ignore[attr-defined]
                    self.assignments[arg.arg].append(Assignment(arg.arg, None, node, node, counter))
                    self._parameter_names.add(arg.arg)
            elif kind is ast.Lambda:
                inner_scope = node
                for arg in _all_args(node.args):  # type: ignore[attr-defined]
                    self.assignments[arg.arg].append(Assignment(arg.arg, None, node, node, counter))
            elif kind is ast.ClassDef:
                self.classes[node.name] = node  # type: ignore[attr-defined]
                inner_scope = node
            elif kind is ast.Import:
                for alias in node.names:  # type: ignore[attr-defined]
                    if alias.asname:
                        self.imports[alias.asname] = canonical(alias.name)
                    else:
                        # `import tensorflow.keras` binds `tensorflow`; the rest resolves through it
                        top = alias.name.split(".")[0]
                        self.imports.setdefault(top, top)
            elif kind is ast.ImportFrom:
                if node.module and node.level == 0:  # type: ignore[attr-defined]
                    for alias in node.names:  # type: ignore[attr-defined]
                        if alias.name == "*":
                            self.star_imports.append(canonical(node.module))  # type: ignore[attr-defined]
                        else:
                            self.imports[alias.asname or alias.name] = canonical(f"{node.module}.{alias.name}")  # type: ignore[attr-defined]
            children: list[ast.AST] = []
            for field_name in node._fields:
                value = getattr(node, field_name, None)
                if isinstance(value, AST):
                    children.append(value)
                elif type(value) is list:
                    for item in value:
                        if isinstance(item, AST):
                            children.append(item)
            if inner_scope is not scope:
                # decorators, default values and base classes belong to the outer scope
                outer = {id(n) for n in getattr(node, "decorator_list", ())} | {id(n) for n in getattr(node, "bases", ())}
                args = getattr(node, "args", None)
                if isinstance(args, ast.arguments):
                    outer.add(id(args))
                for child in reversed(children):
                    parents[child] = node
                    push((child, scope if id(child) in outer else inner_scope))
            else:
                for child in reversed(children):
                    parents[child] = node
                    push((child, inner_scope))
        self.calls.sort(key=lambda c: self.order[c])
        for call in self.calls:
            self._call_names[call] = self.qualname(call.func)
        self._collect_argparse()

    def _record_bindings(self, node: ast.AST, scope: Scope, index: int) -> None:
        def bind(target: ast.AST, value: ast.expr | None, augmented: bool = False) -> None:
            if isinstance(target, (ast.Tuple, ast.List)):
                values = value.elts if isinstance(value, (ast.Tuple, ast.List)) and len(value.elts) == len(target.elts) else None
                for i, elt in enumerate(target.elts):
                    bind(elt, values[i] if values else None)
                return
            if isinstance(target, ast.Starred):
                bind(target.value, None)
                return
            key = self.key(target)
            if key:
                self.assignments[key].append(Assignment(key, value, node, scope, index, augmented))

        if isinstance(node, ast.Assign):
            for target in node.targets:
                bind(target, node.value)
        elif isinstance(node, ast.AnnAssign) and node.value is not None:
            bind(node.target, node.value)
        elif isinstance(node, ast.AugAssign):
            bind(node.target, node.value, augmented=True)
        elif isinstance(node, ast.NamedExpr):
            bind(node.target, node.value)
        elif isinstance(node, (ast.For, ast.AsyncFor, ast.comprehension)):
            bind(node.target, None)
        elif isinstance(node, (ast.With, ast.AsyncWith)):
            for item in node.items:
                if item.optional_vars is not None:
                    bind(item.optional_vars, item.context_expr)

    def _collect_argparse(self) -> None:
        """`parser.add_argument('--lr', default=0.1)` makes `args.lr` resolvable."""
        for call in self.method_calls("add_argument"):
            default = kwarg(call, "default")
            if default is None:
                continue
            dest = None
            dest_node = kwarg(call, "dest")
            if isinstance(dest_node, ast.Constant) and isinstance(dest_node.value, str):
                dest = dest_node.value
            else:
                flags = [a.value for a in call.args if isinstance(a, ast.Constant) and isinstance(a.value, str)]
                longs = [f for f in flags if f.startswith("--")]
                chosen = longs[0] if longs else (flags[0] if flags else None)
                if chosen:
                    dest = chosen.lstrip("-").replace("-", "_")
            if dest:
                self._argparse.setdefault(dest, default)

    # ------------------------------------------------------------------ names and places
    @staticmethod
    def key(node: ast.AST) -> str | None:
        """A dotted key for a Name/Attribute chain (`self.backbone.fc`), subscripts as `[i]`."""
        parts: list[str] = []
        while True:
            if isinstance(node, ast.Name):
                parts.append(node.id)
                break
            if isinstance(node, ast.Attribute):
                parts.append("." + node.attr)
                node = node.value
            elif isinstance(node, ast.Subscript):
                sl = node.slice
                if isinstance(sl, ast.Constant) and isinstance(sl.value, (int, str)):
                    parts.append(f"[{sl.value!r}]")
                elif isinstance(sl, ast.UnaryOp) and isinstance(sl.op, ast.USub) and isinstance(sl.operand, ast.Constant):
                    parts.append(f"[-{sl.operand.value!r}]")
                else:
                    parts.append("[...]")
                node = node.value
            else:
                return None
        return "".join(reversed(parts))

    def qualname(self, node: ast.AST | None, follow_parameters: bool = False) -> str | None:
        """Canonical dotted name of an imported thing (`tf.keras.applications.VGG16` ->
        `keras.applications.VGG16`), None for locals and anything else."""
        if node is None:
            return None
        if isinstance(node, ast.Call):
            node = node.func
        parts: list[str] = []
        while isinstance(node, ast.Attribute):
            parts.append(node.attr)
            node = node.value
        if not isinstance(node, ast.Name):
            return None
        base = self.imports.get(node.id)
        if base is None:
            if node.id in self.assignments:
                base = self._alias_by_assignment(node.id) or (self._alias_by_parameter(node) if follow_parameters else None)
                if base is None:
                    return None
            elif node.id in self.functions or node.id in self.classes:
                return None
            else:
                base = self._from_star(node.id)
                if base is None:
                    return None
        return canonical(".".join([base, *reversed(parts)]))

    def _alias_by_parameter(self, node: ast.Name) -> str | None:
        """`def build(arch): return arch(pretrained=True)` called as `build(models.resnet18)`:
        inside `build`, `arch` is the imported thing every call passes."""
        if node.id not in self._parameter_names or id(node) in self._resolving:
            return None
        record = self.assignment_at(node.id, node)
        if record is None or not is_parameter(record) or isinstance(record.stmt, ast.Lambda):
            return None
        self._resolving.add(id(node))
        try:
            source = self._parameter_source(record.stmt, node.id, 0)
            return self.qualname(source, follow_parameters=True) if isinstance(source, (ast.Name, ast.Attribute)) else None
        finally:
            self._resolving.discard(id(node))

    def _alias_by_assignment(self, name: str) -> str | None:
        """`Dense = keras.layers.Dense` or `builder = keras.applications.Xception`: a name
        whose every binding is a plain reference to one imported thing is an alias of it."""
        if name in self._aliases:
            return self._aliases[name]
        self._aliases[name] = None  # cycle guard (`a = b; b = a`)
        targets = set()
        for record in self.assignments[name]:
            value = record.value
            if record.augmented or not isinstance(value, (ast.Name, ast.Attribute)):
                return None
            target = self.qualname(value)
            if target is None:
                return None
            targets.add(target)
        result = targets.pop() if len(targets) == 1 else None
        self._aliases[name] = result
        return result

    def _from_star(self, name: str) -> str | None:
        for module in self.star_imports:
            if module.startswith(("keras", "torch", "timm", "tensorflow")):
                return canonical(f"{module}.{name}")
        return None

    def call_name(self, call: ast.Call) -> str | None:
        if call in self._call_names:
            return self._call_names[call]
        return self.qualname(call.func)

    def location(self, node: ast.AST | None) -> Location:
        if node is None or not hasattr(node, "lineno"):
            return Location(line=1, column=1) if not self.unit.is_notebook else Location(line=1, column=1, cell=1)
        line = node.lineno
        col = node.col_offset + 1
        end_line = getattr(node, "end_lineno", None)
        end_col = getattr(node, "end_col_offset", None)
        end_col = end_col + 1 if end_col is not None else None
        if self.unit.is_notebook:
            cell, cell_line = self.unit.cell_line(line)
            end_cell_line = self.unit.cell_line(end_line)[1] if end_line else None
            return Location(cell_line, col, end_cell_line, end_col, cell)
        return Location(line, col, end_line, end_col)

    def nodes_of(self, *types: type) -> list[ast.AST]:
        """All nodes of these exact AST types, in source order (no second walk of the tree)."""
        if len(types) == 1:
            return list(self.by_type.get(types[0], ()))
        found = [n for t in types for n in self.by_type.get(t, ())]
        found.sort(key=self.order.__getitem__)
        return found

    def mentions(self, *words: str) -> bool:
        return any(w in self.source for w in words)

    @property
    def frameworks(self) -> set[str]:
        found = set()
        for name in list(self.imports.values()) + self.star_imports:
            top = name.split(".")[0]
            if top in ("keras", "torch", "torchvision", "timm", "transformers", "tensorflow"):
                found.add(top)
        return found

    # ------------------------------------------------------------------ tree navigation
    def parent(self, node: ast.AST) -> ast.AST | None:
        return self.parents.get(node)

    def ancestors(self, node: ast.AST) -> Iterator[ast.AST]:
        node = self.parents.get(node)
        while node is not None:
            yield node
            node = self.parents.get(node)

    def scope(self, node: ast.AST) -> Scope:
        return self.scope_of_node.get(node, self.tree)

    def enclosing_function(self, node: ast.AST) -> ast.AST | None:
        for anc in self.ancestors(node):
            if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
                return anc
        return None

    def enclosing_class(self, node: ast.AST) -> ast.ClassDef | None:
        for anc in self.ancestors(node):
            if isinstance(anc, ast.ClassDef):
                return anc
        return None

    def statement(self, node: ast.AST) -> ast.AST:
        """The statement that contains `node`."""
        current = node
        while current is not None and not isinstance(current, ast.stmt):
            current = self.parents.get(current)
        return current or node

    def before(self, a: ast.AST, b: ast.AST) -> bool:
        """Does `a` come before `b` in source order?"""
        return (getattr(a, "lineno", 0), getattr(a, "col_offset", 0)) < (getattr(b, "lineno", 0), getattr(b, "col_offset", 0))

    # ------------------------------------------------------------------ calls
    def calls_to(self, *patterns: str) -> Iterator[ast.Call]:
        """Calls whose canonical name matches one of the patterns (fnmatch globs allowed)."""
        exact = {p for p in patterns if "*" not in p and "?" not in p}
        globs = [p for p in patterns if p not in exact]
        for call in self.calls:
            name = self._call_names.get(call)
            if name is None:
                continue
            if name in exact or any(fnmatch.fnmatchcase(name, g) for g in globs):
                yield call

    def method_calls(self, *methods: str) -> Iterator[ast.Call]:
        """Calls of `<anything>.method(...)`, whatever the receiver."""
        wanted = set(methods)
        for call in self.calls:
            if isinstance(call.func, ast.Attribute) and call.func.attr in wanted:
                yield call

    def call_sites(self, func: ast.AST) -> list[ast.Call]:
        """Calls of a function defined in this module (`f(...)`, `self.f(...)`)."""
        name = getattr(func, "name", None)
        if not name:
            return []
        if name == "__init__":
            klass = self.enclosing_class(func)
            if klass is None:
                return []
            name = klass.name
            return [c for c in self._calls_by_name().get(name, ()) if isinstance(c.func, ast.Name)]
        return list(self._calls_by_name().get(name, ()))

    def _calls_by_name(self) -> dict[str, list[ast.Call]]:
        """Calls indexed by the local name they call (`f(...)`, `self.f(...)`, `cls.f(...)`),
        built once: call_sites() is asked for constantly while following parameters."""
        index = self._call_index
        if index is None:
            index = {}
            for call in self.calls:
                f = call.func
                if isinstance(f, ast.Name):
                    index.setdefault(f.id, []).append(call)
                elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls"):
                    index.setdefault(f.attr, []).append(call)
            self._call_index = index
        return index

    @staticmethod
    def bind_arguments(call: ast.Call, func: ast.AST) -> dict[str, ast.expr]:
        """Map a module-local function's parameter names to the argument expressions of a call."""
        args = func.args  # type: ignore[attr-defined]
        params = [a.arg for a in args.posonlyargs + args.args]
        if params and (getattr(func, "name", "") == "__init__" or (params[0] in ("self", "cls") and isinstance(call.func, ast.Attribute))):
            params = params[1:]  # `Cls(...)` and `self.f(...)` pass the instance implicitly
        return bind_parameters(params, call)

    # ------------------------------------------------------------------ values
    def assignment_at(self, key: str, node: ast.AST) -> Assignment | None:
        """The assignment of `key` that is in force at `node`: the last one before it in the
        same scope, else in the enclosing scopes (module constants), else for `self.x` the
        assignments in the class's methods."""
        records = self.assignments.get(key)
        if not records:
            return None
        position = self.order.get(node, 1 << 60)
        # a comprehension variable is visible inside its comprehension only (not in the
        # first iterable), and there it shadows everything else
        comprehension_bound = []
        for r in records:
            if isinstance(r.stmt, ast.comprehension):
                comp = self.parents.get(r.stmt)
                if comp is not None and self._inside(node, comp) and not self._inside(node, r.stmt.iter):
                    comprehension_bound.append(r)
        if comprehension_bound:
            return max(comprehension_bound, key=lambda r: r.index)
        records = [r for r in records if not isinstance(r.stmt, ast.comprehension)]
        if not records:
            return None
        scope = self.scope(node)
        scopes = [scope]
        for anc in self.ancestors(node):
            if isinstance(anc, (ast.Module, *_FUNCS)) and anc not in scopes:
                scopes.append(anc)
        if self.tree not in scopes:
            scopes.append(self.tree)
        for sc in scopes:
            in_scope = [r for r in records if r.scope is sc]
            if not in_scope:
                continue
            earlier = [r for r in in_scope if r.index < position and not self._in_binding_source(node, r)]
            if earlier:
                return earlier[-1]
            if sc is not scope:  # module constant defined below a function that uses it
                return in_scope[-1]
        if key.startswith(("self.", "cls.")):
            klass = self.enclosing_class(node)
            if klass is not None:
                mine = [r for r in records if self.enclosing_class(r.stmt) is klass]
                init = [r for r in mine if getattr(self.enclosing_function(r.stmt), "name", "") == "__init__"]
                if init:
                    return init[-1]
                if mine:
                    return mine[-1]
        return None

    def _inside(self, node: ast.AST, stmt: ast.AST) -> bool:
        return stmt is node or any(a is stmt for a in self.ancestors(node))

    def _in_binding_source(self, node: ast.AST, record: Assignment) -> bool:
        """Is `node` part of what a binding is computed from, so that it still sees the
        previous binding? `x` on the right of `x = f(x)`, in the iterable of `for x in g(x)`,
        in the context expression of `with open(x) as x`. Uses in a `for`/`with` body or a
        function body (parameters) see the new binding."""
        stmt = record.stmt
        if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            return False
        if isinstance(stmt, (ast.For, ast.AsyncFor, ast.comprehension)):
            sources: list[ast.AST] = [stmt.iter]
        elif isinstance(stmt, (ast.With, ast.AsyncWith)):
            sources = [item.context_expr for item in stmt.items]
        elif isinstance(stmt, (ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr)):
            return self._inside(node, stmt)
        else:
            return self._inside(node, stmt)
        return any(self._inside(node, src) for src in sources if src is not None)

    def resolve(self, node: ast.AST | None, depth: int = 0) -> ast.AST | None:
        """Follow names to the expression they were assigned from (`x = y; y = Call()`)."""
        while node is not None and depth < 25:
            depth += 1
            if isinstance(node, (ast.Name, ast.Attribute)):
                key = self.key(node)
                record = self.assignment_at(key, node) if key else None
                if record is not None and record.value is None and is_parameter(record):
                    source = self._parameter_source(record.stmt, key, depth)  # type: ignore[arg-type]
                    if source is None:
                        return node
                    node = source
                    continue
                if record is None or record.value is None or record.augmented:
                    return node
                node = record.value
                continue
            return node
        return node

    def parameter_arguments(self, func: ast.AST, name: str) -> list[ast.expr] | None:
        """What each call of a module-local function passes for one parameter (the default
        where a call does not pass it). None when a call cannot be bound (no default, `*args`)."""
        default = param_default(func, name)
        out = []
        for call in self.call_sites(func):
            bound = self.bind_arguments(call, func)
            if name in bound:
                out.append(bound[name])
            elif default is not None:
                out.append(default)
            else:
                return None
        return out

    def _parameter_source(self, func: ast.AST, name: str, depth: int) -> ast.AST | None:
        """The expression a parameter receives, for following data across functions: what
        every call site passes when they agree (after resolving); with no call site in the
        module, the module-level variable of the same name (a reader's reading of
        `def train(model): ...` next to `model = resnet50(...)`), else the default."""
        if isinstance(func, ast.Lambda):
            return None  # called from wherever it is passed to: unknown
        return _memoised(self._param_sources, (id(func), name), None, lambda: self._compute_parameter_source(func, name, depth))

    def _compute_parameter_source(self, func: ast.AST, name: str, depth: int) -> ast.AST | None:
        if _framework_hook(self, func) and not self.call_sites(func):
            return None  # fit()/the module's __call__ pass these arguments, not the defaults
        arguments = self.parameter_arguments(func, name)
        if arguments:
            resolved = [self.resolve(a, depth + 1) for a in arguments]
            first = resolved[0]
            if all(r is first for r in resolved):
                return first
            return None
        if arguments is None:
            return None
        outer = [r for r in self.assignments.get(name, ()) if r.scope is self.tree and r.value is not None and not r.augmented]
        if outer:
            return outer[-1].value
        return param_default(func, name)

    def value(self, node: ast.AST | None, depth: int = 0) -> Any:
        """The Python value of a constant-like expression, or UNKNOWN."""
        if node is None or depth > 30:
            return UNKNOWN
        d = depth + 1
        if isinstance(node, ast.Constant):
            return node.value
        if isinstance(node, (ast.List, ast.Tuple, ast.Set)):
            if any(isinstance(e, ast.Starred) for e in node.elts):
                return UNKNOWN
            return tuple(self.value(e, d) for e in node.elts)
        if isinstance(node, ast.Dict):
            out = {}
            for k, v in zip(node.keys, node.values):
                if k is None:
                    return UNKNOWN
                kv = self.value(k, d)
                if kv is UNKNOWN:
                    return UNKNOWN
                out[kv] = v  # values stay nodes: evaluated on access
            return out
        if isinstance(node, ast.UnaryOp):
            operand = self.value(node.operand, d)
            if isinstance(operand, (int, float)) and not isinstance(operand, bool):
                if isinstance(node.op, ast.USub):
                    return -operand
                if isinstance(node.op, ast.UAdd):
                    return operand
            if isinstance(node.op, ast.Not) and operand is not UNKNOWN:
                return not operand
            return UNKNOWN
        if isinstance(node, ast.BinOp):
            return _binop(node.op, self.value(node.left, d), self.value(node.right, d))
        if isinstance(node, ast.Name):
            if node.id in knowledge.STAT_CONSTANTS and node.id not in self.assignments:
                return knowledge.STAT_CONSTANTS[node.id]
            record = self.assignment_at(node.id, node)
            if record is None:
                return self._constant_by_import(node)
            if record.augmented:
                return UNKNOWN
            if record.value is None:
                if isinstance(record.stmt, (ast.FunctionDef, ast.AsyncFunctionDef)):
                    return self._parameter_value(record.stmt, node.id, d)
                return UNKNOWN
            return self.value(record.value, d)
        if isinstance(node, ast.Attribute):
            qual = self.qualname(node)
            if qual and last(qual) in knowledge.STAT_CONSTANTS:
                return knowledge.STAT_CONSTANTS[last(qual)]
            key = self.key(node)
            record = self.assignment_at(key, node) if key else None
            if record is not None and record.value is not None and not record.augmented:
                return self.value(record.value, d)
            return self._attribute_value(node, d)
        if isinstance(node, ast.Subscript):
            container = self.value(node.value, d)
            index = self.value(node.slice, d)
            if index is UNKNOWN or container is UNKNOWN:
                return UNKNOWN
            try:
                item = container[index]
            except (KeyError, IndexError, TypeError):
                return UNKNOWN
            return self.value(item, d) if isinstance(item, ast.AST) else item
        if isinstance(node, ast.Call):
            return self._call_value(node, d)
        return UNKNOWN

    def _constant_by_import(self, node: ast.Name) -> Any:
        qual = self.imports.get(node.id)
        if qual and last(qual) in knowledge.STAT_CONSTANTS:
            return knowledge.STAT_CONSTANTS[last(qual)]
        return UNKNOWN

    def _parameter_value(self, func: ast.AST, name: str, depth: int) -> Any:
        """A parameter's value when every call in the module (and the default) agree."""
        return _memoised(self._param_values, (id(func), name), UNKNOWN, lambda: self._compute_parameter_value(func, name, depth))

    def _compute_parameter_value(self, func: ast.AST, name: str, depth: int) -> Any:
        if _framework_hook(self, func) and not self.call_sites(func):
            return UNKNOWN  # `def call(self, x, training=False)`: fit() passes training=True
        candidates = []
        default = param_default(func, name)
        for call in self.call_sites(func):
            bound = self.bind_arguments(call, func)
            if name in bound:
                candidates.append(self.value(bound[name], depth))
            elif default is not None:
                candidates.append(self.value(default, depth))
            else:
                return UNKNOWN
        if not candidates:
            if default is not None:
                candidates.append(self.value(default, depth))
            else:  # no caller in this module: a same-named module constant is what a reader assumes
                outer = [r for r in self.assignments.get(name, ()) if r.scope is self.tree and r.value is not None and not r.augmented]
                if outer:
                    candidates.append(self.value(outer[-1].value, depth))
        if candidates and all(c is not UNKNOWN and c == candidates[0] for c in candidates):
            return candidates[0]
        return UNKNOWN

    def _attribute_value(self, node: ast.Attribute, depth: int) -> Any:
        """`args.lr` (argparse default), `CFG.lr` / `cfg.lr` (class attribute), `config.lr`."""
        base = node.value
        if isinstance(base, ast.Name):
            target = self.resolve(base)
            if isinstance(target, ast.Call):
                name = self.call_name(target) or ""
                method = target.func.attr if isinstance(target.func, ast.Attribute) else ""
                if method in ("parse_args", "parse_known_args") or name.endswith(("parse_args", "parse_known_args")):
                    if node.attr in self._argparse:
                        return self.value(self._argparse[node.attr], depth)
                    return UNKNOWN
                if isinstance(target.func, ast.Name) and target.func.id in self.classes:
                    return self._class_attribute(self.classes[target.func.id], node.attr, depth)
            elif isinstance(target, ast.Subscript) and isinstance(target.value, ast.Call):
                call = target.value
                if isinstance(call.func, ast.Attribute) and call.func.attr == "parse_known_args" and node.attr in self._argparse:
                    return self.value(self._argparse[node.attr], depth)
            if base.id in self.classes:
                return self._class_attribute(self.classes[base.id], node.attr, depth)
        return UNKNOWN

    def _class_attribute(self, klass: ast.ClassDef, attr: str, depth: int) -> Any:
        for stmt in klass.body:
            targets = stmt.targets if isinstance(stmt, ast.Assign) else [stmt.target] if isinstance(stmt, ast.AnnAssign) else []
            for t in targets:
                if isinstance(t, ast.Name) and t.id == attr and getattr(stmt, "value", None) is not None:
                    return self.value(stmt.value, depth)
        for stmt in ast.walk(klass):
            if isinstance(stmt, ast.Assign):
                for t in stmt.targets:
                    if isinstance(t, ast.Attribute) and t.attr == attr and isinstance(t.value, ast.Name) and t.value.id == "self":
                        return self.value(stmt.value, depth)
        return UNKNOWN

    def _call_value(self, node: ast.Call, depth: int) -> Any:
        func = node.func
        fname = func.id if isinstance(func, ast.Name) else None
        if fname in ("len", "float", "int", "abs", "round", "min", "max", "list", "tuple", "str", "sorted") and node.args:
            args = [self.value(a, depth) for a in node.args]
            if any(a is UNKNOWN for a in args):
                return UNKNOWN
            try:
                if fname == "len":
                    return len(args[0])
                if fname in ("min", "max") and len(args) > 1:
                    return {"min": min, "max": max}[fname](args)
                return {"float": float, "int": int, "abs": abs, "round": round, "min": min, "max": max, "list": tuple, "tuple": tuple, "str": str, "sorted": lambda v: tuple(sorted(v))}[fname](*args)
            except Exception:  # noqa: BLE001 - a value we cannot compute is simply unknown
                return UNKNOWN
        if fname == "dict" and not node.args:
            return {kw.arg: kw.value for kw in node.keywords if kw.arg}
        if isinstance(func, ast.Attribute) and func.attr == "get" and node.args:
            container = self.value(func.value, depth)
            key = self.value(node.args[0], depth)
            if isinstance(container, dict) and key in container:
                item = container[key]
                return self.value(item, depth) if isinstance(item, ast.AST) else item
            if len(node.args) > 1 and (container is UNKNOWN or isinstance(container, dict)):
                return UNKNOWN
        qual = self.call_name(node) or ""
        if qual in ("numpy.array", "numpy.asarray", "torch.tensor", "torch.Tensor", "numpy.float32") and node.args:
            return self.value(node.args[0], depth)
        return UNKNOWN

    def number(self, node: ast.AST | None) -> float | int | None:
        v = self.value(node)
        if isinstance(v, bool) or not isinstance(v, (int, float)):
            return None
        return v

    def string(self, node: ast.AST | None) -> str | None:
        v = self.value(node)
        return v if isinstance(v, str) else None

    def string_fragments(self, node: ast.AST | None) -> str:
        """Every literal string piece an expression is built from (for path heuristics)."""
        if node is None:
            return ""
        pieces = []
        target = self.resolve(node) if isinstance(node, (ast.Name, ast.Attribute)) else node
        for sub in ast.walk(target if target is not None else node):
            if isinstance(sub, ast.Constant) and isinstance(sub.value, str):
                pieces.append(sub.value)
            elif isinstance(sub, ast.Name) and sub is not target:
                v = self.value(sub)
                if isinstance(v, str):
                    pieces.append(v)
        return " ".join(pieces)

    # ------------------------------------------------------------------ models
    @property
    def models(self) -> list[ModelInfo]:
        if self._models is None:
            from auditor.analysis.models import collect_models

            self._models = collect_models(self)
        return self._models

    def model_of(self, node: ast.AST | None) -> ModelInfo | None:
        """The pretrained-architecture constructor an expression evaluates to, if any."""
        from auditor.analysis.models import model_of

        return model_of(self, node)

    @property
    def freezes(self) -> list[FreezeEvent]:
        if self._freezes is None:
            from auditor.analysis.freezing import collect_freezes

            self._freezes = collect_freezes(self)
        return self._freezes


# ---------------------------------------------------------------------- helpers
def _memoised(cache: dict, key: Any, pending: Any, compute: Any) -> Any:
    """The answer for a (function, parameter) depends on nothing else, so it is computed once.
    While it is being computed the key reads `pending`: chains of helpers calling helpers stay
    linear and cycles (`f` passes its parameter to `g`, `g` to `f`) end."""
    if key in cache:
        return cache[key]
    cache[key] = pending
    cache[key] = result = compute()
    return result


def bind_parameters(params: list[str], call: ast.Call) -> dict[str, ast.expr]:
    """Parameter name -> argument expression for a call, given the parameters it fills
    positionally (stops at `*args`; keywords by name; `**kwargs` is not expanded)."""
    bound: dict[str, ast.expr] = {}
    for name, value in zip(params, call.args):
        if isinstance(value, ast.Starred):
            break
        bound[name] = value
    for kw in call.keywords:
        if kw.arg:
            bound[kw.arg] = kw.value
    return bound


def kwarg(call: ast.Call, name: str, position: int | None = None) -> ast.expr | None:
    """A call's argument by keyword, or by position when it may be passed positionally."""
    for kw in call.keywords:
        if kw.arg == name:
            return kw.value
    if position is not None and len(call.args) > position and not any(isinstance(a, ast.Starred) for a in call.args[: position + 1]):
        return call.args[position]
    return None



_BINDING_NODES = frozenset(
    {ast.Assign, ast.AnnAssign, ast.AugAssign, ast.NamedExpr, ast.For, ast.AsyncFor, ast.comprehension, ast.With, ast.AsyncWith}
)


def _all_args(args: ast.arguments) -> Iterable[ast.arg]:
    yield from args.posonlyargs
    yield from args.args
    if args.vararg:
        yield args.vararg
    yield from args.kwonlyargs
    if args.kwarg:
        yield args.kwarg


#: methods a framework calls with its own arguments (Keras, PyTorch, Lightning)
FRAMEWORK_HOOKS = frozenset(
    {"call", "__call__", "forward", "train_step", "test_step", "predict_step", "training_step", "validation_step",
     "test_step", "predict_step", "build", "compute_output_shape", "on_epoch_end", "on_batch_end", "on_train_batch_end"}
)


def _framework_hook(ctx: "ModuleContext", func: ast.AST) -> bool:
    return getattr(func, "name", None) in FRAMEWORK_HOOKS and isinstance(ctx.parents.get(func), ast.ClassDef)


def is_parameter(record: Assignment) -> bool:
    """Is this binding a parameter of a function or lambda (bound by the definition)?"""
    return isinstance(record.stmt, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)) and record.scope is record.stmt



def param_default(func: ast.AST, name: str) -> ast.expr | None:
    """The default expression of a function's parameter, None when it has none."""
    args = func.args  # type: ignore[attr-defined]
    positional = args.posonlyargs + args.args
    defaults = [None] * (len(positional) - len(args.defaults)) + list(args.defaults)
    for arg, default in zip(positional, defaults):
        if arg.arg == name:
            return default
    for arg, default in zip(args.kwonlyargs, args.kw_defaults):
        if arg.arg == name:
            return default
    return None



def _binop(op: ast.operator, left: Any, right: Any) -> Any:
    if left is UNKNOWN or right is UNKNOWN:
        return UNKNOWN
    try:
        if isinstance(op, ast.Add):
            return left + right
        if isinstance(op, ast.Sub):
            return left - right
        if isinstance(op, ast.Mult):
            if isinstance(left, (tuple, str)) and isinstance(right, int) and right > 10_000:
                return UNKNOWN
            return left * right
        if isinstance(op, ast.Div):
            return left / right
        if isinstance(op, ast.FloorDiv):
            return left // right
        if isinstance(op, ast.Pow):
            if isinstance(right, (int, float)) and abs(right) > 64:
                return UNKNOWN
            return left**right
        if isinstance(op, ast.Mod) and not isinstance(left, str):
            return left % right
    except Exception:  # noqa: BLE001 - e.g. division by zero: unknown, not a crash
        return UNKNOWN
    return UNKNOWN
