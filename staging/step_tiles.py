"""What one step gives the learners: the variables, their tile shapes and the raw (exact) tiles of the blocks.

The variables and tile shapes are agreed through rank 0 from the first step on the stream
(:func:`agree_variables`, :func:`agree_tile_shapes`, collective). Before the first encoder producers send whole raw blocks: all their tiles are learned. Afterwards
they send codes plus the raw tiles they reconstruct worst; those raw tiles are learned, except
the ones flagged as anomalies (persistent ones, also raw, are the new normal and are learned).
"""

from __future__ import annotations

import json

import numpy as np

from ..analytics.payload import decode_raw_block, payload_raw_tiles
from ..analytics.tiling import tile_grid, to_tiles
from .errors import ConfigError
from .mpiutil import bcast_bytes, gather_bytes


def _bcast_json(comm, obj):
    """Rank 0's JSON-able ``obj`` on every rank (collective)."""
    return json.loads(bcast_bytes(comm, json.dumps(obj).encode() if comm.Get_rank() == 0 else b"").decode())


def agree_variables(comm, blocks):
    """The sorted variable names of rank 0's ``blocks`` (list of ReceivedBlock), on every rank (collective)."""
    return _bcast_json(comm, sorted({b.var for b in blocks}) if comm.Get_rank() == 0 else [])


def agree_tile_shapes(comm, blocks, variables, tile_shape=None, source="<config>"):
    """Tile shape of each of ``variables``, from the dimensionality of the raw blocks of any rank (collective).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
    blocks : list of ReceivedBlock
        This rank's blocks of the step (some rank must hold each variable raw).
    variables : list of str
    tile_shape : sequence of int, optional
        ``staging.tile_shape`` (else :func:`default_tile_shape`).
    source : str
        The run YAML, for error messages.

    Returns
    -------
    dict of str to tuple of int

    Raises
    ------
    ConfigError
        When a variable is not on the stream or ``tile_shape`` has the wrong dimensionality.
    """
    mine = json.dumps({b.var: list(b.raw.shape) for b in blocks if b.raw is not None}).encode()
    parts = gather_bytes(comm, mine)
    merged = {}
    for part in parts or []:  # rank 0: the first rank holding a variable raw gives its dimensionality
        for var, shape in json.loads(part.decode()).items():
            merged.setdefault(var, shape)
    info = _bcast_json(comm, merged)
    shapes = {}
    for v in variables:
        if v not in info:
            raise ConfigError(f"staging.variables: {v!r} is not on the stream (first step has {sorted(info)})")
        shape = tuple(tile_shape) if tile_shape else default_tile_shape(info[v])
        if len(shape) != len(info[v]):
            raise ConfigError(f"{source}: staging.tile_shape {shape} does not match the {len(info[v])}-D variable {v}")
        shapes[v] = shape
    return shapes


def default_tile_shape(block_shape):
    """64-feature tiles: 4x4x4 in 3D, 8x8 in 2D, 64 in 1D (see README, "Tile shape"); for 5-D
    phase-space fields f(r, theta, phi, v_par, mu) one velocity-space slice per spatial point.

    Parameters
    ----------
    block_shape : sequence of int

    Returns
    -------
    tuple of int, one entry per axis
    """
    ndim = len(block_shape)
    if ndim == 5 and int(np.prod(block_shape[3:])) <= 4096:
        return (1, 1, 1) + tuple(int(n) for n in block_shape[3:])
    return {1: (64,), 2: (8, 8), 3: (4, 4, 4)}.get(ndim, (2,) * ndim)


def raw_tiles_of(blk, tile_shape):
    """Raw (exact) tiles a block gives the learner.

    Parameters
    ----------
    blk : ReceivedBlock
    tile_shape : tuple of int

    Returns
    -------
    ndarray of shape (n_tiles, prod(tile_shape)), float32

    Raises
    ------
    ValueError
        When the payload's tile shape is not ``tile_shape`` (names the variable and producer rank).
    """
    if blk.raw is not None:
        return to_tiles(blk.raw, tile_shape)
    if blk.parsed[0].get("kind") == "raw":  # a block whose code would have been larger than raw: all tiles exact
        raw = decode_raw_block(*blk.parsed)
        tiles, index = to_tiles(raw, tile_shape), np.arange(int(np.prod(tile_grid(raw.shape, tile_shape))))
        header = {"tile_shape": list(tile_shape)}
    else:
        header, tiles, index = payload_raw_tiles(blk.payload, parsed=blk.parsed)
    if list(header["tile_shape"]) != list(tile_shape):
        raise ValueError(f"payload of {blk.var} from rank {blk.rank} has tile shape {header['tile_shape']}, expected {tile_shape}")
    if blk.anomaly is not None and len(blk.anomaly):
        flagged = blk.anomaly[blk.anomaly[:, 2] > 0, 0].astype(np.int64)
        tiles = tiles[~np.isin(index, flagged)]
    return tiles


def step_tiles(blocks, var, tile_shape):
    """This rank's raw tiles of ``var`` in one step and the producer rank of each.

    Parameters
    ----------
    blocks : list of ReceivedBlock
        This rank's blocks of the step (any variables).
    var : str
    tile_shape : tuple of int

    Returns
    -------
    tiles : ndarray of shape (n, prod(tile_shape)), float32 (n may be 0)
    sources : ndarray of shape (n,), int64
    """
    mine = [b for b in blocks if b.var == var]
    parts = [raw_tiles_of(b, tile_shape) for b in mine]
    if not parts:
        return np.zeros((0, int(np.prod(tile_shape))), dtype=np.float32), np.zeros(0, dtype=np.int64)
    sources = np.concatenate([np.full(p.shape[0], b.rank, dtype=np.int64) for p, b in zip(parts, mine)])
    return np.concatenate(parts), sources
