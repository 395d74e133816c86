"""PRE005: manual pixel scaling that does not match the pretrained Keras application."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import StaticRule

from ._keras_preprocessing import analysis, scaling_findings


class ScalingMismatch(StaticRule):
    """
    ## What it does
    Flags manual pixel scaling (`rescale=1./255`, `Rescaling`, `x / 255.`, `x / 127.5 - 1`) whose range does not match the pretrained Keras application it feeds.

    The rule only looks at files that use no `preprocess_input` (PRE001/PRE002 cover those).

    The scaling is followed to the model it feeds: an `ImageDataGenerator` or `tf.data`
    pipeline passed to `model.fit`/`predict`/`evaluate`, a `Rescaling` layer in front of
    `base(x)`, `input_tensor=` or inside a `Sequential`, a subclassed model's `call`. The
    range it produces is compared with what the application's weights were trained on:
    `caffe` families (VGG16/19, ResNet50/101/152) expect BGR, mean-subtracted 0-255 pixels,
    `tf` families (ResNet*V2, Inception*, Xception, MobileNet/V2, NASNet) expect [-1, 1],
    and DenseNet (`torch`) expects [0, 1] normalised with the ImageNet mean/std. [0, 1] is
    wrong for all three; [-1, 1] is right for `tf` families only. When the scaling cannot be
    connected to a model, the rule only judges it in a plain single-model file (no model
    trained from scratch, no `weights=None` comparison, no other framework's models).

    ## Why is this bad?
    `rescale=1./255` is what most image tutorials do, so it gets copied into transfer
    learning code. The pretrained filters then see inputs whose scale and centring differ
    from those of their training data: the model still trains, but converges slower and to a
    worse result, and a frozen base extracts poor features.

    ## Example
    ```python
    from tensorflow.keras.applications import VGG16
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    base = VGG16(weights="imagenet", include_top=False, input_shape=(224, 224, 3))
    datagen = ImageDataGenerator(rescale=1.0 / 255)
    train = datagen.flow_from_directory("data/train", target_size=(224, 224))
    base.predict(train)
    ```

    ## Use instead
    ```python
    from tensorflow.keras.applications import VGG16
    from tensorflow.keras.applications.vgg16 import preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    base = VGG16(weights="imagenet", include_top=False, input_shape=(224, 224, 3))
    datagen = ImageDataGenerator(preprocessing_function=preprocess_input)
    train = datagen.flow_from_directory("data/train", target_size=(224, 224))
    base.predict(train)
    ```

    ## Known problems
    A mean/std normalisation after the scaling (`(x - mean) / std`, a `Normalization`
    layer, `featurewise_center`) makes the rule stay silent rather than judge it.

    ## References
    - FRAMEWORK_FACTS 1.1 [K-imu] and 1.2 [K-apps]: modes and the ranges they produce.
    - https://keras.io/guides/transfer_learning/ (Xception with `Rescaling(scale=1 / 127.5, offset=-1)`).
    """

    code = "PRE005"
    name = "scaling-mismatch"
    category = "preprocessing"
    severity = Severity.ERROR
    requires = frozenset({"applications"})
    message = "inputs scaled to {range} by {label} fed to {models}"
    fix = "Feed raw 0-255 pixels through preprocess_input from {modules} instead of {label}."

    def check(self, ctx):
        an = analysis(ctx)
        if not an.pretrained_apps() or an.mentions_preprocess_input():
            return
        for node, (rule, params) in scaling_findings(an).items():
            if rule != "PRE005":
                continue
            fix = None
            if params.get("range") == "[0, 1]" and all(w.startswith("tf") for w in _wants(params)):
                fix = (
                    f"Scale to [-1, 1] instead of {params['label']} (Rescaling(1./127.5, offset=-1)), "
                    f"or feed raw 0-255 pixels through preprocess_input from {params['modules']}."
                )
            yield self.finding(ctx, node, fix=fix, **params)


def _wants(params: dict) -> list[str]:
    return [part.split("(expects ", 1)[1] for part in params.get("models", "").split(" and ") if "(expects " in part]
