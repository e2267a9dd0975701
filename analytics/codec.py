"""Block coding: predict each tile, transform-code the residual, send the worst tiles raw.

:func:`encode_block` and :func:`decode_block` drive a model's codec (:class:`~.transform.TransformCodec`
for PCA, :class:`~stagelearn.analytics.ae_codec.AECodec` for an autoencoder) over the tiles of a
block (:mod:`.tiling`): the prediction of each tile (the model's, or the previous step's
reconstruction), the residual's integer codes (:mod:`.transform`, entropy coded by
:mod:`.entropy`), the tiles sent raw, and the pointwise-bound corrections (:mod:`.correction`).
The payload format is :mod:`.payload`.

The producer's reconstruction (:attr:`EncodedBlock.reconstruction`, its closed-loop reference)
and the decoder's are computed by the same functions, and every one of them is elementwise or
exact (:mod:`.fixed_point`), so they agree bit for bit on any machine; the payload carries the
CRC-32 of the producer's tiles and the decoder checks it.

The names of :mod:`.payload` and :mod:`.transform` are importable from here as well.
"""

from __future__ import annotations

import logging
import math
import zlib
from dataclasses import dataclass

import numpy as np
import zstandard

from .correction import correct, decode_residuals
from .entropy import unpack_codes
from .metrics import ErrorStats
from .payload import MAGIC, decode_raw_block, encode_raw_block, pack_payload, parse_payload, payload_raw_tiles
from .prediction import Prediction, max_block_sse, predict_tiles
from .tiling import from_tiles, tile_grid, tile_weights, to_tiles
from .fixed_point import MAX_CODE
from .transform import IdentityCodec, TransformCodec, quant_step_for_psnr

__all__ = ["MAGIC", "EncodedBlock", "IdentityCodec", "Prediction", "TransformCodec", "decode_block", "encode_block",
           "max_block_sse", "predict_tiles", "encode_raw_block", "parse_payload", "payload_raw_tiles", "quant_step_for_psnr"]

logger = logging.getLogger(__name__)


@dataclass
class EncodedBlock:
    """Result of :func:`encode_block`.

    Attributes
    ----------
    payload : bytes
        What goes on the wire for this block and variable.
    reconstruction : ndarray
        What the decoder will reconstruct (same shape as the block, float32).
    stats : ErrorStats
        Error of ``reconstruction`` against the raw block.
    n_raw_tiles : int
        Tiles sent raw.
    raw_tiles : ndarray of shape (n_raw_tiles, n_features)
        The raw tiles themselves (float32).
    tile_sse : ndarray of shape (n_tiles,)
        Squared coding error of every tile before raw tiles replaced the worst.
    """

    payload: bytes
    reconstruction: np.ndarray
    stats: ErrorStats
    n_raw_tiles: int
    raw_tiles: np.ndarray
    tile_sse: np.ndarray


def encode_block(block, codec, tile_shape, *, raw_fraction=0.02, header=None, target_mse=None, tile_hook=None,
                 prev=None, abs_bound=None, prediction=None):
    """Encode one block: a prediction per tile, the transform-coded residual, the worst tiles raw.

    Each tile is predicted from the model (*intra*: the PCA mean, or the autoencoder's
    reconstruction from its quantized latent code) or, when ``prev`` is given, from the previous
    step's reconstruction that producer and decoder both hold (*inter*, as a video codec's
    predicted frames; the cheaper of the two per tile, by residual energy). The residual is
    transform coded (the PCA basis, or the identity for an autoencoder) with one quantization
    step for the block, range coded, and the tiles reconstructed worst are sent raw.

    Parameters
    ----------
    block : ndarray of shape (n_0, ..., n_{d-1})
        Raw block of one variable (any float dtype; coded as float32).
    codec : TransformCodec or AECodec
        The model of the variable (:meth:`~stagelearn.analytics.encoder.VariableModel.codec`).
    tile_shape : sequence of int of length d
    raw_fraction : float, default=0.02
        At most ``floor(raw_fraction * n_tiles)`` tiles, those with the largest squared
        reconstruction error among the tiles not sent raw anyway (non-finite values, the tile
        hook's), are sent raw (exactly) instead of coded.
    header : dict, optional
        Extra JSON-serialisable fields stored in the payload header (step, variable, start...).
    target_mse : float, optional
        If given, the block's MSE against its values (``block`` itself: pass the caller's float64
        values to have them count) is at most ``target_mse`` and, where the block can err that
        much, within a few percent of it (0.004-0.22 dB): the step comes from a search on the
        reconstruction error with the raw tiles and padding accounted for
        (:meth:`TransformCodec.step_for_mse`), and the exact reconstruction is verified here
        (a slightly smaller step, or more raw tiles where the error lies outside a truncated basis,
        until it holds). Otherwise ``codec.quant_step`` is used.
    tile_hook : object, optional
        PCA only. Called as ``tile_hook(coef, centred_energy) -> indices`` of further tiles to
        send raw (e.g. anomalies), given every tile's coefficients (ndarray of shape (n_tiles,
        n_components)) and squared norm after mean removal (ndarray of shape (n_tiles,)); then
        ``tile_hook.sections()`` returns extra named byte sections for the payload.
    prev : ndarray of shape (n_0, ..., n_{d-1}), optional
        The decoder's reconstruction of this block at the previous step (temporal prediction).
        Decoding then needs the same array (:func:`decode_block` ``prev``).
    abs_bound : float, optional
        Pointwise error bound (field units): the step is at most the bound (twice it in the value
        domain of an autoencoder's residual), coded tiles exceeding it get a ZFP-coded correction
        and, if still above it, are sent raw (:mod:`.correction`); verified here.
    prediction : Prediction, optional
        :func:`predict_tiles` of the float32 values of this block with this codec, tile shape and
        ``prev``, when the caller has it already (an autoencoder's prediction is its costly part).

    Returns
    -------
    EncodedBlock

    Raises
    ------
    ValueError
        If the tile shape does not match the codec, ``prev`` has another shape, or a tile hook is
        given to a codec other than PCA.
    """
    block = np.asarray(block)
    if tile_hook is not None and codec.kind != "pca":
        raise ValueError("anomaly scoring (tile_hook) needs a PCA model")
    p = prediction if prediction is not None else predict_tiles(block, codec, tile_shape, prev)
    all_tiles, tiles, bad, ref, state, inter = p.all_tiles, p.tiles, p.bad, p.ref, p.state, p.inter
    n_tiles = tiles.shape[0]
    residual = tiles - ref
    extra, known = {}, bad | ~np.all(np.isfinite(ref), axis=1)  # tiles sent raw whatever the step
    if tile_hook is not None:
        hook_coef = codec.coefficients(tiles)
        centred = tiles - codec.mean
        energy = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
        known[np.asarray(tile_hook(hook_coef, energy), dtype=np.int64)] = True
        extra = tile_hook.sections()
    exact = to_tiles(block, tile_shape) if block.dtype == np.float64 else None  # the caller's values, when finer
    weights = tile_weights(block.shape, tile_shape)
    n_raw = int(math.floor(raw_fraction * n_tiles))
    res_codec, coef = codec.residual_codec(), None
    if target_mse is not None:
        target = (exact if exact is not None else all_tiles.astype(np.float64)) - ref
        coef = res_codec.coefficients(residual)
        res_codec = res_codec.with_step(res_codec.step_for_mse(
            residual, target_mse, n_values=block.size, exact=np.where(known[:, None], 0.0, target), weights=weights,
            n_raw=n_raw, skip=known, coef=coef))
    if abs_bound is not None:
        # with a pointwise bound every value beyond it costs a correction or a raw tile: a step of at most the
        # bound (PCA: per-value error std <= step / sqrt(12)) keeps them few; value-domain quantization errs by
        # at most step / 2, so only clipped codes and float32 rounding exceed 2 * bound
        cap = 2.0 * abs_bound * (1.0 - 1e-6) if isinstance(res_codec, IdentityCodec) else abs_bound
        if res_codec.quant_step > cap:
            res_codec = res_codec.with_step(cap)
    budget = None if target_mse is None else float(target_mse) * block.size
    last = math.inf
    for attempt in range(64):  # the search's float64 model of the reconstruction is checked on the exact one
        q = _quantize(res_codec, residual, coef, ref, all_tiles, exact, weights, bad, known, n_raw, abs_bound, tile_shape)
        reconstruction = from_tiles(q.rec, block.shape, tile_shape)
        stats = ErrorStats.from_arrays(block, reconstruction)
        if budget is None or stats.sse <= budget or not math.isfinite(stats.sse) or n_raw >= n_tiles:
            break
        if stats.sse < 0.9 * last and attempt < 4:  # float32 rounding the search did not see: a slightly smaller step
            res_codec = res_codec.with_step(res_codec.quant_step * min(0.99, 0.995 * math.sqrt(budget / stats.sse)))
        else:  # error the step cannot remove (outside a truncated basis): the worst coded tiles go raw
            coded = np.sort(np.delete(q.tile_sse, q.raw_index))[::-1]
            n_raw += int(np.searchsorted(np.cumsum(coded), stats.sse - budget)) + 1
        last = stats.sse
    if budget is not None and math.isfinite(stats.sse) and stats.sse > budget:  # reported as reached, never hidden
        logger.warning("block misses its error target after %d refinements: SSE %.6g > %.6g (its report row "
                       "carries the error reached)", attempt + 1, stats.sse, budget)
    codes, rec, raw_index, corr_index, corr_data, unusable = q.codes, q.rec, q.raw_index, q.corr_index, q.corr_data, q.unusable
    if unusable.any():
        logger.warning("%d of %d tiles cannot be coded by the model (non-finite prediction or codes out of range): "
                       "sent raw", int(unusable.sum()), unusable.size)
    keep = np.ones(n_tiles, dtype=bool)
    keep[raw_index] = False
    raw_tiles = all_tiles[raw_index]
    side, side_head = codec.side_sections(state, keep & ~inter)
    code_bytes = res_codec.pack(codes[keep])
    zc = zstandard.ZstdCompressor(level=codec.zstd_level)
    head = dict(header or {})
    head.update(
        kind=codec.kind,
        block_shape=list(block.shape),
        tile_shape=list(tile_shape),
        n_tiles=int(n_tiles),
        n_components=int(codes.shape[1]),
        n_raw=int(raw_index.size),
        quant_step=res_codec.quant_step,
        n_inter=int(inter[keep].sum()),
        n_corrected=int(corr_index.size),
        recon_crc32=zlib.crc32(np.ascontiguousarray(rec).tobytes()),
        **side_head,
    )
    sections = {"codes": code_bytes, "raw_index": zc.compress(raw_index.tobytes()), "raw_tiles": zc.compress(raw_tiles.tobytes()),
                **side, **extra}
    if head["n_inter"]:
        sections["inter"] = zc.compress(np.packbits(inter & keep).tobytes())
    if corr_index.size:
        sections["corrected_index"] = zc.compress(corr_index.tobytes())
        sections["corrections"] = corr_data
    payload = pack_payload(head, sections)
    return EncodedBlock(payload, reconstruction, stats, int(raw_index.size), raw_tiles, q.tile_sse)


@dataclass
class _Quantized:
    """One trial of :func:`encode_block` at one quantization step."""

    codes: np.ndarray
    rec: np.ndarray
    raw_index: np.ndarray
    corr_index: np.ndarray
    corr_data: bytes
    unusable: np.ndarray
    tile_sse: np.ndarray


def _quantize(res_codec, residual, coef, ref, tiles, exact, weights, bad, known, n_raw, abs_bound, tile_shape):
    """Codes, exact reconstruction, raw tiles and corrections of a block at ``res_codec``'s step.

    ``tiles`` are the block's float32 tiles (NaN/Inf included), ``exact`` the caller's float64
    ones or None, ``weights`` the padding mask or None, ``known`` the tiles sent raw whatever the
    step (``bad``: non-finite values), ``n_raw`` the raw budget for the worst of the others; ``coef``
    the residual's coefficients (None: computed here; they do not depend on the step).
    """
    n_tiles = residual.shape[0]
    coef = res_codec.coefficients(residual) if coef is None else coef
    codes = res_codec.quantize_coefficients(np.where(known[:, None], np.float32(0.0), coef))  # known: raw anyway
    rec = ref + res_codec.dequantize(codes)
    # Tiles the model cannot code (a diverged network: non-finite prediction, codes clipped at the
    # code range) are sent raw whatever the raw budget, so the error target and bound still hold.
    unusable = ~np.all(np.isfinite(rec), axis=1) | np.any(np.abs(codes) >= MAX_CODE, axis=1)
    rec[unusable] = np.where(bad[unusable, None], 0.0, tiles[unusable])
    diff = (exact if exact is not None else tiles.astype(np.float64)) - rec
    diff[bad] = 0.0
    err = np.einsum("ij,ij->i", diff, diff if weights is None else diff * weights, dtype=np.float64)
    raw_index = np.flatnonzero(known | unusable)
    if n_raw > 0:  # the raw budget goes to the worst of the tiles not already raw
        cand = np.where(known | unusable, 0.0, err)
        worst = np.argpartition(cand, n_tiles - n_raw)[n_tiles - n_raw:]
        raw_index = np.union1d(raw_index, worst[cand[worst] > 0])
    corr_index, corr_data = np.empty(0, dtype=np.int32), b""
    if abs_bound is not None:
        candidates = np.ones(n_tiles, dtype=bool)
        candidates[raw_index] = False
        corr_index, corr_data, still_bad = correct(tiles, rec, abs_bound, tuple(tile_shape), candidates, exact)
        raw_index = np.union1d(raw_index, still_bad)
    raw_index = np.sort(raw_index).astype(np.int32)
    rec[raw_index] = tiles[raw_index]
    return _Quantized(codes, rec, raw_index, corr_index, corr_data, unusable, err)


def decode_block(payload, codec=None, prev=None):
    """Reconstruct a block from its payload.

    Parameters
    ----------
    payload : bytes or ndarray of uint8
    codec : TransformCodec or AECodec or None
        The model of the encoder version named in the payload header (unused for raw payloads);
        the quantization step is taken from the header.
    prev : ndarray, optional
        The reconstruction of the same block at the previous step; required when the payload
        predicts tiles from it (header ``n_inter > 0``).

    Returns
    -------
    block : ndarray, float32, shape ``header["block_shape"]``
    header : dict
    raw_tiles : ndarray of shape (n_raw, n_features), float32

    Raises
    ------
    ValueError
        If the payload is malformed, needs a codec or ``prev`` that is not given (or of another
        shape), or was coded by another kind of model than ``codec``. A decoded block whose
        checksum differs from the producer's reconstruction is logged as a warning.
    """
    header, sec = parse_payload(payload)
    if header.get("kind") == "raw":
        return decode_raw_block(header, sec), header, np.zeros((0, 0), np.float32)
    if codec is None:
        raise ValueError("a transform-coded payload needs the codec of its encoder version")
    if header.get("kind") != codec.kind:
        raise ValueError(f"payload was coded by a {header.get('kind')!r} model, the codec given is {codec.kind!r}")
    try:
        tiles, raw_tiles = _decode_tiles(header, sec, payload, codec, prev)
    except (KeyError, TypeError, IndexError, AttributeError, zstandard.ZstdError, RecursionError, MemoryError) as exc:
        raise ValueError(f"malformed block payload (step {header.get('step')}, variable {header.get('variable')}): {exc!r}") from None
    crc = header.get("recon_crc32")
    if crc is not None and zlib.crc32(tiles.tobytes()) != crc:
        logger.warning("step %s, %s, producer %s: decoded block differs from the producer's reconstruction (checksum); "
                       "different floating-point kernels here?", header.get("step"), header.get("variable"), header.get("rank"))
    return from_tiles(tiles, header["block_shape"], header["tile_shape"]), header, raw_tiles


def _decode_tiles(header, sec, payload, codec, prev):
    """All tiles of a coded payload, ndarray of shape (n_tiles, n_features), and its raw tiles
    (see :func:`decode_block`)."""
    n_tiles, k = int(header["n_tiles"]), int(header["n_components"])
    tile_shape, block_shape = [int(t) for t in header["tile_shape"]], [int(n) for n in header["block_shape"]]
    d = int(np.prod(tile_shape))
    if k != codec.residual_codec().components.shape[0] or d != codec.n_features:
        raise ValueError(f"payload has {k} components of {d} features; the codec has "
                         f"{codec.residual_codec().components.shape[0]} of {codec.n_features}")
    if int(np.prod(tile_grid(block_shape, tile_shape))) != n_tiles:
        raise ValueError(f"payload header is inconsistent: {n_tiles} tiles for block {block_shape} / tile {tile_shape}")
    _, raw_tiles, raw_index = payload_raw_tiles(payload)
    dz = zstandard.ZstdDecompressor()
    keep = np.ones(n_tiles, dtype=bool)
    keep[raw_index] = False
    inter = np.zeros(n_tiles, dtype=bool)
    if header.get("n_inter", 0):
        if prev is None:
            raise ValueError(f"step {header.get('step')}: this payload predicts tiles from the previous step; pass its reconstruction as prev")
        if tuple(np.shape(prev)) != tuple(block_shape):
            raise ValueError(f"prev has shape {np.shape(prev)}, the payload's block {tuple(block_shape)}")
        bits = np.frombuffer(dz.decompress(bytes(sec["inter"]), max_output_size=n_tiles // 8 + 64), dtype=np.uint8)
        inter = np.unpackbits(bits, count=n_tiles).astype(bool)
        if int(inter.sum()) != header["n_inter"] or (inter & ~keep).any():
            raise ValueError("payload inter-tile section does not match its header")
    tiles = np.zeros((n_tiles, d), dtype=np.float32)
    intra = keep & ~inter
    tiles[intra] = codec.decode_intra(header, sec, int(intra.sum()))
    if inter.any():
        tiles[inter] = to_tiles(np.asarray(prev, dtype=np.float32), tile_shape)[inter]
    res_codec = codec.residual_codec().with_step(header["quant_step"])
    codes = unpack_codes(sec["codes"], int(keep.sum()), k)
    if codes.size and (int(codes.max()) > MAX_CODE or int(codes.min()) < -MAX_CODE):
        raise ValueError(f"payload codes exceed the code range (+-{MAX_CODE})")
    tiles[keep] += res_codec.dequantize(codes)
    n_corr = int(header.get("n_corrected", 0))
    if n_corr:
        index = np.frombuffer(dz.decompress(bytes(sec["corrected_index"]), max_output_size=4 * n_corr + 64), dtype=np.int32)
        if index.size != n_corr or index.max() >= n_tiles or index.min() < 0 or np.unique(index).size != n_corr:
            raise ValueError("payload correction index does not match its header")
        tiles[index] += decode_residuals(sec["corrections"], n_corr, d)
    tiles[raw_index] = raw_tiles
    return tiles, raw_tiles
