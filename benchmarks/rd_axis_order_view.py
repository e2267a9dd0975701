"""A baseline run on the stream codec's axis order, for ``rate_distortion.py`` (``sz3_axis_order``,
``sz3_closed_loop_axis_order``).

The stream codec chooses the axis order its kernels see (``analytics/stream_codec/axis_order.py``); on a
field whose smooth axes are not its last ones (the gyrokinetic mock) the order alone changes the
ratio several-fold, for SZ3 too. These methods give SZ3 the first frame's order
(``choose_axis_order(frames[0])``, fixed for the stream: what a user could configure once), as the 3-D
view of the transposed field, so that the gain of the order and the gain of the codec can be told
apart. Fields whose order ``choose_axis_order`` keeps run as the plain methods.
"""

from __future__ import annotations

import numpy as np

from stagelearn.analytics.stream_codec.axis_order import choose_axis_order, from_kernel, kernel_shape, to_kernel
from stagelearn.analytics.stream_codec.interpolation import as_3d_shape


def run_in_axis_order(given, run):
    """``run(frames)`` on ``given`` transposed into ``choose_axis_order(given[0])``'s order (3-D views).

    Parameters
    ----------
    given : list of ndarray
        The frames as the simulation gives them.
    run : callable
        ``run(frames) -> (total_bytes, recs)`` (e.g. ``run_per_frame`` with its other arguments bound).

    Returns
    -------
    total : int
    recs : list of ndarray
        The reconstructions in ``given``'s axis order and shape.
    """
    order = choose_axis_order(given[0])
    kshape = kernel_shape(given[0].shape, order)
    total, recs = run([to_kernel(g, order).reshape(as_3d_shape(kshape)) for g in given])
    return total, [from_kernel(np.reshape(r, kshape), order) for r in recs]
