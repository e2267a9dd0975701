"""The report row of one block, raw or coded: the one place producers and in-transit staging build it.

The row's schema is the stream contract (:func:`stagelearn.staging.wire.make_report`); the numbers
of a coded block come from :class:`stagelearn.analytics.step_encode.BlockCode`. Also the record
of a raw block as the stream writer and the fallback file take it.
"""

from __future__ import annotations

import math

import numpy as np

from ..analytics.metrics import ErrorStats, psnr_from_mse
from ..analytics.step_encode import finite_range
from .wire import make_report


def raw_report(step, rank, block, given=None):
    """Report row of a block sent raw: its bytes, the range of its finite values and the error of the wire values.

    A raw block is exact only when the caller's values survive the float32 wire dtype bit for bit:
    ``given`` (the caller's own values, in their dtype) is what the error is measured against, and
    ``raw_bytes`` is its size in that dtype (float64 data counts 8 bytes a value; ``sent_bytes`` the
    float32 that travels).

    Parameters
    ----------
    step, rank : int
    block : ndarray of float32
        The block as it travels.
    given : ndarray, optional
        The caller's values (any real dtype, same shape). Default: ``block`` (exact by definition).

    Returns
    -------
    row : ndarray of shape (len(REPORT_FIELDS),), float64
    """
    if given is None or np.asarray(given).dtype == block.dtype:
        lo, hi = finite_range(block)
        return make_report(step=step, rank=rank, raw_bytes=block.nbytes, sent_bytes=block.nbytes, n=block.size,
                           vmin=lo, vmax=hi, local_psnr_db=math.inf)
    given = np.asarray(given)
    st = ErrorStats.from_arrays(given, block)
    return make_report(step=step, rank=rank, raw_bytes=given.nbytes, sent_bytes=block.nbytes, sse=st.sse,
                       n=block.size, max_abs_error=st.max_abs_error, vmin=st.vmin, vmax=st.vmax,
                       local_psnr_db=psnr_from_mse(st.mse, st.data_range))


def coded_report(step, rank, encoder_version, block, code, given=None, *, closed_loop=None, encode_s=0.0,
                 interval_s=0.0):
    """Report row of a coded block.

    Parameters
    ----------
    step, rank, encoder_version : int
    block : ndarray of float32
        The block as it travels (its size is counted).
    code : BlockCode
        :func:`~stagelearn.analytics.step_encode.encode_step_block`'s result for ``block`` (its
        error is measured against the caller's values).
    given : ndarray, optional
        The caller's values: ``raw_bytes`` is their size in their own dtype (default: ``block``'s float32 bytes).
    closed_loop : ClosedLoopSample, optional
        SZ3 in closed loop on this block at the PSNR reached
        (:meth:`~stagelearn.analytics.sz3_closed_loop.ClosedLoopSZ3.update`): ``sz3_cl_bytes``, ``sz3_cl_sse``,
        ``sz3_cl_setting``.
    encode_s, interval_s : float, default=0.0
        Coding time of the block and the step interval (see :data:`~.wire.REPORT_FIELDS`).

    Returns
    -------
    row : ndarray of shape (len(REPORT_FIELDS),), float64
    """
    st = code.stats
    cl = closed_loop
    raw_bytes = (block if given is None else np.asarray(given)).nbytes
    return make_report(step=step, rank=rank, encoder_version=encoder_version, raw_bytes=raw_bytes,
                       sent_bytes=code.sent_bytes, sse=st.sse, n=block.size, max_abs_error=st.max_abs_error,
                       vmin=st.vmin, vmax=st.vmax, n_raw_tiles=code.n_raw_tiles, sz3_bytes=code.sz3_bytes,
                       sz3_sse=code.sz3_sse, local_psnr_db=code.local_psnr_db, n_flagged=code.n_flagged,
                       anomaly_bytes=code.anomaly_bytes, sz3_cl_bytes=cl.nbytes if cl is not None else 0.0,
                       sz3_cl_sse=cl.sse if cl is not None else 0.0,
                       sz3_cl_setting=cl.setting if cl is not None else 0.0, encode_s=encode_s, interval_s=interval_s)


def raw_record(name, step, rank, block, shape, start, given=None):
    """The record of a block sent raw, as :class:`~.stream_writer.StreamWriter` and the fallback file take it.

    Parameters
    ----------
    name : str
        The variable.
    step, rank : int
    block : ndarray of float32
        This rank's block (possibly empty).
    shape, start : tuple of int
        The variable's global shape and this rank's offset.
    given : ndarray, optional
        The caller's values in their own dtype: the report's error is measured against them (:func:`raw_report`).

    Returns
    -------
    record : dict
        ``var``, ``raw``, ``report``, ``shape``, ``start``, ``count``.
    """
    return {"var": name, "raw": block, "report": raw_report(step, rank, block, given), "shape": shape, "start": start,
            "count": block.shape}
