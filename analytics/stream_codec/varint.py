"""Varints and histograms: the integer serialisation of the stream codec's headers.

Unsigned LEB128 varints (7 bits a byte, high bit set on all but the last), zigzag for signed
values, and sparse histograms as ``number of nonzero bins`` then ``(zero run, count)`` pairs.
"""

from __future__ import annotations

import numpy as np
from numba import njit


def write_varint(out, v):
    """Append ``v >= 0`` to the bytearray ``out`` as a varint."""
    v = int(v)
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)


def read_varint(buf, pos):
    """The varint at ``buf[pos:]`` and the position after it (IndexError when truncated)."""
    b = buf[pos]
    if b < 0x80:  # one byte: most header fields (a frame's header reads about 16)
        return b, pos + 1
    shift = v = 0
    while True:
        b = buf[pos]
        pos += 1
        v |= (b & 0x7F) << shift
        if b < 0x80:
            return v, pos
        shift += 7


def zigzag(v):
    """Signed to unsigned: 0, -1, 1, -2... to 0, 1, 2, 3..."""
    return 2 * v if v >= 0 else -2 * v - 1


def unzigzag(u):
    """Inverse of :func:`zigzag`."""
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


MAX_COUNT = 1 << 40  # larger histogram counts are corrupt (sums of a segment's counts stay far from overflow)


@njit(cache=True)
def parse_histograms(buf, pos, n_bins, n_hist, counts):
    """Read ``n_hist`` histograms of ``n_bins`` bins written by :func:`histogram_varints` into ``counts``.

    Returns the new position, or -1 on a corrupt or truncated buffer (a bin past ``n_bins`` or a
    count above ``MAX_COUNT``).
    """
    for h in range(n_hist):
        i = -1
        n_nz = -1
        k = 0
        while n_nz != 0:
            v = 0
            shift = 0
            while True:
                if pos >= buf.size or shift > 56:
                    return -1
                b = np.int64(buf[pos])
                pos += 1
                v |= (b & 0x7F) << shift
                if b < 0x80:
                    break
                shift += 7
            if n_nz < 0:
                n_nz = v
                if n_nz == 0:
                    break
                continue
            if k % 2 == 0:
                if v >= n_bins:  # checked before the addition: no overflow on a corrupt run length
                    return -1
                i += v + 1
                if i >= n_bins:
                    return -1
            else:
                if v > MAX_COUNT:
                    return -1
                counts[h, i] = v
                n_nz -= 1
            k += 1
    return pos


@njit(cache=True, inline="always")
def _put_varint(out, n, v):
    """Write ``v >= 0`` as a varint at ``out[n:]``; returns the new length."""
    while v >= 0x80:
        out[n] = (v & 0x7F) | 0x80
        n += 1
        v >>= 7
    out[n] = v
    return n + 1


@njit(cache=True)
def histogram_varints(counts, out):
    """Write ``counts``' nonzero bins as varints (number, then zero run and count per bin); returns bytes written."""
    nz = 0
    for i in range(counts.size):
        if counts[i] != 0:
            nz += 1
    n = _put_varint(out, 0, nz)
    last = -1
    for i in range(counts.size):
        if counts[i] != 0:
            n = _put_varint(out, n, i - last - 1)
            n = _put_varint(out, n, counts[i])
            last = i
    return n


@njit(cache=True)
def histograms_varints(hist):
    """:func:`histogram_varints` of each row of ``hist``, concatenated (uint8 array)."""
    buf = np.empty(hist.shape[0] * (20 * hist.shape[1] + 10), np.uint8)
    n = 0
    for c in range(hist.shape[0]):
        n += histogram_varints(hist[c], buf[n:])
    return buf[:n]
