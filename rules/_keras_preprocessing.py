"""Shared analysis for the Keras preprocessing rules (PRE001, PRE002, PRE005).

What a reader does with a Keras transfer-learning script, done once per module and shared by
the three rules:

* find every `preprocess_input` of a `keras.applications` module and where it is used (called,
  or passed as `preprocessing_function=`, to `ds.map(...)`, to `layers.Lambda(...)`), resolving
  imports, aliases, assignments and function parameters back to the module it came from;
* trace image data backwards through assignments, arithmetic, `tf.cast`/`astype`/`resize`,
  dataset chains (`.map/.batch/...`), `ImageDataGenerator(...).flow*`, Keras layers
  (`Rescaling`, `Normalization`, `Lambda`, `Sequential` blocks) and local helper functions, as
  an ordered list of normalising *steps* (an affine rescale, a `preprocess_input`, an opaque
  normalisation);
* connect those pipelines to the pretrained Keras application they feed: the application
  called on a tensor (`base(x)`), built on one (`input_tensor=x`), placed in a `Sequential`,
  or reached from `model.fit(data)` through a functional `Model`, a `Sequential`, a
  subclassed model's `call` or a builder function.

Everything here is `ast` only: no framework import.
"""

from __future__ import annotations

import ast
import weakref

from auditor import knowledge
from auditor.analysis.context import UNKNOWN, kwarg
from auditor.analysis.names import canonical, last
from auditor.analysis.context import param_default as _param_default

from ._shared import is_parameter

MODES = ("caffe", "tf", "torch")

#: what a `preprocess_input` of each mode does to 0-255 RGB input (for "got" texts)
DOES = {
    "caffe": "caffe: BGR, mean-subtracted",
    "tf": "tf: scaled to [-1, 1]",
    "torch": "torch: scaled to [0, 1], then ImageNet mean/std",
    "builtin": "pass-through",
}

#: what an application of each mode expects (for "expects ..." texts)
EXPECTS = {
    "caffe": "caffe: BGR, mean-subtracted 0-255",
    "tf": "tf: scaled to [-1, 1]",
    "torch": "torch: ImageNet mean/std",
    "builtin": "raw 0-255 pixels: its preprocessing is built in",
}

_CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)
_TORCH_MEAN = knowledge.IMAGENET_MEAN
_TORCH_STD = knowledge.IMAGENET_STD

#: calls that keep the scale of their first argument
_PASS_FUNCS = frozenset(
    {
        "cast", "resize", "resize_with_pad", "resize_with_crop_or_pad", "central_crop", "random_crop",
        "random_flip_left_right", "random_flip_up_down", "flip_left_right", "flip_up_down", "rot90",
        "expand_dims", "array", "asarray", "float32", "float64", "convert_to_tensor", "img_to_array",
        "clip_by_value", "clip", "reshape", "identity", "squeeze", "ensure_shape", "transpose",
        "resize_images", "smart_resize", "random_brightness", "random_contrast", "random_saturation",
        "random_hue", "adjust_brightness", "adjust_contrast", "ascontiguousarray", "copy",
    }
)
#: methods that keep the scale of their receiver
_PASS_METHODS = frozenset({"astype", "reshape", "copy", "numpy", "squeeze", "transpose", "resize", "convert", "to_tensor"})
#: dataset methods that pass elements through unchanged
_DS_PASS = frozenset(
    {"batch", "prefetch", "cache", "shuffle", "repeat", "take", "skip", "unbatch", "with_options", "filter", "padded_batch", "rebatch", "shard"}
)
_FLOW_METHODS = frozenset({"flow", "flow_from_directory", "flow_from_dataframe"})
#: functions that divide/multiply their first argument by a constant second one
_ARITH_FUNCS = {"divide": ast.Div, "truediv": ast.Div, "true_divide": ast.Div, "multiply": ast.Mult, "subtract": ast.Sub, "add": ast.Add}
_DECODERS = frozenset({"decode_jpeg", "decode_png", "decode_image", "decode_bmp", "decode_gif", "decode_and_crop_jpeg"})
#: keras layers that start a model trained from scratch (their presence makes a file ambiguous)
_SCRATCH_LAYERS = frozenset(
    {
        "Conv1D", "Conv2D", "Conv3D", "SeparableConv1D", "SeparableConv2D", "DepthwiseConv2D", "Conv2DTranspose",
        "Conv3DTranspose", "Convolution2D", "LSTM", "GRU", "SimpleRNN", "Embedding", "MultiHeadAttention", "ConvLSTM2D",
    }
)
#: Keras layers whose output is still the image (besides every `Random*` augmentation layer)
_IMAGE_LAYERS = frozenset(
    {
        "Rescaling", "Normalization", "Resizing", "CenterCrop", "Lambda", "InputLayer", "Cropping2D", "ZeroPadding2D",
        "GaussianNoise", "Identity", "RandAugment", "AugMix", "Solarization", "MixUp", "CutMix", "Equalization",
        "AutoContrast", "Pipeline",
    }
)
_CONSUMERS = frozenset(
    {"fit", "fit_generator", "predict", "predict_generator", "evaluate", "evaluate_generator", "train_on_batch", "test_on_batch", "predict_on_batch"}
)


# ----------------------------------------------------------------------------- values
class PreprocFn:
    """A `preprocess_input` of one `keras.applications` module, with its mode."""

    __slots__ = ("mode", "module")

    def __init__(self, module: str, mode: str | None):
        self.module = module
        self.mode = mode

    def __eq__(self, other: object) -> bool:
        return isinstance(other, PreprocFn) and (self.module, self.mode) == (other.module, other.mode)

    def __hash__(self) -> int:
        return hash((self.module, self.mode))

    @property
    def source(self) -> str:
        return f"keras.applications.{self.module}"

    def with_mode(self, mode: str) -> PreprocFn:
        return PreprocFn(self.module, mode)


class Use:
    """One use of a `preprocess_input`: `node` is where to report (the call, or the reference
    passed along); `call` is set when it is invoked there."""

    __slots__ = ("call", "fn", "node")

    def __init__(self, node: ast.AST, fn: PreprocFn, call: ast.Call | None):
        self.node = node
        self.fn = fn
        self.call = call


class Step:
    """One normalising operation on image data.

    kind: "affine" (x * a + b: rescale=, Rescaling, x / 255.), "pre" (a preprocess_input of
    `fn.mode`), "normlayer" (a Keras Normalization layer) or "norm" (anything else that
    normalises in a way we cannot compute: mean/std arithmetic, featurewise_center, ...)."""

    __slots__ = ("a", "b", "fn", "kind", "label", "node", "note")

    def __init__(self, kind: str, node: ast.AST, label: str, a: float = 1.0, b: float = 0.0, fn: PreprocFn | None = None, note: str = ""):
        self.kind = kind
        self.node = node
        self.label = label
        self.a = a
        self.b = b
        self.fn = fn
        self.note = note


class App:
    """A Keras application in the file, with the input it expects (None: unknown)."""

    __slots__ = ("expected", "info")

    def __init__(self, info, expected: str | None):
        self.info = info
        self.expected = expected

    @property
    def arch(self) -> str:
        return self.info.arch

    @property
    def module(self) -> str:
        """Where the matching preprocess_input lives."""
        if self.info.family == "resnet" and self.info.arch == "ResNet50":
            return "keras.applications.resnet50"
        return f"keras.applications.{self.info.family}"


class Pipeline:
    """Steps in data order, ending at `app` (None: the model is unknown)."""

    __slots__ = ("app", "origin", "steps")

    def __init__(self, steps: list[Step], app: App | None, origin: str):
        self.steps = steps
        self.app = app
        self.origin = origin


# ----------------------------------------------------------------------------- numbers
def affine_class(a: float, b: float) -> str:
    """What x * a + b makes of 0-255 input: "identity", "unit" ([0, 1]), "symmetric" ([-1, 1]),
    "down" (some other shrinking) or "other"."""
    hi = 255.0 * a + b
    if abs(a - 1.0) < 1e-6 and abs(b) < 1e-6:
        return "identity"
    if abs(b) < 0.02 and 0.98 <= hi <= 1.02:
        return "unit"
    if abs(b + 1.0) < 0.02 and 0.98 <= hi <= 1.02:
        return "symmetric"
    if 0 < a < 0.5:
        return "down"
    return "other"


def range_text(lo: float, hi: float) -> str:
    return f"[{_num(lo)}, {_num(hi)}]"


def _num(v: float) -> str:
    if abs(v - round(v)) < 1e-9:
        return str(round(v))
    if abs(v) >= 10:
        return f"{v:.1f}"
    return f"{v:.3g}"


def mode_range(mode: str, lo: float = 0.0, hi: float = 255.0) -> tuple[float, float]:
    """The output range of preprocess_input(mode) for inputs in [lo, hi]."""
    if mode == "tf":
        return lo / 127.5 - 1.0, hi / 127.5 - 1.0
    if mode == "caffe":
        return lo - max(_CAFFE_MEAN_BGR), hi - min(_CAFFE_MEAN_BGR)
    if mode == "torch":
        los = [(lo / 255.0 - m) / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
        his = [(hi / 255.0 - m) / s for m, s in zip(_TORCH_MEAN, _TORCH_STD)]
        return min(los), max(his)
    return lo, hi


# ----------------------------------------------------------------------------- the analysis
_CACHE: weakref.WeakKeyDictionary = weakref.WeakKeyDictionary()


def analysis(ctx) -> Analysis:
    found = _CACHE.get(ctx)
    if found is None:
        found = Analysis(ctx)
        _CACHE[ctx] = found
    return found


class Analysis:
    def __init__(self, ctx):
        self.ctx = ctx
        self._import_targets: dict[str, set[str]] | None = None
        self._uses: list[Use] | None = None
        self._pipelines: list[Pipeline] | None = None
        self._connected: dict | None = None
        self._scratch_consumer = False
        self._unknown_model_steps: list[Step] = []
        self._fn_cache: dict = {}
        self._trace_cache: dict = {}
        self._apps_cache: dict = {}
        self.apps = self._collect_apps()

    # ------------------------------------------------------------------ applications
    def _collect_apps(self) -> list[App]:
        ctx = self.ctx
        self._extra: dict = {}
        self.keras_infos = [i for i in ctx.models if i.framework == "keras" and i.family in knowledge.KERAS_FAMILIES]
        # `builder = keras.applications.xception.Xception; builder(weights="imagenet")` where the
        # context's alias resolution declines (the name is bound more than once): the binding in
        # force at the call decides
        if any(isinstance(c.func, ast.Name) and ctx.call_name(c) is None for c in ctx.calls):
            from auditor.analysis.models import _keras_app

            for call in ctx.calls:
                if not isinstance(call.func, ast.Name) or ctx.call_name(call) is not None:
                    continue
                target = self.resolve(call.func)
                if target is call.func or not isinstance(target, (ast.Name, ast.Attribute)):
                    continue
                qual = ctx.qualname(target)
                if qual and qual.startswith("keras.applications."):
                    info = _keras_app(ctx, call, qual)
                    if info is not None and info.family in knowledge.KERAS_FAMILIES:
                        self.keras_infos.append(info)
                        self._extra[call] = info
        out = []
        for info in self.keras_infos:
            if info.pretrained is not False:
                out.append(App(info, self._expected(info)))
        return out

    @staticmethod
    def _expected(info) -> str | None:
        mode = knowledge.KERAS_FAMILIES[info.family][0]
        if mode != "builtin":
            return mode
        if info.family == "efficientnet":
            return "builtin"  # always on, no flag
        if info.include_preprocessing is None:
            return None
        if info.include_preprocessing:
            return "builtin"
        if info.family == "efficientnet_v2" and "V2B" in info.arch:
            return None  # B0-B3 without preprocessing: expected range is uncertain
        return knowledge.keras_expected_mode(info.family, info.arch, False)

    def untrained_modes(self) -> set:
        """Expected modes of the Keras applications built with weights=None (trained from
        scratch: any preprocessing may be meant for them)."""
        modes = set()
        for info in self.keras_infos:
            if info.pretrained is False:
                mode = self._expected(info)
                if mode is not None:
                    modes.add(mode)
        return modes

    def pretrained_apps(self) -> list[App]:
        """Applications that certainly load pretrained weights."""
        return [a for a in self.apps if a.info.pretrained is True]

    def app_of(self, node) -> App | None:
        info = self.ctx.model_of(node) if node is not None else None
        if info is None and self._extra and node is not None:
            info = self._extra.get(_unwrap(self.resolve(node)))
        if info is None:
            return None
        for app in self.apps:
            if app.info is info:
                return app
        return None

    def other_models(self) -> bool:
        """Models whose preprocessing we do not model: untrained Keras apps, torch/timm/hub/HF
        models, TF-Hub layers, KerasHub/KerasCV presets."""
        ctx = self.ctx
        if any(info.pretrained is False for info in self.keras_infos):
            return True
        for info in ctx.models:
            if info.framework != "keras" and info.pretrained is not False:
                return True
        return ctx.mentions("KerasLayer", "keras_hub", "keras_cv", "from_preset", "tensorflow_hub")

    def unknown_models(self) -> bool:
        """Pretrained models whose preprocessing the file does not show (torch/timm/HF/hub
        models, TF-Hub layers, KerasHub/KerasCV presets, SavedModels)."""
        ctx = self.ctx
        for info in ctx.models:
            if info.framework != "keras" and info.pretrained is not False:
                return True
        if ctx.mentions("KerasLayer", "keras_hub", "keras_cv", "from_preset", "tensorflow_hub"):
            return True
        return any(ctx.call_name(c) in ("tensorflow.saved_model.load", "keras.layers.TFSMLayer") for c in ctx.calls)

    def connected_apps(self, node: ast.AST) -> list[App]:
        """The applications a preprocess_input use is connected to through a pipeline."""
        if self._connected is None:
            table: dict = {}
            for p in self.pipelines:
                if p.app is None:
                    continue
                for step in p.steps:
                    if step.kind == "pre" and p.app not in table.get(step.node, []):
                        table.setdefault(step.node, []).append(p.app)
            self._connected = table
        return self._connected.get(node, [])

    def scratch_layers(self) -> bool:
        for call in self.ctx.calls:
            name = self.ctx.call_name(call)
            if name and name.startswith("keras.layers.") and last(name) in _SCRATCH_LAYERS:
                return True
        return False

    # ------------------------------------------------------------------ names
    def binding(self, key: str, at: ast.AST, env: dict | None = None):
        """("record", Assignment) in force for `key` at `at`, ("param", function) when `key` is
        a parameter of an enclosing function or lambda, or None.
        An assignment in the other branch of an `if` is not in force; one made in a branch of
        an `if` whose other branch assigns too is ambiguous (None), unless the condition is a
        parameter whose value `env` (the call being traced) tells."""
        ctx = self.ctx
        if "." not in key and "[" not in key:
            owner = _lambda_owner(ctx, key, at)  # the context records no lambda parameters
            if owner is not None:
                return ("param", owner)
        record = ctx.assignment_at(key, at)
        for _ in range(10):
            if record is None or is_parameter(record):
                break
            if _exclusive(ctx, record.stmt, at):
                record = ctx.assignment_at(key, record.stmt)
                continue
            state = _branch_state(ctx, record, key, at, lambda test: self._decide(test, env))
            if state == "skip":
                record = ctx.assignment_at(key, record.stmt)
                continue
            if state == "conflict":
                return None
            break
        if is_parameter(record):
            return ("param", record.stmt)
        return ("record", record) if record is not None else None

    def _decide(self, test: ast.AST, env: dict | None) -> bool | None:
        """The truth of an `if` condition that is a parameter of the function being traced."""
        if not env:
            return None
        negate = False
        if isinstance(test, ast.UnaryOp) and isinstance(test.op, ast.Not):
            test, negate = test.operand, True
        if not isinstance(test, ast.Name):
            return None
        record = self.ctx.assignment_at(test.id, test)
        if not is_parameter(record):
            return None
        owner = record.stmt
        if (owner, test.id) in env:
            value = self.ctx.value(env[(owner, test.id)][0])
        elif any(k[0] is owner for k in env):
            default = _param_default(owner, test.id)
            value = self.ctx.value(default) if default is not None else UNKNOWN
        else:
            return None
        if value is UNKNOWN:
            return None
        return (not value) if negate else bool(value)

    def resolve(self, node: ast.AST | None) -> ast.AST | None:
        """Follow names to the expression they were assigned from, stopping at parameters."""
        ctx = self.ctx
        for _ in range(25):
            if not isinstance(node, (ast.Name, ast.Attribute)):
                return node
            key = ctx.key(node)
            if not key:
                return node
            found = self.binding(key, node)
            if found is None:
                return node
            if found[0] == "param":
                sources = self.param_sources(found[1], key) if not isinstance(found[1], ast.Lambda) else []
                if len(sources) != 1:
                    return node
                node = sources[0]
                continue
            record = found[1]
            if record.value is None or record.augmented:
                return node
            node = record.value
        return node

    def param_sources(self, func: ast.AST, name: str) -> list[ast.AST]:
        """The argument expressions every call of a module-local function passes for `name`
        (for `__init__`, the instantiations of its class); [] when a call leaves it unknown."""
        ctx = self.ctx
        if not isinstance(func, (ast.FunctionDef, ast.AsyncFunctionDef)):
            return []
        args = func.args
        params = [a.arg for a in args.posonlyargs + args.args]
        klass = ctx.enclosing_class(func)
        if func.name == "__init__" and klass is not None:
            calls = [c for c in ctx.calls if isinstance(c.func, ast.Name) and c.func.id == klass.name]
            params = params[1:]
        else:
            calls = ctx.call_sites(func)
            if params and params[0] in ("self", "cls"):
                params = params[1:]
        default = _param_default(func, name)
        out = []
        for call in calls:
            if any(isinstance(a, ast.Starred) for a in call.args) or any(kw.arg is None for kw in call.keywords):
                return []
            bound = dict(zip(params, call.args))
            bound.update({kw.arg: kw.value for kw in call.keywords if kw.arg})
            value = bound.get(name, default)
            if value is None:
                return []
            out.append(value)
        if not calls and default is not None:
            out.append(default)
        return out

    # ------------------------------------------------------------------ preprocess_input
    @property
    def import_targets(self) -> dict[str, set[str]]:
        """Local name -> every canonical target it is imported as (a name imported twice from
        different modules, e.g. in if/else branches, is ambiguous)."""
        if self._import_targets is None:
            targets: dict[str, set[str]] = {}
            for node in self.ctx.nodes_of(ast.Import, ast.ImportFrom):
                if isinstance(node, ast.Import):
                    for alias in node.names:
                        if alias.asname:
                            targets.setdefault(alias.asname, set()).add(canonical(alias.name))
                elif isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                    for alias in node.names:
                        if alias.name != "*":
                            targets.setdefault(alias.asname or alias.name, set()).add(canonical(f"{node.module}.{alias.name}"))
            self._import_targets = targets
        return self._import_targets

    @staticmethod
    def _fn_from_qual(qual: str | None) -> PreprocFn | None:
        if not qual:
            return None
        parts = qual.split(".")
        if len(parts) != 4 or parts[0] != "keras" or parts[1] != "applications" or parts[3] != "preprocess_input":
            return None
        module = parts[2]
        if module == "imagenet_utils":
            return PreprocFn(module, None)
        if module in knowledge.KERAS_FAMILIES:
            return PreprocFn(module, knowledge.KERAS_FAMILIES[module][0])
        return None

    def _qual(self, node: ast.AST) -> str | None:
        """Canonical name of an imported Name/Attribute, honouring names imported twice."""
        base = node
        while isinstance(base, ast.Attribute):
            base = base.value
        if isinstance(base, ast.Name):
            targets = self.import_targets.get(base.id)
            if targets is not None and len(targets) > 1:
                quals = set()
                for t in targets:
                    rest = []
                    n = node
                    while isinstance(n, ast.Attribute):
                        rest.append(n.attr)
                        n = n.value
                    quals.add(canonical(".".join([t, *reversed(rest)])))
                fns = {self._fn_from_qual(q) for q in quals}
                return next(iter(quals)) if len(fns) == 1 else None
        return self.ctx.qualname(node)

    def preprocess_fn(self, node: ast.AST | None, depth: int = 0) -> PreprocFn | None:
        """The keras.applications preprocess_input an expression refers to (mode None for
        imagenet_utils, whose mode is an argument)."""
        if node is None or depth > 8:
            return None
        key = (node, depth == 0)
        if key in self._fn_cache:
            return self._fn_cache[key]
        self._fn_cache[key] = None  # cycle guard
        fn = self._preprocess_fn(node, depth)
        self._fn_cache[key] = fn
        return fn

    def _preprocess_fn(self, node: ast.AST, depth: int) -> PreprocFn | None:
        ctx = self.ctx
        if isinstance(node, ast.Call):
            if ctx.call_name(node) == "functools.partial" and node.args:
                fn = self.preprocess_fn(node.args[0], depth + 1)
                if fn is not None and fn.module == "imagenet_utils":
                    mode_node = kwarg(node, "mode")
                    if mode_node is None:
                        return fn.with_mode("caffe")
                    mode = ctx.string(mode_node)
                    return fn.with_mode(mode) if mode in MODES else None
                return fn
            return None
        if isinstance(node, ast.Name):
            found = self.binding(node.id, node)
            if found is not None:
                if found[0] == "param":
                    return self._param_fn(found[1], node.id, depth)
                record = found[1]
                if record.augmented or record.value is None:
                    return None
                return self.preprocess_fn(record.value, depth + 1)
            if node.id in ctx.functions or node.id in ctx.classes:
                return None
            if node.id in self.import_targets:
                return self._fn_from_qual(self._qual(node))
            if node.id == "preprocess_input":
                for module in reversed(ctx.star_imports):
                    fn = self._fn_from_qual(f"{module}.preprocess_input")
                    if fn is not None:
                        return fn
            return None
        if isinstance(node, ast.Attribute):
            fn = self._fn_from_qual(self._qual(node))
            if fn is not None:
                return fn
            key = ctx.key(node)
            if key and "." in key:
                record = ctx.assignment_at(key, node)
                if record is not None and record.value is not None and not record.augmented:
                    return self.preprocess_fn(record.value, depth + 1)
        return None

    def _param_fn(self, func: ast.AST, name: str, depth: int) -> PreprocFn | None:
        """A parameter that every call site (or the default) fills with the same preprocess_input."""
        values = [self.preprocess_fn(arg, depth + 1) for arg in self.param_sources(func, name)]
        if values and all(v is not None and v == values[0] for v in values):
            return values[0]
        return None

    def call_mode(self, fn: PreprocFn, call: ast.Call | None) -> str | None:
        """The concrete mode of a preprocess_input use (imagenet_utils reads `mode=`)."""
        if fn.mode is not None:
            return fn.mode
        if call is None:
            return "caffe"
        node = kwarg(call, "mode", 2)
        if node is None:
            return "caffe"
        mode = self.ctx.string(node)
        return mode if mode in MODES else None

    @property
    def uses(self) -> list[Use]:
        """Every use of a keras.applications preprocess_input, in source order."""
        if self._uses is None:
            ctx = self.ctx
            out: list[Use] = []
            for call in ctx.calls:
                fn = self.preprocess_fn(call.func)
                if fn is not None:
                    mode = self.call_mode(fn, call)
                    if mode is not None:
                        out.append(Use(call, fn.with_mode(mode), call))
                if ctx.call_name(call) == "functools.partial":
                    continue  # judged where the partial is used
                for arg in [*call.args, *(kw.value for kw in call.keywords)]:
                    if isinstance(arg, (ast.Name, ast.Attribute)) or (isinstance(arg, ast.Call) and ctx.call_name(arg) == "functools.partial"):
                        fn = self.preprocess_fn(arg)
                        if fn is not None:
                            out.append(Use(arg, fn.with_mode(self.call_mode(fn, None)), None))
            # `make_gen(vgg16.preprocess_input)` whose parameter is used inside make_gen: that
            # inner use is the one to report
            inner = {}
            for use in out:
                if isinstance(use.node, ast.Name) or (use.call is not None and isinstance(use.call.func, ast.Name)):
                    name_node = use.node if isinstance(use.node, ast.Name) else use.call.func
                    found = self.binding(name_node.id, name_node)
                    if found is not None and found[0] == "param":
                        inner.setdefault(found[1], set()).add(name_node.id)
            kept = []
            for use in out:
                if use.call is None:
                    parent = ctx.parent(use.node)
                    owner = ctx.parent(parent) if isinstance(parent, ast.keyword) else parent
                    if isinstance(owner, ast.Call):
                        funcdef = self._local_function(owner.func)
                        if funcdef is not None and funcdef in inner:
                            names = {n for n, v in ctx.bind_arguments(owner, funcdef).items() if v is use.node}
                            if names & inner[funcdef]:
                                continue
                kept.append(use)
            self._uses = kept
        return self._uses

    def mentions_preprocess_input(self) -> bool:
        """Any `preprocess_input` name that is not a function defined in this file."""
        if "preprocess_input" not in self.ctx.source:
            return False
        if self.uses:
            return True
        local = "preprocess_input" in self.ctx.functions
        for node in self.ctx.nodes_of(ast.Name, ast.Attribute, ast.alias):
            if isinstance(node, ast.Name) and node.id == "preprocess_input" and not local:
                return True
            if isinstance(node, ast.Attribute) and node.attr == "preprocess_input":
                return True
            if isinstance(node, ast.alias) and (node.asname or node.name).split(".")[-1] == "preprocess_input":
                return True
        return False

    # ------------------------------------------------------------------ tracing data
    def trace(self, node: ast.AST | None, env: dict | None = None) -> list[Step]:
        """The normalising steps (data order) that produced the value of `node`."""
        if node is None:
            return []
        out: list[Step] = []
        self._trace(node, env or {}, 0, out, set())
        out.reverse()
        return out

    def _trace(self, node: ast.AST, env: dict, depth: int, out: list[Step], seen: set) -> None:
        if node is None or depth > 40:
            return
        mark = (node, id(env))
        if mark in seen:
            return
        seen.add(mark)
        d = depth + 1
        if isinstance(node, (ast.Name, ast.Attribute)):
            self._trace_ref(node, env, d, out, seen)
        elif isinstance(node, ast.BinOp):
            self._trace_binop(node, env, d, out, seen)
        elif isinstance(node, ast.Call):
            self._trace_call(node, env, d, out, seen)
        elif isinstance(node, (ast.Subscript, ast.NamedExpr)):
            self._trace(node.value, env, d, out, seen)

    def _trace_ref(self, node: ast.AST, env: dict, depth: int, out: list[Step], seen: set) -> None:
        ctx = self.ctx
        key = ctx.key(node)
        if not key:
            if isinstance(node, ast.Attribute):
                self._trace(node.value, env, depth, out, seen)
            return
        self._trace_binding(key, node, env, depth, out, seen)

    def _trace_binding(self, key: str, at: ast.AST, env: dict, depth: int, out: list[Step], seen: set) -> None:
        found = self.binding(key, at, env)
        if found is None:
            return
        if found[0] == "param":
            owner = found[1]
            bound = env.get((owner, key))
            if bound is not None:
                self._trace(bound[0], bound[1], depth, out, seen)
                return
            sources = self.param_sources(owner, key)
            if len(sources) == 1:
                self._trace(sources[0], {}, depth, out, seen)
            return
        ctx = self.ctx
        record = found[1]
        if record.augmented:
            stmt = record.stmt
            if isinstance(stmt, ast.AugAssign):
                c = self._const(stmt.value)
                if isinstance(c, float) and isinstance(stmt.op, (ast.Div, ast.Mult, ast.Add, ast.Sub)):
                    a, b = _apply(stmt.op, c, 1.0, 0.0)
                    if a is not None and (abs(a - 1) > 1e-9 or abs(b) > 1e-9):
                        out.append(Step("affine", stmt, self._src(stmt), a, b))
                else:
                    out.append(Step("norm", stmt, self._src(stmt)))
            if depth < 40:
                self._trace_binding(key, stmt, env, depth + 1, out, seen)
            return
        if record.value is not None:
            self._trace(record.value, env, depth, out, seen)
            return
        stmt = record.stmt
        # `img, label = load(path)`: the element of what the call returns
        if isinstance(stmt, ast.Assign) and isinstance(stmt.value, ast.Call):
            for target in stmt.targets:
                if isinstance(target, (ast.Tuple, ast.List)):
                    for i, elt in enumerate(target.elts):
                        if ctx.key(elt) == key:
                            self._trace_call(stmt.value, env, depth, out, seen, element=i)
                            return

    def _const(self, node: ast.AST) -> float | str | None:
        """A scalar constant (float), "vector" for a constant sequence (mean/std), else None."""
        if isinstance(node, (ast.Name, ast.Attribute)) and self.ctx.key(node) is None:
            return None
        value = self.ctx.value(node)
        if isinstance(value, bool) or value is UNKNOWN or value is None:
            return None
        if isinstance(value, (int, float)):
            return float(value)
        if isinstance(value, tuple) and value and all(isinstance(v, (int, float)) and not isinstance(v, bool) for v in value):
            return "vector"
        if isinstance(value, tuple) and value and all(isinstance(v, tuple) for v in value):
            return "vector"
        return None

    def _peel(self, node: ast.AST) -> tuple[float, float, ast.AST, bool]:
        """Peel constant arithmetic off an expression: value = a * inner + b. The flag says
        the peeling stopped at arithmetic it cannot follow (two variables, mean/std vectors)."""
        a, b = 1.0, 0.0
        ctx = self.ctx
        for _ in range(30):
            if isinstance(node, ast.BinOp) and isinstance(node.op, (ast.Add, ast.Sub, ast.Mult, ast.Div)):
                lc, rc = self._const(node.left), self._const(node.right)
                if isinstance(rc, float) and lc is None:
                    a, b = _compose_right(node.op, rc, a, b)
                    if a is None:
                        return 1.0, 0.0, node, True
                    node = node.left
                    continue
                if isinstance(lc, float) and rc is None:
                    res = _compose_left(node.op, lc, a, b)
                    if res is None:
                        return a, b, node, True
                    a, b = res
                    node = node.right
                    continue
                return a, b, node, True
            if isinstance(node, ast.UnaryOp) and isinstance(node.op, ast.USub):
                a = -a
                node = node.operand
                continue
            if isinstance(node, ast.Call):
                name = ctx.call_name(node) or ""
                tail = last(name)
                if name and tail in _ARITH_FUNCS and len(node.args) >= 2:
                    c = self._const(node.args[1])
                    if isinstance(c, float):
                        a, b = _compose_right(_ARITH_FUNCS[tail](), c, a, b)
                        if a is None:
                            return 1.0, 0.0, node, True
                        node = node.args[0]
                        continue
                    return a, b, node, True
            break
        return a, b, node, False

    def _trace_binop(self, node: ast.BinOp, env: dict, depth: int, out: list[Step], seen: set) -> None:
        a, b, inner, opaque = self._peel(node)
        if abs(a - 1) > 1e-9 or abs(b) > 1e-9:
            out.append(Step("affine", node, self._src(node), a, b))
        if opaque and isinstance(inner, ast.BinOp):
            out.append(Step("norm", inner, self._src(inner)))
            left_const = self._const(inner.left)
            self._trace(inner.right if left_const is not None else inner.left, env, depth, out, seen)
            return
        if inner is not node:
            self._trace(inner, env, depth, out, seen)

    def _trace_call(self, call: ast.Call, env: dict, depth: int, out: list[Step], seen: set, element: int | None = None) -> None:
        ctx = self.ctx
        func = call.func
        name = ctx.call_name(call) or ""
        tail = last(name)
        method = func.attr if isinstance(func, ast.Attribute) else ""
        fn = self.preprocess_fn(func)
        if fn is not None:
            mode = self.call_mode(fn, call)
            if mode is not None:
                out.append(Step("pre", call, f"preprocess_input ({mode})", fn=fn.with_mode(mode)))
            self._trace(kwarg(call, "x", 0), env, depth, out, seen)
            return
        if name and tail in _ARITH_FUNCS:
            self._trace_binop_like(call, env, depth, out, seen)
            return
        if tail == "convert_image_dtype" and name:
            src = kwarg(call, "image", 0)
            if self._is_decoded(src):
                out.append(Step("affine", call, self._src(call) + " (uint8 -> float)", 1 / 255.0, 0.0))
            self._trace(src, env, depth, out, seen)
            return
        if name and tail in _PASS_FUNCS:
            self._trace(call.args[0] if call.args else None, env, depth, out, seen)
            return
        if name.startswith(("keras.", "tensorflow.")) and tail in ("Input", "image_dataset_from_directory", "load_img"):
            return
        if name.startswith("sklearn.") and tail == "train_test_split":
            # `x_tr, x_te, y_tr, y_te = train_test_split(images, labels)`: element i is a
            # split of array i // 2
            arrays = call.args
            if element is not None and not any(isinstance(a, ast.Starred) for a in arrays) and element // 2 < len(arrays):
                self._trace(arrays[element // 2], env, depth, out, seen)
            return
        if method in _PASS_METHODS and not name.startswith(("keras.", "tensorflow.", "numpy.")):
            self._trace(func.value, env, depth, out, seen)
            return
        if method == "map" and call.args:
            steps = self.fn_steps(call.args[0])
            out.extend(reversed(steps))
            self._trace(func.value, env, depth, out, seen)
            return
        if method in _DS_PASS:
            self._trace(func.value, env, depth, out, seen)
            return
        if method in _FLOW_METHODS:
            out.extend(reversed(self.generator_steps(func.value)))
            if method == "flow":
                self._trace(kwarg(call, "x", 0), env, depth, out, seen)
            return
        # a layer applied to a tensor: Rescaling(1/255)(x), scale(x), self.rescale(x); only
        # layers that keep an image an image (scaling, augmentation, resizing) are followed
        if isinstance(func, ast.Call):
            if self.layer_passes(func):
                out.extend(reversed(self.layer_steps(func)))
                self._trace(call.args[0] if call.args else None, env, depth, out, seen)
            return
        if isinstance(func, (ast.Name, ast.Attribute)):
            if ctx.model_of(func) is not None:
                return  # features of a pretrained model, not images
            target = self.resolve(func)
            if isinstance(target, (ast.Call, ast.Lambda)) and target is not func:
                if isinstance(target, ast.Lambda):
                    self._trace_lambda(target, call, env, depth, out, seen)
                    return
                tname = ctx.call_name(target) or ""
                if tname.startswith("keras.") or self._is_layer_call(target):
                    if self.layer_passes(target):
                        out.extend(reversed(self.layer_steps(target)))
                        self._trace(call.args[0] if call.args else None, env, depth, out, seen)
                    return
            funcdef = self._local_function(func)
            if funcdef is not None:
                self._trace_function(funcdef, call, env, depth, out, seen, element)
                return

    def _trace_binop_like(self, call: ast.Call, env: dict, depth: int, out: list[Step], seen: set) -> None:
        a, b, inner, opaque = self._peel(call)
        if abs(a - 1) > 1e-9 or abs(b) > 1e-9:
            out.append(Step("affine", call, self._src(call), a, b))
        if opaque:
            out.append(Step("norm", call, self._src(call)))
            self._trace(call.args[0] if call.args else None, env, depth, out, seen)
            return
        if inner is not call:
            self._trace(inner, env, depth, out, seen)

    def _trace_lambda(self, lam: ast.Lambda, call: ast.Call, env: dict, depth: int, out: list[Step], seen: set) -> None:
        params = [a.arg for a in lam.args.posonlyargs + lam.args.args]
        new_env = dict(env)
        for p, arg in zip(params, call.args):
            new_env[(lam, p)] = (arg, env)
        self._trace(lam.body, new_env, depth, out, seen)

    def _trace_function(self, funcdef: ast.AST, call: ast.Call, env: dict, depth: int, out: list[Step], seen: set, element: int | None) -> None:
        ret = _return_value(funcdef)
        if ret is None:
            return
        if element is not None:
            if isinstance(ret, (ast.Tuple, ast.List)) and element < len(ret.elts):
                ret = ret.elts[element]
            else:
                return
        new_env = dict(env)
        for pname, arg in self.ctx.bind_arguments(call, funcdef).items():
            new_env[(funcdef, pname)] = (arg, env)
        self._trace(ret, new_env, depth, out, seen)

    def _local_function(self, func: ast.AST) -> ast.AST | None:
        if isinstance(func, ast.Name):
            defs = self.ctx.functions.get(func.id)
            if defs and len(defs) == 1 and self.ctx.qualname(func) is None:
                return defs[0]
        elif isinstance(func, ast.Attribute) and isinstance(func.value, ast.Name) and func.value.id == "self":
            klass = self.ctx.enclosing_class(func)
            if klass is not None:
                for stmt in klass.body:
                    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == func.attr:
                        return stmt
        return None

    def _is_layer_call(self, node: ast.Call) -> bool:
        return isinstance(node.func, ast.Name) and node.func.id in self.ctx.classes

    def _is_decoded(self, node: ast.AST | None) -> bool:
        """Does this value come straight from an image decoder (uint8)?"""
        for _ in range(10):
            if node is None:
                return False
            if isinstance(node, (ast.Name, ast.Attribute)):
                target = self.resolve(node)
                if target is node:
                    return False
                node = target
                continue
            if isinstance(node, ast.Call):
                tail = last(self.ctx.call_name(node))
                return tail in _DECODERS
            return False
        return False

    def _src(self, node: ast.AST) -> str:
        try:
            text = ast.get_source_segment(self.ctx.source, node) or ast.unparse(node)
        except Exception:  # noqa: BLE001 - a label is cosmetic
            text = "expression"
        text = " ".join(text.split())
        return text if len(text) <= 60 else text[:57] + "..."

    # ------------------------------------------------------------------ pieces of pipelines
    def fn_steps(self, fn_node: ast.AST | None) -> list[Step]:
        """Steps a function applied to dataset elements (`ds.map(fn)`, `preprocessing_function=`,
        `Lambda(fn)`) performs on the image it returns (the first element of a returned tuple).
        A function that cannot be read counts as one opaque normalisation."""
        ctx = self.ctx
        if fn_node is None:
            return []
        pre = self.preprocess_fn(fn_node)
        if pre is not None:
            mode = self.call_mode(pre, None) if pre.mode is None else pre.mode
            if mode is None:
                return [Step("norm", fn_node, self._src(fn_node))]
            return [Step("pre", fn_node, f"preprocess_input ({mode})", fn=pre.with_mode(mode))]
        target = fn_node
        if isinstance(fn_node, ast.Call) and ctx.call_name(fn_node) == "functools.partial" and fn_node.args:
            target = fn_node.args[0]
        if isinstance(target, (ast.Name, ast.Attribute)):
            resolved = self.resolve(target)
            if isinstance(resolved, ast.Lambda):
                target = resolved
        if isinstance(target, ast.Lambda):
            return self.trace(_image_element(target.body))
        funcdef = self._local_function(target) if isinstance(target, (ast.Name, ast.Attribute)) else None
        if funcdef is not None:
            ret = _return_value(funcdef)
            return self.trace(_image_element(ret)) if ret is not None else []
        if isinstance(target, (ast.Name, ast.Attribute)):
            # a Keras layer passed as the function: ds.map(rescale) is rare, but seen
            resolved = self.resolve(target)
            if isinstance(resolved, ast.Call) and resolved is not target and self.layer_passes(resolved):
                return self.layer_steps(resolved)
        return [Step("norm", fn_node, self._src(fn_node))]

    def generator_steps(self, gen: ast.AST | None) -> list[Step]:
        """Steps an ImageDataGenerator applies, in Keras' order: preprocessing_function first,
        then rescale, then the sample/feature-wise normalisations."""
        ctx = self.ctx
        call = self.resolve(gen) if gen is not None else None
        if not isinstance(call, ast.Call):
            return []
        name = ctx.call_name(call) or ""
        if last(name) != "ImageDataGenerator":
            return []
        steps: list[Step] = []
        pf = kwarg(call, "preprocessing_function")
        if pf is not None and not (isinstance(pf, ast.Constant) and pf.value is None):
            steps.extend(self.fn_steps(pf))
        for kw in call.keywords:
            if kw.arg == "rescale":
                value = ctx.number(kw.value)
                if value is None:
                    if not (isinstance(kw.value, ast.Constant) and kw.value.value is None):
                        steps.append(Step("norm", kw, self._src(kw)))
                elif value not in (0, 1):
                    steps.append(Step("affine", kw, self._src(kw), float(value), 0.0, note="generator"))
        for kw in call.keywords:
            if kw.arg in ("featurewise_center", "samplewise_center", "featurewise_std_normalization", "samplewise_std_normalization", "zca_whitening"):
                if ctx.value(kw.value) is not False:
                    steps.append(Step("norm", kw, self._src(kw)))
            elif kw.arg is None:
                steps.append(Step("norm", call, "**kwargs"))
        return steps

    def layer_passes(self, layer: ast.AST | None, depth: int = 0) -> bool:
        """Is the output of this layer still the image (scaled, augmented, resized), rather
        than features? Unknown layers and models are not followed."""
        ctx = self.ctx
        if layer is None or depth > 6:
            return False
        node = self.resolve(layer) if isinstance(layer, (ast.Name, ast.Attribute)) else layer
        if not isinstance(node, ast.Call):
            return False
        name = ctx.call_name(node) or ""
        if not name.startswith("keras.layers.") and name != "keras.Sequential":
            return False
        tail = last(name)
        if tail in _IMAGE_LAYERS or tail.startswith("Random"):
            return True
        if name == "keras.Sequential":
            elements = self._sequential_elements(node)
            return bool(elements) and all(self.layer_passes(e, depth + 1) or _is_input(ctx, e) for e in elements)
        return False

    def layer_steps(self, layer: ast.AST | None, depth: int = 0) -> list[Step]:
        """Steps a Keras layer (or a Sequential block of layers) applies to its input."""
        ctx = self.ctx
        if layer is None or depth > 6:
            return []
        node = self.resolve(layer) if isinstance(layer, (ast.Name, ast.Attribute)) else layer
        if not isinstance(node, ast.Call):
            return []
        name = ctx.call_name(node) or ""
        if name == "keras.layers.Rescaling":
            scale = kwarg(node, "scale", 0)
            offset = kwarg(node, "offset", 1)
            a = ctx.number(scale)
            b = 0.0 if offset is None else ctx.number(offset)
            if a is None or b is None:
                return [Step("norm", node, self._src(node))]
            if abs(a - 1) < 1e-9 and abs(b) < 1e-9:
                return []
            return [Step("affine", node, self._src(node), float(a), float(b))]
        if name == "keras.layers.Normalization":
            return [Step("normlayer", node, self._src(node))]
        if name == "keras.layers.Lambda":
            fn_node = kwarg(node, "function", 0)
            return self.fn_steps(fn_node)
        if name == "keras.Sequential":
            steps = []
            for elt in self._sequential_elements(node):
                if self.app_of(elt) is not None:
                    break
                steps.extend(self.layer_steps(elt, depth + 1))
            return steps
        return []

    def _sequential_elements(self, call: ast.Call) -> list[ast.AST]:
        ctx = self.ctx
        elements: list[ast.AST] = []
        layers = kwarg(call, "layers", 0)
        if layers is not None:
            resolved = self.resolve(layers)
            if isinstance(resolved, (ast.List, ast.Tuple)):
                elements.extend(resolved.elts)
        stmt = ctx.statement(call)
        keys = []
        if isinstance(stmt, ast.Assign) and stmt.value is call:
            keys = [k for k in (ctx.key(t) for t in stmt.targets) if k]
        if keys:
            scope = ctx.scope(call)
            for add in ctx.method_calls("add"):
                if ctx.key(add.func.value) in keys and ctx.scope(add) is scope and ctx.before(call, add) and add.args:
                    elements.append(add.args[0])
        return elements

    # ------------------------------------------------------------------ models
    def model_apps(self, model: ast.AST | None, depth: int = 0) -> tuple[list[tuple[App, list[Step]]], bool]:
        """The pretrained applications inside a model expression, each with the steps between
        the model's input and the application; and whether the model was fully understood."""
        if model is None or depth > 6:
            return [], False
        key = (model, depth)
        if key in self._apps_cache:
            return self._apps_cache[key]
        self._apps_cache[key] = ([], False)
        result = self._model_apps(model, depth)
        self._apps_cache[key] = result
        return result

    def _model_apps(self, model: ast.AST, depth: int) -> tuple[list[tuple[App, list[Step]]], bool]:
        ctx = self.ctx
        app = self.app_of(model)
        if app is not None:
            return [(app, self.trace(kwarg(app.info.call, "input_tensor")))], True
        if ctx.model_of(model) is not None:  # a non-Keras or untrained model
            return [], True
        node = _unwrap(self.resolve(model))
        if isinstance(node, (ast.Name, ast.Attribute)):
            key = ctx.key(node)
            bound_to = self.binding(key, node) if key else None
            if bound_to is not None and bound_to[0] == "param" and not isinstance(bound_to[1], ast.Lambda):
                sources = self.param_sources(bound_to[1], key)
                if len(sources) == 1:
                    return self.model_apps(sources[0], depth + 1)
            return [], False
        if isinstance(node, ast.Call):
            name = ctx.call_name(node) or ""
            if name == "keras.Model" or (last(name) == "Model" and name.startswith("keras.")):
                outputs = kwarg(node, "outputs", 1)
                return self._search_apps(outputs, depth)
            if name == "keras.Sequential":
                found: list[tuple[App, list[Step]]] = []
                steps: list[Step] = []
                complete = True
                for elt in self._sequential_elements(node):
                    elt_app = self.app_of(elt)
                    if elt_app is not None:
                        found.append((elt_app, steps + self.trace(kwarg(elt_app.info.call, "input_tensor"))))
                        continue
                    if ctx.model_of(elt) is not None:
                        continue
                    resolved = self.resolve(elt)
                    if isinstance(resolved, ast.Call) and (ctx.call_name(resolved) or "").startswith("keras.layers."):
                        steps = steps + self.layer_steps(resolved)
                        continue
                    sub, sub_complete = self.model_apps(elt, depth + 1)
                    found.extend((a, steps + s) for a, s in sub)
                    complete = complete and sub_complete
                return found, complete
            funcdef = self._local_function(node.func)
            if funcdef is not None:
                ret = _return_value(funcdef)
                return self.model_apps(ret, depth + 1) if ret is not None else ([], False)
            if isinstance(node.func, ast.Name) and node.func.id in ctx.classes:
                klass = ctx.classes[node.func.id]
                for stmt in klass.body:
                    if isinstance(stmt, (ast.FunctionDef, ast.AsyncFunctionDef)) and stmt.name == "call":
                        ret = _return_value(stmt)
                        return self._search_apps(ret, depth)
                return [], False
        return [], False

    def _search_apps(self, outputs: ast.AST | None, depth: int) -> tuple[list[tuple[App, list[Step]]], bool]:
        """Walk a functional graph backwards from its outputs to the applications it calls."""
        ctx = self.ctx
        found: list[tuple[App, list[Step]]] = []
        complete = outputs is not None
        stack = [outputs] if outputs is not None else []
        visited: set = set()
        budget = 400
        while stack and budget > 0:
            budget -= 1
            n = stack.pop()
            if n is None or n in visited:
                continue
            visited.add(n)
            if isinstance(n, (ast.List, ast.Tuple)):
                stack.extend(n.elts)
            elif isinstance(n, ast.Dict):
                stack.extend(v for v in n.values if v is not None)
            elif isinstance(n, ast.BinOp):
                stack.extend((n.left, n.right))
            elif isinstance(n, ast.Subscript):
                stack.append(n.value)
            elif isinstance(n, (ast.Name, ast.Attribute)):
                if isinstance(n, ast.Attribute) and n.attr in ("output", "outputs"):
                    root = _model_root(n.value)
                    app = self.app_of(root)
                    if app is not None:
                        found.append((app, self.trace(kwarg(app.info.call, "input_tensor"))))
                        continue
                    if ctx.model_of(root) is not None:
                        continue
                    sub, sub_complete = self.model_apps(root, depth + 1)
                    found.extend(sub)
                    complete = complete and sub_complete
                    continue
                target = self.resolve(n)
                if target is not n:
                    stack.append(target)
                    continue
                key = ctx.key(n)
                bound_to = self.binding(key, n) if key else None
                if bound_to is not None and bound_to[0] == "param":
                    if isinstance(bound_to[1], ast.Lambda):
                        continue
                    sources = self.param_sources(bound_to[1], key)
                    if len(sources) == 1:
                        stack.append(sources[0])
                    # a parameter with no single source is the model's input (a subclassed
                    # model's `call(self, inputs)`) or unknown: either way nothing to add
                    continue
                if isinstance(n, ast.Attribute):
                    stack.append(n.value)
                else:
                    complete = False
            elif isinstance(n, ast.Call):
                func = n.func
                app = self.app_of(func)
                if app is not None:
                    found.append((app, self.trace(n.args[0] if n.args else kwarg(n, "inputs"))))
                    continue
                if ctx.model_of(func) is not None:
                    continue
                name = ctx.call_name(n) or ""
                if name in ("keras.Input", "keras.layers.Input"):
                    continue
                args = [*n.args, *(kw.value for kw in n.keywords)]
                if isinstance(func, ast.Call):
                    stack.extend(args)
                    continue
                if isinstance(func, (ast.Name, ast.Attribute)) and not name:
                    resolved = self.resolve(func)
                    if isinstance(resolved, ast.Call) and resolved is not func:
                        rname = ctx.call_name(resolved) or ""
                        if rname.startswith("keras.layers.") or self._is_layer_call(resolved):
                            stack.extend(args)
                            continue
                    funcdef = self._local_function(func)
                    if funcdef is not None:
                        ret = _return_value(funcdef)
                        if ret is not None:
                            stack.append(ret)
                        stack.extend(args)
                        continue
                    sub, sub_complete = self.model_apps(func, depth + 1)
                    if sub:
                        prefix = self.trace(n.args[0]) if n.args else []
                        found.extend((a, prefix + s) for a, s in sub)
                        continue
                    complete = complete and sub_complete
                    stack.extend(args)
                    continue
                stack.extend(args)
        if stack:
            complete = False
        return found, complete

    # ------------------------------------------------------------------ pipelines
    @property
    def pipelines(self) -> list[Pipeline]:
        if self._pipelines is None:
            self._pipelines = self._collect_pipelines()
        return self._pipelines

    def _collect_pipelines(self) -> list[Pipeline]:
        ctx = self.ctx
        out: list[Pipeline] = []
        # inside models: base(x), input_tensor=x, Sequential([..., base])
        for app in self.apps:
            tensor = kwarg(app.info.call, "input_tensor")
            if tensor is not None:
                out.append(Pipeline(self.trace(tensor), app, "input_tensor"))
        for call in ctx.calls:
            func = call.func
            if isinstance(func, (ast.Name, ast.Attribute, ast.Call)) and call.args:
                app = self.app_of(func)
                if app is not None:
                    out.append(Pipeline(self.trace(call.args[0]), app, "call"))
                    continue
            name = ctx.call_name(call) or ""
            if name == "keras.Sequential":
                apps, _ = self.model_apps(call)
                out.extend(Pipeline(steps, app, "sequential") for app, steps in apps)
        # data fed to models: model.fit(data), model.predict(x)
        for call in ctx.method_calls(*_CONSUMERS):
            datas = [kwarg(call, "x", 0), kwarg(call, "generator")]
            val = kwarg(call, "validation_data")
            if isinstance(val, (ast.Tuple, ast.List)) and val.elts:
                val = val.elts[0]
            datas.append(val)
            datas = [d for d in datas if d is not None]
            if not datas:
                continue
            apps, complete = self.model_apps(call.func.value)
            for data in datas:
                steps = self.trace(data)
                if apps:
                    out.extend(Pipeline(steps + internal, app, "consumer") for app, internal in apps)
                elif complete:
                    self._scratch_consumer = True
                    out.append(Pipeline(steps, None, "scratch"))
                elif self._foreign_model(call.func.value):
                    out.append(Pipeline(steps, None, "foreign"))
                else:
                    out.append(Pipeline(steps, None, "unknown"))
        return out

    def _foreign_model(self, model: ast.AST) -> bool:
        """A model loaded from disk or a hub, whose expected preprocessing the file does not show."""
        node = _unwrap(self.resolve(model))
        if not isinstance(node, ast.Call):
            return False
        name = self.ctx.call_name(node) or ""
        method = node.func.attr if isinstance(node.func, ast.Attribute) else ""
        return last(name) in ("load_model", "load", "model_from_json", "model_from_yaml", "KerasLayer", "TFSMLayer") or method == "from_pretrained"

    def foreign_fed(self, node: ast.AST) -> bool:
        """Is this step fed to a model loaded from disk or a hub?"""
        return any(p.origin == "foreign" and any(s.node is node for s in p.steps) for p in self.pipelines)

    def has_scratch_consumer(self) -> bool:
        self.pipelines  # noqa: B018 - computes the flag
        return self._scratch_consumer

    def double_pipelines(self) -> list[list[Step]]:
        """Every chain to scan for double normalisation: connected pipelines, each
        preprocess_input call with what feeds it, every generator flow and dataset map."""
        chains = [p.steps for p in self.pipelines]
        for use in self.uses:
            if use.call is not None:
                chains.append(self.trace(use.call))
        for call in self.ctx.calls:
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr in _FLOW_METHODS | {"map"}:
                chains.append(self.trace(call))
            elif last(self.ctx.call_name(call)) == "ImageDataGenerator":
                chains.append(self.generator_steps(call))
        return chains

    def fallback_chains(self) -> list[list[Step]]:
        """Normalisation applied to data we could not connect to a model: each generator,
        each dataset map function, and data fed to models we could not resolve."""
        chains: list[list[Step]] = []
        for call in self.ctx.calls:
            func = call.func
            if isinstance(func, ast.Attribute) and func.attr == "map" and call.args:
                chains.append(self.fn_steps(call.args[0]))
            elif last(self.ctx.call_name(call)) == "ImageDataGenerator":
                chains.append(self.generator_steps(call))
        for p in self.pipelines:
            if p.origin == "unknown":
                chains.append(p.steps)
        foreign = {s.node for p in self.pipelines if p.origin == "foreign" for s in p.steps}
        return [c for c in chains if c and not any(s.node in foreign for s in c)]


# ----------------------------------------------------------------------------- verdicts
class Verdict:
    """What one pipeline says about a step: ok, or a finding for `rule` with message params."""

    __slots__ = ("params", "rule")

    def __init__(self, rule: str | None, params: dict | None = None):
        self.rule = rule
        self.params = params or {}


def double_normalisations(steps: list[Step]) -> list[tuple[Step, dict]]:
    """Scan one chain for a normalisation applied to already-normalised data. Returns the
    second step of each pair with message parameters."""
    found: list[tuple[Step, dict]] = []
    a, b = 1.0, 0.0  # composite affine since raw 0-255
    affine_label: list[str] = []
    state = "raw"  # raw (affine so far), pre (after a preprocess_input), unknown
    pre_mode = None
    pre_label = ""
    lo = hi = 0.0
    for step in steps:
        if step.kind == "affine":
            if state == "raw":
                cls_before = affine_class(a, b)
                own = affine_class(step.a, step.b)
                if cls_before in ("unit", "symmetric", "down") and own in ("unit", "symmetric", "down"):
                    first = " then ".join(affine_label)
                    new_lo, new_hi = _affine_range(step.a, step.b, b, 255 * a + b)
                    want_lo, want_hi = _affine_range(step.a, step.b, 0.0, 255.0)
                    found.append((step, {
                        "first": first,
                        "second": step.label,
                        "effect": f"maps inputs to {range_text(new_lo, new_hi)} instead of {range_text(want_lo, want_hi)}",
                        "advice": f"Scale once: drop one of the two scalings ({first}; {step.label}).",
                    }))
                    state = "unknown"
                    continue
                a, b = a * step.a, b * step.a + step.b
                affine_label.append(step.label)
            elif state == "pre":
                own = affine_class(step.a, step.b)
                if own in ("unit", "symmetric", "down"):
                    new_lo, new_hi = _affine_range(step.a, step.b, lo, hi)
                    want_lo, want_hi = mode_range(pre_mode)
                    note = " (ImageDataGenerator applies preprocessing_function before rescale)" if step.note == "generator" else ""
                    found.append((step, {
                        "first": pre_label,
                        "second": step.label + note,
                        "effect": f"maps inputs to {range_text(new_lo, new_hi)} instead of {range_text(want_lo, want_hi)}",
                        "advice": (
                            "Drop rescale= from the ImageDataGenerator: preprocess_input already produces the model's input range."
                            if step.note == "generator"
                            else f"Drop the later scaling ({step.label}): preprocess_input already produces the model's input range."
                        ),
                    }))
                    state = "unknown"
                    continue
                lo, hi = _affine_range(step.a, step.b, lo, hi)
        elif step.kind == "pre":
            mode = step.fn.mode if step.fn else None
            if mode not in MODES:
                continue
            if state == "raw":
                cls = affine_class(a, b)
                if cls in ("unit", "symmetric", "down"):
                    in_lo, in_hi = b, 255 * a + b
                    new_lo, new_hi = mode_range(mode, in_lo, in_hi)
                    want_lo, want_hi = mode_range(mode)
                    found.append((step, {
                        "first": " then ".join(affine_label) + f" (inputs in {range_text(in_lo, in_hi)})",
                        "second": f"{step.label}, which expects 0-255",
                        "effect": f"maps inputs to {range_text(new_lo, new_hi)} instead of {range_text(want_lo, want_hi)}",
                        "advice": f"Normalise once: pass raw 0-255 pixels to preprocess_input and drop the earlier scaling ({' then '.join(affine_label)}).",
                    }))
                    state = "unknown"
                    continue
                if cls != "identity":
                    state = "unknown"
                    continue
                state, pre_mode, pre_label = "pre", mode, f"{step.label} from {step.fn.source}"
                lo, hi = mode_range(mode)
            elif state == "pre":
                new_lo, new_hi = mode_range(mode, lo, hi)
                want_lo, want_hi = mode_range(mode)
                found.append((step, {
                    "first": pre_label,
                    "second": f"{step.label} again",
                    "effect": f"maps inputs to {range_text(new_lo, new_hi)} instead of {range_text(want_lo, want_hi)}",
                    "advice": "Call preprocess_input once, on raw 0-255 pixels.",
                }))
                state = "unknown"
        elif step.kind in ("norm", "normlayer"):
            state = "unknown"
    return found


def scaling_verdict(steps: list[Step], app: App) -> tuple[Step | None, Verdict | None]:
    """Judge the steps in front of one application. Returns (the step to report or the one
    the verdict is about, verdict); (None, None) when there is nothing to say."""
    expected = app.expected
    affines = [s for s in steps if s.kind == "affine"]
    pres = [s for s in steps if s.kind == "pre" and s.fn is not None and s.fn.mode in MODES]
    norms = [s for s in steps if s.kind == "normlayer"]
    if expected is None:
        return (affines[0] if affines else None), Verdict(None)
    if expected == "builtin":
        flag = " (or build it with include_preprocessing=False)" if app.info.family != "efficientnet" else ""
        a, b = 1.0, 0.0
        scaling: list[Step] = []
        for s in steps:
            if s.kind == "pre" and s.fn is not None and s.fn.mode in MODES:
                return s, Verdict("PRE002", {
                    "first": f"{s.label} from {s.fn.source}",
                    "second": f"{app.arch}'s built-in preprocessing",
                    "effect": f"{app.arch} expects raw 0-255 pixels and normalises them itself, so inputs are normalised twice",
                    "advice": f"Feed raw 0-255 pixels to {app.arch}, whose preprocessing is built in: drop the normalisation ({s.label}){flag}.",
                })
            if s.kind == "normlayer":
                return s, Verdict("PRE002", {
                    "first": s.label,
                    "second": f"{app.arch}'s built-in preprocessing",
                    "effect": f"{app.arch} expects raw 0-255 pixels and normalises them itself, so inputs are normalised twice",
                    "advice": f"Feed raw 0-255 pixels to {app.arch}, whose preprocessing is built in: drop the normalisation ({s.label}){flag}.",
                })
            if s.kind == "norm":
                return s, Verdict(None)
            if s.kind == "affine":
                a, b = a * s.a, b * s.a + s.b
                scaling.append(s)
        if not scaling:
            return None, None
        if affine_class(a, b) in ("unit", "symmetric", "down"):
            first = scaling[0]
            label = " then ".join(x.label for x in scaling)
            return first, Verdict("PRE002", {
                "first": label,
                "second": f"{app.arch}'s built-in preprocessing",
                "effect": f"inputs arrive scaled to {range_text(b, 255 * a + b)} but {app.arch} expects raw 0-255 pixels and rescales them itself",
                "advice": f"Feed raw 0-255 pixels to {app.arch}, whose preprocessing is built in: drop the scaling ({label}){flag}.",
            })
        return scaling[0], Verdict(None)
    # caffe / tf / torch: only manual scaling alone is judged here
    if not affines:
        return None, None
    if pres or norms or any(s.kind == "norm" for s in steps):
        return affines[0], Verdict(None)
    a, b = 1.0, 0.0
    for s in affines:
        a, b = a * s.a, b * s.a + s.b
    cls = affine_class(a, b)
    label = " then ".join(s.label for s in affines)
    report = affines[-1]
    if cls == "identity":
        return report, Verdict(None)
    if cls == "symmetric" and expected == "tf":
        return report, Verdict(None)
    if cls in ("unit", "symmetric"):
        return report, Verdict("PRE005", {
            "range": "[0, 1]" if cls == "unit" else "[-1, 1]",
            "label": label,
            "arch": app.arch,
            "want": EXPECTS[expected],
            "module": app.module,
        })
    return report, Verdict(None)


# ----------------------------------------------------------------------------- small helpers
def _affine_range(a: float, b: float, lo: float, hi: float) -> tuple[float, float]:
    x, y = a * lo + b, a * hi + b
    return (x, y) if x <= y else (y, x)


def _compose_right(op: ast.operator, c: float, a: float, b: float):
    """value = a * (E op c) + b  ->  a' * E + b'."""
    if isinstance(op, ast.Add):
        return a, b + a * c
    if isinstance(op, ast.Sub):
        return a, b - a * c
    if isinstance(op, ast.Mult):
        return a * c, b
    if isinstance(op, ast.Div):
        if c == 0:
            return None, None
        return a / c, b
    return None, None


def _compose_left(op: ast.operator, c: float, a: float, b: float):
    """value = a * (c op E) + b  ->  a' * E + b' (None for c / E)."""
    if isinstance(op, ast.Add):
        return a, b + a * c
    if isinstance(op, ast.Sub):
        return -a, b + a * c
    if isinstance(op, ast.Mult):
        return a * c, b
    return None


def _apply(op: ast.operator, c: float, a: float, b: float):
    return _compose_right(op, c, a, b)


def _lambda_owner(ctx, name: str, at: ast.AST) -> ast.Lambda | None:
    """The lambda whose parameter `name` is at `at` (not shadowed by an inner function)."""
    for anc in ctx.ancestors(at):
        if isinstance(anc, (ast.Lambda, ast.FunctionDef, ast.AsyncFunctionDef)):
            args = anc.args
            names = {a.arg for a in args.posonlyargs + args.args + args.kwonlyargs}
            if args.vararg:
                names.add(args.vararg.arg)
            if args.kwarg:
                names.add(args.kwarg.arg)
            if name in names:
                return anc if isinstance(anc, ast.Lambda) else None
    return None



def _return_value(funcdef: ast.AST) -> ast.expr | None:
    """The value of the function's last `return` (not counting nested functions)."""
    found = None
    stack = list(reversed(getattr(funcdef, "body", [])))
    while stack:
        node = stack.pop()
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef, ast.Lambda)):
            continue
        if isinstance(node, ast.Return) and node.value is not None:
            found = node.value
        stack.extend(reversed(list(ast.iter_child_nodes(node))))
    return found


def _image_element(node: ast.AST) -> ast.AST:
    """The image part of what a dataset function returns: `(image, label)` -> image."""
    if isinstance(node, (ast.Tuple, ast.List)) and node.elts:
        return node.elts[0]
    if isinstance(node, ast.Dict) and node.values:
        for k, v in zip(node.keys, node.values):
            if isinstance(k, ast.Constant) and isinstance(k.value, str) and any(w in k.value.lower() for w in ("image", "input", "pixel", "img")):
                return v
        return node.values[0]
    return node


def _exclusive(ctx, a: ast.AST, b: ast.AST) -> bool:
    """Are `a` and `b` in different branches of one `if` statement?"""
    path_a = {}
    child = a
    for anc in ctx.ancestors(a):
        path_a[anc] = child
        child = anc
    child = b
    for anc in ctx.ancestors(b):
        if anc in path_a:
            if isinstance(anc, ast.If):
                side_a = "body" if path_a[anc] in anc.body else "orelse" if path_a[anc] in anc.orelse else "test"
                side_b = "body" if child in anc.body else "orelse" if child in anc.orelse else "test"
                return side_a != side_b and "test" not in (side_a, side_b)
            return False
        child = anc
    return False


def _branch_state(ctx, record, key: str, at: ast.AST, decide) -> str:
    """For an assignment made inside `if` branches that do not contain `at`: "skip" when a
    known condition says its branch is not taken, "conflict" when the other branch assigns
    `key` too, else "ok"."""
    around_at = set(ctx.ancestors(at))
    child = record.stmt
    for anc in ctx.ancestors(record.stmt):
        if anc in around_at:
            return "ok"
        if isinstance(anc, ast.If) and (child in anc.body or child in anc.orelse):
            in_body = child in anc.body
            taken = decide(anc.test)
            if taken is not None:
                if taken != in_body:
                    return "skip"
            else:
                other = anc.orelse if in_body else anc.body
                for r in ctx.assignments.get(key, ()):
                    if r is not record and any(r.stmt is o or _contains(ctx, o, r.stmt) for o in other):
                        return "conflict"
        child = anc
    return "ok"


def _contains(ctx, outer: ast.AST, node: ast.AST) -> bool:
    return any(a is outer for a in ctx.ancestors(node))


def _is_input(ctx, node: ast.AST) -> bool:
    return isinstance(node, ast.Call) and (ctx.call_name(node) or "") in ("keras.Input", "keras.layers.Input", "keras.layers.InputLayer")


def _unwrap(node):
    from auditor.analysis.context import MODEL_PASSTHROUGH_METHODS

    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODEL_PASSTHROUGH_METHODS:
        node = node.func.value
    return node


def _model_root(node: ast.AST) -> ast.AST:
    """`base.layers[-1]`, `base.get_layer("x")` -> `base`."""
    for _ in range(10):
        if isinstance(node, ast.Subscript):
            node = node.value
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in ("get_layer",):
            node = node.func.value
        elif isinstance(node, ast.Attribute) and node.attr in ("layers",):
            node = node.value
        else:
            break
    return node


# ----------------------------------------------------------------------------- decisions
def fallback_ok(an: Analysis) -> bool:
    """May scaling that we could not connect to a model be judged against the file's
    applications? Only in a plain single-purpose transfer-learning file: every application's
    expectation known, no untrained or foreign model, no layers of a model built from scratch,
    no data fed to a model without a pretrained application."""
    if not an.apps or any(a.expected is None for a in an.apps):
        return False
    return not (an.other_models() or an.scratch_layers() or an.has_scratch_consumer())


def scaling_findings(an: Analysis) -> dict:
    """Manual scaling/normalisation judged against the applications it feeds.
    Returns {node: (rule, params)} for rules PRE002 (in front of built-in preprocessing) and
    PRE005 (scaling alone, wrong range)."""
    if not an.pretrained_apps():
        return {}
    doubles = set()
    for chain in an.double_pipelines():
        for step, _ in double_normalisations(chain):
            doubles.add(step.node)
    ok: set = set()
    bad: dict = {}
    connected: set = set()

    def judge(steps: list[Step], app: App) -> None:
        step, verdict = scaling_verdict(steps, app)
        if step is None or verdict is None:
            return
        if verdict.rule is None:
            ok.update(s.node for s in steps)
        else:
            bad.setdefault(step.node, []).append((verdict.rule, verdict.params, app))

    for p in an.pipelines:
        if p.origin != "unknown":
            connected.update(s.node for s in p.steps)
        if p.app is not None:
            judge(p.steps, p.app)
    if fallback_ok(an):
        for chain in an.fallback_chains():
            if any(s.node in connected for s in chain):
                continue
            for app in an.apps:
                judge(chain, app)
    out = {}
    for node, items in bad.items():
        if node in ok or node in doubles:
            continue
        rules = {r for r, _, _ in items}
        rule = "PRE005" if "PRE005" in rules else "PRE002"
        chosen = [(p, app) for r, p, app in items if r == rule]
        params = dict(chosen[0][0])
        if rule == "PRE005":
            archs = []
            for p, app in chosen:
                text = f"{app.arch} (expects {p['want']})"
                if text not in archs:
                    archs.append(text)
            params["models"] = " and ".join(archs)
            params["modules"] = " or ".join(sorted({p["module"] for p, _ in chosen}))
        out[node] = (rule, params)
    return out
