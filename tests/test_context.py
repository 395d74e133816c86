"""The module context resolves names the way a reader does. These pin down its semantics so
that rules can rely on them (and no rule grows a private workaround again)."""

from __future__ import annotations

import ast
import textwrap

from auditor.analysis.context import UNKNOWN, ModuleContext
from auditor.analysis.source import SourceUnit


def ctx_of(src: str) -> tuple[ModuleContext, ast.Module]:
    src = textwrap.dedent(src)
    tree = ast.parse(src)
    return ModuleContext(SourceUnit("t.py", src), tree), tree


def name_at(tree: ast.AST, ident: str, line: int) -> ast.Name:
    return next(n for n in ast.walk(tree) if isinstance(n, ast.Name) and n.id == ident and n.lineno == line and isinstance(n.ctx, ast.Load))


def test_aliases_resolve_to_canonical_names():
    ctx, tree = ctx_of(
        """
        import tensorflow as tf
        from tensorflow.keras.applications import ResNet50 as R
        from torchvision import models as M
        import torch.nn as nn
        builder = tf.keras.applications.xception.Xception
        a = tf.keras.applications.VGG16()
        b = R()
        c = M.resnet.resnet50()
        d = nn.Linear(1, 2)
        e = builder()
        """
    )
    names = [ctx.call_name(c) for c in ctx.calls]
    assert names == [
        "keras.applications.VGG16",
        "keras.applications.ResNet50",
        "torchvision.models.resnet50",
        "torch.nn.Linear",
        "keras.applications.xception.Xception",
    ]


def test_constants_arithmetic_and_containers():
    ctx, tree = ctx_of(
        """
        BASE = 1e-3
        LR = BASE / 10
        MEAN = [0.5] * 3
        CLASSES = ["a", "b", "c"]
        N = len(CLASSES)
        CFG = {"lr": 3e-4}
        x = LR; y = MEAN; z = N; w = CFG["lr"]; v = CFG.get("lr", 1.0)
        """
    )
    line = 8
    assert ctx.value(name_at(tree, "LR", line)) == 1e-4
    assert ctx.value(name_at(tree, "MEAN", line)) == (0.5, 0.5, 0.5)
    assert ctx.value(name_at(tree, "N", line)) == 3
    assert ctx.value(name_at(tree, "CFG", line)) is not UNKNOWN
    w = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "w")  # type: ignore[attr-defined]
    v = next(n for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id == "v")  # type: ignore[attr-defined]
    assert ctx.value(w.value) == 3e-4 and ctx.value(v.value) == 3e-4


def test_argparse_defaults_and_class_attributes():
    ctx, tree = ctx_of(
        """
        import argparse
        class CFG:
            lr = 0.05
        p = argparse.ArgumentParser()
        p.add_argument("--learning-rate", "-l", type=float, default=0.1)
        args = p.parse_args()
        a = args.learning_rate
        b = CFG.lr
        cfg = CFG()
        c = cfg.lr
        """
    )
    values = {n.targets[0].id: ctx.value(n.value) for n in ast.walk(tree) if isinstance(n, ast.Assign) and n.targets[0].id in "abc"}  # type: ignore[attr-defined]
    assert values == {"a": 0.1, "b": 0.05, "c": 0.05}


def test_parameters_resolve_in_their_function_through_call_sites():
    ctx, tree = ctx_of(
        """
        x = 5
        def f(x, lr=0.1):
            return x + lr
        f(3)
        def g(y):
            return y
        g(1); g(2)
        def h(lr=0.2):
            return lr
        """
    )
    assert ctx.value(name_at(tree, "x", 4)) == 3
    assert ctx.value(name_at(tree, "lr", 4)) == 0.1
    assert ctx.value(name_at(tree, "y", 7)) is UNKNOWN  # callers disagree
    assert ctx.value(name_at(tree, "lr", 10)) == 0.2  # no caller: the default


def test_parameter_without_callers_reads_the_module_variable():
    ctx, tree = ctx_of(
        """
        from torchvision import models
        model = models.resnet50(weights="DEFAULT")
        def train(model):
            model.train()
        """
    )
    info = ctx.model_of(name_at(tree, "model", 5))
    assert info is not None and info.arch == "resnet50" and info.pretrained


def test_for_and_with_targets_resolve_in_their_bodies():
    ctx, tree = ctx_of(
        """
        f = 1
        p = 2
        with open("m.pkl", "rb") as f:
            a = f
        for p in [10]:
            b = p
        """
    )
    assert isinstance(ctx.resolve(name_at(tree, "f", 5)), ast.Call)
    assert ctx.value(name_at(tree, "p", 7)) is UNKNOWN  # the loop variable, not the 2 above


def test_lambda_and_comprehension_variables_shadow_outer_names():
    ctx, tree = ctx_of(
        """
        x = 5
        f = lambda x: x + 1
        ys = [x * 2 for x in range(3)]
        z = x
        """
    )
    lam = next(n for n in ast.walk(tree) if isinstance(n, ast.Lambda))
    comp = next(n for n in ast.walk(tree) if isinstance(n, ast.ListComp))
    assert ctx.value(lam.body.left) is UNKNOWN  # type: ignore[attr-defined]
    assert ctx.value(comp.elt.left) is UNKNOWN  # type: ignore[attr-defined]
    assert ctx.value(name_at(tree, "x", 5)) == 5  # the comprehension does not leak


def test_init_parameters_bind_from_instantiations():
    ctx, _ = ctx_of(
        """
        import timm
        class Net:
            def __init__(self, pretrained=False):
                self.backbone = timm.create_model("resnet50", pretrained=pretrained)
        net = Net(pretrained=True)
        """
    )
    (info,) = ctx.models
    assert info.pretrained is True and info.keys == ["self.backbone"]


def test_model_invocation_is_not_a_construction():
    ctx, _ = ctx_of(
        """
        from keras import applications, Input
        x = applications.ResNet50(weights=None)(Input((32, 32, 3)))
        """
    )
    assert [(m.arch, m.pretrained) for m in ctx.models] == [("ResNet50", False)]


def test_freezes_in_helpers_are_lifted_to_call_sites():
    ctx, _ = ctx_of(
        """
        from tensorflow import keras
        def set_trainable(model, flag=False):
            model.trainable = flag
        def freeze_if(m, enabled):
            if enabled:
                for p in m.parameters():
                    p.requires_grad = False
        def make(flag):
            base = keras.applications.ResNet50()
            base.trainable = flag
        base = keras.applications.VGG16()
        set_trainable(base)
        set_trainable(base, True)
        freeze_if(net.features, True)
        freeze_if(head, False)
        make(False)
        """
    )
    lifted = [(e.node.lineno, e.target, e.frozen) for e in ctx.freezes if isinstance(e.node, ast.Call)]
    assert lifted == [(13, "base", True), (14, "base", False), (15, "net.features", True)]
    # the helper's own local `base` is not mistaken for the module's `base`
    assert not [e for e in ctx.freezes if e.node.lineno == 17]


def test_framework_hook_parameters_are_not_their_defaults():
    ctx, tree = ctx_of(
        """
        from tensorflow import keras
        class Head(keras.Model):
            def call(self, inputs, training=False):
                return self.base(inputs, training=training)
        def helper(training=False):
            return training
        """
    )
    assert ctx.value(name_at(tree, "training", 5)) is UNKNOWN  # fit() passes True
    assert ctx.value(name_at(tree, "training", 7)) is False  # a plain function: its default


def test_constructor_passed_as_an_argument():
    ctx, _ = ctx_of(
        """
        from torchvision import models
        def build(arch, n):
            net = arch(pretrained=True)
            return net
        model = build(models.resnet18, 10)
        """
    )
    assert [(m.arch, m.pretrained, m.keys) for m in ctx.models] == [("resnet18", True, ["net"])]
