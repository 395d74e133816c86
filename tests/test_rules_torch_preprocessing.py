"""Focused cases for PRE003 (normalize-stats-mismatch) and PRE004 (missing-normalization):
value resolution, tolerances, what each model expects, and the data flow that ties a
pipeline to a model."""

from __future__ import annotations

import textwrap

import pytest

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit


def findings(src: str, code: str) -> list:
    result = check_unit(SourceUnit("snippet.py", textwrap.dedent(src)), [code])
    return [f for f in result.findings if f.rule == code]


def lines(src: str, code: str) -> list[int]:
    return sorted(f.line for f in findings(src, code))


RESNET = """
import torch
from torchvision import models, transforms as T
model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
"""


@pytest.mark.parametrize(
    "mean, std, flagged",
    [
        ("[0.485, 0.456, 0.406]", "[0.229, 0.224, 0.225]", False),
        ("(0.4914, 0.4822, 0.4465)", "(0.2023, 0.1994, 0.2010)", False),  # CIFAR: close enough
        ("(0.4914, 0.4822, 0.4465)", "(0.2470, 0.2435, 0.2616)", False),
        ("[0.5] * 3", "[0.5] * 3", True),
        ("(0.5,)", "(0.5,)", True),
        ("(0.55, 0.456, 0.406)", "(0.229, 0.224, 0.225)", True),  # mean off by 0.065
        ("(0.485, 0.456, 0.406)", "(0.16, 0.224, 0.225)", True),  # std ratio 0.70
        ("(0.485, 0.456, 0.406)", "(0.18, 0.224, 0.225)", False),  # std ratio 0.79
    ],
)
def test_tolerance(mean, std, flagged):
    src = RESNET + f"tf = T.Compose([T.ToTensor(), T.Normalize({mean}, {std})])\n"
    assert bool(findings(src, "PRE003")) is flagged


def test_message_names_found_and_expected_stats():
    src = RESNET + "tf = T.Compose([T.ToTensor(), T.Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5))])\n"
    (f,) = findings(src, "PRE003")
    assert f.message == (
        "Normalize(mean=(0.5, 0.5, 0.5), std=(0.5, 0.5, 0.5)) in front of resnet50 "
        "(torchvision ImageNet weights expect mean=(0.485, 0.456, 0.406), std=(0.229, 0.224, 0.225))"
    )
    assert "weights.transforms()" in f.fix


def test_values_resolve_through_starred_numpy_and_tensor_arithmetic():
    src = RESNET + textwrap.dedent(
        """
        import numpy as np
        stats = ((0.5, 0.5, 0.5), (0.5, 0.5, 0.5))
        good_mean = np.array([123.675, 116.28, 103.53]) / 255
        good_std = torch.tensor([58.395, 57.12, 57.375]).view(3, 1, 1) / 255
        a = T.Compose([T.ToTensor(), T.Normalize(*stats)])
        b = T.Compose([T.ToTensor(), T.Normalize(good_mean, good_std)])
        """
    )
    assert lines(src, "PRE003") == [10]


def test_0_255_statistics_after_to_tensor_and_without_it():
    src = RESNET + textwrap.dedent(
        """
        MEAN = [123.675, 116.28, 103.53]
        STD = [58.395, 57.12, 57.375]
        scaled = T.Compose([T.ToTensor(), T.Normalize(MEAN, STD)])
        raw = T.Normalize(MEAN, STD)  # applied to x.float() somewhere: cannot tell, compare /255
        """
    )
    (f,) = findings(src, "PRE003")
    assert f.line == 8 and "0-255" in f.message


def test_inception_without_transform_input_expects_half_statistics():
    src = textwrap.dedent(
        """
        from torchvision import models, transforms as T
        net = models.inception_v3(weights="DEFAULT", transform_input=False)
        half = T.Normalize([0.5] * 3, [0.5] * 3)
        imagenet = T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])
        """
    )
    assert lines(src, "PRE003") == [5]


def test_timm_tags_that_change_the_statistics():
    src = textwrap.dedent(
        """
        import timm
        from timm.data import IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD
        from torchvision import transforms as T
        model = timm.create_model("convnext_base.clip_laion2b_augreg_ft_in1k", pretrained=True)
        tf = T.Normalize(IMAGENET_INCEPTION_MEAN, IMAGENET_INCEPTION_STD)
        """
    )
    assert lines(src, "PRE003") == []
    assert lines(src.replace("convnext_base.clip_laion2b_augreg_ft_in1k", "resnet50"), "PRE003") == [6]


def test_kornia_and_albumentations_defaults():
    src = textwrap.dedent(
        """
        import albumentations as A
        import kornia
        import torch
        from torchvision import models
        net = models.efficientnet_b3(weights="IMAGENET1K_V1")
        aug = A.Compose([A.Resize(300, 300), A.Normalize()])
        gpu_norm = kornia.enhance.Normalize(mean=torch.tensor([0.5, 0.5, 0.5]), std=torch.tensor([0.5, 0.5, 0.5]))
        """
    )
    assert lines(src, "PRE003") == [8]


@pytest.mark.parametrize(
    "builder",
    [
        "models.resnet50(weights=None)",
        "models.resnet50()",
        "models.resnet50(pretrained=False)",
        'torch.hub.load("ultralytics/yolov5", "custom", path="best.pt")',
    ],
)
def test_silent_without_a_judged_pretrained_model(builder):
    src = textwrap.dedent(
        f"""
        import torch
        from torchvision import models, transforms as T
        model = {builder}
        tf = T.Compose([T.ToTensor(), T.Normalize((0.1307,), (0.3081,))])
        bare = T.Compose([T.Resize(224), T.ToTensor()])
        """
    )
    assert findings(src, "PRE003") == []
    assert findings(src, "PRE004") == []


def test_flow_through_helpers_tuple_unpacking_and_loops():
    src = textwrap.dedent(
        """
        import torch
        from torch.utils.data import DataLoader
        from torchvision import datasets, models, transforms

        def get_data(tf):
            ds = datasets.ImageFolder("data", transform=tf)
            return DataLoader(ds, batch_size=4), ds.classes

        class Scratch(torch.nn.Module):
            def forward(self, x):
                return x.mean((1, 2, 3))

        mnist_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        pets_tf = transforms.Compose([transforms.ToTensor(), transforms.Normalize((0.1307,), (0.3081,))])
        mnist_loader, _ = get_data(mnist_tf)
        pets_loader, classes = get_data(pets_tf)
        scratch = Scratch()
        resnet = models.resnet18(weights="DEFAULT")
        resnet.fc = torch.nn.Linear(512, len(classes))
        for x, _ in mnist_loader:
            scratch(x)
        for x, _ in pets_loader:
            x = x.cuda()
            resnet(x)
        """
    )
    assert lines(src, "PRE003") == [15]


def test_detection_model_double_normalisation_and_wrapped_backbone():
    double = textwrap.dedent(
        """
        from torchvision import transforms as T
        from torchvision.models.detection import fasterrcnn_mobilenet_v3_large_fpn
        det = fasterrcnn_mobilenet_v3_large_fpn(weights="DEFAULT").eval()
        prep = T.Compose([T.ToTensor(), T.Normalize([0.485, 0.456, 0.406], [0.229, 0.224, 0.225])])
        out = det([prep(img)])
        """
    )
    (f,) = findings(double, "PRE003")
    assert "twice" in f.message
    wrapped = textwrap.dedent(
        """
        from torchvision import transforms as T
        from torchvision.models import mobilenet_v2
        from torchvision.models.detection import FasterRCNN
        backbone = mobilenet_v2(weights="DEFAULT").features
        backbone.out_channels = 1280
        det = FasterRCNN(backbone, num_classes=2)
        prep = T.Compose([T.ToTensor()])
        out = det([prep(img)])
        """
    )
    assert findings(wrapped, "PRE004") == []


def test_missing_normalization_is_silenced_by_any_normalising_evidence():
    base = RESNET + "tf = T.Compose([T.Resize(256), T.ToTensor()])\nout = model(tf(img).unsqueeze(0))\n"
    assert lines(base, "PRE004") == [5]
    for extra in (
        "pre = models.ResNet50_Weights.DEFAULT.transforms()",
        "import timm\ncfg = timm.data.resolve_data_config({}, model=model)",
        "from transformers import AutoImageProcessor\np = AutoImageProcessor.from_pretrained('x')",
        "MEAN = torch.tensor([0.485, 0.456, 0.406])\ndef norm(x):\n    return (x - MEAN) / 0.226",
        "def prep(x):\n    return x.sub_(m).div_(s)",
    ):
        assert findings(base + extra + "\n", "PRE004") == [], extra
    l2 = base + "import torch.nn.functional as F\nemb = F.normalize(model(x), dim=1)\n"
    assert lines(l2, "PRE004") == [5]


def test_missing_normalization_ambiguous_when_another_model_is_unconnected():
    src = RESNET + textwrap.dedent(
        """
        class Tiny(torch.nn.Module):
            pass
        tiny = Tiny()
        tf = T.Compose([T.Resize(256), T.ToTensor()])
        """
    )
    assert findings(src, "PRE004") == []


def test_list_of_steps_appended_then_composed():
    src = RESNET + textwrap.dedent(
        """
        steps = [T.Resize(256), T.ToTensor()]
        steps.append(T.Normalize((0.5, 0.5, 0.5), (0.5, 0.5, 0.5)))
        tf = T.Compose(steps)
        out = model(tf(img).unsqueeze(0))
        """
    )
    assert lines(src, "PRE003") == [7]
    assert findings(src, "PRE004") == []


def test_weights_reloaded_from_a_checkpoint_are_not_judged():
    src = RESNET + textwrap.dedent(
        """
        model.fc = torch.nn.Linear(2048, 3)
        state = torch.load("finetuned.pth", map_location="cpu", weights_only=True)
        model.load_state_dict(state["model"])
        tf = T.Compose([T.Resize(256), T.ToTensor(), T.Normalize([0.5] * 3, [0.5] * 3)])
        bare = T.Compose([T.Resize(256), T.ToTensor()])
        out = model(tf(img).unsqueeze(0))
        """
    )
    assert findings(src, "PRE003") == []
    assert findings(src, "PRE004") == []


KAGGLE = """
import albumentations as A
import timm
import torch
from albumentations.pytorch import ToTensorV2

class Net(torch.nn.Module):
    def __init__(self, name, pretrained=False):
        super().__init__()
        self.backbone = timm.create_model(name, pretrained=pretrained)

    def forward(self, x):
        return self.backbone(x)

class Leaves(torch.utils.data.Dataset):
    def __init__(self, files, transform):
        self.files, self.transform = files, transform

    def __getitem__(self, i):
        return self.transform(image=read(self.files[i]))["image"]

train_aug = A.Compose([A.Resize(256, 256), A.Normalize(), ToTensorV2()])
valid_aug = A.Compose([A.Resize(256, 256), ToTensorV2()])
train_dl = torch.utils.data.DataLoader(Leaves(["a"], train_aug))
valid_dl = torch.utils.data.DataLoader(Leaves(["b"], valid_aug))
net = Net("resnet50", pretrained=FLAG)
for loader in (train_dl, valid_dl):
    for x in loader:
        net(x.float())
"""


def test_pretrained_through_a_constructor_argument_and_local_dataset_skew():
    assert lines(KAGGLE.replace("FLAG", "True"), "PRE004") == [23]
    assert findings(KAGGLE.replace("FLAG", "False"), "PRE004") == []
    assert findings(KAGGLE.replace("FLAG", "args.pretrained"), "PRE004") == []
