"""Shared analysis for the batchnorm and inference-mutation rules (BNS001, BNS002, INF001,
INF002): what a variable holds (which module; does it contain BatchNorm or Dropout?) and, for
PyTorch, which train/eval mode it is in at a given point of the program.

Everything is static (`ast` only) and conservative: an answer the analysis cannot give with
confidence is "unknown", and the rules stay silent on unknown.

Mode analysis (PyTorch) follows the reader's reasoning: the most recent mode-setting statement
on the model before a point, in source order, within the function (`model.eval()`,
`model.train(False)`, `model.train()`, `model = build().eval()`, a fresh constructor, a call of
a local function that sets the mode on the object passed in). A statement in a branch that does
not contain the point (`if phase == "train": model.train()`) merges with what came before. With
no such statement in the function, the state comes from the function's call sites (a
parameter: the argument's state at each call; a global or `self.x`: the state at each call).
"""

from __future__ import annotations

import ast
import re
import weakref
from auditor.analysis.records import record as dataclass
from typing import Iterable, Iterator

from auditor import knowledge
from auditor.analysis.context import MODEL_PASSTHROUGH_METHODS, ModuleContext, kwarg
from auditor.analysis.names import last
from auditor.analysis.context import param_default

from ._shared import is_parameter

_FUNCS = (ast.FunctionDef, ast.AsyncFunctionDef)
_SCOPES = (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda, ast.ClassDef)
MAX_DEPTH = 6

TRAIN = "train"
EVAL = "eval"
UNKNOWN_MODE = "unknown"
_ENTRY = "<entry>"  # internal: "whatever the state was when the scope was entered"

# --------------------------------------------------------------------------- name heuristics
_SPLIT = re.compile(r"[_\W]+|(?<=[a-z0-9])(?=[A-Z])")
#: words that make a function an inference / evaluation / serving function
INFER_PARTS = {
    "predict", "predicts", "prediction", "predictions", "pred", "preds",
    "evaluate", "evaluation", "eval", "evaluating",
    "infer", "inference", "inferences",
    "test", "testing",
    "validate", "validation", "val", "valid", "validating",
    "serve", "serving",
}
INFER_PREFIXES = ("predict", "evaluat", "infer")
#: words that make a function a training function (which wins over the inference words)
TRAIN_PARTS = {"train", "training", "trainer", "fit", "finetune", "learn", "backward", "optimize", "update"}


def name_parts(name: str) -> list[str]:
    return [p.lower() for p in _SPLIT.split(name) if p]


def is_inference_name(name: str) -> bool:
    """`predict`, `evaluate_model`, `run_inference`, `val_epoch`, `testStep`; not
    `train_and_evaluate`, `value`, `tester`."""
    parts = name_parts(name)
    if not parts or any(p in TRAIN_PARTS for p in parts):
        return False
    if any(p in INFER_PARTS for p in parts):
        return True
    return any(p.startswith(INFER_PREFIXES) for p in parts)


def is_unit_test_name(name: str) -> bool:
    """pytest / unittest test functions (`test_forward`, `testShapes`), not Keras' `test_step`."""
    return (name.startswith("test_") or (name.startswith("test") and name[4:5].isupper())) and name != "test_step"


def is_unit_test(ctx: ModuleContext, func: ast.AST) -> bool:
    """A test function of a test suite (pytest / unittest / absl), which exercises layers on
    purpose; script functions such as `test_model(model, loader)` are not."""
    if not is_unit_test_name(getattr(func, "name", "")):
        return False
    path = ctx.display_path.replace("\\", "/").rsplit("/", 1)[-1]
    if path.startswith("test_") or path.endswith("_test.py") or path.startswith("test") and path.endswith(".py") and path[4:5] in ("_", "s"):
        return True
    if any(v.split(".")[0] in ("pytest", "unittest", "absl") for v in ctx.imports.values()):
        return True
    klass = ctx.enclosing_class(func)
    return klass is not None and (klass.name.endswith(("Test", "Tests", "TestCase")) or klass.name.startswith("Test"))


def is_training_name(name: str) -> bool:
    return any(p in TRAIN_PARTS for p in name_parts(name)) or name.lower().startswith("train")


# --------------------------------------------------------------------------- BN by name
_TIMM_BN_PREFIXES = (
    "resnet", "resnext", "seresnet", "seresnext", "ecaresnet", "skresnet", "skresnext", "resnest", "res2net", "res2next",
    "wide_resnet", "regnet", "efficientnet", "tf_efficientnet", "efficientnetv2", "tf_efficientnetv2", "mobilenet",
    "tf_mobilenet", "mnasnet", "fbnet", "spnasnet", "mixnet", "tf_mixnet", "densenet", "dla", "dpn", "hrnet",
    "inception", "adv_inception", "ens_adv_inception", "gluon_", "xception", "legacy_xception", "nasnet", "pnasnet",
    "cspresnet", "cspresnext", "cspdarknet", "darknet", "rexnet", "ghostnet", "tresnet", "repvgg", "selecsls",
    "senet", "legacy_senet", "legacy_seresnet", "gernet", "hardcorenas", "lcnet", "levit", "mobilevit",
    "efficientformer", "fastvit", "mobileone", "semnasnet",
    "vgg11_bn", "vgg13_bn", "vgg16_bn", "vgg19_bn", "squeezenet_bn", "bat_resnext", "ese_vovnet", "vovnet",
)
_TIMM_NO_BN_PREFIXES = ("resnetv2_50x", "resnetv2_101x", "resnetv2_152x", "nf_", "nfnet", "dm_nfnet")
_GENERIC_BN_WORDS = ("resnet", "resnext", "efficientnet", "mobilenet", "densenet", "inception", "xception",
                     "mnasnet", "regnet", "shufflenet", "googlenet", "nasnet", "vgg16_bn", "vgg19_bn", "_bn")


def timm_has_bn(model_name: str | None) -> bool | None:
    """Whether a timm architecture uses BatchNorm, where its name says so; None if unknown."""
    if not model_name:
        return None
    name = model_name.lower().split(".", 1)[0]
    if name.startswith("hf-hub:") or name.startswith("hf_hub:"):
        name = name.split("/")[-1]
    if name.startswith(_TIMM_NO_BN_PREFIXES) or "bit" in name.split("_"):
        return False
    if name.startswith(_TIMM_BN_PREFIXES):
        return True
    if name.startswith(("vit", "deit", "beit", "swin", "convnext", "eva", "cait", "mixer", "xcit", "coat", "crossvit",
                        "pit_", "tnt", "twins", "poolformer", "convmixer", "gmlp", "resmlp", "maxvit", "coatnet")):
        return False
    return None


def name_has_bn(name: str | None) -> bool | None:
    """For hub / Hugging Face names: True if the name names a BatchNorm family."""
    if not name:
        return None
    low = name.lower()
    if any(w in low for w in _GENERIC_BN_WORDS):
        return True
    return None


def torchvision_has_dropout(builder: str) -> bool:
    fam = knowledge.torchvision_family(builder) or ""
    # classifier Dropout, or stochastic depth (ConvNeXt, Swin, MaxViT, EfficientNet)
    return fam in {"alexnet", "vgg", "efficientnet", "mobilenet", "mnasnet", "googlenet", "inception_v3", "squeezenet",
                   "convnext", "swin", "maxvit"}


# --------------------------------------------------------------------------- what a module is
@dataclass(frozen=True)
class ModuleDesc:
    framework: str  # "torch" or "keras"
    label: str  # for messages: "resnet50 (torchvision)", "Net", "ResNet50"
    bn: bool | None  # contains BatchNormalization / BatchNorm*d
    dropout: bool | None  # contains Dropout (or a stochastic-depth/noise layer active in training)
    initial: str  # mode right after construction: "train", "eval", "unknown" (torch only)
    node: ast.AST  # the constructor (identity)

    @property
    def sensitive(self) -> bool | None:
        """Does train/eval mode change what it computes?"""
        if self.bn or self.dropout:
            return True
        if self.bn is False and self.dropout is False:
            return False
        return None

    def layers_text(self) -> str:
        if self.bn and self.dropout:
            return "BatchNorm and Dropout"
        if self.bn:
            return "BatchNorm"
        if self.dropout:
            return "Dropout"
        return "BatchNorm/Dropout"


def _or(a: bool | None, b: bool | None) -> bool | None:
    if a or b:
        return True
    if a is False and b is False:
        return False
    return None


_TORCH_BN = re.compile(r"^(Lazy)?(Sync)?BatchNorm([123]d)?$")
_TORCH_DROP = re.compile(r"^(Feature)?(Alpha)?Dropout([123]d)?$|^Dropout$")
_KERAS_BN = {"BatchNormalization", "SyncBatchNormalization"}
_KERAS_DROP = {
    "Dropout", "SpatialDropout1D", "SpatialDropout2D", "SpatialDropout3D", "GaussianDropout", "GaussianNoise",
    "AlphaDropout", "StochasticDepth",
}
_TORCH_MODULE_BASES = {
    "torch.nn.Module", "torch.nn.Sequential", "torch.nn.ModuleList", "torch.nn.ModuleDict",
    "pytorch_lightning.LightningModule", "lightning.LightningModule", "lightning.pytorch.LightningModule",
    "pytorch_lightning.core.LightningModule", "pytorch_lightning.core.lightning.LightningModule",
}
_KERAS_MODEL_BASES = {"keras.Model", "keras.Sequential", "keras.layers.Layer", "keras.Layer"}
_WRAPPERS = {
    "torch.nn.DataParallel", "torch.nn.parallel.DataParallel", "torch.nn.parallel.DistributedDataParallel",
    "torch.nn.DistributedDataParallel", "torch.compile",
}
_LOADERS = {"torch.load", "torch.jit.load", "torch.export.load", "copy.deepcopy", "copy.copy", "torch.jit.script",
            "torch.jit.trace", "torch.package.PackageImporter"}
#: calls that receive a model and never change its mode
_NO_MODE_CHANGE_BUILTINS = {
    "print", "len", "str", "repr", "type", "isinstance", "id", "hasattr", "getattr", "list", "sum", "iter", "next",
    "enumerate", "zip", "vars", "dir", "display", "sorted", "map", "filter", "format", "hash",
}


def strip_passthrough(node: ast.AST | None) -> ast.AST | None:
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODEL_PASSTHROUGH_METHODS:
        node = node.func.value
    return node


def chain_mode(ctx: ModuleContext, node: ast.AST | None) -> str | None:
    """The mode set by the outermost `.eval()` / `.train(...)` of a `build().to(d).eval()` chain."""
    while isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MODEL_PASSTHROUGH_METHODS:
        if node.func.attr in ("eval", "train"):
            return mode_of_call(ctx, node)
        node = node.func.value
    return None


def mode_of_call(ctx: ModuleContext, call: ast.Call) -> str:
    """`.eval()` -> eval; `.train()` / `.train(True)` -> train; `.train(False)` -> eval;
    `.train(phase == "train")` -> unknown."""
    if call.func.attr == "eval":  # type: ignore[attr-defined]
        return EVAL
    arg = kwarg(call, "mode", 0)
    if arg is None:
        return TRAIN
    value = ctx.value(arg)
    if value is True or value == 1:
        return TRAIN
    if value is False or value == 0:
        return EVAL
    return UNKNOWN_MODE


def is_mode_call(call: ast.AST) -> bool:
    return (
        isinstance(call, ast.Call)
        and isinstance(call.func, ast.Attribute)
        and call.func.attr in ("eval", "train")
        and len(call.args) <= 1
        and all(kw.arg == "mode" for kw in call.keywords)
    )


class Analysis:
    """Per-module cache of the questions the four rules ask."""

    def __init__(self, ctx: ModuleContext):
        self.ctx = ctx
        self._scope_calls: dict[ast.AST, list[ast.Call]] = {}
        self._mode_memo: dict[tuple, frozenset] = {}
        self._in_progress: set[tuple] = set()
        self._class_memo: dict[tuple, tuple] = {}
        self._desc_memo: dict[int, list[ModuleDesc]] = {}
        self._sites_memo: dict[ast.AST, list[ast.Call]] = {}
        self._by_name: dict[str, list[ast.Call]] | None = None

    # ------------------------------------------------------------------ scopes
    def scope_of(self, node: ast.AST) -> ast.AST:
        """The function (or the module) whose body holds `node`."""
        for anc in self.ctx.ancestors(node):
            if isinstance(anc, _FUNCS):
                return anc
            if isinstance(anc, ast.Lambda):
                return anc
        return self.ctx.tree

    def calls_in_scope(self, scope: ast.AST) -> list[ast.Call]:
        if not self._scope_calls:
            self._scope_calls[self.ctx.tree] = []
            for c in self.ctx.calls:
                self._scope_calls.setdefault(self.scope_of(c), []).append(c)
        return self._scope_calls.get(scope, [])

    def function_named(self, call: ast.Call) -> ast.AST | None:
        """The module-local function (or same-class method via `self.`) a call reaches."""
        f = call.func
        name = None
        if isinstance(f, ast.Name):
            if f.id in self.ctx.classes:
                return None
            name = f.id
        elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls"):
            name = f.attr
            klass = self.ctx.enclosing_class(call)
            if klass is not None:
                for stmt in klass.body:
                    if isinstance(stmt, _FUNCS) and stmt.name == name:
                        return stmt
            return None
        if not name:
            return None
        defs = [d for d in self.ctx.functions.get(name, []) if self.ctx.enclosing_class(d) is None]
        if not defs:
            return None
        before = [d for d in defs if self.ctx.order.get(d, 0) < self.ctx.order.get(call, 0)]
        return (before or defs)[-1]

    def call_sites(self, func: ast.AST) -> list[ast.Call]:
        if func in self._sites_memo:
            return self._sites_memo[func]
        result = self._call_sites(func)
        self._sites_memo[func] = result
        return result

    def _call_sites(self, func: ast.AST) -> list[ast.Call]:
        if getattr(func, "name", None) == "__init__":
            klass = self.ctx.enclosing_class(func)
            if klass is None:
                return []
            return [c for c in self.ctx.calls if isinstance(c.func, ast.Name) and c.func.id == klass.name]
        if self._by_name is None:
            self._by_name = {}
            for call in self.ctx.calls:
                f = call.func
                if isinstance(f, ast.Name):
                    self._by_name.setdefault(f.id, []).append(call)
                elif isinstance(f, ast.Attribute) and isinstance(f.value, ast.Name) and f.value.id in ("self", "cls"):
                    self._by_name.setdefault(f.attr, []).append(call)
        name = getattr(func, "name", None)
        return [call for call in self._by_name.get(name or "", []) if self.function_named(call) is func]

    def bind(self, call: ast.Call, func: ast.AST) -> dict[str, ast.expr]:
        """Parameter name -> argument; `Cls(...)` binds `__init__` without its `self`."""
        return self.ctx.bind_arguments(call, func)

    def params(self, func: ast.AST) -> list[str]:
        args = func.args  # type: ignore[attr-defined]
        return [a.arg for a in args.posonlyargs + args.args + args.kwonlyargs]

    def bound_argument(self, call: ast.Call, func: ast.AST, param: str) -> ast.expr | None:
        bound = self.bind(call, func)
        if param in bound:
            return bound[param]
        return self.bound_argument_default(func, param)

    @staticmethod
    def bound_argument_default(func: ast.AST, param: str) -> ast.expr | None:
        return param_default(func, param)

    def binds_in(self, scope: ast.AST, name: str) -> bool:
        """Is `name` a parameter of, or assigned in, `scope`?"""
        if isinstance(scope, _FUNCS):
            a = scope.args
            names = [x.arg for x in a.posonlyargs + a.args + a.kwonlyargs] + [x.arg for x in (a.vararg, a.kwarg) if x]
            if name in names:
                return True
        return any(r.scope is scope and not isinstance(r.stmt, _FUNCS) for r in self.ctx.assignments.get(name, []))

    # ------------------------------------------------------------------ origins
    def param_function(self, node: ast.AST, at: ast.AST | None = None) -> ast.AST | None:
        """The function a bare name is a parameter of at that point (`node` a Name, or a plain
        name string with the place `at`): the context's binding in force there is the
        parameter itself, not a later rebinding or an outer variable of the same spelling."""
        name = node.id if isinstance(node, ast.Name) else node
        if not isinstance(name, str):
            return None
        rec = self.ctx.assignment_at(name, at if at is not None else node)
        return rec.stmt if is_parameter(rec) else None

    def parameter_sources(self, func: ast.AST, name: str) -> list[ast.AST]:
        """What a parameter receives: the argument of each call site in the module (the
        default where a call leaves it out); with no call site, the context's reading
        (`ctx.resolve`): the module-level variable of the same name, else the default."""
        sites = self.call_sites(func)
        if sites:
            out = []
            for call in sites:
                arg = self.bound_argument(call, func, name)
                if arg is not None:
                    out.append(arg)
            return out
        outer = [r for r in self.ctx.assignments.get(name, ()) if r.scope is self.ctx.tree and r.value is not None and not r.augmented]
        if outer:
            return [outer[-1].value]
        default = self.bound_argument_default(func, name)
        return [default] if default is not None else []

    def origin(self, node: ast.AST | None, depth: int = 0) -> ast.AST | None:
        """Follow names and `.to()/.eval()` chains to the expression that built the object."""
        for _ in range(30):
            node = strip_passthrough(node)
            if isinstance(node, (ast.Name, ast.Attribute)):
                key = self.ctx.key(node)
                rec = self.ctx.assignment_at(key, node) if key else None
                if rec is None or rec.value is None or rec.augmented:
                    return node
                node = rec.value
                continue
            return node
        return node

    def origins(self, node: ast.AST | None, depth: int = 0) -> list[ast.AST]:
        """Like `origin`, but a function parameter is followed to the arguments of the
        function's call sites in this module."""
        root = self.origin(node)
        if root is None or depth > MAX_DEPTH:
            return []
        if isinstance(root, ast.Name):
            rec = self.ctx.assignment_at(root.id, root)
            if is_parameter(rec):
                out: list[ast.AST] = []
                for arg in self.parameter_sources(rec.stmt, root.id):
                    out.extend(self.origins(arg, depth + 1))
                return out
            if rec is not None and rec.value is None:
                return self._unpacked(rec, root.id, depth)
        return [root]

    def deep_origins(self, origins: list[ast.AST], depth: int = 0) -> list[ast.AST]:
        """Origins, with calls of local functions replaced by what those functions return."""
        out: list[ast.AST] = []
        for o in origins:
            func = None
            if isinstance(o, ast.Call) and not self.ctx.call_name(o) and isinstance(o.func, ast.Name) and o.func.id not in self.ctx.classes:
                func = self.function_named(o)
            if func is None or depth > MAX_DEPTH:
                out.append(o)
                continue
            for node in ast.walk(func):
                if isinstance(node, ast.Return) and node.value is not None and self.scope_of(node) is func:
                    out.extend(self.deep_origins(self.origins(node.value), depth + 1))
        return out

    def origins_of_key(self, key: str, at: ast.AST, depth: int = 0) -> list[ast.AST]:
        rec = self.ctx.assignment_at(key, at)
        if rec is None:
            return []
        if is_parameter(rec):
            if depth > MAX_DEPTH:
                return []
            out: list[ast.AST] = []
            for arg in self.parameter_sources(rec.stmt, key):
                out.extend(self.origins(arg, depth + 1))
            return out
        if rec.value is None:
            return self._unpacked(rec, key, depth)
        return self.origins(rec.value, depth)

    def _unpacked(self, rec, name: str, depth: int) -> list[ast.AST]:
        """`model, transforms = create_model()`: element i of the local function's returns."""
        stmt = rec.stmt
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Tuple):
            return []
        names = [self.ctx.key(e) for e in stmt.targets[0].elts]
        if name not in names or not isinstance(stmt.value, ast.Call) or depth > MAX_DEPTH:
            return []
        index = names.index(name)
        func = self.function_named(stmt.value)
        if func is None:
            return []
        out: list[ast.AST] = []
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and self.scope_of(node) is func and isinstance(node.value, ast.Tuple):
                if len(node.value.elts) == len(names):
                    out.extend(self.origins(node.value.elts[index], depth + 1))
        return out

    # ------------------------------------------------------------------ torch modules
    def torch_modules(self, node: ast.AST | None, depth: int = 0) -> list[ModuleDesc]:
        """What torch module(s) an expression may hold ([] when unknown)."""
        out: list[ModuleDesc] = []
        if depth > MAX_DEPTH:
            return out
        for root in self.origins(node):
            if isinstance(root, ast.Call):
                desc = self.torch_module_of_call(root, depth + 1)
                if desc is not None:
                    out.append(desc)
        return out

    def torch_module_of_call(self, call: ast.Call, depth: int = 0) -> ModuleDesc | None:
        memo_key = id(call)
        if memo_key in self._desc_memo:
            found = self._desc_memo[memo_key]
            return found[0] if found else None
        self._desc_memo[memo_key] = []
        desc = self._torch_module_of_call(call, depth)
        self._desc_memo[memo_key] = [desc] if desc else []
        return desc

    def _torch_module_of_call(self, call: ast.Call, depth: int) -> ModuleDesc | None:
        ctx = self.ctx
        name = ctx.call_name(call) or ""
        for info in ctx.models:
            if info.call is call:
                if info.framework == "torchvision":
                    return ModuleDesc("torch", f"{info.arch} (torchvision)", knowledge.torchvision_has_bn(info.arch),
                                      torchvision_has_dropout(info.arch), TRAIN, call)
                if info.framework == "timm":
                    drop = None
                    for kw in ("drop_rate", "drop_path_rate"):
                        v = ctx.number(kwarg(call, kw))
                        if v:
                            drop = True
                    return ModuleDesc("torch", f"{info.arch} (timm)", timm_has_bn(info.family or info.arch), drop, TRAIN, call)
                if info.framework == "hub":
                    return ModuleDesc("torch", f"{info.arch} (torch.hub)", name_has_bn(info.arch), None, UNKNOWN_MODE, call)
                if info.framework == "hf":
                    text = ctx.string(kwarg(call, "pretrained_model_name_or_path", 0)) or info.arch
                    return ModuleDesc("torch", info.arch, name_has_bn(text), None, EVAL, call)
                return None
        if name in _WRAPPERS and call.args:
            inner = self.torch_modules(call.args[0], depth + 1)
            if inner:
                d = inner[0]
                return ModuleDesc("torch", d.label, d.bn, d.dropout, d.initial, d.node)
            return None
        if name.startswith("torch.nn.") and name.count(".") == 2:
            cls = last(name)
            if _TORCH_BN.match(cls):
                return ModuleDesc("torch", f"nn.{cls}", True, False, TRAIN, call)
            if _TORCH_DROP.match(cls):
                return ModuleDesc("torch", f"nn.{cls}", False, True, TRAIN, call)
            if cls in ("Sequential", "ModuleList", "ModuleDict"):
                bn, drop = self._torch_container_features(call, depth)
                return ModuleDesc("torch", f"nn.{cls}", bn, drop, TRAIN, call)
            if cls[:1].isupper() and cls not in ("Parameter", "ParameterList", "ParameterDict"):
                return ModuleDesc("torch", f"nn.{cls}", False, False, TRAIN, call)
            return None
        if name == "torchvision.ops.FrozenBatchNorm2d" or name.endswith(".FrozenBatchNorm2d"):
            return ModuleDesc("torch", "FrozenBatchNorm2d", False, False, TRAIN, call)
        if name in _LOADERS:
            src = self.torch_modules(call.args[0], depth + 1) if (call.args and name.startswith("copy")) else []
            bn = src[0].bn if src else None
            drop = src[0].dropout if src else None
            return ModuleDesc("torch", "loaded module", bn, drop, UNKNOWN_MODE, call)
        f = call.func
        if isinstance(f, ast.Name) and f.id in ctx.classes and self.is_torch_class(ctx.classes[f.id]):
            bn, drop = self.torch_class_features(ctx.classes[f.id], depth)
            return ModuleDesc("torch", f.id, bn, drop, TRAIN, call)
        if not name and isinstance(f, ast.Name):
            func = self.function_named(call)
            if func is not None:
                return self._returned_module(func, depth)
        return None

    def _returned_module(self, func: ast.AST, depth: int) -> ModuleDesc | None:
        descs: list[ModuleDesc] = []
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and node.value is not None and self.scope_of(node) is func:
                value = node.value
                if isinstance(value, ast.Tuple):
                    return None
                found = self.torch_modules(value, depth + 1)
                if not found:
                    return None
                descs.extend(found)
        if not descs:
            return None
        bn = descs[0].bn
        drop = descs[0].dropout
        for d in descs[1:]:
            bn = bn if bn == d.bn else None
            drop = drop if drop == d.dropout else None
        return ModuleDesc("torch", descs[0].label, bn, drop, descs[0].initial, descs[0].node)

    def _torch_container_features(self, call: ast.Call, depth: int) -> tuple[bool | None, bool | None]:
        bn: bool | None = False
        drop: bool | None = False
        elements: list[ast.AST] = []
        for arg in call.args:
            if isinstance(arg, ast.Starred):
                inner = self.origin(arg.value)
                if isinstance(inner, (ast.List, ast.Tuple)):
                    elements.extend(inner.elts)
                else:
                    return None, None
            elif isinstance(arg, (ast.List, ast.Tuple)):
                elements.extend(arg.elts)
            elif isinstance(arg, ast.Dict):
                elements.extend(arg.values)
            elif isinstance(arg, ast.Call) and last(self.ctx.call_name(arg)) == "OrderedDict" and arg.args:
                seq = arg.args[0]
                if isinstance(seq, (ast.List, ast.Tuple)):
                    for pair in seq.elts:
                        if isinstance(pair, ast.Tuple) and len(pair.elts) == 2:
                            elements.append(pair.elts[1])
                        else:
                            return None, None
                else:
                    return None, None
            else:
                elements.append(arg)
        for el in elements:
            descs = self.torch_modules(el, depth + 1)
            if not descs:
                bn = _or(bn, None)
                drop = _or(drop, None)
                continue
            bn = _or(bn, descs[0].bn)
            drop = _or(drop, descs[0].dropout)
        return bn, drop

    def is_torch_class(self, klass: ast.ClassDef, depth: int = 0) -> bool:
        if depth > MAX_DEPTH:
            return False
        for base in klass.bases:
            qual = self.ctx.qualname(base) or ""
            if qual in _TORCH_MODULE_BASES or qual.startswith("torchvision.models."):
                return True
            if isinstance(base, ast.Name) and base.id in self.ctx.classes and self.ctx.classes[base.id] is not klass:
                if self.is_torch_class(self.ctx.classes[base.id], depth + 1):
                    return True
        return False

    def torch_class_features(self, klass: ast.ClassDef, depth: int = 0) -> tuple[bool | None, bool | None]:
        """Does a module-local nn.Module class contain BatchNorm / Dropout (following local
        classes, torchvision/timm builders and nn containers it builds)?"""
        key = ("torch", id(klass))
        if key in self._class_memo:
            return self._class_memo[key]
        self._class_memo[key] = (None, None)
        bn: bool | None = False
        drop: bool | None = False
        unknown = False
        for base in klass.bases:
            qual = self.ctx.qualname(base) or ""
            if qual.startswith("torchvision.models."):
                fam = last(qual).lower()
                bn = _or(bn, knowledge.torchvision_has_bn(fam) if knowledge.torchvision_family(fam) else None)
            elif isinstance(base, ast.Name) and base.id in self.ctx.classes and self.ctx.classes[base.id] is not klass:
                b, d = self.torch_class_features(self.ctx.classes[base.id], depth + 1)
                bn, drop = _or(bn, b), _or(drop, d)
            elif qual and qual not in _TORCH_MODULE_BASES:
                unknown = True
        for node in ast.walk(klass):
            if isinstance(node, ast.Call):
                name = self.ctx.call_name(node) or ""
                cls = last(name)
                if name.startswith("torch.nn.") and _TORCH_BN.match(cls):
                    bn = True
                elif name.startswith("torch.nn.") and _TORCH_DROP.match(cls):
                    drop = True
                elif name in ("torch.nn.functional.dropout", "torch.nn.functional.dropout2d", "torch.nn.functional.dropout1d",
                              "torch.nn.functional.dropout3d", "torch.nn.functional.alpha_dropout", "torch.nn.functional.feature_alpha_dropout"):
                    drop = True
                elif name.startswith("torch.nn.functional.batch_norm"):
                    bn = True
                elif name.startswith(("torchvision.models.", "timm.", "torch.hub.")):
                    for desc in self.torch_modules(node, depth + 1):
                        bn, drop = _or(bn, desc.bn), _or(drop, desc.dropout)
                elif isinstance(node.func, ast.Name) and node.func.id in self.ctx.classes and self.ctx.classes[node.func.id] is not klass:
                    other = self.ctx.classes[node.func.id]
                    if self.is_torch_class(other):
                        b, d = self.torch_class_features(other, depth + 1)
                        bn, drop = _or(bn, b), _or(drop, d)
            elif isinstance(node, ast.Assign) and len(node.targets) == 1:
                t = node.targets[0]
                if isinstance(t, ast.Attribute) and isinstance(t.value, ast.Name) and t.value.id == "self":
                    v = node.value
                    if isinstance(v, ast.Name):
                        if self.param_function(v) is not None:  # a module passed in: unknown content
                            unknown = True
                    elif isinstance(v, ast.Call) and self._opaque_constructor(v):
                        unknown = True
        if unknown:
            bn = True if bn else None
            drop = True if drop else None
        result = (bn, drop)
        self._class_memo[key] = result
        return result

    def _opaque_constructor(self, call: ast.Call) -> bool:
        """A `self.x = SomethingWeCannotSee(...)` inside a module class."""
        qual = self.ctx.call_name(call)
        if qual is None:
            f = call.func
            if isinstance(f, ast.Name) and f.id in self.ctx.classes:
                return False  # followed by the walk
            return isinstance(f, ast.Name) and f.id not in _NO_MODE_CHANGE_BUILTINS | {"range", "dict", "int", "float", "tuple", "set", "super"}
        if qual.startswith(("torch.", "torchvision.", "timm.", "math.", "numpy.", "collections.", "itertools.", "functools.")):
            return False
        for info in self.ctx.models:
            if info.call is call:
                return info.framework not in ("torchvision", "timm")
        return qual.split(".")[0] not in ("builtins",)

    def is_keras_class(self, klass: ast.ClassDef, depth: int = 0) -> bool:
        if depth > MAX_DEPTH:
            return False
        for base in klass.bases:
            qual = self.ctx.qualname(base) or ""
            if qual in _KERAS_MODEL_BASES or qual.startswith("keras.applications."):
                return True
            if isinstance(base, ast.Name) and base.id in self.ctx.classes and self.ctx.classes[base.id] is not klass:
                if self.is_keras_class(self.ctx.classes[base.id], depth + 1):
                    return True
        return False

    # ------------------------------------------------------------------ keras models
    def keras_features(self, node: ast.AST | None, depth: int = 0) -> tuple[bool | None, bool | None, str]:
        """(has BatchNormalization, has Dropout, label) of a Keras model/layer expression."""
        if node is None or depth > MAX_DEPTH:
            return None, None, "model"
        roots = self.origins(node)
        if not roots:
            return None, None, "model"
        results = [self._keras_features_of(r, depth) for r in roots]
        bn, drop, label = results[0]
        for b, d, _ in results[1:]:
            bn = bn if bn == b else None
            drop = drop if drop == d else None
        return bn, drop, label

    def _keras_features_of(self, root: ast.AST, depth: int) -> tuple[bool | None, bool | None, str]:
        ctx = self.ctx
        if not isinstance(root, ast.Call):
            return None, None, ctx.key(root) or "model"
        for info in ctx.models:
            if info.call is root and info.framework == "keras":
                fam = info.family or ""
                bn = fam not in knowledge.KERAS_FAMILIES_WITHOUT_BN
                drop = fam in ("efficientnet", "efficientnet_v2", "convnext", "mobilenet", "mobilenet_v3", "nasnet") or None
                return bn, drop, info.arch
        name = ctx.call_name(root) or ""
        if name.startswith("keras.layers."):
            cls = last(name)
            if cls in _KERAS_BN:
                return True, False, cls
            if cls in _KERAS_DROP:
                return False, True, cls
            if cls in ("TFSMLayer", "TorchModuleWrapper", "Lambda", "Bidirectional", "TimeDistributed", "Wrapper"):
                return None, None, cls
            return False, False, cls
        if name == "keras.Sequential":
            bn, drop = self._keras_sequential(root, depth)
            return bn, drop, "Sequential model"
        if name == "keras.Model":
            outputs = kwarg(root, "outputs", 1)
            if outputs is None:
                return None, None, "Model"
            bn, drop, _ = self.trace_keras_graph(outputs, depth + 1)
            return bn, drop, "functional Model"
        f = root.func
        if isinstance(f, ast.Name) and f.id in ctx.classes and self.is_keras_class(ctx.classes[f.id]):
            bn, drop = self._keras_class_features(ctx.classes[f.id], depth)
            return bn, drop, f.id
        if not name and isinstance(f, ast.Name):
            func = self.function_named(root)
            if func is not None:
                return self._keras_returned(func, depth)
        return None, None, last(name) or (ctx.key(f) or "model")

    def _keras_returned(self, func: ast.AST, depth: int) -> tuple[bool | None, bool | None, str]:
        results = []
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and node.value is not None and self.scope_of(node) is func:
                results.append(self.keras_features(node.value, depth + 1))
        if not results:
            return None, None, getattr(func, "name", "model")
        bn, drop, label = results[0]
        for b, d, _ in results[1:]:
            bn = bn if bn == b else None
            drop = drop if drop == d else None
        return bn, drop, label

    def _keras_sequential(self, call: ast.Call, depth: int) -> tuple[bool | None, bool | None]:
        elements: list[ast.AST] = []
        layers_arg = kwarg(call, "layers", 0)
        if layers_arg is not None:
            seq = self.origin(layers_arg)
            if isinstance(seq, (ast.List, ast.Tuple)):
                elements.extend(seq.elts)
            else:
                return None, None
        # model.add(...) on the variable holding this Sequential
        stmt = self.ctx.statement(call)
        if isinstance(stmt, ast.Assign) and stmt.value is call:
            keys = {self.ctx.key(t) for t in stmt.targets}
            for add in self.ctx.method_calls("add"):
                recv = add.func.value  # type: ignore[attr-defined]
                if self.ctx.key(recv) in keys and add.args and self.origin(recv) is call:
                    elements.append(add.args[0])
        bn: bool | None = False
        drop: bool | None = False
        for el in elements:
            if isinstance(el, ast.Starred):
                return None, None
            b, d, _ = self.keras_features(el, depth + 1)
            bn, drop = _or(bn, b), _or(drop, d)
        return bn, drop

    def _keras_class_features(self, klass: ast.ClassDef, depth: int) -> tuple[bool | None, bool | None]:
        key = ("keras", id(klass))
        if key in self._class_memo:
            return self._class_memo[key]
        self._class_memo[key] = (None, None)
        bn: bool | None = False
        drop: bool | None = False
        for base in klass.bases:
            qual = self.ctx.qualname(base) or ""
            if qual.startswith("keras.applications."):
                ctor = last(qual)
                module = knowledge.KERAS_CONSTRUCTORS.get(ctor)
                bn = _or(bn, None if module is None else module not in knowledge.KERAS_FAMILIES_WITHOUT_BN)
        for node in ast.walk(klass):
            if not isinstance(node, ast.Call):
                continue
            name = self.ctx.call_name(node) or ""
            cls = last(name)
            if name.startswith("keras.layers.") and cls in _KERAS_BN:
                bn = True
            elif name.startswith("keras.layers.") and cls in _KERAS_DROP:
                drop = True
            elif name.startswith("keras.applications."):
                b, d, _ = self._keras_features_of(node, depth + 1)
                bn, drop = _or(bn, b), _or(drop, d)
            elif isinstance(node.func, ast.Name) and node.func.id in self.ctx.classes and self.ctx.classes[node.func.id] is not klass:
                other = self.ctx.classes[node.func.id]
                if self.is_keras_class(other):
                    b, d = self._keras_class_features(other, depth + 1)
                    bn, drop = _or(bn, b), _or(drop, d)
        self._class_memo[key] = (bn, drop)
        return bn, drop

    def trace_keras_graph(self, outputs: ast.AST, depth: int = 0, reached: set | None = None) -> tuple[bool | None, bool | None, set]:
        """Walk a functional graph backwards from `outputs` (layer applications, `base(x)`,
        `base.output`) to the inputs. Returns BN / Dropout presence and the origins of the
        models whose call or `.output` the graph goes through."""
        reached = set() if reached is None else reached
        bn: bool | None = False
        drop: bool | None = False
        budget = [400]
        seen: set[int] = set()

        def layer(fn: ast.AST) -> None:
            nonlocal bn, drop
            b, d, _ = self.keras_features(fn, depth + 1)
            bn, drop = _or(bn, b), _or(drop, d)
            for r in self.origins(fn):
                reached.add(r)

        def visit(node: ast.AST | None) -> None:
            nonlocal bn, drop
            if node is None or budget[0] <= 0 or id(node) in seen:
                return
            seen.add(id(node))
            budget[0] -= 1
            if isinstance(node, ast.Name):
                rec = self.ctx.assignment_at(node.id, node)
                if rec is not None and rec.value is not None:
                    visit(rec.value)
                return
            if isinstance(node, (ast.List, ast.Tuple)):
                for e in node.elts:
                    visit(e)
                return
            if isinstance(node, ast.Dict):
                for v in node.values:
                    visit(v)
                return
            if isinstance(node, ast.Subscript):
                visit(node.value)
                return
            if isinstance(node, ast.Attribute):
                if node.attr in ("output", "outputs"):
                    owner = node.value
                    if isinstance(owner, ast.Call) and isinstance(owner.func, ast.Attribute) and owner.func.attr == "get_layer":
                        owner = owner.func.value
                    elif isinstance(owner, ast.Subscript):
                        owner = owner.value
                        if isinstance(owner, ast.Attribute) and owner.attr == "layers":
                            owner = owner.value
                    layer(owner)
                return
            if isinstance(node, ast.BinOp):
                visit(node.left)
                visit(node.right)
                return
            if isinstance(node, ast.Call):
                name = self.ctx.call_name(node) or ""
                if last(name) in ("Input", "InputLayer"):
                    return
                if isinstance(node.func, ast.Call):  # layers.Dense(10)(x)
                    layer(node.func)
                elif isinstance(node.func, (ast.Name, ast.Attribute)) and not name:
                    func = self.function_named(node) if isinstance(node.func, ast.Name) else None
                    if func is not None:  # x = conv_block(x, 64)
                        for inner in ast.walk(func):
                            if isinstance(inner, ast.Call):
                                iname = self.ctx.call_name(inner) or ""
                                if iname.startswith("keras.layers.") and last(iname) in _KERAS_BN:
                                    bn = True
                                elif iname.startswith("keras.layers.") and last(iname) in _KERAS_DROP:
                                    drop = True
                    elif isinstance(node.func, ast.Attribute) and node.func.attr in ("predict", "numpy", "shape"):
                        return
                    else:
                        layer(node.func)
                elif name.startswith("keras.layers.") and last(name)[:1].islower():
                    pass  # layers.concatenate([...]), layers.add([...])
                for a in node.args:
                    visit(a)
                for kw in node.keywords:
                    if kw.arg in (None, "inputs", "x") or kw.arg is None:
                        visit(kw.value)
                return

        visit(outputs)
        return bn, drop, reached

    def reaches_keras_input(self, node: ast.AST | None) -> bool:
        """Is this expression a symbolic tensor: derived from `keras.Input(...)` through
        layer applications (a functional model being built)?"""
        budget = [200]
        seen: set[int] = set()

        def visit(n: ast.AST | None) -> bool:
            if n is None or budget[0] <= 0 or id(n) in seen:
                return False
            seen.add(id(n))
            budget[0] -= 1
            if isinstance(n, ast.Name):
                rec = self.ctx.assignment_at(n.id, n)
                if is_parameter(rec):
                    # symbolic if a call site passes a symbolic tensor
                    return any(visit(arg) for arg in self.parameter_sources(rec.stmt, n.id))
                if rec is None or rec.value is None:
                    return False
                return visit(rec.value)
            if isinstance(n, ast.Attribute):
                return n.attr in ("input", "inputs", "output", "outputs")
            if isinstance(n, (ast.List, ast.Tuple)):
                return any(visit(e) for e in n.elts)
            if isinstance(n, ast.Subscript):
                return visit(n.value)
            if isinstance(n, ast.BinOp):
                return visit(n.left) or visit(n.right)
            if isinstance(n, ast.Call):
                name = self.ctx.call_name(n) or ""
                if last(name) in ("Input", "InputLayer") and (name.startswith("keras.") or not name.startswith(("torch", "numpy"))):
                    return True
                return any(visit(a) for a in n.args)
            return False

        return visit(node)

    # ------------------------------------------------------------------ torch modes
    def mode_at(self, key: str, site: ast.AST, depth: int = 0) -> frozenset:
        """Possible modes ({"train"}, {"eval"}, both, or with "unknown") of the object at `key`
        just before `site`."""
        scope = self.scope_of(site)
        memo = (id(scope), key, id(site))
        if memo in self._mode_memo:
            return self._mode_memo[memo]
        if memo in self._in_progress or depth > MAX_DEPTH:
            return frozenset({UNKNOWN_MODE})
        self._in_progress.add(memo)
        try:
            state = self._scan(scope, key, site, depth)
            if _ENTRY in state:
                state = (state - {_ENTRY}) | self._entry_modes(scope, key, site, depth)
            if state == {EVAL} and self.loop_carried(scope, key, site, depth) is not None:
                state = {TRAIN}
            result = frozenset(state)
        finally:
            self._in_progress.discard(memo)
        self._mode_memo[memo] = result
        return result

    def exit_effect(self, func: ast.AST, key: str, depth: int) -> frozenset | None:
        """What calling `func` does to the mode of `key` (a name inside func): None when it does
        not touch it; modes, with `_ENTRY` when some paths leave it unchanged."""
        memo = (id(func), key, "exit")
        if memo in self._mode_memo:
            res = self._mode_memo[memo]
            return None if res == frozenset({_ENTRY}) else res
        if memo in self._in_progress or depth > MAX_DEPTH:
            return frozenset({UNKNOWN_MODE})
        self._in_progress.add(memo)
        try:
            state = frozenset(self._scan(func, key, None, depth))
        finally:
            self._in_progress.discard(memo)
        self._mode_memo[memo] = state
        return None if state == frozenset({_ENTRY}) else state

    def loop_carried(self, scope: ast.AST, key: str, site: ast.AST, depth: int) -> ast.AST | None:
        """`for epoch: validate (eval set before the loop) ... model.train(); train`: from the
        second iteration on, the site runs after the `.train()` later in the loop body."""
        ctx = self.ctx
        loops = []
        for anc in ctx.ancestors(site):
            if anc is scope:
                break
            if isinstance(anc, (ast.For, ast.AsyncFor, ast.While)) and not any(site is n or n in ctx.ancestors(site) for n in anc.orelse):
                loops.append(anc)
        if not loops:
            return None
        site_pos = ctx.order.get(site, 0)
        events = [(n, m) for n, m in self._events(scope, key, 1 << 60, depth)]
        for loop in loops:
            inside = [(n, m) for n, m in events if any(x is loop for x in ctx.ancestors(n))]
            before = [(n, m) for n, m in inside if ctx.order.get(n, 0) < site_pos and not self._conditional(n, site, scope)]
            if before:
                continue  # the mode is set again inside the loop before the site
            after = [(n, m) for n, m in inside if ctx.order.get(n, 0) > site_pos]
            if not after:
                continue
            node, modes = after[-1]
            if modes == frozenset({TRAIN}) and not self._conditional(node, site, scope):
                return node
        return None

    def train_reason(self, key: str, site: ast.AST, depth: int = 0) -> str:
        """Why `key` is in training mode at `site`: the statement that put it there."""
        ctx = self.ctx
        scope = self.scope_of(site)
        carried = self.loop_carried(scope, key, site, 0)
        if carried is not None:
            if isinstance(carried, ast.Call) and is_mode_call(carried):
                what = f"{ctx.key(strip_passthrough(carried.func.value)) or key}.train()"  # type: ignore[attr-defined]
            else:
                what = f"the statement resetting {key} to training mode"
            return f"{what} at {place(ctx, carried)}, later in the same loop, runs before this from the second iteration on"
        limit = ctx.order.get(site, 1 << 60)
        last_node = None
        for node, modes in self._events(scope, key, limit, 0):
            if node is site or any(x is node for x in ctx.ancestors(site)):
                continue
            if TRAIN in modes and not self._conditional(node, site, scope):
                last_node = node
            elif not self._conditional(node, site, scope):
                last_node = None
        if last_node is not None:
            where = place(ctx, last_node)
            if isinstance(last_node, ast.Call) and is_mode_call(last_node):
                return f"{ctx.key(strip_passthrough(last_node.func.value)) or key}.train() at {where}"  # type: ignore[attr-defined]
            if isinstance(last_node, ast.Call):
                callee = ctx.key(last_node.func) or "the call"
                return f"{callee}() at {where} leaves it in training mode"
            return f"created at {where}; a new module starts in training mode"
        if isinstance(scope, _FUNCS) and depth < 3:
            root = re.split(r"[.\[]", key, 1)[0]
            for call in self.call_sites(scope):
                if root in self.params(scope) and root not in ("self", "cls"):
                    arg = self.bound_argument(call, scope, root)
                    akey = ctx.key(strip_passthrough(arg) or arg) if arg is not None else None
                    if akey and self.mode_at(akey + key[len(root):], call) == frozenset({TRAIN}):
                        return self.train_reason(akey + key[len(root):], call, depth + 1)
                elif self.mode_at(key, call) == frozenset({TRAIN}):
                    return self.train_reason(key, call, depth + 1)
        root = re.split(r"[.\[]", key, 1)[0]
        module_level = [r for r in ctx.assignments.get(root, []) if r.scope is ctx.tree and r.value is not None]
        if isinstance(scope, _FUNCS) and not self.call_sites(scope) and module_level:
            return f"created at {place(ctx, module_level[-1].stmt)} and never switched to eval anywhere in the file"
        return "no .eval() before this point"

    def _scan(self, scope: ast.AST, key: str, site: ast.AST | None, depth: int) -> set:
        limit = self.ctx.order.get(site, 1 << 60) if site is not None else 1 << 60
        state: set | None = None
        for node, modes in self._events(scope, key, limit, depth):
            if site is not None and (node is site or any(a is node for a in self.ctx.ancestors(site))):
                continue
            if self._conditional(node, site, scope):
                state = (state if state is not None else {_ENTRY}) | set(modes)
            else:
                state = set(modes)
        return state if state is not None else {_ENTRY}

    def _events(self, scope: ast.AST, key: str, limit: int, depth: int) -> Iterator[tuple[ast.AST, frozenset]]:
        ctx = self.ctx
        events: list[tuple[int, ast.AST, str, object]] = []
        root = re.split(r"[.\[]", key, 1)[0]
        for call in self.calls_in_scope(scope):
            pos = ctx.order.get(call, 0)
            if pos >= limit:
                continue
            if is_mode_call(call):
                recv = strip_passthrough(call.func.value)  # type: ignore[attr-defined]
                rkey = ctx.key(recv) if recv is not None else None
                if rkey and (rkey == key or key.startswith(rkey + ".") or key.startswith(rkey + "[")):
                    events.append((pos, call, "mode", None))
                continue
            # calls that receive the object (or its container)
            passed = None
            for arg in list(call.args) + [kw.value for kw in call.keywords]:
                a = strip_passthrough(arg.value if isinstance(arg, ast.Starred) else arg)
                akey = ctx.key(a) if a is not None else None
                if akey and (akey == key or key.startswith(akey + ".") or key.startswith(akey + "[")):
                    passed = (arg, akey)
                    break
            if passed is not None:
                events.append((pos, call, "passed", passed))
            elif self.function_named(call) is not None:
                func = self.function_named(call)
                # a free (global / self.x) name modified inside a local function
                if root == "self" or not self.binds_in(func, root):
                    if root != "self" or (isinstance(call.func, ast.Attribute)):
                        events.append((pos, call, "free", func))
            elif (
                isinstance(call.func, ast.Attribute)
                and ctx.key(strip_passthrough(call.func.value) or call.func.value) == key
                and call.func.attr not in MODEL_PASSTHROUGH_METHODS
            ):
                events.append((pos, call, "method", None))
        for rec in ctx.assignments.get(key, []) + (ctx.assignments.get(root, []) if root != key else []):
            if rec.scope is not scope or rec.index >= limit or isinstance(rec.stmt, _FUNCS):
                continue
            events.append((ctx.order.get(rec.stmt, rec.index), rec.stmt, "assign", rec))
        events.sort(key=lambda e: e[0])
        for _, node, kind, payload in events:
            modes = self._event_modes(node, kind, payload, key, depth)
            if modes is not None:
                yield node, modes

    def _event_modes(self, node: ast.AST, kind: str, payload: object, key: str, depth: int) -> frozenset | None:
        ctx = self.ctx
        if kind == "mode":
            return frozenset({mode_of_call(ctx, node)})  # type: ignore[arg-type]
        if kind == "assign":
            rec = payload
            value = rec.value  # type: ignore[attr-defined]
            if rec.augmented:  # type: ignore[attr-defined]
                return frozenset({UNKNOWN_MODE})
            if value is None:
                return self._unpacked_modes(rec, depth)
            if rec.key != key:  # the container was rebound  # type: ignore[attr-defined]
                return self.expr_modes(value, node, depth + 1)
            return self.expr_modes(value, node, depth + 1)
        if kind == "passed":
            call: ast.Call = node  # type: ignore[assignment]
            arg, akey = payload  # type: ignore[misc]
            func = self.function_named(call)
            if func is not None:
                bound = self.bind(call, func)
                param = next((p for p, v in bound.items() if v is arg), None)
                if param is None:
                    return frozenset({UNKNOWN_MODE})
                inner_key = param + key[len(akey):]
                return self.exit_effect(func, inner_key, depth + 1)
            name = ctx.call_name(call) or ""
            fname = call.func.id if isinstance(call.func, ast.Name) else None
            if fname in _NO_MODE_CHANGE_BUILTINS and not name:
                return None
            if name.startswith("torch.") or name in _NO_MODE_CHANGE_BUILTINS or name.startswith(("copy.", "numpy.", "os.", "math.", "logging.")):
                return None
            if isinstance(call.func, ast.Attribute) and call.func.attr in ("append", "info", "debug", "write", "format", "add_graph", "watch", "log"):
                return None
            if last(name) == "summary" and name.split(".")[0] in ("torchinfo", "torchsummary"):
                return None  # torchinfo restores the mode it found
            return frozenset({UNKNOWN_MODE})
        if kind == "free":
            return self.exit_effect(payload, key, depth + 1)  # type: ignore[arg-type]
        if kind == "method":
            call = node  # type: ignore[assignment]
            # model.fit(...) of a local class whose method sets self's mode
            for origin in self.origins(call.func.value):  # type: ignore[attr-defined]
                if isinstance(origin, ast.Call) and isinstance(origin.func, ast.Name) and origin.func.id in ctx.classes:
                    klass = ctx.classes[origin.func.id]
                    for stmt in klass.body:
                        if isinstance(stmt, _FUNCS) and stmt.name == call.func.attr:  # type: ignore[attr-defined]
                            return self.exit_effect(stmt, "self", depth + 1)
            return None
        return None

    def expr_modes(self, value: ast.AST, at: ast.AST, depth: int) -> frozenset:
        """The mode of the object an expression evaluates to (at statement `at`)."""
        ctx = self.ctx
        mode = chain_mode(ctx, value)
        if mode is not None:
            return frozenset({mode})
        root = strip_passthrough(value)
        if isinstance(root, (ast.Name, ast.Attribute)):
            rkey = ctx.key(root)
            if rkey:
                return self.mode_at(rkey, at, depth + 1)
            return frozenset({UNKNOWN_MODE})
        if isinstance(root, ast.Call):
            name = ctx.call_name(root) or ""
            if name in _WRAPPERS and root.args:
                return self.expr_modes(root.args[0], at, depth + 1)
            if not name and isinstance(root.func, ast.Name) and root.func.id not in ctx.classes:
                func = self.function_named(root)
                if func is None:
                    return frozenset({UNKNOWN_MODE})
                return self._returned_modes(func, depth + 1)
            desc = self.torch_module_of_call(root, depth + 1)
            if desc is not None:
                return frozenset({desc.initial})
        return frozenset({UNKNOWN_MODE})

    def _unpacked_modes(self, rec, depth: int) -> frozenset:
        """`model, transforms = create_model()`: the mode of element i of the returns."""
        stmt = rec.stmt
        if not isinstance(stmt, ast.Assign) or len(stmt.targets) != 1 or not isinstance(stmt.targets[0], ast.Tuple):
            return frozenset({UNKNOWN_MODE})
        names = [self.ctx.key(e) for e in stmt.targets[0].elts]
        if rec.key not in names or not isinstance(stmt.value, ast.Call):
            return frozenset({UNKNOWN_MODE})
        index = names.index(rec.key)
        func = self.function_named(stmt.value)
        if func is None:
            return frozenset({UNKNOWN_MODE})
        modes: set = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and self.scope_of(node) is func:
                if not isinstance(node.value, ast.Tuple) or len(node.value.elts) != len(names):
                    return frozenset({UNKNOWN_MODE})
                modes |= self.expr_modes(node.value.elts[index], node, depth + 1)
        return frozenset(modes or {UNKNOWN_MODE})

    def _returned_modes(self, func: ast.AST, depth: int) -> frozenset:
        modes: set = set()
        for node in ast.walk(func):
            if isinstance(node, ast.Return) and node.value is not None and self.scope_of(node) is func:
                modes |= self.expr_modes(node.value, node, depth + 1)
        return frozenset(modes or {UNKNOWN_MODE})

    def _entry_modes(self, scope: ast.AST, key: str, site: ast.AST, depth: int) -> set:
        """The state when `scope` is entered: from its call sites."""
        if not isinstance(scope, _FUNCS) or depth > MAX_DEPTH:
            return {UNKNOWN_MODE}
        root = re.split(r"[.\[]", key, 1)[0]
        sites = self.call_sites(scope)
        if not sites:
            return self._uncalled_global(scope, key, root, depth)
        out: set = set()
        # each call site is its own execution: one that certainly passes a model in training
        # mode is enough
        per_site: list[frozenset] = []
        if root in self.params(scope) and root not in ("self", "cls"):
            for call in sites:
                arg = self.bound_argument(call, scope, root)
                if arg is None:
                    per_site.append(frozenset({UNKNOWN_MODE}))
                    continue
                akey = self.ctx.key(strip_passthrough(arg) or arg)
                if akey and chain_mode(self.ctx, arg) is None:
                    per_site.append(self.mode_at(akey + key[len(root):], call, depth + 1))
                elif key == root:
                    per_site.append(self.expr_modes(arg, call, depth + 1))
                else:
                    per_site.append(frozenset({UNKNOWN_MODE}))
        elif root == "self":
            for call in sites:
                if not (isinstance(call.func, ast.Attribute) and isinstance(call.func.value, ast.Name) and call.func.value.id == "self"):
                    per_site.append(frozenset({UNKNOWN_MODE}))
                    continue
                per_site.append(self.mode_at(key, call, depth + 1))
        elif self.binds_in(scope, root):
            return {UNKNOWN_MODE}
        else:
            for call in sites:  # a global / closure variable
                per_site.append(self.mode_at(key, call, depth + 1))
        if any(m == frozenset({TRAIN}) for m in per_site):
            return {TRAIN}
        for m in per_site:
            out |= m
        return out or {UNKNOWN_MODE}

    def _uncalled_global(self, scope: ast.AST, key: str, root: str, depth: int) -> set:
        """A function nobody in the module calls (a web handler, a callback) that uses a
        module-level model: the model's state once the module has run, provided no code in
        any function ever switches its mode."""
        if root in ("self", "cls") or self.binds_in(scope, root) or self.param_function(root, scope.body[0] if scope.body else scope) is not None:
            return {UNKNOWN_MODE}
        if not any(r.scope is self.ctx.tree for r in self.ctx.assignments.get(root, [])):
            return {UNKNOWN_MODE}
        for call in self.ctx.calls:
            if is_mode_call(call):
                recv = strip_passthrough(call.func.value)  # type: ignore[attr-defined]
                rkey = self.ctx.key(recv) if recv is not None else None
                if rkey and (rkey == key or key.startswith(rkey + ".") or rkey.startswith(key + ".")):
                    if self.scope_of(call) is not self.ctx.tree:
                        return {UNKNOWN_MODE}
        state = self.exit_effect(self.ctx.tree, key, depth + 1)
        if state is None or _ENTRY in state:
            return {UNKNOWN_MODE}
        return set(state)

    def _conditional(self, event: ast.AST, site: ast.AST | None, scope: ast.AST) -> bool:
        """Is `event` in a branch that does not contain `site` (so it may not have run)?"""
        child = event
        site_ancestors = set(map(id, self.ctx.ancestors(site))) if site is not None else set()
        for anc in self.ctx.ancestors(event):
            if anc is scope:
                return False
            if isinstance(anc, (ast.If, ast.IfExp)):
                in_body = child in (anc.body if isinstance(anc.body, list) else [anc.body])
                in_else = child in (anc.orelse if isinstance(anc.orelse, list) else [anc.orelse])
                if in_body or in_else:
                    if id(anc) not in site_ancestors:
                        return True
                    branch = anc.body if in_body else anc.orelse
                    branch = branch if isinstance(branch, list) else [branch]
                    if not any(id(b) in site_ancestors or b is site for b in branch):
                        return True
            elif isinstance(anc, (ast.ExceptHandler, ast.BoolOp)) or type(anc).__name__ == "match_case":
                if id(anc) not in site_ancestors:
                    return True
            elif isinstance(anc, (ast.While, ast.For, ast.AsyncFor)) and child in anc.orelse:
                if id(anc) not in site_ancestors:
                    return True
            child = anc
        return False


_CACHE: weakref.WeakKeyDictionary[ModuleContext, Analysis] = weakref.WeakKeyDictionary()


def analysis(ctx: ModuleContext) -> Analysis:
    found = _CACHE.get(ctx)
    if found is None:
        found = Analysis(ctx)
        _CACHE[ctx] = found
    return found


# --------------------------------------------------------------------------- small helpers
def enclosing_functions(ctx: ModuleContext, node: ast.AST) -> Iterator[ast.AST]:
    for anc in ctx.ancestors(node):
        if isinstance(anc, _FUNCS):
            yield anc


def decorator_names(ctx: ModuleContext, func: ast.AST) -> list[str]:
    out = []
    for dec in getattr(func, "decorator_list", []):
        target = dec.func if isinstance(dec, ast.Call) else dec
        out.append(ctx.qualname(target) or ctx.key(target) or "")
    return out


def mentions_batchnorm(node: ast.AST) -> bool:
    try:
        text = ast.unparse(node)
    except Exception:  # noqa: BLE001 - unparse of odd trees
        return False
    return "BatchNorm" in text or "batchnorm" in text.lower()


def iter_keys(ctx: ModuleContext, nodes: Iterable[ast.AST]) -> Iterator[str]:
    for n in nodes:
        k = ctx.key(n)
        if k:
            yield k


def place(ctx: ModuleContext, node: ast.AST) -> str:
    """'line 12', or 'cell 3, line 4' in a notebook."""
    loc = ctx.location(node)
    if loc.cell is not None:
        return f"cell {loc.cell}, line {loc.line}"
    return f"line {loc.line}"
