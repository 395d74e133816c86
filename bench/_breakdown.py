"""Where a dynamic audit's time goes, for both benches (bench_dynamic, bench_keras): the
shared passes timed one by one on a fresh context, then every probe timed through the
engine's own progress lines, printed in forward-pass units."""

from __future__ import annotations

import re
import time
from typing import Any


class Breakdown:
    def __init__(self, ctx: Any, rules: list) -> None:
        from auditor.dynamic import audit as audit_mod

        self.passes: dict[str, float] = {}
        for name in ("eval_pass", "inference_pass", "train_pass"):
            start = time.perf_counter()
            getattr(ctx, name)()
            self.passes[name] = time.perf_counter() - start
        self.probes: list[tuple[str, float]] = []

        def progress(line: str) -> None:
            m = re.match(r"\s+(\w+) .*: ([0-9.]+)s$", line)
            if m:
                self.probes.append((m.group(1), float(m.group(2))))

        start = time.perf_counter()
        self.report = audit_mod.run_probes(ctx, rules, progress=progress)
        self.probe_total = time.perf_counter() - start

    def print(self, forward: float) -> None:
        print("  shared passes (memoised, paid once):")
        for name, t in self.passes.items():
            print(f"    {name:16s} {t:7.2f}s  {t / forward:5.1f} fwd")
        print("  probes after the shared passes:")
        for code, t in sorted(self.probes, key=lambda p: -p[1]):
            print(f"    {code:16s} {t:7.2f}s  {t / forward:5.1f} fwd")
        print(f"    {'all probes':16s} {self.probe_total:7.2f}s  {self.probe_total / forward:5.1f} fwd")


def findings_line(report: Any) -> str:
    return "  findings: " + (", ".join(f"{f.rule} {f.target}" for f in report.findings) or "none")
