"""Streaming distributed PCA with a selectable algorithm of :mod:`stagelearn.analytics.dpca`.

:class:`DistributedPCA` folds each rank's batch into local statistics and runs one of the
algorithms of :data:`~stagelearn.analytics.dpca.ALGORITHMS`, warm-started from its current basis;
``partial_fit`` is collective over ``comm``.
"""

from __future__ import annotations

import math

import numpy as np

from ..comm_counter import CommCounter
from ..dpca import ALGORITHMS, solve
from .base import PCAModel


def codec_tolerance(psnr_db, share=0.01):
    """The sin theta of a truncated basis whose error costs at most ``share`` of the codec's error budget.

    A tile's values lie in the step's range ``span``, so the variance of the mean-removed tile is at
    most ``d span^2 / 4``. A k-dimensional basis ``V`` at sin theta ``s`` from the exact one ``U``
    leaves at most ``s^2 sum_(j<=k) lambda_j <= s^2 d span^2 / 4`` more energy per tile outside the
    basis than ``U`` does, against the codec's budget ``d span^2 10^(-psnr_db / 10)`` per tile
    (:func:`~stagelearn.analytics.transform.quant_step_for_psnr`). So ``s <= 2 sqrt(share)
    10^(-psnr_db / 20)`` keeps the extra below ``share`` of the budget, for tiles distributed like the
    covariance the basis was learned from and a coded step whose range is no smaller than that of the
    data learned (with drift, the basis error can cost more, to first order in ``s``). With a
    complete basis (k = d) nothing leaks: the basis error then costs rate only.

    Parameters
    ----------
    psnr_db : float
        ``codec.psnr_db``.
    share : float, default=0.01
        The share of the codec's error budget (MSE per tile) the basis error may cost.

    Returns
    -------
    float
        1.8e-3 at 41 dB, 1.0e-3 at 46 dB (``share=0.01``).
    """
    return 2.0 * math.sqrt(share) * 10.0 ** (-float(psnr_db) / 20.0)


class DistributedPCA(PCAModel):
    """Streaming PCA over ranks with a selectable distributed algorithm (scikit-learn API).

    ``partial_fit`` folds this rank's batch into its local statistics and runs the algorithm,
    warm-started from the current basis, until the basis moves less than ``tol / 10``
    (``delta_ritz``: until its certified bound on sin theta is at most ``tol``).

    Parameters
    ----------
    n_components : int
    algorithm : str, default="warm_ritz"
        One of :data:`ALGORITHMS`.
    tol : float, default=1e-3
        ``learner.tol`` in staging; :func:`codec_tolerance` says what the codec's PSNR target needs
        (1e-3 suffices up to 45 dB).
    max_rounds : int, default=50
        Per ``partial_fit``.
    comm : mpi4py.MPI.Comm or None
        ``partial_fit`` is collective over it; None means ``MPI.COMM_SELF``.
    graph : list of list of int, optional
        Neighbours per rank for ``gossip`` (e.g. the simulation's decomposition adjacency).
    patience : int or None, default=5
        ``delta_*``: also end an update when the certificate has not halved in ``patience``
        rounds (it cannot separate ``lambda_k`` from ``lambda_(k+1)``, e.g. ``k`` close to ``d``);
        ``certificate_`` then says what was certified. None: only ``tol`` and ``max_rounds`` stop.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
    explained_variance_, explained_variance_ratio_ : ndarray of shape (n_components,)
    mean_ : ndarray of shape (n_features,)
    n_samples_seen_ : int
    n_components_ : int
    bytes_sent_ : int
        Payload bytes this rank sent so far (:class:`CommCounter`).
    rounds_ : int
        Communication rounds so far (the mean and explained-variance all-reduces included).
    updates_ : int
        ``partial_fit`` calls that ran the algorithm.
    certificate_ : float or None
        ``delta_ritz``, ``delta_power``: certified upper bound on sin theta of the last basis (1.0: none).
    """

    def __init__(self, n_components, *, algorithm="warm_ritz", tol=1e-3, max_rounds=50, comm=None, graph=None,
                 patience=5):
        self.n_components = n_components
        self.patience = patience
        self.algorithm = algorithm
        self.tol = tol
        self.max_rounds = max_rounds
        self.comm = comm
        self.graph = graph

    def partial_fit(self, X, y=None, *, sources=None, step=None):
        """Update with this rank's batch (collective). Returns ``self``.

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            This rank's batch (``n_samples`` may be 0).
        y, sources, step : Ignored
            Not used (API consistency with scikit-learn and the learner protocol).

        Raises
        ------
        ValueError
            On an unknown algorithm or a batch whose feature count differs from earlier ones.
        """
        from mpi4py import MPI

        if self.algorithm not in ALGORITHMS:
            raise ValueError(f"algorithm={self.algorithm!r}; choose one of {ALGORITHMS}")
        comm = self.comm or MPI.COMM_SELF
        if not hasattr(self, "_counter"):
            self._counter = CommCounter(comm)
        X = np.asarray(X, dtype=np.float64)
        d = X.shape[1]
        k = int(self.n_components)
        spare = 1 if self.algorithm in ("warm_ritz", "delta_ritz", "delta_ritz_rs") else 0
        if not 1 <= k <= d - spare:
            raise ValueError(f"n_components={k} must be in [1, {d - spare}] for algorithm {self.algorithm!r} with {d} "
                             "features (warm_ritz and delta_ritz need one spare direction)")
        # local sufficient statistics about the local mean (pairwise update, no raw moments);
        # the global mean and count travel in one all-reduce
        if not hasattr(self, "_n"):
            self._n, self._mean, self._scatter = 0, np.zeros(d), np.zeros((d, d))
        if d != self._mean.size:
            raise ValueError(f"Number of input features has changed from {self._mean.size} to {d} between calls to partial_fit")
        nb = X.shape[0]
        if nb:
            mb = X.mean(axis=0)
            Xc = X - mb
            delta = mb - self._mean
            tot_n = self._n + nb
            self._scatter += Xc.T @ Xc + np.outer(delta, delta) * (self._n * nb / tot_n)
            self._mean = self._mean + delta * (nb / tot_n)
            self._n = tot_n
        tot = self._counter.allreduce(np.concatenate([[self._n], self._n * self._mean]))
        n, mean = tot[0], tot[1:] / max(tot[0], 1)
        if n < 2:
            return self
        # this rank's scatter about the global mean, scaled so that the shares sum to the covariance
        shift = self._mean - mean
        A_r = (self._scatter + self._n * np.outer(shift, shift)) / (n - 1)
        V0 = self.components_.T if hasattr(self, "components_") else None
        rounds_before = self._counter.rounds
        V, info = solve(self.algorithm, A_r, k, comm, V0=V0, tol=self.tol, max_rounds=self.max_rounds,
                        counter=self._counter, graph=self.graph, guard=getattr(self, "_guard", None),
                        state=getattr(self, "_state", None), patience=self.patience)
        info["solver_rounds"] = self._counter.rounds - rounds_before
        self._guard = info.get("guard", getattr(self, "_guard", None))
        self._state = info.get("state", getattr(self, "_state", None))
        self.certificate_ = info.get("certificate")
        # explained variance diag(V^T C V) = sum_r diag(V^T A_r V): k + 1 numbers, not the d x k product
        tot = self._counter.allreduce(np.concatenate([[np.trace(A_r)], np.einsum("ij,ij->j", V, A_r @ V)]))
        total_var, lam = tot[0], tot[1:]
        order = np.argsort(lam)[::-1]
        self.components_ = V[:, order].T
        self.explained_variance_ = lam[order]
        self.explained_variance_ratio_ = lam[order] / total_var if total_var > 0 else np.zeros(k)
        self.mean_ = mean
        self.n_samples_seen_ = int(n)
        self.n_components_ = k
        self.n_features_in_ = d
        self.bytes_sent_, self.rounds_ = self._counter.bytes_sent, self._counter.rounds
        self.updates_ = getattr(self, "updates_", 0) + 1
        self.solver_rounds_ = getattr(self, "solver_rounds_", 0) + int(info["solver_rounds"])
        return self

    def comm_stats(self):
        """What this rank sent for learning so far (local, no communication).

        Returns
        -------
        dict
            ``algorithm``; ``bytes`` and ``rounds`` (payload bytes and communication rounds of every
            ``partial_fit``, the mean and explained-variance all-reduces included); ``solver_rounds``
            (the algorithm's own rounds); ``updates`` (``partial_fit`` calls that solved);
            ``certificate`` (certified bound on sin theta of the last basis, None when the
            algorithm has none).
        """
        return {"algorithm": self.algorithm, "bytes": int(getattr(self, "bytes_sent_", 0)),
                "rounds": int(getattr(self, "rounds_", 0)), "solver_rounds": int(getattr(self, "solver_rounds_", 0)),
                "updates": int(getattr(self, "updates_", 0)), "certificate": getattr(self, "certificate_", None)}

    # ------------------------------------------------------------------ state
    def get_state(self):
        """Not supported: the iterative algorithms are not checkpointed (use ``algorithm="exact"``).

        Raises
        ------
        NotImplementedError
            Always.
        """
        raise NotImplementedError(f"DistributedPCA (algorithm {self.algorithm!r}) is not checkpointed; "
                                  "only the exact IncrementalPCA and the autoencoder are")

    def set_state(self, state):
        """Not supported (see :meth:`get_state`).

        Raises
        ------
        NotImplementedError
            Always.
        """
        self.get_state()
