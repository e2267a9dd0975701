"""Transform coding of field blocks with a learned basis.

A block is cut into tiles (:mod:`.tiling`); each tile is projected on the basis (PCA
components), the coefficients are quantized uniformly with one step per variable and entropy
coded with a per-coefficient Laplace model and a range coder (transform coding, as in JPEG with a learned Karhunen-Loeve transform instead
of the DCT). The tiles reconstructed worst are sent raw instead, up to a fraction of the block,
so that the learner receives the data it models worst and the error stays bounded there.

With an orthonormal basis of full rank the squared error of a tile equals the squared
quantization error of its coefficients, ``~ quant_step**2 / 12`` per value, so the step follows
from an error target: :func:`quant_step_for_psnr`.

The payload of one block is a self-describing frame (:mod:`.framing`, magic ``b"SLP1"``): a JSON
header (step, variable, start/count, tile shape, quantization step, ...) and the sections
``codes``, ``raw_index`` and ``raw_tiles`` (no pickle).
"""

from __future__ import annotations

import math
import struct
from dataclasses import dataclass

import logging
import zlib

import constriction
import numpy as np
import zstandard

from .correction import correct, decode_residuals
from .framing import pack_frame, unpack_frame
from .metrics import ErrorStats
from .tiling import from_tiles, tile_grid, to_tiles

logger = logging.getLogger(__name__)

MAGIC = b"SLP1"
_MIN_SCALE = 0.05  # Laplace scale floor (in quantization steps) for near-zero coefficients
_MAX_MODEL_LIMIT = 4095  # larger code magnitudes in a column: that column is stored as zstd int32
_MAX_CODE = 2**24  # codes are clipped here; such tiles have huge errors and are sent raw first


def quant_step_for_psnr(psnr_db, data_range):
    """Uniform quantization step that gives a target PSNR with an orthonormal transform.

    Parameters
    ----------
    psnr_db : float
        Target PSNR (dB) against ``data_range``.
    data_range : float
        Value range of the variable (``max - min``).

    Returns
    -------
    step : float
        ``sqrt(12) * data_range * 10**(-psnr_db / 20)``, from ``MSE = step**2 / 12``.
    """
    return math.sqrt(12.0) * float(data_range) * 10.0 ** (-float(psnr_db) / 20.0)


class TransformCodec:
    """Quantized projection of tiles on a basis, entropy coded with a range coder.

    Parameters
    ----------
    mean : ndarray of shape (n_features,)
        Mean tile subtracted before projection.
    components : ndarray of shape (n_components, n_features)
        Orthonormal basis (rows), e.g. ``IncrementalPCA.components_``.
    quant_step : float
        Uniform quantization step of the coefficients (same unit as the field).
    zstd_level : int, default=3
        zstd level for the lossless sections (raw tiles and their indices).
    """

    def __init__(self, mean, components, quant_step, *, zstd_level=3):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"components of shape {self.components.shape} do not match mean of shape {self.mean.shape}"
            )
        if not quant_step > 0:
            raise ValueError(f"quant_step must be positive, got {quant_step!r}")
        self.quant_step = float(quant_step)
        self.zstd_level = zstd_level

    kind = "pca"

    # The model-side interface of :func:`encode_block` / :func:`decode_block` (shared with
    # :class:`~stagelearn.analytics.ae_codec.AECodec`): a prediction of each tile from the model
    # ("intra"), the side information it needs, and the codec of the residual.

    @property
    def fill_tile(self):
        """Stand-in for tiles with NaN/Inf while coding (they are sent raw): the mean tile."""
        return self.mean

    def residual_codec(self):
        """The codec of prediction residuals: the same basis with a zero mean (TransformCodec)."""
        return TransformCodec(np.zeros_like(self.mean), self.components, self.quant_step, zstd_level=self.zstd_level)

    def intra_reference(self, tiles):
        """Model prediction of tiles.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)

        Returns
        -------
        ref : ndarray of shape (n_tiles, n_features), float32
            The mean tile for every tile (the residual is then coded in the basis).
        state : None
            No side information.
        """
        return np.broadcast_to(self.mean, tiles.shape), None

    def side_sections(self, state, intra):
        """Payload sections and header fields besides the residual codes: ``({}, {})`` for PCA."""
        return {}, {}

    def decode_intra(self, header, sections, n_intra):
        """The mean tile, as ndarray of shape (n_intra, n_features), for the tiles predicted by the model."""
        return np.broadcast_to(self.mean, (n_intra, self.n_features))

    #: :meth:`step_for_mse` searches steps up to this factor above the uniform-noise model's step;
    #: a cap keeps the error spread out (a large step would concentrate a block's error budget in
    #: a few tiles and inflate the maximum error).
    max_step_factor = 2.0

    @property
    def n_features(self):
        return self.components.shape[1]

    def quantize(self, tiles):
        """Integer codes of tiles.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)

        Returns
        -------
        codes : ndarray of shape (n_tiles, n_components), dtype int32
        """
        return self.quantize_coefficients(self.coefficients(tiles))

    def coefficients(self, tiles):
        """Projections of tiles on the basis: ndarray of shape (n_tiles, n_components), float32."""
        return (np.asarray(tiles, dtype=np.float32) - self.mean) @ self.components.T

    def quantize_coefficients(self, coef):
        """Integer codes of coefficients (uniform mid-tread quantizer, step ``quant_step``)."""
        q = np.rint(coef * np.float32(1.0 / self.quant_step))
        return np.clip(q, -_MAX_CODE, _MAX_CODE).astype(np.int32)

    def with_step(self, quant_step):
        """The same basis with another quantization step."""
        return TransformCodec(self.mean, self.components, quant_step, zstd_level=self.zstd_level)

    def step_for_mse(self, tiles, target_mse, *, n_values=None, iterations=12):
        """Largest quantization step whose reconstruction MSE stays at or below ``target_mse``.

        The uniform-noise model ``MSE = step**2 / 12`` underestimates the step that a target
        allows when many coefficients quantize to zero (their error is below ``step**2 / 12``), so
        the step is found by bisection on ``log(step)`` between that model's value and
        :attr:`max_step_factor` times it; the error is measured in the coefficient domain plus the residual outside the
        basis, which equals the tile-domain error for an orthonormal basis.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)
        target_mse : float
            Mean squared error per value (field units squared).
        n_values : int, optional
            Values the MSE is taken over (default ``tiles.size``). For a block padded to whole
            tiles pass the block's size: the error over all tiles then bounds the error over the
            block's own values, so the target holds for the block.

        Returns
        -------
        step : float
        """
        tiles = np.asarray(tiles, dtype=np.float32)
        n_values = tiles.size if n_values is None else int(n_values)
        if n_values == 0 or target_mse <= 0:
            return math.sqrt(12.0 * max(target_mse, 0.0)) or self.quant_step
        coef = self.coefficients(tiles)
        residual = 0.0
        if self.components.shape[0] < self.components.shape[1]:  # truncated basis: error outside it is fixed
            centred = tiles - self.mean
            residual = float(np.sum(centred.astype(np.float64) ** 2) - np.sum(coef.astype(np.float64) ** 2))
        budget = target_mse * n_values - max(residual, 0.0)
        lo = math.sqrt(12.0 * max(budget, 0.0) / n_values)
        if lo == 0.0:
            return math.sqrt(12.0 * target_mse)
        def sse(step):
            r = coef - np.rint(coef / np.float32(step)) * np.float32(step)
            return float(np.einsum("ij,ij->", r, r, dtype=np.float64))
        hi = self.max_step_factor * lo
        if sse(lo) > budget:  # model optimistic (rare): shrink until it holds
            while lo > 1e-30 and sse(lo) > budget:
                lo *= 0.5
            return lo
        if sse(hi) <= budget:
            return hi
        for _ in range(iterations):
            mid = math.sqrt(lo * hi)
            if sse(mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def dequantize(self, codes):
        """Tiles reconstructed from integer codes.

        Parameters
        ----------
        codes : ndarray of shape (n_tiles, n_components)

        Returns
        -------
        tiles : ndarray of shape (n_tiles, n_features), dtype float32
        """
        coef = np.asarray(codes, dtype=np.float32) * np.float32(self.quant_step)
        return coef @ self.components + self.mean

    def pack(self, codes):
        """Entropy-code integer codes with a per-coefficient Laplace model and a range coder.

        Each coefficient (column) ``j`` gets a zero-mean quantized Laplace model on
        ``[-limit_j, limit_j]`` whose scale is the maximum-likelihood estimate
        ``mean(|codes[:, j]|)``; limits and scales travel as side information. Coding uses
        ``constriction``'s range coder (Bamler, "Understanding entropy coding with asymmetric
        numeral systems (ANS): a statistician's perspective", 2022). Columns whose limit exceeds
        :data:`_MAX_MODEL_LIMIT` (values far outside what the model has seen) are stored as zstd-
        compressed int32 instead.

        Parameters
        ----------
        codes : ndarray of shape (n_tiles, n_components), integer

        Returns
        -------
        data : bytes
            ``uint32 limits[n_components]``, ``float32 scales[n_components]``, ``uint32 n_words``,
            the range-coder words, then the zstd section of escaped columns.
        """
        codes = np.asarray(codes, dtype=np.int32)
        n, n_comp = codes.shape
        limits = np.abs(codes).max(axis=0).astype(np.uint32) if n else np.zeros(n_comp, np.uint32)
        scales = np.maximum(np.abs(codes).mean(axis=0) if n else np.zeros(n_comp), _MIN_SCALE).astype(np.float32)
        coded = (limits > 0) & (limits <= _MAX_MODEL_LIMIT)
        escaped = limits > _MAX_MODEL_LIMIT
        words = np.zeros(0, dtype=np.uint32)
        if coded.any():
            enc = constriction.stream.queue.RangeEncoder()
            zeros = np.zeros(n)
            for j in np.flatnonzero(coded):
                model = constriction.stream.model.QuantizedLaplace(-int(limits[j]), int(limits[j]))
                enc.encode(codes[:, j], model, zeros, np.full(n, float(scales[j])))
            words = enc.get_compressed()
        escape = zstandard.ZstdCompressor(level=self.zstd_level).compress(np.ascontiguousarray(codes[:, escaped].T).tobytes()) if escaped.any() else b""
        return limits.tobytes() + scales.tobytes() + struct.pack("<I", words.size) + words.tobytes() + escape

    @staticmethod
    def unpack(data, n_tiles, n_components):
        """Inverse of :meth:`pack`; returns codes of shape (n_tiles, n_components), int32."""
        data = bytes(data)
        head = 8 * n_components + 4
        if len(data) < head:
            raise ValueError("code section is shorter than its side information")
        limits = np.frombuffer(data, dtype=np.uint32, count=n_components)
        scales = np.frombuffer(data, dtype=np.float32, count=n_components, offset=4 * n_components)
        if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
            raise ValueError("code section has non-finite or non-positive Laplace scales")
        (n_words,) = struct.unpack("<I", data[8 * n_components:head])
        if head + 4 * n_words > len(data):
            raise ValueError("code section is truncated")
        out = np.zeros((n_tiles, n_components), dtype=np.int32)
        coded = (limits > 0) & (limits <= _MAX_MODEL_LIMIT)
        if coded.any() and n_tiles:
            dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32, count=n_words, offset=head))
            zeros = np.zeros(n_tiles)
            for j in np.flatnonzero(coded):
                model = constriction.stream.model.QuantizedLaplace(-int(limits[j]), int(limits[j]))
                out[:, j] = dec.decode(model, zeros, np.full(n_tiles, float(scales[j])))
        escaped = limits > _MAX_MODEL_LIMIT
        if escaped.any() and n_tiles:
            raw = zstandard.ZstdDecompressor().decompress(data[head + 4 * n_words:], max_output_size=4 * n_tiles * n_components + 64)
            cols = np.frombuffer(raw, dtype=np.int32)
            if cols.size != n_tiles * int(escaped.sum()):
                raise ValueError("escaped code columns do not match the side information")
            out[:, escaped] = cols.reshape(-1, n_tiles).T
        return out


class IdentityCodec(TransformCodec):
    """Value-domain quantization of residuals: :class:`TransformCodec` with the identity basis
    (no matrix products) and a zero mean. Used for the residual of autoencoder predictions.

    Parameters
    ----------
    n_features : int
    quant_step : float, default=1.0
    zstd_level : int, default=3
    """

    def __init__(self, n_features, quant_step=1.0, *, zstd_level=3):
        super().__init__(np.zeros(n_features, np.float32), np.eye(n_features, dtype=np.float32), quant_step,
                         zstd_level=zstd_level)

    def coefficients(self, tiles):
        """The tiles themselves, float32: ndarray of shape (n_tiles, n_features)."""
        return np.asarray(tiles, dtype=np.float32)

    def dequantize(self, codes):
        """``codes * quant_step``: ndarray of shape (n_tiles, n_features), float32."""
        return np.asarray(codes, dtype=np.float32) * np.float32(self.quant_step)

    def with_step(self, quant_step):
        """The same codec with another quantization step."""
        return IdentityCodec(self.n_features, quant_step, zstd_level=self.zstd_level)


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


def parse_payload(payload):
    """Split a block payload into its JSON header and named sections (see :mod:`.framing`).

    Raises
    ------
    ValueError
        If the bytes are not a stagelearn block payload.
    """
    return unpack_frame(MAGIC, payload, "block payload")


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
    unusable = ~np.all(np.isfinite(rec), axis=1) | np.any(np.abs(codes) >= _MAX_CODE, axis=1)
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
    payload = pack_frame(MAGIC, head, sections)
    reconstruction = from_tiles(rec, block.shape, tile_shape)
    return EncodedBlock(payload, reconstruction, ErrorStats.from_arrays(block, reconstruction), int(raw_index.size), raw_tiles,
                        err)


def encode_raw_block(block, *, header=None, zstd_level=3):
    """Payload of a block stored losslessly (float32, zstd), for steps sent before any encoder.

    Returns
    -------
    payload : bytes
    """
    block = np.ascontiguousarray(block, dtype=np.float32)
    head = dict(header or {}, kind="raw", block_shape=list(block.shape))
    return pack_frame(MAGIC, head, {"data": zstandard.ZstdCompressor(level=zstd_level).compress(block.tobytes())})


def payload_raw_tiles(payload):
    """The raw (exact) tiles carried by a transform-coded payload, without decoding the codes.

    Returns
    -------
    header : dict
    raw_tiles : ndarray of shape (n_raw, prod(tile_shape)), float32
    raw_index : ndarray of shape (n_raw,), int32
        Tile indices in the block's tile grid.
    """
    header, sec = parse_payload(payload)
    n_raw, d = int(header["n_raw"]), int(np.prod(header["tile_shape"]))
    dz = zstandard.ZstdDecompressor()
    raw_index = np.frombuffer(dz.decompress(bytes(sec["raw_index"]), max_output_size=4 * n_raw + 64), dtype=np.int32)
    raw_tiles = np.frombuffer(dz.decompress(bytes(sec["raw_tiles"]), max_output_size=4 * n_raw * d + 64), dtype=np.float32)
    if raw_index.size != n_raw or raw_tiles.size != n_raw * d or (n_raw and raw_index.max() >= header["n_tiles"]):
        raise ValueError("payload raw-tile sections do not match the header")
    return header, raw_tiles.reshape(n_raw, d), raw_index


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
        try:
            shape = [int(n) for n in header["block_shape"]]
            data = zstandard.ZstdDecompressor().decompress(bytes(sec["data"]), max_output_size=4 * int(np.prod(shape)) + 64)
        except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
            raise ValueError(f"malformed raw payload: {exc!r}") from None
        if len(data) != 4 * int(np.prod(shape)):
            raise ValueError(f"raw payload holds {len(data)} bytes, expected float32 block {shape}")
        return np.frombuffer(data, dtype=np.float32).reshape(shape).copy(), header, np.zeros((0, 0), np.float32)
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
    codes = TransformCodec.unpack(sec["codes"], int(keep.sum()), k)
    tiles[keep] += res_codec.dequantize(codes)
    n_corr = int(header.get("n_corrected", 0))
    if n_corr:
        index = np.frombuffer(dz.decompress(bytes(sec["corrected_index"]), max_output_size=4 * n_corr + 64), dtype=np.int32)
        if index.size != n_corr or index.max() >= n_tiles or index.min() < 0 or np.unique(index).size != n_corr:
            raise ValueError("payload correction index does not match its header")
        tiles[index] += decode_residuals(sec["corrections"], n_corr, d)
    tiles[raw_index] = raw_tiles
    return tiles, raw_tiles
