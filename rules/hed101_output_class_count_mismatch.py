"""HED101: the model's measured output size does not match the class count or the labels."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class OutputClassCountMismatch(DynamicRule):
    """
    ## What it does
    Compares the number of output units the model produces with the declared number of classes and with the labels' range.

    Compares the number of output units the model actually produces with the number of
    classes the pipeline declares (`num_classes`, `--num-classes`) and with the labels of
    the sample (largest label + 1). The units are measured on the eval pass: the last
    dimension of an `(N, C)` or `(N, T, C)` output, dimension 1 of a dense prediction
    `(N, C, H, W)`. The target is the head: the last module with parameters that ran.

    It also runs on a state dict (`auditor audit weights.pt --num-classes N`), where nothing
    can run: there the head is the last `*.weight` of rank 2 (or a 1x1 convolution) in
    state-dict order, provided its name looks like a classifier (`fc`, `classifier`,
    `head`, `heads.head`, `last_linear`, `logits`, `out`, ...); its first dimension is the
    number of units and the target is its module prefix (`fc`, `classifier.6`).

    A single-unit head is accepted for two classes (a sigmoid/`BCEWithLogitsLoss` binary
    head), also with labels in {0, 1}. More units than the labels use is not reported
    (a sample need not contain every class); more units than `num_classes` is.

    ## Why is this bad?
    A head with fewer units than classes makes some labels impossible: `CrossEntropyLoss`
    raises a device-side assert on CUDA (`IndexError: Target 10 is out of bounds` on CPU)
    for a label >= C. A head with more units trains, puts probability on classes that never
    occur, and hides the bug until someone reads the confusion matrix; the classic case is a
    pretrained ImageNet model whose 1000-way `fc` was never replaced for a 10-class task.

    ## Example
    ```python
    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")  # fc: 1000 units
    pipeline = Pipeline(model.eval(), preprocess=prep, sample=images, num_classes=10)
    ```

    ## Use instead
    ```python
    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    model.fc = nn.Linear(model.fc.in_features, 10)
    pipeline = Pipeline(model.eval(), preprocess=prep, sample=images, num_classes=10)
    ```

    ## Thresholds
    Exact: units != num_classes (1 unit for 2 classes allowed), or max(label) + 1 > units.
    Evidence: `units`, `num_classes`, `max_label`, `output_shape` (or `weight_shape`).

    ## References
    - torchvision models: `num_classes` argument and the `fc` / `classifier` /
      `heads.head` attributes; timm `create_model(..., num_classes=...)`.
    - PyTorch docs: `nn.CrossEntropyLoss` (target values in [0, C)).
    - Static twin: HED001 (the same mismatch read from source).
    """

    code = "HED101"
    name = "output-class-count-mismatch"
    category = "head"
    severity = Severity.ERROR
    needs = "tensors"
    message = "the head {head} outputs {units} values per sample but {expected}"
    fix = "Size the head from the class count: replace {head} with a layer of {want} outputs (e.g. nn.Linear(in_features, {want}))."

    def probe(self, ctx):
        from ._head_probe import head_name, state_dict_head, units

        measured = None
        if getattr(ctx, "has_forward", False):
            import torch

            output = ctx.eval_pass().output
            if isinstance(output, torch.Tensor) and output.is_floating_point():
                n = units(output)
                if n is not None:
                    measured = (head_name(ctx), n, {"output_shape": str(tuple(output.shape))})
        if measured is None:
            found = state_dict_head(ctx.tensors)
            if found is None:
                return
            prefix, weight = found
            measured = (prefix, int(weight.shape[0]), {"weight_shape": str(tuple(weight.shape))})
        head, n, shape = measured
        count = getattr(ctx, "num_classes", None)
        if count is not None and n != count and not (n == 1 and count == 2):
            evidence = {"units": n, "num_classes": count, **shape}
            yield self.finding(ctx, head, evidence=evidence, head=head, units=n,
                               expected=f"the pipeline declares num_classes={count}", want=count)
            return
        labels = _integer_labels(getattr(ctx, "labels", None))
        if labels is None or labels.size == 0:
            return
        top, low = int(labels.max()), int(labels.min())
        if n == 1 and low >= 0 and top <= 1:
            return
        if top + 1 > n or low < 0:
            evidence = {"units": n, "max_label": top, "min_label": low, **shape}
            if count is not None:
                evidence["num_classes"] = count
            expected = f"the sample's labels go up to {top} (labels must lie in [0, {n}))" if low >= 0 else f"the sample has negative labels (min {low})"
            yield self.finding(ctx, head, evidence=evidence, head=head, units=n, expected=expected, want=max(top + 1, count or 0))


def _integer_labels(labels):
    if labels is None:
        return None
    import numpy as np

    array = np.asarray(labels)
    if array.ndim != 1 or array.dtype.kind not in "iu":
        return None
    return array
