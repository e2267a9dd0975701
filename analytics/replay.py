"""Replay buffers for online training on non-i.i.d. tile streams.

A staging rank receives tiles step by step, each labelled with the source it came from (the
producer rank or subdomain) and the output step it belongs to. Training only on the newest batch
forgets earlier steps and over-fits the sources that send the most tiles; mixing a few replayed
tiles into every update counters both (experience replay; see Chaudhry et al., "On tiny episodic
memories in continual learning", arXiv:1902.10486, 2019, for how far a small memory goes).

Three buffers share one interface (:class:`ReplayBuffer`), each bounded by a memory cap in MiB:

- :class:`FIFOBuffer` keeps the most recent tiles;
- :class:`ReservoirBuffer` keeps a uniform random sample of every tile seen (Vitter's
  Algorithm R, "Random sampling with a reservoir", ACM TOMS 11(1), 1985);
- :class:`StratifiedBuffer` splits its capacity evenly over (source, time bin) strata, with
  reservoir sampling inside each stratum, so rare sources and old steps keep their share.

:func:`make_buffer` builds one from a configuration string. Tiles containing NaN or Inf are
dropped on arrival and counted in ``n_rejected_``.
"""

from __future__ import annotations

import math
import numbers
import operator

import numpy as np

__all__ = ["BUFFER_KINDS", "FIFOBuffer", "ReplayBuffer", "ReservoirBuffer", "StratifiedBuffer", "make_buffer"]

BUFFER_KINDS = ("none", "fifo", "reservoir", "stratified")
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


class FIFOBuffer(ReplayBuffer):
    """Keep the most recent tiles (a ring buffer).

    Parameters
    ----------
    max_mib : float
        Memory cap for the tile data, in MiB.
    seed : int or None, default=0
        Seed of the generator :meth:`sample` uses when given no ``rng`` (retention is
        deterministic).

    Attributes
    ----------
    capacity, n_features_in_, n_seen_, n_rejected_, nbytes
        See :class:`ReplayBuffer`.

    Notes
    -----
    Holds the newest ``min(n_seen_, capacity)`` finite tiles; :meth:`tiles` returns them oldest
    first, in arrival order. Replaying only recent tiles mostly smooths the training batches; it
    does not protect against forgetting older steps (use :class:`ReservoirBuffer` or
    :class:`StratifiedBuffer` for that).
    """

    def __init__(self, max_mib, seed=0):
        super().__init__(max_mib, seed=seed)
        self._pos = 0  # next row written
        self._size = 0

    def __len__(self):
        return self._size

    def _add(self, tiles, sources, steps):
        cap, m = self.capacity, len(tiles)
        if m >= cap:
            self._write(np.arange(cap), tiles[-cap:], sources[-cap:], steps[-cap:])
            self._pos, self._size = 0, cap
            return
        rows = (self._pos + np.arange(m)) % cap
        self._write(rows, tiles, sources, steps)
        self._pos = (self._pos + m) % cap
        self._size = min(cap, self._size + m)

    def _held_rows(self):
        if self._size < self.capacity:
            return np.arange(self._size)
        return (self._pos + np.arange(self.capacity)) % self.capacity


class ReservoirBuffer(ReplayBuffer):
    """Keep a uniform random sample of every tile seen (reservoir sampling, Algorithm R).

    Implements Algorithm R of Vitter, "Random sampling with a reservoir", ACM Transactions on
    Mathematical Software 11(1):37-57, 1985: the first ``capacity`` tiles fill the buffer; tile
    number ``t > capacity`` replaces a slot drawn uniformly from ``{0, ..., t - 1}`` when that slot
    is below ``capacity`` and is dropped otherwise. Batches are processed in one vectorised step
    with the same outcome distribution as feeding their tiles one at a time.

    Parameters
    ----------
    max_mib : float
        Memory cap for the tile data, in MiB.
    seed : int or None, default=0
        Seed of the retention decisions and of :meth:`sample` without ``rng``.

    Attributes
    ----------
    capacity, n_features_in_, n_seen_, n_rejected_, nbytes
        See :class:`ReplayBuffer`.

    Notes
    -----
    After ``n`` finite tiles the buffer holds a uniform random subset of size
    ``min(n, capacity)`` of them: each is held with probability ``min(1, capacity / n)``,
    whatever the batch sizes. On a stream dominated by a few sources the sample is dominated by
    them too; :class:`StratifiedBuffer` balances sources and steps instead. :meth:`tiles` returns
    the held tiles in slot order, which carries no meaning.
    """

    def __init__(self, max_mib, seed=0):
        super().__init__(max_mib, seed=seed)
        self._size = 0

    def __len__(self):
        return self._size

    def _add(self, tiles, sources, steps):
        items, slots, self._size = _algorithm_r(self._size, self.capacity, self.n_seen_, len(tiles), self._rng)
        self._write(slots, tiles[items], sources[items], steps[items])

    def _held_rows(self):
        return np.arange(self._size)


def _group(sources, bins):
    """Group batch items by (source, bin): sorted keys, item order, group bounds in that order."""
    order = np.lexsort((bins, sources))  # stable: batch order inside each group
    src, b = sources[order], bins[order]
    change = np.flatnonzero((src[1:] != src[:-1]) | (b[1:] != b[:-1])) + 1
    starts = np.concatenate([[0], change])
    keys = list(zip(src[starts].tolist(), b[starts].tolist()))
    return keys, order, np.concatenate([starts, [len(order)]])


class _Stratum:
    __slots__ = ("n_seen", "order", "quota", "rows")

    def __init__(self, order):
        self.rows = np.empty(0, dtype=np.int64)  # store rows, in the stratum's slot order
        self.n_seen = 0
        self.quota = 0
        self.order = order  # creation index, for deterministic tie-breaks


class StratifiedBuffer(ReplayBuffer):
    """Balance the buffer over sources and time: equal shares per (source, time bin) stratum.

    Time bins are absolute: a tile at step ``t`` falls in bin ``t // bin_width_``, covering steps
    ``[b * bin_width_, (b + 1) * bin_width_)``. ``bin_width_`` starts at ``bin_width`` and doubles
    whenever some source would have more than ``time_bins`` occupied bins; doubling merges
    aligned pairs of bins of every source, so the oldest steps stay represented (in wide bins)
    next to the recent ones, and each source has at most ``time_bins`` strata. One width for all
    sources keeps bins comparable across sources and makes all merges happen at once.

    The capacity is split evenly over the strata that have appeared, max-min fairly: a stratum
    that can hold fewer tiles than the even share (it has seen fewer, or it lost tiles to an
    earlier trim and receives no new ones) keeps what it has, and the rest is split evenly among
    the others. When a new stratum appears the larger strata are trimmed at random to the new
    share. Inside a stratum tiles are kept by reservoir sampling (Algorithm R, Vitter 1985) with
    the stratum's share as its capacity. :meth:`sample` draws a stratum uniformly among the
    non-empty ones, then a tile uniformly inside it, without replacement.

    Parameters
    ----------
    max_mib : float
        Memory cap for the tile data, in MiB.
    time_bins : int, default=4
        Most time bins kept per source (``1`` stratifies by source only).
    seed : int or None, default=0
        Seed of the retention decisions and of :meth:`sample` without ``rng``.
    bin_width : int, default=1
        Initial bin width in steps.

    Attributes
    ----------
    capacity, n_features_in_, n_seen_, n_rejected_, nbytes
        See :class:`ReplayBuffer`.
    bin_width_ : int
        Current bin width in steps.

    Notes
    -----
    A stratum's tiles are a uniform sample of the tiles it has seen while its share only shrinks,
    which is what new strata cause. Two events bend this slightly. When bins merge, the merged
    sample takes from each part a multivariate-hypergeometric number of tiles, at the inclusion
    rate of the most subsampled part (exact when no part had been subsampled; a draw above what
    a part holds is clipped). When a share grows (after a merge, or when other strata cannot use
    theirs), the room is filled by the stratum's next arrivals, which favours them a little.
    For replay in continual learning see Chaudhry et al., "On tiny episodic memories in continual
    learning", 2019.

    :meth:`tiles` returns the held tiles grouped by stratum, in increasing (source, bin) order.
    """

    def __init__(self, max_mib, time_bins=4, seed=0, *, bin_width=1):
        super().__init__(max_mib, seed=seed)
        if isinstance(time_bins, bool) or not isinstance(time_bins, numbers.Integral) or time_bins < 1:
            raise ValueError(f"time_bins={time_bins!r} must be an integer >= 1")
        if isinstance(bin_width, bool) or not isinstance(bin_width, numbers.Integral) or bin_width < 1:
            raise ValueError(f"bin_width={bin_width!r} must be an integer >= 1")
        self.time_bins = int(time_bins)
        self.bin_width = int(bin_width)
        self.bin_width_ = int(bin_width)
        self._strata = {}  # (source, bin) -> _Stratum
        self._n_created = 0
        self._size = 0

    def __len__(self):
        return self._size

    def stratum_sizes(self):
        """Tiles held and seen per stratum.

        Returns
        -------
        sizes : dict of (int, int) to (int, int)
            ``(source, bin) -> (n_held, n_seen)``, in increasing (source, bin) order; bin ``b``
            covers steps ``[b * bin_width_, (b + 1) * bin_width_)``.
        """
        return {key: (len(st.rows), st.n_seen) for key, st in sorted(self._strata.items())}

    # ------------------------------------------------------------------ internals
    def _all_strata(self):
        return [st for _, st in sorted(self._strata.items())]

    def _held_rows(self):
        rows = [st.rows for st in self._all_strata()]
        return np.concatenate(rows) if rows else np.empty(0, dtype=np.int64)

    def _init_capacity(self, n_features):
        super()._init_capacity(n_features)
        self._fresh = 0  # rows >= _fresh were never used
        self._freed = np.empty(0, dtype=np.int64)  # rows given back by trims and merges

    def _release(self, rows):
        self._freed = np.concatenate([self._freed, rows])
        self._size -= len(rows)

    def _take(self, k):
        reuse = min(k, len(self._freed))
        rows = np.concatenate([self._freed[len(self._freed) - reuse:],
                               np.arange(self._fresh, self._fresh + k - reuse, dtype=np.int64)])
        self._freed = self._freed[:len(self._freed) - reuse]
        self._fresh += k - reuse
        self._size += k
        return rows

    def _widen(self, new_keys):
        """Double ``bin_width_`` until no source has more than ``time_bins`` bins; merge strata."""
        occupied = {}
        for s, b in list(self._strata) + new_keys:
            occupied.setdefault(s, set()).add(b)
        factor = 1
        while max(len(bins) for bins in occupied.values()) > self.time_bins:
            factor *= 2
            occupied = {s: {b // 2 for b in bins} for s, bins in occupied.items()}
        if factor == 1:
            return
        self.bin_width_ *= factor
        groups = {}
        for (s, b), st in self._strata.items():
            groups.setdefault((s, b // factor), []).append(st)
        self._strata = {key: self._merge(parts) for key, parts in groups.items()}

    def _merge(self, parts):
        if len(parts) == 1:
            return parts[0]
        parts.sort(key=lambda st: st.order)
        n = np.array([st.n_seen for st in parts], dtype=np.int64)
        held = np.array([len(st.rows) for st in parts], dtype=np.int64)
        rate = float(np.min(held / n))
        size = min(math.floor(rate * n.sum() + 1e-9), int(held.sum()))
        take = np.minimum(self._rng.multivariate_hypergeometric(n, size), held)
        merged = _Stratum(parts[0].order)
        keep = []
        for st, k in zip(parts, take):
            perm = self._rng.permutation(len(st.rows))
            keep.append(st.rows[np.sort(perm[:k])])
            self._release(st.rows[perm[k:]])
        merged.rows = np.concatenate(keep)
        merged.n_seen = int(n.sum())
        return merged

    def _set_quotas(self, strata, demand):
        """Max-min fair integer split of ``capacity`` over strata that can hold ``demand`` tiles."""
        demand = np.asarray(demand, dtype=np.int64)
        cap = self.capacity
        if demand.sum() <= cap:
            quota = demand.copy()
        else:
            lo, hi = 0, int(demand.max())
            while lo < hi:  # largest level L with sum(min(demand, L)) <= capacity
                mid = (lo + hi + 1) // 2
                if np.minimum(demand, mid).sum() <= cap:
                    lo = mid
                else:
                    hi = mid - 1
            quota = np.minimum(demand, lo)
            extra = cap - int(quota.sum())  # fewer than the strata with demand > L
            if extra:
                cand = np.flatnonzero(demand > lo)
                held = np.array([len(strata[i].rows) for i in cand])
                order = np.array([strata[i].order for i in cand])
                # the +1s go to the strata holding most (fewest trims), then the oldest
                quota[cand[np.lexsort((order, -held))[:extra]]] += 1
        for st, q in zip(strata, quota):
            st.quota = int(q)

    def _add(self, tiles, sources, steps):
        width = self.bin_width_
        keys, order, bounds = _group(sources, steps // width)
        self._widen(keys)
        if self.bin_width_ != width:
            keys, order, bounds = _group(sources, steps // self.bin_width_)
        groups = []
        for g, key in enumerate(keys):
            if key not in self._strata:
                self._strata[key] = _Stratum(self._n_created)
                self._n_created += 1
            groups.append((self._strata[key], order[bounds[g]:bounds[g + 1]]))
        pending = {id(st): len(idx) for st, idx in groups}
        strata = self._all_strata()
        self._set_quotas(strata, [len(st.rows) + pending.get(id(st), 0) for st in strata])
        for st in strata:  # random trim to the new shares (a uniform subset of a uniform sample)
            if len(st.rows) > st.quota:
                perm = self._rng.permutation(len(st.rows))
                self._release(st.rows[perm[st.quota:]])
                st.rows = st.rows[np.sort(perm[:st.quota])]
        for st, idx in groups:
            items, slots, n_after = _algorithm_r(len(st.rows), st.quota, st.n_seen, len(idx), self._rng)
            if n_after > len(st.rows):
                st.rows = np.concatenate([st.rows, self._take(n_after - len(st.rows))])
            rows = idx[items]
            self._write(st.rows[slots], tiles[rows], sources[rows], steps[rows])
            st.n_seen += len(idx)

    def _sample_rows(self, k, rng):
        strata = [st for st in self._all_strata() if len(st.rows)]
        sizes = np.array([len(st.rows) for st in strata], dtype=np.int64)
        n_strata = len(strata)
        taken = np.zeros(n_strata, dtype=np.int64)
        choice = []
        while sum(len(c) for c in choice) < k:
            remaining = k - sum(len(c) for c in choice)
            active = int(np.count_nonzero(taken < sizes))
            # Uniform draws over all strata, keeping only those that hit a stratum with tiles left:
            # the kept draws are uniform over the non-exhausted strata, as drawn one by one.
            draws = rng.integers(n_strata, size=2 * remaining * n_strata // active + 16)
            srt = np.argsort(draws, kind="stable")
            counts = np.bincount(draws, minlength=n_strata)
            starts = np.cumsum(counts) - counts
            occ = np.empty(len(draws), dtype=np.int64)
            occ[srt] = np.arange(len(draws)) - np.repeat(starts, counts)
            occ += taken[draws]
            kept = draws[occ < sizes[draws]][:remaining]
            taken += np.bincount(kept, minlength=n_strata)
            choice.append(kept)
        choice = np.concatenate(choice)
        by_stratum = np.argsort(choice, kind="stable")
        ends = np.cumsum(taken)
        rows = np.empty(k, dtype=np.int64)
        for i in np.flatnonzero(taken):  # the j-th draw from a stratum gets its j-th random tile
            rows[by_stratum[ends[i] - taken[i]:ends[i]]] = rng.choice(strata[i].rows, size=taken[i], replace=False)
        return rows


def make_buffer(kind, max_mib, seed=0, **kw):
    """Build a replay buffer from its name.

    Parameters
    ----------
    kind : {"none", "fifo", "reservoir", "stratified"}
        Buffer type; ``"none"`` disables replay.
    max_mib : float
        Memory cap for the tile data, in MiB (ignored for ``"none"``).
    seed : int or None, default=0
        Seed passed to the buffer.
    **kw
        Further keyword arguments of the buffer class (e.g. ``time_bins`` for
        :class:`StratifiedBuffer`).

    Returns
    -------
    buffer : FIFOBuffer, ReservoirBuffer, StratifiedBuffer or None
        ``None`` for ``"none"``.

    Raises
    ------
    ValueError
        If ``kind`` is not one of :data:`BUFFER_KINDS`, or the buffer rejects its arguments.
    """
    classes = {"fifo": FIFOBuffer, "reservoir": ReservoirBuffer, "stratified": StratifiedBuffer}
    if kind == "none":
        return None
    if not isinstance(kind, str) or kind not in classes:
        raise ValueError(f"unknown replay buffer kind {kind!r}; allowed kinds: {', '.join(BUFFER_KINDS)}")
    return classes[kind](max_mib, seed=seed, **kw)
