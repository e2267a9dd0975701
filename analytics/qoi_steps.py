"""Quantization steps of moment side information, and the rounding margin they leave for decoders.

A moment ``m_k`` quantized with step ``s_k`` is within ``s_k / 2`` of its target; the corrected field the
decoder delivers in ``out_dtype`` then differs from the producer's, on another machine, by at most one unit
in the last place per value, which moves the moment by at most the rounding margin ``b_k``
(:func:`rounding_margin`). Two steps: :func:`wide_steps` (the whole tolerance less twice the margin) and
:func:`side_steps` (half the smallest tolerance: what format 1 always used);
:func:`~stagelearn.analytics.qoi_side.protect` picks one per moment and verifies ``|error| + b <= tol``.
"""

from __future__ import annotations

import numpy as np

from .qoi import MomentSet


def side_steps(abs_tol, names, fraction=1.0):
    """Quantization step of each moment: ``fraction`` times its smallest tolerance over the points.

    Parameters
    ----------
    abs_tol : ndarray of shape (P, K)
        Absolute tolerance at every point (:func:`~stagelearn.analytics.qoi.tolerance`).
    names : sequence of str
        The moments' names (for the error).
    fraction : float, default=1
        Of the smallest tolerance (1: half the tolerance is the quantization's, half a rounding margin).

    Returns
    -------
    steps : ndarray of shape (K,), float64

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


def rounding_margin(f, moment_set, dtype=np.float32):
    """How far rounding each value of ``f`` by one unit in the last place of ``dtype`` can move each moment.

    ``b(x) = eps sum_v |W(x, v)| (|f(x, v)| + tiny) (1 + 2^-20 + N 2^-52 / eps)``: one unit is at most
    ``eps |f|`` for a normal value and ``eps tiny`` (the smallest subnormal) below; the last factor is a
    slack for float64 summation-order differences (``N`` values per point) between the machine that
    checks and one that decodes.

    Parameters
    ----------
    f : ndarray
        The field (any real dtype; ``P`` points of ``N`` values).
    moment_set : MomentSet
    dtype : floating dtype, default=float32
        The dtype the field is delivered in (``out_dtype`` of :func:`restore`).

    Returns
    -------
    b : ndarray of shape (P, K), float64

    Raises
    ------
    ValueError
        When ``dtype`` is not a floating dtype.
    """
    if not np.issubdtype(np.dtype(dtype), np.floating):
        raise ValueError(f"rounding margin: output dtype {np.dtype(dtype)} is not floating point")
    fi = np.finfo(dtype)
    eps, tiny = float(fi.eps), float(fi.tiny)
    f2 = np.abs(np.asarray(f, dtype=np.float64)).reshape(-1, moment_set.n_features) + tiny
    absolute = MomentSet(moment_set.names, np.abs(moment_set.basis), np.abs(moment_set.coeffs))
    return absolute.apply(f2) * (eps * (1.0 + 2.0 ** -20 + moment_set.n_features * 2.0 ** -52 / eps))


def wide_steps(abs_tol, margin):
    """The whole-tolerance step of each moment, ``2 min_x (abs_tol - 2 margin) (1 - 2^-10)``.

    Parameters
    ----------
    abs_tol, margin : ndarray of shape (P, K)
        Absolute tolerance (:func:`~stagelearn.analytics.qoi.tolerance`) and rounding margin
        (:func:`rounding_margin`) at every point.

    Returns
    -------
    steps : ndarray of shape (K,), float64
        NaN for a moment whose margin leaves no positive step (it takes :func:`side_steps`).
    """
    with np.errstate(invalid="ignore"):
        steps = 2.0 * (np.asarray(abs_tol, dtype=np.float64) - 2.0 * np.asarray(margin, dtype=np.float64)).min(
            axis=0, initial=np.inf) * (1.0 - 2.0 ** -10)
    return np.where(np.isfinite(steps) & (steps > 0), steps, np.nan)
