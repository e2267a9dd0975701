"""The stream codec's block payload: a compact binary envelope around one coded frame.

Layout (varints are unsigned LEB128, ``z`` marks zigzag-coded signed values)::

    b"SLS1" | varint format version | varint kind | varint len(H) | H | body

``H``: ``z step``, ``ref_step + 1`` (0: coded on its own), ``z rank``, ``encoder_version``,
``ndim``, the global ``shape``, ``start`` and ``count`` (ndim varints each), then the variable
name (varint length, UTF-8). ``kind`` 0: ``body`` is a stream-codec frame
(:mod:`stagelearn.analytics.stream_codec.frame_header`, magic ``SLC1``, its own version and the CRC-32 of
the producer's reconstruction); kind 1: ``body`` is the block stored exactly (varint dtype code,
then zstd of its little-endian values). About 15-25 bytes of envelope per block where the JSON
header of the PCA codec's ``SLP1`` payload takes ~150.

A payload of another format (``SLP1`` of the PCA/autoencoder codec, a newer format version,
foreign bytes) raises :class:`StreamPayloadError` naming what it found, never decodes to
something slightly off.
"""

from __future__ import annotations

import numpy as np

from .stream_codec import StreamFormatError
from .stream_codec.varint import read_varint, unzigzag, write_varint, zigzag

MAGIC = b"SLS1"
VERSION = 1
KIND_CODED, KIND_EXACT = 0, 1
_OTHER_MAGICS = {b"SLP1": "the PCA/autoencoder codec's block payload (decode it with analytics.codec.decode_block)",
                 b"SLC1": "a bare stream-codec frame without the block envelope (analytics.stream_codec.decode_frame)"}


class StreamPayloadError(StreamFormatError):
    """Bytes that are not a stream-codec block payload of a version this code reads, or are corrupt."""


def is_stream_payload(buf):
    """True when ``buf`` (bytes or uint8 ndarray) starts with this format's magic."""
    return bytes(memoryview(buf)[:4]) == MAGIC if len(buf) >= 4 else False


def pack_stream_payload(header, kind, body):
    """One block's payload.

    Parameters
    ----------
    header : dict
        ``step``, ``rank``, ``encoder_version`` (ints), ``ref_step`` (int or None), ``shape``,
        ``start``, ``count`` (lists of ndim ints) and ``variable`` (str).
    kind : {KIND_CODED, KIND_EXACT}
    body : bytes

    Returns
    -------
    payload : bytes
    """
    h = bytearray()
    ref = header.get("ref_step")
    shape, start, count = (list(header[k]) for k in ("shape", "start", "count"))
    if not len(shape) == len(start) == len(count):
        raise ValueError(f"stream payload: shape {shape}, start {start} and count {count} differ in length")
    for v in (zigzag(int(header["step"])), 0 if ref is None else int(ref) + 1, zigzag(int(header["rank"])),
              int(header["encoder_version"]), len(shape), *shape, *start, *count):
        write_varint(h, v)
    name = str(header.get("variable", "")).encode()
    write_varint(h, len(name))
    h += name
    out = bytearray(MAGIC)
    for v in (VERSION, int(kind), len(h)):
        write_varint(out, v)
    return bytes(out + h) + bytes(body)


def parse_stream_payload(buf):
    """Split a payload into its header, kind and body.

    Returns
    -------
    header : dict
        The fields of :func:`pack_stream_payload` plus ``block_shape`` (= ``count``), ``n_inter``
        (1 when predicted from ``ref_step``, else 0; what ``output_reader`` follows) and ``kind``
        (``"stream"`` or ``"exact"``).
    kind : int
    body : bytes

    Raises
    ------
    StreamPayloadError
        On another magic (named), another format version, or truncated bytes.
    """
    buf = np.ascontiguousarray(buf, dtype=np.uint8).tobytes() if isinstance(buf, np.ndarray) else bytes(buf)
    magic = buf[:4]
    if magic != MAGIC:
        what = _OTHER_MAGICS.get(magic, "not a stagelearn payload")
        raise StreamPayloadError(f"not a stream-codec block payload: magic {magic!r} ({what}); expected {MAGIC!r}")
    try:
        version, p = read_varint(buf, 4)
        if version != VERSION:
            raise StreamPayloadError(f"stream-codec block payload format version {version}; this stagelearn reads "
                                     f"version {VERSION} (upgrade stagelearn to decode newer files)")
        kind, p = read_varint(buf, p)
        n, p = read_varint(buf, p)
        if kind not in (KIND_CODED, KIND_EXACT) or p + n > len(buf):
            raise StreamPayloadError(f"stream-codec block payload: kind {kind}, header of {n} bytes in "
                                     f"{len(buf)} (corrupt or truncated)")
        h, body, q = buf[p:p + n], buf[p + n:], 0
        vals = []
        for _ in range(5):
            v, q = read_varint(h, q)
            vals.append(v)
        step, ref, rank, version_enc, ndim = vals
        axes = []
        for _ in range(3 * ndim):
            v, q = read_varint(h, q)
            axes.append(v)
        ln, q = read_varint(h, q)
        if q + ln != len(h):
            raise StreamPayloadError("stream-codec block payload: header length does not match its fields (corrupt)")
        name = h[q:q + ln].decode()
    except (IndexError, UnicodeDecodeError) as exc:
        raise StreamPayloadError(f"stream-codec block payload is truncated or corrupt ({exc})") from None
    count = axes[2 * ndim:]
    header = {"step": unzigzag(step), "ref_step": None if ref == 0 else ref - 1, "rank": unzigzag(rank),
              "encoder_version": version_enc, "shape": axes[:ndim], "start": axes[ndim:2 * ndim], "count": count,
              "block_shape": count, "variable": name, "n_inter": int(ref != 0),
              "kind": "stream" if kind == KIND_CODED else "exact"}
    return header, kind, body
