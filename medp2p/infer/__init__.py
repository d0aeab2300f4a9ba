"""Inference: whole volumes through a trained generator, written on the input's own grid.

Example:
    >>> from medp2p.infer import load_model, predict_volume
    >>> model = load_model("runs/mri2ct")
    >>> sct = predict_volume(model.generator, read_volume("mr.nii.gz"), model.prep, options=model.options)
"""

from medp2p.infer.batch import (
    FORMATS,
    ModalityMismatchError,
    OutputExistsError,
    predict_case,
    predict_cases,
)
from medp2p.infer.checkpoint import (
    CHECKPOINT_VERSION,
    CheckpointError,
    generator_from_checkpoint,
    load_checkpoint,
    plan_from_checkpoint,
    save_checkpoint,
)
from medp2p.infer.inputs import partition, resolve_inputs
from medp2p.infer.model import Model, load_model
from medp2p.infer.records import PredictReport
from medp2p.infer.volume import AUTO_BATCH, AUTO_BATCH_PIXELS, RunOptions, predict_volume, run_slices

__all__ = [
    "AUTO_BATCH",
    "AUTO_BATCH_PIXELS",
    "CHECKPOINT_VERSION",
    "FORMATS",
    "CheckpointError",
    "ModalityMismatchError",
    "Model",
    "OutputExistsError",
    "PredictReport",
    "RunOptions",
    "generator_from_checkpoint",
    "load_checkpoint",
    "load_model",
    "partition",
    "plan_from_checkpoint",
    "predict_case",
    "predict_cases",
    "predict_volume",
    "resolve_inputs",
    "run_slices",
    "save_checkpoint",
]
