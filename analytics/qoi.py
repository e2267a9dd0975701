"""Quantities of interest of a velocity-space field: linear moments, their tolerance, and the
correction that restores them in a decoded field.

A distribution function ``f(x, v)`` is coded one spatial point ``x`` at a time (one sample =
the ``N`` values of the velocity-space slice ``f(x, .)``). Physicists judge the result by moments,
linear functionals over velocity space, ``m_k(x) = sum_v W_k(x, v) f(x, v)``: density, parallel
flow, energy, or any weight vector. :class:`MomentSet` holds ``K`` such functionals in factored
form, ``W(x) = C(x) G``: a few velocity-space rows ``G`` of shape ``(J, N)`` shared by all points
(quadrature weights times ``1``, ``v_par``, ``v_par^2 / 2``, ``mu``) and per-point coefficients
``C(x)`` of shape ``(K, J)`` (the Jacobian ``2 pi B`` and the ``mu B`` term of the energy), so that
nothing of size ``P x K x N`` is ever formed.

:func:`correct_moments` is the moment-restoring post-processing of the XGC reduction work
(Banerjee, Choi, Lee, Gong, Wang, Klasky, Rangarajan and Ranka, "An algorithmic and software
pipeline for very large scale scientific data compression with error guarantees", HiPC 2022; Lee,
Gong, Choi, Banerjee, Klasky, Ranka and Rangarajan, "Error-bounded learned scientific data
compression with preservation of derived quantities", Applied Sciences 12(13), 6718, 2022): at
every point, the smallest change of the decoded slice (in a chosen norm) whose moments equal given
targets, found with Lagrange multipliers::

    minimise  sum_v (f'(v) - f(v))^2 / D(v)   subject to  W f' = m
    =>        f' = f + D W^T lambda,   (W D W^T) lambda = m - W f

with ``D = 1`` (``metric="l2"``, the least-squares projection onto ``{f : W f = m}``) or
``D = |f| + floor`` (``metric="relative"``: the change is proportional to ``f``, so it vanishes
where ``f`` does; the plain ``l2`` correction adds a smooth polynomial times the quadrature weights
and can push the tails of ``f``, where ``f ~ 0``, below zero; ``relative`` is one linearised step of the
third, ``metric="entropy"``: the smallest relative entropy ``sum f' log(f' / f) - f' + f`` subject to
the moments, ``f' = f exp(W^T lambda)``, solved by damped Newton on ``lambda``, positive wherever it
converges). None clips: clipping would undo the moments. :func:`negative_count` reports what a
correction made negative.

The targets travel as side information (:mod:`stagelearn.analytics.qoi_side`), a few numbers per
spatial point. :func:`tolerance` turns ``(tolerance, scale)`` per moment into an absolute
tolerance per point and :func:`check_moments` says, per moment, whether every point is within it.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

#: The named moments of a gyrokinetic ``f(v_par, mu)`` (Jacobian ``2 pi B``).
GYROKINETIC_MOMENTS = ("density", "parallel_flow", "energy")

#: What a tolerance may be relative to: ``absolute`` (field units), ``local`` (``|m_k(x)|`` of the
#: exact moment itself), ``max`` (``max_x |m_k(x)|`` over the block), or another moment's name
#: (its local ``|m_j(x)|``, e.g. the flow relative to the density times ``v_th = 1``).
SCALES = ("absolute", "local", "max")


@dataclass(frozen=True)
class MomentSet:
    """``K`` linear functionals over velocity space, ``W(x) = C(x) G``.

    Parameters
    ----------
    names : tuple of str
        One name per moment (``K``).
    basis : ndarray of shape (J, N)
        Velocity-space rows shared by all points (``N`` = values per velocity slice).
    coeffs : ndarray of shape (K, J) or (P, K, J)
        Coefficients of each moment on ``basis``, the same at every point or one set per point.
    """

    names: tuple
    basis: np.ndarray
    coeffs: np.ndarray

    def __post_init__(self):
        basis = np.asarray(self.basis, dtype=np.float64)
        coeffs = np.asarray(self.coeffs, dtype=np.float64)
        object.__setattr__(self, "names", tuple(self.names))
        object.__setattr__(self, "basis", basis)
        object.__setattr__(self, "coeffs", coeffs)
        if basis.ndim != 2 or coeffs.ndim not in (2, 3) or coeffs.shape[-1] != basis.shape[0]:
            raise ValueError(f"MomentSet: basis (J, N) and coeffs (K, J) or (P, K, J) must agree, got basis "
                             f"{basis.shape} and coeffs {coeffs.shape}")
        if coeffs.shape[-2] != len(self.names):
            raise ValueError(f"MomentSet: {len(self.names)} names for {coeffs.shape[-2]} moments")
        if len(set(self.names)) != len(self.names):
            raise ValueError(f"MomentSet: moment names must be unique, got {list(self.names)}")
        if not (np.all(np.isfinite(basis)) and np.all(np.isfinite(coeffs))):
            raise ValueError("MomentSet: weights must be finite (NaN or inf found)")

    @property
    def n_features(self):
        """Values per velocity slice (``N``)."""
        return self.basis.shape[1]

    def _coeffs(self, n_points):
        c = self.coeffs
        if c.ndim == 3 and c.shape[0] != n_points:
            raise ValueError(f"MomentSet has coefficients for {c.shape[0]} points, the field has {n_points}")
        return np.broadcast_to(c, (n_points,) + c.shape[-2:])

    def weights(self):
        """Dense weights ``W``: ndarray of shape (K, N) or (P, K, N) (for checks; large)."""
        return self.coeffs @ self.basis

    def apply(self, f):
        """The moments of ``f`` at every point.

        Parameters
        ----------
        f : ndarray of shape (P, N) or (P, ...) with ``N`` values per point
            Any real dtype; integrated in float64.

        Returns
        -------
        m : ndarray of shape (P, K), float64
        """
        f2 = _samples(f, self.n_features)
        g = f2 @ self.basis.T                                   # (P, J)
        return np.einsum("pkj,pj->pk", self._coeffs(len(f2)), g)


def _samples(f, n_features):
    f = np.asarray(f)
    if f.ndim < 1 or f.size % n_features or (f.ndim >= 2 and f.size // f.shape[0] % n_features):
        raise ValueError(f"field of shape {f.shape} does not hold velocity slices of {n_features} values")
    return f.reshape(-1, n_features).astype(np.float64, copy=False)


def gyrokinetic_moment_set(grid, B, names=GYROKINETIC_MOMENTS, extra=None):
    """Density, parallel flow and energy of ``f(v_par, mu)`` (as ``sim_mocks.gyrokinetic.moments``).

    Parameters
    ----------
    grid : VelocityGrid
        ``vpar``, ``mu`` and their quadrature weights ``w_vpar``, ``w_mu``.
    B : ndarray
        Magnetic field at each spatial point (any shape, ``P`` values, C order).
    names : sequence of str, default=GYROKINETIC_MOMENTS
        Which of the three, in this order.
    extra : dict of str to ndarray of shape (n_vpar * n_mu,), optional
        Further moments given by their full weight vector (quadrature included), the same at every point.

    Returns
    -------
    MomentSet
    """
    wv, wm, v, mu = grid.w_vpar, grid.w_mu, grid.vpar, grid.mu
    basis = np.stack([np.outer(wv, wm), np.outer(wv * v, wm), np.outer(wv * 0.5 * v ** 2, wm),
                      np.outer(wv, wm * mu)]).reshape(4, -1)
    B = np.asarray(B, dtype=np.float64).reshape(-1)
    jac, zero = 2.0 * np.pi * B, np.zeros_like(B)
    rows = {"density": (jac, zero, zero, zero), "parallel_flow": (zero, jac, zero, zero),
            "energy": (zero, zero, jac, jac * B)}
    unknown = [n for n in names if n not in rows]
    if unknown:
        raise ValueError(f"unknown gyrokinetic moment(s) {unknown}: choose from {list(rows)} or give a weight vector")
    coeffs = np.stack([np.stack(rows[n], axis=-1) for n in names], axis=1)   # (P, K, 4)
    names = tuple(names)
    for name, w in (extra or {}).items():
        w = np.asarray(w, dtype=np.float64).reshape(-1)
        if w.size != basis.shape[1]:
            raise ValueError(f"weight vector {name!r} has {w.size} values, the velocity grid {basis.shape[1]}")
        basis = np.vstack([basis, w])
        coeffs = np.concatenate([np.pad(coeffs, ((0, 0), (0, 0), (0, 1))), np.zeros((len(B), 1, basis.shape[0]))], 1)
        coeffs[:, -1, -1] = 1.0
        names += (name,)
    return MomentSet(names, basis, coeffs)


def correct_moments(f, moment_set, targets, *, metric="l2", floor=1e-12):
    """The smallest change of ``f`` at each point whose moments equal ``targets`` (Lagrange multipliers).

    Parameters
    ----------
    f : ndarray of shape (P, ...) with ``N`` values per point
        The decoded field (any real dtype).
    moment_set : MomentSet
    targets : ndarray of shape (P, K)
        The moments to restore (the exact ones, or their side-information values).
    metric : {"l2", "relative", "entropy"}, default="l2"
        Norm of the change: plain least squares, weighted by ``1 / (|f| + floor * max|f|)``, or the
        relative entropy ``sum f' log(f' / f) - f' + f`` (``f' = f exp(W^T lambda)``, positive; Newton).
    floor : float, default=1e-12
        ``relative`` and ``entropy``: stands in for ``|f|`` where ``f <= 0`` (times ``max|f|``).

    Returns
    -------
    f_corrected : ndarray of the shape of ``f``, float64
        ``moment_set.apply(f_corrected) == targets`` up to float64 rounding, wherever the point's
        ``K`` functionals are linearly independent (else the least-squares nearest moments).
    """
    shape = np.shape(f)
    f2 = _samples(f, moment_set.n_features)
    targets = np.asarray(targets, dtype=np.float64).reshape(len(f2), -1)
    G, C = moment_set.basis, moment_set._coeffs(len(f2))
    r = targets - moment_set.apply(f2)                                          # (P, K)
    if metric == "l2":
        A = np.einsum("pkj,ji,pli->pkl", C, G @ G.T, C)
        lam = _solve(A, r)
        return (f2 + np.einsum("pkj,pk->pj", C, lam) @ G).reshape(shape)
    if metric == "relative":
        return _relative_correction(f2, r, C, G, floor).reshape(shape)
    if metric == "entropy":
        return _entropy_correction(f2, moment_set, targets, C, G, floor).reshape(shape)
    raise ValueError(f"correct_moments: metric {metric!r}: use 'l2', 'relative' or 'entropy'")


def _relative_correction(f2, r, C, G, floor):
    """``f + D W^T lambda`` with ``D = |f| + floor * max|f|`` and ``(W D W^T) lambda = r``."""
    d = np.abs(f2) + floor * max(float(np.abs(f2).max(initial=0.0)), np.finfo(np.float64).tiny)
    A = np.einsum("pkj,pji,pli->pkl", C, np.einsum("jn,pn,in->pji", G, d, G), C)
    return f2 + d * (np.einsum("pkj,pk->pj", C, _solve(A, r)) @ G)


def _entropy_correction(f2, moment_set, targets, C, G, floor, max_iter=50, rtol=1e-13):
    """``f' = f_+ exp(W^T lambda)`` with ``W f' = targets``: damped Newton on the multipliers (positive ``f'``).

    ``f_+`` is ``f`` with values ``<= 0`` raised to ``floor * max|f|``. Each Newton step solves
    ``(W diag(f_k) W^T) d = targets - W f_k`` (the ``relative`` system at the current iterate) and
    is shortened so that no value changes by more than a factor ``e``. Points not settled after
    ``max_iter`` steps get the ``relative`` correction instead.
    """
    top = max(float(np.abs(f2).max()), np.finfo(np.float64).tiny)
    base = np.where(f2 > 0, f2, floor * top)
    lam = np.zeros_like(targets)
    scale = np.abs(targets).max(axis=1) + np.finfo(np.float64).tiny  # per point: a zero moment converges
    fk = base.copy()
    active = np.arange(len(f2))
    for _ in range(max_iter):  # Newton on the points not yet converged only
        Ca, fa = C[active], fk[active]
        r = targets[active] - np.einsum("pkj,pj->pk", Ca, fa @ G.T)
        keep = np.abs(r).max(axis=1) > rtol * scale[active]
        active, Ca, fa, r = active[keep], Ca[keep], fa[keep], r[keep]
        if not active.size:
            break
        A = np.einsum("pkj,pji,pli->pkl", Ca, np.einsum("jn,pn,in->pji", G, fa, G), Ca)
        d = _solve(A, r)
        big = np.abs(np.einsum("pkj,pk->pj", Ca, d) @ G).max(axis=1)      # max |W^T d| per point
        lam[active] += d * np.minimum(1.0, 1.0 / np.maximum(big, 1e-300))[:, None]
        fk[active] = base[active] * np.exp(np.einsum("pkj,pk->pj", Ca, lam[active]) @ G)
    else:  # points Newton did not settle: the relative correction (moments met, positivity not promised)
        Ca = C[active]
        r = targets[active] - np.einsum("pkj,pj->pk", Ca, f2[active] @ G.T)
        fk[active] = _relative_correction(f2[active], r, Ca, G, floor)
    return fk


def _solve(A, r):
    """``A_p x_p = r_p`` at every point (pseudo-inverse, so dependent functionals do not fail)."""
    return np.einsum("pkl,pl->pk", np.linalg.pinv(A, hermitian=True), r)


def tolerance(m_exact, names, tolerances, scales):
    """Absolute tolerance of each moment at each point.

    Parameters
    ----------
    m_exact : ndarray of shape (P, K)
        The exact moments (from the caller's own ``f``).
    names : sequence of str
        The ``K`` moment names (for ``scales`` that name another moment).
    tolerances : sequence of float
        One per moment, ``> 0``.
    scales : sequence of str
        One per moment: an entry of :data:`SCALES` or another moment's name.

    Returns
    -------
    abs_tol : ndarray of shape (P, K), float64

    Raises
    ------
    ValueError
        A tolerance not ``> 0`` or not finite, or an unknown scale, naming the moment.
    """
    m = np.asarray(m_exact, dtype=np.float64)
    names = list(names)
    out = np.empty_like(m)
    for k, (name, tol, scale) in enumerate(zip(names, tolerances, scales, strict=True)):
        if not (np.isfinite(tol) and tol > 0):
            raise ValueError(f"tolerance of moment {name!r} is {tol}: it must be a finite number > 0")
        if scale == "absolute":
            out[:, k] = tol
        elif scale == "local":
            out[:, k] = tol * np.abs(m[:, k])
        elif scale == "max":
            out[:, k] = tol * np.abs(m[:, k]).max(initial=0.0)
        elif scale in names:
            out[:, k] = tol * np.abs(m[:, names.index(scale)])
        else:
            raise ValueError(f"scale of moment {name!r} is {scale!r}: use one of {list(SCALES)} or a moment name "
                             f"{names}")
    return out


@dataclass(frozen=True)
class MomentCheck:
    """Whether one moment is within tolerance at every point.

    Attributes
    ----------
    name : str
    ok : bool
        ``|m - m_exact| + margin <= abs_tol`` at every point (:func:`check_moments`; margin 0 unless given).
    n_bad : int
        Points outside the tolerance.
    worst : float
        ``max (|m - m_exact| + margin) / abs_tol`` (``<= 1`` when ``ok``; inf where the tolerance is 0 and the
        error is not).
    max_abs_error : float
        ``max |m - m_exact|`` (without the margin).
    """

    name: str
    ok: bool
    n_bad: int
    worst: float
    max_abs_error: float


def check_moments(m, m_exact, abs_tol, names, margin=0.0):
    """Per moment: is every point within its tolerance (with ``margin`` to spare)?

    Parameters
    ----------
    m, m_exact, abs_tol : ndarray of shape (P, K)
    names : sequence of str
    margin : float or ndarray of shape (P, K), default=0
        What the error must leave free of the tolerance at every point (the rounding margin of
        :func:`~stagelearn.analytics.qoi_side.rounding_margin`): ``|m - m_exact| + margin <= abs_tol``.

    Returns
    -------
    checks : list of MomentCheck
    """
    err = np.abs(np.asarray(m, dtype=np.float64) - np.asarray(m_exact, dtype=np.float64))
    need = err + np.asarray(margin, dtype=np.float64)
    tol = np.asarray(abs_tol, dtype=np.float64)
    bad = ~(need <= tol)
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(need == 0, 0.0, need / tol)
    return [MomentCheck(str(name), not bool(bad[:, k].any()), int(bad[:, k].sum()),
                        float(ratio[:, k].max(initial=0.0)), float(err[:, k].max(initial=0.0)))
            for k, name in enumerate(names)]


def negative_count(f_corrected, f_decoded):
    """Values that a correction made negative (``f_corrected < 0 <= f_decoded``)."""
    a, b = np.asarray(f_corrected), np.asarray(f_decoded)
    return int(np.count_nonzero((a < 0) & (b >= 0)))
