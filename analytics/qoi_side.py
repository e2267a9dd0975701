"""Side information that restores a decoded field's moments: the exact moments, a few numbers per point.

Three precisions (:func:`encode_side_info`):

- ``quantized`` (the default): the difference between the exact moments and the decoded field's
  own moments, quantized with a step per moment, ``q = rint((m_exact - m_dec) / step)``, as the
  smallest integer type that holds it, zstd-compressed. The decoder recomputes ``m_dec`` from the
  field it decoded (bit-exact on every machine, :mod:`stagelearn.analytics.fixed_point`) and gets
  ``m_dec + q step``, within ``step / 2`` of the exact moments. :func:`side_steps` sets the step to
  the smallest absolute tolerance of the moment over the block, so the restored moments use at
  most half of the tolerance; the other half covers the rounding of the corrected field to float32
  and the ulp-level differences of a moment computed on another machine. The residual of a good
  decoded field is a few steps, so this costs about 1-4 bits per moment per point.
- ``float32`` / ``float64``: the exact moments themselves (4 or 8 bytes each; ``float64`` is what to
  store when the user wants the exact moments as data: ``qoi.store_exact_moments``).

:func:`protect` is the producer side (code, verify against the caller's own ``f``),
:func:`restore` the decoder side.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from .qoi import check_moments, correct_moments, tolerance

_MAGIC = b"QOI1"
_PRECISIONS = ("quantized", "float32", "float64")
_INTS = (np.int8, np.int16, np.int32, np.int64)


def side_steps(abs_tol, names, fraction=1.0):
    """Quantization step of each moment: ``fraction`` times its smallest tolerance over the points.

    Raises
    ------
    ValueError
        When a moment's tolerance is 0 somewhere (a ``local`` scale where the moment is 0), naming it.
    """
    tol = np.asarray(abs_tol, dtype=np.float64)
    steps = fraction * tol.min(axis=0, initial=np.inf)
    for name, s in zip(names, steps):
        if not (np.isfinite(s) and s > 0):
            raise ValueError(f"moment {name!r}: its tolerance is {s} at some point (a 'local' scale where the moment "
                             "is 0?); use scale 'max', 'absolute' or another moment's name")
    return steps


def encode_side_info(m_exact, m_dec, *, steps=None, precision="quantized", level=9):
    """Side information for moments ``m_exact`` of a field whose decoded moments are ``m_dec``.

    Parameters
    ----------
    m_exact, m_dec : ndarray of shape (P, K)
    steps : ndarray of shape (K,), optional
        ``quantized`` only (required there): the step of each moment (:func:`side_steps`).
    precision : {"quantized", "float32", "float64"}, default="quantized"
    level : int, default=9
        zstd level.

    Returns
    -------
    blob : bytes
    """
    m_exact = np.asarray(m_exact, dtype=np.float64)
    P, K = m_exact.shape
    if precision not in _PRECISIONS:
        raise ValueError(f"side information precision {precision!r}: use one of {list(_PRECISIONS)}")
    head = _MAGIC + struct.pack("<BHI", _PRECISIONS.index(precision), K, P)
    if precision != "quantized":
        body = m_exact.astype(np.float32 if precision == "float32" else np.float64).tobytes()
    else:
        steps = np.asarray(steps, dtype=np.float64).reshape(K)
        q = np.rint((m_exact - np.asarray(m_dec, dtype=np.float64)) / steps)
        span = float(np.abs(q).max(initial=0.0))
        if not np.isfinite(span) or span >= 2.0 ** 62:
            raise ValueError("quantized moments overflow 64-bit integers: the decoded field is far from the exact one; "
                             "use precision float64")
        dt = next(t for t in _INTS if span <= np.iinfo(t).max)
        head += struct.pack("<B", _INTS.index(dt)) + steps.tobytes()
        body = q.astype(dt).T.tobytes()  # one moment after the other: each zstd window sees one distribution
    return head + zstandard.ZstdCompressor(level=level).compress(body)


def decode_side_info(blob, m_dec):
    """The target moments, shape (P, K) float64, from ``blob`` and the decoded field's moments ``m_dec``."""
    if blob[:4] != _MAGIC:
        raise ValueError("not moment side information (bad magic)")
    code, K, P = struct.unpack_from("<BHI", blob, 4)
    off = 4 + struct.calcsize("<BHI")
    precision = _PRECISIONS[code]
    if precision != "quantized":
        dt = np.float32 if precision == "float32" else np.float64
        raw = zstandard.ZstdDecompressor().decompress(blob[off:], max_output_size=P * K * 8)
        return np.frombuffer(raw, dtype=dt).reshape(P, K).astype(np.float64)
    dt = _INTS[blob[off]]
    steps = np.frombuffer(blob[off + 1:off + 1 + 8 * K], dtype=np.float64)
    raw = zstandard.ZstdDecompressor().decompress(blob[off + 1 + 8 * K:], max_output_size=P * K * 8)
    q = np.frombuffer(raw, dtype=dt).reshape(K, P).T
    m_dec = np.asarray(m_dec, dtype=np.float64).reshape(P, K)
    return m_dec + q * steps


def restore(f_dec, moment_set, blob, *, metric="entropy", out_dtype=np.float32):
    """Decoder side: the decoded field corrected to the moments ``blob`` carries.

    Returns
    -------
    f : ndarray of the shape of ``f_dec``, ``out_dtype``
    """
    targets = decode_side_info(blob, moment_set.apply(f_dec))
    return correct_moments(f_dec, moment_set, targets, metric=metric).astype(out_dtype)


def protect(f_exact, f_dec, moment_set, tolerances, scales, *, precision="quantized", metric="entropy",
            out_dtype=np.float32):
    """Producer side: side information for ``f_dec``, verified against the caller's own ``f_exact``.

    Parameters
    ----------
    f_exact : ndarray
        The caller's values (any real dtype), ``P`` velocity slices.
    f_dec : ndarray
        What the decoder reconstructs (same number of values).
    moment_set : MomentSet
    tolerances, scales : sequence
        Per moment (:func:`~stagelearn.analytics.qoi.tolerance`).
    precision, metric, out_dtype
        As :func:`encode_side_info` and :func:`restore`.

    Returns
    -------
    blob : bytes
    f_out : ndarray
        What :func:`restore` gives the decoder.
    checks : list of MomentCheck
        Moments of ``f_out`` against those of ``f_exact``: every ``ok`` is the guarantee.
    """
    m_exact = moment_set.apply(f_exact)
    abs_tol = tolerance(m_exact, moment_set.names, tolerances, scales)
    steps = side_steps(abs_tol, moment_set.names) if precision == "quantized" else None
    blob = encode_side_info(m_exact, moment_set.apply(f_dec), steps=steps, precision=precision)
    f_out = restore(f_dec, moment_set, blob, metric=metric, out_dtype=out_dtype)
    return blob, f_out, check_moments(moment_set.apply(f_out), m_exact, abs_tol, moment_set.names)
