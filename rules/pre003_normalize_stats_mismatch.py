"""PRE003: a Normalize whose mean/std differ from what the pretrained weights expect."""

from __future__ import annotations

from auditor import knowledge
from auditor.analysis.context import kwarg
from auditor.finding import Severity
from auditor.rule import StaticRule

from . import _torch_preprocessing as tp


class NormalizeStatsMismatch(StaticRule):
    """
    ## What it does
    Flags a `Normalize(mean, std)` in front of a pretrained torchvision or timm model whose mean and std differ from the statistics the weights were trained with.

    Covers torchvision `transforms.Normalize` and `transforms.v2.Normalize`, the functional
    `normalize(x, mean, std)`, albumentations `Normalize(mean=, std=, max_pixel_value=)` and
    kornia `Normalize`. Values are resolved through constants, `[0.5] * 3`, `(0.5,)`,
    `np.array([...])` and timm's `IMAGENET_*` / `OPENAI_CLIP_*` constants. The model is the
    pretrained one the pipeline's data reaches (followed through datasets, loaders, loops and
    helper functions), or the only kind of model the file builds.

    Expected statistics: torchvision classification and segmentation weights use ImageNet
    mean `(0.485, 0.456, 0.406)` and std `(0.229, 0.224, 0.225)`; video weights use the
    Kinetics statistics (MViT `(0.45,)*3`/`(0.225,)*3`, Swin3D ImageNet's); timm uses the
    statistics of the architecture's pretrained tag where that is certain, otherwise any of
    the known sets (ImageNet, Inception 0.5, OpenAI CLIP, DPN) is accepted. The rule fires
    when the largest mean difference exceeds 0.05 or a std ratio leaves [0.75, 1.33], so
    dataset statistics close to ImageNet's (CIFAR's) stay silent. It also flags:

    - mean/std on the 0-255 scale after `ToTensor()` / `ToDtype(scale=True)` (pixels are in
      [0, 1] there), or on the [0, 1] scale after `ToDtype(torch.float32)` without
      `scale=True` (pixels are still 0-255), and albumentations 0-255 values with the default
      `max_pixel_value=255`;
    - any `Normalize` in front of a pretrained torchvision detection model, which normalises
      inside (`GeneralizedRCNNTransform`): the images are normalised twice.

    Inverse normalisations for display (negative means) are ignored.

    ## Why is this bad?
    Pretrained weights only work on inputs distributed like the data they were trained on.
    With the wrong statistics every activation of the first layer is shifted and scaled:
    training still runs and the loss still falls, but fine-tuning starts from a damaged
    feature extractor and ends several points below what the weights can give. Nothing
    raises an error, so the mistake survives into production.

    ## Example
    ```python
    import torchvision.transforms as T
    from torchvision import models

    model = models.resnet50(weights=models.ResNet50_Weights.DEFAULT)
    preprocess = T.Compose([
        T.Resize(256),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(mean=[0.5, 0.5, 0.5], std=[0.5, 0.5, 0.5]),
    ])
    ```

    ## Use instead
    ```python
    import torchvision.transforms as T
    from torchvision import models

    weights = models.ResNet50_Weights.DEFAULT
    model = models.resnet50(weights=weights)
    preprocess = T.Compose([
        T.Resize(256),
        T.CenterCrop(224),
        T.ToTensor(),
        T.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    # or simply: preprocess = weights.transforms()
    ```

    ## References
    - FRAMEWORK_FACTS 2.1 (torchvision presets: ImageClassification, VideoClassification,
      ObjectDetection), 2.2 (timm constants and per-tag configurations).
    - torchvision `transforms/_presets.py`; timm `timm/data/constants.py`, `timm/data/config.py`.
    - https://pytorch.org/vision/stable/models.html (using the pre-trained models)
    """

    code = "PRE003"
    name = "normalize-stats-mismatch"
    category = "preprocessing"
    severity = Severity.WARNING
    requires = frozenset({"ormalize"})
    message = "{found} {relation} {model} ({expected})"
    fix = "Use the weights' own preprocessing (`weights.transforms()`, or timm `resolve_model_data_config` + `create_transform`), or Normalize(mean={want_mean}, std={want_std})."

    def check(self, ctx):
        analysis = tp.analyse(ctx)
        if not analysis.norms or not analysis.judged():
            return
        for norm in analysis.norms:
            finding = self._check_one(ctx, analysis, norm)
            if finding is not None:
                yield finding

    def _check_one(self, ctx, analysis, norm: tp.NormalizeCall):
        if norm.library == "albumentations" and norm.mean_node is None and norm.std_node is None:
            mean, std = knowledge.IMAGENET_MEAN, knowledge.IMAGENET_STD  # its defaults
        else:
            mean = tp.stat_value(ctx, norm.mean_node)
            std = tp.stat_value(ctx, norm.std_node)
        if norm.library == "albumentations":
            if norm.mean_node is None and norm.std_node is not None or norm.std_node is None and norm.mean_node is not None:
                return None
            mode = kwarg(norm.call, "normalization")
            if mode is not None and ctx.string(mode) not in ("standard",):
                return None
        if mean is None or std is None:
            return None
        if min(mean) < 0 or min(std) <= 0:
            return None  # an inverse normalisation (for display), or an identity
        assoc = analysis.associated(norm.call, lambda e: True)
        if assoc is None:
            return None
        models, _traced = assoc
        exps = [m.expectation for m in models]
        found = f"{norm.label}(mean={tp.fmt(mean)}, std={tp.fmt(std)})"
        kinds = {e.kind for e in exps}
        if kinds == {"internal"} and not analysis.renormalization:
            exp = exps[0]
            return self.finding(
                ctx,
                norm.call,
                found=found,
                relation="in front of",
                model=exp.name,
                expected=f"a torchvision detection model: {exp.describe()}, so the images are normalised twice",
                fix=f"Drop the Normalize: {exp.name} takes float images in [0, 1] and normalises them itself (its weights' transforms() only converts to float).",
                evidence={"mean": list(mean), "std": list(std), "model": exp.name},
            )
        if kinds != {"stats"}:
            return None
        renormalised = bool(analysis.renormalization)
        big = max(mean) > 1.0 or max(std) > 1.0
        primary = exps[0]
        want_mean, want_std = primary.sets[0][1], primary.sets[0][2]
        params = {"found": found, "model": primary.name, "want_mean": tp.fmt(want_mean), "want_std": tp.fmt(want_std)}
        evidence = {"mean": list(mean), "std": list(std), "model": primary.name}
        # the pixel scale reaching the Normalize
        if norm.library == "albumentations":
            mpv = 255.0 if norm.max_pixel_node is None else ctx.number(norm.max_pixel_node)
            if mpv is None:
                return None
            if big and mpv >= 100:
                return self.finding(
                    ctx,
                    norm.call,
                    relation=f"with max_pixel_value={mpv:g} in front of",
                    expected=(
                        "albumentations multiplies mean and std by max_pixel_value, so these 0-255 values subtract "
                        f"{mean[0] * mpv:g}-ish from each pixel; {primary.describe()} on the [0, 1] scale"
                    ),
                    fix=f"Give mean/std on the [0, 1] scale (mean={tp.fmt(want_mean)}, std={tp.fmt(want_std)}) with max_pixel_value=255, or keep 0-255 values with max_pixel_value=1.0.",
                    evidence=evidence,
                    **params,
                )
            if big:
                mean, std = tuple(v * mpv / 255.0 for v in mean), tuple(v * mpv / 255.0 for v in std)
        else:
            scale, step = tp.pixel_scale_before(ctx, norm.call)
            if scale == "unit" and big:
                return self.finding(
                    ctx,
                    norm.call,
                    relation=f"after {step}, which scales pixels to [0, 1], in front of",
                    expected=f"mean/std are on the 0-255 scale; {primary.describe()}",
                    fix=f"Divide the statistics by 255: Normalize(mean={tp.fmt(want_mean)}, std={tp.fmt(want_std)}), or use `weights.transforms()`.",
                    evidence=evidence,
                    **params,
                )
            if scale == "raw" and not big:
                return self.finding(
                    ctx,
                    norm.call,
                    relation=f"after {step}, which leaves pixels in 0-255, in front of",
                    expected=f"these [0, 1]-scale statistics barely change 0-255 inputs; {primary.describe()} on [0, 1] input",
                    fix="Pass scale=True to ToDtype (v2.ToDtype(torch.float32, scale=True)) so pixels reach Normalize in [0, 1].",
                    evidence=evidence,
                    **params,
                )
            if big:
                mean, std = tuple(v / 255.0 for v in mean), tuple(v / 255.0 for v in std)
        if renormalised:
            return None  # the data may be re-normalised by hand before the model sees it
        if any(tp.stats_match(mean, std, m, s) for exp in exps for _, m, s in exp.sets):
            return None
        expected = primary.describe() if primary.certain else primary.describe() + "; these values match none of them"
        return self.finding(ctx, norm.call, relation="in front of", expected=expected, evidence=evidence, **params)


