"""A trained model ready to predict: its generator (rewritten for inference), plan and run options."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import torch

from medp2p.config import Config
from medp2p.data.case_reader import CaseKeys
from medp2p.data.prepare import Prep
from medp2p.device.precision import compile_for_inference, memory_format, resolve_device, resolve_precision
from medp2p.infer.checkpoint import generator_from_checkpoint, load_checkpoint
from medp2p.infer.volume import RunOptions
from medp2p.models.inference import optimize_for_inference
from medp2p.plan import Plan
from medp2p.tasks import Task


@dataclass
class Model:
    """A trained generator with what it needs to predict.

    Args:
        generator: the generator, in eval mode, on its device.
        plan: the plan it was trained with (its keys fixed: :meth:`Plan.for_model`).
        path: the checkpoint file.
        options: device, precision, batch size, layout, TTA.
        source_is_ct: whether the training sources were CTs in HU (None: not recorded).
    """

    generator: torch.nn.Module
    plan: Plan
    path: str
    options: RunOptions
    source_is_ct: bool | None = None

    def settings(self) -> dict[str, object]:
        """What predictions run with: the model, task, resolved device and precision, batch, TTA, versions (``predict.json``)."""
        from medp2p import __version__
        from medp2p.device.precision import resolved_settings

        o = self.options
        layout = torch.channels_last if o.channels_last else torch.contiguous_format
        return {
            "model": str(self.path),
            "task": self.task.name,
            **resolved_settings(o.device, o.dtype, layout),
            "batch_size": o.batch_size,
            "tta": o.flip_tta,
            "compiled": o.fixed_batch,
            "medp2p": __version__,
        }

    @property
    def prep(self) -> Prep:
        """The preparation of whole slices the generator was trained for."""
        return self.plan.inference_prep

    @property
    def cfg(self) -> Config:
        """The run's resolved config."""
        return self.plan.config

    @property
    def task(self) -> Task:
        """The task value."""
        return self.plan.task

    @property
    def keys(self) -> CaseKeys:
        """The case keys the model reads (missing-key messages name them)."""
        return self.plan.keys


def load_model(
    path: str | Path,
    device: str = "auto",
    batch_size: int | None = None,
    compile: bool = False,
    tta: bool = False,
    precision: str | None = None,
) -> Model:
    """Load a generator from a run folder (its ``best.pt``, else ``last.pt``) or a checkpoint file.

    The generator runs as :func:`~medp2p.models.inference.optimize_for_inference` rewrites it
    (batch norms folded, matmul transposed convolutions where oneDNN is slow: the same outputs).
    ``compile``: run it through :func:`~medp2p.device.precision.compile_for_inference` instead (frozen
    weights; a minute or more of compilation that pays over many volumes); every batch then has
    one size, the last padded, so nothing is compiled again.
    ``tta``: average each slice's output with that of its left-right mirror image
    (:attr:`RunOptions.flip_tta`; twice the generator time).
    ``precision``: ``auto``, ``fp32``, ``tf32``, ``bf16`` or ``fp16`` (CUDA only); None: the
    run's ``train.precision`` (``auto``: bf16 autocast where the CPU or GPU has bf16 units).

    A ``.onnx`` file written by ``medp2p export`` runs with onnxruntime on the CPU, float32, with
    the plan rebuilt from its metadata (the same preparation and decoding as the run); ``compile``
    and a precision other than ``auto`` / ``fp32`` are refused for it.

    Example:
        >>> model = load_model("runs/mri2ct")
        >>> sct = predict_volume(model.generator, read_volume("mr.nii.gz"), model.prep, options=model.options)
    """
    if str(path).endswith(".onnx"):
        return _load_onnx(Path(path), device, batch_size, compile, tta, precision)
    ckpt = load_checkpoint(path)
    generator, plan = generator_from_checkpoint(ckpt)
    dev = resolve_device(device)
    dtype = resolve_precision(dev, precision or plan.config.train.precision)
    layout = memory_format(dev, dtype, plan.config.train.channels_last, dims=plan.config.model.dims)
    generator = generator.to(dev).to(memory_format=layout).eval()  # type: ignore[call-overload]  # torch's stub lacks memory_format
    # Inductor folds and fuses on its own; eager prediction gets the same rewrite by hand
    generator = compile_for_inference(generator) if compile else optimize_for_inference(generator, inplace=True)
    options = RunOptions(dev, dtype, batch_size, layout == torch.channels_last, tta, fixed_batch=compile)  # one shape compiled
    profile = ckpt.get("data_profile") or {}
    return Model(generator, plan.for_model(), ckpt["path"], options, profile.get("source_is_ct"))


def _load_onnx(path: Path, device: str, batch_size: int | None, compile: bool, tta: bool, precision: str | None) -> Model:
    """An exported model: onnxruntime on the CPU in float32, the plan from the file's metadata."""
    from medp2p.infer.checkpoint import plan_from_checkpoint
    from medp2p.infer.onnx import OnnxGenerator, read_onnx_metadata

    if not path.is_file():
        raise ValueError(f"{path}: no such ONNX file")
    if compile:
        raise ValueError(f"{path}: --compile applies to torch models; an ONNX model runs with onnxruntime")
    if precision not in (None, "auto", "fp32"):
        raise ValueError(f"{path}: an ONNX model runs in float32 on the CPU; --precision {precision} applies to torch models")
    if device not in ("auto", "cpu"):
        raise ValueError(f"{path}: ONNX models run on the CPU here (onnxruntime's CPU provider); got --device {device}")
    ckpt = read_onnx_metadata(path)
    plan = plan_from_checkpoint(ckpt)
    options = RunOptions(torch.device("cpu"), None, batch_size, False, tta)
    profile = ckpt.get("data_profile") or {}
    return Model(OnnxGenerator(path), plan.for_model(), str(path), options, profile.get("source_is_ct"))
