"""Dynamic-audit cost on a ResNet-50-sized model, side by side in one run (figures and
ratios, never asserted). Goal: a full `audit()` under ~8 forward passes and ~3x the model's
bytes (plus activations).

1. Time: a full `audit()` of the ResNet-50-sized model (fixtures/dynamic/_resnet.py) at
   batch 8, 224x224, with preprocess, sample, labels, SGD momentum 0.9 and num_classes, as a
   multiple of one eval forward pass (median of N), with a per-probe breakdown (the audit's
   `progress` callback) and the cost of the shared passes.
2. Memory: peak RSS in fresh subprocesses: (a) build the model and run one eval forward,
   (b) build it and run the audit; both minus the RSS right after building, as multiples of
   the model's parameter+buffer bytes.

Usage:  python bench/bench_dynamic.py [--repeat N] [--batch 8] [--size 224]
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import time
from pathlib import Path

from _breakdown import Breakdown, findings_line  # bench/ is on sys.path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent

CHILD = r'''
import json, resource, sys, time
sys.path.insert(0, {fixtures!r})
import numpy as np, torch
from _resnet import fine_tuning_resnet50
from _torch_fixtures import calibrate, imagenet_preprocess, images
torch.set_num_threads({threads})

def rss():  # current RSS (bytes) from /proc, peak from getrusage (KiB on Linux)
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

def peak():
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

model = fine_tuning_resnet50(num_classes=10, size={size})
sample = images({batch}, {size}, seed=5)
labels = np.arange({batch}) % 10
x = imagenet_preprocess(sample)
model_bytes = sum(t.numel() * t.element_size() for t in list(model.parameters()) + list(model.buffers()))
base_rss, base_peak = rss(), peak()
mode = {mode!r}
if mode == "forward":
    with torch.no_grad():
        model(x)
else:
    from auditor import Pipeline, audit
    opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
    audit(Pipeline(model, preprocess=imagenet_preprocess, sample=sample, labels=labels, num_classes=10, optimizer=opt, pretrained="torchvision.models.resnet50"))
print(json.dumps({{"model_bytes": model_bytes, "base_rss": base_rss, "base_peak": base_peak, "peak": peak()}}))
'''


def _child(mode: str, batch: int, size: int, threads: int) -> dict:
    code = CHILD.format(fixtures=str(ROOT / "fixtures" / "dynamic"), batch=batch, size=size, mode=mode, threads=threads)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True, cwd=ROOT)
    return json.loads(out.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    args = parser.parse_args()

    import numpy as np
    import torch

    sys.path.insert(0, str(ROOT / "fixtures" / "dynamic"))
    from _resnet import fine_tuning_resnet50
    from _torch_fixtures import imagenet_preprocess, images

    from auditor import Pipeline
    from auditor.dynamic import audit as audit_mod
    from auditor.dynamic.torch_context import TorchContext
    from auditor.registry import Selection

    threads = torch.get_num_threads()
    model = fine_tuning_resnet50(num_classes=10, size=args.size)  # BatchNorm calibrated at the audited size
    sample = images(args.batch, args.size, seed=5)
    labels = np.arange(args.batch) % 10
    x = imagenet_preprocess(sample)
    model.eval()
    with torch.no_grad():
        model(x)  # warm-up
        times = []
        for _ in range(args.repeat):
            start = time.perf_counter()
            model(x)
            times.append(time.perf_counter() - start)
    forward = sorted(times)[len(times) // 2]
    print(f"ResNet-50-sized model, batch {args.batch}, {args.size}x{args.size}, {threads} threads, torch {torch.__version__}")
    print(f"one eval forward (median of {args.repeat}): {forward:.3f}s")

    def pipe(clean=False):
        if clean:  # a pipeline with nothing to report: no diagnostic passes
            opt = torch.optim.Adam(model.parameters(), lr=1e-5)
        else:
            opt = torch.optim.SGD(model.parameters(), lr=1e-3, momentum=0.9)
        return Pipeline(model, preprocess=imagenet_preprocess, sample=sample, labels=labels, num_classes=10, optimizer=opt, pretrained="torchvision.models.resnet50")

    # per-pass and per-probe breakdown: time the shared passes, then each probe via `progress`
    rules = Selection((), ()).rules(kind="dynamic")
    breakdown = Breakdown(TorchContext(pipe()), rules)

    # the full audit, end to end (fresh context: passes included)
    start = time.perf_counter()
    full_report = audit_mod.audit(pipe())
    full = time.perf_counter() - start

    start = time.perf_counter()
    clean_report = audit_mod.audit(pipe(clean=True))
    clean = time.perf_counter() - start

    print(f"full audit(), SGD 1e-3 momentum 0.9: {full:.2f}s = {full / forward:.1f} forward passes (goal <= 8)   [{len(rules)} dynamic rules]")
    print(findings_line(full_report))
    print(f"full audit(), Adam 1e-5 (clean):     {clean:.2f}s = {clean / forward:.1f} forward passes")
    print(findings_line(clean_report))
    breakdown.print(forward)

    fwd = _child("forward", args.batch, args.size, threads)
    aud = _child("audit", args.batch, args.size, threads)
    mb = fwd["model_bytes"]
    act = fwd["peak"] - fwd["base_rss"]
    extra = aud["peak"] - aud["base_rss"]
    print(f"memory (peak RSS in fresh subprocesses, minus RSS after building; model params+buffers = {mb / 2**20:.1f} MiB):")
    print(f"  one eval forward (activations): {act / 2**20:8.1f} MiB = {act / mb:4.1f}x model bytes")
    print(f"  full audit:                     {extra / 2**20:8.1f} MiB = {extra / mb:4.1f}x model bytes; "
          f"minus the forward's activations: {(extra - act) / mb:4.1f}x (goal <= 3x plus activations)")


if __name__ == "__main__":
    main()
