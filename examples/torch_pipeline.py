"""A PyTorch fine-tuning pipeline with the silent bugs `auditor audit` measures.

Run:  auditor audit examples/torch_pipeline.py:build

The "pretrained" backbone is a small CNN whose BatchNorm statistics are estimated in code on
ImageNet-normalised images, so it behaves like torchvision weights without downloading any.
The pipeline then makes four classic mistakes:
- preprocessing scales pixels to [0, 1] and forgets `Normalize(mean, std)`;
- the stem is frozen with `requires_grad_(False)` but `model.train()` keeps updating its
  BatchNorm statistics;
- the ImageNet head (1000 units) was never replaced for the 37 pet breeds;
- Adam at its default learning rate (1e-3) on pretrained layers.
"""

import numpy as np
import torch
from torch import nn

from auditor import Pipeline
from auditor.dynamic.samples import synthetic_images

IMAGENET_MEAN = np.array([0.485, 0.456, 0.406])
IMAGENET_STD = np.array([0.229, 0.224, 0.225])
NUM_CLASSES = 37


class PetNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 16, 3, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(16)
        self.conv2 = nn.Conv2d(16, 32, 3, stride=2, padding=1, bias=False)
        self.bn2 = nn.BatchNorm2d(32)
        self.fc = nn.Linear(32, 1000)  # the ImageNet head, never replaced

    def forward(self, x):
        x = torch.relu(self.bn1(self.conv1(x)))
        x = torch.relu(self.bn2(self.conv2(x)))
        return self.fc(x.mean((2, 3)))


def to_tensor(rgb_or_bgr):
    """(N, H, W, 3) uint8 -> ImageNet-normalised (N, 3, H, W) float32."""
    x = (rgb_or_bgr.astype(np.float64) / 255.0 - IMAGENET_MEAN) / IMAGENET_STD
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def pretrained_petnet():
    """Random weights, BatchNorm statistics estimated on ImageNet-style input: 'pretrained'."""
    torch.manual_seed(0)
    model = PetNet()
    model.train()
    for bn in (model.bn1, model.bn2):
        bn.momentum = None  # exact average over the calibration batches
    with torch.no_grad():
        for seed in range(4):
            model(to_tensor(synthetic_images(16, 32, seed=100 + seed)))
    for bn in (model.bn1, model.bn2):
        bn.momentum = 0.1
    return model.eval()


def scale_only(batch):
    """The bug: ToTensor-style [0, 1] scaling, and no Normalize(IMAGENET_MEAN, IMAGENET_STD)."""
    x = batch.astype(np.float64) / 255.0
    return torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).float()


def load_batch():
    """What the data loader yields: uint8 RGB images (N, H, W, 3)."""
    return synthetic_images(8, 32, seed=7)


def build():
    model = pretrained_petnet()
    for p in list(model.conv1.parameters()) + list(model.bn1.parameters()):
        p.requires_grad_(False)  # freeze the stem...
    model.train()  # ...but train() puts its BatchNorm back into updating mode
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad])  # lr=1e-3
    images = load_batch()
    labels = np.arange(8) % NUM_CLASSES
    return Pipeline(
        model,
        preprocess=scale_only,
        sample=images,
        labels=labels,
        num_classes=NUM_CLASSES,
        optimizer=optimizer,
        loss=nn.CrossEntropyLoss(),
        pretrained="torchvision.models.resnet18",
    )
