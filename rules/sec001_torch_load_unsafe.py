"""SEC001: `torch.load` that may unpickle arbitrary code."""

from __future__ import annotations

import ast

from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule


class TorchLoadUnsafe(StaticRule):
    """
    ## What it does
    Flags `torch.load` called with `weights_only=False`, or without `weights_only` at all.

    ## Why is this bad?
    `torch.load` unpickles. With `weights_only=False` a checkpoint can run any code on the
    machine that loads it, which is the usual way a downloaded "pretrained model" attacks its
    user. PyTorch made `weights_only=True` the default only in 2.6; on older versions (and
    wherever `TORCH_FORCE_NO_WEIGHTS_ONLY_LOAD=1` is set) a call without the argument is just as
    unsafe, so say it explicitly. `weights_only=False` is an error; leaving it out is a
    warning.

    ## Example
    ```python
    import torch

    state = torch.load("checkpoint.pth", weights_only=False)
    ```

    ## Use instead
    ```python
    import torch

    state = torch.load("checkpoint.pth", map_location="cpu", weights_only=True)
    ```

    ## References
    - `torch/serialization.py`: the 2.6 default change and `add_safe_globals`.
    - CVE-2025-32434: `weights_only=True` bypass in torch <= 2.5.1.
    """

    code = "SEC001"
    name = "torch-load-unsafe"
    category = "security"
    severity = Severity.ERROR
    requires = frozenset({"load"})
    message = "{call}({detail}): {why}"
    fix = "Pass weights_only=True (allow-list extra classes with torch.serialization.add_safe_globals); load only checkpoints you trust otherwise."

    def check(self, ctx):
        for call in ctx.calls_to("torch.load"):
            node = kwarg(call, "weights_only")
            if node is None:
                if any(kw.arg is None for kw in call.keywords):
                    continue  # **kwargs may carry weights_only
                yield self.finding(
                    ctx,
                    call,
                    severity=Severity.WARNING,
                    call="torch.load",
                    detail="without weights_only",
                    why="safe by default only since torch 2.6; on older torch it unpickles arbitrary code",
                )
                continue
            value = ctx.value(node)
            if value is False or (isinstance(node, ast.Constant) and node.value is False):
                yield self.finding(
                    ctx,
                    call,
                    call="torch.load",
                    detail="weights_only=False",
                    why="unpickles arbitrary code: a malicious checkpoint runs on this machine",
                )
