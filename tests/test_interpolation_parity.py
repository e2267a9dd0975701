"""The interpolation kernels (analytics/stream_codec/interpolation.py) against a plain-Python traversal.

The reference below is the per-point traversal written out in Python (IEEE float64 arithmetic, the
same expressions in the same order, values stored in the field's dtype): codes, outliers,
reconstruction, least-squares statistics and the sum of squared errors of ``encode_field`` must be
the same bits, and ``decode_field`` must give back the reconstruction bit for bit. Shapes are small
(1 to 23 points per axis, odd and even, 1-D to 5-D), with and without a previous frame, with a
pointwise bound and a small ``radius`` (outliers by bound and by code range), and non-finite values.
"""

import math
import zlib

import numpy as np
import pytest

from stagelearn.analytics.stream_codec.interpolation import (N_STATS, as_3d_shape, decode_field, encode_field,
                                                             level_counts, n_levels)


def _interp(a, j, st, i, s, n):
    m1 = float(a[j - s * st])
    if i + s < n:
        p1 = float(a[j + s * st])
        has_m3, has_p3 = i - 3 * s >= 0, i + 3 * s < n
        if has_m3 and has_p3:
            return (-float(a[j - 3 * s * st]) + 9.0 * m1 + 9.0 * p1 - float(a[j + 3 * s * st])) / 16.0
        if has_p3:
            return (3.0 * m1 + 6.0 * p1 - float(a[j + 3 * s * st])) / 8.0
        if has_m3:
            return (-float(a[j - 3 * s * st]) + 6.0 * m1 + 3.0 * p1) / 8.0
        return (m1 + p1) / 2.0
    return m1


def reference_encode(x3, prev3, qlev, weights, eb_abs, radius):
    """SZ3's traversal point by point in plain Python (see the module docstring)."""
    n0, n1, n2 = x3.shape
    cast = x3.dtype.type
    x, rec = x3.ravel(), np.empty(x3.size, x3.dtype)
    prev = None if prev3 is None else prev3.ravel()
    levels = n_levels(x3.shape)
    stats = np.zeros((max(levels, 1), N_STATS))
    codes, outliers, sse = [], [], 0.0

    def code(j, pred, ql):
        nonlocal sse
        xv = float(x[j])
        with np.errstate(invalid="ignore", over="ignore"):
            k = (xv - pred) * (1.0 / ql) + 0.5
            k = math.floor(k) if math.isfinite(k) else k
            if abs(k) <= radius:
                rec[j] = cast(pred + k * ql)
                err = xv - float(rec[j])
                if eb_abs <= 0.0 or abs(err) <= eb_abs:
                    codes.append(int(k))
                    sse += err * err
                    return
        rec[j] = x[j]
        codes.append(radius + 1)
        outliers.append(x[j])

    code(0, float(prev[0]) if prev is not None else 0.0, qlev[levels] if levels else qlev[0])
    shape, strides = (n0, n1, n2), (n1 * n2, n2, 1)
    for lev in range(levels - 1, -1, -1):
        s = 1 << lev
        w0, w1, w2 = (float(v) for v in weights[lev])
        g = [0.0] * 10
        for d in range(3):
            if shape[d] <= s:
                continue
            starts = [(s, 2 * s) if a == d else ((0, s) if a < d else (0, 2 * s)) for a in range(3)]
            for i0 in range(starts[0][0], n0, starts[0][1]):
                for i1 in range(starts[1][0], n1, starts[1][1]):
                    for i2 in range(starts[2][0], n2, starts[2][1]):
                        j = i0 * strides[0] + i1 * strides[1] + i2
                        i = (i0, i1, i2)[d]
                        sr = _interp(rec, j, strides[d], i, s, shape[d])
                        pred = sr
                        if prev is not None:
                            pj, sp, xv = float(prev[j]), _interp(prev, j, strides[d], i, s, shape[d]), float(x[j])
                            pred = w0 * sr + w1 * pj + w2 * sp
                            for t, v in enumerate((sr * sr, sr * pj, sr * sp, pj * pj, pj * sp, sp * sp,
                                                   sr * xv, pj * xv, sp * xv, xv * xv)):
                                g[t] += v
                        code(j, pred, float(qlev[lev]))
        if prev is not None:
            stats[lev] = [g[0], g[1], g[2], g[1], g[3], g[4], g[2], g[4], g[5], g[6], g[7], g[8], g[9]]
    return np.array(codes, np.int32), np.array(outliers, x3.dtype), rec.reshape(x3.shape), stats, sse


def _case(rng, shape, dtype, temporal, mode):
    grids = np.meshgrid(*[np.linspace(0.0, 3.0, n) for n in shape], indexing="ij")
    base = sum(np.sin((k + 1.3) * g) for k, g in enumerate(grids))
    x = (base + 0.05 * rng.standard_normal(shape)).astype(dtype)
    if mode == "special" and x.size > 3:
        x.flat[rng.integers(1, x.size, 3)] = [np.nan, np.inf, 1e30]
    x3 = x.reshape(as_3d_shape(shape))
    levels = n_levels(x3.shape)
    qlev = 1e-2 * (1.5 ** rng.random(levels + 1))
    rows = max(levels, 1)
    weights = np.column_stack([rng.uniform(0.5, 1.2, rows), rng.uniform(0, 1, rows), rng.uniform(-1, 0, rows)])
    prev3 = None
    if temporal:
        prev3 = (x3 + 0.02 * rng.standard_normal(x3.shape)).astype(dtype)
    eb_abs = 4e-3 if mode == "bound" else 0.0
    radius = 3 if mode in ("radius", "special") else 32767
    return x3, prev3, qlev, weights, eb_abs, radius


SHAPES = [(1,), (2,), (5,), (23,), (1, 1, 1), (2, 3), (7, 4), (16, 9), (4, 5, 6), (9, 8, 11), (3, 17, 13),
          (12, 1, 2), (2, 3, 2, 5), (3, 2, 4, 3, 6), (1, 19, 1)]


@pytest.mark.parametrize("mode", ["plain", "bound", "radius", "special"])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("temporal", [False, True])
def test_kernels_match_plain_python_traversal(mode, dtype, temporal):
    rng = np.random.default_rng(zlib.crc32(f"{mode} {np.dtype(dtype).name} {temporal}".encode()))
    n_outliers = 0
    for shape in SHAPES:
        x3, prev3, qlev, weights, eb_abs, radius = _case(rng, shape, dtype, temporal, mode)
        want = reference_encode(x3, prev3, qlev, weights, eb_abs, radius)
        got = encode_field(x3, prev3, qlev, weights, eb_abs=eb_abs, radius=radius)
        assert got[0].tobytes() == want[0].tobytes(), shape
        assert got[1].dtype == want[1].dtype and got[1].tobytes() == want[1].tobytes(), shape
        assert got[2].tobytes() == want[2].tobytes(), shape
        assert got[3].tobytes() == want[3].tobytes(), shape
        assert np.float64(got[4]).tobytes() == np.float64(want[4]).tobytes(), shape
        assert int(level_counts(x3.shape).sum()) == x3.size
        rec = decode_field(got[0], got[1], x3.shape, x3.dtype, prev3, qlev, weights, radius=radius)
        assert rec.tobytes() == want[2].tobytes(), shape
        n_outliers += got[1].size
    assert (n_outliers > 0) == (mode != "plain")  # outliers by bound, by code range, non-finite values
