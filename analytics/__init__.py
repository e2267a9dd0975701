"""Learners, codecs, metrics, baselines and plots (no ADIOS2 imports here).

Public names
------------
IncrementalPCA
    Distributed incremental PCA with an exact global basis on every rank.
TransformCodec
    Transform coding of tiles: projection on a basis, uniform quantization, zstd.
"""

from .incremental_pca import IncrementalPCA
from .codec import TransformCodec

__all__ = ["IncrementalPCA", "TransformCodec"]
