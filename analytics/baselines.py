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


def sz3(data, bound, mode="ABS"):
    """SZ3 (``pysz``) with an absolute (``ABS``) or value-range-relative (``REL``) error bound."""
    import pysz

    arr = np.ascontiguousarray(data, dtype=np.float32)
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
    return comp.tobytes(), lambda: pysz.sz.decompress(comp, np.float32, arr.shape)[0]


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
