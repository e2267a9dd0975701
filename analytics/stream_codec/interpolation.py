"""Multilevel spline-interpolation prediction with error-bounded quantization (numba kernels).

The traversal is SZ3's: a field reshaped to 3-D ``(n0, n1, n2)`` is refined from the coarsest
stride ``s = 2^(L-1)`` down to ``s = 1``; at each stride, one pass per axis ``d`` visits the points
whose coordinate along ``d`` is an odd multiple of ``s`` (coordinates along earlier axes multiples
of ``s``, along later axes multiples of ``2 s``) and predicts each from its already reconstructed
neighbours at ``+-s, +-3s`` along ``d`` (cubic spline ``(-1, 9, 9, -1) / 16``, quadratic or linear
near the edges). The point ``(0, 0, 0)`` is the anchor.

With a previous reconstructed frame ``p`` the prediction is a per-level blend

    pred = w0 * S(rec) + w1 * p + w2 * S(p)

(``S`` the spatial interpolation; ``w = (1, 1, -1)`` interpolates the temporal difference), with
weights fitted by least squares from statistics gathered while encoding (:func:`fit_weights`).

Closed loop: codes are integers ``k = round((x - pred) / q_l)``; the reconstruction
``pred + k q_l`` is computed in float64 in a fixed order (numba without ``fastmath``: no
reassociation, no fused multiply-add) and stored in the field's dtype, so a decoder on any machine
reproduces it bit for bit. Values whose code would exceed ``radius``, that are not finite, or whose
reconstruction misses the pointwise bound are *outliers*: stored exactly, with the code ``radius + 1``.
"""

from __future__ import annotations

import functools

import numpy as np
from numba import njit

N_FEATURES = 3  # S(rec), p, S(p)
N_STATS = N_FEATURES * N_FEATURES + N_FEATURES + 1  # Gram matrix, right-hand side, sum of x^2
_U = np.uint64  # array indices in the kernels are unsigned: no negative-index wrap-around code


def as_3d_shape(shape):
    """The 3-D shape the kernels see: leading axes merged, missing axes of length 1.

    Parameters
    ----------
    shape : tuple of int
        The field's shape (any number of axes >= 1).

    Returns
    -------
    shape3 : tuple of 3 int
    """
    shape = tuple(int(n) for n in shape)
    if len(shape) == 0:
        return (1, 1, 1)
    if len(shape) <= 3:
        return (1,) * (3 - len(shape)) + shape
    return (int(np.prod(shape[:-2])), shape[-2], shape[-1])


def n_levels(shape3):
    """Number of interpolation levels ``L`` (strides ``2^(L-1) ... 1``) for a 3-D shape."""
    return int(max(shape3) - 1).bit_length()


def level_counts(shape3):
    """Codes per level, in the order the kernels emit them.

    Returns
    -------
    counts : ndarray of int64, shape (L + 1,)
        ``counts[0] = 1`` (the anchor), then one entry per level from the coarsest to the finest.
    """
    return np.array(_level_counts(tuple(int(n) for n in shape3)), dtype=np.int64)


@functools.lru_cache(maxsize=256)
def _level_counts(shape3):
    """:func:`level_counts` as a tuple, computed once per shape (it is asked for on every frame)."""
    levels = n_levels(shape3)
    out = [1]
    for lev in range(levels - 1, -1, -1):
        s = 1 << lev
        total = 0
        for d in range(3):
            if shape3[d] <= s:
                continue
            n = 1
            for a in range(3):
                start, step = (s, 2 * s) if a == d else ((0, s) if a < d else (0, 2 * s))
                n *= len(range(start, shape3[a], step))
            total += n
        out.append(total)
    return tuple(out)


@njit(cache=True, inline="always")
def pass_ranges(d, s):
    """Start and stride along axes 0, 1, 2 of the pass along axis ``d`` at stride ``s`` (SZ3's
    traversal): along ``d`` the odd multiples of ``s``; earlier axes multiples of ``s``; later axes
    multiples of ``2 s``. Returns ``(b0, e0, b1, e1, b2, e2)``."""
    return (s if d == 0 else 0, 2 * s if d == 0 else s, s if d == 1 else 0, s if d == 2 else 2 * s,
            s if d == 2 else 0, 2 * s)


@njit(cache=True, inline="always")
def _interp(a, j, st, i, s, n):
    """Spatial prediction of flat index ``j`` (coordinate ``i`` along an axis of length ``n``, stride ``st``)."""
    m1 = a[_U(j - s * st)]
    if i + s < n:
        p1 = a[_U(j + s * st)]
        has_m3 = i - 3 * s >= 0
        has_p3 = i + 3 * s < n
        if has_m3 and has_p3:
            return (-np.float64(a[_U(j - 3 * s * st)]) + 9.0 * m1 + 9.0 * p1 - a[_U(j + 3 * s * st)]) / 16.0
        if has_p3:
            return (3.0 * m1 + 6.0 * p1 - a[_U(j + 3 * s * st)]) / 8.0
        if has_m3:
            return (-np.float64(a[_U(j - 3 * s * st)]) + 6.0 * m1 + 3.0 * p1) / 8.0
        return (np.float64(m1) + p1) / 2.0
    return np.float64(m1)


@njit(cache=True, inline="always")
def _code_point(x, rec, j, pred, ql, inv, eb_abs, radius, codes, pos, outliers, n_out, sse):
    """Quantize ``x[j]`` against ``pred``; write the reconstruction and the code.

    Returns the outlier count and the running sum of squared errors."""
    ju = _U(j)
    xv = np.float64(x[ju])
    k = np.floor((xv - pred) * inv + 0.5)  # encoder only: the decoder never recomputes k
    if abs(k) <= radius:
        rec[ju] = pred + k * ql
        err = xv - np.float64(rec[ju])
        if eb_abs <= 0.0 or abs(err) <= eb_abs:
            codes[_U(pos)] = np.int32(k)
            return n_out, sse + err * err
    rec[ju] = x[ju]
    codes[_U(pos)] = np.int32(radius + 1)
    outliers[_U(n_out)] = x[ju]
    return n_out + 1, sse


@njit(cache=True, inline="always")
def _decode_point(rec, j, pred, ql, radius, codes, pos, outliers, n_out):
    k = codes[_U(pos)]
    if k == radius + 1:  # ``outliers`` ends with a spare value: a corrupt stream with more escapes reads it
        rec[_U(j)] = outliers[_U(min(n_out, outliers.size - 1))]
        return n_out + 1
    rec[_U(j)] = pred + np.float64(k) * ql
    return n_out


@njit(cache=True, inline="always")
def _run(encode, x, rec, prev, has_prev, n0, n1, n2, qlev, weights, eb_abs, radius, codes, outliers, stats,
         collect):
    """One traversal; ``encode`` selects quantization (encoder) or reconstruction (decoder).

    Returns ``(n_codes, n_outliers, sum of squared errors)`` (the last only when encoding).
    """
    shape = (n0, n1, n2)
    strides = (n1 * n2, n2, 1)
    levels = 0
    m = max(n0, max(n1, n2)) - 1
    while m > 0:
        levels += 1
        m >>= 1
    pos = 0
    n_out = 0
    sse = 0.0
    # anchor
    pred = np.float64(prev[0]) if has_prev else 0.0
    ql = qlev[levels] if levels > 0 else qlev[0]
    if encode:
        n_out, sse = _code_point(x, rec, 0, pred, ql, 1.0 / ql, eb_abs, radius, codes, pos, outliers, n_out, sse)
    else:
        n_out = _decode_point(rec, 0, pred, ql, radius, codes, pos, outliers, n_out)
    pos += 1
    for lev in range(levels - 1, -1, -1):
        s = 1 << lev
        ql = qlev[lev]
        inv = 1.0 / ql
        w0 = weights[lev, 0]
        w1 = weights[lev, 1]
        w2 = weights[lev, 2]
        # least-squares statistics of this level, in registers (written to ``stats`` after the level)
        g00 = g01 = g02 = g11 = g12 = g22 = b0_ = b1_ = b2_ = xx = 0.0
        for d in range(3):
            nd = shape[d]
            if nd <= s:
                continue
            st = strides[d]
            b0, e0, b1, e1, b2, e2 = pass_ranges(d, s)
            for i0 in range(b0, n0, e0):
                for i1 in range(b1, n1, e1):
                    for i2 in range(b2, n2, e2):
                        j = i0 * strides[0] + i1 * strides[1] + i2
                        i = i0 if d == 0 else (i1 if d == 1 else i2)
                        sr = _interp(rec, j, st, i, s, nd)
                        if has_prev:
                            pj = np.float64(prev[_U(j)])
                            sp = _interp(prev, j, st, i, s, nd)
                            pred = w0 * sr + w1 * pj + w2 * sp
                        else:
                            pred = sr
                        if encode:
                            if collect and has_prev:
                                xv = np.float64(x[_U(j)])
                                g00 += sr * sr
                                g01 += sr * pj
                                g02 += sr * sp
                                g11 += pj * pj
                                g12 += pj * sp
                                g22 += sp * sp
                                b0_ += sr * xv
                                b1_ += pj * xv
                                b2_ += sp * xv
                                xx += xv * xv
                            n_out, sse = _code_point(x, rec, j, pred, ql, inv, eb_abs, radius, codes, pos,
                                                     outliers, n_out, sse)
                        else:
                            n_out = _decode_point(rec, j, pred, ql, radius, codes, pos, outliers, n_out)
                        pos += 1
        if encode and collect and has_prev:
            row = stats[lev]
            row[0], row[1], row[2], row[4], row[5], row[8] = g00, g01, g02, g11, g12, g22
            row[3], row[6], row[7] = g01, g02, g12
            row[9], row[10], row[11], row[12] = b0_, b1_, b2_, xx
    return pos, n_out, sse


# One compiled specialisation per use: the flags become constants and their branches vanish.
@njit(cache=True)
def _encode_temporal(x, rec, prev, n0, n1, n2, qlev, weights, eb_abs, radius, codes, outliers, stats):
    return _run(True, x, rec, prev, True, n0, n1, n2, qlev, weights, eb_abs, radius, codes, outliers, stats, True)


@njit(cache=True)
def _encode_intra(x, rec, prev, n0, n1, n2, qlev, weights, eb_abs, radius, codes, outliers, stats):
    return _run(True, x, rec, prev, False, n0, n1, n2, qlev, weights, eb_abs, radius, codes, outliers, stats, False)


@njit(cache=True)
def _decode_temporal(rec, prev, n0, n1, n2, qlev, weights, radius, codes, outliers, stats):
    return _run(False, rec, rec, prev, True, n0, n1, n2, qlev, weights, 0.0, radius, codes, outliers, stats, False)


@njit(cache=True)
def _decode_intra(rec, prev, n0, n1, n2, qlev, weights, radius, codes, outliers, stats):
    return _run(False, rec, rec, prev, False, n0, n1, n2, qlev, weights, 0.0, radius, codes, outliers, stats, False)


def encode_field(x3, prev3, qlev, weights, *, eb_abs=0.0, radius=32767):
    """Predict and quantize one 3-D field (closed loop).

    Parameters
    ----------
    x3 : ndarray, shape (n0, n1, n2), float32 or float64, C-contiguous
    prev3 : ndarray like ``x3`` or None
        The previous *reconstructed* frame (temporal prediction), or None.
    qlev : ndarray of float64, shape (L + 1,)
        Quantization step per level (index 0 the finest; index ``L`` for the anchor).
    weights : ndarray of float64, shape (L, 3)
        Blend weights per level (ignored without ``prev3``).
    eb_abs : float
        Pointwise absolute bound checked on each value (0: none).
    radius : int
        Largest code magnitude; larger ones become outliers.

    Returns
    -------
    codes : ndarray of int32, shape (n,)
        In traversal order; ``radius + 1`` marks an outlier.
    outliers : ndarray of x3.dtype
        The exact values of the outliers, in traversal order.
    rec : ndarray like x3
        The reconstruction a decoder will produce.
    stats : ndarray of float64, shape (L, 13)
        Least-squares statistics per level for :func:`fit_weights` (with ``prev3``; zeros without).
    sse : float
        Sum of squared errors of the reconstruction.
    """
    n0, n1, n2 = x3.shape
    levels = n_levels(x3.shape)
    rec = np.empty_like(x3)
    codes = np.empty(x3.size, dtype=np.int32)
    outliers = np.empty(x3.size, dtype=x3.dtype)
    stats = np.zeros((max(levels, 1), N_STATS), dtype=np.float64)
    has_prev = prev3 is not None
    prev = prev3.ravel() if has_prev else np.zeros(1, dtype=x3.dtype)
    kernel = _encode_temporal if has_prev else _encode_intra
    n, n_out, sse = kernel(x3.ravel(), rec.ravel(), prev, n0, n1, n2, qlev, weights, float(eb_abs), int(radius), codes,
                           outliers, stats)
    assert n == x3.size
    return codes, outliers[:n_out].copy(), rec, stats, sse


def decode_field(codes, outliers, shape3, dtype, prev3, qlev, weights, *, radius=32767):
    """Reconstruct a 3-D field from its codes (the inverse of :func:`encode_field`, bit for bit).

    Raises
    ------
    ValueError
        If the number of codes or outliers does not match the shape.
    """
    n0, n1, n2 = shape3
    size = n0 * n1 * n2
    if codes.size != size:
        raise ValueError(f"stream codec: {codes.size} codes for a field of {size} values")
    rec = np.empty(size, dtype=dtype)
    has_prev = prev3 is not None
    prev = prev3.ravel() if has_prev else np.zeros(1, dtype=dtype)
    stats = np.zeros((1, N_STATS), dtype=np.float64)
    padded = np.zeros(outliers.size + 1, dtype=dtype)  # a spare value: see _decode_point
    padded[:outliers.size] = outliers
    kernel = _decode_temporal if has_prev else _decode_intra
    _, n_esc, _ = kernel(rec, prev, n0, n1, n2, qlev, weights, int(radius), codes.astype(np.int32, copy=False),
                         padded, stats)
    if n_esc != outliers.size:
        raise ValueError(f"stream codec: {n_esc} outlier codes but {outliers.size} outlier values")
    return rec.reshape(shape3)


_T = np.array([[1.0, 0.0, 0.0], [0.0, 1.0, -1.0], [-1.0, 0.0, 1.0]])  # (S(rec), p - S(p), S(p) - S(rec))
_PRIOR = np.array([1.0, 1.0, 0.0])  # interpolate the temporal difference: S(rec) + p - S(p)
_CANDIDATES = (_PRIOR, np.array([1.0, 0.0, 0.0]), np.array([1.0, 1.0, 1.0]))  # also: spatial only, temporal only
_LOW, _HIGH = np.array([0.0, 0.0, -0.5]), np.array([1.5, 1.2, 1.5])  # a physically sensible box for the fit
_CANDIDATE_ROWS = np.array(_CANDIDATES)
_EYE, _DEFAULT = np.eye(3), np.array([1.0, 1.0, -1.0])


def fit_weights(stats, shrink=0.05):
    """Least-squares blend weights per level from merged statistics, shrunk towards a prior.

    The fit is done on the less collinear features ``S(rec)``, ``p - S(p)`` (the detail of the
    previous frame the interpolation misses) and ``S(p) - S(rec)`` (the coarse temporal change),
    with a ridge term ``shrink * diag(G)`` pulling towards ``S(rec) + p - S(p)``: ``p`` and ``S(p)``
    are nearly collinear on smooth fields, and an unshrunk fit on one frame does not carry to the next.
    The fit is then clipped to a box (detail persistence in ``[0, 1.2]``...) and the blend with the
    least residual energy on the statistics among it, the prior, spatial-only and temporal-only wins.

    Parameters
    ----------
    stats : ndarray of float64, shape (L, 13)
        Sums over points of each level (from :func:`encode_field`, possibly summed over blocks,
        ranks and steps: the statistics merge by addition).
    shrink : float
        Relative ridge strength.

    Returns
    -------
    weights : ndarray of float64, shape (L, 3)
        On ``(S(rec), p, S(p))``; ``(1, 1, -1)`` where a level has no statistics.
    """
    stats = np.asarray(stats, dtype=np.float64)
    n = stats.shape[0]
    g = stats[:, [0, 1, 2, 1, 4, 5, 2, 5, 8]].reshape(n, 3, 3)
    gt = _T @ g @ _T.T  # (n, 3, 3)
    bt = stats[:, 9:12] @ _T.T  # (n, 3)
    d = np.diagonal(gt, axis1=1, axis2=2)
    scale = np.trace(gt, axis1=1, axis2=2)
    ok = np.isfinite(gt).all(axis=(1, 2)) & np.isfinite(bt).all(axis=1) & (scale > 0)
    out = np.empty((n, 3))
    out[:] = _DEFAULT
    if not ok.any():
        return out
    every = bool(ok.all())  # (the usual case: no copies; the same values either way)
    if every:
        xx = stats[:, 12]
    else:
        gt, bt, d, scale, xx = gt[ok], bt[ok], d[ok], scale[ok], stats[ok, 12]
    reg = shrink * d + 1e-12 * scale[:, None]
    a = gt + reg[:, :, None] * _EYE
    try:
        v = np.linalg.solve(a, (bt + reg * _PRIOR)[:, :, None])[:, :, 0]
    except np.linalg.LinAlgError:
        return out
    cands = np.empty((v.shape[0], 1 + len(_CANDIDATES), 3))  # C order, as np.stack(..., axis=1) gave
    cands[:, 0] = np.clip(v, _LOW, _HIGH)
    cands[:, 1:] = _CANDIDATE_ROWS
    sse = (xx[:, None] - 2.0 * np.einsum("mkc,mc->mk", cands, bt)
           + np.einsum("mkc,mcd,mkd->mk", cands, gt, cands))
    best = cands[np.arange(len(cands)), np.argmin(sse, axis=1)]
    if every:
        out[:] = best @ _T
    else:
        out[ok] = best @ _T
    return out
