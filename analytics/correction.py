"""Pointwise error bound: correct the tiles whose reconstruction exceeds it.

A learned codec (PCA transform coding, an autoencoder) meets an average error target, not a
pointwise one. With an error bound ``e`` the producer checks every coded tile; tiles with
``max |x - x_hat| > e`` get a correction: their residuals ``x - x_hat`` are compressed together
with ZFP in fixed-accuracy mode (``zfpy``, tolerance ``e / 2``; Lindstrom, "Fixed-rate compressed
floating-point arrays", IEEE TVCG 2014), decompressed again and added, and the result is checked
once more; tiles that still exceed the bound (ZFP's bound is not strict in float32 arithmetic
near the limits of precision) are sent raw. The achieved maximum error is thus verified on the
producer, against the exact values the decoder will reconstruct.
"""

from __future__ import annotations

import numpy as np


def absolute_bound(error_bound, data_range):
    """Absolute bound from an ``error_bound`` setting.

    Parameters
    ----------
    error_bound : dict or None
        ``{"abs": e}`` (field units) or ``{"rel": r}`` (fraction of ``data_range``).
    data_range : float
        ``max - min`` of the variable in this step (all ranks).

    Returns
    -------
    bound : float or None
    """
    if not error_bound:
        return None
    if error_bound.get("abs") is not None:
        return float(error_bound["abs"])
    return float(error_bound["rel"]) * float(data_range)


def tile_max_error(tiles, rec):
    """``max |tiles - rec|`` per tile: ndarray of shape (n_tiles,), float64."""
    if tiles.shape[0] == 0:
        return np.zeros(0)
    return np.max(np.abs(tiles.astype(np.float64) - rec.astype(np.float64)), axis=1)


def correct(tiles, rec, bound, tile_shape, candidates, exact=None):
    """Correct the tiles among ``candidates`` whose error exceeds ``bound``.

    Parameters
    ----------
    tiles, rec : ndarray of shape (n_tiles, n_features), float32
        Exact tiles and their reconstruction; ``rec`` is updated in place.
    bound : float
        Absolute pointwise bound (field units), positive.
    tile_shape : tuple of int
    candidates : ndarray of bool of shape (n_tiles,)
        Tiles that are coded (not already raw).
    exact : ndarray of shape (n_tiles, n_features), optional
        The caller's values when they are finer than float32 (float64 fields): the bound is
        verified against them.

    Returns
    -------
    index : ndarray of shape (n_corrected,), int32
        Tiles carrying a correction.
    data : bytes
        The ZFP stream of their residuals (empty when none).
    still_bad : ndarray of int64
        Tiles that exceed the bound even after correction: send them raw.
    """
    ref = tiles if exact is None else exact
    err = tile_max_error(ref, rec)
    index = np.flatnonzero(candidates & ~(err <= bound)).astype(np.int32)  # NaN errors count as violations
    if index.size == 0:
        return index, b"", np.zeros(0, dtype=np.int64)
    import zfpy

    resid = (ref[index].astype(np.float64) - rec[index]).astype(np.float32)
    axes = [t for t in tile_shape if t > 1] or [1]  # ZFP takes at most 4 axes: drop singleton ones,
    if len(axes) > 3:                                # flatten tiles of more than 3 real axes
        axes = [int(np.prod(axes))]
    data = zfpy.compress_numpy(np.ascontiguousarray(resid.reshape((index.size,) + tuple(axes))), tolerance=0.5 * bound)
    rec[index] += decode_residuals(data, index.size, tiles.shape[1])
    still = index[~(tile_max_error(ref[index], rec[index]) <= bound)].astype(np.int64)
    return index, data, still


def decode_residuals(data, n, n_features):
    """Residuals of the corrected tiles: ndarray of shape (n, n_features), float32.

    Raises
    ------
    ValueError
        If the ZFP stream does not hold ``n`` tiles of ``n_features`` values.
    """
    import zfpy

    out = np.asarray(zfpy.decompress_numpy(bytes(data)), dtype=np.float32)
    if out.size != n * n_features:
        raise ValueError(f"correction section holds {out.size} values, expected {n} tiles x {n_features}")
    return out.reshape(n, n_features)
