"""Focused resolution cases for BNS001, BNS002, INF001 and INF002 (the fixtures cover the
end-to-end styles; these pin down the data-flow decisions one at a time)."""

from __future__ import annotations

import textwrap

import pytest
from auditor.rules._modes import is_inference_name, is_unit_test_name, timm_has_bn

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit
from auditor.finding import Severity


def run(code: str, source: str, path: str = "snippet.py"):
    result = check_unit(SourceUnit(path, textwrap.dedent(source)), [code])
    return [f for f in result.findings if f.rule == code]


def lines(code: str, source: str, path: str = "snippet.py") -> list[int]:
    return sorted(f.line for f in run(code, source, path))


# ---------------------------------------------------------------------------------- helpers
@pytest.mark.parametrize(
    "name, expected",
    [
        ("predict", True), ("make_predictions", True), ("evaluate_model", True), ("run_inference", True),
        ("val_epoch", True), ("validationStep", True), ("test", True), ("serve_fn", True),
        ("train_and_evaluate", False), ("value_head", False), ("tester", False), ("fit", False), ("train_epoch", False),
    ],
)
def test_inference_names(name, expected):
    assert is_inference_name(name) is expected


def test_unit_test_names():
    assert is_unit_test_name("test_forward") and is_unit_test_name("testShapes")
    assert not is_unit_test_name("test_step") and not is_unit_test_name("test") and not is_unit_test_name("tester")


def test_timm_bn_by_name():
    assert timm_has_bn("resnet50.a1_in1k") is True
    assert timm_has_bn("tf_efficientnet_b3") is True
    assert timm_has_bn("vit_base_patch16_224") is False
    assert timm_has_bn("resnetv2_50x1_bit.goog_in21k") is False
    assert timm_has_bn("some_new_arch") is None


# ---------------------------------------------------------------------------------- INF001
NET = """
import torch
import torch.nn as nn

class Net(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU())
        self.head = nn.Linear(8, 2)
    def forward(self, x):
        return self.head(self.body(x).mean((2, 3)))
"""


def test_inf001_eval_before_one_call_site_but_not_the_other():
    src = NET + """
def score(model, batch):
    with torch.no_grad():
        return model(batch)

a = Net()
a.eval()
score(a, None)
b = Net()
score(b, None)
"""
    assert lines("INF001", src) == [15]


def test_inf001_parameter_without_call_sites_is_unknown():
    src = NET + """
def score(model, batch):
    with torch.no_grad():
        return model(batch)
"""
    assert lines("INF001", src) == []


def test_inf001_chained_eval_and_train_false():
    src = NET + """
m1 = Net().to("cpu").eval()
m2 = Net()
m2.train(mode=False)
m3 = Net()
m3.train(False)
m3.train()
with torch.no_grad():
    m1(None); m2(None); m3(None)
"""
    found = run("INF001", src)
    assert [f.message.split(" ")[0] for f in found] == ["m3"]
    assert "m3.train() at line" in found[0].message


def test_inf001_branches_that_may_differ_stay_silent():
    src = NET + """
model = Net()
for phase in ("train", "val"):
    if phase == "train":
        model.train()
    else:
        model.eval()
    with torch.no_grad():
        model(None)
"""
    assert lines("INF001", src) == []


def test_inf001_whole_module_loads_and_hf_are_silent():
    src = """
    import torch
    from transformers import AutoModel
    whole = torch.load("m.pt", weights_only=False)
    hf = AutoModel.from_pretrained("bert-base-uncased")
    with torch.no_grad():
        whole(1)
        hf(1)
    """
    assert lines("INF001", src) == []


def test_inf001_local_factory_and_tuple_unpacking():
    src = """
    import torch, torchvision

    def create(num_classes):
        model = torchvision.models.efficientnet_b2(weights="DEFAULT")
        transforms = None
        return model, transforms

    net, tf = create(3)
    with torch.inference_mode():
        net(torch.zeros(1, 3, 260, 260))
    """
    assert lines("INF001", src) == [11]


def test_inf001_factory_that_returns_eval_model():
    src = """
    import torch, torchvision

    def build():
        m = torchvision.models.resnet18(weights="DEFAULT")
        m.eval()
        return m

    net = build()
    with torch.no_grad():
        net(torch.zeros(1, 3, 224, 224))
    """
    assert lines("INF001", src) == []


def test_inf001_wrapped_in_dataparallel():
    src = """
    import torch, torchvision
    model = torch.nn.DataParallel(torchvision.models.resnet50(weights="DEFAULT"))
    torch.onnx.export(model, torch.zeros(1, 3, 224, 224), "m.onnx")
    """
    assert lines("INF001", src) == [4]


def test_inf001_unit_tests_are_not_inference():
    src = NET + """
def test_forward_shape():
    model = Net()
    with torch.no_grad():
        assert model(torch.zeros(2, 3, 8, 8)).shape == (2, 2)
"""
    assert lines("INF001", src, path="test_model.py") == []


def test_inf001_imported_trainer_makes_mode_unknown():
    src = NET + """
from engine import train
model = Net()
train(model)
with torch.no_grad():
    model(None)
"""
    assert lines("INF001", src) == []


# ---------------------------------------------------------------------------------- BNS002
def test_bns002_keeps_quiet_with_norm_eval_or_momentum_zero():
    base = """
    import torch, torchvision
    model = torchvision.models.resnet50(weights="DEFAULT")
    for p in model.parameters():
        p.requires_grad = False
    opt = torch.optim.SGD(model.fc.parameters(), lr=0.001)
    model.train()
    for x, y in loader:
        opt.zero_grad(); model(x).sum().backward(); opt.step()
    """
    assert lines("BNS002", base) == [7]
    assert lines("BNS002", base + "\nfor m in model.modules():\n    if 'BatchNorm' in type(m).__name__:\n        m.momentum = 0\n") == []
    assert lines("BNS002", base + "\ncfg = dict(norm_eval=True)\n") == []


def test_bns002_part_frozen_then_part_eval():
    src = """
    import torch, torchvision
    model = torchvision.models.resnet18(weights="DEFAULT")
    model.layer1.requires_grad_(False)
    model.train()
    model.layer1.eval()
    """
    assert lines("BNS002", src) == []


def test_bns002_head_only_freeze_is_not_a_backbone():
    src = """
    import torch, torchvision
    model = torchvision.models.resnet18(weights="DEFAULT")
    model.fc.requires_grad_(False)
    model.train()
    """
    assert lines("BNS002", src) == []


def test_bns002_user_module_without_batchnorm():
    src = """
    import torch
    import torch.nn as nn
    class Enc(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 8, 3)
            self.ln = nn.LayerNorm(8)
    enc = Enc()
    for p in enc.parameters():
        p.requires_grad = False
    enc.train()
    """
    assert lines("BNS002", src) == []


# ---------------------------------------------------------------------------------- BNS001
KERAS_BASE = """
import keras
base = keras.applications.MobileNetV2(include_top=False, weights="imagenet")
base.trainable = False
inputs = keras.Input((224, 224, 3))
x = base(inputs{arg})
model = keras.Model(inputs, keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(x)))
{after}
"""


def test_bns001_severity_follows_unfreezing():
    warn = run("BNS001", KERAS_BASE.format(arg="", after=""))
    err = run("BNS001", KERAS_BASE.format(arg="", after="base.trainable = True"))
    assert [f.severity for f in warn] == [Severity.WARNING]
    assert [f.severity for f in err] == [Severity.ERROR]
    assert "unfrozen again (line 8)" in err[0].message


def test_bns001_training_false_or_unknown_flag_is_silent():
    assert run("BNS001", KERAS_BASE.format(arg=", training=False", after="base.trainable = True")) == []
    assert run("BNS001", KERAS_BASE.format(arg=", training=flag", after="")) == []


def test_bns001_refreezing_batchnorm_after_unfreeze_is_silent():
    after = """
base.trainable = True
for layer in base.layers:
    if isinstance(layer, keras.layers.BatchNormalization):
        layer.trainable = False
"""
    assert run("BNS001", KERAS_BASE.format(arg="", after=after)) == []


def test_bns001_partial_freeze_is_not_a_frozen_base():
    src = """
    import keras
    base = keras.applications.ResNet50(include_top=False)
    for layer in base.layers[:-30]:
        layer.trainable = False
    inputs = keras.Input((224, 224, 3))
    outputs = keras.layers.Dense(2)(keras.layers.GlobalAveragePooling2D()(base(inputs)))
    """
    assert run("BNS001", src) == []


def test_bns001_user_model_without_batchnorm_is_silent():
    src = """
    import keras
    enc = keras.Sequential([keras.layers.Conv2D(8, 3), keras.layers.GlobalAveragePooling2D()])
    enc.trainable = False
    inputs = keras.Input((32, 32, 3))
    model = keras.Model(inputs, keras.layers.Dense(2)(enc(inputs)))
    """
    assert run("BNS001", src) == []


# ---------------------------------------------------------------------------------- INF002
def test_inf002_mc_dropout_with_batchnorm_still_reports_batchnorm():
    src = """
    import numpy as np
    import keras
    model = keras.Sequential([keras.layers.Dense(8), keras.layers.BatchNormalization(), keras.layers.Dropout(0.2)])
    model.fit(x, y)

    def predict_mc(x):
        return np.stack([model(x, training=True) for _ in range(20)])
    """
    found = run("INF002", src)
    assert len(found) == 1
    assert "BatchNormalization" in found[0].message and "Dropout" not in found[0].message


def test_inf002_module_level_before_fit_is_not_inference():
    src = """
    import keras
    model = keras.Sequential([keras.layers.Dense(8), keras.layers.Dropout(0.5)])
    warmup = model(x, training=True)
    model.fit(x, y)
    """
    assert run("INF002", src) == []


def test_inf002_torch_functional_dropout_is_not_keras():
    src = """
    import torch
    import torch.nn.functional as F
    def predict(x):
        return F.dropout(x, p=0.5, training=True)
    """
    assert run("INF002", src) == []


def test_inf001_loop_carried_train_mode():
    src = """
    import torch, torchvision
    model = torchvision.models.resnet18(weights="DEFAULT")
    model.eval()
    for epoch in range(3):
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        model.train()
    for epoch in range(3):
        model.eval()
        with torch.no_grad():
            model(torch.zeros(1, 3, 224, 224))
        model.train()
    """
    found = run("INF001", src)
    assert [f.line for f in found] == [7]
    assert "later in the same loop" in found[0].message


def test_inf001_no_grad_sample_inside_a_training_step_is_not_inference():
    src = """
    import torch
    import torch.nn as nn

    class G(nn.Module):
        def __init__(self):
            super().__init__()
            self.net = nn.Sequential(nn.Linear(8, 16), nn.BatchNorm1d(16), nn.Linear(16, 4))
        def forward(self, z):
            return self.net(z)

    gen = G()
    disc = nn.Linear(4, 1)
    opt_d = torch.optim.Adam(disc.parameters())
    for real in loader:
        with torch.no_grad():
            fake = gen(torch.randn(64, 8))
        loss = disc(fake).mean() - disc(real).mean()
        opt_d.zero_grad()
        loss.backward()
        opt_d.step()
    """
    assert run("INF001", src) == []


def test_bns002_freeze_that_spares_batchnorm_is_deliberate():
    src = """
    import torch, torchvision
    model = torchvision.models.resnet50(weights="DEFAULT")
    for name, p in model.named_parameters():
        if "bn" not in name:
            p.requires_grad = False
    opt = torch.optim.SGD([p for p in model.parameters() if p.requires_grad], lr=0.001)
    model.train()
    """
    assert run("BNS002", src) == []
