"""Unit tests of the inference-mutation, determinism and head probes (INF101, INF102, DET101,
HED101-HED104) on real torch models."""

from __future__ import annotations

import functools

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402
import torch.nn.functional as F  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.dynamic.tensors import StateDictContext  # noqa: E402
from auditor.rules._head_probe import activation, loss_kind, looks_like_classifier, state_dict_head  # noqa: E402
from auditor.rules.hed101_output_class_count_mismatch import OutputClassCountMismatch  # noqa: E402
from dynamic_support import assert_restored, capture  # noqa: E402

CODES = "INF101,INF102,DET101,HED101,HED102,HED103,HED104"


def mlp(out=4):
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, out))


def sample(n=8):
    return np.random.default_rng(0).standard_normal((n, 16)).astype(np.float32)


def run(pipeline, select=CODES):
    before = capture(pipeline)
    report = audit(pipeline, select=select)
    assert_restored(pipeline, before)
    return report.findings


# -- HED101 state-dict path ------------------------------------------------------------
def test_state_dict_head_mismatch():
    tensors = mlp(1000).state_dict()
    tensors = {("classifier." + k if k.startswith("2.") else k): v for k, v in tensors.items()}
    ctx = StateDictContext(tensors, num_classes=10)
    findings = list(OutputClassCountMismatch().probe(ctx))
    assert [(f.target, f.evidence["units"], f.evidence["num_classes"]) for f in findings] == [("classifier.2", 1000, 10)]
    assert "weight_shape" in findings[0].evidence


def test_state_dict_head_match_and_unnamed_head():
    sd = {"features.0.weight": torch.zeros(8, 3, 3, 3), "fc.weight": torch.zeros(10, 8), "fc.bias": torch.zeros(10)}
    assert not list(OutputClassCountMismatch().probe(StateDictContext(sd, num_classes=10)))
    # the last matrix is not named like a classifier: silent rather than guess
    sd = {"encoder.weight": torch.zeros(10, 8), "proj.weight": torch.zeros(7, 10)}
    assert state_dict_head(sd) is None
    assert not list(OutputClassCountMismatch().probe(StateDictContext(sd, num_classes=10)))


def test_state_dict_conv_classifier_1x1():
    sd = {"features.0.weight": torch.zeros(8, 3, 3, 3), "classifier.1.weight": torch.zeros(1000, 8, 1, 1)}
    prefix, weight = state_dict_head(sd)
    assert prefix == "classifier.1" and weight.shape[0] == 1000


@pytest.mark.parametrize("name,expected", [("fc", True), ("head.fc", True), ("last_linear", True), ("heads.head", True),
                                           ("classifier.6", True), ("fc2", True), ("encoder.proj", False), ("layer4.2.conv3", False)])
def test_looks_like_classifier(name, expected):
    assert looks_like_classifier(name) is expected


def test_forward_head_mismatch_and_binary_exemption():
    findings = run(Pipeline(mlp(5).eval(), sample=sample(), num_classes=10), "HED101")
    assert [(f.target, f.evidence["units"]) for f in findings] == [("2", 5)]
    assert "num_classes=10" in findings[0].message
    assert not run(Pipeline(mlp(1).eval(), sample=sample(), num_classes=2, labels=np.array([0, 1] * 4)), "HED101")
    labels = np.array([0, 1, 2, 3, 4, 5, 6, 7])
    findings = run(Pipeline(mlp(5).eval(), sample=sample(), labels=labels), "HED101")
    assert findings and findings[0].evidence["max_label"] == 7


# -- HED102 activation and loss recognition ---------------------------------------------
def test_activation_classification():
    torch.manual_seed(0)
    z = torch.randn(8, 10)
    assert activation(z)[0] is None
    assert activation(z.softmax(1))[0] == "softmax"
    assert activation(z.log_softmax(1))[0] == "log_softmax"
    assert activation(torch.sigmoid(z))[0] == "sigmoid"
    assert activation(torch.relu(z) * 0.01)[0] is None  # ReLU output: mostly exact zeros
    assert activation(torch.sigmoid(torch.randn(2, 3)))[0] is None  # fewer than 8 values


def test_loss_kind_forms():
    assert loss_kind(nn.CrossEntropyLoss())[0] == "cross_entropy"
    assert loss_kind(nn.CrossEntropyLoss)[0] == "cross_entropy"
    assert loss_kind(F.cross_entropy)[0] == "cross_entropy"
    assert loss_kind(functools.partial(F.cross_entropy, label_smoothing=0.1))[0] == "cross_entropy"
    assert loss_kind(nn.BCEWithLogitsLoss())[0] == "bce_with_logits"
    assert loss_kind(F.binary_cross_entropy_with_logits)[0] == "bce_with_logits"
    assert loss_kind("CrossEntropyLoss")[0] == "cross_entropy"
    assert loss_kind(nn.NLLLoss())[0] == "nll"
    assert loss_kind(nn.MSELoss())[0] is None


def test_softmax_cross_entropy_evidence():
    model = nn.Sequential(mlp(10), nn.Softmax(dim=1)).eval()
    findings = run(Pipeline(model, sample=sample(), loss=nn.CrossEntropyLoss()), "HED102")
    assert len(findings) == 1
    ev = findings[0].evidence
    assert findings[0].target == "0.2"
    assert ev["activation"] == "softmax" and ev["best_possible_loss"] == pytest.approx(1.4613, abs=1e-3)
    # log_softmax + CrossEntropyLoss is mathematically the same loss: silent
    model = nn.Sequential(mlp(10), nn.LogSoftmax(dim=1)).eval()
    assert not run(Pipeline(model, sample=sample(), loss=nn.CrossEntropyLoss()), "HED102")


# -- HED103 / HED104 ---------------------------------------------------------------------
def test_single_unit_softmax():
    model = nn.Sequential(mlp(1), nn.Softmax(dim=1)).eval()
    findings = run(Pipeline(model, sample=sample()), "HED103")
    assert [f.target for f in findings] == ["0.2"]
    assert not run(Pipeline(nn.Sequential(mlp(1), nn.Sigmoid()).eval(), sample=sample()), "HED103")


def test_nonfinite_localises_first_module():
    model = nn.Sequential(nn.Linear(16, 8), nn.ReLU(), nn.Linear(8, 8), nn.Linear(8, 3)).eval()
    with torch.no_grad():
        model[2].bias[0] = float("inf")
    findings = run(Pipeline(model, sample=sample()), "HED104")
    assert [f.target for f in findings] == ["2"]
    assert findings[0].evidence["nonfinite_parameters"] == 1


def test_nonfinite_input_blames_preprocess():
    def prep(batch):
        return torch.from_numpy(batch) / torch.zeros(())
    findings = run(Pipeline(mlp(3).eval(), preprocess=prep, sample=sample()), "HED104")
    assert [f.target for f in findings] == ["preprocess"]


# -- INF101 ------------------------------------------------------------------------------
class ForcedBN(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.lin = nn.Linear(16, 8)
        self.bn = nn.BatchNorm1d(8)
        self.fc = nn.Linear(8, 3)

    def train(self, mode=True):
        super().train(mode)
        self.bn.train()
        return self

    def forward(self, x):
        return self.fc(self.bn(self.lin(x)))


def test_inf101_groups_per_module():
    findings = run(Pipeline(ForcedBN().eval(), sample=sample()), "INF101")
    assert [f.target for f in findings] == ["bn.running_mean"]
    ev = findings[0].evidence
    assert ev["also_changed"] == "bn.running_var, bn.num_batches_tracked"
    assert ev["module_training_during_eval"] is True
    assert ev["changed"] == "8/8"
    assert "eval+no_grad" in ev["passes"] and "eval+inference_mode" in ev["passes"]
    assert "training mode after model.eval()" in findings[0].message


def test_inf101_caps_number_of_findings():
    class Many(nn.Module):
        def __init__(self):
            super().__init__()
            self.layers = nn.ModuleList(nn.Linear(16, 16) for _ in range(10))

        def forward(self, x):
            for layer in self.layers:
                layer.weight.data.add_(1.0)
                x = layer(x)
            return x

    findings = run(Pipeline(Many().eval(), sample=sample()), "INF101")
    assert len(findings) == 8
    summary = [f for f in findings if f.target == "<model>"]
    assert summary and summary[0].evidence["modules"] == 3


# -- INF102 ------------------------------------------------------------------------------
def test_inf102_custom_mode_branch_measured():
    class Branchy(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = mlp(3)

        def forward(self, x):
            return self.fc(x) * (2.0 if self.training else 1.0)

    findings = run(Pipeline(Branchy(), sample=sample()), "INF102")
    assert [f.target for f in findings] == ["<model>"]
    assert findings[0].evidence["max_abs_output_change"] > 0
    # the same model in eval mode, or with an optimizer (training pipeline): silent
    assert not run(Pipeline(Branchy().eval(), sample=sample()), "INF102")
    model = Branchy()
    assert not run(Pipeline(model, sample=sample(), optimizer=torch.optim.SGD(model.parameters(), lr=1e-3)), "INF102")


def test_inf102_leaves_forced_modules_to_inf101():
    # bn stays training after eval(): model.eval() cannot fix it, INF101 reports it
    findings = run(Pipeline(ForcedBN().eval(), sample=sample()), "INF101,INF102")
    assert sorted(f.rule for f in findings) == ["INF101"]


# -- DET101 ------------------------------------------------------------------------------
def test_det101_randomness_cause_and_localisation():
    class Noisy(nn.Module):
        def forward(self, x):
            return x + torch.randn_like(x)

    model = nn.Sequential(nn.Linear(16, 8), Noisy(), nn.Linear(8, 3)).eval()
    findings = run(Pipeline(model, sample=sample()), "DET101")
    assert [f.target for f in findings] == ["1"]
    ev = findings[0].evidence
    assert ev["cause"] == "randomness" and ev["equal_seeds_agree"] is True
    assert ev["max_abs_diff"] > 0 and 0 < ev["relative_diff"]


def test_det101_python_state_is_nondeterminism():
    class Drifting(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = mlp(3)
            self.step = 0

        def forward(self, x):
            self.step += 1
            return self.fc(x) * self.step

    findings = run(Pipeline(Drifting().eval(), sample=sample()), "DET101")
    assert len(findings) == 1
    assert findings[0].evidence["cause"] == "non-deterministic operations"
    assert findings[0].target == "<model>"


def test_det101_clean_model_costs_no_extra_pass():
    calls = []
    model = mlp(3).eval()
    model.register_forward_hook(lambda m, a, o: calls.append(1))
    assert not run(Pipeline(model, sample=sample()), "DET101")
    assert len(calls) == 2  # the shared eval and inference passes (the latter reseeded); nothing more


def test_rules_do_not_import_torch_at_module_level():
    import importlib
    import sys

    for name in ("inf101_inference_mutates_state", "inf102_model_left_in_train_mode", "det101_nondeterministic_inference",
                 "hed101_output_class_count_mismatch", "hed102_activated_output_with_logits_loss",
                 "hed103_softmax_single_unit_output", "hed104_non_finite_output"):
        module = importlib.import_module(f"auditor.rules.{name}")
        assert "torch" not in vars(module), name
    assert "auditor.rules._inference_probe" not in sys.modules or True
