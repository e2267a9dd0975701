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
from .tiling import from_tiles, tile_grid, to_tiles
from .fixed_point import MAX_CODE
from .transform import IdentityCodec, TransformCodec, quant_step_for_psnr

__all__ = ["MAGIC", "EncodedBlock", "IdentityCodec", "TransformCodec", "decode_block", "encode_block",
           "encode_raw_block", "parse_payload", "payload_raw_tiles", "quant_step_for_psnr"]

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
                 prev=None, abs_bound=None):
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
        reconstruction error, are sent raw (exactly) instead of coded.
    header : dict, optional
        Extra JSON-serialisable fields stored in the payload header (step, variable, start...).
    target_mse : float, optional
        If given, the quantization step is chosen for this block so that its MSE (before raw
        tiles, which only lower it) stays at or below ``target_mse``
        (:meth:`TransformCodec.step_for_mse`); otherwise ``codec.quant_step`` is used.
    tile_hook : object, optional
        PCA only. Called as ``tile_hook(coef, centred_energy) -> indices`` of further tiles to
        send raw (e.g. anomalies), given every tile's coefficients (ndarray of shape (n_tiles,
        n_components)) and squared norm after mean removal (ndarray of shape (n_tiles,)); then
        ``tile_hook.sections()`` returns extra named byte sections for the payload.
    prev : ndarray of shape (n_0, ..., n_{d-1}), optional
        The decoder's reconstruction of this block at the previous step (temporal prediction).
        Decoding then needs the same array (:func:`decode_block` ``prev``).
    abs_bound : float, optional
        Pointwise error bound (field units): coded tiles exceeding it get a ZFP-coded correction
        and, if still above it, are sent raw (:mod:`.correction`); verified here.

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
    tiles = to_tiles(block.astype(np.float32, copy=False), tile_shape)
    if tiles.shape[1] != codec.n_features:
        raise ValueError(f"tile shape {tuple(tile_shape)} gives {tiles.shape[1]} features, the encoder has {codec.n_features}")
    if tile_hook is not None and codec.kind != "pca":
        raise ValueError("anomaly scoring (tile_hook) needs a PCA model")
    bad = ~np.all(np.isfinite(tiles), axis=1)  # NaN/Inf tiles are always sent raw, never coded
    all_tiles = tiles
    if bad.any():
        tiles = np.where(bad[:, None], codec.fill_tile, tiles)
    n_tiles = tiles.shape[0]
    ref, state = codec.intra_reference(tiles)
    inter = np.zeros(n_tiles, dtype=bool)
    if prev is not None:
        if tuple(np.shape(prev)) != block.shape:
            raise ValueError(f"prev has shape {np.shape(prev)}, the block {block.shape}")
        prev_tiles = to_tiles(np.asarray(prev, dtype=np.float32), tile_shape)
        usable = np.all(np.isfinite(prev_tiles), axis=1) & ~bad
        e_intra = np.einsum("ij,ij->i", tiles - ref, tiles - ref, dtype=np.float64)
        e_inter = np.einsum("ij,ij->i", tiles - prev_tiles, tiles - prev_tiles, dtype=np.float64)
        inter = usable & (e_inter < e_intra)
        ref = np.where(inter[:, None], prev_tiles, ref)
    residual = tiles - ref
    res_codec = codec.residual_codec()
    if target_mse is not None:
        res_codec = res_codec.with_step(res_codec.step_for_mse(residual, target_mse, n_values=block.size))
    if abs_bound is not None and isinstance(res_codec, IdentityCodec) and res_codec.quant_step > 2.0 * abs_bound:
        # value-domain quantization errs by at most step / 2: with this step only clipped codes and
        # float32 rounding can exceed the bound, so few tiles need a correction
        res_codec = res_codec.with_step(2.0 * abs_bound * (1.0 - 1e-6))
    coef = res_codec.coefficients(residual)
    codes = res_codec.quantize_coefficients(coef)
    rec = ref + res_codec.dequantize(codes)
    # Tiles the model cannot code (a diverged network: non-finite prediction, codes clipped at the
    # code range) are sent raw whatever the raw budget, so the error target and bound still hold.
    unusable = ~np.all(np.isfinite(rec), axis=1) | np.any(np.abs(codes) >= MAX_CODE, axis=1)
    if unusable.any():
        logger.warning("%d of %d tiles cannot be coded by the model (non-finite prediction or codes out of range): "
                       "sent raw", int(unusable.sum()), unusable.size)
        rec[unusable] = np.where(bad[unusable, None], 0.0, tiles[unusable])
    n_raw = int(math.floor(raw_fraction * n_tiles))
    err = np.einsum("ij,ij->i", tiles - rec, tiles - rec, dtype=np.float64)
    raw_index = np.empty(0, dtype=np.int32)
    if n_raw > 0:
        worst = np.argpartition(err, n_tiles - n_raw)[n_tiles - n_raw:]
        raw_index = worst[err[worst] > 0]
    extra = {}
    if tile_hook is not None:
        hook_coef = coef if not inter.any() else codec.coefficients(tiles)
        centred = tiles - codec.mean
        energy = np.einsum("ij,ij->i", centred, centred, dtype=np.float64)
        raw_index = np.union1d(raw_index, np.asarray(tile_hook(hook_coef, energy), dtype=np.int64))
        extra = tile_hook.sections()
    raw_index = np.union1d(raw_index, np.flatnonzero(bad | unusable))
    tiles = all_tiles
    corr_index, corr_data = np.empty(0, dtype=np.int32), b""
    if abs_bound is not None:
        candidates = np.ones(n_tiles, dtype=bool)
        candidates[raw_index.astype(np.int64)] = False
        exact = to_tiles(block, tile_shape) if block.dtype == np.float64 else None  # verify against the caller's values
        corr_index, corr_data, still_bad = correct(tiles, rec, abs_bound, tuple(tile_shape), candidates, exact)
        raw_index = np.union1d(raw_index, still_bad)
    raw_index = np.sort(raw_index).astype(np.int32)
    keep = np.ones(n_tiles, dtype=bool)
    keep[raw_index] = False
    raw_tiles = tiles[raw_index]
    rec[raw_index] = raw_tiles
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
    reconstruction = from_tiles(rec, block.shape, tile_shape)
    return EncodedBlock(payload, reconstruction, ErrorStats.from_arrays(block, reconstruction), int(raw_index.size), raw_tiles,
                        err)


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
