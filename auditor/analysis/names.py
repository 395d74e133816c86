"""Canonical qualified names, so rules match one spelling of each API.

`tf.keras.applications.resnet50.ResNet50`, `tensorflow.keras.applications.ResNet50` and
`keras.src.applications.resnet.ResNet50` are one thing to a reader; `canonical()` makes them
one string (`keras.applications.resnet50.ResNet50` keeps its module, which rules need).
"""

from __future__ import annotations

from functools import lru_cache

_PREFIXES = (
    ("tensorflow.compat.v1.keras.", "keras."),
    ("tensorflow.compat.v2.keras.", "keras."),
    ("tensorflow.python.keras.", "keras."),
    ("tensorflow.keras.", "keras."),
    ("keras._tf_keras.keras.", "keras."),
    ("tf_keras.", "keras."),
    ("keras.src.", "keras."),
    ("keras.api.", "keras."),
    ("keras.optimizers.legacy.", "keras.optimizers."),
    ("keras.optimizers.experimental.", "keras.optimizers."),
    ("keras.layers.experimental.preprocessing.", "keras.layers."),
    ("keras.layers.preprocessing.", "keras.layers."),
    ("keras.layers.core.", "keras.layers."),
    ("keras.layers.convolutional.", "keras.layers."),
    ("keras.layers.normalization.batch_normalization.", "keras.layers."),
    ("keras.engine.training.", "keras.models."),
    ("keras.engine.sequential.", "keras.models."),
    ("keras.engine.functional.", "keras.models."),
    ("tensorflow.optimizers.", "keras.optimizers."),
    ("tensorflow.losses.", "keras.losses."),
    ("torch.nn.modules.", "torch.nn.modules."),
    ("timm.models.", "timm."),
)

_EXACT = {
    "tensorflow.keras": "keras",
    "tf_keras": "keras",
    "keras.models.Model": "keras.Model",
    "keras.models.Sequential": "keras.Sequential",
    "keras.models.load_model": "keras.saving.load_model",
    "keras.models.save_model": "keras.saving.save_model",
    "keras.utils.enable_unsafe_deserialization": "keras.config.enable_unsafe_deserialization",
    "torch.Tensor.softmax": "torch.softmax",
    "torch.nn.functional.softmax": "torch.softmax",
    "torch.special.softmax": "torch.softmax",
    "tensorflow.nn.softmax": "keras.activations.softmax",
    "keras.ops.softmax": "keras.activations.softmax",
    "keras.backend.softmax": "keras.activations.softmax",
}

#: torchvision sub-packages whose names are not architecture modules
_TV_SUBPACKAGES = {"detection", "segmentation", "video", "quantization", "optical_flow"}


@lru_cache(maxsize=4096)
def canonical(name: str) -> str:
    for old, new in _PREFIXES:
        if name.startswith(old):
            name = new + name[len(old) :]
    if name in _EXACT:
        return _EXACT[name]
    parts = name.split(".")
    # torch.nn.modules.batchnorm.BatchNorm2d -> torch.nn.BatchNorm2d
    if name.startswith("torch.nn.modules.") and len(parts) >= 5:
        return "torch.nn." + parts[-1]
    # torch.optim.adam.Adam -> torch.optim.Adam
    if name.startswith("torch.optim.") and len(parts) == 4 and parts[2] != "lr_scheduler":
        return "torch.optim." + parts[3]
    # torchvision.models.resnet.resnet50 -> torchvision.models.resnet50
    if name.startswith("torchvision.models.") and len(parts) == 4 and parts[2] not in _TV_SUBPACKAGES:
        return "torchvision.models." + parts[3]
    # keras.layers.normalization.BatchNormalization -> keras.layers.BatchNormalization
    if name.startswith("keras.layers.") and len(parts) >= 4 and parts[-1][:1].isupper():
        return "keras.layers." + parts[-1]
    if name.startswith("keras.models.") and parts[-1] in ("Model", "Sequential"):
        return "keras." + parts[-1]
    return name


def last(name: str | None) -> str:
    """The last component of a dotted name ('' for None)."""
    return name.rsplit(".", 1)[-1] if name else ""
