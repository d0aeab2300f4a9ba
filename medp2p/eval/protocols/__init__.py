"""The real-data protocols of docs/results.md: train, predict and evaluate with the public CLI.

Each protocol writes its datalists, runs, predictions and reports under ``ProtocolOptions.work``
(never into the repository), scores the trivial baselines through the same ``evaluate`` code, and
returns a :class:`Result` (also written as ``results.json``). ``quick`` runs the short version the
``realdata`` tests use. ``benchmarks/realdata.py`` is the command line over them. Data:
``$MEDP2P_SHARED_DATA`` (default ``../shared/data``).

Example:
    >>> result = run_mri2ct(ProtocolOptions(Path("runs/realdata")), splits=("lower_to_upper",))
    >>> print(table(result))
"""

from medp2p.eval.protocols.common import ProtocolOptions, Result, shared_data, table
from medp2p.eval.protocols.inpaint import run_inpaint
from medp2p.eval.protocols.mr2mr import run_mr2mr
from medp2p.eval.protocols.mri2ct import MRIDIR_SPLITS, run_mri2ct
from medp2p.eval.protocols.seg import run_seg

__all__ = ["MRIDIR_SPLITS", "ProtocolOptions", "Result", "run_inpaint", "run_mr2mr", "run_mri2ct", "run_seg", "shared_data", "table"]
