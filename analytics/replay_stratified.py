"""A replay buffer balanced over sources and time: :class:`StratifiedBuffer`.

Its capacity is split evenly over (source, time bin) strata, with reservoir sampling inside each
stratum, so rare sources and old steps keep their share (see :mod:`.replay`).
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .replay_base import ReplayBuffer, _algorithm_r


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
