"""Lossless coding of the quantized moment residuals of one block (side information format 2).

The side information of a moment guarantee (:mod:`stagelearn.analytics.qoi_side`) is an integer
matrix ``q`` of shape ``(P, K)``: per spatial point and moment, the difference between the exact
moment and the decoded field's own moment, in quantization steps. The decoded field's moment
errors are smooth in space (a coding error of one sign over a region) and the moments' errors at a
point are correlated (one velocity-space error enters density, flow and energy), so ``q`` is coded
in three integer stages, each exactly invertible on any machine:

1. **Lorenzo differences** over the block's spatial axes (``d``-D: ``D = Delta_1 ... Delta_d q``, each
   ``Delta`` a first difference with a zero before the first point; the decoder takes cumulative
   sums back). With no spatial shape the points are one axis.
2. **Cross-moment prediction**: moment ``k >= 1`` less ``(a_k D_0 + 2^11) >> 12``, ``a_k`` an int16
   (fixed point, 12 fraction bits) fitted by least squares on the block, kept only where it lowers
   the sum of magnitudes (else 0). ``|q|`` is limited so that no difference leaves 32 bits
   (``|a_k D_0| >> 12 <= 8 |D_0|``).
3. **Entropy coding**: the stream codec's integer rANS (:func:`~stagelearn.analytics.stream_codec.
   entropy_coding.encode_codes`: one segment per moment, exact integer histograms, contexts from the
   previous code's magnitude), its tables zstd-compressed.

What format 2 saves against format 1 on the moments benchmark's frames: ``python
benchmarks/gyrokinetic_moments.py --side-bytes`` (docs/gyrokinetic.md).

Layout: ``int16 a[K - 1]``, ``uint32 n_tables``, zstd(tables), ``uint16 words[...]``.
"""

from __future__ import annotations

import struct

import numpy as np
import zstandard

from .stream_codec.entropy_coding import decode_codes, encode_codes

FRAC_BITS = 12  #: fraction bits of the cross-moment coefficients
_LIMIT = 2 ** 31 - 1  #: largest magnitude the int32 codes hold


def _shape(n_points, spatial_shape):
    shape = (n_points,) if spatial_shape is None else tuple(int(n) for n in spatial_shape)
    if int(np.prod(shape, dtype=np.int64)) != n_points:
        raise ValueError(f"moment side information: spatial shape {shape} does not hold {n_points} points")
    return shape


def lorenzo(q, spatial_shape=None):
    """Lorenzo differences of ``q`` over the spatial axes.

    Parameters
    ----------
    q : ndarray of shape (P, K), integer
    spatial_shape : tuple of int, optional
        The points' spatial shape (product ``P``); default one axis.

    Returns
    -------
    D : ndarray of shape (P, K), int64

    Raises
    ------
    ValueError
        When ``spatial_shape`` does not hold ``P`` points.
    """
    P, K = q.shape
    D = np.asarray(q, dtype=np.int64).reshape(_shape(P, spatial_shape) + (K,))
    for ax in range(D.ndim - 1):
        D = np.diff(D, axis=ax, prepend=np.zeros_like(np.take(D, [0], axis=ax)))
    return D.reshape(P, K)


def unlorenzo(D, spatial_shape=None):
    """Inverse of :func:`lorenzo` (cumulative sums over the spatial axes).

    Parameters
    ----------
    D : ndarray of shape (P, K), integer
    spatial_shape : tuple of int, optional
        As given to :func:`lorenzo`.

    Returns
    -------
    q : ndarray of shape (P, K), int64

    Raises
    ------
    ValueError
        When ``spatial_shape`` does not hold ``P`` points.
    """
    P, K = D.shape
    Q = np.asarray(D, dtype=np.int64).reshape(_shape(P, spatial_shape) + (K,))
    for ax in range(Q.ndim - 1):
        Q = np.cumsum(Q, axis=ax)
    return Q.reshape(P, K)


def _cross(D0, a):
    return (a * D0 + (1 << (FRAC_BITS - 1))) >> FRAC_BITS


def encode_residuals(q, spatial_shape=None, *, level=9):
    """Code the integer residuals ``q`` of a block whose points have ``spatial_shape``.

    Parameters
    ----------
    q : ndarray of shape (P, K), integer
    spatial_shape : tuple of int, optional
        The points' spatial shape (product ``P``); default one axis.
    level : int, default=9
        zstd level of the rANS tables.

    Returns
    -------
    buf : bytes
        The layout of the module docstring.

    Raises
    ------
    ValueError
        When ``q`` is too large for the differences to fit 32-bit integers (the decoded field is far
        from the exact one; :func:`~stagelearn.analytics.qoi_side.encode_side_info` then writes format 1),
        or ``spatial_shape`` does not hold ``P`` points.
    """
    q = np.asarray(q)
    P, K = q.shape
    if np.abs(q).max(initial=0) > _LIMIT >> (len(_shape(P, spatial_shape)) + 5):
        raise ValueError("quantized moments overflow 32-bit integers: the decoded field is far from the exact one")
    D = lorenzo(q, spatial_shape)
    coefs = []
    for k in range(1, K):
        den = float(np.dot(D[:, 0].astype(np.float64), D[:, 0]))
        a = 0 if den == 0 else int(np.clip(np.rint(2.0 ** FRAC_BITS * np.dot(D[:, k].astype(np.float64), D[:, 0]) / den),
                                           -32768, 32767))
        X = D[:, k] - _cross(D[:, 0], a)
        if a and np.abs(X).sum() < np.abs(D[:, k]).sum():
            D[:, k] = X
        else:
            a = 0
        coefs.append(a)
    tables, words = encode_codes(np.ascontiguousarray(D.T.reshape(-1), dtype=np.int32), [P] * K)
    zt = zstandard.ZstdCompressor(level=level).compress(tables)
    return struct.pack(f"<{K - 1}h", *coefs) + struct.pack("<I", len(zt)) + zt + words.astype("<u2").tobytes()


def decode_residuals(buf, n_points, n_moments, spatial_shape=None):
    """Inverse of :func:`encode_residuals`.

    Parameters
    ----------
    buf : bytes
        What :func:`encode_residuals` wrote.
    n_points, n_moments : int
        ``P`` and ``K`` (checked by the caller against the field's moments before decoding).
    spatial_shape : tuple of int, optional
        As given to :func:`encode_residuals`.

    Returns
    -------
    q : ndarray of shape (P, K), int64

    Raises
    ------
    ValueError
        On a truncated or corrupt ``buf`` (lengths that do not add up, tables or codes that do not
        decode to ``P x K`` integers), or ``spatial_shape`` that does not hold ``P`` points.
    """
    P, K = int(n_points), int(n_moments)
    if P < 1 or K < 1:
        raise ValueError(f"moment residuals: {P} points x {K} moments")
    shape = _shape(P, spatial_shape)
    buf = bytes(buf)
    off = 2 * (K - 1)
    if len(buf) < off + 4:
        raise ValueError(f"moment residuals: {len(buf)} bytes end inside the header")
    coefs = struct.unpack_from(f"<{K - 1}h", buf, 0)
    (n_t,) = struct.unpack_from("<I", buf, off)
    if off + 4 + n_t > len(buf) or (len(buf) - off - 4 - n_t) % 2:
        raise ValueError(f"moment residuals: {n_t} bytes of tables and {len(buf)} in all do not add up")
    tables = zstandard.ZstdDecompressor().decompress(buf[off + 4:off + 4 + n_t], max_output_size=64 * P * K + 4096)
    words = np.frombuffer(buf[off + 4 + n_t:], dtype="<u2").astype(np.uint16)
    codes, _ = decode_codes(tables, words, [P] * K)
    if codes.size != P * K:
        raise ValueError(f"moment residuals: {codes.size} codes decoded for {P} x {K}")
    D = codes.astype(np.int64).reshape(K, P).T.copy()
    for k, a in enumerate(coefs, start=1):
        D[:, k] += _cross(D[:, 0], int(a))
    return unlorenzo(D, shape)
