"""Synthetic partitioned data with a known spectrum, controllable heterogeneity and drift.

Rank ``r`` of ``p`` draws ``x = Q(t) (s_r * z) + mu_r`` with ``z ~ N(0, I)``. The spectrum
``lambda`` has ``k`` well-separated leading values. Each leading direction ``j`` is "owned" by
rank ``j mod p``; its variance on rank ``r`` is ``lambda_j * ((1 - h) + h * p * [r owns j])``, so
the pooled covariance of the centred parts is ``Q diag(lambda) Q^T`` for every heterogeneity
``h`` in [0, 1]: ``h = 0``
is i.i.d., ``h = 1`` gives each rank disjoint dominant directions (what a subdomain sees). Means
shift by ``h`` along a rank-specific minor direction, which adds between-rank variance to those
minor directions (up to ``h^2`` each), so the pooled tail is 0.5 plus that. ``Q(t) = expm(t * drift * K) Q0`` rotates
slowly with a fixed skew-symmetric ``K``.
"""

from __future__ import annotations

import numpy as np


def spectrum(d, k):
    """Leading values 10, 8, 6.4, ... (ratio 0.8), then a flat tail of 0.5."""
    lam = np.full(d, 0.5)
    lam[:k] = 10.0 * 0.8 ** np.arange(k)
    return lam


def basis(d, t=0.0, drift=0.0, seed=0):
    """Orthonormal ``Q(t)`` (columns are the population principal directions)."""
    rng = np.random.default_rng(seed)
    Q0 = np.linalg.qr(rng.normal(size=(d, d)))[0]
    if t == 0 or drift == 0:
        return Q0
    K = rng.normal(size=(d, d))
    K = (K - K.T) / np.sqrt(d)
    w, U = np.linalg.eig(t * drift * K)  # expm of a skew-symmetric matrix
    R = (U @ np.diag(np.exp(w)) @ np.linalg.inv(U)).real
    return R @ Q0


def sample(rank, size, n, d, k, *, heterogeneity, t=0.0, drift=0.0, seed=0, draw=0):
    """``n`` samples of rank ``rank`` (ndarray of shape (n, d)) at time ``t``.

    ``seed`` fixes the population (basis and drift); ``draw`` selects an independent sample of
    the same population (e.g. held-out data).
    """
    lam = spectrum(d, k)
    w = np.ones(d)
    owned = np.array([j % size == rank for j in range(k)])
    w[:k] = (1 - heterogeneity) + heterogeneity * size * owned
    Q = basis(d, t, drift, seed)
    rng = np.random.default_rng([seed, draw, rank, int(round(t * 1000))])
    X = (rng.normal(size=(n, d)) * np.sqrt(lam * w)) @ Q.T
    shift = np.zeros(d)
    shift[k + rank % max(d - k, 1)] = heterogeneity
    return X + shift @ Q.T
