"""The prediction of a block's tiles, as :func:`~stagelearn.analytics.codec.encode_block` codes them, and
the largest error a block can be given.

Each tile is predicted from the model (*intra*: the PCA mean, or the autoencoder's reconstruction
from its quantized latent code) or from the previous step's reconstruction (*inter*), the better
of the two per tile. With every code 0 the reconstruction is that prediction, the largest error a
uniform quantizer can leave (:func:`max_block_sse`): what
:func:`~stagelearn.analytics.step_encode.step_targets` needs to share a step's error budget out.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .tiling import tile_weights, to_tiles


@dataclass
class Prediction:
    """Tiles of a block and their prediction, as :func:`encode_block` codes them (:func:`predict_tiles`).

    Attributes
    ----------
    all_tiles : ndarray of shape (n_tiles, n_features), float32
        The block's tiles, non-finite values included.
    tiles : ndarray
        The same with non-finite tiles replaced by the codec's fill tile.
    bad : ndarray of bool
        Tiles with non-finite values (sent raw).
    ref : ndarray of shape (n_tiles, n_features)
        The prediction of each tile.
    state : object
        The model's side information (autoencoder latent codes; None for PCA).
    inter : ndarray of bool
        Tiles predicted from the previous step's reconstruction.
    """

    all_tiles: np.ndarray
    tiles: np.ndarray
    bad: np.ndarray
    ref: np.ndarray
    state: object
    inter: np.ndarray


def predict_tiles(block, codec, tile_shape, prev=None):
    """The tiles of ``block`` and their prediction: the model's (intra) or ``prev``'s, the better per tile.

    Parameters
    ----------
    block : ndarray of shape (n_0, ..., n_{d-1})
    codec : TransformCodec or AECodec
    tile_shape : sequence of int
    prev : ndarray, optional
        As :func:`encode_block`.

    Returns
    -------
    Prediction

    Raises
    ------
    ValueError
        If the tile shape does not match the codec or ``prev`` has another shape.
    """
    block = np.asarray(block)
    all_tiles = to_tiles(block.astype(np.float32, copy=False), tile_shape)
    if all_tiles.shape[1] != codec.n_features:
        raise ValueError(f"tile shape {tuple(tile_shape)} gives {all_tiles.shape[1]} features, the encoder has {codec.n_features}")
    bad = ~np.all(np.isfinite(all_tiles), axis=1)  # NaN/Inf tiles are always sent raw, never coded
    tiles = np.where(bad[:, None], codec.fill_tile, all_tiles) if bad.any() else all_tiles
    ref, state = codec.intra_reference(tiles)
    inter = np.zeros(tiles.shape[0], dtype=bool)
    if prev is not None:
        if tuple(np.shape(prev)) != block.shape:
            raise ValueError(f"prev has shape {np.shape(prev)}, the block {block.shape}")
        prev_tiles = to_tiles(np.asarray(prev, dtype=np.float32), tile_shape)
        usable = np.all(np.isfinite(prev_tiles), axis=1) & ~bad
        e_intra = np.einsum("ij,ij->i", tiles - ref, tiles - ref, dtype=np.float64)
        e_inter = np.einsum("ij,ij->i", tiles - prev_tiles, tiles - prev_tiles, dtype=np.float64)
        inter = usable & (e_inter < e_intra)
        ref = np.where(inter[:, None], prev_tiles, ref)
    return Prediction(all_tiles, tiles, bad, ref, state, inter)


def max_block_sse(block, codec, tile_shape, *, prev=None, raw_fraction=0.02, prediction=None):
    """The largest squared error :func:`encode_block` can give ``block``: that of its prediction alone.

    With every code 0 (the largest step) the reconstruction is the prediction; no smaller step
    gives a larger error (a uniform quantizer errs by at most ``|c|`` on a coefficient ``c``).
    The worst ``floor(raw_fraction * n_tiles)`` tiles and non-finite ones travel raw and count 0;
    padding does not count. :func:`~stagelearn.analytics.step_encode.step_targets` shares a
    step's error budget with it: a block that cannot spend its share leaves it to the others.

    Parameters
    ----------
    block : ndarray of shape (n_0, ..., n_{d-1})
    codec : TransformCodec or AECodec
    tile_shape : sequence of int
    prev : ndarray, optional
        As :func:`encode_block`.
    raw_fraction : float, default=0.02
    prediction : Prediction, optional
        :func:`predict_tiles` of this block, when the caller has it.

    Returns
    -------
    sse : float
    """
    block = np.asarray(block)
    p = prediction if prediction is not None else predict_tiles(block, codec, tile_shape, prev)
    diff = np.where(p.bad[:, None], 0.0, p.all_tiles.astype(np.float64) - p.ref)
    weights = tile_weights(block.shape, tile_shape)
    err = np.einsum("ij,ij->i", diff, diff if weights is None else diff * weights, dtype=np.float64)
    err[~np.isfinite(err)] = 0.0  # a non-finite prediction: sent raw
    n_raw = min(int(math.floor(raw_fraction * err.size)), err.size)
    if n_raw > 0:
        err[np.argpartition(err, err.size - n_raw)[err.size - n_raw:]] = 0.0
    return float(err.sum())
