"""A Keras 3 transfer-learning pipeline with the silent bugs `auditor audit` measures.

Run:  auditor audit examples/keras_pipeline.py:build

The "pretrained" base is a small CNN whose BatchNormalization statistics are estimated in
code on caffe-preprocessed images (what `keras.applications.resnet50` weights expect), so it
behaves like downloaded weights without downloading any. The pipeline then makes the
mistakes our users report most:
- `preprocess_input` imported from the wrong module: mobilenet_v2's ([-1, 1]) for a
  ResNet-50-family base (caffe: BGR, 0-255, mean subtracted);
- the frozen base is called without `training=False`, so its BatchNormalization layers will
  overwrite their statistics the moment the base is unfrozen for fine-tuning;
- the head ends in a softmax while the compiled loss says `from_logits=True`;
- a custom layer without `get_config()`/registration: the saved `.keras` file cannot be
  served.
"""

import keras
import numpy as np
from keras import layers
from keras.applications import mobilenet_v2, resnet50

from auditor import Pipeline
from auditor.dynamic.samples import synthetic_images

NUM_CLASSES = 5
SIZE = 32


class Scale(layers.Layer):
    """A learnable per-feature scale: works in training, but has no get_config() for the
    constructor argument and is not registered, so load_model() cannot rebuild it."""

    def __init__(self, units):
        super().__init__()
        self.scale = self.add_weight(shape=(units,), initializer="ones", name="scale")

    def call(self, x):
        return x * self.scale


def pretrained_base():
    """Random weights, BatchNormalization statistics estimated on caffe-mode input."""
    keras.utils.set_random_seed(0)
    inputs = keras.Input((SIZE, SIZE, 3))
    x = layers.Conv2D(16, 3, padding="same", use_bias=False, name="conv1")(inputs)
    x = layers.BatchNormalization(name="bn1")(x)
    x = layers.ReLU()(x)
    x = layers.Conv2D(32, 3, strides=2, padding="same", use_bias=False, name="conv2")(x)
    x = layers.BatchNormalization(name="bn2")(x)
    x = layers.ReLU()(x)
    x = layers.GlobalAveragePooling2D()(x)
    base = keras.Model(inputs, x, name="base")
    calibration = resnet50.preprocess_input(synthetic_images(32, SIZE, seed=100).astype("float32"))
    for bn in (base.get_layer("bn1"), base.get_layer("bn2")):
        probe = keras.Model(inputs, bn.input)
        activations = keras.ops.convert_to_numpy(probe(calibration))
        bn.moving_mean.assign(activations.mean(axis=(0, 1, 2)))
        bn.moving_variance.assign(activations.var(axis=(0, 1, 2)))
    return base


def build():
    base = pretrained_base()
    base.trainable = False
    inputs = keras.Input((SIZE, SIZE, 3))
    x = base(inputs)  # the guide says base(inputs, training=False)
    x = Scale(32)(x)
    outputs = layers.Dense(NUM_CLASSES, activation="softmax", name="predictions")(x)
    model = keras.Model(inputs, outputs)
    model.compile(optimizer=keras.optimizers.Adam(1e-3), loss=keras.losses.SparseCategoricalCrossentropy(from_logits=True))
    images = synthetic_images(8, SIZE, seed=7)
    return Pipeline(
        model,
        preprocess=mobilenet_v2.preprocess_input,  # should be resnet50.preprocess_input
        sample=images,
        labels=np.arange(8) % NUM_CLASSES,
        num_classes=NUM_CLASSES,
        pretrained="keras.applications.resnet50",
    )
