"""Inference: whole volumes through a trained generator, written on the input's own grid.

Example:
    >>> from medp2p.infer import load_model, predict_volume
    >>> model = load_model("runs/mri2ct")
    >>> sct = predict_volume(model.generator, read_volume("mr.nii.gz"), model.prep, options=model.options)
"""

from medp2p.infer.batch import (
    FORMATS,
    Model,
    OutputExistsError,
    PredictReport,
    load_model,
    partition,
    predict_case,
    predict_cases,
    resolve_inputs,
)
from medp2p.tasks.predict import RunOptions, predict_volume

__all__ = [
    "FORMATS",
    "Model",
    "OutputExistsError",
    "PredictReport",
    "RunOptions",
    "load_model",
    "partition",
    "predict_case",
    "predict_cases",
    "predict_volume",
    "resolve_inputs",
]
