"""Cut N-D blocks into flattened tiles and put them back.

A block of shape ``(n_0, ..., n_{d-1})`` is split into a grid of tiles of shape
``(t_0, ..., t_{d-1})``; each tile becomes one sample of ``prod(t)`` features in C order. Blocks
whose extent is not a multiple of the tile extent are padded by edge replication and cropped
again by :func:`from_tiles`.
"""

from __future__ import annotations

import numpy as np


def tile_grid(block_shape, tile_shape):
    """Number of tiles along each axis.

    Parameters
    ----------
    block_shape, tile_shape : sequence of int
        Same length.

    Returns
    -------
    grid : tuple of int
        ``ceil(block_shape / tile_shape)`` per axis.

    Raises
    ------
    ValueError
        If the ranks differ or a tile extent is not positive.
    """
    block_shape, tile_shape = tuple(block_shape), tuple(tile_shape)
    if len(block_shape) != len(tile_shape):
        raise ValueError(f"tile shape {tile_shape} does not match a {len(block_shape)}-D block {block_shape}")
    if any(t <= 0 for t in tile_shape):
        raise ValueError(f"tile shape {tile_shape} must be positive")
    return tuple(-(-b // t) for b, t in zip(block_shape, tile_shape))


def to_tiles(block, tile_shape):
    """Split a block into tiles.

    Parameters
    ----------
    block : ndarray of shape (n_0, ..., n_{d-1})
    tile_shape : sequence of int of length d

    Returns
    -------
    tiles : ndarray of shape (n_tiles, prod(tile_shape))
        Same dtype as ``block``; tiles in C order of the tile grid.
    """
    block = np.asarray(block)
    grid = tile_grid(block.shape, tile_shape)
    padded_shape = tuple(g * t for g, t in zip(grid, tile_shape))
    if padded_shape != block.shape:
        pad = [(0, p - b) for p, b in zip(padded_shape, block.shape)]
        block = np.pad(block, pad, mode="edge")
    d = block.ndim
    split = []
    for g, t in zip(grid, tile_shape):
        split += [g, t]
    order = list(range(0, 2 * d, 2)) + list(range(1, 2 * d, 2))
    return block.reshape(split).transpose(order).reshape(int(np.prod(grid)), int(np.prod(tile_shape)))


def from_tiles(tiles, block_shape, tile_shape):
    """Inverse of :func:`to_tiles`.

    Parameters
    ----------
    tiles : ndarray of shape (n_tiles, prod(tile_shape))
    block_shape, tile_shape : sequence of int

    Returns
    -------
    block : ndarray of shape block_shape
    """
    grid = tile_grid(block_shape, tile_shape)
    d = len(grid)
    tiles = np.asarray(tiles)
    expected = (int(np.prod(grid)), int(np.prod(tile_shape)))
    if tiles.shape != expected:
        raise ValueError(f"expected tiles of shape {expected} for block {tuple(block_shape)}, got {tiles.shape}")
    arr = tiles.reshape(tuple(grid) + tuple(tile_shape))
    order = []
    for i in range(d):
        order += [i, d + i]
    arr = arr.transpose(order).reshape(tuple(g * t for g, t in zip(grid, tile_shape)))
    return arr[tuple(slice(0, b) for b in block_shape)]


def tile_weights(block_shape, tile_shape):
    """Which tile values are the block's own: 1.0, or 0.0 for the padding of edge tiles.

    Parameters
    ----------
    block_shape, tile_shape : sequence of int

    Returns
    -------
    weights : ndarray of shape (n_tiles, prod(tile_shape)), float32, or None
        None when the block is a whole number of tiles (no padding).
    """
    grid = tile_grid(block_shape, tile_shape)
    padded = tuple(g * t for g, t in zip(grid, tile_shape))
    if padded == tuple(block_shape):
        return None
    mask = np.zeros(padded, dtype=np.float32)
    mask[tuple(slice(0, b) for b in block_shape)] = 1.0
    return to_tiles(mask, tile_shape)
