"""SEC002: a model or checkpoint loaded with pickle (or joblib, dill, cloudpickle)."""

from __future__ import annotations

import ast
import re

from auditor.analysis.context import ModuleContext, kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from ._optimizers import origins

#: canonical loader -> how its first argument is read
LOADERS = {
    "pickle.load": "file",
    "pickle.loads": "bytes",
    "_pickle.load": "file",
    "_pickle.loads": "bytes",
    "cPickle.load": "file",
    "cPickle.loads": "bytes",
    "six.moves.cPickle.load": "file",
    "six.moves.cPickle.loads": "bytes",
    "pickle5.load": "file",
    "pickle5.loads": "bytes",
    "dill.load": "file",
    "dill.loads": "bytes",
    "cloudpickle.load": "file",
    "cloudpickle.loads": "bytes",
    "joblib.load": "file",
    "sklearn.externals.joblib.load": "file",
    "pandas.read_pickle": "path",
}
_FILE_KWARGS = ("file", "filename", "filepath_or_buffer", "data")
#: pickle-compatible modules re-exported elsewhere (`from ray import cloudpickle`,
#: `joblib.externals.cloudpickle`): `<anything>.<module>.load(s)`
_PICKLE_MODULES = {"pickle", "cPickle", "_pickle", "pickle5", "cloudpickle", "dill"}
#: methods that take model weights: what is passed to them came from a checkpoint
_WEIGHT_SINKS = {"load_state_dict", "set_weights", "set_state_dict"}

#: file extensions that hold models (pickle's own .pkl/.pickle say nothing either way)
MODEL_EXTENSIONS = (".pt", ".pth", ".ckpt", ".bin", ".joblib", ".model", ".sav", ".h5", ".hdf5", ".mdl")
_MODEL_WORDS = {
    "model", "models", "weights", "checkpoint", "checkpoints", "ckpt", "classifier", "clf", "net", "network",
    "estimator", "regressor", "pretrained", "predictor", "learner", "booster", "svm", "xgb", "xgboost", "lgbm",
    "lightgbm", "catboost", "statedict",
}
_DATA_WORDS = {
    "label", "labels", "class", "classes", "history", "hist", "dataset", "datasets", "data", "vocab", "vocabulary",
    "features", "feature", "embeddings", "embedding", "stats", "statistics", "results", "result", "metrics", "config",
    "cfg", "cache", "split", "splits", "index", "mapping", "mappings", "train", "test", "val", "valid",
    "targets", "meta", "metadata", "annotations", "ids", "names", "preds", "predictions", "scores", "losses", "log",
    "logs", "snapshot", "batch", "images", "texts", "samples", "words", "tokens", "df", "frame", "table", "records",
    "cifar", "mnist", "imdb", "corpus", "captions", "keys", "counts", "idx",
}
#: data words that only mean data as variable names (`x = pickle.load(f)`), not in file names
_DATA_TARGET_WORDS = {"x", "y", "xs", "ys"}
#: methods whose use on the loaded object shows it is a model
_MODEL_METHODS = {"predict", "predict_proba", "decision_function", "forward", "load_state_dict", "eval", "score_samples", "fit"}
_OPENERS = {
    "gzip.open", "bz2.open", "lzma.open", "io.open", "codecs.open", "builtins.open", "fsspec.open", "smart_open.open",
    "tensorflow.io.gfile.GFile", "tensorflow.gfile.GFile", "tensorflow.gfile.Open", "io.BytesIO",
    "urllib.request.urlopen", "requests.get", "tarfile.open", "zipfile.ZipFile",
}
_GENERIC_IDENTIFIERS = {"os", "path", "join", "open", "f", "fh", "fp", "file", "rb", "read", "pathlib", "str", "format", "self", "args", "cfg", "config", "opt", "opts", "get", "with_suffix", "joinpath", "as_posix", "content", "getvalue", "read_bytes", "dir", "root"}


def words(text: str) -> list[str]:
    """'bestModel_v2.pkl' -> ['best', 'model', 'v', '2', 'pkl']."""
    out = []
    for piece in re.split(r"[^A-Za-z0-9]+", text):
        out.extend(m.lower() for m in re.findall(r"[A-Z]+(?![a-z])|[A-Z]?[a-z]+|\d+", piece))
    return out


def _is_model_word(word: str) -> bool:
    if word in _MODEL_WORDS:
        return True
    return any(w in word for w in ("model", "ckpt", "checkpoint", "classifier", "estimator")) or (word.endswith("net") and len(word) > 4)


def looks_like_model(text: str) -> bool:
    low = text.lower()
    return any(_is_model_word(w) for w in words(text)) or "state_dict" in low or "statedict" in low


def looks_like_data(text: str, target: bool = False) -> bool:
    return any(w in _DATA_WORDS or (target and w in _DATA_TARGET_WORDS) for w in words(text))


class PickleLoadModel(StaticRule):
    """
    ## What it does
    Flags `pickle.load`/`loads` (also `_pickle`, `cPickle`, `dill`, `cloudpickle`, `joblib.load` and a model-like `pandas.read_pickle`) of a model or checkpoint.

    A load counts as a model load when the file looks like one (`.pt`, `.pth`, `.ckpt`, `.bin`,
    `.joblib`, `.sav`, `.model`, or a name with model, weights, checkpoint, ckpt, classifier,
    clf, net, estimator ...), found through constants, `open(path, "rb")` wrappers, `with open(...)
    as f`, `os.path.join` and f-strings, or when the result goes to a model-like name (`model`,
    `clf`, `net`, `estimator`, `weights`, `state_dict`, `checkpoint`) or is used like a model
    (`.predict(...)`). Pickles of plain data (`labels.pkl`, `history.pkl`, `dataset.pkl`) stay
    silent.

    ## Why is this bad?
    Unpickling runs code: a pickle names callables that the loader imports and calls (`__reduce__`),
    so loading a model file executes whatever its author put there. Model files are what people
    download and share, which makes them the usual carrier. Formats that store only tensors
    cannot do this.

    ## Example
    ```python
    import pickle

    with open("models/resnet_finetuned.pkl", "rb") as f:
        model = pickle.load(f)
    ```

    ## Use instead
    ```python
    from safetensors.torch import load_file

    state_dict = load_file("models/resnet_finetuned.safetensors")
    ```

    ## References
    - FRAMEWORK_FACTS 6.1: safetensors holds no executable content [ST-*]; `torch.load(...,
      weights_only=True)` and its allow-list [PT-sermod]; 6.2 for `.keras` with `safe_mode`.
    - Python docs, `pickle`: "It is possible to construct malicious pickle data which will execute
      arbitrary code during unpickling. Never unpickle data that could have come from an untrusted
      source."
    - joblib docs, `joblib.load`: uses pickle, same warning.
    """

    code = "SEC002"
    name = "pickle-load-model"
    category = "security"
    severity = Severity.ERROR
    requires = frozenset({"pickle", "Pickle", "joblib", "dill"})
    message = "{call} of {subject} ({reason}): unpickling runs whatever code the file carries, and model files are what gets shared and downloaded"
    fix = (
        "Store weights in a format without code: safetensors (safetensors.torch.save_file / load_file), "
        "torch.load(..., weights_only=True) for torch checkpoints, a .keras file loaded with safe_mode=True, "
        "or skops.io for scikit-learn; unpickle only files you produced yourself and verify their hash "
        "(an explicit --trust-style opt-in)."
    )

    def check(self, ctx: ModuleContext):
        for call in ctx.calls:
            name = ctx.call_name(call) or ""
            kind = LOADERS.get(name) or _reexported_loader(name)
            if kind is None:
                if _is_unpickler_load(ctx, call):
                    kind, name = "file", "pickle.Unpickler(...).load"
                    source = call.func.value.args[0] if call.func.value.args else None  # type: ignore[attr-defined]
                else:
                    continue
            else:
                source = kwarg(call, "file", 0)
                if source is None:
                    source = next((kw.value for kw in call.keywords if kw.arg in _FILE_KWARGS), None)
            verdict = self._judge(ctx, call, source)
            if verdict is None:
                continue
            subject, reason = verdict
            yield self.finding(ctx, call, call=name, subject=subject, reason=reason, evidence={"loader": name, "reason": reason})

    def _judge(self, ctx: ModuleContext, call: ast.Call, source: ast.AST | None) -> tuple[str, str] | None:
        targets = _target_names(ctx, call)
        paths = _path_nodes(ctx, source) if source is not None else []
        flat = next((f for f in (flatten(ctx, p) for p in paths) if f.strip("*")), "")
        basename = flat.rpartition("/")[2]
        if not re.search(r"[A-Za-z]", basename.replace("*", "")):
            basename = ""
        subject = repr(basename) if basename else (ast.unparse(source)[:40] if source is not None else "a pickle")
        model_target = next((t for t in targets if looks_like_model(t) and not looks_like_data(t, True)), None)
        if model_target is not None:
            if ctx.functions.get(model_target) and isinstance(ctx.parent(call), ast.Return):
                return subject, f"returned by {model_target}()"
            return subject, f"result assigned to {model_target!r}"
        if basename:
            stem_words = words(basename)
            if looks_like_model(basename) and not any(w in _DATA_WORDS for w in stem_words):
                return subject, "the file name looks like a model/checkpoint"
            if basename.lower().endswith(MODEL_EXTENSIONS) and not any(w in _DATA_WORDS for w in stem_words):
                return subject, f"{basename.rsplit('.', 1)[-1]} is a model/checkpoint extension"
        sink = _feeds_weights(ctx, call)
        if sink:
            return subject, sink
        if any(looks_like_data(t, True) for t in targets):
            return None
        if basename and looks_like_data(basename):
            return None
        used = _used_as_model(ctx, call)
        if used:
            return subject, f"the result is used as a model ({used})"
        if basename and "*" not in basename:
            return None  # a named file that says nothing either way (args.pkl in a models/ folder)
        idents = _identifiers(ctx, ([source] if source is not None else []) + paths)
        hit = next((i for i in idents if looks_like_model(i) and not looks_like_data(i)), None)
        if hit is not None:
            return subject, f"its path comes from {hit!r}"
        return None


def flatten(ctx: ModuleContext, node: ast.AST | None, depth: int = 0) -> str:
    """A path expression as text, unknown pieces as '*': `os.path.join(MODEL_DIR, f"clf_{v}.pkl")`
    -> 'models/clf_*.pkl'."""
    if node is None or depth > 8:
        return "*"
    d = depth + 1
    if isinstance(node, ast.Constant):
        return node.value if isinstance(node.value, str) else ("*" if not isinstance(node.value, (int, float)) else str(node.value))
    if isinstance(node, ast.JoinedStr):
        return "".join(flatten(ctx, v, d) for v in node.values)
    if isinstance(node, ast.FormattedValue):
        return flatten(ctx, node.value, d)
    if isinstance(node, ast.BinOp):
        left, right = flatten(ctx, node.left, d), flatten(ctx, node.right, d)
        if isinstance(node.op, ast.Div):
            return f"{left}/{right}"
        if isinstance(node.op, ast.Add):
            return left + right
        if isinstance(node.op, ast.Mod):
            return left
        return "*"
    if isinstance(node, (ast.Name, ast.Attribute)):
        value = ctx.value(node)
        if isinstance(value, str):
            return value
        target = ctx.resolve(node)
        if target is not None and target is not node and not isinstance(target, (ast.Name, ast.Attribute)):
            return flatten(ctx, target, d)
        return "*"
    if isinstance(node, ast.Call):
        name = ctx.call_name(node) or ""
        func = node.func
        if name in ("os.path.join", "posixpath.join", "pathlib.Path", "pathlib.PurePath", "os.path.abspath", "os.path.expanduser") or (
            isinstance(func, ast.Attribute) and func.attr == "joinpath"
        ):
            pieces = [flatten(ctx, a, d) for a in node.args]
            if isinstance(func, ast.Attribute) and func.attr == "joinpath":
                pieces.insert(0, flatten(ctx, func.value, d))
            return "/".join(pieces) if pieces else "*"
        if isinstance(func, ast.Name) and func.id == "str" and node.args:
            return flatten(ctx, node.args[0], d)
        if isinstance(func, ast.Attribute) and func.attr == "format":
            return flatten(ctx, func.value, d).replace("{}", "*")
        if isinstance(func, ast.Attribute) and func.attr in ("as_posix", "resolve", "expanduser", "absolute", "strip"):
            return flatten(ctx, func.value, d)
        if isinstance(func, ast.Attribute) and func.attr == "with_suffix" and node.args:
            base = flatten(ctx, func.value, d)
            return base.rsplit(".", 1)[0] + flatten(ctx, node.args[0], d)
        return "*"
    return "*"


def _is_unpickler_load(ctx: ModuleContext, call: ast.Call) -> bool:
    func = call.func
    return (
        isinstance(func, ast.Attribute)
        and func.attr == "load"
        and isinstance(func.value, ast.Call)
        and (ctx.call_name(func.value) or "") in ("pickle.Unpickler", "_pickle.Unpickler", "cPickle.Unpickler", "dill.Unpickler")
    )


def _target_names(ctx: ModuleContext, call: ast.Call) -> list[str]:
    """Names the loaded object is bound to: `model = pickle.load(f)`, `self.clf = ...`,
    `return pickle.load(f)` inside `def load_model()`, `ckpt = pickle.load(f)["state_dict"]`."""
    names: list[str] = []
    node: ast.AST = call
    parent = ctx.parent(node)
    while isinstance(parent, (ast.Subscript, ast.Attribute)) and parent.value is node:
        node = parent
        parent = ctx.parent(node)
    if isinstance(parent, (ast.Assign, ast.AnnAssign, ast.NamedExpr)):
        targets = parent.targets if isinstance(parent, ast.Assign) else [parent.target]
        for t in targets:
            for sub in ast.walk(t):
                if isinstance(sub, ast.Name):
                    names.append(sub.id)
                elif isinstance(sub, ast.Attribute):
                    names.append(sub.attr)
    elif isinstance(parent, ast.Return):
        func = ctx.enclosing_function(parent)
        if func is not None:
            names.append(func.name)
    elif isinstance(parent, ast.keyword) and parent.arg:
        names.append(parent.arg)
    return names


def _reexported_loader(name: str) -> str | None:
    """'ray.cloudpickle.load' -> "file", 'joblib.externals.cloudpickle.loads' -> "bytes"."""
    parts = name.split(".")
    if len(parts) >= 3 and parts[-2] in _PICKLE_MODULES and parts[-1] in ("load", "loads"):
        return "file" if parts[-1] == "load" else "bytes"
    return None


def _feeds_weights(ctx: ModuleContext, call: ast.Call) -> str | None:
    """The unpickled object (or an item of it) goes to `load_state_dict` / `set_weights`:
    `net.load_state_dict(pickle.load(f))`, `state = pickle.load(f)` then
    `net.load_state_dict(state["net"])`. Then it is a checkpoint whatever its name."""
    def root(node: ast.AST) -> ast.AST:
        while isinstance(node, ast.Subscript):
            node = node.value
        return node

    def sink_of(arg_owner: ast.AST) -> str | None:
        if isinstance(arg_owner, ast.Call) and isinstance(arg_owner.func, ast.Attribute) and arg_owner.func.attr in _WEIGHT_SINKS:
            return arg_owner.func.attr
        return None

    node: ast.AST = call
    parent = ctx.parent(node)
    while isinstance(parent, ast.Subscript) and parent.value is node:
        node, parent = parent, ctx.parent(parent)
    direct = sink_of(parent)
    if direct and node in getattr(parent, "args", []):
        return f"passed to {direct}()"
    stmt = ctx.statement(call)
    if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1 or root(stmt.value) is not call:
        return None
    key = ctx.key(stmt.targets[0])
    if not key:
        return None
    scope = ctx.enclosing_function(stmt)
    for other in ctx.method_calls(*_WEIGHT_SINKS):
        if ctx.order.get(other, 0) <= ctx.order.get(stmt, 0) or ctx.enclosing_function(other) is not scope:
            continue
        for arg in other.args:
            base = root(arg)
            if isinstance(base, (ast.Name, ast.Attribute)) and ctx.key(base) == key:
                return f"{ast.unparse(arg)[:40]} is passed to {other.func.attr}()"  # type: ignore[attr-defined]
    return None


def _used_as_model(ctx: ModuleContext, call: ast.Call) -> str | None:
    stmt = ctx.statement(call)
    if not isinstance(stmt, ast.Assign) or stmt.value is not call or len(stmt.targets) != 1:
        return None
    key = ctx.key(stmt.targets[0])
    if not key:
        return None
    for other in ctx.method_calls(*_MODEL_METHODS):
        if ctx.key(other.func.value) == key and ctx.order.get(other, 0) > ctx.order.get(stmt, 0):  # type: ignore[attr-defined]
            return f"{key}.{other.func.attr}(...)"  # type: ignore[attr-defined]
    return None


def _path_nodes(ctx: ModuleContext, source: ast.AST) -> list[ast.AST]:
    """The expressions naming the file: through `open(path, "rb")`, `with ... as f`,
    `f.read()`, `Path(p).open("rb")`, `requests.get(url).content`."""
    out: list[ast.AST] = []
    stack = [source]
    seen: set[int] = set()
    while stack and len(seen) < 40:
        node = stack.pop()
        if node is None or id(node) in seen:
            continue
        seen.add(id(node))
        for o in origins(ctx, node):
            if isinstance(o, ast.Attribute) and o.attr in ("content", "raw", "buffer"):
                stack.append(o.value)
                continue
            if isinstance(o, ast.Call):
                name = ctx.call_name(o) or ""
                func = o.func
                if (isinstance(func, ast.Name) and func.id == "open") or name in _OPENERS:
                    if o.args:
                        stack.append(o.args[0])
                    else:
                        out.append(o)
                    continue
                if isinstance(func, ast.Attribute) and func.attr in ("read", "read_bytes", "getvalue", "open", "readall"):
                    stack.append(func.value)
                    continue
            out.append(o)
    return out


def _identifiers(ctx: ModuleContext, nodes: list[ast.AST]) -> list[str]:
    out = []
    for node in nodes:
        for sub in ast.walk(node):
            name = None
            if isinstance(sub, ast.Name):
                name = sub.id
            elif isinstance(sub, ast.Attribute):
                name = sub.attr
            if name and name.lower() not in _GENERIC_IDENTIFIERS:
                out.append(name)
    return out
