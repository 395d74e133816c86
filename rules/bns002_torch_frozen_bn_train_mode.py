"""BNS002: a PyTorch backbone frozen with requires_grad=False whose BatchNorm layers still train."""

from __future__ import annotations

import ast
import re

from auditor import knowledge
from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from ._modes import (
    EVAL,
    TRAIN,
    analysis,
    is_mode_call,
    is_training_name,
    mentions_batchnorm,
    mode_of_call,
    place,
    strip_passthrough,
)
from ._shared import call_site_freezes, in_dead_branch

_HEAD_NAMES = {"fc", "classifier", "head", "heads", "last_linear", "logits", "linear", "out", "output", "proj", "projection"}


class TorchFrozenBnTrainMode(StaticRule):
    """
    ## What it does
    Flags a PyTorch backbone frozen with `requires_grad = False` (or `requires_grad_(False)`)
    whose BatchNorm layers are left in training mode while the model trains.

    The model must contain BatchNorm (torchvision and timm architectures by name, classes of
    the file that build `nn.BatchNorm*d`), it must be trained (`model.train()`, or an
    optimizer/training function it is handed to), and nothing may keep the frozen BatchNorm
    layers in eval mode: no `.eval()` on the frozen part or on BatchNorm modules, no
    `FrozenBatchNorm2d`, no `track_running_stats=False`, no `momentum=0`, no overridden
    `train()` method, no `norm_eval=True`. The finding is at the first `.train()` on the
    model after the freeze, or at the freeze when the model is never put in training mode
    explicitly (a new module already is).

    ## Why is this bad?
    `requires_grad = False` only stops gradients to BatchNorm's `weight` and `bias`. The
    running mean and variance are buffers that BatchNorm overwrites on every forward pass in
    training mode, and `model.train()` sets training mode on every submodule, the frozen ones
    included. The "frozen" backbone therefore drifts towards the statistics of the new
    data set, batch by batch, while its affine weights stay fixed; small batches make the
    statistics noisy, and features at evaluation time no longer match what the head learnt.

    ## Example
    ```python
    import torch
    from torchvision import models

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
    for param in model.parameters():
        param.requires_grad = False
    model.fc = torch.nn.Linear(model.fc.in_features, 5)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)

    def train_one_epoch(loader):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    ```

    ## Use instead
    ```python
    import torch
    from torchvision import models

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
    for param in model.parameters():
        param.requires_grad = False
    model.fc = torch.nn.Linear(model.fc.in_features, 5)
    optimizer = torch.optim.SGD(model.fc.parameters(), lr=0.01, momentum=0.9)

    def train_one_epoch(loader):
        model.train()
        for module in model.modules():
            if isinstance(module, torch.nn.BatchNorm2d):
                module.eval()  # keep the frozen running statistics
        for images, labels in loader:
            optimizer.zero_grad()
            torch.nn.functional.cross_entropy(model(images), labels).backward()
            optimizer.step()
    ```

    ## Known problems
    Architectures are judged by name (torchvision and timm families, classes of the file);
    models built elsewhere or whose name says nothing (`torch.hub` repositories other than
    torchvision, Hugging Face checkpoints without a BatchNorm family in the name) are not.
    Keeping BatchNorm trainable on purpose while the rest is frozen (fastai's `train_bn`) is
    a choice, not this bug; such code usually sets a flag the rule recognises
    (`train_bn=`, `norm_eval=`). A freeze or constructor in a branch the file never takes
    (`elif arch == "inception":` with `arch = "squeezenet"` fixed in the file, not by an
    argparse default) does not count.

    ## References
    - FRAMEWORK_FACTS §3.2 (PT-bn, PT-docs-eval): `requires_grad=False` does not freeze running
      statistics; `module.train()` is recursive.
    - `torchvision.ops.FrozenBatchNorm2d` (TV-frozenbn); OpenMMLab `norm_eval=True` (MM-normeval).
    """

    code = "BNS002"
    name = "torch-frozen-bn-train-mode"
    category = "batchnorm"
    severity = Severity.WARNING
    requires = frozenset({"requires_grad"})
    message = (
        "{frozen} ({label}) is frozen with requires_grad=False ({freeze_at}) but its BatchNorm layers stay in "
        "training mode {how}: requires_grad does not freeze running_mean/running_var, which keep updating with "
        "every training batch"
    )
    fix = (
        "After each {model}.train(), put the frozen BatchNorm layers back in eval mode ({frozen_eval}), or replace them "
        "with torchvision.ops.FrozenBatchNorm2d."
    )

    def check(self, ctx):
        if not any(e.framework == "torch" and e.frozen for e in ctx.freezes):
            return
        a = analysis(ctx)
        kept: list[bool] = []
        reported: set = set()
        for ev in call_site_freezes(ctx):  # `freeze(model.features)`: judged at the helper's call sites
            if ev.framework != "torch" or not ev.frozen or not ev.target or ev.target == "?":
                continue
            if _spares_batchnorm(ctx, ev):
                continue  # `if "bn" not in name: p.requires_grad = False`: BatchNorm is meant to train
            if in_dead_branch(ctx, ev.node):
                continue  # `elif model_name == "inception": freeze(model)` with model_name = "squeezenet"
            owner = _Owner.build(ctx, a, ev)
            if owner is None or owner.identity in reported:
                continue
            if not owner.has_bn():
                continue
            if owner.part_evals():
                continue
            if not kept:
                kept.append(_kept_in_eval_globally(ctx))
            if kept[0]:
                return
            site, model_key = owner.first_train_after()
            if site is not None:
                how = f"through {ctx.key(site.func.value) or model_key}.train() here"
            elif any(a.mode_at(k, at) == frozenset({TRAIN}) for k, at in owner.training_sites() if k):
                site, model_key = owner.at, owner.root
                how = "while the model trains (a new module starts in training mode and nothing switches the frozen part to eval)"
            else:
                continue
            reported.add(owner.identity)
            frozen_eval = (
                f"{owner.target}.eval()" if owner.target != owner.root and not owner.target.startswith("self") else
                "for m in model.modules(): if isinstance(m, nn.BatchNorm2d): m.eval()"
            )
            yield self.finding(
                ctx,
                site,
                frozen=owner.target,
                label=owner.label,
                freeze_at=place(ctx, owner.at),
                how=how,
                model=model_key,
                frozen_eval=frozen_eval,
                evidence={"frozen": owner.target, "freeze_line": ctx.location(owner.at).line},
            )


def _spares_batchnorm(ctx, ev) -> bool:
    """A freeze whose condition leaves the normalisation layers out."""
    for anc in ctx.ancestors(ev.node):
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
            break
        if isinstance(anc, (ast.If, ast.IfExp)):
            try:
                text = ast.unparse(anc.test).lower()
            except Exception:  # noqa: BLE001
                continue
            if re.search(r"\bbn\b|bn\d|\.bn|'bn|\"bn|norm", text):
                return True
    return False


def _kept_in_eval_globally(ctx) -> bool:
    """Code anywhere in the file that keeps BatchNorm statistics fixed."""
    for node in ctx.nodes_of(ast.Name, ast.Attribute, ast.alias, ast.keyword, ast.Call, ast.Assign, ast.FunctionDef, ast.AsyncFunctionDef):
        if isinstance(node, ast.Name) and "FrozenBatchNorm" in node.id:
            return True
        if isinstance(node, ast.Attribute) and "FrozenBatchNorm" in node.attr:
            return True
        if isinstance(node, ast.alias) and "FrozenBatchNorm" in node.name:
            return True
        if isinstance(node, ast.keyword) and node.arg in ("track_running_stats", "norm_eval", "train_bn", "freeze_bn", "bn_frozen"):
            v = ctx.value(node.value)
            if (node.arg == "track_running_stats" and v is False) or (node.arg != "track_running_stats" and v is True) or (node.arg == "train_bn" and v is False):
                return True
        if isinstance(node, ast.Call) and node.keywords:
            name = ctx.call_name(node) or ""
            if "BatchNorm" in name:
                m = kwarg(node, "momentum")
                if m is not None and ctx.value(m) == 0:
                    return True
        if isinstance(node, ast.Assign):
            for t in node.targets:
                if isinstance(t, ast.Attribute) and t.attr in ("track_running_stats", "momentum"):
                    v = ctx.value(node.value)
                    if v is False or v == 0:
                        return True
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef)) and node.name == "train" and ctx.enclosing_class(node) is not None:
            # an overridden Module.train(mode) (OpenMMLab norm_eval style)
            if any(is_mode_call(c) for c in ast.walk(node)):
                return True
        if is_mode_call(node) and mode_of_call(ctx, node) == EVAL:
            if _eval_targets_norm_layers(ctx, node):
                return True
    return False


def _eval_targets_norm_layers(ctx, call: ast.Call) -> bool:
    recv = strip_passthrough(call.func.value)  # type: ignore[attr-defined]
    key = (ctx.key(recv) or "").lower() if recv is not None else ""
    parts = re.split(r"[._\[\]]+", key)
    if any(p in ("bn", "bns", "norm", "batchnorm", "bn_layer", "norm_layer") or p.startswith(("bn", "batchnorm")) for p in parts if p):
        return True
    for anc in ctx.ancestors(call):
        if isinstance(anc, (ast.If, ast.IfExp)) and mentions_batchnorm(anc.test):
            return True
        if isinstance(anc, (ast.For, ast.comprehension)) and mentions_batchnorm(anc.iter):
            return True
        if isinstance(anc, (ast.FunctionDef, ast.AsyncFunctionDef)):
            if "bn" in anc.name.lower().split("_") or "batchnorm" in anc.name.lower():
                return True
            break
    return False


class _Owner:
    """The frozen part, and the object whose mode controls it."""

    def __init__(self, ctx, a, ev, root: str, klass: ast.ClassDef | None, origins: list[ast.AST]):
        self.ctx = ctx
        self.a = a
        self.ev = ev
        self.root = root
        self.klass = klass
        self.origins = origins
        self.label = "model"
        self.target = ev.target  # the frozen part (in the caller's words when frozen by a helper)
        self.at = ev.node

    @property
    def identity(self):
        if self.klass is not None:
            return ("class", id(self.klass))
        return ("objects", tuple(sorted(id(o) for o in self.origins)))

    @classmethod
    def build(cls, ctx, a, ev):
        root = re.split(r"[.\[]", ev.target, 1)[0]
        if root == "self":
            klass = ctx.enclosing_class(ev.node)
            if klass is None or not a.is_torch_class(klass):
                return None
            return cls(ctx, a, ev, "self", klass, [])
        origins = [o for o in a.origins_of_key(root, ev.node) if isinstance(o, ast.Call)]
        live = [o for o in origins if not in_dead_branch(ctx, o)]
        origins = live or origins  # constructors in branches the file never takes do not count
        if not origins:
            return None
        return cls(ctx, a, ev, root, None, origins)

    # ------------------------------------------------------------------ BatchNorm
    def has_bn(self) -> bool:
        a, ctx = self.a, self.ctx
        target = self.target
        sub = target[len(self.root):].lstrip(".")
        first = re.split(r"[.\[]", sub, 1)[0] if sub else ""
        if first in _HEAD_NAMES:
            return False
        if self.klass is not None:
            self.label = self.klass.name
            if not sub:
                return a.torch_class_features(self.klass)[0] is True
            # self.backbone: what __init__ assigned to it
            key = target
            found = None
            for rec in ctx.assignments.get(key, []):
                if ctx.enclosing_class(rec.stmt) is self.klass and rec.value is not None:
                    found = rec
            if found is None:
                return False
            descs = a.torch_modules(found.value)
            if descs:
                self.label = descs[0].label
                return all(d.bn is True for d in descs)
            return False
        descs = []
        for origin in self.origins:
            d = a.torch_module_of_call(origin)
            if d is None:
                return False
            descs.append(d)
        self.label = descs[0].label
        if not sub:
            return all(d.bn is True for d in descs)
        # a part of a known architecture: model.features, model.layer1, model.backbone
        ok = True
        for d, origin in zip(descs, self.origins):
            info = next((m for m in ctx.models if m.call is origin), None)
            if info is not None and info.framework == "torchvision":
                fam = knowledge.torchvision_family(info.arch) or ""
                if fam in ("vgg", "alexnet") and first == "features":
                    ok = ok and knowledge.torchvision_has_bn(info.arch)
                else:
                    ok = ok and d.bn is True
            else:
                ok = ok and d.bn is True
        return ok

    # ------------------------------------------------------------------ handling
    def part_evals(self) -> bool:
        """`.eval()` on the frozen part itself (when it is a part of what is trained)."""
        ctx = self.ctx
        target = self.target
        if target == self.root and self.klass is None:
            return False
        for call in ctx.calls:
            if is_mode_call(call) and mode_of_call(ctx, call) == EVAL:
                recv = strip_passthrough(call.func.value)  # type: ignore[attr-defined]
                key = ctx.key(recv) if recv is not None else None
                if key is None:
                    continue
                if key == target or key.startswith(target + ".") or key.startswith(target + "["):
                    if self.klass is None or ctx.enclosing_class(call) is self.klass:
                        return True
                # backbone.eval() where the frozen object is a variable later wrapped
                if self.klass is None and target == self.root:
                    continue
                if self.klass is None and key.endswith("." + target.split(".", 1)[-1]):
                    return True
        return False

    # ------------------------------------------------------------------ training
    def _refers(self, recv: ast.AST, at: ast.AST) -> bool:
        """Does `recv` (at `at`) hold the owner, a part of it, or a model wrapping it?"""
        ctx, a = self.ctx, self.a
        key = ctx.key(recv)
        if key is None:
            return False
        if self.klass is not None:
            if (key == "self" or key.startswith("self.")) and ctx.enclosing_class(at) is self.klass:
                return True
            root = re.split(r"[.\[]", key, 1)[0]
            for origin in a.origins_of_key(root, at):
                if isinstance(origin, ast.Call) and isinstance(origin.func, ast.Name) and origin.func.id == self.klass.name:
                    return True
                if isinstance(origin, ast.Call) and self._wraps(origin, set()):
                    return True
            return False
        root = re.split(r"[.\[]", key, 1)[0]
        found = a.origins_of_key(root, at)
        # `net = build(...)`: a local builder function returns the frozen model
        for origin in found + [o for o in a.deep_origins(found) if o not in found]:
            if origin in self.origins:
                return True
            if isinstance(origin, ast.Call) and self._wraps(origin, set()):
                return True
        return False

    def _wraps(self, call: ast.Call, seen: set) -> bool:
        """Is the owner passed into this constructor (`Net(backbone)`, `nn.Sequential(backbone, head)`)?"""
        if id(call) in seen or len(seen) > 20:
            return False
        seen.add(id(call))
        for arg in list(call.args) + [kw.value for kw in call.keywords]:
            for node in ast.walk(arg):
                if isinstance(node, (ast.Name, ast.Attribute)):
                    for origin in self.a.origins(node):
                        if self.klass is None and origin in self.origins:
                            return True
                        if self.klass is not None and isinstance(origin, ast.Call) and isinstance(origin.func, ast.Name) and origin.func.id == self.klass.name:
                            return True
        return False

    def _after_freeze(self, node: ast.AST) -> bool:
        ctx, a = self.ctx, self.a
        freeze = self.at
        if ctx.order.get(node, 0) > ctx.order.get(freeze, 0):
            return True
        if self.klass is not None:
            return True  # methods of the module: run after construction
        scope = a.scope_of(node)
        if scope is a.scope_of(freeze):
            return False
        if isinstance(scope, (ast.FunctionDef, ast.AsyncFunctionDef)):
            sites = a.call_sites(scope)
            if not sites:
                return True  # called from elsewhere: after the module is built
            return any(self._after_freeze(s) for s in sites)
        return False

    def first_train_after(self):
        ctx = self.ctx
        for call in ctx.calls:
            if not is_mode_call(call) or mode_of_call(ctx, call) == EVAL:
                continue
            recv = strip_passthrough(call.func.value)  # type: ignore[attr-defined]
            if recv is None or not self._refers(recv, call):
                continue
            if self._after_freeze(call):
                return call, ctx.key(recv) or self.root
        return None, self.root

    def training_sites(self) -> list[tuple[str, ast.AST]]:
        """No `.train()`: where does the file still train the owner? (key of the model there,
        place): a train/fit function it is handed to, or the `.step()` of an optimizer over
        its parameters."""
        ctx = self.ctx
        out: list[tuple[str, ast.AST]] = []
        for call in ctx.calls:
            if ctx.order.get(call, 0) < ctx.order.get(self.at, 0) and self.klass is None:
                continue
            name = ctx.call_name(call) or ""
            callee = name.rsplit(".", 1)[-1] if name else (
                call.func.id if isinstance(call.func, ast.Name) else call.func.attr if isinstance(call.func, ast.Attribute) else "")
            is_opt = name.startswith("torch.optim.") and name.count(".") == 2 and callee[:1].isupper()
            is_train_fn = bool(callee) and is_training_name(callee) and not name.startswith("torch.") and bool(call.args or call.keywords)
            if not (is_opt or is_train_fn):
                continue
            for arg in list(call.args) + [kw.value for kw in call.keywords]:
                for node in ast.walk(arg):
                    if isinstance(node, (ast.Name, ast.Attribute)) and self._refers(node, call):
                        key = re.split(r"[.\[]", ctx.key(node) or "", 1)[0]
                        if is_train_fn:
                            out.append((ctx.key(node) if node is arg else key, call))
                        else:
                            for step in self._steps(call):
                                out.append((key, step))
                        break
                else:
                    continue
                break
        return out

    def _steps(self, optimizer: ast.Call) -> list[ast.Call]:
        ctx, a = self.ctx, self.a
        return [
            call for call in ctx.calls
            if isinstance(call.func, ast.Attribute) and call.func.attr == "step" and optimizer in a.origins(call.func.value)
        ]
