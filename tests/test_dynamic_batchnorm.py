"""Unit tests of the dynamic BatchNorm probes (BNS101-BNS104): scores, threshold edges,
the state-dict path of BNS104, and messages. Real torch models, no mocks."""

from __future__ import annotations

import math
import re
import sys
from pathlib import Path

import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "fixtures" / "dynamic"))
from _torch_fixtures import calibrated_cnn, imagenet_preprocess, images  # noqa: E402

from auditor import Pipeline  # noqa: E402
from auditor.dynamic.tensors import StateDictContext  # noqa: E402
from auditor.dynamic.torch_context import BatchNormObservation, TorchContext  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from auditor.rules import _batchnorm_probe as bn  # noqa: E402
from auditor.rules.bns101_batchnorm_statistics_drift import BatchnormStatisticsDrift  # noqa: E402
from auditor.rules.bns102_batchnorm_train_eval_gap import BatchnormTrainEvalGap, _is_gap  # noqa: E402
from auditor.rules.bns103_frozen_batchnorm_updating import FrozenBatchnormUpdating  # noqa: E402
from auditor.rules.bns104_batchnorm_statistics_invalid import BatchnormStatisticsInvalid  # noqa: E402

PLACEHOLDER = re.compile(r"\{[A-Za-z_][A-Za-z0-9_]*\}")


def _bn(mean, var, eps=0.0):
    layer = nn.BatchNorm2d(len(mean), eps=eps)
    with torch.no_grad():
        layer.running_mean.copy_(torch.tensor(mean))
        layer.running_var.copy_(torch.tensor(var))
        layer.num_batches_tracked.fill_(10)
    return layer


def _obs(mean, var, count=1000):
    return BatchNormObservation("x", torch.tensor(mean, dtype=torch.float64), torch.tensor(var, dtype=torch.float64), count, False, True)


def _ctx(model, **kw):
    kw.setdefault("preprocess", imagenet_preprocess)
    kw.setdefault("sample", images(8))
    kw.setdefault("num_classes", 10)
    return TorchContext(Pipeline(model, **kw))


def _filled(finding):
    assert not PLACEHOLDER.search(finding.message), finding.message
    assert not PLACEHOLDER.search(finding.fix), finding.fix


# -- BNS101 scores ---------------------------------------------------------------------------
def test_drift_scores_are_standardised():
    layer = _bn([0.0, 1.0], [4.0, 1.0])
    drift = bn.drift_of("x", _obs([1.0, 1.5], [4.0, 4.0]), layer)
    assert drift.mean_z == pytest.approx((0.5 + 0.5) / 2)
    assert drift.max_z == pytest.approx(0.5)
    assert drift.log_var == pytest.approx(math.log(4.0) / 2)
    assert drift.log_var_signed == pytest.approx(math.log(4.0) / 2)
    assert drift.score == pytest.approx(max(0.5 / bn.Z_THRESHOLD, (math.log(4.0) / 2) / bn.LOG_VAR_THRESHOLD))
    assert not drift.drifted


@pytest.mark.parametrize("shift, drifted", [(0.99, False), (1.0, True), (1.01, True)])
def test_mean_shift_threshold_edge(shift, drifted):
    drift = bn.drift_of("x", _obs([shift, shift], [1.0, 1.0]), _bn([0.0, 0.0], [1.0, 1.0]))
    assert drift.drifted is drifted


@pytest.mark.parametrize("factor, drifted", [(3.9, False), (4.0, True), (0.25, True), (0.26, False)])
def test_variance_threshold_edge_both_ways(factor, drifted):
    drift = bn.drift_of("x", _obs([0.0], [factor]), _bn([0.0], [1.0]))
    assert drift.drifted is drifted


def test_dead_channel_is_clipped():
    drift = bn.drift_of("x", _obs([1.0, 0.0, 0.0, 0.0], [1.0] * 4), _bn([0.0] * 4, [1e-12, 1.0, 1.0, 1.0]))
    assert drift.max_z == bn.Z_CLIP
    assert drift.mean_z == pytest.approx(bn.Z_CLIP / 4)


def test_layers_without_usable_statistics_are_skipped():
    assert bn.drift_of("x", _obs([0.0], [1.0], count=bn.MIN_COUNT - 1), _bn([5.0], [1.0])) is None
    assert bn.drift_of("x", _obs([0.0], [1.0]), nn.BatchNorm2d(1, track_running_stats=False)) is None
    assert bn.drift_of("x", _obs([0.0], [1.0]), _bn([float("nan")], [1.0])) is None
    assert bn.drift_of("x", _obs([0.0], [1.0]), _bn([0.0], [-1.0])) is None
    assert bn.drift_of("x", _obs([3.0], [9.0]), nn.BatchNorm2d(1)) is None  # never estimated: BNS104's


def test_bns101_clean_and_shifted_model():
    assert list(BatchnormStatisticsDrift().probe(_ctx(calibrated_cnn()))) == []
    model = calibrated_cnn()
    with torch.no_grad():
        model.bn2.running_mean.add_(2.0 * model.bn2.running_var.sqrt())
    (finding,) = BatchnormStatisticsDrift().probe(_ctx(model))
    assert finding.target == "bn2" and finding.severity is Severity.WARNING
    assert finding.evidence["mean_shift_sd"] == pytest.approx(2.0, abs=0.1)
    assert finding.evidence["layers_over_threshold"] == 1
    _filled(finding)


def test_bns101_targets_where_the_drift_starts_not_the_worst_layer():
    from dynamic_support import DYNAMIC, load_fixture

    fixture = load_fixture(DYNAMIC / "BNS101" / "bad_sequential_corrupted_layer.py")
    model = fixture.build().model  # layer 4 corrupted; layer 7 downstream inherits a worse drift
    (finding,) = BatchnormStatisticsDrift().probe(_ctx(model))
    assert finding.target == "4"
    assert finding.evidence["worst_layer"] == "7"


def test_bns101_synthetic_sample_is_info():
    model = calibrated_cnn()
    with torch.no_grad():
        model.bn2.running_var.mul_(100.0)
    ctx = _ctx(model, sample=None)
    assert ctx.synthetic
    findings = list(BatchnormStatisticsDrift().probe(ctx))
    assert findings and findings[0].severity is Severity.INFO and "confidence" in findings[0].evidence


# -- BNS102 ----------------------------------------------------------------------------------
@pytest.mark.parametrize(
    "rel, agreement, expected",
    [(0.49, None, False), (0.5, None, True), (0.3, 0.4, True), (0.3, 0.5, False), (0.19, 0.0, False)],
)
def test_gap_thresholds(rel, agreement, expected):
    assert _is_gap(rel, agreement) is expected


def test_output_gap_measures():
    b = torch.tensor([[1.0, 0.0], [0.0, 1.0]])
    a = torch.tensor([[0.0, 1.0], [0.0, 1.0]])
    rel, agreement = bn.output_gap(a, b)
    assert rel == pytest.approx(math.sqrt(2) / math.sqrt(2))
    assert agreement == 0.5
    assert bn.output_gap(torch.ones(3), torch.ones(3)) == (0.0, None)  # regression output
    assert bn.output_gap(torch.full((2, 2), float("nan")), b) is None


def test_bns102_clean_small_batch_and_gap():
    assert list(BatchnormTrainEvalGap().probe(_ctx(calibrated_cnn(), sample=images(2)))) == []
    model = calibrated_cnn()
    with torch.no_grad():
        model.bn2.running_var.mul_(25.0)
    assert list(BatchnormTrainEvalGap().probe(_ctx(model, sample=images(2)))) == []  # batch < 4: not judged
    (finding,) = BatchnormTrainEvalGap().probe(_ctx(model))
    assert finding.target == "bn2"
    assert finding.evidence["relative_difference"] > 1.0 and finding.evidence["batch_size"] == 8
    _filled(finding)


def test_bns102_ignores_dropout_only_gap():
    class Net(nn.Module):
        def __init__(self):
            super().__init__()
            self.cnn = calibrated_cnn()
            self.drop = nn.Dropout(0.9)

        def forward(self, x):
            return self.cnn.fc(self.drop(self.cnn.features(x)))

    ctx = _ctx(Net())
    rel, _ = bn.output_gap(ctx.train_pass().output, ctx.eval_pass().output)
    assert rel >= 0.5  # Dropout alone makes the outputs differ ...
    assert list(BatchnormTrainEvalGap().probe(ctx)) == []  # ... which is not BatchNorm's gap


# -- BNS103 ----------------------------------------------------------------------------------
def _frozen_backbone(momentum=0.1):
    model = calibrated_cnn()
    for m in (model.bn1, model.bn2):
        m.momentum = momentum
    for p in model.parameters():
        p.requires_grad = False
    model.fc = nn.Linear(32, 3)
    return model


def test_bns103_error_with_optimizer_warning_without():
    model = _frozen_backbone()
    ctx = _ctx(model, optimizer=torch.optim.SGD(model.fc.parameters(), lr=0.01), num_classes=3)
    (finding,) = FrozenBatchnormUpdating().probe(ctx)
    assert finding.severity is Severity.ERROR and finding.target == "bn1"
    assert finding.evidence["layers"] == 2 and finding.evidence["first_layers"] == ["bn1", "bn2"]
    assert finding.evidence["max_running_mean_change"] > 0
    _filled(finding)
    (warning,) = FrozenBatchnormUpdating().probe(_ctx(_frozen_backbone(), num_classes=3))
    assert warning.severity is Severity.WARNING and "no optimizer" in warning.message


def test_bns103_momentum_zero_does_not_update():
    model = _frozen_backbone(momentum=0.0)
    ctx = _ctx(model, optimizer=torch.optim.SGD(model.fc.parameters(), lr=0.01), num_classes=3)
    assert list(FrozenBatchnormUpdating().probe(ctx)) == []


def test_bns103_affine_false_judged_by_its_neighbours():
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8, affine=False), nn.Flatten(), nn.LazyLinear(2))
    model(torch.zeros(1, 3, 32, 32))
    model[0].requires_grad_(False)
    ctx = _ctx(model, optimizer=torch.optim.SGD(model[3].parameters(), lr=0.01), num_classes=2)
    (finding,) = FrozenBatchnormUpdating().probe(ctx)
    assert finding.target == "1"


def test_bns103_everything_trainable_is_clean():
    model = calibrated_cnn()
    ctx = _ctx(model, optimizer=torch.optim.SGD(model.parameters(), lr=0.01))
    assert list(FrozenBatchnormUpdating().probe(ctx)) == []


# -- BNS104 on state dicts -------------------------------------------------------------------
def _state(**edits):
    state = {k: v.clone() for k, v in calibrated_cnn().state_dict().items()}
    state.update(edits)
    return state


def _run104(tensors, pretrained=None):
    return list(BatchnormStatisticsInvalid().probe(StateDictContext(tensors, pretrained=pretrained)))


def test_bns104_state_dict_clean():
    assert _run104(_state(), pretrained="torchvision.models.resnet18") == []


def test_bns104_state_dict_nan_and_negative():
    var = _state()["bn2.running_var"].clone()
    var[0] = float("nan")
    var[1] = -0.5
    findings = _run104(_state(**{"bn2.running_var": var}))
    kinds = {f.evidence["problem"]: f for f in findings}
    assert set(kinds) == {"non-finite", "negative-variance"}
    assert kinds["non-finite"].target == "bn2" and kinds["non-finite"].evidence["nan"] == 1
    assert kinds["negative-variance"].evidence["min_running_var"] == -0.5
    assert all(f.severity is Severity.ERROR for f in findings)
    for f in findings:
        _filled(f)


def test_bns104_inf_mean():
    mean = _state()["bn1.running_mean"].clone()
    mean[3] = float("inf")
    (finding,) = _run104(_state(**{"bn1.running_mean": mean}))
    assert finding.target == "bn1" and finding.evidence["inf"] == 1


def _fresh(prefix, channels, tracked=True):
    out = {f"{prefix}.running_mean": torch.zeros(channels), f"{prefix}.running_var": torch.ones(channels)}
    if tracked:
        out[f"{prefix}.num_batches_tracked"] = torch.tensor(0)
    return out


def test_bns104_never_updated_needs_pretrained():
    fresh = {k: v for k, v in nn.Sequential(nn.Conv2d(3, 4, 1), nn.BatchNorm2d(4), nn.Conv2d(4, 4, 1), nn.BatchNorm2d(4)).state_dict().items()}
    assert _run104(fresh) == []
    (finding,) = _run104(fresh, pretrained="torchvision.models.resnet50")
    assert finding.target == "1" and finding.evidence["layers"] == 2
    assert "no BatchNorm layer holds loaded statistics" in finding.message
    _filled(finding)


def test_bns104_new_head_after_loaded_layers_is_not_reported_but_a_hole_is():
    state = _state(**_fresh("head.bn", 32))
    assert _run104(state, pretrained="timm/resnet18") == []
    state = _state(**_fresh("bn1", 16))  # bn1 untouched, bn2 loaded: a failed load
    (finding,) = _run104(state, pretrained="timm/resnet18")
    assert finding.target == "bn1" and finding.evidence["num_batches_tracked"] == 0


def test_bns104_frozen_batchnorm_state_dict_without_counter():
    state = _fresh("backbone.body.bn1", 8, tracked=False)
    state.update({"backbone.body.bn1.weight": torch.ones(8), "backbone.body.bn1.bias": torch.zeros(8)})
    (finding,) = _run104(state, pretrained="torchvision.models.detection.fasterrcnn_resnet50_fpn")
    assert finding.target == "backbone.body.bn1" and "num_batches_tracked" not in finding.evidence


def test_bns104_counter_nonzero_is_not_never_updated():
    state = _fresh("bn", 4)
    state["bn.num_batches_tracked"] = torch.tensor(5)
    assert _run104(state, pretrained="x") == []


def test_bns104_live_model_reads_the_same_tensors():
    model = calibrated_cnn()
    with torch.no_grad():
        model.bn1.running_var[0] = -1.0
    (finding,) = [f for f in BatchnormStatisticsInvalid().probe(_ctx(model))]
    assert finding.target == "bn1" and finding.evidence["problem"] == "negative-variance"
