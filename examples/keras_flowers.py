"""Fine-tune InceptionV3 on a five-class flowers dataset (contains deliberate bugs)."""

import tensorflow as tf
from tensorflow import keras
from tensorflow.keras import layers
from tensorflow.keras.applications.vgg16 import preprocess_input

CLASS_NAMES = ["daisy", "dandelion", "roses", "sunflowers", "tulips"]
IMG_SIZE = (299, 299)
LEARNING_RATE = 1e-2


def load_datasets(data_dir):
    train = keras.utils.image_dataset_from_directory(data_dir, image_size=IMG_SIZE, batch_size=32)
    return train.map(lambda x, y: (preprocess_input(x), y))


def build_model():
    base = keras.applications.InceptionV3(weights="imagenet", include_top=False, input_shape=IMG_SIZE + (3,))
    base.trainable = False
    inputs = keras.Input(shape=IMG_SIZE + (3,))
    x = base(inputs)
    x = layers.GlobalAveragePooling2D()(x)
    x = layers.Dropout(0.2)(x)
    outputs = layers.Dense(4, activation="softmax")(x)
    return base, keras.Model(inputs, outputs)


def main(data_dir):
    train = load_datasets(data_dir)
    base, model = build_model()
    model.compile(optimizer=keras.optimizers.Adam(), loss="sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(train, epochs=5)
    base.trainable = True
    model.compile(optimizer=keras.optimizers.Adam(learning_rate=LEARNING_RATE), loss="sparse_categorical_crossentropy")
    model.fit(train, epochs=5)
    model.save("flowers.keras")


if __name__ == "__main__":
    main("flowers/")
