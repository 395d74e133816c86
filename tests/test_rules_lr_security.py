"""Focused tests for LRT001 (fine-tuning learning rate), SEC002 (pickled models) and SEC003
(Keras safe_mode): value resolution, head-only detection, severities and evidence."""

from __future__ import annotations

import textwrap

import pytest

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit


def run(source: str, code: str):
    result = check_unit(SourceUnit("snippet.py", textwrap.dedent(source)), [code])
    return [f for f in result.findings if f.rule == code]


KERAS_MODEL = """
import keras
base = keras.applications.ResNet50(include_top=False, pooling="avg")
outputs = keras.layers.Dense(10, activation="softmax")(base.output)
model = keras.Model(base.input, outputs)
"""

TORCH_MODEL = """
import torch
import torchvision
model = torchvision.models.resnet50(weights=torchvision.models.ResNet50_Weights.DEFAULT)
model.fc = torch.nn.Linear(2048, 10)
"""


# ---------------------------------------------------------------------------------- LRT001
def test_message_names_optimizer_rate_model_threshold_and_sources():
    [f] = run(KERAS_MODEL + "model.compile(optimizer=keras.optimizers.Adam(learning_rate=0.01), loss='mse')\n", "LRT001")
    assert f.message == (
        "Adam learning rate 0.01 on pretrained ResNet50 weights: at or above the fine-tuning error threshold 0.01 "
        "for Adam-family optimizers (sources: Keras guide 1e-5, BERT 2e-5..5e-5)"
    )
    assert f.severity.value == "error"
    assert f.evidence["lr"] == 0.01 and f.evidence["family"] == "adam"
    assert f.evidence["threshold"] == 0.01 and f.evidence["head_only"] is False
    assert "1e-05" in f.fix


@pytest.mark.parametrize(
    "optimizer, severity",
    [
        ("keras.optimizers.Adam(1e-3)", "warning"),  # first positional is the rate
        ("keras.optimizers.Adam(lr=5e-3)", "warning"),  # Keras 2 alias
        ("keras.optimizers.Adam(2e-2)", "error"),
        ("keras.optimizers.Adam(9e-4)", None),
        ("'adam'", "warning"),  # Keras default 1e-3
        ("'sgd'", None),  # Keras SGD default 0.01 without momentum: below 0.1
        ("keras.optimizers.SGD(0.01, momentum=0.9)", "warning"),
        ("keras.optimizers.SGD(0.01, momentum=0.5)", None),  # (1-0.5)/0.1 = 5x room: warn at 0.05
        ("keras.optimizers.SGD(0.01, 0.99)", "error"),  # 0.1x: error at 0.01
        ("keras.optimizers.Adagrad(0.05)", "warning"),
    ],
)
def test_keras_rates_families_and_momentum_scaling(optimizer, severity):
    found = run(KERAS_MODEL + f"model.compile(optimizer={optimizer}, loss='mse')\nmodel.fit(None)\n", "LRT001")
    assert [f.severity.value for f in found] == ([severity] if severity else [])


def test_torch_second_positional_and_default():
    found = run(TORCH_MODEL + "a = torch.optim.SGD(model.parameters(), 0.2, 0.9)\nb = torch.optim.Adagrad(model.parameters())\n", "LRT001")
    assert [(f.line, f.severity.value, f.evidence["lr"]) for f in found] == [(6, "error", 0.2), (7, "warning", 0.01)]


def test_keras_head_only_until_unfrozen():
    src = KERAS_MODEL + textwrap.dedent(
        """
        base.trainable = False
        model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse")
        base.trainable = True
        model.compile(optimizer=keras.optimizers.Adam(5e-3), loss="mse")
        """
    )
    found = run(src, "LRT001")
    assert [(f.line, f.evidence["head_only"]) for f in found] == [(10, False)]


def test_keras_freeze_after_compile_does_not_count():
    src = KERAS_MODEL + "model.compile(optimizer=keras.optimizers.Adam(5e-3), loss='mse')\nbase.trainable = False\n"
    assert len(run(src, "LRT001")) == 1


def test_torch_head_group_gets_ten_times_room():
    src = TORCH_MODEL + textwrap.dedent(
        """
        opt = torch.optim.Adam([
            {"params": model.fc.parameters(), "lr": 5e-3},
            {"params": model.layer4.parameters(), "lr": 5e-3},
        ])
        """
    )
    found = run(src, "LRT001")
    assert [(f.line, f.evidence["head_only"]) for f in found] == [(9, False)]


def test_torch_frozen_backbone_then_unfrozen_block():
    src = TORCH_MODEL + textwrap.dedent(
        """
        for p in model.parameters():
            p.requires_grad = False
        model.fc = torch.nn.Linear(2048, 10)
        head_opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        for p in model.layer4.parameters():
            p.requires_grad = True
        full_opt = torch.optim.Adam(model.parameters(), lr=5e-3)
        """
    )
    assert [f.line for f in run(src, "LRT001")] == [13]


def test_parameters_resolve_through_call_sites_and_tuple_returns():
    src = """
    import torch, torchvision

    def build():
        net = torchvision.models.resnet18(pretrained=True)
        return net, "resnet18"

    def make_optimizer(model, lr=1e-2):
        return torch.optim.Adam(model.parameters(), lr=lr)

    model, name = build()
    optimizer = make_optimizer(model)
    """
    [f] = run(src, "LRT001")
    assert f.line == 9 and f.severity.value == "error"


def test_calling_a_from_scratch_application_is_not_pretrained():
    src = """
    import keras
    inputs = keras.Input((224, 224, 3))
    outputs = keras.applications.EfficientNetB0(weights=None, classes=3)(inputs)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    model.fit(None)
    """
    assert run(src, "LRT001") == []


def test_load_state_dict_of_pretrained_file_links_but_own_checkpoint_does_not():
    src = """
    import torch
    from torch import nn
    net = nn.Sequential(nn.Linear(4, 4))
    net.load_state_dict(torch.load("imagenet_pretrained.pth", weights_only=True))
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    """
    assert len(run(src, "LRT001")) == 1
    own = src.replace("import torch\n", "import torch\ntorch.save({}, 'imagenet_pretrained.pth')\n")
    assert run(own, "LRT001") == []


def test_unknown_rate_is_silent():
    src = TORCH_MODEL + "import os\nopt = torch.optim.Adam(model.parameters(), lr=float(os.environ['LR']))\n"
    assert run(src, "LRT001") == []


def test_hf_trainer_default_is_fine_and_high_rate_is_not():
    src = """
    from transformers import AutoModelForSequenceClassification, Trainer, TrainingArguments
    model = AutoModelForSequenceClassification.from_pretrained("bert-base-uncased")
    ok = Trainer(model=model, args=TrainingArguments("out"))
    hot = Trainer(model=model, args=TrainingArguments("out", learning_rate=1e-3))
    """
    [f] = run(src, "LRT001")
    assert f.line == 5 and "bert-base-uncased" in f.message


# ---------------------------------------------------------------------------------- SEC002
@pytest.mark.parametrize(
    "src, flagged",
    [
        ("import pickle\nwith open('net.pkl', 'rb') as f:\n    x = pickle.load(f)\n", True),
        ("import pickle\nwith open('labels.pkl', 'rb') as f:\n    labels = pickle.load(f)\n", False),
        ("import joblib\nclf = joblib.load(path)\n", True),
        ("import joblib\nscaler_stats = joblib.load('stats.joblib')\n", False),
        ("import pickle\nimport os\nobj = pickle.load(open(os.path.join(CKPT_DIR, f'{name}.pkl'), 'rb'))\n", True),
        ("import pickle\nimport os\nD = 'models'\nobj = pickle.load(open(os.path.join(D, 'args.pkl'), 'rb'))\n", False),
        ("import pandas as pd\ndf = pd.read_pickle('frame.pkl')\n", False),
        ("import pickle\nmodel_bytes = b''\nm = pickle.loads(model_bytes)\n", True),
    ],
)
def test_sec002_model_or_data(src, flagged):
    assert bool(run(src, "SEC002")) is flagged


def test_sec002_message_and_severity():
    [f] = run("import pickle\nwith open('models/resnet.pkl', 'rb') as f:\n    model = pickle.load(f)\n", "SEC002")
    assert f.severity.value == "error"
    assert f.message.startswith("pickle.load of 'resnet.pkl' (result assigned to 'model')")
    assert "safetensors" in f.fix and "weights_only=True" in f.fix


# ---------------------------------------------------------------------------------- SEC003
@pytest.mark.parametrize(
    "call, flagged",
    [
        ("keras.saving.load_model('m.keras', safe_mode=False)", True),
        ("keras.models.load_model('m.keras', safe_mode=FLAG)", True),
        ("keras.saving.load_model('m.keras', **{'safe_mode': False})", True),
        ("keras.saving.load_model('m.keras', safe_mode=True)", False),
        ("keras.saving.load_model('m.keras')", False),
        ("keras.config.enable_unsafe_deserialization()", True),
    ],
)
def test_sec003(call, flagged):
    found = run(f"import keras\nFLAG = False\n{call}\n", "SEC003")
    assert bool(found) is flagged
    if flagged:
        assert "3.13.2" in found[0].message and found[0].severity.value == "error"
