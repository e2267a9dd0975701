"""Encode one variable's block in one step with the stream codec: the contract of ``encode_step_block``.

:func:`encode_stream_block` takes what :func:`~stagelearn.analytics.step_encode.encode_step_block`
takes (the block as it travels, the caller's own values, the target MSE from
:func:`~stagelearn.analytics.step_encode.step_targets`, an optional pointwise bound, the
:class:`~stagelearn.analytics.temporal.PredictionChain` and the block's key in it) and returns a
:class:`StreamBlockCode` (a :class:`~stagelearn.analytics.step_encode.BlockCode`: payload and the
numbers of the report row, the error measured against the caller's values in their own dtype).

What is coded: the caller's values themselves when they are float32 or float64 (a float64 field is
coded and reconstructed in float64: the bound holds on the caller's values, not on a float32
copy), other real dtypes as float64. The reconstruction has that dtype.

Closed loop and keyframes: the previous reconstruction of each (variable, block) lives in the
``chain`` (recorded here, promoted by ``chain.end_step()``); a block is predicted from it unless
the chain says the step is a keyframe (every ``keyframe_every``-th coded step, and always when
``keyframe_every == 0``), the block is new, or its shape or dtype changed; and where a predicted
frame costs more than 1.5x the block's last keyframe the rate control also codes it on its own and
keeps the smaller (an unscheduled keyframe, :func:`~stagelearn.analytics.stream_rate.intra_bound`).
The payload's envelope (:mod:`.stream_payload`) carries ``ref_step`` for a predicted block, so a
decoder that starts at step ``S`` walks back to the last block coded on its own (at most
``keyframe_every - 1`` steps) and decodes forward: what
:meth:`~stagelearn.staging.output_reader.CompressedOutputReader.decoded_block` already does with
``ref_step`` / ``n_inter``. :class:`~stagelearn.analytics.stream_rate.StreamStates` holds the rest
of a block's state (the rate control's memory, :mod:`.stream_rate`; the last frame's blend
statistics).

Blend weights: with ``model.refit == "local"`` a predicted block uses the weights fitted from its
own previous frame's statistics (no communication), and the model's published weights when it has
none (first predicted frame after a keyframe); ``"published"``: always the model's.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np
import zstandard
from numba import njit

from .baselines import sz3_match
from .metrics import ErrorStats, psnr_from_mse
from .step_encode import BlockCode
from .stream_codec import decode_frame, encode_frame, first_weights, fit_weights, frame_info
from .stream_codec.interpolation import as_3d_shape, n_levels
from .stream_codec.varint import read_varint, write_varint
from .stream_model import pad_statistics
from .stream_payload import KIND_CODED, KIND_EXACT, StreamPayloadError, pack_stream_payload, parse_stream_payload
from .stream_codec.axis_order import kernel_shape
from .stream_rate import StreamStates  # noqa: F401  (staging imports it from here)
from .stream_rate import rate_controlled as _rate_controlled
from .stream_rate import target_ok as _target_ok

_DTYPES = (np.dtype(np.float32), np.dtype(np.float64))


@dataclass
class StreamBlockCode(BlockCode):
    """:class:`BlockCode` plus the block's blend statistics for staging's fit.

    Attributes
    ----------
    stream_stats : ndarray of float64, shape (MAX_LEVELS, 13)
        Sums of this block's predicted frame (zeros for a block coded on its own); add them over
        blocks and ranks (:func:`~stagelearn.analytics.stream_model.fit_from_statistics`).
    encodes : int
        Encoder passes spent (re-encodes of the rate control included).
    """

    stream_stats: np.ndarray = None
    encodes: int = 1


def coding_values(given):
    """The values the codec codes: ``given`` itself if float32/float64, else float64 (exact for
    integers below 2^53 and for float16)."""
    given = np.asarray(given)
    if given.dtype.kind not in "iuf":
        raise ValueError(f"stream codec: values of dtype {given.dtype} (a real dtype expected)")
    return np.ascontiguousarray(given if given.dtype in _DTYPES else given.astype(np.float64))


def encode_stream_block(block, model, *, step, chain, chain_key, target_mse, abs_bound=None, raw_fraction=None,
                        header=None, reference=None, scorer=None, sample_sz3=False, state=None):
    """Code one variable's block of one step with the stream codec (closed loop).

    Parameters
    ----------
    block : ndarray, shape (n_0, ..., n_{d-1})
        The block as it travels (float32).
    model : StreamVariableModel
        Published blend weights and level factors (:mod:`.stream_model`).
    step : int
    chain : PredictionChain
        Previous reconstructions (read here; this block's reconstruction recorded).
    chain_key : hashable
    target_mse : float
        MSE per value the block may have, against the caller's values (:func:`step_targets`).
    abs_bound : float, optional
        Pointwise bound in field units, checked on every value against the caller's values.
    raw_fraction : ignored
        Kept for the signature of ``encode_step_block``.
    header : dict, optional
        ``step``, ``variable``, ``rank``, ``encoder_version``, ``shape``, ``start``, ``count``.
    reference : ndarray, optional
        The caller's own values (any real dtype; default ``block``).
    scorer : None
        Anomaly scoring needs the PCA codec: a scorer raises ValueError.
    sample_sz3 : bool
        Also compress the block with SZ3 at the PSNR reached (report).
    state : StreamStates, optional
        The rate control's state across steps (default: a fresh one; the first frame then aims at
        the target without the memory of earlier frames).

    Returns
    -------
    StreamBlockCode

    Raises
    ------
    ValueError
        On a scorer, a ``reference`` of another shape, or neither a usable ``target_mse`` nor ``abs_bound``.
    """
    if scorer is not None:
        raise ValueError("stream codec: anomaly scoring needs the PCA codec (anomaly.enabled with codec.kind: "
                         "stream is not supported; set codec.kind: learned (learner.type pca) or anomaly.enabled: false)")
    given = block if reference is None else np.asarray(reference)
    if given.shape != block.shape:
        raise ValueError(f"stream codec: reference of shape {given.shape} for a block of shape {block.shape}")
    source = coding_values(given)
    st = (state if state is not None else StreamStates()).get(chain_key)
    st.axis_orders.keep = chain.keyframe_every > 1  # 0 and 1: every step coded on its own, no predicted frame
    prev_step, prev = chain.reference(chain_key, block.shape)
    if prev is not None and prev.dtype != source.dtype:
        prev_step, prev = None, None
    weights = None
    if prev is not None:
        axis_order = st.axis_orders.predicted(source)
        levels = max(n_levels(as_3d_shape(kernel_shape(block.shape, axis_order))), 1)
        own = st.stats is not None and st.stats.shape[0] == levels and np.any(st.stats[:, 0] > 0)
        if model.refit == "local" and own:
            weights = fit_weights(st.stats)
        elif model.weights is None:  # nothing fitted yet (start, after a keyframe): fit on this frame, one extra pass
            fitted = first_weights(source, prev, axis_order)
            weights = model.level_weights(levels) if fitted is None else fitted
        else:
            weights = model.level_weights(levels)
    stats = None
    if source.size:
        frame, encodes = _rate_controlled(source, prev, weights, target_mse, abs_bound, model, st)
        if prev is not None and st.intra:  # a burst the rate control coded on its own: an unscheduled keyframe
            prev_step, prev, weights = None, None, None
        stats = error_stats(given, frame.reconstruction)  # the target verified against the caller's values
        if _target_ok(target_mse) and stats.mse > target_mse:  # the codec's sum and ours differ in rounding
            e = math.sqrt(target_mse) * (1.0 - 1e-6)
            e = e if abs_bound is None else min(e, float(abs_bound))
            frame, encodes = encode_frame(source, 2.0 * e, eb_abs=e, prev=prev, weights=weights, alpha=model.alpha,
                                          beta=model.beta, adaptive=model.adaptive,
                                          axis_order=st.axis_orders.axis_order), encodes + 1
            stats = error_stats(given, frame.reconstruction)
        kind, body, rec, fstats = KIND_CODED, frame.payload, frame.reconstruction, frame.stats
    else:  # an empty block (a rank without data this step)
        encodes, kind, body, rec, fstats = 0, KIND_EXACT, exact_body(source), source.copy(), np.zeros((1, 13))
    if kind == KIND_CODED and len(body) > source.nbytes + 16:  # never beyond the exact values: store them
        kind, body, rec, stats = KIND_EXACT, exact_body(source), source.copy(), None
    temporal = kind == KIND_CODED and prev is not None
    st.stats = fstats if temporal else None
    hdr = {"step": int(step), "rank": 0, "encoder_version": 0, "shape": list(block.shape),
           "start": [0] * block.ndim, "count": list(block.shape), "variable": str(chain_key)}
    hdr.update(header or {})
    hdr["ref_step"] = prev_step if temporal else None
    payload = pack_stream_payload(hdr, kind, body)
    chain.record(chain_key, step, rec)
    stats = stats if stats is not None else error_stats(given, rec)
    code = StreamBlockCode(payload=payload, reconstruction=rec, stats=stats, n_raw_tiles=0,
                           local_psnr_db=psnr_from_mse(stats.mse, stats.data_range),
                           stream_stats=pad_statistics(fstats if temporal else np.zeros_like(fstats)),
                           encodes=encodes)
    if sample_sz3 and math.isfinite(code.local_psnr_db):
        code.sz3_bytes, srec, _, _ = sz3_match(block, code.local_psnr_db, prefer_match=True)  # SZ3 at our PSNR
        d = (np.asarray(given, dtype=np.float64) - srec).ravel()
        code.sz3_sse = float(d @ d)
    return code


def payload_axis_order(payload):
    """The axis order a stream block's frame was coded in (:mod:`.stream_codec.axis_order`).

    Parameters
    ----------
    payload : bytes
        A stream block payload (:func:`~stagelearn.analytics.stream_payload.pack_stream_payload`).

    Returns
    -------
    tuple of int or None
        None for the given order and for a block stored exactly.

    Raises
    ------
    StreamPayloadError, StreamFormatError
        On a payload that is not a stream block or a corrupt frame header.
    """
    _, kind, body = parse_stream_payload(payload)
    return frame_info(body)["axis_order"] if kind == KIND_CODED else None


@njit(cache=True)
def _error_pass(x, rec):
    """One pass: sum of squared errors, largest error, min, max; ``ok`` False at a non-finite value."""
    sse = 0.0
    emax = 0.0
    lo = np.inf
    hi = -np.inf
    for i in range(x.size):
        v = np.float64(x[i])
        if not np.isfinite(v):
            return sse, emax, lo, hi, False
        d = v - np.float64(rec[i])
        sse += d * d
        a = abs(d)
        if a > emax:
            emax = a
        if v < lo:
            lo = v
        if v > hi:
            hi = v
    return sse, emax, lo, hi, True


def error_stats(given, rec):
    """:class:`ErrorStats` of the reconstruction against the caller's values, in one compiled pass
    for finite float32/float64 values (the general :meth:`ErrorStats.from_arrays` otherwise:
    non-finite cells, integer dtypes)."""
    given = np.asarray(given)
    if given.dtype in _DTYPES and given.size and rec.dtype in _DTYPES:
        sse, emax, lo, hi, ok = _error_pass(np.ascontiguousarray(given).ravel(), np.ascontiguousarray(rec).ravel())
        if ok:
            return ErrorStats(sse=float(sse), n=int(given.size), max_abs_error=float(emax), vmin=float(lo),
                              vmax=float(hi))
    return ErrorStats.from_arrays(given, rec)


def exact_body(values):
    """A block stored exactly: varint dtype code (0 float32, 1 float64), zstd of the little-endian values."""
    out = bytearray()
    write_varint(out, _DTYPES.index(values.dtype))
    le = values.astype(values.dtype.newbyteorder("<"))
    return bytes(out) + zstandard.ZstdCompressor(level=3).compress(le.tobytes())


def decode_stream_block(payload, prev=None, *, verify=True):
    """Reconstruct one block (bit for bit the producer's reconstruction).

    Parameters
    ----------
    payload : bytes or ndarray of uint8
    prev : ndarray or None
        The decoded block of the same producer block at ``header["ref_step"]``; required when the
        header has ``n_inter == 1`` (decode from the last block coded on its own forwards).
    verify : bool
        Check the CRC-32 of the producer's reconstruction.

    Returns
    -------
    block : ndarray of the coded dtype (float32, or float64 for float64 fields), shape ``count``
    header : dict (:func:`~stagelearn.analytics.stream_payload.parse_stream_payload`)

    Raises
    ------
    StreamPayloadError
        On another format or version, a corrupt payload, a missing or wrong ``prev``.
    """
    header, kind, body = parse_stream_payload(payload)
    count = tuple(header["count"])
    where = f"step {header['step']} of {header['variable'] or 'the variable'} (producer {header['rank']})"
    try:
        if kind == KIND_EXACT:
            code, p = read_varint(body, 0)
            dtype = _DTYPES[code]
            raw = zstandard.ZstdDecompressor().decompress(body[p:], max_output_size=int(np.prod(count)) * 8 + 64)
            block = np.frombuffer(raw, dtype.newbyteorder("<")).astype(dtype).reshape(count)
        else:
            if header["ref_step"] is not None and prev is None:
                raise StreamPayloadError(f"{where} is predicted from step {header['ref_step']}: decode that step's "
                                         "block first and pass it as prev (or start at a keyframe)")
            block = decode_frame(body, prev if header["ref_step"] is not None else None, verify=verify)
    except StreamPayloadError:
        raise
    except (ValueError, IndexError, zstandard.ZstdError) as exc:
        raise StreamPayloadError(f"{where}: {exc}") from None
    if block.shape != count:
        raise StreamPayloadError(f"{where}: decoded shape {block.shape} differs from the header's count {count}")
    return block, header
