"""PRE001: `preprocess_input` of one Keras application family used with another family."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import StaticRule

from ._keras_preprocessing import DOES, EXPECTS, MODES, analysis


class PreprocessInputMismatch(StaticRule):
    """
    ## What it does
    Flags a Keras `preprocess_input` whose mode (caffe, tf or torch) differs from what the pretrained Keras application it feeds expects.

    Each `keras.applications` module ships the `preprocess_input` its ImageNet weights were
    trained with, in one of three modes: `caffe` (RGB to BGR, subtract the ImageNet channel
    means, stay in 0-255: VGG16/19, ResNet50/101/152), `tf` (`x / 127.5 - 1`, i.e. [-1, 1]:
    ResNet*V2, InceptionV3, InceptionResNetV2, Xception, MobileNet/V2, NASNet) and `torch`
    (`x / 255`, then ImageNet mean/std: DenseNet). The rule resolves the `preprocess_input`
    you use back to its module (through `from ... import preprocess_input as X`, module
    aliases, `tf.keras`/`tensorflow.keras`/`keras`, `pre = resnet50.preprocess_input`,
    `imagenet_utils.preprocess_input(x, mode=...)` and references passed as
    `preprocessing_function=`, to `ds.map(...)` or to `layers.Lambda(...)`) and compares its
    mode with every pretrained application the file builds. It stays silent when any
    application in the file matches (a script comparing several backbones), when the
    expectation is unknown, and for models built with `weights=None`.

    ## Why is this bad?
    Nothing fails: the network receives numbers in the wrong range, or with swapped colour
    channels, and trains or predicts noticeably worse than it should. ResNet50 and
    ResNet50V2 look alike but expect different modes (`caffe` vs `tf`), and DenseNet uses the
    `torch` mode; copying the import from another tutorial is the usual cause.

    ## Example
    ```python
    from tensorflow.keras.applications import InceptionV3
    from tensorflow.keras.applications.vgg16 import preprocess_input

    base = InceptionV3(weights="imagenet", include_top=False)
    features = base.predict(preprocess_input(images))
    ```

    ## Use instead
    ```python
    from tensorflow.keras.applications import InceptionV3
    from tensorflow.keras.applications.inception_v3 import preprocess_input

    base = InceptionV3(weights="imagenet", include_top=False)
    features = base.predict(preprocess_input(images))
    ```

    ## Known problems
    When the `preprocess_input` cannot be traced to a model, every pretrained application in
    the file is considered; a file that also builds untrained, TF-Hub or non-Keras models, or
    feeds the data to a model loaded from disk, is then left alone.

    ## References
    - FRAMEWORK_FACTS 1.1 [K-imu]: the exact caffe/tf/torch operations of `imagenet_utils.preprocess_input`.
    - FRAMEWORK_FACTS 1.2 [K-apps]: the mode of every `keras.applications` family.
    - https://keras.io/api/applications/ (each model's "Note: each Keras Application expects a specific kind of input preprocessing").
    """

    code = "PRE001"
    name = "preprocess-input-mismatch"
    category = "preprocessing"
    severity = Severity.ERROR
    requires = frozenset({"applications"})
    message = "preprocess_input from {source} ({got}) used with {models}"
    fix = "Import preprocess_input from {want_module}."

    def check(self, ctx):
        an = analysis(ctx)
        if not an.pretrained_apps():
            return
        untrained = an.untrained_modes()
        for use in an.uses:
            mode = use.fn.mode
            if mode not in MODES:
                continue
            apps = an.connected_apps(use.node)
            if not apps:
                # not traced to a model: judge against every application in the file, unless
                # a model trained from scratch or one we cannot see may be the one it feeds
                if mode in untrained or an.unknown_models() or an.foreign_fed(use.node):
                    continue
                apps = an.apps
            if any(app.expected is None or app.expected == mode for app in apps):
                continue
            targets = [app for app in apps if app.expected in MODES]
            if not targets or not any(app.info.pretrained is True for app in targets):
                continue
            models, modules = [], []
            for app in targets:
                text = f"{app.arch} (expects {EXPECTS[app.expected]})"
                if text not in models:
                    models.append(text)
                if app.module not in modules:
                    modules.append(app.module)
            yield self.finding(
                ctx,
                use.node,
                source=use.fn.source,
                got=DOES[mode],
                models=" and ".join(models),
                want_module=" or ".join(modules),
                evidence={"preprocess_mode": mode, "expected": sorted({a.expected for a in targets})},
            )
