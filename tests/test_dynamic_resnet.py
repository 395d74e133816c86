"""End to end: the ResNet-50-sized model (fixtures/dynamic/_resnet.py, 25.6M parameters,
torchvision layout) in a realistic fine-tuning pipeline at 64x64, batch 4: a clean
configuration and one with a deliberately wrong learning rate, restored bit for bit."""

from __future__ import annotations

import sys

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from auditor import Pipeline, audit  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture, found_pairs  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
from _resnet import RESNET50_PARAMETERS, fine_tuning_resnet50, resnet50  # noqa: E402
from _torch_fixtures import calibrate, imagenet_preprocess, images  # noqa: E402


SAMPLE = images(4, 64, seed=31)


@pytest.fixture(scope="module")
def model():
    """Statistics calibrated on the sample's own distribution: at 64x64 and batch 4, layer4
    sees 2x2 maps, and statistics from other images would make the train/eval outputs differ
    (BNS102, rightly) before any learning rate is looked at."""
    model = fine_tuning_resnet50(num_classes=10, size=64)
    return calibrate(model, [imagenet_preprocess(SAMPLE)])


def _pipeline(model, optimizer):
    return Pipeline(model, preprocess=imagenet_preprocess, sample=SAMPLE, labels=np.array([0, 3, 7, 9]),
                    num_classes=10, optimizer=optimizer, pretrained="torchvision.models.resnet50")


def test_resnet_has_torchvision_size_and_names():
    torch.manual_seed(0)
    m = resnet50()
    assert sum(p.numel() for p in m.parameters()) == RESNET50_PARAMETERS
    names = {n for n, _ in m.named_modules()}
    assert {"conv1", "bn1", "layer1.0.conv1", "layer1.0.downsample.0", "layer4.2.bn3", "fc"} <= names


def test_clean_fine_tuning_pipeline(model):
    """The Keras guide's recipe (Adam 1e-5 on the whole network): nothing to report."""
    pipe = _pipeline(model, torch.optim.Adam(model.parameters(), lr=1e-5))
    before = capture(pipe)
    report = audit(pipe)
    assert_restored(pipe, before)
    assert found_pairs(report.findings) == [], [(f.rule, f.target, f.message) for f in report.findings]


def test_wrong_learning_rate(model):
    """Adam 1e-2 on pretrained weights: LRT101 on the layer that moves most, as an error."""
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    torch.optim.lr_scheduler.StepLR(opt, step_size=7)
    pipe = _pipeline(model, opt)
    before = capture(pipe)
    report = audit(pipe)
    assert_restored(pipe, before)
    assert len(opt.state) == 0
    assert found_pairs(report.findings) == [("LRT101", "layer4.0.conv2")], [(f.rule, f.target, f.message) for f in report.findings]
    (finding,) = report.findings
    assert finding.severity == Severity.ERROR
    assert finding.evidence["worst_ratio"] > 0.1 and finding.evidence["head"] == "fc"
    assert finding.evidence["suggested_lr"] < 1e-3
