"""The tile autoencoder's spec: architecture and normalisation, validated, JSON-serialisable (no torch).

An :class:`AESpec` travels with every autoencoder model (:func:`AESpec.to_dict` /
:func:`validate_spec`); :func:`spec_from_data` sets its normalisation from a first batch of
tiles over the staging ranks.
"""

from __future__ import annotations

import math
from collections.abc import Mapping
from dataclasses import dataclass

import numpy as np

FORMAT = "stagelearn.tile-autoencoder/1"
_KEYS = ("format", "tile_shape", "channels", "latent_dim", "latent_bits", "offset", "scale")
#: Bounds that keep a received spec from allocating an unreasonable model before its weights are checked.
MAX_CHANNELS, MAX_LATENT_DIM, MAX_FEATURES = 512, 4096, 2 ** 16


class AEFormatError(ValueError):
    """An autoencoder spec or weight set does not match the expected format."""


# ---------------------------------------------------------------------------- spec
def _is_int(v):
    return isinstance(v, (int, np.integer)) and not isinstance(v, (bool, np.bool_))


def _int_tuple(key, v, lo_len, hi_len):
    if not isinstance(v, (list, tuple)) or not lo_len <= len(v) <= hi_len or not all(_is_int(e) and e > 0 for e in v):
        raise AEFormatError(f"spec[{key!r}] must be a list of {lo_len} to {hi_len} positive ints, got {v!r}")
    return tuple(int(e) for e in v)


def _finite_float(key, v):
    if isinstance(v, (bool, np.bool_)) or not isinstance(v, (int, float, np.integer, np.floating)) \
            or not math.isfinite(v) or not math.isfinite(np.float32(v)):
        raise AEFormatError(f"spec[{key!r}] must be a finite float (float32 range), got {v!r}")
    return float(v)


@dataclass(frozen=True)
class AESpec:
    """Architecture and normalisation of a :class:`TileAutoencoder` (validated on creation).

    Parameters
    ----------
    tile_shape : tuple of int
        Tile extents, 1 to 3 axes.
    channels : tuple of int, default=(16, 32)
        Output channels of each encoder stage (1 to 8 stages); ``len(channels)`` is the depth.
    latent_dim : int, default=8
        Latent values per tile.
    latent_bits : int, default=8
        Bits per quantized latent, in ``[2, 16]``; codes lie in
        ``[-(2**(latent_bits - 1) - 1), 2**(latent_bits - 1) - 1]``.
    offset, scale : float, default=0.0, 1.0
        The network sees ``(x - offset) / scale``; ``scale > 0``.

    Raises
    ------
    AEFormatError
        Naming the first offending field and what it must be.
    """

    tile_shape: tuple
    channels: tuple = (16, 32)
    latent_dim: int = 8
    latent_bits: int = 8
    offset: float = 0.0
    scale: float = 1.0

    def __post_init__(self):
        fix = object.__setattr__  # the dataclass is frozen: normalise fields in place once
        fix(self, "tile_shape", _int_tuple("tile_shape", self.tile_shape, 1, 3))
        fix(self, "channels", _int_tuple("channels", self.channels, 1, 8))
        if max(self.channels) > MAX_CHANNELS or math.prod(self.tile_shape) > MAX_FEATURES:
            raise AEFormatError(f"spec['channels'] entries must be <= {MAX_CHANNELS} and prod(tile_shape) <= "
                                f"{MAX_FEATURES}, got {list(self.channels)} and {list(self.tile_shape)}")
        if not _is_int(self.latent_dim) or not 1 <= self.latent_dim <= MAX_LATENT_DIM:
            raise AEFormatError(f"spec['latent_dim'] must be an int in [1, {MAX_LATENT_DIM}], got {self.latent_dim!r}")
        if not _is_int(self.latent_bits) or not 2 <= self.latent_bits <= 16:
            raise AEFormatError(f"spec['latent_bits'] must be an int in [2, 16], got {self.latent_bits!r}")
        fix(self, "latent_dim", int(self.latent_dim))
        fix(self, "latent_bits", int(self.latent_bits))
        fix(self, "offset", _finite_float("offset", self.offset))
        fix(self, "scale", _finite_float("scale", self.scale))
        if not self.scale > 0:
            raise AEFormatError(f"spec['scale'] must be > 0, got {self.scale!r}")

    @classmethod
    def from_dict(cls, spec):
        """Validated spec from a mapping (e.g. parsed JSON); see :func:`validate_spec`."""
        return validate_spec(spec)

    def to_dict(self):
        """JSON-serialisable dict with every key of the format (lists, not tuples)."""
        return {"format": FORMAT, "tile_shape": list(self.tile_shape), "channels": list(self.channels),
                "latent_dim": self.latent_dim, "latent_bits": self.latent_bits,
                "offset": self.offset, "scale": self.scale}

    @property
    def n_features(self):
        """Values per tile, ``prod(tile_shape)``."""
        return math.prod(self.tile_shape)

    @property
    def max_code(self):
        """Largest code magnitude, ``2**(latent_bits - 1) - 1``."""
        return 2 ** (self.latent_bits - 1) - 1


def validate_spec(spec):
    """Check a spec mapping and return it as an :class:`AESpec`.

    Parameters
    ----------
    spec : mapping or AESpec
        Keys ``format`` (``"stagelearn.tile-autoencoder/1"``), ``tile_shape``, ``channels``,
        ``latent_dim``, ``latent_bits``, ``offset``, ``scale``: all required, no others.

    Returns
    -------
    spec : AESpec

    Raises
    ------
    AEFormatError
        Naming the first offending key and what it must be.
    """
    if isinstance(spec, AESpec):
        return spec
    if not isinstance(spec, Mapping):
        raise AEFormatError(f"spec must be a mapping (a dict parsed from JSON), got {type(spec).__name__}")
    missing = [k for k in _KEYS if k not in spec]
    unknown = sorted(map(str, set(spec) - set(_KEYS)))
    if missing or unknown:
        raise AEFormatError(f"spec keys: missing {missing}, unexpected {unknown}; expected exactly {list(_KEYS)}")
    if spec["format"] != FORMAT:
        raise AEFormatError(f"spec['format'] must be {FORMAT!r}, got {spec['format']!r}")
    return AESpec(**{k: spec[k] for k in _KEYS if k != "format"})


def spec_from_data(tiles, tile_shape, *, channels=(16, 32), latent_dim=8, latent_bits=8, comm=None):
    """Spec whose normalisation is the mean and standard deviation of ``tiles``.

    Collective over ``comm`` when given (two all-reduces), so every rank gets the same spec.

    Parameters
    ----------
    tiles : ndarray of shape (n_tiles, prod(tile_shape))
        A first batch (this rank's part); may be empty on some ranks.
    tile_shape : sequence of int
    channels, latent_dim, latent_bits
        As in :class:`AESpec`.
    comm : mpi4py.MPI.Comm or None, default=None
        Ranks over which ``tiles`` is partitioned. ``None``: this rank's tiles only.

    Returns
    -------
    spec : AESpec
        ``offset`` is the mean; ``scale`` the standard deviation (1.0 for constant or no data).
    """
    x = np.asarray(tiles, dtype=np.float64).reshape(-1)
    x = x[np.isfinite(x)]
    stats = np.array([x.size, x.sum()])
    if comm is not None:
        stats = comm.allreduce(stats)
    mean = stats[1] / stats[0] if stats[0] else 0.0
    sq = np.array([np.sum((x - mean) ** 2)])
    if comm is not None:
        sq = comm.allreduce(sq)
    std = math.sqrt(sq[0] / stats[0]) if stats[0] else 0.0
    scale = std if std > 0 and math.isfinite(std) else 1.0
    return AESpec(tuple(tile_shape), tuple(channels), latent_dim, latent_bits, float(mean), float(scale))
