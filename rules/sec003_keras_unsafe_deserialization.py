"""SEC003: Keras model loading with safe mode switched off."""

from __future__ import annotations

import ast

from auditor.analysis.context import kwarg
from auditor.analysis.names import last
from auditor.finding import Severity
from auditor.rule import StaticRule

_BYPASS = "safe_mode bypasses exist below Keras 3.13.2 (CVE-2025-1550, CVE-2026-1462), so upgrade before loading untrusted files"


class KerasUnsafeDeserialization(StaticRule):
    """
    ## What it does
    Flags Keras model loading with `safe_mode=False` and calls to `keras.config.enable_unsafe_deserialization()`.

    Covers `keras.saving.load_model`, `keras.models.load_model` and `tf.keras.models.load_model`
    under every import alias, with the flag given literally, through a constant, or in a
    `**kwargs` dict; and `enable_unsafe_deserialization` from `keras.config` or `keras.utils`.

    ## Why is this bad?
    A `.keras` file is a zip with a `config.json`. With `safe_mode=True` (the default) Keras
    refuses to rebuild a `Lambda` layer from its serialized Python bytecode. `safe_mode=False`, or
    `enable_unsafe_deserialization()`, which turns safe mode off for every later load in the
    process, lets that code run while the model loads, so whoever wrote the file runs code on
    your machine. Safe mode is no guarantee on older Keras either: CVE-2025-1550 (fixed in
    3.9.0) let `config.json` name arbitrary functions, and CVE-2026-1462 (fixed in 3.13.2) let a
    `TFSMLayer` pull in an external SavedModel.

    ## Example
    ```python
    import keras

    model = keras.saving.load_model("downloaded_classifier.keras", safe_mode=False)
    ```

    ## Use instead
    ```python
    import keras


    @keras.saving.register_keras_serializable(package="my_layers")
    class Scale(keras.layers.Layer):
        def call(self, x):
            return x * 2.0


    model = keras.saving.load_model("downloaded_classifier.keras", custom_objects={"Scale": Scale})
    ```

    ## References
    - FRAMEWORK_FACTS 6.2: [K-saveapi] `keras/src/saving/saving_api.py` (`load_model(...,
      safe_mode=True)`), [K-serlib] `keras/src/saving/serialization_lib.py`
      (`enable_unsafe_deserialization`), [K-lambda] `keras/src/layers/core/lambda_layer.py`.
    - [SEC-*] CVE-2025-1550 (GHSA-48g7-3x6r-xfhp), CVE-2026-1462.
    """

    code = "SEC003"
    name = "keras-unsafe-deserialization"
    category = "security"
    severity = Severity.ERROR
    requires = frozenset({"safe_mode", "unsafe_deserialization"})
    message = "{call}: {why}; {bypass}"
    fix = (
        "Keep safe_mode=True (the default): register your own layers with @keras.saving.register_keras_serializable "
        "and pass custom_objects instead of Lambda layers; load untrusted files only on Keras >= 3.13.2."
    )

    def check(self, ctx):
        for call in ctx.calls:
            name = ctx.call_name(call) or ""
            if not name.startswith("keras."):
                continue
            fn = last(name)
            if fn == "enable_unsafe_deserialization":
                yield self.finding(
                    ctx,
                    call,
                    call=f"{name}()",
                    why="turns Keras safe mode off for every later load in this process, so a Lambda layer's "
                    "serialized Python code in any loaded model runs on load",
                    bypass=_BYPASS,
                    evidence={"call": name},
                )
            elif fn == "load_model" and _safe_mode_off(ctx, call):
                yield self.finding(
                    ctx,
                    call,
                    call=f"{name}(..., safe_mode=False)",
                    why="a Lambda layer's serialized Python code (or any function config.json names) runs while the model loads",
                    bypass=_BYPASS,
                    evidence={"call": name, "safe_mode": False},
                )


def _safe_mode_off(ctx, call: ast.Call) -> bool:
    node = kwarg(call, "safe_mode", 3)
    if node is not None:
        return ctx.value(node) is False
    for kw in call.keywords:
        if kw.arg is None:
            options = ctx.value(kw.value)
            if isinstance(options, dict) and "safe_mode" in options:
                item = options["safe_mode"]
                value = ctx.value(item) if isinstance(item, ast.AST) else item
                return value is False
    return False
