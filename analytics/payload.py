"""The block payload format: one self-describing frame per block and variable.

A payload is a :mod:`.framing` frame with magic ``b"SLP1"``: a JSON header and named byte sections
(no pickle). Two kinds travel:

``kind == "raw"``
    A block stored losslessly before any encoder exists: section ``data`` (float32, zstd).
``kind == "pca"`` or ``"ae"``
    A transform-coded block (:func:`~stagelearn.analytics.codec.encode_block`). Header fields:
    ``block_shape``, ``tile_shape``, ``n_tiles``, ``n_components``, ``n_raw``, ``quant_step``,
    ``n_inter``, ``n_corrected``, ``recon_crc32`` (CRC-32 of the producer's reconstructed tiles)
    and the caller's fields (step, variable, start, ...). Sections: ``codes`` (range-coded,
    :mod:`.entropy`), ``raw_index`` (zstd int32) and ``raw_tiles`` (zstd float32), and when used
    ``inter`` (zstd packed bits), ``corrected_index`` (zstd int32) and ``corrections`` (ZFP),
    plus the model's side sections (``latents``, ``scales``) and a tile hook's sections.

This module reads and writes the format only; it decodes no codes.
"""

from __future__ import annotations

import numpy as np
import zstandard

from .framing import pack_frame, unpack_frame

MAGIC = b"SLP1"


def parse_payload(payload):
    """Split a block payload (bytes or ndarray of uint8) into its JSON header (dict) and named
    sections (dict of str to memoryview), see :mod:`.framing`; raises ValueError if the bytes are
    not a stagelearn block payload.
    """
    return unpack_frame(MAGIC, payload, "block payload")


def pack_payload(header, sections):
    """A block payload from its header and sections (inverse of :func:`parse_payload`).

    Parameters
    ----------
    header : dict
        JSON-serialisable, without the key ``"sections"``.
    sections : dict of str to bytes-like

    Returns
    -------
    payload : bytes
    """
    return pack_frame(MAGIC, header, sections)


def encode_raw_block(block, *, header=None, zstd_level=3):
    """Payload of a block stored losslessly (float32, zstd), for steps sent before any encoder.

    Parameters
    ----------
    block : ndarray
        Any shape; cast to float32.
    header : dict, optional
        Extra JSON-serialisable header fields (step, variable, start...).
    zstd_level : int, default=3

    Returns
    -------
    payload : bytes
    """
    block = np.ascontiguousarray(block, dtype=np.float32)
    head = dict(header or {}, kind="raw", block_shape=list(block.shape))
    return pack_payload(head, {"data": zstandard.ZstdCompressor(level=zstd_level).compress(block.tobytes())})


def decode_raw_block(header, sections):
    """The block of a ``kind == "raw"`` payload.

    Parameters
    ----------
    header, sections
        As returned by :func:`parse_payload`.

    Returns
    -------
    block : ndarray of shape ``header["block_shape"]``, float32

    Raises
    ------
    ValueError
        If the header or the ``data`` section is malformed or holds another number of values.
    """
    try:
        shape = [int(n) for n in header["block_shape"]]
        data = zstandard.ZstdDecompressor().decompress(bytes(sections["data"]), max_output_size=4 * int(np.prod(shape)) + 64)
    except (KeyError, TypeError, ValueError, zstandard.ZstdError) as exc:
        raise ValueError(f"malformed raw payload: {exc!r}") from None
    if len(data) != 4 * int(np.prod(shape)):
        raise ValueError(f"raw payload holds {len(data)} bytes, expected float32 block {shape}")
    return np.frombuffer(data, dtype=np.float32).reshape(shape).copy()


def payload_raw_tiles(payload, parsed=None):
    """The raw (exact) tiles carried by a transform-coded payload, without decoding the codes.

    Parameters
    ----------
    payload : bytes or ndarray of uint8
    parsed : tuple, optional
        ``parse_payload(payload)`` when the caller has it already (the payload is not parsed again).

    Returns
    -------
    header : dict
    raw_tiles : ndarray of shape (n_raw, prod(tile_shape)), float32
    raw_index : ndarray of shape (n_raw,), int32
        Tile indices in the block's tile grid.

    Raises
    ------
    ValueError
        If the payload is not a block payload or its raw-tile sections do not match its header.
    """
    header, sec = parsed if parsed is not None else parse_payload(payload)
    n_raw, d = int(header["n_raw"]), int(np.prod(header["tile_shape"]))
    dz = zstandard.ZstdDecompressor()
    raw_index = np.frombuffer(dz.decompress(bytes(sec["raw_index"]), max_output_size=4 * n_raw + 64), dtype=np.int32)
    raw_tiles = np.frombuffer(dz.decompress(bytes(sec["raw_tiles"]), max_output_size=4 * n_raw * d + 64), dtype=np.float32)
    if raw_index.size != n_raw or raw_tiles.size != n_raw * d or (n_raw and (raw_index.max() >= header["n_tiles"] or raw_index.min() < 0)):
        raise ValueError("payload raw-tile sections do not match the header")
    return header, raw_tiles.reshape(n_raw, d), raw_index
