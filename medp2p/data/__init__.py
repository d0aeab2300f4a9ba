"""Datasets: case lists from every accepted layout, validation, and the synthetic phantom.

Example:
    >>> from medp2p.data import load_datalist, validate_data, write_phantom
    >>> write_phantom("phantom", cases=4, seed=0)
    >>> validate_data("phantom", required_keys=["mr", "ct", "mask"]).ok
    True
"""

from medp2p.data.cases import (
    DEFAULT_LABEL_VALUES,
    Case,
    DataLayoutError,
    case_seed,
    find_cases,
    image_keys,
    label_values,
    load_datalist,
    safe_case_id,
)
from medp2p.data.phantom import PhantomSpec, make_phantom_case, write_phantom
from medp2p.data.validate import GridTolerance, Problem, ValidationReport, check_volume, compare_grids, validate_case, validate_data

__all__ = [
    "DEFAULT_LABEL_VALUES",
    "Case",
    "case_seed",
    "safe_case_id",
    "DataLayoutError",
    "GridTolerance",
    "PhantomSpec",
    "Problem",
    "ValidationReport",
    "check_volume",
    "compare_grids",
    "find_cases",
    "image_keys",
    "label_values",
    "load_datalist",
    "make_phantom_case",
    "validate_case",
    "validate_data",
    "write_phantom",
]
