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
    shape = data.shape
    data = sz3_view(data)
    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(psnr_db)
    comp, _ = pysz.sz.compress(data, cfg)
    rec, _ = pysz.sz.decompress(comp, np.float32, data.shape)
    return int(comp.nbytes), rec.reshape(shape)


#: dB within which :func:`sz3_matched_psnr` matches SZ3's achieved PSNR to the target.
PSNR_MATCH_DB = 0.5
#: :func:`sz3_match` with ``prefer_match``: settings scanned either side of the nearest run when the
#: first runs miss the window (dB), and the scan's step.
SCAN_DB, SCAN_STEP_DB = 2.0, 0.25


def block_psnr(reference, reconstruction):
    """PSNR (dB) of ``reconstruction`` against ``reference``'s own value range (inf when exact)."""
    ref = np.asarray(reference, dtype=np.float64)
    d = (np.asarray(reconstruction, dtype=np.float64) - ref).ravel()
    mse = float(d @ d) / max(d.size, 1)
    span = float(ref.max() - ref.min()) if ref.size else 0.0
    if mse == 0.0:
        return float("inf")
    return 20.0 * np.log10(span) - 10.0 * np.log10(mse) if span > 0 else float("-inf")


def sz3_matched_psnr(block, psnr_db, *, match_db=PSNR_MATCH_DB, max_tries=4):
    """SZ3 at the PSNR it actually reaches on ``block``: matched to ``psnr_db`` within ``match_db``.

    SZ3's PSNR mode turns the target into a pointwise bound as if errors were uniform and
    typically overshoots it by several dB (a smaller ratio than at the PSNR asked). The setting
    is moved by the overshoot (``setting -= achieved - psnr_db``, at most ``max_tries`` runs of
    :func:`sz3_at_psnr`) until the achieved PSNR, measured against the float32 block's own range,
    is within ``match_db``; of the runs that reach at least ``psnr_db - match_db``, the smallest is
    returned (else the run with the highest PSNR).

    Parameters
    ----------
    block : ndarray
        Any shape; compressed as float32.
    psnr_db : float
        The PSNR to match (dB, against the block's own value range).
    match_db : float, default=PSNR_MATCH_DB
    max_tries : int, default=4

    Returns
    -------
    nbytes : int
    reconstruction : ndarray, float32, same shape as ``block``
    """
    nbytes, rec, _, _ = sz3_match(block, psnr_db, match_db=match_db, max_tries=max_tries)
    return nbytes, rec


def sz3_match(block, psnr_db, *, setting=None, match_db=PSNR_MATCH_DB, max_tries=4, prefer_match=False,
              carry_db=None):
    """:func:`sz3_matched_psnr` starting from a given SZ3 PSNR setting; also the setting and PSNR reached.

    A caller that matches the same kind of block step after step (the closed-loop reference,
    :mod:`.sz3_closed_loop`) starts from the setting that matched last time and usually needs one run.

    Parameters
    ----------
    block : ndarray
        Any shape; compressed as float32.
    psnr_db : float
        The PSNR to match (dB, against the block's own value range).
    setting : float, optional
        SZ3's PSNR setting of the first run (default ``psnr_db``).
    match_db, max_tries
        As :func:`sz3_matched_psnr`.
    prefer_match : bool, default=False
        When the first runs miss the window, scan settings ``SCAN_STEP_DB`` apart up to ``SCAN_DB``
        either side of the nearest run until one lands in it (at most 16 more runs). Return the
        smallest run within ``match_db`` of ``psnr_db`` when there is one, even if a run
        above the window is smaller (SZ3 on small blocks is not monotonic in its setting); else as
        :func:`sz3_matched_psnr`. A comparison that must be at matched PSNR uses it.
    carry_db : float, optional
        With ``prefer_match``, when no run lands within the window (SZ3's PSNR jumps over it as
        the setting moves): the sum of the earlier deviations (achieved minus target, dB) of the
        same series; of the nearest run above the window and the nearest below, the one that
        brings that sum nearest 0 is returned, so that the series' mean stays matched though one
        block is above or below.

    Returns
    -------
    nbytes : int
    reconstruction : ndarray, float32, same shape as ``block``
    setting : float
        SZ3's PSNR setting of the run returned.
    achieved_db : float
        Its PSNR against the float32 block's own range (inf when exact).
    """
    data = np.ascontiguousarray(block, dtype=np.float32)
    setting, runs = float(psnr_db if setting is None else setting), []
    for _ in range(max(1, int(max_tries))):
        nbytes, rec = sz3_at_psnr(data, setting)
        achieved = block_psnr(data, rec)
        runs.append((nbytes, rec, setting, achieved))
        if not np.isfinite(achieved) or abs(achieved - psnr_db) <= match_db:
            break
        setting -= achieved - psnr_db
    within = [r for r in runs if abs(r[3] - psnr_db) <= match_db] if prefer_match else []
    if prefer_match and not within and all(np.isfinite(r[3]) for r in runs):
        # SZ3's PSNR jumps with its setting on small blocks: scan around the nearest run, nearest settings first
        center = min(runs, key=lambda r: abs(r[3] - psnr_db))[2]
        for k in range(1, int(SCAN_DB / SCAN_STEP_DB) + 1):
            for trial in (center + k * SCAN_STEP_DB, center - k * SCAN_STEP_DB):
                nbytes, rec = sz3_at_psnr(data, trial)
                runs.append((nbytes, rec, trial, block_psnr(data, rec)))
                if abs(runs[-1][3] - psnr_db) <= match_db:
                    within = [runs[-1]]
                    break
            if within:
                break
    if prefer_match and not within and carry_db is not None:
        # the nearest run on each side of the window: the one that brings the series' sum nearest 0
        above = [r for r in runs if np.isfinite(r[3]) and r[3] > psnr_db]
        below = [r for r in runs if np.isfinite(r[3]) and r[3] < psnr_db]
        sides = ([min(above, key=lambda r: (r[3], r[0]))] if above else []) + (
            [max(below, key=lambda r: (r[3], -r[0]))] if below else [])
        if sides:
            return min(sides, key=lambda r: (abs(carry_db + r[3] - psnr_db), r[0]))
    reached = within or [r for r in runs if r[3] >= psnr_db - match_db]
    return min(reached, key=lambda r: r[0]) if reached else max(runs, key=lambda r: r[3])


def zfp_fixed_accuracy(data, tolerance):
    """ZFP in fixed-accuracy mode (``zfpy``): max abs error <= ``tolerance``.

    Returns
    -------
    payload : bytes
    decode : callable returning the reconstruction (float32)
    """
    import zfpy

    arr = np.ascontiguousarray(data, dtype=np.float32)
    payload = zfpy.compress_numpy(arr, tolerance=float(tolerance))
    return payload, lambda: zfpy.decompress_numpy(payload)


def sz3_view(arr):
    """``arr`` as SZ3 can code it: pysz takes at most 4 axes, so a 5-D (or higher) array has its middle
    axes merged (``(r, theta, phi, v_par, mu)`` -> ``(r, theta*phi, v_par, mu)``); fewer axes unchanged."""
    if arr.ndim <= 4:
        return arr
    return arr.reshape((arr.shape[0], -1) + arr.shape[-2:])


def sz3(data, bound, mode="ABS"):
    """SZ3 (``pysz``) with an absolute (``ABS``) or value-range-relative (``REL``) error bound.

    Any number of axes (:func:`sz3_view`); the decoded array has ``data``'s shape."""
    import pysz

    shape = np.shape(data)
    arr = sz3_view(np.ascontiguousarray(data, dtype=np.float32))
    cfg = pysz.szConfig()
    if mode == "ABS":
        cfg.errorBoundMode = pysz.szErrorBoundMode.ABS
        cfg.absErrorBound = float(bound)
    elif mode == "REL":
        cfg.errorBoundMode = pysz.szErrorBoundMode.REL
        cfg.relErrorBound = float(bound)
    else:
        raise ValueError(f"SZ3 mode {mode!r}: use ABS or REL")
    comp, _ = pysz.sz.compress(arr, cfg)
    return comp.tobytes(), lambda: pysz.sz.decompress(comp, np.float32, arr.shape)[0].reshape(shape)


def keepbits_for_information(data, inflevel, dim=0):
    """Mantissa bits that keep ``inflevel`` of the real information content (Klöwer et al. 2021).

    Uses ``xbitinfo`` (its Python implementation of the bitwise real information content along
    axis ``dim``).

    Returns
    -------
    keepbits : int
    """
    import xarray as xr
    import xbitinfo

    arr = np.ascontiguousarray(data, dtype=np.float32)
    ds = xr.Dataset({"x": (tuple(f"d{i}" for i in range(arr.ndim)), arr)})
    info = xbitinfo.get_bitinformation(ds, dim=f"d{dim}", implementation="python")
    kb = xbitinfo.get_keepbits(info, inflevel=float(inflevel))
    kb = int(np.asarray(kb["x"]).ravel()[0])
    return kb if kb >= 0 else 23  # xbitinfo returns -1 when it cannot decide: keep every bit (lossless)


def bitround_zstd(data, keepbits, level=3):
    """Round mantissas to ``keepbits`` bits (``numcodecs.BitRound``), then zstd (lossless)."""
    import zstandard
    from numcodecs import BitRound

    arr = np.ascontiguousarray(data, dtype=np.float32)
    rounded = BitRound(keepbits=int(keepbits)).encode(arr)
    payload = zstandard.ZstdCompressor(level=level).compress(np.asarray(rounded).tobytes())
    shape = arr.shape

    def decode():
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=4 * int(np.prod(shape)))
        return np.frombuffer(raw, dtype=np.float32).reshape(shape)

    return payload, decode


def wavelet_threshold(data, step, wavelet="bior4.4", level=3, zstd_level=3):
    """Grid wavelet coding: multilevel DWT (PyWavelets), uniform quantization with ``step`` (small
    coefficients become zero), zstd of the integer codes.

    Returns
    -------
    payload : bytes
    decode : callable returning the reconstruction (float32)
    """
    import pywt
    import zstandard

    arr = np.asarray(data, dtype=np.float64)
    level = max(0, min(level, pywt.dwtn_max_level(arr.shape, wavelet)))
    coeffs = pywt.wavedecn(arr, wavelet, level=level, mode="periodization")
    flat, slices = pywt.coeffs_to_array(coeffs)
    q = np.rint(flat / step).astype(np.int32)
    peak = int(np.abs(q).max()) if q.size else 0
    dtype = np.int8 if peak < 128 else (np.int16 if peak < 32768 else np.int32)
    payload = zstandard.ZstdCompressor(level=zstd_level).compress(q.astype(dtype).tobytes())
    shape, fshape = arr.shape, flat.shape

    def decode():
        raw = zstandard.ZstdDecompressor().decompress(payload, max_output_size=4 * flat.size + 64)
        rec = np.frombuffer(raw, dtype=dtype).reshape(fshape).astype(np.float64) * step
        out = pywt.waverecn(pywt.array_to_coeffs(rec, slices, output_format="wavedecn"), wavelet, mode="periodization")
        return out[tuple(slice(0, n) for n in shape)].astype(np.float32)

    return payload, decode
