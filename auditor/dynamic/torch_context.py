"""The PyTorch audit context: one model, one sample, and memoised measurements shared by probes.

Why shared passes: five probes that each ran their own forward passes would cost a dozen or
more; the budget is about eight for a whole audit. So the context runs each kind of pass at
most once, records everything probes ask about (outputs, BatchNorm input statistics, which
tensors changed, the head and its input features) and restores the model after each pass:
every pass starts from the user's exact state.

Pass kinds:
- `eval_pass()`: `model.eval()` (the user's override of `train()`/`eval()` honoured), under
  `torch.no_grad()`, with hooks. Inference as the user's code runs it.
- `inference_pass()`: the same input again under `torch.inference_mode()`, no hooks; its
  output must equal the eval pass bit for bit.
- `train_pass()`: `model.train()` as the user's training loop calls it, under `no_grad`, with
  hooks: which BatchNorm layers run on batch statistics and update their buffers.
"""

from __future__ import annotations

from typing import Any, Callable

import torch

from auditor.dynamic.context_base import MemoisedContext, dtype_text, family_input_size, prepared_with, reference_images, shape_text, synthetic_note
from auditor.dynamic.loading import user_error
from auditor.dynamic.records import BatchNormObservation, ForwardRecord, TensorChange  # noqa: F401 - re-exported
from auditor.dynamic.torch_state import TorchState
from auditor.errors import UsageFailure


class SampleError(UsageFailure):
    """The sample or its preprocessing does not fit the model (exit 2, one line)."""


def is_batchnorm(module: torch.nn.Module) -> bool:
    """`_BatchNorm` subclasses (BatchNorm1d/2d/3d, SyncBatchNorm, lazy ones) and, by duck
    typing, FrozenBatchNorm2d-style modules with running statistics held as tensors."""
    if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
        return True
    mean = getattr(module, "running_mean", None)
    var = getattr(module, "running_var", None)
    return isinstance(mean, torch.Tensor) and isinstance(var, torch.Tensor) and "norm" in type(module).__name__.lower()


def is_frozen_batchnorm(module: torch.nn.Module) -> bool:
    """A BatchNorm whose statistics can never move: FrozenBatchNorm2d-style (not a
    `_BatchNorm`, statistics as plain buffers)."""
    return is_batchnorm(module) and not isinstance(module, torch.nn.modules.batchnorm._BatchNorm)


def primary_output(output: Any) -> Any:
    """The tensor probes judge: a tensor; `.logits` (Hugging Face); `out` of a dict
    (segmentation models); the first tensor of a tuple/namedtuple (Inception's aux logits)."""
    if isinstance(output, torch.Tensor):
        return output
    logits = getattr(output, "logits", None)
    if isinstance(logits, torch.Tensor):
        return logits
    if isinstance(output, dict):
        for key in ("logits", "out", "output"):
            if isinstance(output.get(key), torch.Tensor):
                return output[key]
        for value in output.values():
            found = primary_output(value)
            if found is not None:
                return found
        return None
    if isinstance(output, (tuple, list)):
        for value in output:
            found = primary_output(value)
            if found is not None:
                return found
    return None


def first_layer(model: torch.nn.Module) -> tuple[str, torch.nn.Module] | None:
    """The first module (registration order) with a weight: what the input meets first."""
    for name, module in model.named_modules():
        if isinstance(getattr(module, "weight", None), torch.Tensor) and not is_batchnorm(module):
            return name, module
    return None


def layer_kind(module: torch.nn.Module) -> str:
    """The layer's class name; for TorchScript submodules (RecursiveScriptModule) the name of
    the class that was scripted."""
    if isinstance(module, torch.jit.ScriptModule):
        return getattr(module, "original_name", type(module).__name__)
    return type(module).__name__


def expected_input(module: torch.nn.Module) -> str:
    """Human-readable input shape a first layer expects."""
    kind = layer_kind(module)
    in_channels = getattr(module, "in_channels", None)
    if kind == "Conv2d":
        return f"float (N, {in_channels}, H, W)"
    if kind == "Conv1d":
        return f"float (N, {in_channels}, L)"
    if kind == "Conv3d":
        return f"float (N, {in_channels}, D, H, W)"
    if kind == "Linear":
        return f"float (N, ..., {getattr(module, 'in_features', '?')})"
    if kind == "Embedding":
        return f"integer indices in [0, {getattr(module, 'num_embeddings', '?')})"
    return f"what {kind} accepts"


class TorchContext(MemoisedContext):
    """The PyTorch side of one audit. Probes read; only passes (and the learning-rate probe's
    step) run the model, and each restores the snapshot afterwards."""

    framework = "torch"
    has_forward = True

    def __init__(self, pipeline: Any, source: str | None = None):
        model = pipeline.model
        if not isinstance(model, torch.nn.Module):
            raise UsageFailure(f"the model is a {type(model).__name__}, not a torch.nn.Module")
        self.pipeline = pipeline
        self.model = model
        self.optimizer = pipeline.optimizer
        self.loss = pipeline.loss
        self.pretrained = pipeline.pretrained
        self.preprocess = pipeline.preprocess
        self.source = source
        self.notes: list[str] = []
        self.device, self.dtype = _device_and_dtype(model)
        if self.device is not None and self.device.type == "meta":
            raise UsageFailure("the model's tensors are on the 'meta' device (no data): load real weights before auditing")
        if self.optimizer is not None and not isinstance(self.optimizer, torch.optim.Optimizer):
            raise UsageFailure(f"the optimizer is a {type(self.optimizer).__name__}, not a torch.optim.Optimizer")
        self.scripted = isinstance(model, torch.jit.ScriptModule)
        self.state = TorchState(model, self.optimizer)
        self.raw, self.synthetic, self.sample_is_input = self._sample(pipeline)
        self.labels = _as_numpy(pipeline.labels) if pipeline.labels is not None else None
        self.num_classes = pipeline.num_classes
        self._memo: dict[str, Any] = {}

    # -- sample and input ------------------------------------------------------------------
    def _sample(self, pipeline: Any) -> tuple[Any, bool, bool]:
        from auditor.dynamic import samples

        if pipeline.sample is not None:
            return pipeline.sample, False, pipeline.preprocess is None
        layer = first_layer(self.model)
        module = layer[1] if layer else None
        kind = layer_kind(module) if module is not None else ""
        if pipeline.preprocess is not None:
            size = family_input_size(self.pretrained)
            raw = samples.synthetic_images(size=size)
            self.notes.append(synthetic_note(f"{raw.shape[0]} uint8 images {raw.shape[1]}x{raw.shape[2]} (N, H, W, C)", "preprocess"))
            return raw, True, False
        if kind == "Embedding":
            import numpy as np

            raw = np.random.default_rng(0).integers(0, module.num_embeddings, size=(samples.SYNTHETIC_BATCH, 32))
            what = f"integer tokens {raw.shape}"
        elif kind == "Linear":
            raw = samples.synthetic_tensor_like((samples.SYNTHETIC_BATCH, module.in_features))
            what = f"standard-normal features {raw.shape}"
        elif kind == "Conv1d":
            raw = samples.synthetic_tensor_like((samples.SYNTHETIC_BATCH, module.in_channels, 256))
            what = f"standard-normal signals {raw.shape}"
        elif kind == "Conv3d":
            raw = samples.synthetic_tensor_like((samples.SYNTHETIC_BATCH, module.in_channels, 8, 64, 64))
            what = f"standard-normal volumes {raw.shape}"
        else:
            channels = getattr(module, "in_channels", 3)
            size = family_input_size(self.pretrained)
            images = samples.synthetic_images(size=size, channels=channels)
            import numpy as np

            raw = np.ascontiguousarray(np.transpose(reference_images(images, self.pretrained), (0, 3, 1, 2)))
            what = f"images {raw.shape} (N, C, H, W) prepared with {prepared_with(self.pretrained)}"
        self.notes.append(synthetic_note(what))
        return raw, True, True

    def raw_copy(self) -> Any:
        """A fresh copy of the raw sample: preprocessing may modify its input in place (Keras's
        preprocess_input does), and the user's array must stay untouched."""
        raw = self.raw
        if isinstance(raw, torch.Tensor):
            return raw.detach().clone()
        if hasattr(raw, "copy"):
            return raw.copy()
        return raw

    def preprocessed(self, preprocess: Callable[[Any], Any] | None = None) -> Any:
        """`preprocess(sample)` as a tensor on the model's device; batch first, then one by
        one (torchvision-style transforms take single images)."""
        preprocess = preprocess or self.preprocess
        raw = self.raw_copy()
        if preprocess is None:
            return self._to_model(raw)
        try:
            out = preprocess(raw)
        except Exception as batch_error:  # noqa: BLE001 - retry per item, report the batch error
            try:
                items = [preprocess(item) for item in raw]
                out = torch.stack([self._to_model(item, move=False) for item in items])
            except Exception:  # noqa: BLE001
                raise SampleError(f"preprocess failed on the sample of shape {shape_text(raw)} {dtype_text(raw)}: {user_error(batch_error)}") from batch_error
        return self._to_model(out)

    def _to_model(self, value: Any, move: bool = True) -> Any:
        if isinstance(value, dict):
            return {k: self._to_model(v, move) for k, v in value.items()}
        if isinstance(value, (tuple, list)) and value and not _is_numeric_sequence(value):
            return type(value)(self._to_model(v, move) for v in value)
        if not isinstance(value, torch.Tensor):
            import numpy as np

            array = np.asarray(value)
            if array.dtype.kind not in "biuf":
                raise SampleError(f"the model input has dtype {array.dtype}, not a number type")
            value = torch.from_numpy(np.ascontiguousarray(array))
            if value.is_floating_point() and self.dtype is not None and value.dtype != self.dtype:
                value = value.to(self.dtype)
        if move and self.device is not None and value.device != self.device:
            value = value.to(self.device)
        return value

    # -- running the model -----------------------------------------------------------------
    def call(self, inputs: Any) -> Any:
        if isinstance(inputs, dict):
            return self.model(**inputs)
        if isinstance(inputs, tuple):
            return self.model(*inputs)
        return self.model(inputs)

    def run(self, kind: str, *, mode: str, grad: str = "no_grad", hooks: bool = True) -> ForwardRecord:
        """One pass in `mode` ("eval" or "train") under `grad` ("no_grad" or "inference"),
        recording BatchNorm statistics and the head, then restoring the snapshot."""
        inputs = self.inputs()
        # input statistics only in eval mode (what drift is measured against); the train pass
        # records which layers ran on batch statistics, which needs no reduction over activations
        recorder = _Recorder(self.model, stats=mode == "eval") if hooks and not self.scripted else None
        try:
            if mode == "eval":
                self.model.eval()
            else:
                self.model.train()
            modes = {name: m.training for name, m in self.model.named_modules()}
            guard = torch.inference_mode() if grad == "inference" else torch.no_grad()
            try:
                with guard:
                    if recorder:
                        recorder.attach()
                    raw_output = self.call(inputs)
            except UsageFailure:
                raise
            except Exception as exc:  # noqa: BLE001 - the sample does not fit: one clear line
                raise SampleError(self._does_not_fit(inputs, exc)) from exc
            finally:
                if recorder:
                    recorder.detach()
            output = primary_output(raw_output)
            if output is not None:
                output = output.detach()
                if grad == "inference":
                    output = output.clone()
            changes = self.state.changes()
            return ForwardRecord(
                kind=kind,
                output=output,
                raw_output=raw_output,
                batchnorm=recorder.batchnorm if recorder else {},
                leaves=recorder.leaves if recorder else [],
                head=recorder.head if recorder else None,
                features=recorder.features if recorder else None,
                changes=changes,
                modes=modes,
            )
        finally:
            self.state.restore()

    def eval_pass(self) -> ForwardRecord:
        return self._memoised("eval", lambda: self.run("eval", mode="eval"))

    def inference_pass(self) -> ForwardRecord:
        """The second inference run. It starts from a different random state (torch, numpy
        and Python generators reseeded with INFERENCE_SEED; the run restores them), so that
        dropout or noise left active in eval mode shows up as a difference from the eval
        pass without paying a third pass."""

        def compute() -> ForwardRecord:
            reseed(INFERENCE_SEED)
            return self.run("inference", mode="eval", grad="inference", hooks=False)

        return self._memoised("inference", compute)

    def train_pass(self) -> ForwardRecord:
        return self._memoised("train", lambda: self.run("train", mode="train"))

    # -- model structure -------------------------------------------------------------------
    @property
    def tensors(self) -> dict[str, Any]:
        """The model's state dict, detached: the view `needs = "tensors"` probes share with
        state-dict files (see auditor.dynamic.tensors)."""
        return self._memoised("tensors", lambda: {k: v.detach() for k, v in self.model.state_dict(keep_vars=True).items() if isinstance(v, torch.Tensor)})

    def batchnorm_layers(self) -> list[tuple[str, torch.nn.Module]]:
        return [(name, m) for name, m in self.model.named_modules() if is_batchnorm(m)]

    def module(self, name: str) -> torch.nn.Module:
        return self.model.get_submodule(name) if name else self.model

    def optimizer_params(self) -> set[int]:
        """ids of the parameters the optimizer updates."""
        if self.optimizer is None:
            return set()
        return {id(p) for group in self.optimizer.param_groups for p in group["params"]}

    def _does_not_fit(self, inputs: Any, exc: BaseException) -> str:
        shape = shape_text(inputs)
        layer = first_layer(self.model)
        where = f"; the first layer {layer[0] or '<root>'} ({layer_kind(layer[1])}) expects {expected_input(layer[1])}" if layer else ""
        return f"the model cannot run on the sample: input {shape} {dtype_text(inputs)}{where}: {user_error(exc)}"


def channel_stats(x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-channel mean and population variance of an (N, C, ...) activation.

    Why not `torch.var_mean(x, dim=[0, 2, 3])`: on CPU that strided reduction costs about 15x
    a contiguous one (22 ms vs 1.3 ms on an 8x256x56x56 tensor) and made the hooks of one
    eval pass of a ResNet-50 cost 0.7 forward passes. Reducing over the contiguous spatial
    dims first (mean and sum of squares via a norm, no temporary copy) and then over the
    batch gives the same numbers (float32 agreement to 1e-7 there) at a fraction."""
    x = x.float()
    if x.dim() == 2:
        mean = x.mean(0)
        return mean.double(), (x * x).mean(0).double().sub(mean.double() ** 2).clamp_min(0.0)
    flat = x.flatten(2)
    n = flat.shape[-1]
    per_sample_mean = flat.mean(-1).double()  # (N, C)
    per_sample_sq = torch.linalg.vector_norm(flat, dim=-1).double().pow(2) / n
    mean = per_sample_mean.mean(0)
    var = (per_sample_sq.mean(0) - mean * mean).clamp_min(0.0)
    return mean, var


#: seed of the inference pass's random generators (any fixed value unlike the user's state)
INFERENCE_SEED = 0x5EED_A0D1


def reseed(seed: int) -> None:
    """Reseed torch (all devices), Python's `random` and numpy's global generator (only if
    numpy is already imported). Callers restore the snapshot afterwards."""
    import random
    import sys

    torch.manual_seed(seed)
    random.seed(seed)
    numpy = sys.modules.get("numpy")
    if numpy is not None:
        numpy.random.seed(seed % 2**32)


class _Recorder:
    """Forward hooks for one pass: BatchNorm input statistics, leaf order, head input."""

    def __init__(self, model: torch.nn.Module, stats: bool = True):
        self.model = model
        self.stats = stats
        self.handles: list[Any] = []
        self.batchnorm: dict[str, BatchNormObservation] = {}
        self.leaves: list[str] = []
        self.head: str | None = None
        self.features: Any = None

    def attach(self) -> None:
        for name, module in self.model.named_modules():
            if is_batchnorm(module):
                self.handles.append(module.register_forward_pre_hook(self._bn_hook(name)))
            if any(p is not None for p in module._parameters.values()) and not is_batchnorm(module):
                self.handles.append(module.register_forward_hook(self._leaf_hook(name)))

    def detach(self) -> None:
        for handle in self.handles:
            handle.remove()
        self.handles.clear()

    def _bn_hook(self, name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple) -> None:
            if name in self.batchnorm or not args or not isinstance(args[0], torch.Tensor) or args[0].dim() < 2:
                return
            x = args[0].detach()
            count = x.numel() // max(x.shape[1], 1)
            tracks = bool(getattr(module, "track_running_stats", True))
            if not self.stats:
                self.batchnorm[name] = BatchNormObservation(name, None, None, count, bool(module.training), tracks)
                return
            mean, var = channel_stats(x)
            self.batchnorm[name] = BatchNormObservation(name, mean.cpu(), var.cpu(), count, bool(module.training), tracks)

        return hook

    def _leaf_hook(self, name: str) -> Callable:
        def hook(module: torch.nn.Module, args: tuple, output: Any) -> None:
            self.leaves.append(name)
            self.head = name
            if args and isinstance(args[0], torch.Tensor):
                x = args[0].detach()
                self.features = x.reshape(x.shape[0], -1) if x.dim() > 1 else x.reshape(1, -1)
            else:
                self.features = None

        return hook


def _device_and_dtype(model: torch.nn.Module) -> tuple[Any, Any]:
    device = dtype = None
    for tensor in list(model.parameters()) + list(model.buffers()):
        if device is None:
            device = tensor.device
        if tensor.is_floating_point():
            return tensor.device, tensor.dtype
    return device, dtype




def _as_numpy(value: Any) -> Any:
    import numpy as np

    if isinstance(value, torch.Tensor):
        return value.detach().cpu().numpy()
    return np.asarray(value)


def _is_numeric_sequence(value: Any) -> bool:
    return all(isinstance(v, (int, float)) for v in value)

