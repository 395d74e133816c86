"""Focused resolution cases for the `head` family (HED001-HED006): data flow a reader follows
and the fixtures do not spell out one by one."""

from __future__ import annotations

import textwrap

import pytest

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit


def codes(source: str, select: str) -> list[tuple[int, str]]:
    result = check_unit(SourceUnit("snippet.py", textwrap.dedent(source)), [select])
    return sorted((f.line, f.rule) for f in result.findings if f.rule == select)


# --------------------------------------------------------------------------- HED001


def test_units_through_builder_parameter_literal_call_site():
    src = """
    from tensorflow import keras
    NUM_CLASSES = 10
    def build(n_out):
        inputs = keras.Input((8,))
        return keras.Model(inputs, keras.layers.Dense(n_out, activation="softmax")(inputs))
    model = build(5)
    """
    assert codes(src, "HED001") == [(6, "HED001")]


def test_named_other_quantity_is_not_a_class_count():
    src = """
    from tensorflow import keras
    num_classes = 10
    EMBED = 128
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(EMBED, activation="softmax")(inputs))
    """
    assert codes(src, "HED001") == []


def test_argparse_default_states_the_count():
    src = """
    import argparse
    import torch.nn as nn
    from torchvision import models
    parser = argparse.ArgumentParser()
    parser.add_argument("--num-classes", type=int, default=10)
    args = parser.parse_args()
    num_classes = args.num_classes
    model = models.resnet18(weights="DEFAULT")
    model.fc = nn.Linear(512, 5)
    """
    assert codes(src, "HED001") == [(10, "HED001")]


def test_user_model_not_linked_to_the_loss_is_ignored():
    src = """
    import torch.nn as nn
    classes = ("a", "b", "c")
    class Decoder(nn.Module):
        def __init__(self):
            super().__init__()
            self.out = nn.Linear(64, 784)
        def forward(self, z):
            return self.out(z)
    class Clf(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(64, 3)
        def forward(self, x):
            return self.fc(x)
    dec = Decoder()
    clf = Clf()
    criterion = nn.CrossEntropyLoss()
    def step(x, y):
        return criterion(clf(x), y)
    """
    assert codes(src, "HED001") == []


def test_detection_num_classes_counts_background():
    src = """
    import torchvision
    class_names = ["cat", "dog"]
    model = torchvision.models.detection.fasterrcnn_resnet50_fpn(weights=None, num_classes=3)
    """
    assert codes(src, "HED001") == []


# --------------------------------------------------------------------------- HED002


def test_timm_with_num_classes_builds_a_fresh_head():
    src = """
    import timm, torch
    NUM_CLASSES = 5
    model = timm.create_model("resnet50", pretrained=True, num_classes=NUM_CLASSES)
    opt = torch.optim.SGD(model.parameters(), lr=0.01)
    """
    assert codes(src, "HED002") == []


def test_torchvision_trained_through_builder_and_train_function():
    src = """
    import torch
    from torch import nn
    from torchvision import models
    NUM_CLASSES = 4
    def make():
        return models.densenet121(weights="DEFAULT")
    def train(net, loader, crit):
        for x, y in loader:
            crit(net(x), y).backward()
    model = make().cuda()
    train(model, [], nn.CrossEntropyLoss())
    """
    assert codes(src, "HED002") == [(7, "HED002")]


def test_keras_top_removed_by_layers_pop():
    src = """
    from keras.applications import VGG16
    from keras.layers import Dense
    from keras.models import Model
    NUM_CLASSES = 3
    base = VGG16(weights="imagenet")
    base.layers.pop()
    out = Dense(NUM_CLASSES, activation="softmax")(base.layers[-1].output)
    model = Model(base.input, out)
    model.compile(optimizer="sgd", loss="categorical_crossentropy")
    """
    assert codes(src, "HED002") == []


# --------------------------------------------------------------------------- HED003


def test_softmax_axis_other_than_units_is_fine():
    src = """
    import keras
    x = keras.Input((10, 16))
    s = keras.layers.Dense(1)(x)
    w = keras.layers.Softmax(axis=1)(s)
    """
    assert codes(src, "HED003") == []


def test_partial_dense_alias():
    src = """
    from functools import partial
    from tensorflow import keras
    Dense = partial(keras.layers.Dense, kernel_initializer="he_normal")
    model = keras.Sequential([Dense(32, activation="relu"), Dense(1, activation="softmax")])
    """
    assert codes(src, "HED003") == [(5, "HED003")]


def test_torch_functional_softmax_last_dim_on_one_output():
    src = """
    import torch
    import torch.nn.functional as F
    from torch import nn
    head = nn.Linear(128, 1)
    def predict(x):
        return F.softmax(head(x), dim=-1)
    """
    assert codes(src, "HED003") == [(7, "HED003")]


def test_torch_softmax_after_reshape_is_not_judged():
    src = """
    import torch.nn.functional as F
    from torch import nn
    score = nn.Linear(128, 1)
    def attend(h):
        return F.softmax(score(h).squeeze(-1), dim=-1)
    """
    assert codes(src, "HED003") == []


# --------------------------------------------------------------------------- HED004


def test_time_distributed_softmax_with_bce():
    src = """
    from tensorflow import keras
    model = keras.Sequential([
        keras.layers.GRU(64, return_sequences=True),
        keras.layers.TimeDistributed(keras.layers.Dense(40, activation="softmax")),
    ])
    model.compile(optimizer="adam", loss="binary_crossentropy")
    """
    assert codes(src, "HED004") == [(7, "HED004")]


def test_conditional_activation_is_not_judged():
    src = """
    from tensorflow import keras
    def head(n):
        act = "sigmoid"
        if n > 2:
            act = "softmax"
        inputs = keras.Input((4,))
        return keras.Model(inputs, keras.layers.Dense(n, activation=act)(inputs))
    m = head(3)
    m.compile(optimizer="adam", loss="binary_crossentropy")
    """
    assert codes(src, "HED004") == []


# --------------------------------------------------------------------------- HED005


def test_ordered_dict_classifier_softmax_with_nll():
    src = """
    from collections import OrderedDict
    from torch import nn
    from torchvision import models
    model = models.densenet121(weights="DEFAULT")
    model.classifier = nn.Sequential(OrderedDict([("fc", nn.Linear(1024, 2)), ("out", nn.Softmax(dim=1))]))
    criterion = nn.NLLLoss()
    def step(images, labels):
        return criterion(model(images), labels)
    """
    assert codes(src, "HED005") == [(9, "HED005")]


def test_ordered_dict_classifier_log_softmax_with_nll_is_fine():
    src = """
    from collections import OrderedDict
    from torch import nn
    from torchvision import models
    model = models.densenet121(weights="DEFAULT")
    model.classifier = nn.Sequential(OrderedDict([("fc", nn.Linear(1024, 2)), ("out", nn.LogSoftmax(dim=1))]))
    criterion = nn.NLLLoss()
    def step(images, labels):
        return criterion(model(images), labels)
    """
    assert codes(src, "HED005") == []


def test_lightning_self_call():
    src = """
    import torch
    import torch.nn.functional as F
    import pytorch_lightning as pl
    class Lit(pl.LightningModule):
        def __init__(self):
            super().__init__()
            self.fc = torch.nn.Linear(32, 4)
        def forward(self, x):
            return torch.sigmoid(self.fc(x))
        def training_step(self, batch, idx):
            x, y = batch
            return F.binary_cross_entropy_with_logits(self(x), y)
    """
    assert codes(src, "HED005") == [(13, "HED005")]


def test_model_with_differing_returns_is_not_judged():
    src = """
    import torch.nn.functional as F
    from torch import nn
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(8, 3)
        def forward(self, x):
            if self.training:
                return self.fc(x)
            return F.softmax(self.fc(x), dim=1)
    net = Net()
    def step(x, y):
        return F.cross_entropy(net(x), y)
    """
    assert codes(src, "HED005") == []


def test_keras_subclass_softmax_with_from_logits():
    src = """
    import tensorflow as tf
    class M(tf.keras.Model):
        def __init__(self):
            super().__init__()
            self.d = tf.keras.layers.Dense(10)
        def call(self, x):
            return tf.nn.softmax(self.d(x))
    m = M()
    m.compile(optimizer="adam", loss=tf.keras.losses.CategoricalCrossentropy(from_logits=True))
    """
    assert codes(src, "HED005") == [(10, "HED005")]


# --------------------------------------------------------------------------- HED006


def test_single_element_outputs_list():
    src = """
    from tensorflow import keras
    inputs = keras.Input((8,))
    y = keras.layers.Dense(3)(inputs)
    model = keras.models.Model(inputs=[inputs], outputs=[y])
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    """
    assert codes(src, "HED006") == [(6, "HED006")]


@pytest.mark.parametrize("loss", ["'mse'", "{'a': 'categorical_crossentropy'}", "custom_loss"])
def test_non_crossentropy_or_unresolved_losses_are_silent(loss):
    src = f"""
    from tensorflow import keras
    def custom_loss(y, p):
        return keras.losses.categorical_crossentropy(y, p)
    inputs = keras.Input((8,))
    model = keras.Model(inputs, keras.layers.Dense(3)(inputs))
    model.compile(optimizer="adam", loss={loss})
    """
    assert codes(src, "HED006") == []
