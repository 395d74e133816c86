"""Framework facts the rules rest on, as data (sources: shared/FRAMEWORK_FACTS.md).

Kept free of framework imports: static rules read these tables, and the dynamic probes will
reuse them (reference preprocessing per family).
"""

from __future__ import annotations

from typing import NamedTuple

# --- Keras applications -------------------------------------------------------------------

#: preprocessing modes of `imagenet_utils.preprocess_input`, plus "builtin" (pass-through:
#: the model normalises raw [0, 255] input itself)
MODE_TEXT = {
    "caffe": "caffe: BGR, mean-subtracted, 0-255",
    "tf": "tf: scaled to [-1, 1]",
    "torch": "torch: scaled to [0, 1], then ImageNet mean/std",
    "builtin": "built-in preprocessing: raw 0-255 input",
}

#: keras.applications module -> (preprocess_input mode, constructors)
KERAS_FAMILIES: dict[str, tuple[str, tuple[str, ...]]] = {
    "vgg16": ("caffe", ("VGG16",)),
    "vgg19": ("caffe", ("VGG19",)),
    "resnet": ("caffe", ("ResNet50", "ResNet101", "ResNet152")),
    "resnet50": ("caffe", ("ResNet50",)),
    "resnet_v2": ("tf", ("ResNet50V2", "ResNet101V2", "ResNet152V2")),
    "inception_v3": ("tf", ("InceptionV3",)),
    "inception_resnet_v2": ("tf", ("InceptionResNetV2",)),
    "xception": ("tf", ("Xception",)),
    "mobilenet": ("tf", ("MobileNet",)),
    "mobilenet_v2": ("tf", ("MobileNetV2",)),
    "mobilenet_v3": ("builtin", ("MobileNetV3Small", "MobileNetV3Large")),
    "densenet": ("torch", ("DenseNet121", "DenseNet169", "DenseNet201")),
    "nasnet": ("tf", ("NASNetMobile", "NASNetLarge")),
    "efficientnet": ("builtin", tuple(f"EfficientNetB{i}" for i in range(8))),
    "efficientnet_v2": (
        "builtin",
        tuple(f"EfficientNetV2B{i}" for i in range(4)) + ("EfficientNetV2S", "EfficientNetV2M", "EfficientNetV2L"),
    ),
    "convnext": ("builtin", tuple(f"ConvNeXt{s}" for s in ("Tiny", "Small", "Base", "Large", "XLarge"))),
    # tf_keras (Keras 2) only; both pass-through with include_preprocessing
    "regnet": ("builtin", ()),
    "resnet_rs": ("builtin", ()),
}

#: constructor -> module (first module that lists it wins: ResNet50 -> "resnet")
KERAS_CONSTRUCTORS: dict[str, str] = {}
for _module, (_mode, _ctors) in KERAS_FAMILIES.items():
    for _ctor in _ctors:
        KERAS_CONSTRUCTORS.setdefault(_ctor, _module)

#: families whose built-in preprocessing can be switched off with include_preprocessing=False,
#: and what they then expect
KERAS_INCLUDE_PREPROCESSING_OFF = {
    "mobilenet_v3": "tf",
    "convnext": "torch",
    "efficientnet_v2": "tf",  # S/M/L: [-1, 1]; B0-B3 differ (see keras_expected_mode)
}

#: Keras application families whose layers include BatchNormalization (all but ConvNeXt, VGG)
KERAS_FAMILIES_WITHOUT_BN = {"vgg16", "vgg19", "convnext"}


def keras_expected_mode(module: str, constructor: str | None, include_preprocessing: bool | None) -> str:
    """What input a Keras application expects, given how it was built."""
    mode = KERAS_FAMILIES[module][0]
    if mode == "builtin" and include_preprocessing is False:
        if module == "efficientnet_v2" and constructor and constructor[-2:-1] == "B":
            return "torch"
        return KERAS_INCLUDE_PREPROCESSING_OFF.get(module, mode)
    return mode


# --- torchvision / timm ---------------------------------------------------------------------

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
INCEPTION_MEAN = (0.5, 0.5, 0.5)
INCEPTION_STD = (0.5, 0.5, 0.5)
CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
DPN_MEAN = (124 / 255, 117 / 255, 104 / 255)
DPN_STD = (1 / (0.0167 * 255),) * 3
KINETICS_MEAN = (0.43216, 0.394666, 0.37645)
KINETICS_STD = (0.22803, 0.22145, 0.216989)

#: named stat sets, for messages and for timm's per-tag configurations
KNOWN_STATS = {
    "ImageNet": (IMAGENET_MEAN, IMAGENET_STD),
    "Inception (0.5)": (INCEPTION_MEAN, INCEPTION_STD),
    "OpenAI CLIP": (CLIP_MEAN, CLIP_STD),
    "DPN": (DPN_MEAN, DPN_STD),
}

#: constants that name stat sets, resolvable by name (timm, transformers)
STAT_CONSTANTS = {
    "IMAGENET_DEFAULT_MEAN": IMAGENET_MEAN,
    "IMAGENET_DEFAULT_STD": IMAGENET_STD,
    "IMAGENET_INCEPTION_MEAN": INCEPTION_MEAN,
    "IMAGENET_INCEPTION_STD": INCEPTION_STD,
    "IMAGENET_STANDARD_MEAN": INCEPTION_MEAN,
    "IMAGENET_STANDARD_STD": INCEPTION_STD,
    "OPENAI_CLIP_MEAN": CLIP_MEAN,
    "OPENAI_CLIP_STD": CLIP_STD,
    "IMAGENET_DPN_MEAN": DPN_MEAN,
    "IMAGENET_DPN_STD": DPN_STD,
}

#: torchvision classification (and segmentation-backbone) builders, by family prefix.
#: value: whether the family uses BatchNorm
TORCHVISION_CLASSIFIERS = {
    "alexnet": False,
    "convnext": False,
    "densenet": True,
    "efficientnet": True,
    "googlenet": True,
    "inception_v3": True,
    "maxvit": True,
    "mnasnet": True,
    "mobilenet": True,
    "regnet": True,
    "resnet": True,
    "resnext": True,
    "wide_resnet": True,
    "shufflenet": True,
    "squeezenet": False,
    "swin": False,
    "vgg": False,  # vgg*_bn have BatchNorm: see torchvision_has_bn
    "vit": False,
}

#: detection builders normalise inside the model (GeneralizedRCNNTransform etc.)
TORCHVISION_DETECTION_PREFIXES = ("fasterrcnn", "maskrcnn", "keypointrcnn", "retinanet", "ssd", "ssdlite", "fcos")
TORCHVISION_SEGMENTATION_PREFIXES = ("deeplabv3", "fcn", "lraspp")
TORCHVISION_VIDEO_PREFIXES = ("r3d", "mc3", "r2plus1d", "s3d", "mvit", "swin3d")


def torchvision_family(builder: str) -> str | None:
    """The classification family of a torchvision builder name (`resnet50` -> `resnet`)."""
    name = builder.lower()
    for prefix in sorted(TORCHVISION_CLASSIFIERS, key=len, reverse=True):
        if name.startswith(prefix):
            return prefix
    return None


def torchvision_kind(builder: str) -> str | None:
    name = builder.lower()
    if name.startswith(TORCHVISION_DETECTION_PREFIXES):
        return "detection"
    if name.startswith(TORCHVISION_SEGMENTATION_PREFIXES):
        return "segmentation"
    if name.startswith(TORCHVISION_VIDEO_PREFIXES):
        return "video"
    if torchvision_family(name):
        return "classification"
    return None


def torchvision_has_bn(builder: str) -> bool:
    name = builder.lower()
    if name.startswith("vgg"):
        return name.endswith("_bn")
    fam = torchvision_family(name)
    if fam is not None:
        return TORCHVISION_CLASSIFIERS[fam]
    return name.startswith(TORCHVISION_DETECTION_PREFIXES + TORCHVISION_SEGMENTATION_PREFIXES + ("r3d", "mc3", "r2plus1d", "s3d"))


def timm_expected_stats(model_name: str) -> tuple[str, tuple, tuple] | None:
    """The stat set a timm architecture's default pretrained tag uses, where that is certain
    enough to lint on; None where it depends on the tag."""
    name = model_name.lower().split(".", 1)[0]
    if name.startswith(("inception_v4", "inception_resnet_v2")):
        return ("Inception (0.5)", INCEPTION_MEAN, INCEPTION_STD)
    if name.startswith(("resnet", "resnext", "densenet", "efficientnet_", "convnext", "regnet", "mobilenetv3", "deit")):
        return ("ImageNet", IMAGENET_MEAN, IMAGENET_STD)
    return None


# --- optimizers -----------------------------------------------------------------------------

#: class-name (lower case) -> threshold family
OPTIMIZER_FAMILIES = {
    "sgd": "sgd",
    "sgdw": "sgd",
    "adam": "adam",
    "adamw": "adam",
    "adamax": "adam",
    "nadam": "adam",
    "radam": "adam",
    "lamb": "adam",
    "lion": "adam",
    "adabelief": "adam",
    "rmsprop": "rmsprop",
    "adagrad": "adagrad",
}

#: framework default learning rates (what an unset LR means)
DEFAULT_LR = {
    "keras": {"sgd": 0.01, "adam": 1e-3, "adamw": 1e-3, "adamax": 1e-3, "nadam": 1e-3, "rmsprop": 1e-3, "adagrad": 1e-3, "lion": 1e-4},
    "torch": {"sgd": 1e-3, "adam": 1e-3, "adamw": 1e-3, "adamax": 2e-3, "nadam": 2e-3, "radam": 1e-3, "rmsprop": 1e-2, "adagrad": 1e-2},
}

#: (warn at >=, error at >=) for LR of unfrozen pretrained weights (FRAMEWORK_FACTS 5.2)
LR_THRESHOLDS = {
    "sgd": (0.1, 1.0),
    "sgd-momentum": (0.01, 0.1),
    "adam": (1e-3, 1e-2),
    "rmsprop": (1e-3, 1e-2),
    "adagrad": (1e-2, 1e-1),
}

#: head-only training (backbone frozen) gets this much more room
HEAD_ONLY_FACTOR = 10.0


class LrThreshold(NamedTuple):
    family: str
    warn: float
    error: float


def lr_threshold(family: str, momentum: float | None, head_only: bool) -> LrThreshold:
    """Thresholds for one optimizer family; SGD scales by (1 - momentum) / 0.1 (step = lr/(1-mu))."""
    if family == "sgd" and momentum:
        warn, err = LR_THRESHOLDS["sgd-momentum"]
        scale = (1.0 - float(momentum)) / 0.1 if momentum < 1 else 1.0
        warn, err = warn * scale, err * scale
        label = f"SGD with momentum {momentum:g}"
    else:
        warn, err = LR_THRESHOLDS[family]
        label = {"sgd": "SGD without momentum", "adam": "Adam-family", "rmsprop": "RMSprop", "adagrad": "Adagrad"}[family]
    if head_only:
        warn, err = warn * HEAD_ONLY_FACTOR, err * HEAD_ONLY_FACTOR
    return LrThreshold(label, warn, err)
