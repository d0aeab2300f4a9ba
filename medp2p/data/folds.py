"""K-fold splits by case, as nnU-Net makes them, so that folds of different runs (and of nnU-Net) agree.

nnU-Net's ``generate_crossval_split``: scikit-learn's ``KFold(n_splits=k, shuffle=True,
random_state=seed)`` over the sorted case ids, written as a list of ``{"train": [ids], "val":
[ids]}`` (``splits_final.json``). This is that computation without scikit-learn: the indices
``0..n-1`` shuffled by ``numpy.random.RandomState(seed)``, cut into ``k`` consecutive folds (the
first ``n % k`` one case larger), each fold's ids and the rest's in sorted order.

Example:
    >>> kfold_splits(["c", "a", "b", "d"], 2, seed=12345)[0]["val"]
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np

#: nnU-Net's default seed for its splits.
NNUNET_SEED = 12345


def kfold_splits(ids: Sequence[str], k: int, seed: int = NNUNET_SEED) -> list[dict[str, list[str]]]:
    """``k`` folds of the cases ``ids``: ``[{"train": [...], "val": [...]}, ...]``, every case in exactly one ``val``.

    Raises:
        ValueError: fewer than 2 folds, more folds than cases, or repeated ids.
    """
    keys = sorted(str(i) for i in ids)
    n = len(keys)
    if k < 2 or k > n:
        raise ValueError(f"--folds must be between 2 and the number of training cases ({n}), got {k}")
    if len(set(keys)) != n:
        raise ValueError("case ids must be unique to split them into folds")
    order = np.arange(n)
    np.random.RandomState(seed).shuffle(order)
    sizes = np.full(k, n // k)
    sizes[: n % k] += 1
    splits, start = [], 0
    for size in sizes:
        held = np.zeros(n, bool)
        held[order[start : start + size]] = True
        start += size
        splits.append({"train": [keys[i] for i in np.flatnonzero(~held)], "val": [keys[i] for i in np.flatnonzero(held)]})
    return splits
