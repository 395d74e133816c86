"""LRT101 (one real optimizer step, measured per layer): ratios, thresholds, suggested
learning rate, messages, and restoration of the optimizer state the step creates."""

from __future__ import annotations

import math
import sys

import pytest

torch = pytest.importorskip("torch")
np = pytest.importorskip("numpy")

from auditor import Pipeline, audit  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
sys.path.insert(0, str(DYNAMIC / "LRT101"))
from _lrt101 import fine_tuning_cnn, pipeline  # noqa: E402
from _torch_fixtures import SmallCNN  # noqa: E402


def lrt(pipe):
    before = capture(pipe)
    report = audit(pipe, select="LRT101")
    assert_restored(pipe, before)
    return [f for f in report.findings if f.rule == "LRT101"], report


def test_adam_ratio_is_lr_over_weight_rms():
    """Adam's first step moves every element by ~lr: ratio = lr * sqrt(n) / ||w||."""
    model = fine_tuning_cnn()
    w = model.conv2.weight.detach().clone()
    (finding,), _ = lrt(pipeline(model, torch.optim.Adam(model.parameters(), lr=1e-3)))
    assert finding.target == "conv2" and finding.severity == Severity.WARNING
    expected = 1e-3 * math.sqrt(w.numel()) / float(w.norm())
    assert finding.evidence["worst_ratio"] == pytest.approx(expected, rel=0.05)
    assert finding.evidence["momentum_factor"] == 1.0
    assert finding.evidence["head"] == "fc" and finding.evidence["head_ratio"] > 0
    assert 0 < finding.evidence["feature_cosine"] <= 1
    assert "conv2" in finding.message and "lr 0.001" in finding.message and "param group 0" in finding.message


def test_error_level_and_suggested_lr_brings_it_under():
    model = fine_tuning_cnn()
    (finding,), _ = lrt(pipeline(model, torch.optim.Adam(model.parameters(), lr=1e-2)))
    assert finding.severity == Severity.ERROR and "error threshold 0.1" in finding.message
    suggest = finding.evidence["suggested_lr"]
    assert suggest * finding.evidence["worst_ratio"] / 1e-2 < 1e-2  # linear in lr
    assert f"{suggest:g}" in finding.fix
    model = fine_tuning_cnn()
    found, _ = lrt(pipeline(model, torch.optim.Adam(model.parameters(), lr=suggest)))
    assert found == []


def test_threshold_edges_scale_linearly():
    """1e-4 is clean, 1e-3 warns: the ratio is linear in the learning rate."""
    ratios = {}
    for lr in (1e-4, 1e-3):
        model = fine_tuning_cnn()
        found, _ = lrt(pipeline(model, torch.optim.Adam(model.parameters(), lr=lr)))
        ratios[lr] = found[0].evidence["worst_ratio"] if found else None
    assert ratios[1e-4] is None and ratios[1e-3] is not None


def test_sgd_momentum_first_step_is_scaled():
    model = fine_tuning_cnn()
    (finding,), _ = lrt(pipeline(model, torch.optim.SGD(model.parameters(), lr=0.1, momentum=0.9)))
    ev = finding.evidence
    assert ev["momentum_factor"] == pytest.approx(10.0)
    assert ev["worst_ratio"] == pytest.approx(10 * ev["measured_ratio"], rel=1e-3)
    assert "x10 for momentum" in finding.message


def test_param_group_named_in_fix():
    model = fine_tuning_cnn()
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.Adam([{"params": model.fc.parameters(), "lr": 1e-4}, {"params": backbone, "lr": 1e-2}])
    (finding,), _ = lrt(pipeline(model, opt))
    assert finding.evidence["param_group"] == 1 and finding.evidence["lr"] == 1e-2
    assert "param group 1" in finding.fix


def test_head_is_not_judged():
    """A huge head update alone (head group at 1.0, backbone at 1e-6) is not a finding."""
    model = fine_tuning_cnn()
    backbone = [p for n, p in model.named_parameters() if not n.startswith("fc.")]
    opt = torch.optim.Adam([{"params": backbone, "lr": 1e-6}, {"params": model.fc.parameters(), "lr": 1.0}])
    found, _ = lrt(pipeline(model, opt))
    assert found == []


def test_no_optimizer_no_finding():
    model = fine_tuning_cnn()
    found, _ = lrt(pipeline(model, None))
    assert found == []


def test_fresh_model_without_pretrained_is_skipped_with_a_note():
    torch.manual_seed(0)
    model = SmallCNN(5)
    pipe = pipeline(model, torch.optim.Adam(model.parameters(), lr=1e-2)).replace(pretrained=None)
    found, report = lrt(pipe)
    assert found == [] and any("LRT101 skipped" in n for n in report.notes)


def test_loss_that_cannot_take_targets_is_a_note_not_a_failure():
    model = fine_tuning_cnn()
    pipe = pipeline(model, torch.optim.Adam(model.parameters(), lr=1e-2), loss=torch.nn.MSELoss())
    found, report = lrt(pipe)
    assert found == [] and not [f for f in report.findings if f.rule == "USE003"]
    assert any("LRT101 skipped: the loss failed" in n for n in report.notes)


def test_restores_existing_adam_state_and_scheduler_wrapper():
    """An optimizer that already stepped (Adam step counts, exp_avg) and a scheduler wrapping
    optimizer.step: after the audit, the state is bit for bit the same and the scheduler's
    `_opt_called` flag was not left behind."""
    model = fine_tuning_cnn().train()
    opt = torch.optim.Adam(model.parameters(), lr=1e-2)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=1, gamma=0.5)
    x = torch.randn(4, 3, 32, 32)
    model(x).logsumexp(1).mean().backward()
    opt.step()
    sched.step()
    opt.zero_grad(set_to_none=False)  # zero grads kept: restored as they were
    called = getattr(opt, "_opt_called", None)
    steps = {id(p): float(s["step"]) for p, s in opt.state.items()}
    pipe = pipeline(model, opt)
    (finding,), _ = lrt(pipe)
    assert finding.evidence["lr"] == 5e-3  # the scheduler halved it; a resumed Adam steps less than lr
    assert {id(p): float(s["step"]) for p, s in opt.state.items()} == steps
    assert getattr(opt, "_opt_called", None) == called
    assert all(p.grad is not None and not p.grad.any() for p in model.parameters())


def test_fresh_adam_state_is_removed_again():
    model = fine_tuning_cnn()
    opt = torch.optim.Adam(model.parameters(), lr=1e-3)
    torch.optim.lr_scheduler.ExponentialLR(opt, gamma=0.9)
    lrt(pipeline(model, opt))
    assert len(opt.state) == 0 and not hasattr(opt, "_opt_called")
    assert all(p.grad is None for p in model.parameters())
