"""Learners, codecs, metrics, baselines and plots (no ADIOS2 imports here).

Public names
------------
IncrementalPCA
    Distributed incremental PCA with an exact global basis on every rank (one of the learners of
    :mod:`.learners`, which also holds the factory ``make_learner``).
TransformCodec
    Transform coding of tiles: projection on a basis, uniform quantization, zstd.
"""

from .transform import TransformCodec
from .learners.incremental_pca import IncrementalPCA

__all__ = ["IncrementalPCA", "TransformCodec"]
