"""`audit()` gives everything back bit for bit: for every probe, on several models (train and
eval mode, frozen parts, optimizers with state and schedulers, custom buffers, dropout), and
when a probe raises halfway after wrecking the model."""

from __future__ import annotations

import random

import numpy as np
import pytest

torch = pytest.importorskip("torch")
from torch import nn  # noqa: E402

from auditor import Pipeline, audit  # noqa: E402
from auditor.dynamic.audit import make_context, run_probes  # noqa: E402
from auditor.finding import Severity  # noqa: E402
from auditor.registry import all_rules  # noqa: E402
from auditor.rule import DynamicRule  # noqa: E402
from dynamic_support import DYNAMIC, assert_restored, capture  # noqa: E402

import sys  # noqa: E402

sys.path.insert(0, str(DYNAMIC))
from _torch_fixtures import calibrated_cnn, imagenet_preprocess, images  # noqa: E402

DYNAMIC_RULES = [r for r in all_rules() if r.kind == "dynamic"]


class Counting(nn.Module):
    """Writes a buffer and uses functional dropout in forward: state that changes on its own."""

    def __init__(self):
        super().__init__()
        self.body = calibrated_cnn(num_classes=6, seed=3)
        self.register_buffer("calls", torch.zeros((), dtype=torch.long))
        self.register_buffer("ema", torch.zeros(6))

    def forward(self, x):
        self.calls += 1
        out = torch.nn.functional.dropout(self.body(x), p=0.2)
        self.ema.mul_(0.9).add_(out.detach().mean(0), alpha=0.1)
        return out


def _training_pipeline():
    model = calibrated_cnn(num_classes=5, seed=1)
    for p in list(model.conv1.parameters()) + list(model.bn1.parameters()):
        p.requires_grad_(False)
    model.train()
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=1e-3)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=3, gamma=0.5)
    x = imagenet_preprocess(images(8, 32, seed=5))
    y = torch.arange(8) % 5
    loss = nn.CrossEntropyLoss()(model(x), y)
    loss.backward()
    opt.step()
    sched.step()  # optimizer state with step counts, a scheduler wrapping step, grads left set
    return Pipeline(model, preprocess=imagenet_preprocess, sample=images(8, 32, seed=6), labels=np.arange(8) % 5, num_classes=5, optimizer=opt, loss=nn.CrossEntropyLoss(), pretrained="torchvision.models.resnet18")


def _inference_pipeline():
    model = Counting()
    model.eval()
    return Pipeline(model, preprocess=imagenet_preprocess, sample=images(8, 32, seed=7), num_classes=6)


def _sgd_sequential_pipeline():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 8, 3), nn.BatchNorm2d(8), nn.ReLU(), nn.Dropout(0.3), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(8, 4), nn.Softmax(dim=1))
    opt = torch.optim.SGD(model.parameters(), lr=0.5, momentum=0.9, nesterov=True)
    return Pipeline(model, sample=imagenet_preprocess(images(8, 32, seed=8)).numpy(), num_classes=3, optimizer=opt, loss=nn.CrossEntropyLoss())


PIPELINES = {"training": _training_pipeline, "inference": _inference_pipeline, "sgd-sequential": _sgd_sequential_pipeline}


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
@pytest.mark.parametrize("rule", DYNAMIC_RULES, ids=lambda r: r.code)
def test_every_probe_restores_everything(rule, make):
    np.random.seed(11)
    random.seed(11)
    pipeline = make()
    before = capture(pipeline)
    audit(pipeline, select=[rule.code])
    assert_restored(pipeline, before)


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
def test_full_audit_restores_everything(make):
    pipeline = make()
    before = capture(pipeline)
    report = audit(pipeline)
    assert not [f for f in report.findings if f.rule == "USE003"], [f.message for f in report.findings]
    assert_restored(pipeline, before)


class Vandal(DynamicRule):
    """
    ## What it does
    Test double: wrecks every piece of state the audit promises to restore, then raises.

    ## Why is this bad?
    It is not a real rule.

    ## Example
    ```python
    pass
    ```

    ## Use instead
    ```python
    pass
    ```
    """

    code = "USE199"
    name = "vandal"
    category = "usage"
    severity = Severity.ERROR
    message = "never"
    fix = "never"

    def probe(self, ctx):
        model = ctx.model
        with torch.no_grad():
            for p in model.parameters():
                p.add_(1.0)
            for b in model.buffers():
                if b.is_floating_point():
                    b.mul_(3.0)
        first = next(model.parameters())
        first.requires_grad_(not first.requires_grad)
        first.grad = torch.ones_like(first)
        model.train(not model.training)
        for name, module in model.named_modules():
            if isinstance(module, nn.BatchNorm2d):
                module.running_mean = torch.full_like(module.running_mean, 7.0)  # rebinds the buffer
                break
        if ctx.optimizer is not None:
            ctx.optimizer.param_groups[0]["lr"] = 123.0
            ctx.optimizer.state.clear()
            ctx.optimizer.hacked = True
        torch.rand(5)
        np.random.rand(3)
        random.random()
        torch.set_grad_enabled(False)
        yield from ()
        raise RuntimeError("halfway")


@pytest.mark.parametrize("make", PIPELINES.values(), ids=PIPELINES.keys())
def test_restores_when_a_probe_raises_halfway(make):
    pipeline = make()
    before = capture(pipeline)
    report = run_probes(make_context(pipeline), [Vandal] + DYNAMIC_RULES[:2])
    assert [f for f in report.findings if f.rule == "USE003" and f.target == "USE199"], "the failure is reported"
    assert_restored(pipeline, before)
    assert not hasattr(pipeline.optimizer, "hacked") if pipeline.optimizer is not None else True


def test_timeout_restores_the_model():
    import time

    class Slow(nn.Module):
        def __init__(self):
            super().__init__()
            self.fc = nn.Linear(4, 2)
            self.register_buffer("seen", torch.zeros(()))

        def forward(self, x):
            self.seen += 1
            time.sleep(1.0)
            return self.fc(x)

    from auditor.dynamic.audit import AuditTimeout

    pipeline = Pipeline(Slow().eval(), sample=np.ones((2, 4), dtype=np.float32))
    before = capture(pipeline)
    with pytest.raises(AuditTimeout):
        audit(pipeline, timeout=0.5)
    assert_restored(pipeline, before)
