"""Entropy coding of integer code matrices: a per-column Laplace model and a range coder.

Each column ``j`` of an ``(n, k)`` matrix of integer codes gets a zero-mean quantized Laplace
model on ``[-limit_j, limit_j]`` whose scale is the maximum-likelihood estimate
``mean(|codes[:, j]|)``; limits and scales travel as side information. Coding uses
``constriction``'s range coder (Bamler, "Understanding entropy coding with asymmetric numeral
systems (ANS): a statistician's perspective", 2022). Columns whose limit exceeds
:data:`MAX_MODEL_LIMIT` (values far outside what the model has seen) are stored as zstd-compressed
int32 instead.

Layout: ``uint32 limits[k]``, ``float32 scales[k]``, ``uint32 n_words``, the range-coder words,
then the zstd section of escaped columns.
"""

from __future__ import annotations

import struct

import constriction
import numpy as np
import zstandard

MIN_SCALE = 0.05  #: Laplace scale floor (in quantization steps) for near-zero coefficients
MAX_MODEL_LIMIT = 4095  #: larger code magnitudes in a column: that column is stored as zstd int32


def pack_codes(codes, *, zstd_level=3):
    """Entropy-code a matrix of integer codes.

    Parameters
    ----------
    codes : ndarray of shape (n, k), integer
        Cast to int32.
    zstd_level : int, default=3
        zstd level of the escaped columns.

    Returns
    -------
    data : bytes
        See the module docstring for the layout.
    """
    codes = np.asarray(codes, dtype=np.int32)
    n, n_comp = codes.shape
    limits = np.abs(codes).max(axis=0).astype(np.uint32) if n else np.zeros(n_comp, np.uint32)
    scales = np.maximum(np.abs(codes).mean(axis=0) if n else np.zeros(n_comp), MIN_SCALE).astype(np.float32)
    coded = (limits > 0) & (limits <= MAX_MODEL_LIMIT)
    escaped = limits > MAX_MODEL_LIMIT
    words = np.zeros(0, dtype=np.uint32)
    if coded.any():
        enc = constriction.stream.queue.RangeEncoder()
        zeros = np.zeros(n)
        for j in np.flatnonzero(coded):
            model = constriction.stream.model.QuantizedLaplace(-int(limits[j]), int(limits[j]))
            enc.encode(codes[:, j], model, zeros, np.full(n, float(scales[j])))
        words = enc.get_compressed()
    escape = b""
    if escaped.any():
        escape = zstandard.ZstdCompressor(level=zstd_level).compress(np.ascontiguousarray(codes[:, escaped].T).tobytes())
    return limits.tobytes() + scales.tobytes() + struct.pack("<I", words.size) + words.tobytes() + escape


def unpack_codes(data, n, k):
    """Inverse of :func:`pack_codes`.

    Parameters
    ----------
    data : bytes-like
    n, k : int
        Rows and columns of the code matrix.

    Returns
    -------
    codes : ndarray of shape (n, k), int32

    Raises
    ------
    ValueError
        If the section is truncated, its scales are not finite and positive, or its escaped
        columns do not match the side information.
    """
    data = bytes(data)
    head = 8 * k + 4
    if len(data) < head:
        raise ValueError("code section is shorter than its side information")
    limits = np.frombuffer(data, dtype=np.uint32, count=k)
    scales = np.frombuffer(data, dtype=np.float32, count=k, offset=4 * k)
    if not (np.all(np.isfinite(scales)) and np.all(scales > 0)):
        raise ValueError("code section has non-finite or non-positive Laplace scales")
    (n_words,) = struct.unpack("<I", data[8 * k:head])
    if head + 4 * n_words > len(data):
        raise ValueError("code section is truncated")
    out = np.zeros((n, k), dtype=np.int32)
    coded = (limits > 0) & (limits <= MAX_MODEL_LIMIT)
    if coded.any() and n:
        dec = constriction.stream.queue.RangeDecoder(np.frombuffer(data, dtype=np.uint32, count=n_words, offset=head))
        zeros = np.zeros(n)
        for j in np.flatnonzero(coded):
            model = constriction.stream.model.QuantizedLaplace(-int(limits[j]), int(limits[j]))
            out[:, j] = dec.decode(model, zeros, np.full(n, float(scales[j])))
    escaped = limits > MAX_MODEL_LIMIT
    if escaped.any() and n:
        raw = zstandard.ZstdDecompressor().decompress(data[head + 4 * n_words:], max_output_size=4 * n * k + 64)
        cols = np.frombuffer(raw, dtype=np.int32)
        if cols.size != n * int(escaped.sum()):
            raise ValueError("escaped code columns do not match the side information")
        out[:, escaped] = cols.reshape(-1, n).T
    return out
