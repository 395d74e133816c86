"""Freezes inside helpers, as the freeze rules (BNS001, BNS002, LRT001) read the context's
call-site ("lifted") freeze events, and parameters resolved through the context's own
parameter bindings."""

from __future__ import annotations

import textwrap

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit


def run(code: str, source: str):
    result = check_unit(SourceUnit("snippet.py", textwrap.dedent(source)), [code])
    return [f for f in result.findings if f.rule == code]


def lines(code: str, source: str) -> list[int]:
    return sorted(f.line for f in run(code, source))


def test_bns001_freeze_reported_at_the_helper_call():
    src = """
    import keras

    def lock(m):
        m.trainable = False

    base = keras.applications.ResNet50(include_top=False, weights="imagenet", pooling="avg")
    lock(base)
    x = keras.Input((224, 224, 3))
    model = keras.Model(x, keras.layers.Dense(2)(base(x)))
    """
    found = run("BNS001", src)
    assert [f.line for f in found] == [10]
    assert "frozen at line 8" in found[0].message


def test_bns001_helper_that_freezes_its_own_base_is_not_a_construction_freeze():
    # the wrapper built by the helper is not frozen itself: only the inner call is reported
    src = """
    import keras

    def make(trainable=False):
        inner = keras.applications.ResNet50V2(include_top=False, weights="imagenet", pooling="avg")
        for layer in inner.layers:
            layer.trainable = trainable
        x = keras.Input((128, 128, 3))
        return keras.Model(x, inner(x))

    def assemble(flag=False):
        wrapper = make(flag)
        x = keras.Input((128, 128, 3))
        return keras.Model(x, keras.layers.Dense(3)(wrapper(x)))

    model = assemble()
    """
    assert lines("BNS001", src) == [9]


def test_bns002_helper_guarded_by_a_flag_the_call_turns_off():
    src = """
    import torch
    from torchvision import models

    def freeze_if(m, on):
        if on:
            for p in m.parameters():
                p.requires_grad = False

    net = models.resnet18(weights="DEFAULT")
    freeze_if(net, FLAG)
    opt = torch.optim.SGD(net.fc.parameters(), lr=1e-3, momentum=0.9)
    net.train()
    """
    assert lines("BNS002", src.replace("FLAG", "True")) == [13]
    assert lines("BNS002", src.replace("FLAG", "False")) == []


def test_lrt001_one_helper_toggles_both_phases():
    src = """
    import keras

    def set_trainable(m, flag):
        m.trainable = flag

    base = keras.applications.Xception(include_top=False, weights="imagenet", pooling="avg")
    x = keras.Input((299, 299, 3))
    model = keras.Model(x, keras.layers.Dense(2)(base(x, training=False)))
    set_trainable(base, False)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(data, epochs=1)
    set_trainable(base, True)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss="mse")
    model.fit(data, epochs=1)
    """
    assert lines("LRT001", src) == [14]


def test_lrt001_parameter_shadowing_a_module_variable():
    # inside train(), `lr` is train's parameter (1e-4 at its only call), not the module's 0.1
    src = """
    import torch
    from torchvision import models

    lr = 0.1
    model = models.resnet50(weights="DEFAULT")

    def train(net, lr):
        return torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)

    opt = train(model, 1e-4)
    """
    assert lines("LRT001", src) == []
    assert lines("LRT001", src.replace("1e-4)", "0.05)")) == [9]
