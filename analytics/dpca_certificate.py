"""A tighter certified bound on ``lambda_max`` of the covariance on the complement of the iterate (issue 17).

Why ``delta_ritz``'s bound needs help
-------------------------------------
The certificate of :func:`.dpca_delta.certificate` needs ``B``, an upper bound on
``lambda_max(T^T C T)`` with ``T`` an orthonormal basis of the complement of ``span(X)``. The
bound every rank gets for free, ``B = sum_r b_r`` with ``b_r = lambda_max(T^T A_r T)`` (Weyl:
``lambda_max`` is subadditive), is the best one can do from ``G = C X`` and the ``b_r`` alone:
the shares ``A'_r = X X^T A_r X X^T + b_r e e^T`` (one unit vector ``e`` orthogonal to ``X``)
have the same ``G`` for an invariant ``span(X)`` and the same ``b_r``, and their complement has
``lambda_max = sum_r b_r``. The trace bound ``lambda_max(T^T C T) <= trace(C) - trace(X^T C X)``
is never better: ``trace(T^T A_r T) >= b_r`` for every rank. When every rank's complement holds
a different direction (16^3 Gray-Scott tiles from disjoint subdomains: each rank's complement is
nearly rank one, the directions differ), ``sum_r b_r`` overestimates ``lambda_max(T^T C T)`` by up
to ``p`` and exceeds ``lambda_k``, so nothing can be certified. Certifying more needs information
about how the ranks' complements line up; this module sends the least of it.

The complement sketch (deterministic)
-------------------------------------
Rank ``r`` splits ``T^T A_r T = Z_r Z_r^T + R_r R_r^T`` (its top-``q`` eigenpairs, ``Z_r``
columns ``sqrt(mu_j) z_j``; the rest ``R_r`` with ``||R_r||_2^2 = mu_(q+1)``) and sends
``Zh_r``, the int8 code of ``Z_r`` (its exact error ``e_r >= ||Zh_r - Z_r||_2`` is known to the
sender and sent). With ``Z = [Z_1 ... Z_p]``, ``R = [R_1 ... R_p]``:

``lambda_max(T^T C T) = ||[Z R]||_2^2 <= ||Z||_2^2 + ||R||_2^2
<= (sigma_1(Zh) + sqrt(sum_r e_r^2))^2 + sum_r mu_(q+1, r)``

(``[Z R][Z R]^T = Z Z^T + R R^T``; ``||[E_1 ... E_p]||_2^2 <= sum_r ||E_r||_2^2``;
``lambda_max(R R^T) <= sum_r lambda_max(R_r R_r^T)``). ``sigma_1(Zh)^2`` is ``lambda_max`` of
the ``p q x p q`` Gram matrix ``Zh^T Zh``. It does not depend on the data being of low rank: the
remainder ``sum_r mu_(q+1, r)`` is always added, so the bound is never below the truth; it is
tight when each rank's complement is dominated by ``q`` directions (whatever they are).

How it travels (``sketch_bound``)
---------------------------------
``X`` is known before the round, so the sketch travels with the round's own collectives:

- ``mode="allgather"`` (``delta_ritz``): one all-gather of ``d q`` int8 codes, ``q`` float32
  scales and ``(e_r, mu_(q+1, r))`` as float64: ``d q + 4 q + 16`` bytes per rank;
- ``mode="two_phase"`` (``delta_ritz_rs``): the rows are split into the ``p`` segments of
  :func:`.quantized_allreduce.segments`; rank ``r`` sends segment ``j`` of ``Zh_r`` (int8 and
  ``q`` float32 scales) to rank ``j`` (with its two float64 scalars to rank 0); owner ``j``
  computes the partial Gram ``Zh[j]^T Zh[j]`` (float64, upper triangle) and all-gathers it; every
  rank sums the ``p`` partial Grams. Wire bytes about ``(p - 1)/p d q + 4 (p - 1) p q (p q + 1)``.

Both are counted with ``new_round=False``: they ride in the same round as the product
exchange (an implementation could post them as ``MPI_Iallgather`` / the same two phases); their
bytes are counted in full.
"""

from __future__ import annotations

import math

import numpy as np

from .quantized_allreduce import encode_f32, segments


def local_complement_split(A_r, X, q):
    """This rank's top-``q`` part of ``A_r`` compressed to the complement of ``X``.

    Parameters
    ----------
    A_r : ndarray (d, d) or :class:`~.dpca.FactorShare`
    X : ndarray (d, m), orthonormal columns
    q : int

    Returns
    -------
    Z : ndarray (d, q)
        ``sqrt(mu_j) z_j`` for the ``q`` largest eigenpairs of ``P A_r P`` (``P = I - X X^T``).
    rest : float
        Upper bound on ``mu_(q+1)`` (0 if the rank is below ``q + 1``), with round-off slack.
    """
    F = getattr(A_r, "factor", None)
    if F is not None:
        PF = F - X @ (X.T @ F)
        mu, W = np.linalg.eigh(PF.T @ PF) if F.shape[1] else (np.zeros(0), np.zeros((0, 0)))
        mu, W = np.maximum(mu[::-1], 0.0), W[:, ::-1]
        Z = PF @ W[:, :q]  # column j has norm sqrt(mu_j)
        slack = 1e-12 * max(float(np.sum(F * F)), 1e-300)
    else:
        P = np.eye(A_r.shape[0]) - X @ X.T
        M = P @ A_r @ P
        mu, W = np.linalg.eigh((M + M.T) / 2)
        mu, W = np.maximum(mu[::-1], 0.0), W[:, ::-1]
        Z = W[:, :q] * np.sqrt(mu[:q])
        slack = 1e-12 * max(float(np.abs(A_r).sum(axis=0).max()), 1e-300)
    if Z.shape[1] < q:
        Z = np.hstack([Z, np.zeros((Z.shape[0], q - Z.shape[1]))])
    rest = float(mu[q]) if mu.size > q else 0.0
    # slack covers the eigensolver's round-off in both the split and the rest
    return Z, rest + slack * (1 + q)


def _code(Z):
    """int8 code of ``Z`` and the exact spectral norm of its error (float64, rounded up a little)."""
    codes, scale = encode_f32(Z)
    err = Z - codes.astype(np.float64) * scale.astype(np.float64)
    e = float(np.linalg.norm(err, 2)) if err.size else 0.0
    return codes, scale, e * (1 + 1e-9) + 1e-300


def _decode(buf, n, q):
    codes = buf[:n * q].view(np.int8).reshape(n, q).astype(np.float64)
    scale = buf[n * q:n * q + 4 * q].view(np.float32).astype(np.float64)
    return codes * scale


def sketch_bound(counter, A_r, X, q=1, mode="allgather"):
    """Certified upper bound on ``lambda_max`` of ``C = sum_r A_r`` on the complement of ``X`` (collective).

    Parameters
    ----------
    counter : CommCounter
    A_r : ndarray (d, d) or :class:`~.dpca.FactorShare`
    X : ndarray (d, m)
        Orthonormal; the same on every rank.
    q : int
        Directions each rank sends.
    mode : {"allgather", "two_phase"}

    Returns
    -------
    float
        ``(sigma_1(Zh) + sqrt(sum_r e_r^2))^2 + sum_r mu_(q+1, r)`` (module docstring).
    """
    comm = counter.comm
    p, me = comm.Get_size(), comm.Get_rank()
    d = X.shape[0]
    Z, rest = local_complement_split(A_r, X, q)
    if mode == "allgather":
        codes, scale, e = _code(Z)
        msg = np.concatenate([codes.ravel().view(np.uint8), scale.view(np.uint8), np.array([e, rest]).view(np.uint8)])
        bufs = counter.allgatherv(msg, new_round=False)
        Zh = np.hstack([_decode(b, d, q) for b in bufs])
        scal = np.array([b[d * q + 4 * q:].view(np.float64) for b in bufs])
        gram = Zh.T @ Zh
    elif mode == "two_phase":
        seg = segments(d, p)
        chunks, errs = [], []
        for j, (lo, hi) in enumerate(seg):
            codes, scale, e = _code(Z[lo:hi])
            errs.append(e)
            chunks.append(np.concatenate([codes.ravel().view(np.uint8), scale.view(np.uint8)]))
        # ||[E_seg_0; ...; E_seg_p-1]||_2^2 <= sum_j ||E_seg_j||_2^2 (rows stacked)
        e_r = math.sqrt(sum(x * x for x in errs)) * (1 + 1e-12)
        chunks[0] = np.concatenate([chunks[0], np.array([e_r, rest]).view(np.uint8)])
        got = counter.alltoallv(chunks, new_round=False)
        lo, hi = seg[me]
        part = np.hstack([_decode(got[r], hi - lo, q) for r in range(p)])
        H = part.T @ part
        iu = np.triu_indices(p * q)
        msg = H[iu]
        if me == 0:  # owner 0 forwards sum_r e_r^2 and sum_r mu_(q+1, r)
            sc = np.array([b[(hi - lo) * q + 4 * q:].view(np.float64) for b in got])
            msg = np.concatenate([msg, [float(np.sum(sc[:, 0] ** 2)), float(np.sum(sc[:, 1]))]])
        parts = counter.allgatherv(msg.view(np.uint8), new_round=False)
        gram = np.zeros((p * q, p * q))
        for j, b in enumerate(parts):
            v = b.view(np.float64)
            gram[iu] += v[:iu[0].size]
            if j == 0:
                e2, rest_sum = v[iu[0].size], v[iu[0].size + 1]
        gram = gram + np.triu(gram, 1).T
        scal = None
    else:
        raise ValueError(f"dpca_certificate.sketch_bound: mode must be 'allgather' or 'two_phase', got {mode!r}")
    if scal is not None:
        e2, rest_sum = float(np.sum(scal[:, 0] ** 2)), float(np.sum(scal[:, 1]))
    return combine(gram, e2, rest_sum)


def combine(gram, err_sq, rest_sum):
    """The bound from the sketches' Gram matrix ``Zh^T Zh``, ``sum_r e_r^2`` and ``sum_r mu_(q+1, r)``.

    ``(sigma_1(Zh) + sqrt(sum_r e_r^2))^2 + sum_r mu_(q+1, r)``, with round-off slack.
    """
    lam = float(np.linalg.eigvalsh(gram)[-1]) if gram.size else 0.0
    lam = max(lam, 0.0) * (1 + 1e-12) + 1e-14 * float(np.trace(gram))  # eigensolver and summation round-off
    return (math.sqrt(lam) + math.sqrt(err_sq) * (1 + 1e-12)) ** 2 * (1 + 1e-12) + rest_sum


def local_sketch(A_r, X, q=1):
    """What one rank contributes (no communication): ``(Zh_r, e_r, mu_(q+1, r))``, ``Zh_r`` decoded."""
    Z, rest = local_complement_split(A_r, X, q)
    codes, scale, e = _code(Z)
    return codes.astype(np.float64) * scale.astype(np.float64), e, rest


def sketch_message_bytes(d, q=1):
    """Payload bytes one rank sends for the sketch with ``mode="allgather"``."""
    return d * q + 4 * q + 16

def wants_sketch(free, used, sketched):
    """Whether the next round should send the complement sketch (``delta_ritz(sketch="auto")``).

    Parameters
    ----------
    free : dict
        This round's :func:`.dpca_delta.certificate` with ``B = sum_r b_r``.
    used : dict
        The certificate this round reported (with the sketch bound when the sketch was sent).
    sketched : bool
        Whether this round sent the sketch.

    Returns
    -------
    bool
        True when ``sum_r b_r`` blocked the certificate (``beta >= w_k - eps``) or, in a round
        that sent the sketch, the free certificate was more than twice the one reported. This
        decides what is sent, never what is certified.
    """
    if free["beta"] >= free["lower_k"]:
        return True
    return bool(sketched and free["bound"] > 2 * used["bound"])
