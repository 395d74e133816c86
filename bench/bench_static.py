"""Static-check speed, side by side in one run (figures and ratios, never asserted).

1. Throughput over the installed `keras` package sources: lines per second of
   `auditor check --no-cache` (all cores) beside `flake8` (default rules, all cores) and
   `ruff check --no-cache`.
2. What a pre-commit hook pays: wall time of `auditor check` on one small training script
   beside `flake8` on the same file (process start included, best of N).

Usage:  python bench/bench_static.py [--repeat N] [--target DIR]
Needs flake8 and ruff installed (`pip install flake8 ruff`) and keras for the default target.
"""

from __future__ import annotations

import argparse
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SMALL_SCRIPT = '''\
import tensorflow as tf
from tensorflow import keras
from tensorflow.keras.applications.vgg16 import preprocess_input

NUM_CLASSES = 5
base = keras.applications.InceptionV3(weights="imagenet", include_top=False, input_shape=(299, 299, 3))
base.trainable = False
inputs = keras.Input(shape=(299, 299, 3))
x = preprocess_input(inputs)
x = base(x)
x = keras.layers.GlobalAveragePooling2D()(x)
outputs = keras.layers.Dense(NUM_CLASSES, activation="softmax")(x)
model = keras.Model(inputs, outputs)
model.compile(optimizer=keras.optimizers.Adam(1e-2), loss="sparse_categorical_crossentropy")
'''


def _count_lines(root: Path) -> tuple[int, int]:
    files = lines = 0
    for path in root.rglob("*.py"):
        files += 1
        with open(path, "rb") as fh:
            lines += sum(1 for _ in fh)
    return files, lines


#: measured processes run as users run them: with bytecode caches (an installed flake8 has its
#: .pyc files; a development shell may set PYTHONDONTWRITEBYTECODE, which would make every
#: auditor run recompile its own modules and measure the compiler, not the linter)
ENV = {k: v for k, v in os.environ.items() if k != "PYTHONDONTWRITEBYTECODE"}


def _time(cmd: list[str], repeat: int) -> float:
    """Best wall time of `repeat` runs after one warm-up (best-of is the least noisy
    estimate of cost; the warm-up writes bytecode caches and fills the OS file cache)."""
    subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=ENV)
    times = []
    for _ in range(repeat):
        start = time.perf_counter()
        subprocess.run(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=False, env=ENV)
        times.append(time.perf_counter() - start)
    return min(times)


def _tool(name: str) -> list[str] | None:
    exe = shutil.which(name)
    if exe:
        return [exe]
    return None


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--repeat", type=int, default=3)
    parser.add_argument("--target", default=None, help="folder to check (default: the installed keras package)")
    args = parser.parse_args()

    if args.target:
        target = Path(args.target)
    else:
        import importlib.util

        spec = importlib.util.find_spec("keras")
        if spec is None or not spec.submodule_search_locations:
            sys.exit("keras is not installed: pass --target DIR")
        target = Path(list(spec.submodule_search_locations)[0])
    files, lines = _count_lines(target)
    cores = os.cpu_count() or 1
    print(f"target: {target} ({files} files, {lines} lines), {cores} cores, Python {sys.version.split()[0]}")

    auditor = [sys.executable, "-m", "auditor"]
    flake8 = _tool("flake8")
    ruff = _tool("ruff")
    rows = []
    t_aud = _time(auditor + ["check", "--no-cache", "--fail-on", "never", "-q", str(target)], args.repeat)
    rows.append(("auditor check --no-cache", t_aud))
    t_f8 = t_ruff = None
    if flake8:
        t_f8 = _time(flake8 + ["--jobs", str(cores), "--exit-zero", str(target)], args.repeat)
        rows.append(("flake8 (default rules)", t_f8))
    if ruff:
        t_ruff = _time(ruff + ["check", "--no-cache", "--exit-zero", "--quiet", str(target)], args.repeat)
        rows.append(("ruff check --no-cache", t_ruff))

    print("\n1. throughput over the target (best of %d)" % args.repeat)
    print(f"   {'tool':<28}{'wall s':>9}{'lines/s':>12}{'auditor speed-up':>19}")
    for name, t in rows:
        ratio = t / t_aud
        print(f"   {name:<28}{t:>9.2f}{lines / t:>12,.0f}{ratio:>18.2f}x")

    with tempfile.TemporaryDirectory() as tmp:
        small = Path(tmp) / "train.py"
        small.write_text(SMALL_SCRIPT)
        repeat = max(5, args.repeat * 3)
        t_small = _time(auditor + ["check", "--no-cache", "--fail-on", "never", str(small)], repeat)
        t_small_cached = _time(auditor + ["check", "--fail-on", "never", str(small)], repeat)
        print(f"\n2. one small file ({SMALL_SCRIPT.count(chr(10))} lines), process start included (best of {repeat})")
        print(f"   {'auditor check --no-cache':<28}{t_small * 1000:>9.0f} ms")
        print(f"   {'auditor check (cached)':<28}{t_small_cached * 1000:>9.0f} ms")
        if flake8:
            t_small_f8 = _time(flake8 + ["--exit-zero", str(small)], repeat)
            print(f"   {'flake8':<28}{t_small_f8 * 1000:>9.0f} ms   (auditor is {t_small_f8 / t_small:.2f}x faster)")


if __name__ == "__main__":
    main()
