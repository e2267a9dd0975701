"""Distributed incremental PCA with an exact global basis on every rank.

Each ``partial_fit`` merges the ranks' batch statistics with two all-reduces (count and sum,
then the scatter matrix about the global batch mean) and folds them into the running
statistics with the pairwise update of Chan, Golub and LeVeque. The basis is the
eigendecomposition of the merged covariance, so after every update each rank holds the
principal components of *all* samples seen on *all* ranks: the same result as
``sklearn.decomposition.PCA`` on the gathered data, whatever the partition across ranks
(non-i.i.d. partitions included).
"""

from __future__ import annotations

import logging

import numpy as np

from .base import PCAModel

logger = logging.getLogger(__name__)

_ARRAYS = ("mean_", "components_", "explained_variance_", "explained_variance_ratio_", "singular_values_", "var_")
_SCALARS = ("n_samples_seen_", "n_features_in_", "n_components_", "noise_variance_")


def _default_comm(comm):
    if comm is not None:
        return comm
    from mpi4py import MPI

    return MPI.COMM_SELF


class IncrementalPCA(PCAModel):
    """Incremental PCA over data partitioned across MPI ranks.

    Follows the scikit-learn estimator API (``partial_fit`` returns ``self``; fitted
    attributes end with an underscore). Unlike :class:`sklearn.decomposition.IncrementalPCA`,
    which approximates the basis by merging truncated SVDs (Ross et al. 2008), this class keeps
    the full scatter matrix, so the basis is exact: it equals the PCA of every sample passed to
    ``partial_fit`` on every rank so far.

    Parameters
    ----------
    n_components : int or None, default=None
        Number of components kept. ``None`` keeps ``n_features``.
    forgetting_factor : float, default=1.0
        Weight in ``(0, 1]`` applied to the accumulated statistics before each update.
        ``1.0`` gives the exact PCA of all data seen; smaller values follow drifting data
        (an exponentially weighted covariance, effective memory ``1 / (1 - forgetting_factor)``
        updates).
    comm : mpi4py.MPI.Comm or None, default=None
        Communicator over which the data is partitioned. ``None`` means ``MPI.COMM_SELF``.
        ``partial_fit`` and ``fit`` are collective over ``comm``: every rank must call them the
        same number of times, with possibly empty batches.

    Attributes
    ----------
    components_ : ndarray of shape (n_components, n_features)
        Principal axes, sorted by decreasing explained variance, signs fixed as in
        scikit-learn's ``svd_flip(u_based_decision=False)`` (largest-magnitude entry of each
        component is positive).
    explained_variance_ : ndarray of shape (n_components,)
        Variance (``ddof=1``) along each component.
    explained_variance_ratio_ : ndarray of shape (n_components,)
        Fraction of the total variance along each component.
    singular_values_ : ndarray of shape (n_components,)
        Singular values of the centred data matrix of all samples seen.
    mean_ : ndarray of shape (n_features,)
        Per-feature mean over all samples seen on all ranks.
    var_ : ndarray of shape (n_features,)
        Per-feature variance (``ddof=0``) over all samples seen.
    noise_variance_ : float
        Mean of the eigenvalues not kept (0 when all are kept).
    n_components_ : int
        Number of components kept.
    n_features_in_ : int
        Number of features.
    n_samples_seen_ : int
        Number of samples seen on all ranks (weighted when ``forgetting_factor < 1``).

    Notes
    -----
    Per call, each rank sends ``n_features * (n_features + 2) + 1`` float64 values in two
    all-reduces; memory is ``O(n_features**2)`` per rank. This suits tiles of up to a few
    thousand features (a 4x4x4 tile has 64). The pairwise variance update follows
    Chan, Golub & LeVeque, "Updating formulae and a pairwise algorithm for computing sample
    variances" (1979).
    """

    def __init__(self, n_components=None, *, forgetting_factor=1.0, comm=None):
        self.n_components = n_components
        self.forgetting_factor = forgetting_factor
        self.comm = comm

    # ------------------------------------------------------------------ fitting
    def partial_fit(self, X, y=None, *, sources=None, step=None):
        """Update the model with one batch per rank (collective over ``comm``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            This rank's batch; ``n_samples`` may be 0 on some ranks (pass shape
            ``(0, n_features)``).
        y : Ignored
            Not used, present for API consistency by convention.
        sources, step : Ignored
            Not used (the learner protocol passes them to every learner).

        Returns
        -------
        self : object
            The fitted estimator.

        Raises
        ------
        ValueError
            If ``X`` is not 2-D, contains NaN or Inf, its number of features differs from
            earlier calls or across ranks, or ``n_components`` exceeds ``n_features``.
        """
        comm = _default_comm(self.comm)
        from mpi4py import MPI

        X = np.asarray(X, dtype=np.float64)
        error = None
        if X.ndim != 2:
            error = f"X must be 2-D (n_samples, n_features), got shape {X.shape}"
            X = np.zeros((0, 0))
        elif not np.all(np.isfinite(X)):
            error = "X contains NaN or Inf; remove or flag those samples before partial_fit"
        n_features = X.shape[1]
        # One all-reduce checks every rank's batch, so a bad batch on one rank raises on all
        # ranks instead of leaving the others waiting in the next collective.
        check = np.array([n_features, -n_features, -int(error is not None)], dtype=np.int64)
        comm.Allreduce(MPI.IN_PLACE, check, op=MPI.MIN)
        if check[2] < 0:
            raise ValueError(error or "another rank passed an invalid batch to partial_fit")
        if check[0] != -check[1]:
            raise ValueError(f"ranks disagree on n_features (between {check[0]} and {-check[1]})")
        if hasattr(self, "n_features_in_") and n_features != self.n_features_in_:
            raise ValueError(
                f"Number of input features has changed from {self.n_features_in_} to "
                f"{n_features} between calls to partial_fit"
            )
        n_components = n_features if self.n_components is None else int(self.n_components)
        if not 1 <= n_components <= n_features:
            raise ValueError(f"n_components={self.n_components!r} must be in [1, n_features={n_features}]")
        if not 0.0 < self.forgetting_factor <= 1.0:
            raise ValueError(f"forgetting_factor={self.forgetting_factor!r} must be in (0, 1]")

        # 1) global batch count and sum -> global batch mean
        buf = np.empty(n_features + 1)
        buf[0] = X.shape[0]
        buf[1:] = X.sum(axis=0)
        comm.Allreduce(MPI.IN_PLACE, buf, op=MPI.SUM)
        n_batch = buf[0]
        if n_batch == 0:
            return self
        batch_mean = buf[1:] / n_batch
        # 2) scatter about the global batch mean (exact, no cancellation from raw moments)
        Xc = X - batch_mean
        scatter = Xc.T @ Xc
        comm.Allreduce(MPI.IN_PLACE, scatter, op=MPI.SUM)

        if not hasattr(self, "n_samples_seen_") or self.n_samples_seen_ == 0:
            n_old, mean_old, scatter_old = 0.0, np.zeros(n_features), np.zeros((n_features, n_features))
        else:
            w = self.forgetting_factor
            n_old, mean_old, scatter_old = w * self.n_samples_seen_, self.mean_, w * self._scatter
        n_total = n_old + n_batch
        delta = batch_mean - mean_old
        self._scatter = scatter_old + scatter + np.outer(delta, delta) * (n_old * n_batch / n_total)
        self._scatter = 0.5 * (self._scatter + self._scatter.T)
        self.mean_ = mean_old + delta * (n_batch / n_total)
        self.n_samples_seen_ = n_total if self.forgetting_factor < 1.0 else int(round(n_total))
        self.n_features_in_ = n_features
        self.n_components_ = n_components
        self._update_basis()
        return self

    def fit(self, X, y=None):
        """Fit from scratch on this rank's ``X`` (collective over ``comm``).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)
            This rank's samples.
        y : Ignored
            Not used, present for API consistency by convention.

        Returns
        -------
        self : object
            The fitted estimator.
        """
        for attr in [a for a in vars(self) if a.endswith("_") or a == "_scatter"]:
            delattr(self, attr)
        return self.partial_fit(X)

    def fit_transform(self, X, y=None):
        """Fit on this rank's ``X`` (collective) and return its projection.

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)
        """
        return self.fit(X).transform(X)

    def _update_basis(self):
        for name, value in _basis(self._scatter, self.n_samples_seen_, self.n_components_).items():
            setattr(self, name, value)

    # ------------------------------------------------------------------ state
    def get_state(self):
        """The whole learner state, for checkpoints (no pickle; local, no communication).

        Returns
        -------
        state : dict
            ``meta`` (JSON-able: ``kind``, ``n_components``, ``forgetting_factor`` and the fitted
            scalars), ``arrays`` (float64: the fitted arrays and ``scatter``, the running scatter
            matrix of shape (n_features, n_features)) and ``rank_arrays`` (empty: every rank holds
            the same state).

        Raises
        ------
        ValueError
            If the estimator is not fitted.
        """
        self._check_fitted()
        arrays = {name: np.asarray(getattr(self, name), dtype=np.float64) for name in _ARRAYS}
        arrays["scatter"] = np.asarray(self._scatter, dtype=np.float64)
        meta = {"kind": self.kind, **{name: _plain(getattr(self, name)) for name in _SCALARS},
                "n_components": self.n_components, "forgetting_factor": self.forgetting_factor}
        return {"meta": meta, "arrays": arrays, "rank_arrays": {}}

    def set_state(self, state):
        """Restore a state of :meth:`get_state` (bit for bit; local, no communication).

        Parameters
        ----------
        state : dict
            ``meta`` and ``arrays`` as :meth:`get_state` returns them (``rank_arrays`` is ignored).

        Returns
        -------
        self : object

        Raises
        ------
        ValueError
            If the state is not a PCA state or misses an array.
        """
        meta, arrays = state["meta"], state["arrays"]
        if meta.get("kind") != self.kind:
            raise ValueError(f"IncrementalPCA.set_state: a {meta.get('kind')!r} state, expected {self.kind!r}")
        missing = [k for k in (*_ARRAYS, "scatter") if k not in arrays]
        if missing:
            raise ValueError(f"IncrementalPCA.set_state: state lacks arrays {missing}")
        self.n_components, self.forgetting_factor = meta["n_components"], meta["forgetting_factor"]
        for name in _ARRAYS:
            setattr(self, name, arrays[name])
        self._scatter = arrays["scatter"]
        for name in _SCALARS:
            setattr(self, name, meta[name])
        return self


def _plain(x):
    """A numpy scalar as the Python number JSON can hold."""
    return x.item() if isinstance(x, np.generic) else x


def _basis(scatter, n_samples_seen, k):
    """The fitted attributes (``components_``, ``explained_variance_``, ...) of a scatter matrix."""
    denom = max(n_samples_seen - 1, 1)
    cov = scatter / denom
    eigval, eigvec = np.linalg.eigh(cov)
    order = np.argsort(eigval)[::-1]
    eigval = np.clip(eigval[order], 0.0, None)
    eigvec = eigvec[:, order].T  # rows are components
    # deterministic signs: largest-|.| entry of each component positive (sklearn svd_flip)
    idx = np.argmax(np.abs(eigvec), axis=1)
    signs = np.sign(eigvec[np.arange(eigvec.shape[0]), idx])
    signs[signs == 0] = 1.0
    eigvec *= signs[:, None]
    total_var = float(np.trace(cov))
    return {"components_": eigvec[:k], "explained_variance_": eigval[:k],
            "explained_variance_ratio_": eigval[:k] / total_var if total_var > 0 else np.zeros(k),
            "singular_values_": np.sqrt(eigval[:k] * denom),
            "noise_variance_": float(eigval[k:].mean()) if k < eigval.size else 0.0,
            "var_": np.diag(scatter) / max(n_samples_seen, 1)}
