"""Memory order of volumes: NIfTI stores voxels in Fortran order, medp2p works in C order.

A whole-array ``np.ascontiguousarray`` of a Fortran-ordered volume strides through memory one
voxel at a time on one side; copying blocks of a few planes along the fast axis of the output
keeps both sides in cache, about 1.7x faster for a 256x256x64 or 512x512x94 float32 volume
(docs/results.md, "Pipelined predict"). The values are copied, never computed: the result
equals numpy's to the bit.
"""

from __future__ import annotations

import numpy as np

#: Planes copied at a time along the output's fast axis.
BLOCK = 8


def c_order(array: np.ndarray) -> np.ndarray:
    """``array`` in C order (itself when it already is), copied block by block from Fortran order.

    Example:
        >>> mr = c_order(img.get_fdata(dtype=np.float32))   # nibabel gives Fortran order
    """
    array = np.asarray(array)
    if array.flags.c_contiguous or not array.flags.f_contiguous:  # 1D and 0D arrays are both or neither
        return np.ascontiguousarray(array)
    out = np.empty(array.shape, array.dtype, order="C")
    for start in range(0, array.shape[-1], BLOCK):
        out[..., start : start + BLOCK] = array[..., start : start + BLOCK]
    return out
