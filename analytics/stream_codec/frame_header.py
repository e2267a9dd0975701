"""The stream codec's payload header: what a decoder needs besides the codes, written and read.

Payload::

    b"SLC1" | varint 2 len(H) + z | H | body

``H`` is the header, compressed when that is smaller (``z`` = 1: zstd, versions 4 and 5 without
zstd's 4-byte frame magic); ``body`` is the entropy-coded codes (rANS words, uint16 little endian,
versions 1, 3, 4 and 6; the adaptive coder's bytes, versions 2, 5 and 7). Versions 1-3 keep their
layout and their reader (:func:`_read_v3`); :data:`VERSION` (4, static rANS) and
:data:`VERSION_ADAPTIVE` (5) are written for a frame coded in its own axis order, 6 and 7 (the same
plus the axis order, :data:`AXIS_ORDER_VERSIONS`) for a frame coded transposed (:mod:`.axis_order`).

Header of versions 4-7 (varints unless noted)::

    version | flags | ndim | shape... | order... (versions 6, 7: ndim axes, a permutation) | step (float32)
    | alpha, beta (2 float32)                       if flags & FLAG_FACTORS (not 1.5, 4.0)
    | weights (3 zigzag varints per fitted level)   if flags & FLAG_TEMPORAL
    | radius                                        if flags & FLAG_RADIUS (not RADIUS)
    | n_body | n_outliers                           (n_outliers only if flags & FLAG_OUTLIERS)
    | outliers (raw, the frame's dtype) | CRC-32 of the reconstruction (uint32) | tables (version 4)

The number of levels follows from the shape in the kernels' axis order (``shape[order[k]]``).
Weights travel in units of ``2^-16``, per fitted level (:func:`fitted_levels`, of that shape) from
the coarsest to the finest, as ``w0 + w1 + w2 - 1`` (the blend's DC
gain, ~0), ``w1 + w2`` (~0) and ``w1`` minus the next coarser fitted level's ``w1`` (the coarsest
level: minus 1): the same integers as version 3's ``(w0, w1, w2)``, in 5-7 bytes a level instead
of 8-9 (heat2d and Allen-Cahn, 32 frames at 40 and 60 dB). Version 4's tables are
:mod:`.entropy_coding`'s with ``compact=True`` (a bit stream, :mod:`.histogram_coding`).

Header of versions 1-3: version, flags, ndim, shape, levels, step, alpha, beta (3 float32), the
weights as zigzag varints ``(w0, w1, w2)`` per fitted level (finest first), radius, n_body,
n_outliers, outliers, CRC-32, tables (versions 1, 3).
"""

from __future__ import annotations

import functools
import math
import struct
import threading

import numpy as np
import zstandard

from .axis_order import kernel_shape
from .entropy_coding import MIN_SEGMENT
from .interpolation import as_3d_shape, level_counts, n_levels
from .varint import read_varint, unzigzag, write_varint, zigzag

MAGIC = b"SLC1"
VERSION = 4  # static rANS, compact header and histograms
VERSION_ADAPTIVE = 5  # context-adaptive binary coder (no tables), compact header
#: versions 4 and 5 with the kernels' axis order in the header (a frame coded transposed, :mod:`.axis_order`)
AXIS_ORDER_VERSIONS = {VERSION: 6, VERSION_ADAPTIVE: 7}
ADAPTIVE_VERSIONS = (2, VERSION_ADAPTIVE, AXIS_ORDER_VERSIONS[VERSION_ADAPTIVE])  # 1, 3, 4, 6: static rANS
READ_VERSIONS = (1, 2, 3, VERSION, VERSION_ADAPTIVE, *AXIS_ORDER_VERSIONS.values())
RADIUS = 32767
MAX_RADIUS = (1 << 31) - 2  # the outlier code radius + 1 must fit in int32
ALPHA, BETA = 1.5, 4.0  # default level factors (:func:`level_steps`)
#: values per frame a decoder accepts (2^34: 128 GiB of float64); a header declaring more is corrupt
MAX_VALUES = 2 ** 34
FLAG_TEMPORAL, FLAG_F64, FLAG_FACTORS, FLAG_RADIUS, FLAG_OUTLIERS = 1, 2, 4, 8, 16
# blend weights travel as integers / 2^16 (with units of 1/256 the blend's DC gain is off enough to cost 30 % at 60 dB)
WEIGHT_SCALE, WEIGHT_MAX = 1 << 16, 1 << 24
_ZSTD_MAGIC = b"\x28\xb5\x2f\xfd"


class StreamFormatError(ValueError):
    """A payload that is not a stream-codec frame, or is corrupt, or needs another previous frame."""


# zstd contexts cost 20-35 us to create (much of a small frame's decode) and are not thread safe: one per thread
_ZSTD = threading.local()


def _compressor(level, magicless):
    """This thread's zstd compressor at ``level`` (created once; a one-shot ``compress`` resets it)."""
    cache = _ZSTD.__dict__.setdefault("c", {})
    if (level, magicless) not in cache:
        fmt = zstandard.FORMAT_ZSTD1_MAGICLESS if magicless else zstandard.FORMAT_ZSTD1
        params = zstandard.ZstdCompressionParameters.from_level(level, format=fmt, write_content_size=True,
                                                                write_checksum=False, write_dict_id=False)
        cache[level, magicless] = zstandard.ZstdCompressor(compression_params=params)
    return cache[level, magicless]


def _decompressor(magicless):
    """This thread's zstd decompressor (created once)."""
    cache = _ZSTD.__dict__.setdefault("d", {})
    if magicless not in cache:
        cache[magicless] = zstandard.ZstdDecompressor(
            format=zstandard.FORMAT_ZSTD1_MAGICLESS if magicless else zstandard.FORMAT_ZSTD1)
    return cache[magicless]


def _inflate(data, magicless):
    """The zstd frame ``data`` decompressed, streaming: a corrupt frame's declared content size (up to
    2^64) is never allocated up front, and the output stops at :func:`_header_cap` of the shape the
    header declares (zstd expands runs ~32,000:1: without a cap a 131 KB payload took 4.3 GB); a
    frame that ends early or is followed by more bytes is corrupt."""
    obj = _decompressor(magicless).decompressobj()
    out, cap, fed = bytearray(), None, 0
    while fed < len(data) and not obj.eof:
        out += obj.decompress(data[fed:fed + _INFLATE_SLICE])
        fed += _INFLATE_SLICE
        if cap is None and (len(out) >= _SHAPE_BYTES or obj.eof):
            cap = _header_cap(bytes(out[:_SHAPE_BYTES]))
        if cap is not None and len(out) > cap:
            raise StreamFormatError(f"stream codec: compressed header inflates beyond {cap} bytes (corrupt payload)")
    if not obj.eof or obj.unused_data or fed < len(data):
        raise StreamFormatError("stream codec: corrupt compressed header (corrupt payload)")
    return bytes(out)


_INFLATE_SLICE = 256  # compressed bytes per step of _inflate (at most ~8 MB of output each)
_SHAPE_BYTES = 400  # version, flags, ndim and up to 33 axes as varints fit in this many bytes


def _header_cap(prefix):
    """Most bytes a legitimate header of the shape in ``prefix`` can have: outliers (<= 8 bytes a
    value), raw code segments (4) and histograms (< 13 bits a code), plus 64 KiB."""
    try:
        _, p = read_varint(prefix, 0)  # version
        _, p = read_varint(prefix, p)  # flags
        shape, _ = _read_shape(prefix, p)
    except (IndexError, ValueError) as err:
        if isinstance(err, StreamFormatError):
            raise
        raise StreamFormatError(f"stream codec: truncated or corrupt compressed header ({err!r})") from err
    return 24 * math.prod(shape) + (1 << 16)


def default_weights(levels):
    """Integer blend weights ``(1, 1, -1) * WEIGHT_SCALE`` for every level (a new array)."""
    wq = np.empty((max(levels, 1), 3), np.int64)
    wq[:] = (WEIGHT_SCALE, WEIGHT_SCALE, -WEIGHT_SCALE)
    return wq


def spread(wq, fitted):
    """Give each level without weights of its own those of the coarsest level that has them."""
    wq = wq.copy()
    top = int(fitted.max())
    wq[top + 1:] = wq[top]
    return wq


def fitted_levels(shape3):
    """Levels (0 = finest) whose blend weights travel in the payload: those with a segment's worth of points.

    The coarser ones (few points) reuse the coarsest transmitted level's weights (:func:`spread`).
    """
    return np.asarray(_fitted_tuple(tuple(int(n) for n in shape3)), np.int64)


@functools.lru_cache(maxsize=256)
def _fitted_tuple(shape3):
    counts = level_counts(shape3)[1:][::-1]  # finest first
    return tuple(lev for lev, c in enumerate(counts) if c >= MIN_SEGMENT // 2) or (0,)


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


def write_payload(version, dtype, shape, temporal, factors, wfit, outliers, crc, n_body, tables, body, zstd_level,
                  radius=RADIUS, axis_order=None):
    """Assemble a payload: magic, header (zstd when smaller), then the entropy-coded ``body``.

    ``factors``: ``(step, alpha, beta)``; ``wfit``: integer weights of the fitted levels (finest
    first, shape ``(k, 3)``); ``crc``: CRC-32 of the reconstruction; ``axis_order``: the kernels' axis
    order (:mod:`.axis_order`; None: the given order). ``version`` 4 or 5 writes the compact header
    (6 or 7 with an ``axis_order``), 1-3 the old one (kept for tests of the old readers).
    """
    dtype = np.dtype(dtype)
    hdr = bytearray()
    compact = version >= VERSION
    if axis_order is not None:
        if version not in AXIS_ORDER_VERSIONS:
            raise ValueError(f"stream codec: an axis order needs format version 4 or 5, not {version}")
        version = AXIS_ORDER_VERSIONS[version]
    step, alpha, beta = (np.float32(v) for v in factors)
    flags = (FLAG_TEMPORAL if temporal else 0) | (FLAG_F64 if dtype == np.float64 else 0)
    if compact:
        wide = (alpha, beta) != (np.float32(ALPHA), np.float32(BETA))
        flags |= (FLAG_FACTORS if wide else 0) | (FLAG_RADIUS if radius != RADIUS else 0) | \
            (FLAG_OUTLIERS if len(outliers) else 0)
        for v in (version, flags, len(shape), *shape, *(axis_order or ())):
            write_varint(hdr, v)
        hdr += np.array([step, alpha, beta][:3 if wide else 1], "<f4").tobytes()
        if temporal:
            for v in _weight_residuals(np.asarray(wfit, np.int64).reshape(-1, 3)):
                write_varint(hdr, zigzag(int(v)))
        for v in ([radius] if radius != RADIUS else []) + [n_body] + ([len(outliers)] if len(outliers) else []):
            write_varint(hdr, v)
    else:
        for v in (version, flags, len(shape), *shape, n_levels(as_3d_shape(shape))):
            write_varint(hdr, v)
        hdr += np.array([step, alpha, beta], "<f4").tobytes()
        if temporal:
            for v in np.asarray(wfit).ravel():
                write_varint(hdr, zigzag(int(v)))
        for v in (radius, n_body, len(outliers)):
            write_varint(hdr, v)
    hdr += np.asarray(outliers).astype(dtype.newbyteorder("<")).tobytes()
    hdr += struct.pack("<I", crc)
    hdr += tables
    hz = _compressor(zstd_level, compact).compress(bytes(hdr))
    packed = len(hz) < len(hdr)
    if not packed:  # small headers do not compress: stored as they are
        hz = bytes(hdr)
    out = bytearray(MAGIC)
    write_varint(out, 2 * len(hz) + int(packed))
    out += hz
    out += body
    return bytes(out)


def _weight_residuals(wfit):
    """Version 4's integers for the fitted levels' weights (module docstring), coarsest level first."""
    out, ref = [], WEIGHT_SCALE
    for w0, w1, w2 in wfit[::-1].tolist():
        out += [w0 + w1 + w2 - WEIGHT_SCALE, w1 + w2, w1 - ref]
        ref = w1
    return out


def _weights_from_residuals(vals, k):
    """Inverse of :func:`_weight_residuals`: ``(k, 3)`` integer weights, finest level first."""
    wq, ref = np.empty((k, 3), np.int64), WEIGHT_SCALE
    for j in range(k):
        s, c, d = vals[3 * j:3 * j + 3]
        w1 = ref + d
        w2 = c - w1
        wq[k - 1 - j] = (s + WEIGHT_SCALE - w1 - w2, w1, w2)
        ref = w1
    return wq


def read_header(payload):
    """Parse a payload's header (every version; :func:`~.frame.frame_info` documents the result)."""
    payload = bytes(payload)
    if payload[:4] != MAGIC:
        raise StreamFormatError(f"not a stream-codec frame (magic {payload[:4]!r}, expected {MAGIC!r})")
    try:
        n, pos = read_varint(payload, 4)
        n, packed = n // 2, n % 2
        hdr = payload[pos:pos + n]
        if len(hdr) < n:
            raise StreamFormatError("stream codec: truncated payload header")
        words_at = pos + n
        if packed:  # versions 4-7 without zstd's magic (never a magicless frame's first bytes: a reserved bit)
            magicless = hdr[:4] != _ZSTD_MAGIC
            hdr = _inflate(hdr, magicless)
        version, p = read_varint(hdr, 0)
        if version not in READ_VERSIONS:
            raise StreamFormatError(f"stream codec: format version {version}, this decoder reads "
                                    f"{', '.join(map(str, READ_VERSIONS))}")
        compact = version >= VERSION
        if packed and magicless != compact:
            raise StreamFormatError(f"stream codec: format version {version} in a header compressed another way "
                                    "(corrupt payload)")
        info = _read_compact(hdr, p, version in AXIS_ORDER_VERSIONS.values()) if compact else _read_v3(hdr, p)
        info["version"] = version
        n_body = info.pop("_n_body")
        if version in ADAPTIVE_VERSIONS:
            words = payload[words_at:words_at + n_body]
            if len(words) != n_body:
                raise StreamFormatError(f"stream codec: truncated payload ({len(words)} of {n_body} code bytes)")
        else:
            words = np.frombuffer(payload, "<u2", n_body, words_at).astype(np.uint16)
        info["_words"] = words
    except (IndexError, struct.error, ValueError, OverflowError, MemoryError, zstandard.ZstdError) as err:
        if isinstance(err, StreamFormatError):
            raise
        raise StreamFormatError(f"stream codec: truncated or corrupt payload ({err!r})") from err
    return info


def _read_shape(hdr, p):
    ndim, p = read_varint(hdr, p)
    shape = []
    for _ in range(min(ndim, 33)):
        v, p = read_varint(hdr, p)
        shape.append(v)
    if ndim > 32 or math.prod(shape) > MAX_VALUES or 0 in shape:
        raise StreamFormatError(f"stream codec: a frame of shape {tuple(shape)} (more than {MAX_VALUES} values, "
                                "more than 32 axes or an empty axis: corrupt payload)")
    return shape, p


def _check_factors(step, alpha, beta):
    if not (math.isfinite(step) and step > 0 and 1.0 <= alpha <= 16.0 and 1.0 <= beta <= 16.0):
        raise StreamFormatError(f"stream codec: step {step!r}, level factors {alpha!r}, {beta!r} (corrupt payload)")


def _tail(hdr, p, flags, shape, levels, factors, wq, radius, n_body, n_out, axis_order=None):
    """The fields after the counts, common to every version: outliers, CRC-32, tables."""
    if radius > MAX_RADIUS:
        raise StreamFormatError(f"stream codec: code radius {radius} (at most {MAX_RADIUS}: corrupt payload)")
    steps = level_steps(factors[0], levels, factors[1], factors[2]).astype(np.float64)
    if not np.all(steps > 0):
        raise StreamFormatError(f"stream codec: step {factors[0]!r} underflows at a coarse level (corrupt payload)")
    dtype = np.dtype(np.float64 if flags & FLAG_F64 else np.float32)
    outliers = np.frombuffer(hdr, dtype.newbyteorder("<"), n_out, p).astype(dtype)
    p += n_out * dtype.itemsize
    (crc,) = struct.unpack_from("<I", hdr, p)
    p += 4
    return {"shape": tuple(shape), "dtype": dtype, "temporal": bool(flags & FLAG_TEMPORAL), "levels": levels,
            "steps": steps, "axis_order": axis_order,
            "weights": wq / WEIGHT_SCALE, "radius": radius, "n_outliers": n_out, "crc32": crc,
            "_outliers": outliers, "_tables": hdr[p:], "_n_body": n_body}


def _read_compact(hdr, p, has_axis_order):
    """Versions 4-7 (after the version varint; ``has_axis_order``: 6 and 7)."""
    flags, p = read_varint(hdr, p)
    if flags >= 2 * FLAG_OUTLIERS:
        raise StreamFormatError(f"stream codec: header flags {flags} (corrupt payload)")
    shape, p = _read_shape(hdr, p)
    axis_order = None
    if has_axis_order:
        order = []
        for _ in shape:
            v, p = read_varint(hdr, p)
            order.append(v)
        if sorted(order) != list(range(len(shape))):
            raise StreamFormatError(f"stream codec: axis order {tuple(order)} for {len(shape)} axes (corrupt payload)")
        axis_order = tuple(order)
    kshape = kernel_shape(shape, axis_order)
    levels = n_levels(as_3d_shape(kshape))
    nf = 3 if flags & FLAG_FACTORS else 1
    step, alpha, beta = [float(v) for v in np.frombuffer(hdr, "<f4", nf, p)] + [ALPHA, BETA][nf - 1:]
    p += 4 * nf
    _check_factors(step, alpha, beta)
    wq, p = _read_weights(hdr, p, flags, kshape, levels, _weights_from_residuals)
    radius = RADIUS
    if flags & FLAG_RADIUS:
        radius, p = read_varint(hdr, p)
    n_body, p = read_varint(hdr, p)
    n_out = 0
    if flags & FLAG_OUTLIERS:
        n_out, p = read_varint(hdr, p)
    return _tail(hdr, p, flags, shape, levels, (step, alpha, beta), wq, radius, n_body, n_out, axis_order)


def _read_weights(hdr, p, flags, shape, levels, to_weights):
    """The integer blend weights of every level: the default, or with temporal prediction the
    fitted levels' ``3 n`` zigzag varints turned into ``(n, 3)`` weights by ``to_weights(vals, n)``
    (each version's own layout) and spread to the coarser levels. Returns ``(wq, p)``."""
    wq = default_weights(levels)
    if flags & FLAG_TEMPORAL:
        fitted = fitted_levels(as_3d_shape(shape))
        vals = []
        for _ in range(3 * len(fitted)):
            v, p = read_varint(hdr, p)
            vals.append(unzigzag(v))
        wq[fitted] = to_weights(vals, len(fitted))
        wq = spread(wq, fitted)
    return wq, p


def _read_v3(hdr, p):
    """Versions 1-3 (after the version varint)."""
    flags, p = read_varint(hdr, p)
    shape, p = _read_shape(hdr, p)
    levels, p = read_varint(hdr, p)
    if levels != n_levels(as_3d_shape(shape)):
        raise StreamFormatError(f"stream codec: {levels} levels for shape {tuple(shape)} (corrupt payload)")
    step, alpha, beta = (float(v) for v in np.frombuffer(hdr, "<f4", 3, p))
    p += 12
    _check_factors(step, alpha, beta)
    wq, p = _read_weights(hdr, p, flags, shape, levels, lambda vals, n: np.asarray(vals, np.int64).reshape(-1, 3))
    radius, p = read_varint(hdr, p)
    n_body, p = read_varint(hdr, p)
    n_out, p = read_varint(hdr, p)
    return _tail(hdr, p, flags, shape, levels, (step, alpha, beta), wq, radius, n_body, n_out)
