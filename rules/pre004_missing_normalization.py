"""PRE004: images converted to tensors for a pretrained model but never normalised."""

from __future__ import annotations

import ast

from auditor.finding import Severity
from auditor.rule import StaticRule

from . import _torch_preprocessing as tp


class MissingNormalization(StaticRule):
    """
    ## What it does
    Flags a transform pipeline that converts images to tensors for a pretrained torchvision or timm model but never normalises them with the mean/std the weights expect.

    A pipeline here is a `Compose` (torchvision, `transforms.v2`, albumentations) or a lone
    conversion holding `ToTensor()`, `PILToTensor()` + `ConvertImageDtype`, v2 `ToImage()` +
    `ToDtype(torch.float32, scale=True)`, `to_tensor(...)` or albumentations `ToTensorV2()`.
    It is reported in two situations:

    - nothing in the file normalises: no `Normalize` of any library, no `weights.transforms()`,
      no timm `resolve_data_config` / `resolve_model_data_config` / `create_transform`, no
      Hugging Face image processor, no manual `(x - mean) / std` or `sub_(mean).div_(std)`
      (`torch.nn.functional.normalize` is an L2 normalisation and does not count);
    - the file normalises elsewhere, but not for this pipeline: the pipeline feeds the
      pretrained model (followed through datasets, loaders and helper functions) and nothing
      normalises its output afterwards, while another pipeline for the same model does
      normalise (train/serve skew: a validation transform that forgot the step), or every
      Normalize in the file feeds a different model (a small network trained from scratch).

    Detection models (which normalise inside) and files that build no pretrained
    torchvision/timm model are left alone.

    ## Why is this bad?
    `ToTensor()` only scales pixels to [0, 1]. Pretrained weights were trained on inputs
    standardised with per-channel mean and std (ImageNet: mean 0.485/0.456/0.406, std
    0.229/0.224/0.225), so un-normalised inputs are shifted by about two standard deviations
    in every channel. Fine-tuning still converges, only worse, and a validation or serving
    pipeline that forgets the step silently degrades a model that trained well.

    ## Example
    ```python
    import torch
    import torchvision
    from torchvision import transforms

    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    preprocess = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
    ])
    dataset = torchvision.datasets.ImageFolder("data/train", transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    for images, labels in loader:
        logits = model(images)
    ```

    ## Use instead
    ```python
    import torch
    import torchvision
    from torchvision import transforms

    weights = torchvision.models.ResNet18_Weights.IMAGENET1K_V1
    model = torchvision.models.resnet18(weights=weights)
    preprocess = transforms.Compose([
        transforms.Resize(256),
        transforms.CenterCrop(224),
        transforms.ToTensor(),
        transforms.Normalize(mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225]),
    ])
    dataset = torchvision.datasets.ImageFolder("data/train", transform=preprocess)
    loader = torch.utils.data.DataLoader(dataset, batch_size=32)
    for images, labels in loader:
        logits = model(images)
    ```

    ## References
    - FRAMEWORK_FACTS 2.1 (torchvision `ImageClassification` preset: resize, crop, [0, 1],
      normalize; `ObjectDetection` does not normalise), 2.2 (timm `resolve_model_data_config`
      + `create_transform`).
    - torchvision `transforms/_presets.py`; https://pytorch.org/vision/stable/models.html
    """

    code = "PRE004"
    name = "missing-normalization"
    category = "preprocessing"
    severity = Severity.WARNING
    requires = frozenset({"ToTensor", "to_tensor", "ToDtype", "ConvertImageDtype"})
    message = "{pipeline} converts images to tensors without normalising them{detail}, yet feeds {model} ({expected})"
    fix = "Add Normalize(mean={want_mean}, std={want_std}) after the tensor conversion, or use {preset}."

    def check(self, ctx):
        analysis = tp.analyse(ctx)
        if not analysis.roots or analysis.flow is None:
            return
        want = lambda e: tp.needs_normalization(e.expectation)
        if not any(want(e) for e in analysis.entities):
            return
        evidence = analysis.evidence
        norm_calls = {n.call for n in analysis.norms}
        for root in analysis.roots:
            if self._normalises(root, evidence):
                continue
            assoc = analysis.associated(root, want)
            if assoc is None:
                continue
            models, traced = assoc
            if not evidence:
                detail = " (nothing in this file normalises)"
            else:
                detail = self._skew(ctx, analysis, root, models, traced, evidence, norm_calls)
                if detail is None:
                    continue
            exp = models[0].expectation
            _, want_mean, want_std = exp.sets[0]
            preset = "`weights.transforms()`" if exp.model.framework == "torchvision" else "timm's `resolve_model_data_config(model)` + `create_transform(**cfg)`"
            yield self.finding(
                ctx,
                root,
                pipeline=tp.display_name(ctx, root),
                detail=detail,
                model=exp.name,
                expected=exp.describe(),
                want_mean=tp.fmt(want_mean),
                want_std=tp.fmt(want_std),
                preset=preset,
                evidence={"model": exp.name, "traced": traced},
            )

    @staticmethod
    def _normalises(root: ast.AST, evidence: list[ast.AST]) -> bool:
        inside = set(ast.walk(root))
        return any(e in inside for e in evidence)

    def _skew(self, ctx, analysis, root, models, traced, evidence, norm_calls) -> ast.AST | None:
        """Why a file that normalises somewhere still leaves this pipeline un-normalised: a
        sibling pipeline normalises for the same model (train/val skew), or every Normalize
        feeds another model. None when that is not certain."""
        flow = analysis.flow
        if not traced or not (isinstance(root, ast.Call) and tp.is_compose(ctx, root)):
            return None
        if any(e not in norm_calls for e in evidence):
            return None  # presets, processors, manual arithmetic: may normalise anywhere
        # a Normalize that is part of a model (nn.Sequential(norm, backbone)) normalises every input
        model_calls = {e.node for e in analysis.entities}
        for call in ctx.calls:
            qual = ctx.call_name(call) or ""
            if (qual == "torch.nn.Sequential" or call in model_calls) and any(
                flow.labels(a) & norm_calls for a in list(call.args) + [kw.value for kw in call.keywords]
            ):
                return None
        if self._normalised_downstream(ctx, flow, root, norm_calls):
            return None
        labels = {m.label for m in models}
        for other in analysis.roots:
            if other is root or not isinstance(other, ast.Call) or not tp.is_compose(ctx, other):
                continue
            if not any(n in set(ast.walk(other)) for n in norm_calls):
                continue
            if any(flow.meets(other, lab) for lab in labels):
                where = ctx.location(other)
                at = f"line {where.line}" if where.cell is None else f"cell {where.cell}, line {where.line}"
                return f", unlike {tp.display_name(ctx, other)} ({at}) for the same model"
        # every Normalize in the file belongs to other models (a small net trained from scratch)
        judged = [e.label for e in analysis.judged()]
        owners = []
        for norm in analysis.norms:
            partners = flow.partners(norm.call)
            if any(lab in partners for lab in judged):
                return None
            mine = [e for e in analysis.entities if e.label in partners and e.expectation is None and not e.wraps_known]
            if not mine:
                return None
            owners.append(mine[0])
        if not owners:
            return None
        other_name = tp.display_name(ctx, owners[0].node)
        return f" (the file's Normalize steps only feed {other_name})"

    @staticmethod
    def _normalised_downstream(ctx, flow, root, norm_calls) -> bool:
        for call in ctx.calls:
            if tp.is_compose(ctx, call):
                steps = tp.compose_elements(ctx, call) or []
                seen_root = False
                for step in steps:
                    labs = flow.labels(step)
                    if seen_root and labs & norm_calls:
                        return True
                    seen_root = seen_root or root in labs
                continue
            if call in norm_calls:
                if any(root in flow.labels(a) for a in call.args):
                    return True  # F.normalize(x, mean, std) on this pipeline's output
                continue
            callee = call.func
            if (
                isinstance(callee, (ast.Name, ast.Attribute))
                and flow.labels(callee) & norm_calls
                and any(root in flow.labels(a) for a in call.args)
            ):
                return True  # normalize(preprocess(img))
        return False
