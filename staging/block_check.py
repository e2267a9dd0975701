"""Checking a block read from the stream against the writer's own metadata before it is trusted.

ADIOS2 records, per block, the minimum and maximum the writer computed when it put the block
(``Engine.BlocksInfo``: ``Min``, ``Max``). A block whose values cannot have those extremes was
damaged in transit (a late SST reader can be handed garbage blocks by ADIOS2 itself; a
mismatched data plane delivers zeros). :func:`check_block` says why a block is corrupt, or None;
staging stores the block as it came, keeps it out of the learner, flags it ``corrupt`` (with the
reason) in the ledger and the summary, and ends with :class:`CorruptDataError` (exit 1).
"""

from __future__ import annotations

import math

import numpy as np

from .errors import StagelearnError


class CorruptDataError(StagelearnError):
    """Some blocks did not match their writer's metadata (stored, flagged ``corrupt`` in the ledger)."""


def writer_extent(info):
    """``(min, max)`` the writer recorded for a block (``BlocksInfo`` entry), or None when absent or not finite."""
    try:
        lo, hi = float(info["Min"]), float(info["Max"])
    except (KeyError, TypeError, ValueError):
        return None
    return (lo, hi) if math.isfinite(lo) and math.isfinite(hi) and lo <= hi else None


def check_block(data, info):
    """Why ``data`` cannot be the block the writer described in ``info``, or None.

    Parameters
    ----------
    data : ndarray
        The block as read (its own dtype, before any cast).
    info : dict
        The block's ``BlocksInfo`` entry (``Min``, ``Max`` strings).

    Returns
    -------
    str or None
        ``infinite values ...``, ``all zeros ...`` or ``values outside ...``; None when the block
        agrees with the writer's extremes, or when there is nothing to judge by: the writer recorded
        no finite extremes, or the block holds NaN (ADIOS2's min/max skip NaN unreliably).
    """
    extent = writer_extent(info)
    data = np.asarray(data)
    if extent is None or data.size == 0 or data.dtype.kind not in "fiu":
        return None
    lo, hi = extent
    values = data.astype(np.float64, copy=False)
    if np.isnan(values).any():
        return None  # ADIOS2's min/max of a block holding NaN are not reliable: nothing to judge by
    inf = int(np.isinf(values).sum())
    if inf:  # the writer's min/max would be infinite
        return f"{inf} infinite values; the writer's BlocksInfo min/max are finite [{lo:.6g}, {hi:.6g}]"
    if not values.any() and not (lo == 0.0 and hi == 0.0):
        return f"all zeros; the writer's BlocksInfo min/max are [{lo:.6g}, {hi:.6g}]"
    vmin, vmax = float(values.min()), float(values.max())
    # the writer's min/max travel as text with 6 significant digits: half a unit in the 6th digit, doubled
    if vmin < lo - 1e-5 * abs(lo) or vmax > hi + 1e-5 * abs(hi):
        return (f"values in [{vmin:.6g}, {vmax:.6g}] outside the writer's BlocksInfo min/max "
                f"[{lo:.6g}, {hi:.6g}]")
    return None
