"""PRE002: image inputs normalised twice (or normalised in front of built-in preprocessing)."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import StaticRule

from ._keras_preprocessing import (
    MODES,
    analysis,
    double_normalisations,
    scaling_findings,
)


class DoubleNormalization(StaticRule):
    """
    ## What it does
    Flags Keras image inputs that are normalised twice, or normalised in front of a model whose preprocessing is built in.

    Two situations:

    - **Normalisation in front of built-in preprocessing.** `EfficientNetB0`-`B7` always, and
      `EfficientNetV2*`, `ConvNeXt*` and `MobileNetV3*` unless built with
      `include_preprocessing=False`, rescale and normalise inside the model and expect raw
      0-255 pixels. A caffe/tf/torch-mode `preprocess_input`, a `Rescaling` or
      `Normalization` layer, `ImageDataGenerator(rescale=1./255)` or `x / 255.` in a dataset
      function in front of them normalises twice (their own `preprocess_input` is a
      pass-through and is fine).
    - **Two normalisations in one chain.** `ImageDataGenerator(rescale=1./255,
      preprocessing_function=preprocess_input)` (Keras applies `preprocessing_function` first,
      then multiplies by `rescale`), `preprocess_input(x / 255.0)` or a variable scaled by
      1/255 and later passed to `preprocess_input`, `preprocess_input(preprocess_input(x))`,
      or a `Rescaling(1/255)` layer in a model whose input already went through a
      `preprocess_input`.

    The rule follows data through assignments, `tf.cast`/`astype`/`resize`, dataset
    `.map(...)` functions, generator flows, Keras layers and `Sequential` blocks, and reports
    at the second normalisation (or at the scaling in front of the built-in model).

    ## Why is this bad?
    `preprocess_input` expects raw 0-255 pixels. Fed [0, 1] inputs, the `tf` mode produces
    values in [-1, -0.99] instead of [-1, 1], and the `caffe` mode subtracts a mean of about
    120 from values below 1. A model with built-in preprocessing divides by 255 again. The
    network still trains, on almost constant inputs, and accuracy quietly suffers.

    ## Example
    ```python
    from tensorflow.keras.applications import ResNet50V2
    from tensorflow.keras.applications.resnet_v2 import preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    base = ResNet50V2(weights="imagenet", include_top=False, pooling="avg")
    datagen = ImageDataGenerator(rescale=1.0 / 255, preprocessing_function=preprocess_input)
    train = datagen.flow_from_directory("data/train", target_size=(224, 224))
    ```

    ## Use instead
    ```python
    from tensorflow.keras.applications import ResNet50V2
    from tensorflow.keras.applications.resnet_v2 import preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    base = ResNet50V2(weights="imagenet", include_top=False, pooling="avg")
    datagen = ImageDataGenerator(preprocessing_function=preprocess_input)
    train = datagen.flow_from_directory("data/train", target_size=(224, 224))
    ```

    ## Known problems
    Data flow is followed through assignments, module-local functions and Keras layers that
    keep an image an image; a value that passes through an unknown function, or is assigned
    differently in the two branches of an `if`, is not followed.

    ## References
    - FRAMEWORK_FACTS 1.1 [K-imu]: `preprocess_input` expects 0-255 input in every mode.
    - FRAMEWORK_FACTS 1.2 [K-apps] and 1.3 "Double preprocessing": the families with built-in preprocessing.
    - Keras `ImageDataGenerator.standardize`: `preprocessing_function` runs before `rescale`.
    """

    code = "PRE002"
    name = "double-normalization"
    category = "preprocessing"
    severity = Severity.ERROR
    requires = frozenset({"applications"})
    message = "{first} then {second}: {effect}"
    fix = "{advice}"

    def check(self, ctx):
        an = analysis(ctx)
        if not an.pretrained_apps():
            return
        reported = set()
        # two normalisations in one chain
        for chain in an.double_pipelines():
            for step, params in double_normalisations(chain):
                if step.node in reported:
                    continue
                reported.add(step.node)
                yield self.finding(ctx, step.node, **params)
        # a caffe/tf/torch preprocess_input with only built-in-preprocessing models in the file
        untrained = an.untrained_modes()
        for use in an.uses:
            mode = use.fn.mode
            if mode not in MODES or use.node in reported or mode in untrained:
                continue
            if an.connected_apps(use.node) or an.unknown_models() or an.foreign_fed(use.node):
                continue  # traced to its model (judged below), or possibly meant for another model
            if not an.apps or any(app.expected != "builtin" for app in an.apps):
                continue
            if not any(app.info.pretrained is True for app in an.apps):
                continue
            archs = []
            for app in an.apps:
                if app.arch not in archs:
                    archs.append(app.arch)
            arch = " and ".join(archs)
            reported.add(use.node)
            yield self.finding(
                ctx,
                use.node,
                first=f"preprocess_input ({mode}) from {use.fn.source}",
                second=f"{arch}'s built-in preprocessing",
                effect=f"{arch} {'expect' if len(archs) > 1 else 'expects'} raw 0-255 pixels and normalise{'' if len(archs) > 1 else 's'} them itself, so inputs are normalised twice",
                advice=f"Drop preprocess_input and feed raw 0-255 pixels to {arch}, whose preprocessing is built in "
                f"(keras.applications.{an.apps[0].info.family}.preprocess_input is a pass-through).",
            )
        # scaling or normalisation in front of built-in preprocessing
        for node, (rule, params) in scaling_findings(an).items():
            if rule != "PRE002" or node in reported:
                continue
            reported.add(node)
            yield self.finding(ctx, node, **params)
