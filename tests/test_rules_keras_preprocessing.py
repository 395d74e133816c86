"""Focused cases for the Keras preprocessing rules (PRE001, PRE002, PRE005): how
`preprocess_input` is resolved back to its module, how scaling is followed to the model it
feeds, and where the rules must stay silent."""

from __future__ import annotations

import textwrap

import pytest

from auditor.analysis.source import SourceUnit
from auditor.engine import check_unit

CODES = ["PRE001", "PRE002", "PRE005"]


def run(src: str) -> list[tuple[int, str]]:
    result = check_unit(SourceUnit("case.py", textwrap.dedent(src)), CODES)
    assert not [f for f in result.findings if f.rule.startswith("USE")], result.findings
    return [(f.line, f.rule) for f in result.findings]


def messages(src: str) -> list[str]:
    return [f.message for f in check_unit(SourceUnit("case.py", textwrap.dedent(src)), CODES).findings]


# ----------------------------------------------------------------------------- PRE001
@pytest.mark.parametrize(
    "imports, use",
    [
        ("from tensorflow.keras.applications.vgg16 import preprocess_input", "preprocess_input(x)"),
        ("from keras.applications import vgg16", "vgg16.preprocess_input(x)"),
        ("import tensorflow.keras.applications.vgg19 as v", "v.preprocess_input(x)"),
        ("import tensorflow as tf", "tf.keras.applications.resnet50.preprocess_input(x)"),
        ("from keras.applications.resnet import preprocess_input as prep", "prep(x)"),
        ("from keras.applications.densenet import *", "preprocess_input(x)"),
        ("from keras.applications import imagenet_utils", "imagenet_utils.preprocess_input(x)"),
        ("from keras.applications import imagenet_utils", 'imagenet_utils.preprocess_input(x, mode="torch")'),
    ],
)
def test_preprocess_input_resolved_through_imports(imports, use):
    src = f"""
    import keras
    {imports}
    base = keras.applications.InceptionV3(weights="imagenet", include_top=False)
    y = {use}
    """
    assert run(src) == [(5, "PRE001")]


def test_alias_assigned_then_called():
    src = """
    from tensorflow import keras
    base = keras.applications.Xception(weights="imagenet")
    pre = keras.applications.resnet50.preprocess_input
    y = pre(x)
    """
    assert run(src) == [(5, "PRE001")]


def test_matching_mode_from_another_family_is_fine():
    # MobileNetV2 and Xception both use the tf mode
    src = """
    from tensorflow import keras
    base = keras.applications.Xception(weights="imagenet")
    y = keras.applications.mobilenet_v2.preprocess_input(x)
    z = keras.applications.imagenet_utils.preprocess_input(x, mode="tf")
    """
    assert run(src) == []


@pytest.mark.parametrize(
    "ctor, module, bad",
    [
        ("ResNet50", "resnet50", False),
        ("ResNet101", "resnet", False),
        ("ResNet50V2", "resnet", True),
        ("ResNet152V2", "resnet_v2", False),
        ("DenseNet121", "densenet", False),
        ("DenseNet201", "vgg16", True),
        ("NASNetMobile", "inception_v3", False),
        ("InceptionResNetV2", "vgg19", True),
        ("MobileNet", "xception", False),
    ],
)
def test_families(ctor, module, bad):
    src = f"""
    from tensorflow import keras
    base = keras.applications.{ctor}(weights="imagenet")
    y = keras.applications.{module}.preprocess_input(x)
    """
    assert run(src) == ([(4, "PRE001")] if bad else [])


def test_message_names_both_sides():
    src = """
    from tensorflow.keras.applications import InceptionV3
    from tensorflow.keras.applications.vgg16 import preprocess_input
    base = InceptionV3(weights="imagenet", include_top=False)
    y = preprocess_input(x)
    """
    assert messages(src) == [
        "preprocess_input from keras.applications.vgg16 (caffe: BGR, mean-subtracted) used with InceptionV3 (expects tf: scaled to [-1, 1])"
    ]


def test_parameter_filled_by_every_call_site():
    src = """
    from tensorflow.keras.applications import NASNetMobile, densenet, vgg16
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    def make_gen(preprocess):
        return ImageDataGenerator(preprocessing_function=preprocess)

    gen = make_gen(densenet.preprocess_input)
    base = NASNetMobile(weights="imagenet", include_top=False)
    """
    assert run(src) == [(6, "PRE001")]
    # two call sites that disagree: the parameter is unknown, each argument is judged
    two = src.replace("gen = make_gen(densenet.preprocess_input)", "gen = make_gen(densenet.preprocess_input)\n    other = make_gen(vgg16.preprocess_input)")
    assert sorted(run(two)) == [(8, "PRE001"), (9, "PRE001")]


def test_builder_alias_is_a_model():
    src = """
    import keras
    model_builder = keras.applications.xception.Xception
    preprocess_input = keras.applications.vgg16.preprocess_input
    model = model_builder(weights="imagenet")
    y = model.predict(preprocess_input(x))
    """
    assert run(src) == [(6, "PRE001")]


def test_silent_when_any_model_matches_or_expectation_unknown():
    both = """
    from tensorflow import keras
    vgg = keras.applications.VGG16(weights="imagenet")
    inc = keras.applications.InceptionV3(weights="imagenet")
    y = keras.applications.vgg16.preprocess_input(x)
    """
    assert run(both) == []
    unknown = """
    from tensorflow import keras
    base = keras.applications.InceptionV3(weights=WEIGHTS)
    y = keras.applications.vgg16.preprocess_input(x)
    """
    assert run(unknown) == []


def test_silent_without_pretrained_keras_model():
    assert run(
        """
        from tensorflow import keras
        base = keras.applications.InceptionV3(weights=None, classes=3)
        y = keras.applications.vgg16.preprocess_input(x)
        """
    ) == []
    assert run(
        """
        from tensorflow import keras
        y = keras.applications.vgg16.preprocess_input(x)
        """
    ) == []


def test_conditional_imports_are_ambiguous():
    src = """
    from tensorflow import keras
    if ARCH == "vgg":
        from tensorflow.keras.applications.vgg16 import preprocess_input
    else:
        from tensorflow.keras.applications.xception import preprocess_input
    base = keras.applications.Xception(weights="imagenet")
    y = preprocess_input(x)
    """
    assert run(src) == []


def test_preprocess_fed_to_a_loaded_model_is_not_judged():
    src = """
    import tensorflow as tf
    from tensorflow.keras.applications.mobilenet_v2 import preprocess_input
    vgg = tf.keras.applications.VGG16(weights="imagenet", include_top=False)
    mobile = tf.keras.models.load_model("mobilenet_finetuned.h5")
    p = mobile.predict(preprocess_input(images))
    """
    assert run(src) == []


def test_traced_pipeline_decides_in_a_multi_model_file():
    # the generator with vgg16's preprocessing only feeds the InceptionV3 model
    src = """
    from tensorflow import keras
    from tensorflow.keras.applications import vgg16
    from tensorflow.keras.preprocessing.image import ImageDataGenerator

    vgg = keras.applications.VGG16(weights="imagenet", include_top=False, pooling="avg")
    inception = keras.applications.InceptionV3(weights="imagenet", include_top=False, pooling="avg")
    gen = ImageDataGenerator(preprocessing_function=vgg16.preprocess_input)
    flow = gen.flow_from_directory("data", target_size=(299, 299))
    inception.predict(flow)
    """
    assert run(src) == [(8, "PRE001")]


def test_include_preprocessing_false():
    src = """
    import keras
    m = keras.applications.MobileNetV3Large(weights="imagenet", include_preprocessing=False)
    a = keras.applications.mobilenet_v2.preprocess_input(x)
    b = keras.applications.vgg16.preprocess_input(x)
    """
    assert run(src) == [(5, "PRE001")]
    uncertain = """
    import keras
    m = keras.applications.EfficientNetV2B0(weights="imagenet", include_preprocessing=False)
    b = keras.applications.vgg16.preprocess_input(x)
    """
    assert run(uncertain) == []


# ----------------------------------------------------------------------------- PRE002
def test_generator_applies_preprocessing_function_before_rescale():
    src = """
    from tensorflow.keras.applications.resnet_v2 import ResNet50V2, preprocess_input
    from tensorflow.keras.preprocessing.image import ImageDataGenerator
    base = ResNet50V2(weights="imagenet")
    gen = ImageDataGenerator(rescale=1.0 / 255, preprocessing_function=preprocess_input)
    """
    assert run(src) == [(5, "PRE002")]
    (msg,) = messages(src)
    assert "then rescale=1.0 / 255" in msg and "[-0.00392, 0.00392] instead of [-1, 1]" in msg


def test_scaled_value_then_preprocess_input():
    src = """
    import numpy as np
    from tensorflow.keras.applications.inception_v3 import InceptionV3, preprocess_input
    model = InceptionV3(weights="imagenet")
    x = np.asarray(img, dtype="float32")
    x = x / 255.0
    x = np.expand_dims(x, 0)
    y = model.predict(preprocess_input(x))
    """
    assert run(src) == [(8, "PRE002")]
    assert "maps inputs to [-1, -0.992] instead of [-1, 1]" in messages(src)[0]


def test_scaling_undone_before_preprocess_input_is_fine():
    src = """
    from tensorflow.keras.applications.inception_v3 import InceptionV3, preprocess_input
    model = InceptionV3(weights="imagenet")
    x = images / 255.0
    y = model.predict(preprocess_input(x * 255.0))
    """
    assert run(src) == []


def test_preprocess_input_twice_and_rescaling_after_it():
    src = """
    import keras
    from keras import layers
    from keras.applications.xception import Xception, preprocess_input
    base = Xception(weights="imagenet", include_top=False)
    inputs = keras.Input((299, 299, 3))
    x = preprocess_input(inputs)
    x = layers.Rescaling(1.0 / 255)(x)
    x = base(x, training=False)
    y = preprocess_input(preprocess_input(images))
    """
    assert run(src) == [(8, "PRE002"), (10, "PRE002")]


def test_pass_through_preprocess_input_before_builtin_model_is_fine():
    src = """
    import keras
    base = keras.applications.EfficientNetB3(weights="imagenet", include_top=False)
    x = keras.applications.efficientnet.preprocess_input(images)
    y = base.predict(x)
    """
    assert run(src) == []


def test_normalising_preprocess_input_before_builtin_model():
    src = """
    import keras
    base = keras.applications.ConvNeXtSmall(weights="imagenet", include_top=False)
    y = base.predict(keras.applications.resnet_v2.preprocess_input(images))
    """
    assert run(src) == [(4, "PRE002")]


def test_rescaling_in_front_of_efficientnet():
    src = """
    import keras
    from keras import layers
    inputs = keras.Input((224, 224, 3))
    x = layers.Rescaling(1.0 / 255)(inputs)
    base = keras.applications.EfficientNetB0(weights="imagenet", include_top=False, input_tensor=x)
    """
    assert run(src) == [(5, "PRE002")]
    # without its built-in preprocessing EfficientNetV2S expects [-1, 1]: a scaling question now
    off = src.replace("include_top=False, input_tensor=x", "include_top=False, input_tensor=x, include_preprocessing=False")
    off = off.replace("EfficientNetB0", "EfficientNetV2S")
    assert run(off) == [(5, "PRE005")]
    assert run(off.replace("Rescaling(1.0 / 255)", "Rescaling(1.0 / 127.5, offset=-1)")) == []


# ----------------------------------------------------------------------------- PRE005
def test_rescale_generator_into_vgg16():
    src = """
    from tensorflow.keras.applications import VGG16
    from tensorflow.keras.preprocessing.image import ImageDataGenerator
    base = VGG16(weights="imagenet", include_top=False)
    gen = ImageDataGenerator(rescale=1.0 / 255).flow_from_directory("d", target_size=(224, 224))
    base.predict(gen)
    """
    assert run(src) == [(5, "PRE005")]
    assert messages(src) == ["inputs scaled to [0, 1] by rescale=1.0 / 255 fed to VGG16 (expects caffe: BGR, mean-subtracted 0-255)"]


@pytest.mark.parametrize(
    "scaling, ctor, bad",
    [
        ("x / 255.0", "VGG16", True),
        ("x / 255.0", "InceptionV3", True),
        ("x / 255.0", "DenseNet121", True),
        ("x / 127.5 - 1", "InceptionV3", False),
        ("x / 127.5 - 1", "ResNet50", True),
        ("(x - 127.5) / 127.5", "DenseNet169", True),
        ("(x / 255.0 - 0.5) * 2.0", "MobileNetV2", False),
        ("x * 2.0", "VGG16", False),
    ],
)
def test_ranges(scaling, ctor, bad):
    src = f"""
    import tensorflow as tf
    ds = tf.keras.utils.image_dataset_from_directory("d").map(lambda x, y: ({scaling}, y))
    base = tf.keras.applications.{ctor}(weights="imagenet", include_top=False, pooling="avg")
    model = tf.keras.Sequential([base, tf.keras.layers.Dense(3)])
    model.fit(ds)
    """
    assert run(src) == ([(3, "PRE005")] if bad else [])


def test_mean_std_after_scaling_is_a_full_normalisation():
    src = """
    import numpy as np
    import tensorflow as tf
    MEAN = np.array([0.485, 0.456, 0.406])
    STD = np.array([0.229, 0.224, 0.225])
    def prep(img, label):
        img = tf.cast(img, tf.float32) / 255.0
        return (img - MEAN) / STD, label
    ds = tf.keras.utils.image_dataset_from_directory("d").map(prep)
    base = tf.keras.applications.DenseNet121(weights="imagenet", include_top=False, pooling="avg")
    tf.keras.Sequential([base, tf.keras.layers.Dense(3)]).fit(ds)
    """
    assert run(src) == []


def test_scaled_data_for_a_model_from_scratch_is_not_judged():
    src = """
    import tensorflow as tf
    x_train = x_train.astype("float32") / 255.0
    cnn = tf.keras.Sequential([tf.keras.layers.Conv2D(8, 3), tf.keras.layers.Flatten(), tf.keras.layers.Dense(10)])
    cnn.fit(x_train, y_train)
    base = tf.keras.applications.ResNet50(weights="imagenet", include_top=False)
    """
    assert run(src) == []


def test_features_of_another_model_are_not_images():
    src = """
    import tensorflow as tf
    from tensorflow import keras
    from tensorflow.keras import layers
    inp = keras.Input((64, 64, 3))
    gen = keras.Model(inp, layers.Conv2D(3, 3, padding="same")(inp))
    vgg = keras.applications.VGG19(include_top=False, weights="imagenet")
    lr = images / 255.0
    features = vgg(gen(lr))
    """
    assert run(src) == []


def test_no_scaling_rule_when_preprocess_input_is_used():
    src = """
    import tensorflow as tf
    from tensorflow.keras.applications.vgg16 import preprocess_input
    def prep(image, mask):
        return preprocess_input(tf.cast(image, tf.float32)), tf.cast(mask, tf.float32) / 255.0
    ds = ds.map(prep)
    base = tf.keras.applications.VGG16(weights="imagenet", include_top=False)
    """
    assert run(src) == []


# ----------------------------------------------------------------------------- branches
def test_assignment_in_the_other_branch_is_not_in_force():
    src = """
    from tensorflow.keras.applications.vgg16 import VGG16, preprocess_input
    model = VGG16(weights="imagenet")
    if CUSTOM:
        img = img / 255.0
    else:
        img = preprocess_input(img)
    """
    assert run(src) == []


def test_branches_that_both_assign_are_ambiguous_unless_the_call_decides():
    src = """
    import tensorflow as tf

    def read(path, mask=False):
        image = tf.io.decode_png(tf.io.read_file(path), channels=3)
        if mask:
            image = tf.image.resize(image, [128, 128])
        else:
            image = tf.image.resize(image, [128, 128]) / 127.5 - 1
        return image

    def load(image_path, mask_path):
        return read(image_path), read(mask_path, mask=True)

    ds = tf.data.Dataset.from_tensor_slices((images, masks)).map(load).batch(4)
    base = tf.keras.applications.ResNet50(weights="imagenet", include_top=False, pooling="avg")
    model = tf.keras.Sequential([base, tf.keras.layers.Dense(2)])
    model.fit(ds)
    """
    assert run(src) == [(9, "PRE005")]
    # the image now comes through the branch that leaves it alone
    assert run(src.replace("return read(image_path), read(mask_path, mask=True)", "return read(image_path, mask=True), read(mask_path)")) == []
