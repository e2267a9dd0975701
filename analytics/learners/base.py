"""What the PCA learners share: the learner protocol's PCA side (readiness, finiteness, export).

Every learner (see :mod:`stagelearn.analytics.learners`) has ``kind``, ``ready``,
``params_finite()``, ``n_components_explaining(fraction)``, ``model_arrays()``,
``training_stats()``, ``get_state()``, ``set_state(state)`` and ``close()``. The two PCA
estimators hold the same fitted attributes (``mean_``, ``components_``,
``explained_variance_ratio_``, ``n_components_``), so :class:`PCAModel` answers for both, and
gives both ``transform`` and ``inverse_transform``. PCA learners also have ``comm_stats()``
(what they sent for learning, or None when they do not count it; staging's summary uses it).
"""

from __future__ import annotations

import numpy as np


class PCAModel:
    """Mixin: the learner protocol for estimators with fitted ``mean_`` and ``components_``."""

    #: Model family, as checkpoints and encoders name it.
    kind = "pca"

    @property
    def ready(self):
        """True once ``partial_fit`` has produced a basis (the model can be published or saved)."""
        return hasattr(self, "components_")

    def _check_fitted(self):
        if not hasattr(self, "components_"):
            raise ValueError(f"This {type(self).__name__} instance is not fitted yet: call partial_fit first")

    def transform(self, X):
        """Project samples on the components (local, no communication).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_features)

        Returns
        -------
        X_new : ndarray of shape (n_samples, n_components)

        Raises
        ------
        ValueError
            If the estimator is not fitted.
        """
        self._check_fitted()
        X = np.asarray(X)
        return (X - self.mean_) @ self.components_.T

    def inverse_transform(self, X):
        """Map component scores back to feature space (local, no communication).

        Parameters
        ----------
        X : array-like of shape (n_samples, n_components)

        Returns
        -------
        X_original : ndarray of shape (n_samples, n_features)

        Raises
        ------
        ValueError
            If the estimator is not fitted.
        """
        self._check_fitted()
        return np.asarray(X) @ self.components_ + self.mean_

    def params_finite(self):
        """True when the mean and the basis are finite (local, no communication).

        Returns
        -------
        bool
        """
        return bool(np.all(np.isfinite(self.components_)) and np.all(np.isfinite(self.mean_)))

    def n_components_explaining(self, fraction):
        """Fewest leading components that explain ``fraction`` of the variance (at most ``n_components_``).

        Parameters
        ----------
        fraction : float
            In ``(0, 1)``.

        Returns
        -------
        int
        """
        cum = np.cumsum(self.explained_variance_ratio_)
        return int(min(np.searchsorted(cum, fraction) + 1, self.n_components_))

    def model_arrays(self):
        """The arrays an encoder carries: ``mean_`` (n_features,) and ``components_`` (k, n_features), float32.

        Returns
        -------
        dict of str to ndarray
        """
        return {"mean_": self.mean_.astype(np.float32), "components_": self.components_.astype(np.float32)}

    def training_stats(self):
        """None: the PCA learners' traffic is not part of the staging summary."""
        return None

    def comm_stats(self):
        """None: this learner does not count its communication (:class:`DistributedPCA` does)."""
        return None

    def close(self):
        """Nothing to release."""
