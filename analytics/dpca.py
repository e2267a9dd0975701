"""A family of distributed PCA algorithms for data partitioned (non-i.i.d.) across MPI ranks.

Every algorithm finds the ``k`` leading eigenvectors of the global covariance
``C = sum_r A_r``, where rank ``r`` holds only ``A_r = S_r / (n - 1)``, its scatter about the
*global* mean (one all-reduce of ``n_r`` and the local sums gives that mean, so between-rank mean
differences are part of ``C``). They differ in what they communicate, counted by one
:class:`~stagelearn.analytics.comm_counter.CommCounter` (payload bytes and rounds):

===============  ==========================================  ========================================
algorithm        one round                                   reference
===============  ==========================================  ========================================
``exact``        all-reduce of A_r (d x d), then eigh        Chan, Golub & LeVeque 1979 (merge)
``oneshot``      all-gather of local bases (d x k)           projector averaging (Fan et al. 2019)
``subspace``     all-reduce of A_r V (d x k), QR             block power / subspace iteration
``oja``          H local Oja steps, all-reduce of V (d x k)  Oja 1982; local SGD with averaging
``iag``          one rank broadcasts its gradient change     Wang, Jiao, Wai, Gu, AISTATS 2023
                 (d x k), Riemannian ascent step, QR
``gossip``       K Chebyshev-accelerated gossip steps with   Ye & Zhang, DeEPCA (2021); Scaman et
                 neighbours (deg x d x k each), QR           al., JMLR 2019 (accelerated gossip)
``warm_ritz``    warm start from the previous basis;         ours: subspace tracking with a
                 all-reduce of A_r [V g] (d x (k+1),         Rayleigh-Ritz step and a Davis-Kahan
                 float32), Rayleigh-Ritz, estimated stop     stopping estimate (Davis & Kahan 1970)
``delta_ritz``   all-gather of the int8 delta-coded change   ours (:mod:`.dpca_delta`): error
                 of A_r [V g] (closed loop), Rayleigh-Ritz,  feedback, certified stop (Davis-Kahan
                 certified stop                              + interlacing + Weyl)
===============  ==========================================  ========================================

``delta_power`` is ``delta_ritz`` without the guard column (``k`` columns; the same certificate);
``delta_ritz_rs`` is ``delta_ritz`` through a two-phase quantized all-reduce (reduce-scatter of
int8 segments, re-quantized at the owner with error feedback, all-gather) instead of an
all-gather: fewer wire bytes (:mod:`.quantized_allreduce`). ``krylov_f32`` (restarted block Krylov,
float32) and ``gossip_int8`` (DeEPCA with int8 delta-coded messages) are the same-precision
baselines of :mod:`.dpca_baselines`.
``exact_triu`` is ``exact`` sending only the upper triangle (d (d + 1) / 2 numbers);
``subspace_f32`` is ``subspace`` with float32 messages. The gossip methods' graphs and mixing
weights are in :mod:`.dpca_graphs`; the ``delta_*`` methods' per-round control decisions are rank
0's (:mod:`.dpca_control`), as is ``warm_ritz``'s stop.

:func:`solve` runs one algorithm for one problem with a stopping rule and records the subspace
error after every round; :class:`~stagelearn.analytics.learners.distributed_pca.DistributedPCA`
wraps them as a streaming estimator with the scikit-learn API.
"""

from __future__ import annotations

import math

import numpy as np

from .comm_counter import CommCounter
# the graphs moved to dpca_graphs; importable from here as before
from .dpca_graphs import gossip_setup, grid_graph, metropolis_weights, mixing_second_eigenvalue, ring_graph  # noqa: F401

ALGORITHMS = ("exact", "exact_triu", "oneshot", "subspace", "subspace_f32", "oja", "iag", "gossip", "warm_ritz",
              "delta_ritz", "delta_power", "delta_ritz_rs", "krylov_f32", "gossip_int8")


# ----------------------------------------------------------------------------- helpers
def orthonormal(W):
    """Orthonormal basis of the columns of ``W`` (thin QR with a deterministic sign)."""
    Q, R = np.linalg.qr(W)
    signs = np.sign(np.diag(R))
    signs[signs == 0] = 1.0
    return Q * signs


def sin_theta(V, U):
    """Sine of the largest principal angle between the column spaces of ``V`` and ``U`` (orthonormal)."""
    return float(np.linalg.norm(V - U @ (U.T @ V), 2))


def top_eigvecs(A, k):
    """The ``k`` leading eigenvectors (columns) and eigenvalues of a symmetric matrix."""
    w, V = np.linalg.eigh(A)
    return V[:, ::-1][:, :k], w[::-1][:k]


def local_problem(X, counter):
    """This rank's share ``A_r`` of the global covariance, from its samples (one all-reduce).

    Parameters
    ----------
    X : ndarray of shape (n_samples, n_features)
    counter : CommCounter

    Returns
    -------
    A_r : ndarray of shape (n_features, n_features)
        ``sum_r A_r`` is the covariance (``ddof=1``) of all samples on all ranks.
    mean : ndarray of shape (n_features,)
        Global mean.
    n : int
        Global sample count.
    """
    X = np.asarray(X, dtype=np.float64)
    s = counter.allreduce(np.concatenate([[X.shape[0]], X.sum(axis=0)]))
    n, mean = s[0], s[1:] / max(s[0], 1)
    Xc = X - mean
    return Xc.T @ Xc / max(n - 1, 1), mean, int(n)


class FactorShare:
    """A rank's share ``A_r = F F^T`` kept as its factor ``F`` (d x n_r), for ``d`` too large for a d x d matrix.

    ``A_r @ X`` costs ``O(d n_r m)`` instead of ``O(d^2 m)`` and ``d^2`` memory; ``delta_ritz``'s
    complement bound uses the ``n_r x n_r`` Gram matrix (exact, :func:`.dpca_delta.complement_lambda_max`).
    Works with the algorithms that only multiply (``subspace*``, ``warm_ritz``, ``delta_*``).
    """

    def __init__(self, factor):
        self.factor = np.asarray(factor, dtype=np.float64)
        self.shape = (self.factor.shape[0], self.factor.shape[0])

    def __matmul__(self, X):
        return self.factor @ (self.factor.T @ X)


def local_factor(X, counter):
    """:func:`local_problem` as a :class:`FactorShare`: ``F = (X - mean)^T / sqrt(n - 1)`` (one all-reduce).

    Returns
    -------
    share : FactorShare
    mean : ndarray of shape (n_features,)
    n : int
    """
    X = np.asarray(X, dtype=np.float64)
    s = counter.allreduce(np.concatenate([[X.shape[0]], X.sum(axis=0)]))
    n, mean = s[0], s[1:] / max(s[0], 1)
    return FactorShare((X - mean).T / math.sqrt(max(n - 1, 1))), mean, int(n)


# ----------------------------------------------------------------------------- solver
class Solve:
    """History of one run: ``history`` of (rounds, payload bytes, sin theta), ``wire`` (wire bytes) per round."""

    def __init__(self, counter, reference=None):
        self.counter, self.reference = counter, reference
        self.history, self.wire = [], []

    def record(self, V):
        if self.reference is not None:
            self.history.append((self.counter.rounds, self.counter.bytes_sent, sin_theta(V, self.reference)))
            self.wire.append(self.counter.wire_bytes)


def solve(algorithm, A_r, k, comm, *, V0=None, tol=1e-3, max_rounds=200, reference=None, counter=None,
          seed=0, oja_local_steps=4, gossip_steps=4, graph=None, guard=None, state=None, patience=None,
          sketch="auto", first_bits="auto", rate_target=None):
    """Run one distributed PCA algorithm on the local shares ``A_r`` (collective over ``comm``).

    Parameters
    ----------
    algorithm : str
        One of :data:`ALGORITHMS`.
    A_r : ndarray of shape (d, d)
        This rank's share of the covariance (:func:`local_problem`).
    k : int
        Components.
    comm : mpi4py.MPI.Comm
    V0 : ndarray of shape (d, k), optional
        Warm start (``subspace``, ``oja``, ``iag``, ``gossip``, ``warm_ritz``); default random
        (same seed on every rank).
    tol : float
        Stop when the basis moves less than ``tol / 10`` (sine of the largest principal angle
        between consecutive iterates; a local test, agreed with one MAX all-reduce that is not
        counted, also for ``gossip``) or after ``max_rounds`` rounds. Movement is a heuristic, not
        an error bound.
    reference : ndarray of shape (d, k), optional
        The exact basis; when given, the error is recorded after every round.
    counter : CommCounter, optional
    graph : list of list of int, optional
        Neighbours of every rank for ``gossip`` (default: ring).
    guard : ndarray of shape (d, 1), optional
        The previous call's guard vector for ``warm_ritz`` (returned in ``info["guard"]``).
    state : dict, optional
        The previous call's ``info["state"]`` for ``delta_ritz`` (guard and reference products).
        ``delta_ritz`` stops on its certificate (upper bound on sin theta <= ``tol``), not on movement.
    patience : int, optional
        ``delta_*`` only: also stop when the certificate stalls (:func:`.dpca_delta.delta_ritz`).
    sketch : {"auto", "always", "never"}
        ``delta_*`` only: when to send the complement sketch (:mod:`.dpca_certificate`).
    first_bits, rate_target :
        ``delta_*`` only: the first round's code width and its target (:mod:`.dpca_rate`).

    Returns
    -------
    V : ndarray of shape (d, k)
        This rank's basis (identical on all ranks except for ``gossip``).
    info : dict
        ``rounds``, ``bytes_sent`` (payload, this rank), ``wire_bytes`` (this rank),
        ``history``, ``wire_history``, ``guard`` (for the next ``warm_ritz``).
    """
    counter = counter or CommCounter(comm)
    d = A_r.shape[0]
    p = comm.Get_size()
    run = Solve(counter, reference)
    if V0 is None:
        V0 = orthonormal(np.random.default_rng(seed).normal(size=(d, k)))
    info = {}
    if algorithm == "exact":
        V, _ = top_eigvecs(counter.allreduce(A_r), k)
        run.record(V)
    elif algorithm == "exact_triu":
        iu = np.triu_indices(d)
        C = np.zeros((d, d))
        C[iu] = counter.allreduce(A_r[iu])
        V, _ = top_eigvecs(C + np.triu(C, 1).T, k)
        run.record(V)
    elif algorithm == "oneshot":
        Vr, _ = top_eigvecs(A_r, k)
        bases = counter.allgather(Vr)
        V, _ = top_eigvecs(sum(B @ B.T for B in bases) / p, k)
        run.record(V)
    else:
        from .dpca_baselines import gossip_int8, krylov_f32
        from .dpca_delta import delta_ritz

        step = {"subspace": _subspace, "subspace_f32": _subspace_f32, "oja": _oja, "iag": _iag, "gossip": _gossip,
                "warm_ritz": _warm_ritz, "delta_ritz": delta_ritz,
                "delta_power": lambda *a, **kw: delta_ritz(*a, guard_columns=0, **kw),
                "delta_ritz_rs": lambda *a, **kw: delta_ritz(*a, collective="two_phase", **kw),
                "krylov_f32": krylov_f32, "gossip_int8": gossip_int8}[algorithm]
        V = step(A_r, V0, k, comm, counter, run, tol=tol, max_rounds=max_rounds, oja_local_steps=oja_local_steps,
                 gossip_steps=gossip_steps, graph=graph, guard=guard, info=info, state=state, patience=patience,
                 sketch=sketch, first_bits=first_bits, rate_target=rate_target)
    info.update(rounds=counter.rounds, bytes_sent=counter.bytes_sent, wire_bytes=counter.wire_bytes,
                history=run.history, wire_history=run.wire)
    return V, info


def _converged(comm, V, V_old, tol):
    from mpi4py import MPI

    moved = np.array([sin_theta(V, V_old)])
    comm.Allreduce(MPI.IN_PLACE, moved, op=MPI.MAX)
    return moved[0] < tol / 10


def _iterate(update, V, comm, run, tol, max_rounds):
    """Apply ``update(V) -> V_new`` until the basis stops moving (shared loop of the simple methods)."""
    for _ in range(max_rounds):
        V_new = update(V)
        run.record(V_new)
        done = _converged(comm, V_new, V, tol)
        V = V_new
        if done:
            break
    return V


def _subspace(A_r, V, k, comm, counter, run, *, tol, max_rounds, **_):
    return _iterate(lambda V: orthonormal(counter.allreduce(A_r @ V)), V, comm, run, tol, max_rounds)


def _subspace_f32(A_r, V, k, comm, counter, run, *, tol, max_rounds, **_):
    return _iterate(lambda V: orthonormal(counter.allreduce(A_r @ V, dtype=np.float32)), V, comm, run, tol, max_rounds)


def _oja(A_r, V, k, comm, counter, run, *, tol, max_rounds, oja_local_steps, **_):
    """Local Oja/power steps on p * A_r (a local estimate of C), averaged every H steps."""
    p = comm.Get_size()
    scale = 1.0 / max(np.linalg.norm(A_r * p, 2), 1e-300)

    def update(V):
        W = V
        for _ in range(oja_local_steps):
            W = orthonormal(W + scale * p * (A_r @ W))
        return orthonormal(counter.allreduce(W) / p)

    return _iterate(update, V, comm, run, tol, max_rounds)


def _iag(A_r, V, k, comm, counter, run, *, tol, max_rounds, **_):
    """Incremental aggregated Riemannian gradient ascent on the Stiefel manifold.

    Each rank stores its last gradient ``g_r = A_r V_{t_r}``; the aggregate ``G = sum_r g_r`` is
    kept on every rank. In round ``t`` only rank ``t mod p`` refreshes its gradient and
    broadcasts the change. Step: ``V <- qf(V + eta (I - V V^T) G)`` with ``eta = 1 / ||G||``.
    Generalised from the paper's Riemannian formulation to ``k`` columns with a QR retraction.
    """
    p, r = comm.Get_size(), comm.Get_rank()
    g = A_r @ V
    G = counter.allreduce(g)  # initial full aggregation
    rounds_since_check = 0
    for t in range(max_rounds):
        i = t % p
        delta = counter.bcast((A_r @ V - g) if r == i else np.zeros_like(g), root=i)
        if r == i:
            g = g + delta
        G = G + delta
        eta = 1.0 / max(np.linalg.norm(G, 2), 1e-300)
        V_new = orthonormal(V + eta * (G - V @ (V.T @ G)))
        run.record(V_new)
        rounds_since_check += 1
        done = rounds_since_check >= p and _converged(comm, V_new, V, tol / p)
        V = V_new
        if done:
            break
    return V


def _gossip(A_r, V, k, comm, counter, run, *, tol, max_rounds, gossip_steps, graph, **_):
    """Decentralised power iteration with gradient tracking and Chebyshev-accelerated gossip (DeEPCA)."""
    p, r = comm.Get_size(), comm.Get_rank()
    graph, nbrs, weights, eta = gossip_setup(graph, p, r)

    def mix(S):
        prev, cur = S, S
        for _ in range(gossip_steps):
            got = counter.neighbours(cur, nbrs) if nbrs else {}
            wcur = weights[r] * cur + sum(weights[j] * got[j] for j in nbrs)
            prev, cur = cur, (1 + eta) * wcur - eta * prev
        return cur

    W_old = A_r @ V
    S = mix(W_old)
    for _ in range(max_rounds):
        V_new = orthonormal(S)
        V_new *= np.sign(np.sum(V_new * V, axis=0))  # keep column signs aligned across ranks and rounds
        run.record(V_new)
        done = _converged(comm, V_new, V, tol)
        V = V_new
        if done:
            break
        W = A_r @ V
        S = mix(S + W - W_old)  # track the average of the local products
        W_old = W
    return V


def _warm_ritz(A_r, V, k, comm, counter, run, *, tol, max_rounds, info, guard=None, **_):
    """Warm-started subspace tracking with an a-posteriori stopping estimate: ours.

    Each round is one all-reduce of ``A_r X`` for ``X = [V, g]`` (``k`` columns plus one guard
    column), sent as float32 (``d (k + 1)`` x 4 bytes: the 1e-3 target needs ~1e-4 relative
    precision, float32 gives 1e-7). The result gives, at no extra communication, a
    Rayleigh-Ritz step and the Davis-Kahan estimate ``sin(theta) ~ ||C V - V Theta||_F /
    (theta_k - lambda_{k+1})`` with ``lambda_{k+1}`` estimated by the guard's Ritz value plus its
    residual norm. This is an estimate, not a guarantee: the guard can sit below
    ``lambda_{k+1}`` when the gap is small. It stops as soon as the estimate is below ``tol / 2``
    and returns the power-stepped basis ``orth(C X)``.
    """
    d = A_r.shape[0]
    g = guard if guard is not None and guard.shape == (d, 1) else np.random.default_rng(4321).normal(size=(d, 1))
    X = orthonormal(np.hstack([V, g]))
    for _ in range(max_rounds):
        W = counter.allreduce(A_r @ X, dtype=np.float32)
        w, Q = np.linalg.eigh(X.T @ W)
        Q, w = Q[:, ::-1], w[::-1]
        X, W = X @ Q, W @ Q
        R = W[:, :k] - X[:, :k] * w[:k]
        guard_residual = np.linalg.norm(W[:, k] - X[:, k] * w[k])
        # Ritz values underestimate eigenvalues: take lambda_(k+1) ~ theta_(k+1) + ||r_(k+1)||
        bound = np.linalg.norm(R) / max(w[k - 1] - w[k] - guard_residual, 1e-300)
        X = orthonormal(W)  # one power step, free: C X is already here
        run.record(X[:, :k])
        if counter.control([bound < tol / 2])[0]:  # rank 0's decision, followed by every rank (dpca_control.py)
            break
    info["guard"] = X[:, k:]
    return X[:, :k]
