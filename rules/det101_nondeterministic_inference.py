"""DET101: the same input gives different outputs in inference."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class NondeterministicInference(DynamicRule):
    """
    ## What it does
    Checks that two inference runs on the same input agree bit for bit, and when they do not, finds whether randomness, non-deterministic kernels or grad mode is the cause, and where.

    Checks that inference is a function of the input: the eval pass (`model.eval()`,
    `torch.no_grad()`) and the inference pass (`model.eval()`, `torch.inference_mode()`)
    must agree bit for bit. The inference pass runs with the random generators (torch on
    every device, Python's `random`, NumPy's global generator) reseeded to a different
    stream, so randomness shows up at no extra cost. Only when outputs differ do two or
    three more traced passes find the cause:

    - **randomness**: two passes with equal seeds agree, passes with different seeds do not.
      Dropout left active in eval (`F.dropout(x, p)` without `training=self.training`, an
      `nn.Dropout` whose mode is forced, MC-dropout layers), random augmentation or noise
      inside `forward`;
    - **non-deterministic operations**: even equal seeds disagree (atomics in CUDA kernels
      such as `index_add_`/`scatter_add_`, non-deterministic cuDNN algorithms, or Python
      state that `forward` changes between calls);
    - **grad mode**: only `no_grad` vs `inference_mode` differ (code that branches on
      `torch.is_grad_enabled()` / `torch.is_inference_mode_enabled()`).

    The culprit is localised with forward hooks that keep a position-weighted hash of each
    module's input and output (no activations are kept): the target is the first module,
    in call order, whose output differs for an identical input, or the enclosing module
    (`<model>` for the root) when the difference comes from functional code in its own
    `forward` between submodules.

    ## Why is this bad?
    A served model that answers the same request differently cannot be tested, cached or
    audited, and its accuracy is lower than measured with dropout off: in training mode
    dropout zeroes a fraction `p` of activations and scales the rest by `1/(1-p)`
    (FRAMEWORK_FACTS §3.3). `torch.nn.functional.dropout` defaults to `training=True`, so a
    functional call written without `training=self.training` ignores `model.eval()`.
    Monte-Carlo dropout is a legitimate technique, but then the randomness belongs in an
    explicit sampling method, not in the plain `forward` every consumer calls.

    ## Example
    ```python
    class Net(nn.Module):
        def forward(self, x):
            x = self.backbone(x).flatten(1)
            x = F.dropout(x, p=0.5)  # training=True by default: active after eval()
            return self.fc(x)
    ```

    ## Use instead
    ```python
    class Net(nn.Module):
        def forward(self, x):
            x = self.backbone(x).flatten(1)
            x = F.dropout(x, p=0.5, training=self.training)  # or an nn.Dropout module
            return self.fc(x)
    ```
    For non-deterministic kernels: `torch.use_deterministic_algorithms(True)` and
    `torch.backends.cudnn.benchmark = False`.

    ## Thresholds
    Any bit that differs. Evidence: `max_abs_diff` (largest absolute difference of the
    outputs), `relative_diff` (that divided by the largest absolute output value), `cause`,
    `localised` (how the target was found). Cost: one extra forward pass always, two more
    only when a difference was found.

    ## References
    - FRAMEWORK_FACTS §3.3: `nn.Dropout` is active iff `self.training`;
      `F.dropout(input, p=0.5, training=True)` defaults to training.
    - FRAMEWORK_FACTS §4: `no_grad()`/`inference_mode()` do not set eval mode.
    - PyTorch docs "Reproducibility" and `torch.use_deterministic_algorithms`.
    """

    code = "DET101"
    name = "nondeterministic-inference"
    category = "determinism"
    severity = Severity.ERROR
    message = "the same input gives different outputs in inference (largest difference {max_abs}, {relative} of the output scale): {cause_text}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        import torch

        from auditor.dynamic.torch_state import bitwise_equal

        from ._inference_probe import first_divergence, max_abs_diff, traced

        eval_out = ctx.eval_pass().output
        inf_out = ctx.inference_pass().output
        if not isinstance(eval_out, torch.Tensor) or not isinstance(inf_out, torch.Tensor):
            return []
        if bitwise_equal(eval_out, inf_out):
            return []  # the inference pass ran with another seed and another grad mode: nothing varies
        # diagnostic path (only when the two inference runs disagree): which of seed, grad
        # mode or the kernels themselves makes the difference, and where it starts
        from auditor.dynamic.torch_context import INFERENCE_SEED

        seed = INFERENCE_SEED
        same_seed, tracer_a = traced(ctx, "reseeded", seed=seed)
        again, tracer_b = traced(ctx, "reseeded-again", seed=seed)
        out_a = same_seed.output
        same_seed_equal = isinstance(again.output, torch.Tensor) and bitwise_equal(out_a, again.output)
        grad_mode_differs = same_seed_equal and not bitwise_equal(out_a, inf_out)
        if not same_seed_equal:
            cause = "non-deterministic operations"
            target, how = first_divergence(tracer_a, tracer_b)
            pair = (out_a, again.output)
            cause_text = ("two passes with equal random seeds disagree: non-deterministic kernels "
                          "(CUDA atomics, cuDNN algorithm choice) or Python state changed by forward")
            hint = ("Enable torch.use_deterministic_algorithms(True) and set torch.backends.cudnn.benchmark = False; "
                    "do not keep Python state that forward changes between calls.")
        elif not grad_mode_differs:
            cause = "randomness"
            user, tracer_u = traced(ctx, "user-seed")
            target, how = first_divergence(tracer_u, tracer_a)
            pair = (out_a, eval_out)
            cause_text = ("outputs change with the random seed: dropout or random augmentation is active in eval mode "
                          "(F.dropout without training=self.training, a Dropout forced into training mode, noise in forward)")
            hint = ("Make randomness follow the mode: F.dropout(x, p, training=self.training) or nn.Dropout, and no "
                    "random ops in forward when not self.training; put Monte-Carlo sampling in an explicit method.")
        else:
            cause = "grad mode"
            target, how = "<model>", "only torch.no_grad() and torch.inference_mode() passes differ"
            pair = (inf_out, out_a)
            cause_text = "the output under torch.inference_mode() differs from the output under torch.no_grad()"
            hint = "Do not branch on torch.is_grad_enabled() / torch.is_inference_mode_enabled() in forward."
        max_abs, relative = max_abs_diff(*pair)
        evidence = {
            "max_abs_diff": _num(max_abs),
            "relative_diff": _num(relative),
            "cause": cause,
            "equal_seeds_agree": same_seed_equal,
            "no_grad_vs_inference_mode_equal": not grad_mode_differs,
            "localised": how,
        }
        return [
            self.finding(
                ctx,
                target or "<model>",
                evidence=evidence,
                max_abs=_num(max_abs),
                relative=f"{relative:.2%}" if relative == relative and relative != float("inf") else str(relative),
                cause_text=cause_text,
                fix_hint=hint,
            )
        ]


def _num(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.4g}")
