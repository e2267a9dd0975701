"""The report row of one block, raw or coded: the one place producers and in-transit staging build it.

The row's schema is the stream contract (:func:`stagelearn.staging.wire.make_report`); the numbers
of a coded block come from :class:`stagelearn.analytics.step_encode.BlockCode`. Also the record
of a raw block as the stream writer and the fallback file take it.
"""

from __future__ import annotations

import math

from ..analytics.step_encode import finite_range
from .wire import make_report


def raw_report(step, rank, block):
    """Report row of a block sent raw (lossless): its bytes and the range of its finite values.

    Parameters
    ----------
    step, rank : int
    block : ndarray of float32

    Returns
    -------
    row : ndarray of shape (len(REPORT_FIELDS),), float64
    """
    lo, hi = finite_range(block)
    return make_report(step=step, rank=rank, raw_bytes=block.nbytes, sent_bytes=block.nbytes, n=block.size,
                       vmin=lo, vmax=hi, local_psnr_db=math.inf)


def coded_report(step, rank, encoder_version, block, code):
    """Report row of a coded block.

    Parameters
    ----------
    step, rank, encoder_version : int
    block : ndarray of float32
        The block as it travels (its size and float32 bytes are counted).
    code : BlockCode
        :func:`~stagelearn.analytics.step_encode.encode_step_block`'s result for ``block``.

    Returns
    -------
    row : ndarray of shape (len(REPORT_FIELDS),), float64
    """
    st = code.stats
    return make_report(step=step, rank=rank, encoder_version=encoder_version, raw_bytes=block.nbytes,
                       sent_bytes=code.sent_bytes, sse=st.sse, n=block.size, max_abs_error=st.max_abs_error,
                       vmin=st.vmin, vmax=st.vmax, n_raw_tiles=code.n_raw_tiles, sz3_bytes=code.sz3_bytes,
                       sz3_sse=code.sz3_sse, local_psnr_db=code.local_psnr_db, n_flagged=code.n_flagged,
                       anomaly_bytes=code.anomaly_bytes)


def raw_record(name, step, rank, block, shape, start):
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

    Returns
    -------
    record : dict
        ``var``, ``raw``, ``report``, ``shape``, ``start``, ``count``.
    """
    return {"var": name, "raw": block, "report": raw_report(step, rank, block), "shape": shape, "start": start,
            "count": block.shape}
