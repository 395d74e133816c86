"""HED101: the model's measured output size does not match the class count or the labels."""

from __future__ import annotations

from auditor.finding import Severity
from auditor.rule import DynamicRule


class OutputClassCountMismatch(DynamicRule):
    """
    ## What it does
    Compares the number of output units the model produces with the declared number of classes, with the labels, and the labels' encoding with what the loss expects.

    Compares the number of output units the model actually produces with the number of
    classes the pipeline declares (`num_classes`, `--num-classes`) and with the labels of
    the sample (largest label + 1, or the width of one-hot labels). The units are measured
    on the eval pass (`model.eval()` for PyTorch, `model(x, training=False)` for Keras): the
    last dimension of an `(N, C)` or `(N, T, C)` output; for a dense prediction dimension 1
    of PyTorch's `(N, C, H, W)`, the last dimension of Keras's `(N, H, W, C)`. The target is
    the head: the last module / layer with weights that ran (a Keras `Dense`, or
    `conv_preds` in `keras.applications.MobileNet`; nested layers are named
    `base/predictions`).

    With a loss (`Pipeline(loss=...)`, or for Keras the one `model.compile()` stored) it
    also checks that the labels are encoded the way the loss reads them: integer class ids
    with `categorical_crossentropy` / `CategoricalCrossentropy` (which want one-hot rows of
    the output's width), one-hot rows with `sparse_categorical_crossentropy` /
    `SparseCategoricalCrossentropy` or `nn.NLLLoss` (which want class ids), and class ids
    0..K with a binary cross-entropy over several units (which wants a 0/1 label per unit).
    The loss may be a loss object, a loss function, a `functools.partial` or a name
    (`"sparse_categorical_crossentropy"`, `"bce"`, ...); of a list or dict of losses the
    first (the primary output's) counts.

    It also runs on a PyTorch state dict (`auditor audit weights.pt --num-classes N`), where nothing
    can run: there the head is the last `*.weight` of rank 2 (or a 1x1 convolution) in
    state-dict order, provided its name looks like a classifier (`fc`, `classifier`,
    `head`, `heads.head`, `last_linear`, `logits`, `out`, ...); its first dimension is the
    number of units and the target is its module prefix (`fc`, `classifier.6`).

    A single-unit head is accepted for two classes (a sigmoid/`BCEWithLogitsLoss` /
    `BinaryCrossentropy(from_logits=True)` binary head), also with labels in {0, 1}. More
    units than the labels use is not reported (a sample need not contain every class); more
    units than `num_classes` is. One finding per head: the class count first, then the
    labels' range, then their encoding.

    ## Why is this bad?
    A head with fewer units than classes makes some labels impossible: `CrossEntropyLoss`
    raises a device-side assert on CUDA (`IndexError: Target 10 is out of bounds` on CPU)
    for a label >= C, and Keras's `sparse_categorical_crossentropy` gives NaN or an error
    depending on the backend. A head with more units trains, puts probability on classes
    that never occur, and hides the bug until someone reads the confusion matrix; the
    classic case is a pretrained ImageNet model whose 1000-way head was never replaced for
    a 10-class task (`keras.applications.X()` keeps `classes=1000` unless told otherwise).
    Labels in the wrong encoding either fail inside `fit()` after the data pipeline and the
    first trace have run, or, worse, broadcast silently (class ids against a multi-unit
    binary cross-entropy).

    ## Example
    ```python
    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")  # fc: 1000 units
    pipeline = Pipeline(model.eval(), preprocess=prep, sample=images, num_classes=10)

    model = keras.Sequential([backbone, keras.layers.Dense(5, activation="softmax")])
    model.compile(optimizer="adam", loss="categorical_crossentropy")
    pipeline = Pipeline(model, sample=images, labels=np.array([0, 3, 1, 4]))  # class ids
    ```

    ## Use instead
    ```python
    model = torchvision.models.resnet18(weights="IMAGENET1K_V1")
    model.fc = nn.Linear(model.fc.in_features, 10)
    pipeline = Pipeline(model.eval(), preprocess=prep, sample=images, num_classes=10)

    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")  # class ids
    # or keep categorical_crossentropy with keras.utils.to_categorical(labels, 5)
    ```

    ## Thresholds
    Exact: units != num_classes (1 unit for 2 classes allowed), max(label) + 1 > units,
    one-hot width != units, or an encoding the loss does not read. One-hot means a 2-D
    label array with values in [0, 1] whose rows sum to 1 (within 1e-3); class ids are
    integers (or whole floats) of shape (N,) or (N, 1). Evidence: `units`, `num_classes`,
    `max_label`, `label_columns`, `labels_shape`, `loss`, `loss_source` ("pipeline" or
    "model.compile()"), `output_shape` (or `weight_shape`).

    ## References
    - torchvision models: `num_classes` argument and the `fc` / `classifier` /
      `heads.head` attributes; timm `create_model(..., num_classes=...)`;
      `keras.applications.*(classes=..., include_top=...)`.
    - PyTorch docs: `nn.CrossEntropyLoss` (target values in [0, C), or class probabilities).
    - Keras docs: `CategoricalCrossentropy` ("labels to be provided in a one_hot
      representation"), `SparseCategoricalCrossentropy` ("labels to be provided as
      integers"), `keras.utils.to_categorical`.
    - Static twin: HED001 (the same mismatch read from source).
    """

    code = "HED101"
    name = "output-class-count-mismatch"
    category = "head"
    severity = Severity.ERROR
    needs = "tensors"
    frameworks = ("torch", "keras")
    message = "the head {head} outputs {units} values per sample but {expected}"
    fix = "Size the head from the class count: replace {head} with a layer of {want} outputs (e.g. {example})."

    def probe(self, ctx):
        from ._head_probe import (
            channels_last,
            float_output,
            head_name,
            labels_kind,
            loss_spec,
            state_dict_head,
            units,
        )

        keras = getattr(ctx, "framework", "torch") == "keras"
        measured = None
        if getattr(ctx, "has_forward", False):
            output = float_output(ctx.eval_pass().output)
            if output is not None:
                n = units(output, channels_last(ctx))
                if n is not None:
                    measured = (head_name(ctx), n, {"output_shape": str(tuple(output.shape))})
        if measured is None and not keras:
            found = state_dict_head(ctx.tensors)
            if found is None:
                return
            prefix, weight = found
            measured = (prefix, int(weight.shape[0]), {"weight_shape": str(tuple(weight.shape))})
        if measured is None:
            return
        head, n, shape = measured
        example = "keras.layers.Dense({want})" if keras else "nn.Linear(in_features, {want})"
        count = getattr(ctx, "num_classes", None)
        if count is not None and n != count and not (n == 1 and count == 2):
            evidence = {"units": n, "num_classes": count, **shape}
            yield self.finding(ctx, head, evidence=evidence, head=head, units=n,
                               expected=f"the pipeline declares num_classes={count}", want=count, example=example.format(want=count))
            return
        labels = labels_kind(getattr(ctx, "labels", None))
        spec = loss_spec(getattr(ctx, "loss", None), "keras" if keras else "torch")
        loss = {"loss": spec.label, "loss_source": getattr(ctx, "loss_source", None) or "pipeline"} if spec is not None else {}
        if labels is None or labels.kind == "other":
            return
        if labels.kind == "one_hot":
            if labels.classes != n:
                evidence = {"units": n, "label_columns": labels.classes, "labels_shape": str(labels.shape), **shape, **loss}
                if count is not None:
                    evidence["num_classes"] = count
                yield self.finding(ctx, head, evidence=evidence, head=head, units=n, want=labels.classes,
                                   expected=f"the one-hot labels have {labels.classes} columns (shape {labels.shape})",
                                   example=example.format(want=labels.classes))
                return
        else:
            top, low = labels.high, labels.low
            binary = n == 1 and low >= 0 and top <= 1
            if not binary and (top + 1 > n or low < 0):
                evidence = {"units": n, "max_label": top, "min_label": low, **shape}
                if count is not None:
                    evidence["num_classes"] = count
                expected = f"the sample's labels go up to {top} (labels must lie in [0, {n}))" if low >= 0 else f"the sample has negative labels (min {low})"
                want = max(top + 1, count or 0)
                yield self.finding(ctx, head, evidence=evidence, head=head, units=n, expected=expected, want=want, example=example.format(want=want))
                return
        problem = _label_format_problem(spec, labels, n)
        if problem is not None:
            expected, hint = problem
            evidence = {"units": n, "labels_shape": str(labels.shape), "labels": labels.kind, **shape, **loss}
            yield self.finding(ctx, head, evidence=evidence, head=head, units=n, expected=expected, fix=hint)


def _label_format_problem(spec, labels, n):
    """(what is wrong, how to fix it) when the labels' encoding does not fit the loss."""
    if spec is None:
        return None
    if spec.targets == "one_hot" and labels.kind == "sparse":
        problem = (f"the loss {spec.label} expects one-hot labels of shape (N, {n}) and the labels are integer class ids, "
                   f"shape {labels.shape}")
        hint = (f"Use sparse_categorical_crossentropy (keras.losses.SparseCategoricalCrossentropy(from_logits={spec.from_logits})) "
                f"for integer labels, or one-hot encode them: keras.utils.to_categorical(labels, {n}).")
        return problem, hint
    if spec.targets == "sparse" and labels.kind == "one_hot":
        problem = f"the loss {spec.label} expects integer class ids and the labels are one-hot, shape {labels.shape}"
        if spec.from_logits is not None:
            hint = (f"Use categorical_crossentropy (keras.losses.CategoricalCrossentropy(from_logits={spec.from_logits})) for "
                    "one-hot labels, or pass integer class ids: labels.argmax(-1).")
        else:
            hint = "Pass integer class ids (labels.argmax(1)), or use CrossEntropyLoss, which takes class probabilities."
        return problem, hint
    if spec.targets == "binary" and n >= 2 and labels.kind == "sparse" and labels.high is not None and labels.high >= 1:
        problem = (f"the binary loss {spec.label} scores each of the {n} units against its own 0/1 label, so it needs labels of "
                   f"shape (N, {n}), and the labels are class ids 0..{labels.high}, shape {labels.shape}")
        hint = ("For single-label classification use categorical cross-entropy (sparse_categorical_crossentropy / "
                "CrossEntropyLoss) on class ids; for multi-label classification pass multi-hot labels of the output's shape.")
        return problem, hint
    return None
