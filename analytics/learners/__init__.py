"""Online learners of tile models, one per module, all behind one protocol and one factory.

Modules
-------
incremental_pca
    :class:`IncrementalPCA`: exact distributed incremental PCA (the same basis on every rank).
distributed_pca
    :class:`DistributedPCA`: streaming PCA with an iterative algorithm of :mod:`..dpca`.
autoencoder
    ``AutoencoderLearner``: warm-up, distributed autoencoder training, checkpoint state (torch;
    import it from its module).
factory
    :func:`make_learner` and the questions asked of ``learner:`` settings
    (:func:`learner_kind` and :func:`checkpointable` also take ``codec.kind``).

The learner protocol
--------------------
Every learner has

- ``kind``: ``"pca"`` or ``"ae"`` (``"stream"``: the stream codec's blend-weight learner,
  :class:`~stagelearn.analytics.stream_learner.StreamWeightsLearner`, which has the same
  ``ready``/``params_finite``/``model_arrays``/``get_state``/``set_state`` and learns from block
  statistics instead of tiles);
- ``partial_fit(X, ...)`` returning ``self``, collective over the learner's ``comm``
  (``X`` of shape (n_tiles, n_features), finite; the autoencoder also takes ``sources=`` and ``step=``);
- ``ready``: the model exists (it can be published and checkpointed);
- ``params_finite()``: the model's parameters are finite (local);
- ``n_components_explaining(fraction)``: PCA components for anomaly scoring (ValueError otherwise);
- ``model_arrays()``: the float32 arrays an encoder carries;
- ``training_stats()``: ``{"bytes", "rounds", "iterations", "loss"}`` or None;
- ``get_state()`` / ``set_state(state)``: ``{"meta": JSON-able dict, "arrays": dict of ndarray
  (the same on every rank), "rank_arrays": dict of ndarray (this rank's own)}``;
- ``close()``: release communication resources.

PCA learners also have scikit-learn's fitted attributes (``mean_``, ``components_``, ...); the
autoencoder learner has ``spec`` and ``model``.
"""

from .distributed_pca import DistributedPCA
from .factory import STREAM_KIND, checkpointable, learner_kind, make_learner, training_budget
from .incremental_pca import IncrementalPCA

__all__ = ["DistributedPCA", "IncrementalPCA", "STREAM_KIND", "checkpointable", "learner_kind", "make_learner",
           "training_budget"]
