"""Replay buffers for online training on non-i.i.d. tile streams.

A staging rank receives tiles step by step, each labelled with the source it came from (the
producer rank or subdomain) and the output step it belongs to. Training only on the newest batch
forgets earlier steps and over-fits the sources that send the most tiles; mixing a few replayed
tiles into every update counters both (experience replay; see Chaudhry et al., "On tiny episodic
memories in continual learning", arXiv:1902.10486, 2019, for how far a small memory goes).

Three buffers share one interface (:class:`~.replay_base.ReplayBuffer`), each bounded by a memory cap in MiB:

- :class:`FIFOBuffer` keeps the most recent tiles;
- :class:`ReservoirBuffer` keeps a uniform random sample of every tile seen (Vitter's
  Algorithm R, "Random sampling with a reservoir", ACM TOMS 11(1), 1985);
- :class:`StratifiedBuffer` splits its capacity evenly over (source, time bin) strata, with
  reservoir sampling inside each stratum, so rare sources and old steps keep their share
  (:mod:`.replay_stratified`).

:func:`make_buffer` builds one from a configuration string. Tiles containing NaN or Inf are
dropped on arrival and counted in ``n_rejected_``.
"""

from __future__ import annotations

import numpy as np

from .replay_base import ReplayBuffer, _algorithm_r
from .replay_stratified import StratifiedBuffer

__all__ = ["BUFFER_KINDS", "FIFOBuffer", "ReplayBuffer", "ReservoirBuffer", "StratifiedBuffer", "make_buffer"]

BUFFER_KINDS = ("none", "fifo", "reservoir", "stratified")


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
