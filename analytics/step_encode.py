"""Encode one variable's block in one output step: the one encode path of producers and in-transit staging.

A step is coded in two moves. First, collectively over the ranks that hold the step's blocks,
:func:`step_targets` turns the encoder's PSNR target into the MSE each block may have (from the
global value range of the step; given the encoder and the prediction chain, it also shares the
step's error budget out, so that what quiet blocks cannot spend goes to the others). Then each rank codes each of its blocks with
:func:`encode_step_block`: the variable's model (PCA or autoencoder,
:class:`~stagelearn.analytics.encoder.VariableModel`), temporal prediction from a
:class:`~stagelearn.analytics.temporal.PredictionChain`, an optional pointwise error bound, and
on the producer side an optional anomaly scorer and an SZ3 comparison sample. The result,
:class:`BlockCode`, holds the payload and the numbers of the block's report row (the row itself
is built on the staging side, :mod:`stagelearn.staging.block_report`).

In situ (producers) the caller passes its own values (``reference``, float64 allowed), against
which the error is measured; in transit (staging) the writer's own values when they are not
float32 (e.g. float64), else the float32 block.
"""

from __future__ import annotations

import logging
import math
from dataclasses import dataclass

import numpy as np

from .baselines import sz3_match
from .codec import encode_block
from .metrics import ErrorStats, psnr_from_mse
from .payload import encode_raw_block
from .prediction import max_block_sse, predict_tiles
from .qoi_policy import raw_fraction_for
from .tiling import tile_grid

logger = logging.getLogger(__name__)


def finite_extent(block):
    """``[min, -max]`` over the finite values of a block (``[inf, inf]`` when there are none).

    The sign of the maximum lets one MIN reduction combine both ends over ranks.
    """
    finite = block[np.isfinite(block)] if not np.all(np.isfinite(block)) else block
    return [finite.min(), -finite.max()] if finite.size else [np.inf, np.inf]


def finite_range(block):
    """``(min, max)`` over the finite values of a block (``(inf, -inf)`` when there are none).

    Parameters
    ----------
    block : ndarray
        Any shape and real dtype.

    Returns
    -------
    lo, hi : float
    """
    lo, neg_hi = finite_extent(block)
    return float(lo), -float(neg_hi)


def step_targets(comm, blocks, psnr_db, *, encoder=None, chain=None, keys=None):
    """MSE per value allowed by a PSNR target and the step's global value range (collective over ``comm``).

    Every block meeting this MSE makes the global field meet the target. With ``encoder`` and
    ``chain`` the step's error budget (``span**2 * 10**(-psnr_db / 10)`` per value, over all ranks'
    values) is also shared out: a block whose prediction alone errs by less than its share
    (:func:`~stagelearn.analytics.codec.max_block_sse`: a flat region, a field at rest) cannot spend
    it, so the others may spend more: the target MSE returned is the water level ``m`` with
    ``sum_b min(S_b, m n_b) = budget`` (``S_b``: that block's largest error, ``n_b``: its values),
    less 0.1 %, and never below the plain target. Each block then lands just under ``m n_b``
    or at ``S_b``, so the step and variable land just above the PSNR target instead of above it by
    what the quiet blocks left unspent.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The ranks holding the step's blocks; all pass the same variable names in the same order.
    blocks : dict of str to list of ndarray
        This rank's blocks of each variable (possibly none).
    psnr_db : float
    encoder : Encoder, optional
        The encoder that codes the step (its models, ``raw_fraction`` and ``keyframe_every``, which
        is set on ``chain``); variables it does not model keep the plain target.
    chain : PredictionChain, optional
        The prediction chain :func:`encode_step_block` will be given (the blocks' references).
    keys : dict of str to list, optional
        The chain keys of ``blocks[name]``, in order (default: ``name`` for a single block).

    Returns
    -------
    targets, spans : dict of str to float
        Target MSE and global range of finite values (1.0 for a constant field) per variable.
    """
    from mpi4py import MPI

    names = list(blocks)
    ext = np.array([np.min([finite_extent(b) for b in blocks[n]] or [[np.inf, np.inf]], axis=0) for n in names],
                   dtype=np.float64).reshape(-1)
    comm.Allreduce(MPI.IN_PLACE, ext, op=MPI.MIN)
    targets, spans = {}, {}
    for i, n in enumerate(names):
        span = -ext[2 * i + 1] - ext[2 * i]
        spans[n] = span if span > 0 else 1.0
        targets[n] = spans[n] ** 2 * 10.0 ** (-psnr_db / 10.0)
    if encoder is not None and chain is not None:
        chain.keyframe_every = encoder.keyframe_every
        mine = {n: _spendable(blocks[n], encoder, chain, (keys or {}).get(n, [n] * len(blocks[n])), n)
                for n in names if n in encoder.variables and encoder.variables[n].kind != "stream"}
        gathered = comm.allgather(mine)
        for n in mine:
            targets[n] = water_level([p for part in gathered for p in part.get(n, [])], targets[n])
    return targets, spans


def _spendable(blocks, encoder, chain, keys, name):
    """``[(S_b, n_b)]`` of this rank's blocks of one variable (see :func:`step_targets`)."""
    model = encoder.variables[name]
    out = []
    for block, key in zip(blocks, keys):
        if block.size:
            prev = chain.reference(key, block.shape)[1]
            prediction = predict_tiles(block, model.codec(), model.tile_shape, prev)
            chain.keep_prediction(key, block, model, prediction)  # encode_step_block codes with it
            raw = raw_fraction_for(encoder, name)
            out.append((max_block_sse(block, model.codec(), model.tile_shape, raw_fraction=raw, prediction=prediction),
                        int(block.size)))
    return out


def water_level(pairs, target_mse, margin=1e-3):
    """Target MSE ``m >= target_mse`` that shares a budget of ``target_mse`` per value over blocks.

    Parameters
    ----------
    pairs : list of (float, int)
        ``(S_b, n_b)``: each block's largest squared error and its number of values.
    target_mse : float
        The plain target (MSE per value over all blocks).
    margin : float, default=1e-3
        The budget shared is ``(1 - margin)`` of the whole, so that estimates of ``S_b`` a little
        off cannot push the step over the target.

    Returns
    -------
    m : float
        ``target_mse`` when no block is below its share; else the level with
        ``sum_b min(S_b, m n_b) = (1 - margin) * target_mse * sum_b n_b`` (when even the sum of
        all ``S_b`` stays under that, the plain target: every block errs all it can anyway).
    """
    pairs = sorted((s / n, s, n) for s, n in pairs if n > 0 and math.isfinite(s))
    total_n = sum(n for _, _, n in pairs)
    if not pairs or pairs[0][0] >= target_mse:
        return target_mse
    budget, n_left = (1.0 - margin) * target_mse * total_n, total_n
    for rate, s, n in pairs:
        if rate * n_left >= budget:  # this block and all after it can spend the level: stop
            break
        budget, n_left = budget - s, n_left - n
    level = budget / n_left if n_left else pairs[-1][0]
    return max(level, target_mse)


@dataclass
class BlockCode:
    """What :func:`encode_step_block` made of one block.

    Attributes
    ----------
    payload : bytes
        The block's self-describing payload (:func:`~stagelearn.analytics.codec.encode_block`).
    reconstruction : ndarray of float32
        What the decoder reconstructs (same shape as the block).
    stats : ErrorStats
        Error of ``reconstruction`` against the reference values.
    n_raw_tiles : int
    local_psnr_db : float
        PSNR of the block against its own value range.
    amap : ndarray of float32 or None
        The anomaly map (the ``X/anomaly`` variable) when a scorer was given.
    n_flagged : int
        Tiles the scorer flagged.
    anomaly_bytes : int
        Bytes spent on anomalies (map, histogram section, raw tiles beyond the raw budget).
    sz3_bytes, sz3_sse : float
        SZ3's size and squared error at ``local_psnr_db`` when sampled, else 0.
    """

    payload: bytes
    reconstruction: np.ndarray
    stats: ErrorStats
    n_raw_tiles: int
    local_psnr_db: float
    amap: np.ndarray = None
    n_flagged: int = 0
    anomaly_bytes: int = 0
    sz3_bytes: float = 0.0
    sz3_sse: float = 0.0

    @property
    def sent_bytes(self):
        """Bytes on the stream: the payload and the anomaly map."""
        return len(self.payload) + (self.amap.nbytes if self.amap is not None else 0)


def encode_step_block(block, model, *, step, chain, chain_key, target_mse, abs_bound=None, raw_fraction=0.02,
                      header=None, reference=None, scorer=None, sample_sz3=False, stream_state=None):
    """Code one variable's block of one step with the variable's model.

    Parameters
    ----------
    block : ndarray of float32, shape (n_0, ..., n_{d-1})
        The block as it travels (C order).
    model : VariableModel
        The encoder's model of the variable (codec and tile shape).
    step : int
        Output step (recorded in ``chain``).
    chain : PredictionChain
        Previous reconstructions; the block's reference is taken from it and its reconstruction
        recorded in it (the caller calls ``chain.end_step()`` once the step is written).
    chain_key : hashable
        The block's key in ``chain`` (the variable on a producer rank; ``(variable, rank)`` in transit).
    target_mse : float
        MSE per value the block may have (:func:`step_targets`).
    abs_bound : float, optional
        Pointwise error bound in field units.
    raw_fraction : float, default=0.02
        The encoder's raw tile budget.
    header : dict, optional
        Payload header fields (step, variable, rank, encoder version, shape, start, count);
        ``ref_step`` is added from ``chain``.
    reference : ndarray of shape (n_0, ..., n_{d-1}), optional
        The caller's own values (any real dtype): the error is measured against them, and float64
        values are what is coded and verified against the bound. Default: ``block``.
    scorer : AnomalyScorer, optional
        PCA only: scores the tiles, flags anomalies (sent raw) and fills the anomaly map.
    sample_sz3 : bool, default=False
        Also compress the block with SZ3 at the PSNR reached (for the report).

    Returns
    -------
    BlockCode

    Raises
    ------
    ValueError
        As :func:`~stagelearn.analytics.codec.encode_block` (tile shape, scorer on a non-PCA model).
    """
    if model.kind == "stream":  # the stream codec (analytics/stream_step.py): same contract
        from .stream_step import encode_stream_block

        return encode_stream_block(block, model, step=step, chain=chain, chain_key=chain_key, target_mse=target_mse,
                                   abs_bound=abs_bound, header=header, reference=reference, scorer=scorer,
                                   sample_sz3=sample_sz3, state=stream_state)
    given = block if reference is None else np.asarray(reference)
    source = given if given.dtype == np.float64 else block
    prev_step, prev = chain.reference(chain_key, block.shape)
    prediction = chain.take_prediction(chain_key, block, model)  # made by step_targets, of these float32 values
    if prediction is not None and source is not block and not np.array_equal(
            np.asarray(source, dtype=np.float32), block, equal_nan=True):
        prediction = None
    eb = encode_block(source, model.codec(), model.tile_shape, raw_fraction=raw_fraction, target_mse=target_mse,
                      tile_hook=scorer, prev=prev, abs_bound=abs_bound, header=dict(header or {}, ref_step=prev_step),
                      prediction=prediction)
    payload, recon, n_raw, stats = eb.payload, eb.reconstruction, eb.n_raw_tiles, eb.stats
    raw = encode_raw_block(block, header=dict(header or {}, tile_shape=list(model.tile_shape)))
    if len(payload) > len(raw):  # never larger than raw plus the raw payload's header: send the block raw
        payload, recon = raw, np.ascontiguousarray(block, dtype=np.float32)
        n_raw = int(np.prod(tile_grid(block.shape, model.tile_shape)))
        stats = ErrorStats.from_arrays(source, recon)
    chain.record(chain_key, step, recon)
    stats = stats if given is source else ErrorStats.from_arrays(given, recon)
    code = BlockCode(payload=payload, reconstruction=recon, stats=stats, n_raw_tiles=n_raw,
                     local_psnr_db=psnr_from_mse(stats.mse, stats.data_range))
    if scorer is not None:
        code.amap = scorer.map_array()
        code.n_flagged = len(scorer.flagged)
        # side channel: the map, the histogram section, and raw tiles beyond the raw budget
        extra_tiles = max(0, eb.n_raw_tiles - int(math.floor(raw_fraction * eb.tile_sse.size)))
        code.anomaly_bytes = (code.amap.nbytes + len(scorer.sections()["err_hist"]) + 8
                              + extra_tiles * eb.raw_tiles.shape[1] * 4)
    if sample_sz3 and math.isfinite(code.local_psnr_db):
        code.sz3_bytes, rec, _, _ = sz3_match(block, code.local_psnr_db, prefer_match=True)  # SZ3 at our PSNR
        d = (np.asarray(given, dtype=np.float64) - rec).ravel()
        code.sz3_sse = float(d @ d)
    return code


def check_bound(step, name, stats, bound, warned):
    """Log when the error bound does not hold against the caller's values.

    :func:`~stagelearn.analytics.codec.encode_block` verified it on the coded values; float64
    inputs also carry float32 rounding (half an ulp).

    Parameters
    ----------
    step : int
    name : str
        The variable.
    stats : ErrorStats
        Error against the caller's values (:attr:`BlockCode.stats`).
    bound : float
        Absolute bound in field units.
    warned : set of str
        Variables already warned about a bound below float32 resolution (updated).

    Returns
    -------
    held : bool
        False when the maximum error exceeds the bound (logged as an error).
    """
    magnitude = max(abs(stats.vmin), abs(stats.vmax)) if math.isfinite(stats.vmin) else 0.0
    ulp = float(np.spacing(np.float32(magnitude)))
    if bound < ulp and name not in warned:
        warned.add(name)
        logger.warning("%s: error bound %.3g is below float32 resolution (%.3g at |x| = %.3g); values are sent "
                       "as float32, so it cannot hold for float64 inputs", name, bound, ulp, magnitude)
    if math.isfinite(stats.max_abs_error) and stats.max_abs_error > bound + 0.5 * ulp:
        logger.error("step %d: %s max error %.3g exceeds the bound %.3g", step, name, stats.max_abs_error, bound)
        return False
    return True
