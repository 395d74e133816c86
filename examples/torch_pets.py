"""Fine-tune a torchvision ResNet-50 on 37 pet breeds (contains deliberate bugs)."""

import argparse

import torch
import torch.nn as nn
from torch.utils.data import DataLoader
from torchvision import datasets, models, transforms

NUM_CLASSES = 37

train_tf = transforms.Compose(
    [
        transforms.RandomResizedCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ]
)


def build(num_classes=NUM_CLASSES):
    model = models.resnet50(weights=models.ResNet50_Weights.IMAGENET1K_V2)
    for param in model.parameters():
        param.requires_grad = False
    model.fc = nn.Linear(model.fc.in_features, num_classes)
    return model


def evaluate(model, loader):
    correct = 0
    with torch.no_grad():
        for images, labels in loader:
            correct += (model(images).argmax(1) == labels).sum().item()
    return correct


def train(model, loader, val_loader, lr):
    optimizer = torch.optim.SGD(model.parameters(), lr=lr, momentum=0.9)
    criterion = nn.CrossEntropyLoss()
    for epoch in range(10):
        model.train()
        for images, labels in loader:
            optimizer.zero_grad()
            loss = criterion(model(images), labels)
            loss.backward()
            optimizer.step()
        print(epoch, evaluate(model, val_loader))


if __name__ == "__main__":
    parser = argparse.ArgumentParser()
    parser.add_argument("--lr", type=float, default=0.5)
    parser.add_argument("--resume", default=None)
    args = parser.parse_args()
    train_loader = DataLoader(datasets.ImageFolder("pets/train", transform=train_tf), batch_size=32, shuffle=True)
    val_loader = DataLoader(datasets.ImageFolder("pets/val", transform=train_tf), batch_size=32)
    net = build()
    if args.resume:
        net.load_state_dict(torch.load(args.resume))
    train(net, train_loader, val_loader, args.lr)
