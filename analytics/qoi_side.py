"""Side information that restores a decoded field's moments: the exact moments, a few numbers per point.

Three precisions (:func:`encode_side_info`):

- ``quantized`` (the default): the exact moments quantized with a step per moment, either against
  the decoded field's own moments, ``q = rint((m_exact - m_dec) / step)`` (the decoder recomputes
  ``m_dec`` from the field it decoded and gets ``m_dec + q step``), or on their own,
  ``q = rint(m_exact / step)`` (``MODE_NONE``); either way within ``step / 2`` of the exact moments.
  Format 2 (``QOI2``, written now) picks the base per moment, whichever codes shorter
  (:func:`_choose_bases`), and codes the integers losslessly with spatial Lorenzo differences over
  the block's points, a cross-moment prediction and integer rANS
  (:mod:`stagelearn.analytics.qoi_residual_coding`). Format 1 (``QOI1``: always against ``m_dec``,
  as the smallest integer type that holds ``q``, zstd-compressed) is still read, and written when
  the integers are too large for format 2's 32-bit differences.
- ``float32`` / ``float64``: the exact moments themselves (4 or 8 bytes each; ``float64`` is what to
  store when the user wants the exact moments as data: ``qoi.store_exact_moments``).

The step (:func:`protect`), per moment (:mod:`stagelearn.analytics.qoi_steps`): first the whole
tolerance less a rounding margin, ``step_k = 2 min_x (tol_k(x) - 2 b_k(x))`` (``wide_steps``), where
``b_k(x) = eps sum_v |W_k(x, v)| (|f(x, v)| + tiny)`` (``eps``, ``tiny``: the output dtype's,
``2^-23``, ``2^-126`` for float32) bounds what rounding every value of the output field by one unit
in the last place can move the moment (``rounding_margin``). A decoder on another machine, whose
float64 arithmetic (BLAS sums, the correction) differs from the producer's in the last bits, can
round a value of ``f_out`` differently by at most one unit and so moves a moment by at most ``b_k``;
so every moment of the output is verified with that margin to spare at every point,
``|m_k(f_out) - m_k(f)| + b_k(f_out) <= tol_k``. A moment that fails it with the wide step (or has
none) is coded again with ``side_steps`` (half the smallest tolerance: what format 1 always used)
and verified the same way; one that fails then too is reported (``ok`` False, ``worst > 1``), never
passed silently.

Format 2 ends with the CRC-32 of all its other bytes: a truncated or altered blob is refused with a
:class:`SideInfoError` naming what is wrong, before anything is decoded.

:func:`protect` is the producer side (code, verify against the caller's own ``f``),
:func:`restore` the decoder side.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import zstandard

from .qoi import check_moments, correct_moments, tolerance
from .qoi_residual_coding import decode_residuals, encode_residuals
from .qoi_steps import rounding_margin, side_steps, wide_steps

__all__ = ["MODE_DECODED", "MODE_NONE", "SideInfoError", "decode_side_info", "encode_side_info", "protect",
           "restore", "rounding_margin", "side_steps", "spatial_shape", "wide_steps"]

_MAGIC = b"QOI1"  # format 1: quantized moments as zstd-compressed integers (still read)
_MAGIC2 = b"QOI2"  # format 2: spatial shape + Lorenzo / cross-moment / rANS coded residuals
_PRECISIONS = ("quantized", "float32", "float64")
_INTS = (np.int8, np.int16, np.int32, np.int64)
MODE_DECODED, MODE_NONE = 0, 1  #: format 2, per moment: integers against the decoded field's moments, or against 0
_MAX_AXES = 32  #: spatial axes a format 2 header may declare


class SideInfoError(ValueError):
    """Moment side information that is truncated, corrupt, or not for the decoded field it is applied to."""


def spatial_shape(shape, n_features):
    """The leading axes of a field of ``shape`` whose trailing axes hold ``n_features`` values per point.

    Parameters
    ----------
    shape : tuple of int
        The field's shape, e.g. ``(n_r, n_theta, n_phi, n_vpar, n_mu)`` or ``(P, N)``.
    n_features : int
        Values per point (``N``).

    Returns
    -------
    spatial : tuple of int
        ``(n_r, n_theta, n_phi)`` for the 5-D example, ``(P,)`` for ``(P, N)``; one axis of all points
        when no trailing axes multiply to ``n_features``.
    """
    shape = tuple(int(n) for n in shape)
    size = 1
    for i in range(len(shape) - 1, 0, -1):
        size *= shape[i]
        if size == n_features:
            return shape[:i]
        if size > n_features:
            break
    return (int(np.prod(shape, dtype=np.int64)) // max(int(n_features), 1),)


def encode_side_info(m_exact, m_dec, *, steps=None, precision="quantized", level=9, spatial=None, fmt=2):
    """Side information for moments ``m_exact`` of a field whose decoded moments are ``m_dec``.

    Parameters
    ----------
    m_exact, m_dec : ndarray of shape (P, K)
    steps : ndarray of shape (K,), optional
        ``quantized`` only (required there): the step of each moment (:func:`side_steps`).
    precision : {"quantized", "float32", "float64"}, default="quantized"
    level : int, default=9
        zstd level.
    spatial : tuple of int, optional
        ``quantized`` only: the points' spatial shape (:func:`spatial_shape`; default one axis of ``P``).
    fmt : {2, 1}, default=2
        ``quantized`` only: format 1 writes what stagelearn wrote before format 2 (for comparisons).

    Returns
    -------
    blob : bytes

    Raises
    ------
    ValueError
        On an unknown ``precision`` or ``fmt``, or quantized integers beyond 64 bits.
    """
    m_exact = np.asarray(m_exact, dtype=np.float64)
    P, K = m_exact.shape
    if precision not in _PRECISIONS:
        raise ValueError(f"side information precision {precision!r}: use one of {list(_PRECISIONS)}")
    if fmt not in (1, 2):
        raise ValueError(f"side information format {fmt!r}: use 2 (written now) or 1 (what stagelearn wrote before)")
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
        spatial = (P,) if spatial is None else tuple(int(n) for n in spatial)
        if fmt == 2 and len(spatial) <= _MAX_AXES:
            try:
                q2, modes = _choose_bases(m_exact, q, steps, spatial, level)
                body = encode_residuals(q2, spatial, level=level)
            except ValueError:  # too large for format 2's 32-bit differences: format 1
                pass
            else:
                blob = (_MAGIC2 + struct.pack("<BHI", _PRECISIONS.index(precision), K, P)
                        + struct.pack(f"<B{len(spatial)}I", len(spatial), *spatial) + steps.astype("<f8").tobytes()
                        + bytes(modes) + body)
                return blob + struct.pack("<I", zlib.crc32(blob))
        dt = next(t for t in _INTS if span <= np.iinfo(t).max)
        head += struct.pack("<B", _INTS.index(dt)) + steps.tobytes()
        body = q.astype(dt).T.tobytes()  # one moment after the other: each zstd window sees one distribution
    return head + zstandard.ZstdCompressor(level=level).compress(body)


def _choose_bases(m_exact, q, steps, spatial, level):
    """Per moment, what its integers are taken against (format 2): ``MODE_DECODED`` (``q``, against the decoded
    field's moments) or ``MODE_NONE`` (``rint(m_exact / step)``, the moments themselves), whichever codes
    shorter alone. A decoded field whose moment errors are noisy in space (a transform code's quantization) helps
    less than the spatial smoothness of the moments themselves, which the Lorenzo differences exploit.

    Returns ``(q (P, K) int64, modes)``; ValueError when no choice fits format 2."""
    cols, modes = [], []
    for k in range(q.shape[1]):
        best = None
        for mode, qk in ((MODE_DECODED, q[:, k]), (MODE_NONE, np.rint(m_exact[:, k] / steps[k]))):
            if not np.all(np.abs(qk) < 2.0 ** 40):
                continue
            qk = qk.astype(np.int64)[:, None]
            try:
                size = len(encode_residuals(qk, spatial, level=level))
            except ValueError:
                continue
            if best is None or size < best[0]:
                best = (size, mode, qk[:, 0])
        if best is None:
            raise ValueError("moment residuals too large for format 2")
        modes.append(best[1])
        cols.append(best[2])
    return np.stack(cols, axis=1), modes


def decode_side_info(blob, m_dec):
    """The target moments carried by ``blob`` (format 1 or 2), given the decoded field's moments ``m_dec``.

    Parameters
    ----------
    blob : bytes
        What :func:`encode_side_info` wrote.
    m_dec : ndarray of shape (P, K)
        The moments of the field the decoder decoded (``moment_set.apply(f_dec)``).

    Returns
    -------
    targets : ndarray of shape (P, K), float64

    Raises
    ------
    SideInfoError
        (a ValueError) On a wrong magic, a header that does not match ``m_dec``'s shape, non-finite or
        non-positive steps, a CRC mismatch (format 2), or a truncated or corrupt blob; checked before
        anything large is decoded or allocated.
    """
    blob = bytes(blob)
    m_dec = np.asarray(m_dec, dtype=np.float64)
    if blob[:4] not in (_MAGIC, _MAGIC2):
        raise SideInfoError(f"not moment side information (magic {blob[:4]!r}; this version reads {_MAGIC!r} and "
                            f"{_MAGIC2!r})")
    try:
        return _decode(blob, m_dec)
    except SideInfoError:
        raise
    except (struct.error, zstandard.ZstdError, IndexError, ValueError, OverflowError) as err:
        raise SideInfoError(f"moment side information ({blob[:4].decode()}): truncated or corrupt ({err!r})") from err


def _corrupt(what):
    return SideInfoError(f"moment side information: {what} (truncated or corrupt blob, or side information of "
                         "another block)")


def _steps(blob, off, K):
    if len(blob) < off + 8 * K:
        raise _corrupt(f"{len(blob)} bytes end inside the {K} steps")
    steps = np.frombuffer(blob, dtype="<f8", count=K, offset=off).astype(np.float64)
    if not np.all(np.isfinite(steps) & (steps > 0)):
        raise _corrupt(f"steps {steps.tolist()} are not all finite and > 0")
    return steps


def _decode(blob, m_dec):
    code, K, P = struct.unpack_from("<BHI", blob, 4)
    off = 4 + struct.calcsize("<BHI")
    if code >= len(_PRECISIONS):
        raise _corrupt(f"precision code {code}")
    if P * K != m_dec.size or (m_dec.ndim == 2 and m_dec.shape != (P, K)):
        raise _corrupt(f"the header declares {P} points x {K} moments, the decoded field's moments have shape "
                       f"{m_dec.shape}")
    m_dec = m_dec.reshape(P, K)
    precision = _PRECISIONS[code]
    if blob[:4] == _MAGIC2:
        if len(blob) < off + 5 or zlib.crc32(blob[:-4]) != struct.unpack_from("<I", blob, len(blob) - 4)[0]:
            raise _corrupt("CRC-32 mismatch")
        nd = blob[off]
        if not 1 <= nd <= _MAX_AXES:
            raise _corrupt(f"{nd} spatial axes")
        spatial = struct.unpack_from(f"<{nd}I", blob, off + 1)
        if int(np.prod(spatial, dtype=np.int64)) != P:
            raise _corrupt(f"spatial shape {spatial} does not hold the header's {P} points")
        off += 1 + 4 * nd
        steps = _steps(blob, off, K)
        modes = np.frombuffer(blob[off + 8 * K:off + 9 * K], dtype=np.uint8)
        if len(modes) != K or not set(modes.tolist()) <= {MODE_DECODED, MODE_NONE}:
            raise _corrupt(f"base modes {modes.tolist()} (this version reads {MODE_DECODED} and {MODE_NONE})")
        q = decode_residuals(blob[off + 9 * K:-4], P, K, spatial)
        return np.where(modes == MODE_DECODED, m_dec, 0.0) + q * steps
    if precision != "quantized":
        dt = np.dtype(np.float32 if precision == "float32" else np.float64)
        raw = zstandard.ZstdDecompressor().decompress(blob[off:], max_output_size=P * K * dt.itemsize)
        if len(raw) != P * K * dt.itemsize:
            raise _corrupt(f"{len(raw)} bytes of {precision} moments for {P} x {K}")
        return np.frombuffer(raw, dtype=dt).reshape(P, K).astype(np.float64)
    if blob[off] >= len(_INTS):
        raise _corrupt(f"integer type code {blob[off]}")
    dt = np.dtype(_INTS[blob[off]])
    steps = _steps(blob, off + 1, K)
    raw = zstandard.ZstdDecompressor().decompress(blob[off + 1 + 8 * K:], max_output_size=P * K * dt.itemsize)
    if len(raw) != P * K * dt.itemsize:
        raise _corrupt(f"{len(raw)} bytes of quantized moments for {P} x {K}")
    q = np.frombuffer(raw, dtype=dt).reshape(K, P).T
    return m_dec + q * steps


def restore(f_dec, moment_set, blob, *, metric="entropy", out_dtype=np.float32):
    """Decoder side: the decoded field corrected to the moments ``blob`` carries.

    Returns
    -------
    f : ndarray of the shape of ``f_dec``, ``out_dtype``

    Raises
    ------
    SideInfoError
        When ``blob`` is corrupt or not for this field (:func:`decode_side_info`).
    """
    targets = decode_side_info(blob, moment_set.apply(f_dec))
    return correct_moments(f_dec, moment_set, targets, metric=metric).astype(out_dtype)


def protect(f_exact, f_dec, moment_set, tolerances, scales, *, precision="quantized", metric="entropy",
            out_dtype=np.float32, fmt=2):
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
    fmt : {2, 1}, default=2
        ``quantized`` only: 1 gives what stagelearn did before format 2 (half-tolerance steps, format 1), for
        comparisons (``benchmarks/gyrokinetic_moments.py --side-format 1``).

    Returns
    -------
    blob : bytes
    f_out : ndarray
        What :func:`restore` gives the decoder.
    checks : list of MomentCheck
        Moments of ``f_out`` against those of ``f_exact``, with the rounding margin of ``out_dtype`` to spare
        (``|error| + b <= tol``; ``worst`` includes ``b``): every ``ok`` is the guarantee, for a decoder on
        any machine. A tolerance too small for both steps gives ``ok`` False and ``worst > 1``.
    """
    m_exact = moment_set.apply(f_exact)
    abs_tol = tolerance(m_exact, moment_set.names, tolerances, scales)
    m_dec = moment_set.apply(f_dec)
    names = moment_set.names

    def verified(blob):
        f_out = restore(f_dec, moment_set, blob, metric=metric, out_dtype=out_dtype)
        margin = rounding_margin(f_out, moment_set, out_dtype)
        return blob, f_out, check_moments(moment_set.apply(f_out), m_exact, abs_tol, names, margin=margin)

    if precision != "quantized":
        return verified(encode_side_info(m_exact, m_dec, precision=precision))
    spatial = spatial_shape(np.shape(f_dec), moment_set.n_features)
    half = side_steps(abs_tol, names)
    wide = np.full(len(names), np.nan)  # format 1: half-tolerance steps only
    if fmt == 2:
        wide = wide_steps(abs_tol, rounding_margin(f_dec, moment_set, out_dtype))
    use_wide = np.isfinite(wide)
    while True:  # a moment whose wide step fails the check takes the half-tolerance step; at most K + 1 tries
        blob, f_out, checks = verified(encode_side_info(m_exact, m_dec, steps=np.where(use_wide, wide, half),
                                                        spatial=spatial, fmt=fmt))
        failed = use_wide & ~np.array([c.ok for c in checks])
        if not failed.any():
            return blob, f_out, checks
        use_wide &= ~failed
