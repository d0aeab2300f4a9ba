"""Training: ``train`` runs a whole pix2pix run; ``Pix2PixStep`` is one readable step.

Example:
    >>> from medp2p.config import load_config
    >>> from medp2p.train import train
    >>> result = train(load_config("mri2ct", "configs/tiny.yaml"), "phantom/", "runs/tiny")
"""

from medp2p.train.run import RUN_ARTIFACTS, RunExistsError, TrainResult, loss_spec, train
from medp2p.train.steps import LossSpec, NonFiniteLossError, Pix2PixStep

__all__ = ["LossSpec", "NonFiniteLossError", "Pix2PixStep", "RUN_ARTIFACTS", "RunExistsError", "TrainResult", "loss_spec", "train"]
