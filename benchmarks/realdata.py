"""The real-data protocols of docs/results.md (medp2p.eval.protocols), from the command line.

    python benchmarks/realdata.py mri2ct   # mridir_phantom, slab split both ways          (~2 x 28 min)
    python benchmarks/realdata.py seg      # brats2015_deepmedic 4-fold rotation           (~4 x 7 min)
    python benchmarks/realdata.py inpaint  # kirby21 + BraTS train, stroke_cstar + BraTS test
    python benchmarks/realdata.py mr2mr    # kirby21 -> stroke_cstar T1->T2, T1->FLAIR; BraTS FLAIR->T1c (~3 x 28 min)

    python benchmarks/realdata.py mri2ct --uncertainty --members 3   # ensembles and uncertainty (issue 24)
    python benchmarks/realdata.py mri2ct --dims 3 --work runs/realdata_3d   # the 3D configs (issue 26)

Data: ``$MEDP2P_SHARED_DATA`` (default ``../shared/data``).
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

from medp2p.eval.protocols import MRIDIR_SPLITS, ProtocolOptions, run_inpaint, run_mr2mr, run_mri2ct, run_seg, shared_data, table


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("task", choices=["mri2ct", "seg", "inpaint", "mr2mr"])
    parser.add_argument("--work", type=Path, default=Path("runs/realdata"), help="Where runs, predictions and reports go.")
    parser.add_argument("--quick", action="store_true", help="The short protocol the realdata tests run.")
    parser.add_argument("--splits", nargs="+", help="mri2ct / mr2mr: which splits (default all).")
    parser.add_argument("--folds", nargs="+", type=int, default=[0, 1, 2, 3], help="seg: which folds.")
    parser.add_argument(
        "--reuse", action="store_true", help="Keep runs that finished (WORK/.../run/train_s.txt): predict and evaluate only."
    )
    parser.add_argument(
        "--set", dest="sets", action="append", default=[], metavar="KEY=VALUE", help="Config override for every training (repeatable)."
    )
    parser.add_argument("--tta", action="store_true", help="Predict with medp2p predict --tta (left-right mirror averaging).")
    parser.add_argument(
        "--uncertainty", action="store_true", help="Predict with --uncertainty; the reports gain spearman, top10_error_ratio, ause."
    )
    parser.add_argument(
        "--members", type=int, default=1, help="Train this many models per split (seeds 0..N-1) and predict with their ensemble."
    )
    parser.add_argument(
        "--dims", type=int, choices=(2, 3), default=2, help="3: train the protocols' 3D configs (configs/*_3d.yaml) instead."
    )
    args = parser.parse_args()
    if not shared_data().is_dir():
        sys.exit(f"real data not found at {shared_data()} (set MEDP2P_SHARED_DATA)")
    predict = ("--tta",) * args.tta + ("--uncertainty",) * args.uncertainty
    opts = ProtocolOptions(args.work, args.quick, args.reuse, tuple(args.sets), predict, members=args.members, dims=args.dims)
    if args.task == "mri2ct":
        result = run_mri2ct(opts, tuple(args.splits or [s[0] for s in MRIDIR_SPLITS]))
    elif args.task == "seg":
        result = run_seg(opts, tuple(args.folds))
    elif args.task == "inpaint":
        result = run_inpaint(opts)
    else:
        result = run_mr2mr(opts, tuple(args.splits or ("t1_to_t2", "t1_to_flair", "flair_to_t1c")))
    print(table(result))


if __name__ == "__main__":
    main()
