"""Choose the level-wise step factors ``alpha``, ``beta`` of a field from trial encodes at equal MSE.

The stream codec quantizes level ``l`` (0 finest) with ``step / min(alpha^l, beta)``
(:func:`~.frame_header.level_steps`). How much finer the coarse levels should be depends on the field:
on the heat2d plume ``(2, 16)`` took 14 % fewer bytes than the default ``(1.5, 4)`` at 50 dB,
on Allen-Cahn they were within 1 % (QoZ tunes the same two numbers per field). Staging sees
consecutive blocks of a variable: :func:`trial_bytes` codes, for each candidate, the later block
of each pair predicted from the earlier one (the earlier coded on its own at the same step, as a
producer's closed loop would hold it), with the step bisected until the later block's MSE is
within ``[1 - TOL, 1]`` of the target: the bytes are compared at (nearly) the same MSE. The sums
add over pairs and ranks; :func:`choose_factors` keeps the cheapest candidate, and the default
whenever no other is cheaper.
"""

from __future__ import annotations

import math

import numpy as np

from .frame import encode_frame
from .stream import first_weights

DEFAULT = (1.5, 4.0)
CANDIDATES = (DEFAULT, (1.25, 4.0), (1.5, 8.0), (2.0, 4.0), (2.0, 8.0), (2.0, 16.0), (2.5, 16.0))
TOL = 0.05
MAX_BISECT = 14


def _bytes_at_mse(prev, cur, target_mse, alpha, beta, adaptive=False, max_step=math.inf):
    """Bytes of ``cur`` predicted from ``prev``'s own reconstruction, at the largest step found whose
    MSE is at most ``target_mse`` (bisection on the log of the step), the step at most ``max_step``."""
    n = max(cur.size, 1)
    lo, hi = None, None  # steps known to meet / to miss the target
    step = min(math.sqrt(12.0 * target_mse), max_step)
    best = None
    for _ in range(MAX_BISECT):
        rec0 = encode_frame(prev, step, alpha=alpha, beta=beta, payload=False).reconstruction
        w = first_weights(cur, rec0)
        fr = encode_frame(cur, step, prev=rec0, weights=w, alpha=alpha, beta=beta, adaptive=adaptive)
        mse = fr.sse / n
        if mse <= target_mse:
            lo = step
            if best is None or len(fr.payload) < best:
                best = len(fr.payload)
            if mse >= (1.0 - TOL) * target_mse or step >= max_step:
                break  # at the target, or at the largest step the rate control would take
        else:
            hi = step
        step = math.sqrt(lo * hi) if lo is not None and hi is not None else (step * 2.0 if hi is None else step / 2.0)
        step = min(step, max_step)
    return best if best is not None else math.inf


def trial_bytes(pairs, target_mse, candidates=CANDIDATES, adaptive=False, max_step=math.inf):
    """Bytes per candidate, summed over ``pairs`` of consecutive blocks, at MSE ``<= target_mse``.

    Parameters
    ----------
    pairs : iterable of (ndarray, ndarray)
        ``(previous, current)`` blocks of one variable (same shape; float32 or float64).
    target_mse : float
        MSE per value the current blocks may have (as ``step_targets`` gives it).
    candidates : sequence of (alpha, beta)
    adaptive : bool, default=False
        Count the bytes as ``codec.entropy: adaptive`` sends them (the shorter of both coders).
    max_step : float, default=inf
        The largest step tried (a run's rate control caps its step: with it a candidate that meets
        the target only at a larger step is charged the bytes it costs at the cap, as in a run).

    Returns
    -------
    costs : ndarray of float64, shape (len(candidates),)
        ``inf`` where no step met the target.

    Raises
    ------
    ValueError
        On a non-positive target, pairs of different shapes, or factors outside ``[1, 16]``.
    """
    if not (math.isfinite(target_mse) and target_mse > 0):
        raise ValueError(f"stream tuning: target_mse must be positive and finite, got {target_mse!r}")
    for a, b in candidates:
        if not (1.0 <= a <= 16.0 and 1.0 <= b <= 16.0):
            raise ValueError(f"stream tuning: candidate alpha={a}, beta={b} outside [1, 16]")
    costs = np.zeros(len(candidates))
    for prev, cur in pairs:
        prev, cur = np.ascontiguousarray(prev), np.ascontiguousarray(cur)
        if prev.shape != cur.shape or prev.dtype != cur.dtype:
            raise ValueError(f"stream tuning: pair of {prev.shape} {prev.dtype} and {cur.shape} {cur.dtype}")
        if not (np.isfinite(prev).all() and np.isfinite(cur).all()) or cur.size == 0:
            continue  # non-finite values go exactly whatever the factors: nothing to learn here
        for k, (a, b) in enumerate(candidates):
            costs[k] += _bytes_at_mse(prev, cur, target_mse, a, b, adaptive, max_step)
    return costs


def choose_factors(costs, candidates=CANDIDATES, comm=None):
    """The candidate with the fewest bytes summed over ``comm`` (one ``Allreduce``; the same on every rank).

    The default ``(1.5, 4)`` (or the first candidate) wins ties and whenever every cost is infinite.

    Returns
    -------
    alpha, beta : float
    """
    costs = np.asarray(costs, dtype=np.float64).copy()
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, costs, op=MPI.SUM)
    if not np.isfinite(costs).any():
        return tuple(float(v) for v in candidates[0])
    k0 = candidates.index(DEFAULT) if DEFAULT in candidates else 0
    k = int(np.argmin(np.where(np.isfinite(costs), costs, np.inf)))
    if costs[k] >= costs[k0]:
        k = k0
    return float(candidates[k][0]), float(candidates[k][1])
