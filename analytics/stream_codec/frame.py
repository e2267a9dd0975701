"""One frame of the stream codec: the payload format, and encode/decode at a given quantization.

Payload::

    b"SLC1" | varint len(H) | H = zstd(header) | rANS words (uint16, little endian)   (versions 1, 3)
    b"SLC1" | varint len(H) | H = zstd(header) | adaptive binary code stream (bytes)  (version 2)

``header`` (zstd-compressed when that is smaller; bit 0 of the length varint says which) holds, as
varints unless noted: format version, flags (bit 0: temporal prediction from the previous
reconstructed frame; bit 1: float64), ndim and the shape, the number of levels ``L``, the finest
step and the level factors ``alpha``, ``beta`` (3 float32; :func:`level_steps`), the blend weights
of the levels with many points (integers, units of 2^-16, zigzag varints; only with temporal
prediction; :func:`_fitted_levels`; coarser levels reuse them), the code radius, the
number of rANS words (version 2: of code-stream bytes), the outliers (count, then raw values), the
CRC-32 of the reconstruction (uint32) and (versions 1, 3) the segment histograms. The encoder
writes whichever of the two entropy codings (:mod:`.entropy_coding`'s static rANS with transmitted
histograms, version 3; :mod:`.adaptive_coding`'s context-adaptive binary coder, version 2) gives the
shorter payload; the decoder reads both. Every byte a decoder needs is in the payload except the
previous reconstructed frame.
"""

from __future__ import annotations

import functools
import math
import struct
import threading
import zlib
from dataclasses import dataclass, field

import numpy as np
import zstandard

from .adaptive_coding import decode_codes_adaptive, encode_codes_adaptive
from .entropy_coding import MIN_SEGMENT, decode_codes, encode_codes, merge_segments
from .interpolation import as_3d_shape, decode_field, encode_field, level_counts, n_levels
from .varint import read_varint, unzigzag, write_varint, zigzag

MAGIC = b"SLC1"
VERSION = 3  # static rANS, histograms in the header, up to 4 interleaved states (entropy_coding.py)
STATIC_VERSIONS = (1, VERSION)  # version 1 (one rANS state) has the layout of a one-state version 3
VERSION_ADAPTIVE = 2  # context-adaptive binary arithmetic coding, no tables
RADIUS = 32767
#: values per frame a decoder accepts (2^34: 128 GiB of float64); a header declaring more is corrupt
MAX_VALUES = 2 ** 34
_FLAG_TEMPORAL, _FLAG_F64 = 1, 2
# blend weights travel as integers / 2^16 (with units of 1/256 the blend's DC gain is off enough to cost 30 % at 60 dB)
WEIGHT_SCALE, WEIGHT_MAX = 1 << 16, 1 << 24


# zstd contexts cost 20-35 us to create (much of a small frame's decode) and are not thread safe: one per thread
_ZSTD = threading.local()


def _compressor(level):
    """This thread's zstd compressor at ``level`` (created once; a one-shot ``compress`` resets it)."""
    cache = _ZSTD.__dict__.setdefault("c", {})
    if level not in cache:
        cache[level] = zstandard.ZstdCompressor(level=level, write_content_size=True, write_checksum=False)
    return cache[level]


def _decompressor():
    """This thread's zstd decompressor (created once)."""
    d = getattr(_ZSTD, "d", None)
    if d is None:
        d = _ZSTD.d = zstandard.ZstdDecompressor()
    return d


def _default_weights(levels):
    """Integer blend weights ``(1, 1, -1) * WEIGHT_SCALE`` for every level (a new array)."""
    wq = np.empty((max(levels, 1), 3), np.int64)
    wq[:] = (WEIGHT_SCALE, WEIGHT_SCALE, -WEIGHT_SCALE)
    return wq


def _spread(wq, fitted):
    """Give each level without weights of its own those of the coarsest level that has them."""
    wq = wq.copy()
    top = int(fitted.max())
    wq[top + 1:] = wq[top]
    return wq


def _fitted_levels(shape3):
    """Levels (0 = finest) whose blend weights travel in the payload: those with a segment's worth of points.

    The coarser ones (few points) reuse the coarsest transmitted level's weights (:func:`_spread`).
    """
    return np.asarray(_fitted_tuple(tuple(int(n) for n in shape3)), np.int64)


@functools.lru_cache(maxsize=256)
def _fitted_tuple(shape3):
    counts = level_counts(shape3)[1:][::-1]  # finest first
    return tuple(lev for lev, c in enumerate(counts) if c >= MIN_SEGMENT // 2) or (0,)


class StreamFormatError(ValueError):
    """A payload that is not a stream-codec frame, or is corrupt, or needs another previous frame."""


@dataclass
class EncodedFrame:
    """What :func:`encode_frame` returns.

    Attributes
    ----------
    payload : bytes
        Everything the decoder needs besides the previous reconstructed frame.
    reconstruction : ndarray
        The producer's closed-loop reconstruction, shape and dtype of the input; any decoder
        reproduces it bit for bit.
    stats : ndarray of float64, shape (L, 13)
        Least-squares statistics of the blend (zeros without temporal prediction).
    n_outliers : int
    sse : float
        Sum of squared errors of the reconstruction against the input.
    """

    payload: bytes  # None until finish_frame for encode_frame(..., payload=False)
    reconstruction: np.ndarray
    stats: np.ndarray
    n_outliers: int
    sse: float
    _pending: tuple = field(default=None, repr=False)  # what finish_frame codes (payload=False)


def level_steps(step, levels, alpha, beta):
    """Quantization step per level: ``step / min(alpha^l, beta)`` (``l = 0`` finest), anchor last.

    Coarse levels are predicted from fewer, farther points and their errors propagate to every
    finer prediction, so they get finer steps (QoZ's level-wise error bounds). ``step``, ``alpha``
    and ``beta`` are first rounded to float32 (the payload stores them); the rest is IEEE
    multiplication and division in float64, rounded to float32: the same values on every machine.
    """
    step, alpha, beta = (float(np.float32(v)) for v in (step, alpha, beta))
    return np.array(_level_steps(step, int(levels), alpha, beta), dtype=np.float32)


@functools.lru_cache(maxsize=64)
def _level_steps(step, levels, alpha, beta):
    """:func:`level_steps` in float64 (the caller rounds each to float32), once per frame's arguments."""
    out = []
    f = 1.0
    for lev in range(levels + 1):
        out.append(step / min(f, beta))
        f *= alpha
    if levels >= 1:
        out[levels] = out[levels - 1]
    return tuple(out)


def encode_frame(x, step, *, prev=None, weights=None, eb_abs=0.0, alpha=1.5, beta=4.0, zstd_level=3,
                 adaptive=False, payload=True):
    """Encode one frame at quantization step ``step`` (closed loop).

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    step : float
        Finest-level quantization step (> 0); the pointwise error of non-outliers is ``<= step / 2``
        plus one rounding to the dtype.
    prev : ndarray or None
        The previous frame's reconstruction (same shape and dtype): temporal prediction.
    weights : ndarray, shape (L, 3), optional
        Blend weights per level (default ``(1, 1, -1)``: interpolate the temporal difference).
    eb_abs : float
        Pointwise absolute bound enforced on every value (0: none); values that miss it are stored exactly.
    alpha, beta : float
        Level-wise steps (:func:`level_steps`).
    payload : bool
        False: quantize only (``reconstruction``, ``stats``, ``sse``; ``payload`` None): a rate
        control's trial pass; :func:`finish_frame` then entropy-codes the pass it keeps.
    adaptive : bool
        Also try the context-adaptive binary coder (:mod:`.adaptive_coding`) and keep the shorter
        payload (False: static rANS only, format version 3).

    Returns
    -------
    EncodedFrame

    Raises
    ------
    ValueError
        On a bad dtype, step or a ``prev`` of another shape or dtype.
    """
    x = np.ascontiguousarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"stream codec: dtype {x.dtype} (float32 or float64 expected)")
    if not (step > 0 and np.isfinite(step) and np.float32(step) > 0):
        raise ValueError(f"stream codec: quantization step must be positive and finite, got {step}")
    shape3 = as_3d_shape(x.shape)
    levels = n_levels(shape3)
    x3 = x.reshape(shape3)
    prev3 = None
    if prev is not None:
        prev = np.ascontiguousarray(prev)
        if prev.shape != x.shape or prev.dtype != x.dtype:
            raise ValueError(f"stream codec: previous frame {prev.shape} {prev.dtype} does not match "
                             f"{x.shape} {x.dtype}")
        prev3 = prev.reshape(shape3)
    qlev = level_steps(float(step), levels, alpha, beta)
    fitted = _fitted_levels(shape3)
    wq = _default_weights(levels)
    if weights is not None and prev is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(max(levels, 1), 3)
        wq[fitted] = np.clip(np.round(w[fitted] * WEIGHT_SCALE), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
        wq = _spread(wq, fitted)
    codes, outliers, rec3, stats, sse = encode_field(x3, prev3, qlev.astype(np.float64), wq / WEIGHT_SCALE,
                                                     eb_abs=eb_abs, radius=RADIUS)
    frame = EncodedFrame(None, rec3.reshape(x.shape), stats, len(outliers), float(sse))
    frame._pending = (x, prev3, shape3, levels, qlev, wq[fitted], codes, outliers, (step, alpha, beta), zstd_level,
                      adaptive)
    return finish_frame(frame) if payload else frame


def finish_frame(frame):
    """Entropy-code a frame quantized with ``encode_frame(..., payload=False)`` (sets and returns it).

    The payload is the one ``encode_frame`` with ``payload=True`` writes for the same arguments."""
    if frame.payload is not None:
        return frame
    x, prev3, shape3, levels, qlev, wfit, codes, outliers, factors, zstd_level, adaptive = frame._pending
    rec = frame.reconstruction
    sizes = merge_segments(level_counts(shape3))
    tables, words = encode_codes(codes, sizes)
    static = _payload(VERSION, x, prev3 is not None, levels, factors, wfit, outliers, rec,
                      len(words), tables, np.asarray(words, dtype="<u2").tobytes(), zstd_level)
    out = static
    if adaptive:
        stream = encode_codes_adaptive(codes, shape3, prev3, qlev.astype(np.float64))
        if len(stream) < len(static):
            alt = _payload(VERSION_ADAPTIVE, x, prev3 is not None, levels, factors, wfit, outliers,
                           rec, len(stream), b"", stream, zstd_level)
            if len(alt) < len(static):
                out = alt
    frame.payload, frame._pending = out, None
    return frame


def _payload(version, x, temporal, levels, factors, wfit, outliers, rec, n_body, tables, body, zstd_level):
    """Assemble a payload: magic, header (zstd when smaller), then the entropy-coded body."""
    hdr = bytearray()
    flags = (_FLAG_TEMPORAL if temporal else 0) | (_FLAG_F64 if x.dtype == np.float64 else 0)
    for v in (version, flags, x.ndim, *x.shape, levels):
        write_varint(hdr, v)
    hdr += np.array(factors, "<f4").tobytes()
    if temporal:
        for v in wfit.ravel():
            write_varint(hdr, zigzag(int(v)))
    for v in (RADIUS, n_body, len(outliers)):
        write_varint(hdr, v)
    hdr += outliers.astype(x.dtype.newbyteorder("<")).tobytes()
    hdr += struct.pack("<I", zlib.crc32(memoryview(np.ascontiguousarray(rec)).cast("B")))
    hdr += tables
    hz = _compressor(zstd_level).compress(bytes(hdr))
    packed = len(hz) < len(hdr)
    if not packed:  # small headers do not compress: stored as they are
        hz = bytes(hdr)
    out = bytearray(MAGIC)
    write_varint(out, 2 * len(hz) + int(packed))
    out += hz
    out += body
    return bytes(out)


def frame_info(payload):
    """Parse a payload's header.

    Returns
    -------
    info : dict
        ``shape``, ``dtype``, ``temporal`` (bool), ``levels``, ``steps``, ``weights``, ``crc32``, ``version``,
        ``n_outliers`` and the private fields :func:`decode_frame` needs.

    Raises
    ------
    StreamFormatError
        On a wrong magic or a truncated or corrupt payload.
    """
    payload = bytes(payload)
    if payload[:4] != MAGIC:
        raise StreamFormatError(f"not a stream-codec frame (magic {payload[:4]!r}, expected {MAGIC!r})")
    try:
        n, pos = read_varint(payload, 4)
        n, packed = n // 2, n % 2
        hdr = payload[pos:pos + n]
        if len(hdr) < n:
            raise StreamFormatError("stream codec: truncated payload header")
        if packed:
            hdr = _decompressor().decompress(hdr, max_output_size=1 << 31)
        words_at = pos + n
        vals, p = [], 0
        for _ in range(3):
            v, p = read_varint(hdr, p)
            vals.append(v)
        version, flags, ndim = vals
        if version not in STATIC_VERSIONS + (VERSION_ADAPTIVE,):
            raise StreamFormatError(f"stream codec: format version {version}, this decoder reads 1, "
                                    f"{VERSION_ADAPTIVE} and {VERSION}")
        shape = []
        for _ in range(ndim):
            v, p = read_varint(hdr, p)
            shape.append(v)
        if ndim > 32 or math.prod(shape) > MAX_VALUES:
            raise StreamFormatError(f"stream codec: a frame of shape {tuple(shape)} (more than {MAX_VALUES} values "
                                    "or 32 axes: corrupt payload)")
        levels, p = read_varint(hdr, p)
        if levels != n_levels(as_3d_shape(shape)):
            raise StreamFormatError(f"stream codec: {levels} levels for shape {tuple(shape)} (corrupt payload)")
        step, alpha, beta = (float(v) for v in np.frombuffer(hdr, "<f4", 3, p))
        p += 12
        if not (math.isfinite(step) and step > 0 and 1.0 <= alpha <= 16.0 and 1.0 <= beta <= 16.0):
            raise StreamFormatError(f"stream codec: step {step!r}, level factors {alpha!r}, {beta!r} (corrupt payload)")
        steps = level_steps(step, levels, alpha, beta).astype(np.float64)
        temporal = bool(flags & _FLAG_TEMPORAL)
        wq = _default_weights(levels)
        if temporal:
            fitted = _fitted_levels(as_3d_shape(shape))
            vals = []
            for _ in range(3 * len(fitted)):
                v, p = read_varint(hdr, p)
                vals.append(unzigzag(v))
            wq[fitted] = np.asarray(vals, np.int64).reshape(-1, 3)
            wq = _spread(wq, fitted)
        weights = wq / WEIGHT_SCALE
        radius, p = read_varint(hdr, p)
        n_words, p = read_varint(hdr, p)
        n_out, p = read_varint(hdr, p)
        dtype = np.dtype(np.float64 if flags & _FLAG_F64 else np.float32)
        outliers = np.frombuffer(hdr, dtype.newbyteorder("<"), n_out, p).astype(dtype)
        p += n_out * dtype.itemsize
        (crc,) = struct.unpack_from("<I", hdr, p)
        p += 4
        if version == VERSION_ADAPTIVE:
            words = payload[words_at:words_at + n_words]
            if len(words) != n_words:
                raise StreamFormatError(f"stream codec: truncated payload ({len(words)} of {n_words} code bytes)")
        else:
            words = np.frombuffer(payload, "<u2", n_words, words_at).astype(np.uint16)
    except (IndexError, struct.error, ValueError, OverflowError, zstandard.ZstdError) as err:
        if isinstance(err, StreamFormatError):
            raise
        raise StreamFormatError(f"stream codec: truncated or corrupt payload ({err!r})") from err
    return {"shape": tuple(shape), "dtype": dtype, "temporal": temporal, "levels": levels, "steps": steps,
            "weights": weights, "radius": radius, "n_outliers": n_out, "crc32": crc, "_outliers": outliers,
            "_tables": hdr[p:], "_words": words, "version": version}


def decode_frame(payload, prev=None, *, verify=True):
    """Decode one frame.

    Parameters
    ----------
    payload : bytes
    prev : ndarray or None
        The previous reconstructed frame; required when the frame was encoded with temporal prediction.
    verify : bool
        Check the reconstruction's CRC-32 against the producer's.

    Returns
    -------
    rec : ndarray
        Bit for bit the producer's reconstruction.

    Raises
    ------
    StreamFormatError
        On a corrupt payload, a missing or mismatched ``prev``, or a CRC mismatch.
    """
    info = frame_info(payload)
    shape3 = as_3d_shape(info["shape"])
    prev3 = None
    if info["temporal"]:
        if prev is None:
            raise StreamFormatError("stream codec: this frame is predicted from the previous step's reconstruction; "
                                    "pass prev=")
        prev = np.ascontiguousarray(prev)
        if prev.shape != info["shape"] or prev.dtype != info["dtype"]:
            raise StreamFormatError(f"stream codec: previous frame {prev.shape} {prev.dtype} does not match "
                                    f"{info['shape']} {info['dtype']}")
        prev3 = prev.reshape(shape3)
    sizes = merge_segments(level_counts(shape3))
    try:
        if info["version"] == VERSION_ADAPTIVE:
            codes = decode_codes_adaptive(info["_words"], shape3, prev3, info["steps"])
        else:
            codes, _ = decode_codes(info["_tables"], info["_words"], sizes)
        rec = decode_field(codes, info["_outliers"], shape3, info["dtype"], prev3, info["steps"], info["weights"],
                           radius=info["radius"])
    except (IndexError, ValueError, OverflowError, ZeroDivisionError, MemoryError) as err:
        raise StreamFormatError(f"stream codec: corrupt payload ({err!r})") from err
    rec = rec.reshape(info["shape"])
    if verify and zlib.crc32(memoryview(np.ascontiguousarray(rec)).cast("B")) != info["crc32"]:
        raise StreamFormatError("stream codec: decoded frame differs from the producer's reconstruction (CRC-32); "
                                "wrong previous frame?")
    return rec
