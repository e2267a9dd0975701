"""Tables of payload format 4 as a bit stream: segment headers and histograms (Exp-Golomb codes; numba).

Format 1-3 wrote each histogram as byte varints (:func:`.varint.histogram_varints`): a count of 3
cost a byte, and on a small frame the tables were a third of the payload. Here every histogram row
(one per context of a segment) is written, MSB first, in whichever of two forms is shorter:

- *dense* (bit 0): ``EG0(a)``, ``EG0(b - a)`` (``a``, ``b``: first and last nonzero bin), the order
  ``k`` (5 bits), then ``EGk(count)`` of every bin from ``a`` to ``b``, zeros included;
- *sparse* (bit 1): ``EG0(nnz)``, orders ``kr`` and ``kc`` (5 bits each), then per nonzero bin
  ``EGkr(zero run before it)`` and ``EGkc(count - 1)``; an empty row is ``nnz = 0``.

``EGk(v)`` is the Exp-Golomb code of order ``k`` (``v + 2^k`` in binary after as many zeros as it
has bits past ``k + 1``); each order is the one that gives the fewest bits for that row. The first
row's largest count (its first maximum: the near-zero code) is not written, the decoder gets it
from the segment's size; its position follows the row's header (``EG0`` of its offset from ``a``,
dense, or of its index among the nonzero bins, sparse). The first row is never empty (a segment's
first code is in context 0).

The segment headers come first in the same stream (:func:`write_segment_heads`: one bit for 4
interleaved rANS states, then per segment its kind in 2 bits, ``EG0`` of its zigzagged lowest code
and ``EG0(bins - 2)``), then every segment's histograms; the stream ends on a byte boundary.
Measured on 32 frames of heat2d at 40 dB (``StreamEncoder("psnr", 40)``): the varint tables took
81 bytes a frame, this stream 35 (with contexts in more segments, which now pay for their tables:
the rANS words fell from 167 to 161 bytes).

Speed: the encoder gets every order's exact bits for a row from one pass over it (:func:`_add`: per
value its bit length and how many of its top bits are ones, which says for which orders ``v + 2^k``
carries into a new bit); the writer puts up to 8 bits at a time.

:func:`.rans_tables.segment_layout` calls :func:`histogram_bits` from compiled code, and numba's
cache does not notice a change here: after editing this file clear ``stream_codec/__pycache__``.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .varint import MAX_COUNT

try:  # numba's count-leading-zeros intrinsic (one instruction); a semi-internal module, hence the fallback
    from numba.cpython.unsafe.numbers import leading_zeros
except ImportError:  # pragma: no cover - depends on the numba version
    @njit(cache=True)
    def leading_zeros(v):
        """Leading zero bits of a uint64 (a loop; same result as the intrinsic)."""
        n = 64
        while v:
            v >>= np.uint64(1)
            n -= 1
        return n

K_BITS = 5
MAX_K = 24  # orders tried by the encoder (a decoder reads any 5-bit order)
MAX_EG_BITS = 48  # a longer Exp-Golomb prefix is corrupt (counts stay below MAX_COUNT = 2^40)
_NL = 66  # bit lengths (and carry boundaries) a value of 64 bits can have, plus one


@njit(cache=True, inline="always")
def _bitlen(v):
    """Bits of ``v >= 0`` (0 for 0)."""
    return 64 - np.int64(leading_zeros(np.uint64(v)))


@njit(cache=True, inline="always")
def _eg_len(v, k):
    """Bits of ``EGk(v)``."""
    return 2 * _bitlen(v + (np.int64(1) << k)) - 1 - k


@njit(cache=True, inline="always")
def _put_bits(out, bp, v, n):
    """Write the ``n`` low bits of ``v`` MSB first at bit ``bp`` of ``out`` (zeroed); returns the new bit position."""
    while n > 0:
        free = 8 - (bp & 7)
        take = free if free < n else n
        n -= take
        out[bp >> 3] |= np.uint8(((v >> n) & ((np.int64(1) << take) - 1)) << (free - take))
        bp += take
    return bp


@njit(cache=True, inline="always")
def _put_eg(out, bp, v, k):
    v += np.int64(1) << k
    n = _bitlen(v)
    bp += n - 1 - k  # the prefix zeros (``out`` is zeroed)
    return _put_bits(out, bp, v, n)


@njit(cache=True, inline="always")
def _add(st, w, v, sign):
    """Count ``v`` (``sign`` 1) or take it back (-1) in ``st[w]``: ``st[w, 0, b]`` values of bit length ``b``,
    ``st[w, 1]`` the differences over orders ``k`` of how many values carry (``v + 2^k`` one bit longer
    than ``v``: ``k < b`` and the top ``b - k`` bits of ``v`` all ones)."""
    b = _bitlen(v)
    st[w, 0, b] += sign
    if b:
        ones = b - _bitlen(v ^ ((np.int64(1) << b) - 1))  # leading ones of v
        st[w, 1, b - ones] += sign
        st[w, 1, b] -= sign


@njit(cache=True)
def _choose_k(st, w, top):
    """The order in ``[0, MAX_K]`` for the values counted in ``st[w]`` (bit lengths up to ``top``), and its
    bits; clears ``st[w]``.

    Exact bits of ``EGk``: ``k + 1`` for a value of bit length ``b <= k``, else ``2 b - 1 - k``, two more
    where it carries. The first order with the fewest bits without the carries is the guess, and the
    first of it and its two neighbours with the fewest exact bits is the order (the rule of the first
    format 4 encoder, which counted each value's bits per order: the payloads did not change). The
    encoder's choice only: the order is written."""
    n = 0
    sumb = 0
    for b in range(top + 1):
        n += st[w, 0, b]
        sumb += b * st[w, 0, b]
    est = np.empty(MAX_K + 1, np.int64)
    carry = np.empty(MAX_K + 1, np.int64)
    le, sum_gt, c = st[w, 0, 0], sumb, st[w, 1, 0]
    guess, best_est = 0, np.int64(1) << 62
    for k in range(MAX_K + 1):
        if k > 0:
            if k <= top:
                le += st[w, 0, k]
                sum_gt -= k * st[w, 0, k]
                c += st[w, 1, k]
        est[k] = le * (k + 1) + 2 * sum_gt - (k + 1) * (n - le)
        carry[k] = c
        if est[k] < best_est:
            guess, best_est = k, est[k]
    best, best_bits = guess, np.int64(1) << 62
    for k in range(max(guess - 1, 0), min(guess + 1, MAX_K) + 1):
        bits = est[k] + 2 * carry[k]
        if bits < best_bits:
            best, best_bits = k, bits
    for b in range(top + 2):
        st[w, 0, b] = 0
        st[w, 1, b] = 0
    return best, best_bits


@njit(cache=True)
def _plan_row(row, first, st):
    """How :func:`write_histograms` writes one row: ``(bits, use_dense, nz, a, b, top, ti, kd, kr, kc)``
    (``top``/``ti``: the unwritten maximum of the first row, its bin and its index among the nonzero
    bins; -1 in other rows). ``st``: zeroed scratch of shape ``(3, 2, _NL)``, left zeroed."""
    nb = row.size
    nz, a, b, top, ti = 0, -1, -1, -1, -1
    last = -1
    lr, lc, ld = 0, 0, 0  # largest bit lengths of runs, counts - 1, counts
    for i in range(nb):
        x = row[i]
        if x != 0:
            if a < 0:
                a = i
            b = i
            if first and (top < 0 or x > row[top]):
                top, ti = i, nz
            nz += 1
            _add(st, 0, i - last - 1, 1)  # sparse: zero run before the bin
            _add(st, 1, x - 1, 1)  # sparse: count - 1
            _add(st, 2, x, 1)  # dense: count
            lr = max(lr, _bitlen(i - last - 1))
            lc = max(lc, _bitlen(x - 1))
            ld = max(ld, _bitlen(x))
            last = i
    if nz == 0:
        return 1 + 1, False, 0, a, b, top, ti, 0, 0, 0
    st[2, 0, 0] += (b - a + 1) - nz  # dense: the zeros between a and b
    if top >= 0:  # the first row's maximum is not written
        _add(st, 1, row[top] - 1, -1)
        _add(st, 2, row[top], -1)
    kr, bits_r = _choose_k(st, 0, lr)
    kc, bits_c = _choose_k(st, 1, lc)
    sparse = 1 + _eg_len(nz, 0) + 2 * K_BITS + bits_r + bits_c + (_eg_len(ti, 0) if top >= 0 else 0)
    kd, bits_d = _choose_k(st, 2, ld)
    dense_bits = 1 + _eg_len(a, 0) + _eg_len(b - a, 0) + K_BITS + bits_d
    if top >= 0:
        dense_bits += _eg_len(top - a, 0)
    if dense_bits < sparse:
        return dense_bits, True, nz, a, b, top, ti, kd, kr, kc
    return sparse, False, nz, a, b, top, ti, kd, kr, kc


@njit(cache=True)
def histogram_bits(hist):
    """The bits :func:`write_histograms` spends on ``hist`` (the encoder's layout choice)."""
    st = np.zeros((3, 2, _NL), np.int64)
    bits = 0
    for r in range(hist.shape[0]):
        bits += _plan_row(hist[r], r == 0, st)[0]
    return bits


@njit(cache=True)
def write_histograms(hist, out, bp):
    """Write the rows of one segment's ``hist`` (module docstring) at bit ``bp`` of ``out``; returns the
    new bit position.

    ``out`` must be zeroed and hold ``hist.shape[0] * (11 * hist.shape[1] + 16)`` bytes past ``bp``.
    """
    st = np.zeros((3, 2, _NL), np.int64)
    for r in range(hist.shape[0]):
        row = hist[r]
        _, use_dense, nz, a, b, top, ti, kd, kr, kc = _plan_row(row, r == 0, st)
        if use_dense:
            bp = _put_bits(out, bp, 0, 1)
            bp = _put_eg(out, bp, a, 0)
            bp = _put_eg(out, bp, b - a, 0)
            bp = _put_bits(out, bp, kd, K_BITS)
            if top >= 0:
                bp = _put_eg(out, bp, top - a, 0)
            for i in range(a, b + 1):
                if i != top:
                    bp = _put_eg(out, bp, row[i], kd)
        else:
            bp = _put_bits(out, bp, 1, 1)
            bp = _put_eg(out, bp, nz, 0)
            if nz == 0:
                continue
            bp = _put_bits(out, bp, kr, K_BITS)
            bp = _put_bits(out, bp, kc, K_BITS)
            if top >= 0:
                bp = _put_eg(out, bp, ti, 0)
            last = -1
            for i in range(a, b + 1):
                if row[i] != 0:
                    bp = _put_eg(out, bp, i - last - 1, kr)
                    last = i
                    if i != top:
                        bp = _put_eg(out, bp, row[i] - 1, kc)
    return bp


@njit(cache=True, inline="always")
def _get_bits(buf, bp, n):
    """``(value, new bit position)`` of ``n`` bits MSB first; position -1 past the end."""
    if bp < 0 or bp + n > 8 * buf.size:
        return 0, -1
    v = np.int64(0)
    for _ in range(n):
        v = (v << 1) | ((buf[bp >> 3] >> (7 - (bp & 7))) & 1)
        bp += 1
    return v, bp


@njit(cache=True, inline="always")
def _get_eg(buf, bp, k):
    """``(EGk value, new bit position)``; position -1 when truncated or longer than ``MAX_EG_BITS``."""
    z = 0
    while True:
        if bp < 0 or bp >= 8 * buf.size or z > MAX_EG_BITS:
            return 0, -1
        if (buf[bp >> 3] >> (7 - (bp & 7))) & 1:
            break
        z += 1
        bp += 1
    if z + k + 1 > 62:
        return 0, -1
    v, bp = _get_bits(buf, bp, z + k + 1)
    return v - (np.int64(1) << k), bp


@njit(cache=True)
def read_histograms(buf, bp, n_bins, n_hist, total, counts):
    """Read :func:`write_histograms`' ``n_hist`` rows of ``n_bins`` bins into ``counts`` (zeroed).

    ``total``: the segment's number of codes (the first row's unwritten count is ``total`` minus the
    others). Returns the new bit position, or -1 on a corrupt or truncated stream (a bin past
    ``n_bins``, a count above ``MAX_COUNT``, an empty first row, an unwritten count below 1).
    """
    written = 0
    top = -1
    for h in range(n_hist):
        mode, bp = _get_bits(buf, bp, 1)
        if bp < 0:
            return -1
        if mode == 0:
            a, bp = _get_eg(buf, bp, 0)
            span, bp = _get_eg(buf, bp, 0)
            k, bp = _get_bits(buf, bp, K_BITS)
            if bp < 0 or a >= n_bins or span >= n_bins - a:
                return -1
            if h == 0:
                t, bp = _get_eg(buf, bp, 0)
                if bp < 0 or t > span:
                    return -1
                top = a + t
            for i in range(a, a + span + 1):
                if h == 0 and i == top:
                    continue
                c, bp = _get_eg(buf, bp, k)
                if bp < 0 or c > MAX_COUNT:
                    return -1
                counts[h, i] = c
                written += c
        else:
            nz, bp = _get_eg(buf, bp, 0)
            if bp < 0 or nz > n_bins or (h == 0 and nz == 0):
                return -1
            if nz == 0:
                continue
            kr, bp = _get_bits(buf, bp, K_BITS)
            kc, bp = _get_bits(buf, bp, K_BITS)
            ti = -1
            if h == 0:
                ti, bp = _get_eg(buf, bp, 0)
                if bp < 0 or ti >= nz:
                    return -1
            i = -1
            for j in range(nz):
                run, bp = _get_eg(buf, bp, kr)
                if bp < 0 or run >= n_bins - i - 1:
                    return -1
                i += run + 1
                if j == ti:
                    top = i
                    continue
                c, bp = _get_eg(buf, bp, kc)
                if bp < 0 or c >= MAX_COUNT:
                    return -1
                counts[h, i] = c + 1
                written += c + 1
    if top < 0 or total - written < 1:
        return -1
    counts[0, top] = total - written
    return bp


@njit(cache=True)
def write_segment_heads(lanes4, kinds, zlos, nbs, out, bp):
    """Format 4's segment headers at bit ``bp`` of ``out`` (zeroed): one bit (4 interleaved rANS states),
    then per segment its kind (2 bits), ``EG0`` of its zigzagged lowest code and, for a segment with
    histograms (kinds 2, 3), ``EG0(bins - 2)``. Returns the new bit position."""
    bp = _put_bits(out, bp, 1 if lanes4 else 0, 1)
    for g in range(kinds.size):
        bp = _put_bits(out, bp, kinds[g], 2)
        bp = _put_eg(out, bp, zlos[g], 0)
        if kinds[g] >= 2:
            bp = _put_eg(out, bp, nbs[g] - 2, 0)
    return bp


@njit(cache=True)
def read_segment_heads(buf, kinds, zlos, nbs, max_bins):
    """Inverse of :func:`write_segment_heads` for ``kinds.size`` segments (into the three arrays):
    ``(lanes4, bit position)``, position -1 on a truncated stream or more than ``max_bins`` bins."""
    lanes4, bp = _get_bits(buf, 0, 1)
    for g in range(kinds.size):
        kinds[g], bp = _get_bits(buf, bp, 2)
        zlos[g], bp = _get_eg(buf, bp, 0)
        nbs[g] = 0
        if kinds[g] >= 2:
            v, bp = _get_eg(buf, bp, 0)
            if v > max_bins - 2:
                return 0, -1
            nbs[g] = v + 2
        if bp < 0:
            return 0, -1
    return lanes4, bp
