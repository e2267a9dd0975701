"""Per-tile latent codes of a field at a step of a compressed output file (features for clustering regimes).

Used by :meth:`~stagelearn.staging.output_reader.CompressedOutputReader.latents` and
``stagelearn decode --latents`` (:mod:`.latents_export`).
"""

from __future__ import annotations

import numpy as np

from ..analytics.tiling import tile_grid, to_tiles
from .errors import StagelearnError
from .wire import report_get


def tile_latents(reader, step, var):
    """Per-tile latent codes of ``var`` at ``step`` in ``reader``'s file (features for clustering regimes).

    PCA: each decoded tile's projection on the encoder's basis (coded tiles without temporal
    prediction: their dequantized coefficients, up to edge padding); autoencoder: the latent
    code of the decoded tile (computed here: tiles predicted from the previous step carry none
    on the wire). Steps before the first encoder have no latents. Latents of different encoder
    versions live in different bases: compare them within one version.

    Parameters
    ----------
    reader : CompressedOutputReader
    step : int
    var : str

    Returns
    -------
    origin : ndarray of shape (n_tiles, ndim), int64
        Global index of each tile's first cell.
    latents : ndarray of shape (n_tiles, n_components), float32
    version : ndarray of shape (n_tiles,), int64
        Encoder version the codes belong to.

    Raises
    ------
    StagelearnError
        If the step was sent before any encoder.
    """
    origins, codes, versions = [], [], []
    for i, row in enumerate(reader.reports(step, var)):
        version = int(report_get(row, "encoder_version"))
        if version == 0:
            continue
        block, header = reader.decoded_block(step, var, i)
        codec = reader.encoder(version).variables[var].codec()
        tiles = to_tiles(block, header["tile_shape"])
        if codec.kind == "pca":
            coef = codec.coefficients(tiles)
        else:
            q, scales = codec.model.encode_latents(tiles)
            coef = q * scales[:, None]
        grid = tile_grid(header["block_shape"], header["tile_shape"])
        pos = np.stack(np.unravel_index(np.arange(tiles.shape[0]), grid), axis=1)
        origins.append(np.asarray(header["start"]) + pos * np.asarray(header["tile_shape"]))
        codes.append(coef)
        versions.append(np.full(tiles.shape[0], version))
    if not codes:
        raise StagelearnError(f"{reader.path}: step {step} of {var} was sent before any encoder: no latents")
    return np.concatenate(origins).astype(np.int64), np.concatenate(codes).astype(np.float32), np.concatenate(versions)
