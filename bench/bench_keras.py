"""Keras dynamic-audit cost on keras.applications.ResNet50(weights=None), side by side in one
run (figures and ratios, never asserted). Goal, as for PyTorch: a full `audit()` under ~8
forward passes and ~3x the model's weight bytes (plus activations), without paying a
`tf.function` trace (Keras's first `train_on_batch` traces one: about 40 forward passes)
and without leaving a traced train/predict function on the user's model.

1. Time: a full `audit()` of ResNet50 (weights=None, BatchNormalization statistics
   calibrated to the sample's preprocessing so it behaves like a pretrained model) at batch
   8, 224x224, with `keras.applications.resnet50.preprocess_input`, a uint8 sample, labels
   and the model compiled with SGD momentum 0.9, as a multiple of one eager forward pass
   `model(x, training=False)` (median of N), with a per-probe breakdown (the audit's
   `progress` callback) and the cost of the shared passes. Also: whether the audit called
   `make_train_function`/`make_predict_function`/`make_test_function` (a trace) and whether
   a traced function was left on the model.
2. Memory: the peak RSS (VmHWM, reset through /proc/self/clear_refs where the kernel allows
   it; tracemalloc does not see TensorFlow's allocator) in fresh subprocesses: (a) build the
   model and run one eager forward, (b) build it and run the audit; both minus the RSS right
   after building, as multiples of the model's weight bytes.

Usage:  python bench/bench_keras.py [--repeat N] [--batch 8] [--size 224] [--keras-api]
        (--keras-api also times Keras's own predict_on_batch/train_on_batch, first and second
        call, in a fresh subprocess, for comparison)
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

from _breakdown import Breakdown, findings_line  # bench/ is on sys.path when a bench runs as a script

ROOT = Path(__file__).resolve().parent.parent

COMMON = r'''
import json, os, resource, sys, time
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
sys.path.insert(0, {root!r})
sys.path.insert(0, {fixtures!r})
import numpy as np, keras
from _keras_fixtures import calibrate, images

def rss():
    with open("/proc/self/statm") as fh:
        return int(fh.read().split()[1]) * resource.getpagesize()

def reset_peak():
    try:
        with open("/proc/self/clear_refs", "w") as fh:
            fh.write("5")
        return True
    except OSError:
        return False

def peak():
    try:
        with open("/proc/self/status") as fh:
            for line in fh:
                if line.startswith("VmHWM:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024

def preprocess(batch):
    return keras.applications.resnet50.preprocess_input(np.asarray(batch, dtype="float32"))

model = keras.applications.ResNet50(weights=None, input_shape=({size}, {size}, 3))
calibrate(model, preprocess(images(16, {size}, seed=7)))
model.compile(optimizer=keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9), loss="sparse_categorical_crossentropy")
sample = images({batch}, {size}, seed=5)
labels = np.arange({batch}) % 1000
x = preprocess(sample)
weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)
'''

CHILD_MEMORY = COMMON + r'''
base_rss = rss()
resettable = reset_peak()
base_peak = peak()
if {mode!r} == "forward":
    model(x, training=False)
else:
    from auditor import Pipeline, audit
    audit(Pipeline(model, preprocess=preprocess, sample=sample, labels=labels, num_classes=1000, pretrained="keras.applications.resnet50"))
print(json.dumps({{"weight_bytes": weight_bytes, "base_rss": base_rss, "base_peak": base_peak, "peak": peak(), "resettable": resettable}}))
'''

CHILD_KERAS_API = COMMON + r'''
out = {{}}
for name, call in (("predict_on_batch", lambda: model.predict_on_batch(x)), ("train_on_batch", lambda: model.train_on_batch(x, labels))):
    times = []
    for _ in range(2):
        start = time.perf_counter(); call(); times.append(time.perf_counter() - start)
    out[name] = times
print(json.dumps(out))
'''


def _child(template: str, batch: int, size: int, **extra) -> dict:
    code = template.format(root=str(ROOT), fixtures=str(ROOT / "fixtures" / "dynamic"), batch=batch, size=size, **extra)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if out.returncode != 0:
        raise SystemExit(f"child failed:\n{out.stderr[-3000:]}")
    return json.loads(out.stdout.strip().splitlines()[-1])


class _TraceCounter:
    """Counts calls to Model.make_{train,predict,test}_function (each builds, and on first
    use traces, a compiled step function)."""

    NAMES = ("make_train_function", "make_predict_function", "make_test_function")

    def __init__(self, keras):
        self.keras = keras
        self.calls: dict[str, int] = {name: 0 for name in self.NAMES}
        self.saved: list[tuple[type, str, object]] = []

    def __enter__(self):
        for klass in type.mro(self.keras.Model):
            for name in self.NAMES:
                if name in vars(klass):
                    original = vars(klass)[name]

                    def wrapper(*args, __name=name, __original=original, **kwargs):
                        self.calls[__name] += 1
                        return __original(*args, **kwargs)

                    self.saved.append((klass, name, original))
                    setattr(klass, name, wrapper)
        return self

    def __exit__(self, *exc):
        for klass, name, original in reversed(self.saved):
            setattr(klass, name, original)


def _load() -> str:
    try:
        return " ".join(f"{v:.1f}" for v in os.getloadavg())
    except OSError:
        return "n/a"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--size", type=int, default=224)
    parser.add_argument("--keras-api", action="store_true", help="also time predict_on_batch/train_on_batch (first and second call) in a subprocess")
    args = parser.parse_args()

    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "2")
    import numpy as np

    import keras

    sys.path.insert(0, str(ROOT / "fixtures" / "dynamic"))
    from _keras_fixtures import calibrate, images

    from auditor import Pipeline
    from auditor.dynamic import audit as audit_mod
    from auditor.dynamic.keras_context import KerasContext
    from auditor.registry import Selection

    def preprocess(batch):
        return keras.applications.resnet50.preprocess_input(np.asarray(batch, dtype="float32"))

    model = keras.applications.ResNet50(weights=None, input_shape=(args.size, args.size, 3))
    calibrate(model, preprocess(images(16, args.size, seed=7)))  # behaves like pretrained weights on this preprocessing

    def compile_with(optimizer):
        model.compile(optimizer=optimizer, loss="sparse_categorical_crossentropy")

    compile_with(keras.optimizers.SGD(learning_rate=1e-3, momentum=0.9))
    sample = images(args.batch, args.size, seed=5)
    labels = np.arange(args.batch) % 1000
    x = preprocess(sample)
    weight_bytes = sum(int(np.prod(v.shape)) * np.dtype(v.dtype).itemsize for v in model.weights)

    def forwards(n: int) -> list[float]:
        out = []
        for _ in range(n):
            start = time.perf_counter()
            model(x, training=False)
            out.append(time.perf_counter() - start)
        return out

    model(x, training=False)  # warm-up
    times = forwards(args.repeat)
    forward = sorted(times)[len(times) // 2]
    rules = Selection((), ()).rules(kind="dynamic")
    keras_rules = [r for r in rules if "keras" in r.frameworks]
    print(f"keras.applications.ResNet50(weights=None), batch {args.batch}, {args.size}x{args.size}, keras {keras.__version__} ({keras.config.backend()} backend), {os.cpu_count()} CPUs")
    print(f"weights: {weight_bytes / 2**20:.1f} MiB; {len(keras_rules)} of {len(rules)} dynamic rules probe Keras")
    print(f"one eager forward model(x, training=False) (median of {args.repeat}): {forward:.3f}s; load average {_load()}")

    def pipe():
        return Pipeline(model, preprocess=preprocess, sample=sample, labels=labels, num_classes=1000, pretrained="keras.applications.resnet50")

    # per-pass and per-probe breakdown: time the shared passes, then each probe via `progress`
    breakdown = Breakdown(KerasContext(pipe()), rules)

    # the full audit, end to end (fresh context: passes included), watching for traces
    before_functions = {a: getattr(model, a, None) for a in ("train_function", "predict_function", "test_function")}
    with _TraceCounter(keras) as traces:
        start = time.perf_counter()
        full_report = audit_mod.audit(pipe())
        full = time.perf_counter() - start
    left = [a for a, v in before_functions.items() if getattr(model, a, None) is not v or getattr(model, a, None) is not None]

    compile_with(keras.optimizers.Adam(learning_rate=1e-5))
    start = time.perf_counter()
    clean_report = audit_mod.audit(pipe())
    clean = time.perf_counter() - start

    after = forwards(args.repeat)
    pooled = sorted(times + after)[len(times + after) // 2]
    print(f"one eager forward again after the audits: median {sorted(after)[len(after) // 2]:.3f}s (all {len(times + after)}: median {pooled:.3f}s; "
          f"a busy machine shows here as a spread: {min(times + after):.2f}-{max(times + after):.2f}s); load average {_load()}")
    forward = pooled
    print(f"full audit(), compiled SGD 1e-3 momentum 0.9: {full:.2f}s = {full / forward:.1f} forward passes (goal <= 8)")
    print(findings_line(full_report))
    print(f"full audit(), compiled Adam 1e-5:            {clean:.2f}s = {clean / forward:.1f} forward passes")
    print(findings_line(clean_report))
    print(f"  traces paid: {sum(traces.calls.values())} ({', '.join(f'{k} x{v}' for k, v in traces.calls.items())}); "
          f"traced functions left on the model: {', '.join(left) if left else 'none'}")
    breakdown.print(forward)

    fwd = _child(CHILD_MEMORY, args.batch, args.size, mode="forward")
    aud = _child(CHILD_MEMORY, args.batch, args.size, mode="audit")
    wb = fwd["weight_bytes"]
    act = fwd["peak"] - fwd["base_rss"]
    extra = aud["peak"] - aud["base_rss"]
    how = "VmHWM reset after building" if fwd["resettable"] and aud["resettable"] else "VmHWM (could not be reset: building's own peak may hide part of it)"
    print(f"memory (peak RSS in fresh subprocesses, {how}, minus RSS after building; weights = {wb / 2**20:.1f} MiB):")
    print(f"  one eager forward (activations): {act / 2**20:8.1f} MiB = {act / wb:4.1f}x weight bytes")
    print(f"  full audit:                      {extra / 2**20:8.1f} MiB = {extra / wb:4.1f}x weight bytes; "
          f"minus the forward's activations: {(extra - act) / wb:4.1f}x (goal <= 3x plus activations)")

    if args.keras_api:
        api = _child(CHILD_KERAS_API, args.batch, args.size)
        print("Keras's own API, for comparison (fresh subprocess; the first call traces a tf.function):")
        for name, (first, second) in api.items():
            print(f"  {name:17s} first {first:6.2f}s = {first / forward:5.1f} fwd, second {second:6.2f}s = {second / forward:5.1f} fwd")


if __name__ == "__main__":
    main()
