"""DET101: the same input gives different outputs in inference."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class NondeterministicInference(DynamicRule):
    """
    ## What it does
    Checks that two inference runs on the same input agree bit for bit, and when they do not, finds whether randomness, non-deterministic kernels, grad mode (PyTorch) or the training flag (Keras) is the cause, and where.

    Checks that inference is a function of the input by comparing the two inference passes
    every audit runs, bit for bit:
    - **PyTorch**: the eval pass (`model.eval()`, `torch.no_grad()`) and the inference pass
      (`model.eval()`, `torch.inference_mode()`). The inference pass runs with the random
      generators (torch on every device, Python's `random`, NumPy's global generator)
      reseeded to a different stream, so randomness shows up at no extra cost.
    - **Keras 3**: `model(x, training=False)` (what `predict()` runs; the audit never calls
      `predict()`, which would trace a `tf.function`) and `model(x)`, run with every seed
      generator of the model (Dropout's, GaussianNoise's, the augmentation layers') moved
      to another state. A draw from Keras's global seed generator
      (`keras.random.normal(shape)` without a `seed`) gives equal outputs in both passes,
      because both start from the same global state, so the generator's state is checked
      too: a random number drawn in an inference call is a finding.

    Only when something differs do two or three more traced passes find the cause:
    - **randomness**: two passes with equal seeds agree, passes with different seeds do not
      (or a layer's seed generator moved). PyTorch: dropout left active in eval
      (`F.dropout(x, p)` without `training=self.training`, an `nn.Dropout` whose mode is
      forced, MC-dropout layers), random augmentation or noise inside `forward`. Keras: a
      Dropout or GaussianNoise called with `training=True` or with a `call()` that ignores
      or defaults the flag to True, a `RandomFlip`/`RandomRotation` inside the served model
      (their `call()` defaults to `training=True`, so `model(x)` augments), `keras.random.*`
      in `call()` without a training check;
    - **non-deterministic operations**: even equal seeds disagree (atomics in CUDA kernels
      such as `index_add_`/`scatter_add_`, non-deterministic cuDNN algorithms, or Python
      state that `forward`/`call()` changes between calls);
    - **grad mode** (PyTorch): only `no_grad` vs `inference_mode` differ (code that branches
      on `torch.is_grad_enabled()` / `torch.is_inference_mode_enabled()`);
    - **training flag** (Keras): `model(x)` and `model(x, training=False)` differ without
      randomness: a layer that runs its training path when no flag is passed, e.g. a
      BatchNormalization on batch statistics because of a `call()` default or a
      `training=True` written into a functional graph (INF102 names where it comes from).

    The culprit is localised by tracing each module's/layer's input and output with a
    position-weighted hash (no activations are kept; PyTorch: forward hooks; Keras: each
    layer's `call` wrapped for the one pass and unwrapped afterwards): the target is the
    first module/layer, in call order, whose output differs for an identical input, or the
    enclosing one (`<model>` for the root) when the difference comes from functional code
    in its own `forward`/`call()` between its children.

    ## Why is this bad?
    A served model that answers the same request differently cannot be tested, cached or
    audited, and its accuracy is lower than measured with dropout off: in training mode
    dropout zeroes a fraction `p` of activations and scales the rest by `1/(1-p)`
    (FRAMEWORK_FACTS §3.3). `torch.nn.functional.dropout` defaults to `training=True`, so a
    functional call written without `training=self.training` ignores `model.eval()`. In
    Keras, `predict()` and `model(x)` resolve the training flag differently, so a model can
    be deterministic in evaluation and random in the serving code that calls it directly.
    Monte-Carlo dropout is a legitimate technique, but then the randomness belongs in an
    explicit sampling method, not in the plain `forward`/`call` every consumer calls.

    ## Example
    ```python
    class Net(nn.Module):
        def forward(self, x):
            x = self.backbone(x).flatten(1)
            x = F.dropout(x, p=0.5)  # training=True by default: active after eval()
            return self.fc(x)
    ```
    Keras:
    ```python
    class FeatureJitter(keras.layers.Layer):
        def call(self, x):  # no seed generator, no training check: every prediction is noisy
            return x + keras.random.normal(keras.ops.shape(x), stddev=0.05)
    ```

    ## Use instead
    ```python
    class Net(nn.Module):
        def forward(self, x):
            x = self.backbone(x).flatten(1)
            x = F.dropout(x, p=0.5, training=self.training)  # or an nn.Dropout module
            return self.fc(x)
    ```
    Keras:
    ```python
    class FeatureJitter(keras.layers.Layer):
        def __init__(self, **kwargs):
            super().__init__(**kwargs)
            self.seed_generator = keras.random.SeedGenerator(1337)

        def call(self, x, training=None):
            if training:
                return x + keras.random.normal(keras.ops.shape(x), stddev=0.05, seed=self.seed_generator)
            return x
    ```
    For non-deterministic kernels: `torch.use_deterministic_algorithms(True)` and
    `torch.backends.cudnn.benchmark = False`; under TensorFlow
    `tf.config.experimental.enable_op_determinism()`.

    ## Thresholds
    Any bit that differs, or (Keras) any seed-generator state an inference call moved.
    Evidence: `max_abs_diff` (largest absolute difference of the outputs), `relative_diff`
    (that divided by the largest absolute output value), `cause`, `equal_seeds_agree`,
    `localised` (how the target was found); Keras adds `call_vs_training_false_equal`,
    `seed_states_moved` and `compared` (which two calls the numbers compare). Cost: no
    extra pass on a model that agrees (the two passes are shared with every probe); two or
    three traced passes, four for the Keras training-flag case, only when a difference was
    found.

    ## References
    - FRAMEWORK_FACTS §3.3: `nn.Dropout` is active iff `self.training`;
      `F.dropout(input, p=0.5, training=True)` defaults to training; Keras `Dropout` drops
      only when `training`, and each such call advances its `SeedGenerator`.
    - FRAMEWORK_FACTS §4: `no_grad()`/`inference_mode()` do not set eval mode; Keras call
      modes (`predict()` passes `training=False`; `model(x)` leaves it to the defaults).
    - Keras: `keras/src/random/seed_generator.py` (`draw_seed(None)` uses the global seed
      generator), `keras/src/layers/preprocessing/image_preprocessing/random_flip.py`.
    - PyTorch docs "Reproducibility" and `torch.use_deterministic_algorithms`; TensorFlow
      `tf.config.experimental.enable_op_determinism`.
    """

    code = "DET101"
    name = "nondeterministic-inference"
    category = "determinism"
    severity = Severity.ERROR
    frameworks = ("torch", "keras")
    message = "the same input gives different outputs in inference (largest difference {max_abs}, {relative} of the output scale): {cause_text}"
    fix = "{fix_hint}"

    def probe(self, ctx):
        from ._inference_probe import (
            EVAL_CALL,
            PLAIN_CALL,
            first_divergence,
            inference_seed,
            max_abs_diff,
            outputs_equal,
            random_draws,
            to_array,
            traced,
        )

        keras = ctx.framework == "keras"
        eval_record, inf_record = ctx.eval_pass(), ctx.inference_pass()
        eval_out, inf_out = to_array(eval_record.output), to_array(inf_record.output)
        if eval_out is None or inf_out is None:
            return []
        draws = random_draws(ctx, eval_record, inf_record)
        if outputs_equal(eval_out, inf_out) and not draws:
            return []  # the inference pass ran with another seed (and grad mode / training flag): nothing varies
        # diagnostic path (only when the two inference runs disagree, or drew random numbers):
        # which of seed, grad mode / training flag or the kernels themselves makes the
        # difference, and where it starts. Keras: model(x), every seed generator (the global
        # one too) set to the same seed.
        seed = inference_seed(ctx)
        same_seed, tracer_a = traced(ctx, "reseeded", seed=seed, training=None, share=keras)
        again, tracer_b = traced(ctx, "reseeded-again", seed=seed, training=None)
        out_a, out_b = to_array(same_seed.output), to_array(again.output)
        same_seed_equal = out_b is not None and outputs_equal(out_a, out_b)
        texts = _TEXTS[ctx.framework]
        mode_differs = False
        user = None
        if same_seed_equal and not keras:
            mode_differs = not outputs_equal(out_a, inf_out)  # torch: A and the inference pass differ only in grad mode
        elif same_seed_equal:
            user, tracer_u = traced(ctx, "user-seed", training=None)
            seeds_matter = not outputs_equal(out_a, to_array(user.output))
            # a random layer can draw the same decision under two seeds (one flip per batch):
            # what it drew counts as much as what changed
            drew = any(c.drew for c in tracer_a.calls) or tracer_a.global_drew
            if not seeds_matter and outputs_equal(eval_out, inf_out):
                return []  # random numbers were drawn but no output depends on them
            mode_differs = not seeds_matter and not drew
        if not same_seed_equal:
            cause = "non-deterministic operations"
            target, how = first_divergence(tracer_a, tracer_b)
            pair = (out_a, out_b)
        elif not mode_differs:
            cause = "randomness"
            if user is None:
                user, tracer_u = traced(ctx, "user-seed")
            target, how = first_divergence(tracer_u, tracer_a)
            if target is None and keras:  # equal under both seeds: where model(x) leaves predict()
                _, tracer_f = traced(ctx, "training-false", seed=seed, training=False)
                target, how = first_divergence(tracer_f, tracer_a)
            pair = (out_a, to_array(user.output) if keras else eval_out)
            if keras and outputs_equal(*pair):
                pair = (inf_out, eval_out)
        elif not keras:
            cause = "grad mode"
            target, how = "<model>", "only torch.no_grad() and torch.inference_mode() passes differ"
            pair = (inf_out, out_a)
        else:
            cause = "training flag"
            _, tracer_f = traced(ctx, "training-false", seed=seed, training=False)
            target, how = first_divergence(tracer_f, tracer_a)
            pair = (inf_out, eval_out)
        cause_text, hint = texts[cause]
        max_abs, relative = max_abs_diff(*pair)
        evidence = {
            "max_abs_diff": _num(max_abs),
            "relative_diff": _num(relative),
            "cause": cause,
            "equal_seeds_agree": same_seed_equal,
        }
        if keras:
            evidence["call_vs_training_false_equal"] = outputs_equal(eval_out, inf_out)
            if draws:
                evidence["seed_states_moved"] = ", ".join(draws[:3]) + (f" (+{len(draws) - 3})" if len(draws) > 3 else "")
            evidence["compared"] = f"{PLAIN_CALL} vs {EVAL_CALL}" if cause == "training flag" else f"{PLAIN_CALL} twice"
        else:
            evidence["no_grad_vs_inference_mode_equal"] = not mode_differs
        evidence["localised"] = how
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


#: what each cause means and how to fix it, per framework (the decision above is shared)
_TEXTS = {
    "torch": {
        "non-deterministic operations": (
            "two passes with equal random seeds disagree: non-deterministic kernels "
            "(CUDA atomics, cuDNN algorithm choice) or Python state changed by forward",
            "Enable torch.use_deterministic_algorithms(True) and set torch.backends.cudnn.benchmark = False; "
            "do not keep Python state that forward changes between calls.",
        ),
        "randomness": (
            "outputs change with the random seed: dropout or random augmentation is active in eval mode "
            "(F.dropout without training=self.training, a Dropout forced into training mode, noise in forward)",
            "Make randomness follow the mode: F.dropout(x, p, training=self.training) or nn.Dropout, and no "
            "random ops in forward when not self.training; put Monte-Carlo sampling in an explicit method.",
        ),
        "grad mode": (
            "the output under torch.inference_mode() differs from the output under torch.no_grad()",
            "Do not branch on torch.is_grad_enabled() / torch.is_inference_mode_enabled() in forward.",
        ),
    },
    "keras": {
        "non-deterministic operations": (
            "two model(x) calls with every seed generator at the same state disagree: non-deterministic "
            "kernels or Python state changed by call()",
            "Enable deterministic kernels (tf.config.experimental.enable_op_determinism() under TensorFlow, "
            "torch.use_deterministic_algorithms(True) under the torch backend); do not keep Python state "
            "that call() changes between calls.",
        ),
        "randomness": (
            "outputs change with the random seed: a random layer runs at inference (Dropout or GaussianNoise "
            "called with training=True or with a call() that ignores the flag, keras.random.* in call() "
            "without a training check)",
            "Pass the flag through (self.dropout(x, training=training)) and draw random numbers only when "
            "training is True; put Monte-Carlo sampling in an explicit method.",
        ),
        "training flag": (
            "model(x) and model(x, training=False) (what predict() runs) give different outputs: a layer "
            "runs its training path when no training flag is passed (a call() default of training=True, "
            "or training=True written into a functional graph, which only model(x) keeps)",
            "Give call() a training=None default and pass the flag through; serve with "
            "model(x, training=False) or predict().",
        ),
    },
}


def _num(value: float) -> float:
    if value != value or value in (float("inf"), float("-inf")):
        return value
    return float(f"{value:.4g}")
