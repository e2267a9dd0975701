"""Classical error-bounded compressors used as reference points (SZ3 through ``pysz``)."""

from __future__ import annotations

import numpy as np


def sz3_at_psnr(block, psnr_db):
    """Compress a block with SZ3 in its PSNR error-bound mode.

    Parameters
    ----------
    block : ndarray
        Any shape; compressed as float32.
    psnr_db : float
        Target PSNR (dB) against the block's own value range (SZ3's definition).

    Returns
    -------
    nbytes : int
        Compressed size.
    reconstruction : ndarray, float32, same shape as ``block``

    Notes
    -----
    SZ3: Liang et al., "SZ3: A modular framework for composing prediction-based error-bounded
    lossy compressors", IEEE Trans. Big Data 2022; Python binding ``pysz``.
    """
    import pysz

    data = np.ascontiguousarray(block, dtype=np.float32)
    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(psnr_db)
    comp, _ = pysz.sz.compress(data, cfg)
    rec, _ = pysz.sz.decompress(comp, np.float32, data.shape)
    return int(comp.nbytes), rec
