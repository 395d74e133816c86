"""Cases from the second public-code review of BNS001, BNS002 and LRT001: the facts that
separate the false positives found there from the real findings."""

from __future__ import annotations

import ast
import textwrap

from auditor.analysis.context import ModuleContext
from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit
from auditor.rules._shared import in_dead_branch


def lines(code: str, source: str) -> list[int]:
    result = check_unit(SourceUnit("snippet.py", textwrap.dedent(source)), [code])
    return sorted(f.line for f in result.findings if f.rule == code)


def _ctx(source: str) -> ModuleContext:
    text = textwrap.dedent(source)
    return ModuleContext(SourceUnit("snippet.py", text), ast.parse(text))


def _marked(ctx: ModuleContext) -> ast.AST:
    return next(n for n in ast.walk(ctx.tree) if isinstance(n, ast.Call) and getattr(n.func, "id", "") == "marker")


# ---------------------------------------------------------------------------------- branches
def test_branch_fixed_by_a_constant_is_dead():
    ctx = _ctx(
        """
        ARCH = "vgg"
        def build(arch):
            if arch == "resnet":
                marker()
        build(ARCH)
        """
    )
    assert in_dead_branch(ctx, _marked(ctx))


def test_branch_chosen_by_an_argparse_default_is_live():
    ctx = _ctx(
        """
        import argparse
        parser = argparse.ArgumentParser()
        parser.add_argument("--arch", default="vgg")
        args = parser.parse_args()
        arch = args.arch
        if arch == "resnet":
            marker()
        """
    )
    assert not in_dead_branch(ctx, _marked(ctx))


def test_branch_on_a_parameter_of_an_uncalled_function_is_live():
    ctx = _ctx(
        """
        arch = "vgg"
        def build(arch):
            if arch in ("resnet", "densenet"):
                marker()
        """
    )
    assert not in_dead_branch(ctx, _marked(ctx))


def test_else_of_a_true_test_is_dead_and_unknown_tests_are_live():
    ctx = _ctx(
        """
        USE_BN = True
        if USE_BN and not False:
            pass
        else:
            marker()
        """
    )
    assert in_dead_branch(ctx, _marked(ctx))
    ctx = _ctx(
        """
        if torch.cuda.is_available():
            marker()
        """
    )
    assert not in_dead_branch(ctx, _marked(ctx))


# ---------------------------------------------------------------------------------- BNS001
_EXTRACTOR = """
import keras

def make_extractor():
    base = keras.applications.ResNet50(include_top=False, weights="imagenet")
    base.trainable = False
    return keras.Model(base.input, keras.layers.GlobalAveragePooling2D()(base.output))

extractor = make_extractor()
"""


def test_extractor_called_only_from_train_step_is_silent():
    src = _EXTRACTOR + textwrap.dedent(
        """
        class Captioner(keras.Model):
            def __init__(self, extractor, decoder):
                super().__init__()
                self.extractor = extractor
                self.decoder = decoder

            def train_step(self, data):
                feats = self.extractor(data[0])
                return {}

        Captioner(extractor, keras.layers.Dense(4)).fit(ds)
        """
    )
    assert lines("BNS001", src) == []


def test_extractor_used_inside_call_is_reported():
    src = _EXTRACTOR + textwrap.dedent(
        """
        class Classifier(keras.Model):
            def __init__(self, extractor):
                super().__init__()
                self.extractor = extractor
                self.head = keras.layers.Dense(4)

            def call(self, x):
                return self.head(self.extractor(x))

        Classifier(extractor).fit(ds)
        """
    )
    assert lines("BNS001", src) != []


def test_extractor_compiled_and_fitted_is_reported():
    src = _EXTRACTOR + "extractor.compile(optimizer='adam', loss='mse')\nextractor.fit(ds)\n"
    assert lines("BNS001", src) != []


def test_extractor_built_into_a_functional_model_is_reported():
    src = _EXTRACTOR + textwrap.dedent(
        """
        inputs = keras.Input((224, 224, 3))
        model = keras.Model(inputs, keras.layers.Dense(3)(extractor(inputs)))
        model.compile(optimizer="adam", loss="mse")
        """
    )
    assert lines("BNS001", src) != []


# ---------------------------------------------------------------------------------- BNS002
def test_model_returned_by_a_builder_is_followed_to_train():
    src = """
    from torchvision import models

    def build():
        net = models.resnet50(weights="DEFAULT")
        for p in net.parameters():
            p.requires_grad = False
        return net

    net = build()
    net.train()
    """
    assert lines("BNS002", src) == [11]


# ---------------------------------------------------------------------------------- LRT001
def test_random_input_next_to_the_step_only_is_silent():
    src = """
    import torch
    from torchvision import models

    m = models.resnet50(weights="DEFAULT")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    for _ in range(3):
        m(torch.randn(8, 3, 224, 224).cuda()).sum().backward()
        opt.step()
    """
    assert lines("LRT001", src) == []


def test_step_away_from_the_random_forward_is_reported():
    src = """
    import torch
    from torchvision import models

    m = models.resnet50(weights="DEFAULT")
    opt = torch.optim.Adam(m.parameters(), lr=1e-2)
    print(m(torch.randn(1, 3, 224, 224)).shape)

    def fit(loader):
        for x, y in loader:
            loss(m.forward_features(x), y).backward()
            opt.step()
    """
    assert lines("LRT001", src) == [6]
