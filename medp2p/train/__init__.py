"""Training: ``train`` runs a whole pix2pix run; its pieces are public so benchmarks build the same step.

``build_trainer(plan, device)`` (networks, optimisers, seeded streams), ``restore`` (exact
resume), ``TimeBudget`` (``train.minutes``), ``fit`` (the loop), ``training_batch`` (one batch
as training draws it), ``Pix2PixStep`` (one readable step).

Example:
    >>> from medp2p.config import load_config
    >>> from medp2p.train import train
    >>> result = train(load_config("mri2ct", "configs/tiny.yaml"), "phantom/", "runs/tiny")
"""

from medp2p.models import LossSpec
from medp2p.train.batches import training_batch
from medp2p.train.budget import TimeBudget, fit_schedule
from medp2p.train.data import TrainingData, load_training_data
from medp2p.train.folder import RUN_ARTIFACTS, RunExistsError
from medp2p.train.loop import TrainResult, fit
from medp2p.train.run import train, training_device
from medp2p.train.steps import NonFiniteLossError, Pix2PixStep
from medp2p.train.trainer import Trainer, build_trainer, make_optimizer, restore

__all__ = [
    "RUN_ARTIFACTS",
    "LossSpec",
    "NonFiniteLossError",
    "Pix2PixStep",
    "RunExistsError",
    "TimeBudget",
    "TrainResult",
    "Trainer",
    "TrainingData",
    "build_trainer",
    "fit",
    "fit_schedule",
    "load_training_data",
    "make_optimizer",
    "restore",
    "train",
    "training_batch",
    "training_device",
]
