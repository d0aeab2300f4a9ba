"""Evaluation: challenge metrics per case, summaries, and pictures people can look at.

Example:
    >>> from medp2p.eval import evaluate
    >>> evaluate("mri2ct", "out/", "data/test/", "report/").summary["metrics"]["mae"]
"""

from medp2p.eval.baseline import IntensityLookup, ThresholdSegmenter, mean_fill, mean_hu
from medp2p.eval.evaluate import EvalReport, ReportExistsError, evaluate, evaluate_case
from medp2p.eval.montage import case_montage

__all__ = [
    "EvalReport",
    "ReportExistsError",
    "IntensityLookup",
    "ThresholdSegmenter",
    "mean_fill",
    "mean_hu",
    "case_montage",
    "evaluate",
    "evaluate_case",
]
