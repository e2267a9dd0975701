"""The replay buffer interface and storage shared by every buffer of :mod:`.replay`.

:class:`ReplayBuffer` holds tiles (float32), their sources and steps in preallocated arrays sized
by a memory cap in MiB; subclasses choose which rows to keep (``_add``) and which rows are held
(``_held_rows``). :func:`_algorithm_r` is the batched reservoir step (Vitter's Algorithm R) that
the reservoir and the stratified buffers share.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

_MIB = 2**20
_ITEMSIZE = np.dtype(np.float32).itemsize


def _algorithm_r(n_held, capacity, n_seen_before, m, rng):
    """Where ``m`` new stream items go under Algorithm R (Vitter 1985), vectorised.

    Item ``i`` of the batch is number ``t = n_seen_before + i + 1`` of the stream. While the
    reservoir holds fewer than ``capacity`` items it is appended; afterwards it replaces slot
    ``j ~ U{0, ..., t - 1}`` when ``j < capacity`` and is dropped otherwise. Within a batch a
    later item overwrites an earlier one in the same slot, as in the one-at-a-time algorithm, so
    the outcome has exactly Algorithm R's distribution.

    Returns
    -------
    items : ndarray of shape (k,), int64
        Batch indices of the items kept.
    slots : ndarray of shape (k,), int64
        Distinct slots in ``[0, capacity)`` they are written to (slots ``>= n_held`` are new).
    n_held_after : int
        Number of items held afterwards.
    """
    n_fill = min(m, max(capacity - n_held, 0))
    items = np.arange(n_fill, dtype=np.int64)
    slots = n_held + items
    rest = m - n_fill
    if rest > 0 and capacity > 0:
        t = n_seen_before + n_fill + 1 + np.arange(rest, dtype=np.int64)
        j = rng.integers(0, t)
        hit = np.flatnonzero(j < capacity)
        if len(hit):
            items = np.concatenate([items, n_fill + hit])
            slots = np.concatenate([slots, j[hit]])
        if len(slots) > 1 and len(hit):
            # Keep the last write to each slot (numpy leaves repeated fancy assignment unordered).
            _, first_from_end = np.unique(slots[::-1], return_index=True)
            last = len(slots) - 1 - first_from_end
            items, slots = items[last], slots[last]
    return items, slots, n_held + n_fill


class ReplayBuffer:
    """Base class: a memory-capped store of labelled tiles with random sampling.

    Subclasses decide which tiles stay. The tile store is allocated at the first :meth:`add`,
    when ``n_features`` becomes known, as ``capacity`` float32 rows; ``capacity`` is
    ``floor(max_mib * 2**20 / (4 * n_features))``.

    Parameters
    ----------
    max_mib : float
        Memory cap for the tile data, in MiB (2**20 bytes).
    seed : int, numpy.random.SeedSequence or None, default=0
        Seed of the buffer's generators (one for the retention decisions, an independent one
        for :meth:`sample` without an explicit ``rng``). ``None`` draws fresh entropy.

    Attributes
    ----------
    capacity : int or None
        Most tiles held; ``None`` until the first :meth:`add`.
    n_features_in_ : int or None
        Features per tile; ``None`` until the first :meth:`add`.
    n_seen_ : int
        Finite tiles passed to :meth:`add` so far.
    n_rejected_ : int
        Tiles dropped by :meth:`add` because they contain NaN or Inf (not in ``n_seen_``).
    nbytes : int
        Bytes of tile data held, ``len(self) * 4 * n_features``; never above
        ``max_mib * 2**20``. The per-tile source and step labels (16 bytes per tile) come on top.
    """

    def __init__(self, max_mib, *, seed=0):
        if (not isinstance(max_mib, numbers.Real) or isinstance(max_mib, bool) or not math.isfinite(max_mib)
                or max_mib <= 0):
            raise ValueError(f"max_mib={max_mib!r} must be a positive finite number of MiB")
        self.max_mib = max_mib
        self.seed = seed
        seq = seed if isinstance(seed, np.random.SeedSequence) else np.random.SeedSequence(seed)
        rng_seed, sample_seed = seq.spawn(2)
        self._rng = np.random.default_rng(rng_seed)
        self._sample_rng = np.random.default_rng(sample_seed)
        self.capacity = None
        self.n_features_in_ = None
        self.n_seen_ = 0
        self.n_rejected_ = 0
        self._next_step = 0

    # ------------------------------------------------------------------ public API
    def add(self, tiles, sources=None, step=None):
        """Offer a batch of tiles to the buffer.

        Parameters
        ----------
        tiles : array-like of shape (n_tiles, n_features)
            Flattened tiles, converted to float32; ``n_tiles`` may be 0. Rows containing NaN or
            Inf (also after the float32 conversion) are dropped and counted in ``n_rejected_``.
        sources : int or array-like of int of shape (n_tiles,), default=None
            Source id (producer rank or subdomain) of each tile; ``None`` means 0.
        step : int or array-like of int of shape (n_tiles,), default=None
            Output step of the tiles, ``>= 0``; ``None`` uses an internal counter: 0 at the first
            call, then one more than the largest step seen so far.

        Returns
        -------
        self : object
            The buffer.

        Raises
        ------
        ValueError
            If ``tiles`` is not 2-D, has no features or a different number of features than
            before, if ``sources`` or ``step`` do not match ``n_tiles`` or are not integers, if a
            step is negative, or if
            ``max_mib`` holds fewer than one tile (raised at the first call).
        """
        tiles = np.asarray(tiles)
        if tiles.dtype != np.float32:
            with np.errstate(over="ignore"):  # values beyond float32 become Inf and are rejected below
                tiles = tiles.astype(np.float32)
        if tiles.ndim != 2:
            raise ValueError(f"tiles must be 2-D (n_tiles, n_features), got shape {tiles.shape}")
        n_tiles, n_features = tiles.shape
        sources = self._labels(sources, n_tiles, "sources", default=0)
        steps = self._labels(step, n_tiles, "step", default=self._next_step)
        if n_tiles and steps.min() < 0:
            raise ValueError(f"step must be non-negative, got {int(steps.min())}")
        if self.n_features_in_ is None:
            self._init_capacity(n_features)
        elif n_features != self.n_features_in_:
            raise ValueError(f"tiles have {n_features} features, the buffer holds tiles of {self.n_features_in_}")
        used = steps if n_tiles or step is not None else np.array([self._next_step])
        if used.size:
            self._next_step = max(self._next_step, int(used.max()) + 1)
        finite = np.isfinite(tiles).all(axis=1)
        n_bad = int(n_tiles - np.count_nonzero(finite))
        if n_bad:
            tiles, sources, steps = tiles[finite], sources[finite], steps[finite]
            self.n_rejected_ += n_bad
        if len(tiles):
            self._add(tiles, sources, steps)
            self.n_seen_ += len(tiles)
        return self

    def sample(self, n, rng=None):
        """Draw tiles for a replay batch, without replacement.

        Parameters
        ----------
        n : int
            Number of tiles wanted; fewer come back when the buffer holds fewer.
        rng : numpy.random.Generator, int or None, default=None
            Source of randomness (passed through :func:`numpy.random.default_rng`). ``None`` uses
            the buffer's own sampling generator, independent of its retention decisions.

        Returns
        -------
        tiles : ndarray of shape (min(n, len(self)), n_features), float32
            Copies of distinct held tiles, in random order (shape ``(0, 0)`` before the first
            :meth:`add`).
        """
        n = operator.index(n)
        if n < 0:
            raise ValueError(f"n={n} must be non-negative")
        if self.n_features_in_ is None:
            return np.empty((0, 0), dtype=np.float32)
        rng = self._sample_rng if rng is None else np.random.default_rng(rng)
        k = min(n, len(self))
        rows = self._sample_rows(k, rng) if k else np.empty(0, dtype=np.int64)
        return self._store[rows]

    def tiles(self):
        """All held tiles.

        Returns
        -------
        tiles : ndarray of shape (len(self), n_features), float32
            A copy, in the order documented by the subclass (shape ``(0, 0)`` before the first
            :meth:`add`).
        """
        return self._held("_store", (0, 0), np.float32)

    def _held(self, attr, empty_shape, dtype):
        """Rows of the array ``attr`` for the held tiles (empty before the first :meth:`add`)."""
        if self.n_features_in_ is None:
            return np.empty(empty_shape, dtype=dtype)
        return getattr(self, attr)[self._held_rows()]

    def sources(self):
        """Source ids of the held tiles.

        Returns
        -------
        sources : ndarray of shape (len(self),), int64
            In the order of :meth:`tiles`.
        """
        return self._held("_src", 0, np.int64)

    def steps(self):
        """Output steps of the held tiles.

        Returns
        -------
        steps : ndarray of shape (len(self),), int64
            In the order of :meth:`tiles`.
        """
        return self._held("_stp", 0, np.int64)

    @property
    def nbytes(self):
        """Bytes of tile data held: ``len(self) * 4 * n_features`` (int)."""
        return 0 if self.n_features_in_ is None else len(self) * _ITEMSIZE * self.n_features_in_

    def __len__(self):
        raise NotImplementedError

    def __repr__(self):
        return (f"{type(self).__name__}(max_mib={self.max_mib!r}, capacity={self.capacity}, held={len(self)}, "
                f"n_seen_={self.n_seen_}, n_rejected_={self.n_rejected_})")

    # ------------------------------------------------------------------ helpers
    @staticmethod
    def _labels(values, n_tiles, name, default):
        if values is None:
            values = default
        arr = np.asarray(values)
        if arr.dtype.kind not in "iu":
            raise ValueError(f"{name} must be integers, got dtype {arr.dtype}")
        if arr.ndim == 0:
            return np.full(n_tiles, int(arr), dtype=np.int64)
        if arr.shape != (n_tiles,):
            raise ValueError(f"{name} must be an int or have shape ({n_tiles},), got shape {arr.shape}")
        return arr.astype(np.int64)

    def _init_capacity(self, n_features):
        if n_features < 1:
            raise ValueError("tiles must have at least one feature")
        cap_bytes = math.floor(self.max_mib * _MIB)
        tile_bytes = _ITEMSIZE * n_features
        capacity = cap_bytes // tile_bytes
        if capacity < 1:
            raise ValueError(
                f"max_mib={self.max_mib!r} ({cap_bytes} bytes) holds no tile of {n_features} float32 features "
                f"({tile_bytes} bytes); use max_mib >= {tile_bytes / _MIB:.3g}"
            )
        self.capacity = int(capacity)
        self.n_features_in_ = int(n_features)
        # np.empty only reserves address space; pages are committed as rows are written.
        self._store = np.empty((capacity, n_features), dtype=np.float32)
        self._src = np.empty(capacity, dtype=np.int64)
        self._stp = np.empty(capacity, dtype=np.int64)

    def _write(self, rows, tiles, sources, steps):
        self._store[rows] = tiles
        self._src[rows] = sources
        self._stp[rows] = steps

    def _add(self, tiles, sources, steps):
        raise NotImplementedError

    def _held_rows(self):
        raise NotImplementedError

    def _sample_rows(self, k, rng):
        rows = self._held_rows()
        return rows[rng.choice(len(rows), size=k, replace=False)]
