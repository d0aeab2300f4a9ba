"""ONNX export of a run's generator, and an onnxruntime generator that the predict pipeline runs.

``medp2p export --model RUN -o model.onnx`` writes the generator in float32 (eval mode, batch
norms folded into the convolutions they follow) with a dynamic batch and dynamic slice sizes.
The U-Net halves the slice at every level, so height and width must be multiples of the run's
``size_multiple`` (``onnx_contract`` says which); ``medp2p predict`` pads every slice to it.

The ONNX metadata (``metadata_props``) hold:

- ``medp2p.contract``: JSON for a deployment team: the task, input / output names and layout
  (``NCHW`` float32 in model space), input channels (source images x context slices), the slice
  axis, the working spacing, the MR window percentiles, the target window, the output's final
  activation and codec, and the size multiple;
- ``medp2p.checkpoint``: JSON of the checkpoint's non-weight parts (resolved config, step, best,
  data profile), from which ``medp2p predict --model model.onnx`` rebuilds the run's plan, so the
  same preparation, windows and decoding apply as for the run itself.

onnxruntime is an optional extra (``pip install medp2p[onnx]``).
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from medp2p.infer.checkpoint import generator_from_checkpoint, load_checkpoint
from medp2p.io.atomic import atomic_path
from medp2p.models.inference import fold_batch_norm
from medp2p.models.losses import SCALE_RANGE

#: The checkpoint entries carried in the metadata (everything but weights and optimiser states).
CHECKPOINT_KEYS = ("version", "step", "config", "best", "data_profile")
INPUT_NAME, OUTPUT_NAME = "slices", "output"
OPSET = 17


def onnx_contract(plan: Any, channels: int) -> dict[str, Any]:
    """What the exported network expects and returns, for code that runs it without medp2p."""
    prep, task = plan.inference_prep, plan.task
    return {
        "task": task.name,
        "input": {"name": INPUT_NAME, "layout": "NCHW", "dtype": "float32", "channels": channels, "space": "model ([-1, 1])"},
        "output": {
            "name": OUTPUT_NAME,
            "final_activation": prep.codec.final_activation,
            "logits": bool(prep.codec.logits),
            "codec": prep.codec.name,
            "channels": plan.losses.out_channels,
            # loss.aleatoric: channel 1 is a Laplace error scale, its tanh output mapped log-linearly onto this range
            "error_scale_range": list(SCALE_RANGE) if plan.losses.learns_scale else None,
        },
        "source_keys": list(prep.source_keys),
        "target_key": prep.target_key,
        "slice_axis": prep.axis,
        "context_slices": prep.context_slices,
        "spacing_mm": prep.spacing_mm,
        "mr_percentiles": list(prep.mr_percentiles),
        "target_window": None if prep.target_window is None else list(prep.target_window),
        "size_multiple": prep.size_multiple,
        "min_size": list(prep.min_size),
        "region_input": bool(prep.region),
        "patch_size": None if prep.patch_size is None else list(prep.patch_size),
    }


def export_onnx(model: str | Path, out: str | Path) -> Path:
    """Write the run's generator as ONNX with its contract and checkpoint in the metadata; returns ``out``.

    Example:
        >>> export_onnx("runs/mri2ct", "sct.onnx")
    """
    ckpt = load_checkpoint(model)
    generator, plan = generator_from_checkpoint(ckpt)
    return export_generator(generator, plan, {k: ckpt[k] for k in CHECKPOINT_KEYS if k in ckpt}, out)


def export_generator(generator: nn.Module, plan: Any, checkpoint: dict[str, Any], out: str | Path) -> Path:
    """Write ``generator`` (for ``plan``) as ONNX, with ``checkpoint`` (JSON-able entries) in the metadata; returns ``out``."""
    import onnx

    generator = generator.float().eval()
    fold_batch_norm(generator)  # the exporter folds only norms right after a convolution node
    channels = int(plan.generator.kwargs["in_channels"])  # what the generator was built with
    patch = plan.inference_prep.patch_size
    if patch is not None:  # 3D: windows of the training patch (sliding-window prediction)
        example = torch.zeros(2, channels, *patch)
        dynamic = {0: "batch", 2: "depth", 3: "height", 4: "width"}
    else:
        m = plan.inference_prep.size_multiple
        side = max(m * 2, *plan.inference_prep.min_size)
        example = torch.zeros(2, channels, side, side)
        dynamic = {0: "batch", 2: "height", 3: "width"}
    out = Path(out)
    with atomic_path(out) as tmp:
        with torch.no_grad(), warnings.catch_warnings():
            warnings.simplefilter("ignore")  # the TorchScript exporter's deprecation and tracer notes
            torch.onnx.export(
                generator,
                (example,),
                str(tmp),
                dynamo=False,
                input_names=[INPUT_NAME],
                output_names=[OUTPUT_NAME],
                dynamic_axes={INPUT_NAME: dynamic, OUTPUT_NAME: dynamic},
                opset_version=OPSET,
                do_constant_folding=True,
            )
        proto = onnx.load(str(tmp))
        meta = {
            "medp2p.contract": json.dumps(onnx_contract(plan, channels)),
            "medp2p.checkpoint": json.dumps(checkpoint),
        }
        for key, value in meta.items():
            entry = proto.metadata_props.add()
            entry.key, entry.value = key, value
        proto.producer_name = "medp2p"
        onnx.checker.check_model(proto)
        onnx.save(proto, str(tmp))
    return out


class OnnxGenerator(nn.Module):
    """An exported generator run by onnxruntime, callable like the torch one (``NCHW`` float32 tensors)."""

    def __init__(self, path: str | Path, providers: list[str] | None = None) -> None:
        super().__init__()
        try:
            import onnxruntime as ort  # type: ignore[import-untyped]
        except ImportError as exc:  # pragma: no cover - the extra is missing
            raise RuntimeError(f"{path}: running an ONNX model needs onnxruntime: pip install 'medp2p[onnx]'") from exc
        options = ort.SessionOptions()
        options.intra_op_num_threads = torch.get_num_threads()
        self.session = ort.InferenceSession(str(path), options, providers=providers or ["CPUExecutionProvider"])
        self.path = str(path)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        """The network's output for a batch of slices."""
        inputs = np.ascontiguousarray(x.detach().to("cpu", torch.float32).numpy())
        (y,) = self.session.run([OUTPUT_NAME], {INPUT_NAME: inputs})
        return torch.from_numpy(y).to(x.device)


def read_onnx_metadata(path: str | Path) -> dict[str, Any]:
    """The checkpoint entries an exported model carries (with ``path``), and its contract under ``contract``.

    Raises:
        ValueError: the file is not a medp2p export (no ``medp2p.checkpoint`` metadata).
    """
    import onnx

    proto = onnx.load(str(path), load_external_data=False)
    meta = {p.key: p.value for p in proto.metadata_props}
    if "medp2p.checkpoint" not in meta:
        raise ValueError(f"{path}: not a medp2p export (no medp2p.checkpoint metadata); export runs with `medp2p export`")
    ckpt: dict[str, Any] = json.loads(meta["medp2p.checkpoint"])
    ckpt["path"] = str(path)
    ckpt["contract"] = json.loads(meta.get("medp2p.contract", "{}"))
    return ckpt
