"""SZ3 in closed loop: the reference that predicts each block from SZ3's own previous reconstruction.

Our code predicts a block from its previous reconstruction (:class:`~.temporal.PredictionChain`);
SZ3 per frame (:func:`~.baselines.sz3_matched_psnr` on each block alone) does not. The fair
temporal reference is SZ3 run the same way: each step it compresses the difference between the
block and SZ3's own previous decompressed version of that block, and its reconstruction is that
previous version plus the decompressed difference, exactly what a decoder of the SZ3 stream would
hold. :class:`ClosedLoopSZ3` keeps those previous reconstructions, one per block key (the variable
on a producer rank, ``(variable, writer rank)`` in transit), and matches every step's PSNR to the
PSNR our code reached on the same block (within :data:`~.baselines.PSNR_MATCH_DB`,
:func:`~.baselines.sz3_match`). On small blocks SZ3's PSNR can jump over that window as its
setting moves; then the run that keeps the chain's summed deviation nearest 0 is taken, so the
chain's mean PSNR stays matched while that one block is above or below.

A key that misses a step (no block, a step to the fallback file, a variable not coded) starts
afresh at its next step (:meth:`ClosedLoopSZ3.end_step`): the chain is never stale.

The chain is only a reference if it runs at every step on the blocks it follows: producers (in
situ) and staging (in transit) call :meth:`ClosedLoopSZ3.update` at every coded step on the blocks
:func:`follows` picks: on each writer rank, one fixed variable (number ``rank % n_variables`` of
the stream's variables), so every rank pays for one SZ3 block per step and the variables are
spread over the ranks.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import numpy as np

from .baselines import block_psnr, sz3_match

#: SZ3 runs at most per block and step to land within ``PSNR_MATCH_DB`` of the target (usually one:
#: each chain starts from the setting that matched last time).
MAX_TRIES = 6


def follows(variables, var, rank):
    """Whether the closed-loop chain follows the block of ``var`` written by ``rank``.

    Parameters
    ----------
    variables : sequence of str
        The stream's variables in their defined order (the same on every rank).
    var : str
    rank : int
        The writer rank (producer rank in situ, the code's writer rank in transit).

    Returns
    -------
    bool
        True for variable number ``rank % len(variables)``: one fixed block per writer rank.
    """
    variables = list(variables)
    return bool(variables) and variables[int(rank) % len(variables)] == var


class ClosedLoopSample(NamedTuple):
    """One step of the closed-loop chain on one block.

    Attributes
    ----------
    nbytes : int
        SZ3's compressed size of the difference (the block's float32 size when it went raw).
    sse : float
        Squared error of SZ3's reconstruction against the caller's values.
    psnr_db : float
        Its PSNR against the caller's values' own range (inf when exact).
    raw : bool
        True when the block was kept exact (our PSNR was inf, or the block has non-finite values).
    setting : float
        SZ3's PSNR setting on the difference (its own range; inf when kept exact): with it, anyone
        can replay the chain with SZ3 alone.
    """

    nbytes: int
    sse: float
    psnr_db: float
    raw: bool
    setting: float


class ClosedLoopSZ3:
    """SZ3's previous reconstruction of every followed block, and one closed-loop step at a time.

    Attributes
    ----------
    steps : dict of hashable to int
        Steps run per key since its chain (re)started (the first is SZ3 on the block alone).
    """

    def __init__(self):
        self._prev = {}      # key -> float32 reconstruction SZ3's decoder holds
        self._offset = {}    # key -> SZ3 setting minus the target, last match (warm start)
        self._carry = {}     # key -> sum of the PSNR deviations so far (dB; see baselines.sz3_match carry_db)
        self._touched = set()  # keys updated since the last end_step
        self.steps = {}

    def __contains__(self, key):
        return key in self._prev

    def reset(self, key=None):
        """Forget one key's reconstruction (all with None): its next step is SZ3 on the block alone."""
        if key is None:
            self._touched.clear()
            self._prev.clear()
            self._offset.clear()
            self._carry.clear()
            self.steps.clear()
        else:
            for d in (self._prev, self._offset, self._carry, self.steps):
                d.pop(key, None)

    def end_step(self):
        """The step is over: a key not updated in it has a gap, so its chain starts afresh next time."""
        for key in [k for k in self._prev if k not in self._touched]:
            self.reset(key)
        self._touched.clear()

    def update(self, key, block, target_psnr_db, *, given=None):
        """Compress ``block`` in closed loop at ``target_psnr_db`` and keep SZ3's reconstruction.

        Parameters
        ----------
        key : hashable
            The block's chain key.
        block : ndarray
            The block as it travels (compressed as float32).
        target_psnr_db : float
            The PSNR to match (our code's PSNR on this block, against the caller's values' own range).
        given : ndarray, optional
            The caller's values (any real dtype, same shape): error and range are measured against
            them (default: ``block``).

        Returns
        -------
        ClosedLoopSample or None
            None for an empty block (nothing to compress; the key has missed the step: see :meth:`end_step`).
        """
        data = np.ascontiguousarray(block, dtype=np.float32)
        ref = data if given is None else np.asarray(given)
        if data.size == 0:
            return None
        self._touched.add(key)
        prev = self._prev.get(key)
        if prev is not None and prev.shape != data.shape:
            self.reset(key)
            prev = None
        finite = bool(np.all(np.isfinite(data)))
        span = float(np.ptp(ref)) if finite else 0.0
        if not finite or not math.isfinite(target_psnr_db) or span <= 0.0:
            return self._keep_raw(key, data, ref, finite)
        base = np.zeros_like(data) if prev is None else prev
        diff = data - base
        target_mse = span * span * 10.0 ** (-target_psnr_db / 10.0)
        dspan = float(np.ptp(diff))
        # the difference's error is the block's error: its PSNR target is against its own range
        dtarget = 10.0 * math.log10(dspan * dspan / target_mse) if dspan > 0 else target_psnr_db
        offset = self._offset.get(key)
        nbytes, drec, setting, achieved = sz3_match(diff, dtarget, setting=None if offset is None else dtarget + offset,
                                                    max_tries=MAX_TRIES, prefer_match=True,
                                                    carry_db=self._carry.get(key, 0.0))
        self._offset[key] = setting - dtarget
        if math.isfinite(achieved):  # the difference's PSNR deviation is the block's (same error)
            self._carry[key] = self._carry.get(key, 0.0) + achieved - dtarget
        rec = (base + drec).astype(np.float32)
        self._prev[key] = rec
        self.steps[key] = self.steps.get(key, 0) + 1
        d = (np.asarray(ref, dtype=np.float64) - rec).ravel()
        return ClosedLoopSample(int(nbytes), float(d @ d), block_psnr(ref, rec), False, float(setting))

    def _keep_raw(self, key, data, ref, finite):
        """The block kept exact (float32): the next step predicts from it, or starts afresh after non-finite values."""
        if finite:
            self._prev[key] = data.copy()
            self.steps[key] = self.steps.get(key, 0) + 1
        else:
            self.reset(key)
        d = np.asarray(ref, dtype=np.float64) - data
        d = d[np.isfinite(d)]
        sse = float(d @ d)
        return ClosedLoopSample(int(data.nbytes), sse, block_psnr(ref, data) if finite else math.inf, True, math.inf)
