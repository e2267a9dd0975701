"""Entropy coding of quantization codes: one exact histogram per segment, static rANS (numba).

The code stream is cut into *segments* (consecutive runs of codes with similar statistics: the
interpolation levels, small coarse levels merged). Within a segment each code is coded in one of
``N_CONTEXTS`` contexts, ``min(|previous code|, N_CONTEXTS - 1)`` (the previous code in stream
order: residuals come in patches of activity). Each (segment, context) carries its histogram
(integer counts over the segment's ``[lo, hi]``, varint-coded, zero runs collapsed); both sides
derive the same 16-bit frequency table from those integers with integer arithmetic only
(:func:`quantize_frequencies`), and the codes are coded with a range-variant ANS coder (32-bit
state, 16-bit words, the ``rans_word`` construction of F. Giesen). All arithmetic is on integers:
decoding is bit-exact on any machine. A segment whose contexts do not pay for their tables gets one
histogram; a segment with a single code value costs its header only;
one with too many distinct codes for 16-bit frequencies is stored as raw little-endian int32.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .varint import histogram_varints, parse_histograms, read_varint, unzigzag, write_varint, zigzag

PROB_BITS = 16
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 16  # state in [RANS_L, 2^32)
N_CONTEXTS = 3
LUT_BITS = 12  # decoder lookup buckets per table
MIN_SEGMENT = 4096  # codes: smaller consecutive segments are merged (their histograms cost more than they save)


def merge_segments(counts, min_size=MIN_SEGMENT):
    """Group consecutive per-level code counts into segments of at least ``min_size`` codes.

    Parameters
    ----------
    counts : sequence of int
        Codes per level in stream order.

    Returns
    -------
    sizes : list of int
        Segment sizes (they sum to ``sum(counts)``); the last segment absorbs a small remainder.
    """
    sizes, acc = [], 0
    for c in counts:
        acc += int(c)
        if acc >= min_size:
            sizes.append(acc)
            acc = 0
    if acc:
        if sizes and acc < min_size:
            sizes[-1] += acc
        else:
            sizes.append(acc)
    return sizes


def quantize_frequencies(counts):
    """16-bit frequencies summing to ``2^16`` from integer counts (integer arithmetic, deterministic).

    Every nonzero count gets a frequency >= 1; the rounding surplus or deficit goes to the largest
    bins. All zeros in, all zeros out (a context that never occurs).
    """
    counts = np.asarray(counts, dtype=np.int64)
    total = int(counts.sum())
    if total == 0:
        return np.zeros(len(counts), np.int64)
    f = counts * PROB_SCALE // total
    f[(counts > 0) & (f == 0)] = 1
    diff = PROB_SCALE - int(f.sum())
    if diff > 0:
        f[int(np.argmax(counts))] += diff
    while diff < 0:
        i = int(np.argmax(f))
        take = min(-diff, int(f[i]) - 1)
        f[i] -= take
        diff += take
    return f


@njit(cache=True, inline="always")
def _context(code):
    a = abs(code)
    return a if a < N_CONTEXTS else N_CONTEXTS - 1


def reciprocals(freq):
    """Exact division by each frequency without a divide: ``x // f == (x + (x * m >> 32)) >> l``.

    Granlund and Montgomery (1994, theorem 4.2): with ``l = ceil(log2 f)`` and
    ``m = ceil(2^(32 + l) / f) - 2^32`` (``0 <= m < 2^32``) the identity holds for every
    ``0 <= x < 2^32``; the encoder's state is below ``f * 2^16 <= 2^32`` when it divides.

    Returns
    -------
    m, l : ndarray of uint64 (zeros where ``f == 0``: never used)
    """
    return _reciprocals(np.asarray(freq, dtype=np.int64))


@njit(cache=True)
def _reciprocals(f):
    m = np.zeros(f.size, np.uint64)
    sh = np.zeros(f.size, np.uint64)
    for i in range(f.size):
        v = f[i]
        if v > 0:
            lv = 0
            while (np.int64(1) << lv) < v:
                lv += 1
            num = np.int64(1) << (32 + lv)  # at most 2^48 for 16-bit frequencies
            m[i] = np.uint64((num + v - 1) // v - (np.int64(1) << 32))
            sh[i] = np.uint64(lv)
    return m, sh


@njit(cache=True)
def _rans_encode(codes, seg_start, seg_n, seg_lo, seg_ctx, tab_off, freq, cum, rcp_m, rcp_l, out):
    """Encode the coded segments (last code first); returns the number of 16-bit words in ``out`` (reversed).

    ``tab_off[g * N_CONTEXTS + c]``: where (segment g, context c)'s table starts in ``freq``/``cum``.
    Integers only (int64 and uint64; the state stays below 2^32); ``x // f`` by :func:`reciprocals`.
    """
    x = RANS_L
    n_words = 0
    k32 = np.uint64(32)
    for g in range(seg_start.size - 1, -1, -1):
        a = seg_start[g]
        for t in range(a + seg_n[g] - 1, a - 1, -1):
            ctx = _context(np.int64(codes[t - 1])) if t > a and seg_ctx[g] else 0
            s = np.int64(codes[t]) - seg_lo[g] + tab_off[g * N_CONTEXTS + ctx]
            f = freq[s]
            x_max = (RANS_L >> PROB_BITS << 16) * f
            while x >= x_max:
                out[n_words] = x & 0xFFFF
                n_words += 1
                x >>= 16
            xu = np.uint64(x)
            q = np.int64((xu + ((xu * rcp_m[s]) >> k32)) >> rcp_l[s])
            x = (q << PROB_BITS) + (x - q * f) + cum[s]
    out[n_words] = x & 0xFFFF
    out[n_words + 1] = x >> 16
    return n_words + 2


@njit(cache=True)
def _rans_decode(words, seg_start, seg_n, seg_lo, seg_ctx, tab_off, tab_len, freq, cum, bucket, codes):
    """Inverse of :func:`_rans_encode` (``words`` in reading order). Returns the words consumed or -1.

    ``bucket[tab << LUT_BITS | slot >> (PROB_BITS - LUT_BITS)]`` is the symbol holding the bucket's
    first slot; a short forward scan over ``cum`` finds the slot's symbol (small tables stay in cache).
    """
    n_words = words.size
    if n_words < 2:
        return -1
    x = (np.int64(words[0]) << 16) | np.int64(words[1])
    p = 2
    mask = PROB_SCALE - 1
    for g in range(seg_start.size):
        a = seg_start[g]
        lo = seg_lo[g]
        use_ctx = seg_ctx[g]
        ctx = 0
        for t in range(a, a + seg_n[g]):
            tab = g * N_CONTEXTS + ctx
            slot = x & mask
            off = tab_off[tab]
            last = tab_len[tab] - 1
            sym = bucket[(tab << LUT_BITS) | (slot >> (PROB_BITS - LUT_BITS))]
            while sym < last and cum[off + sym + 1] <= slot:
                sym += 1
            s = sym + off
            x = freq[s] * (x >> PROB_BITS) + slot - cum[s]
            while x < RANS_L:
                if p >= n_words:
                    return -1
                x = (x << 16) | np.int64(words[p])
                p += 1
            code = sym + lo
            codes[t] = code
            if use_ctx:
                ctx = _context(code)
    return p


@njit(cache=True)
def _context_counts(seg, lo, nb):
    """Counts of ``seg - lo`` per context, shape (N_CONTEXTS, nb)."""
    counts = np.zeros((N_CONTEXTS, nb), np.int64)
    ctx = 0
    for t in range(seg.size):
        v = np.int64(seg[t])
        counts[ctx, v - lo] += 1
        ctx = _context(v)
    return counts


@njit(cache=True)
def _min_max(seg):
    """``(min, max)`` of a non-empty int32 array in one pass."""
    lo = hi = np.int64(seg[0])
    for t in range(1, seg.size):
        v = np.int64(seg[t])
        if v < lo:
            lo = v
        elif v > hi:
            hi = v
    return lo, hi


@njit(cache=True)
def _buckets(freq, tab_off, tab_len):
    """Decoder lookup: ``bucket[t << LUT_BITS | k]`` is the symbol of table ``t`` holding slot
    ``k << (PROB_BITS - LUT_BITS)`` (tables whose frequencies do not sum to ``PROB_SCALE``, i.e.
    contexts that never occur, keep zeros). Integer-only; the same as a ``searchsorted`` of each
    slot in the table's cumulative frequencies (side ``right``)."""
    n_tab = tab_len.size
    bucket = np.zeros(max(n_tab, 1) << LUT_BITS, np.int64)
    for t in range(n_tab):
        off, n = tab_off[t], tab_len[t]
        total = 0
        for i in range(n):
            total += freq[off + i]
        if total != PROB_SCALE:
            continue
        sym = 0
        end = freq[off]  # cumulative frequency up to and including ``sym``
        for k in range(1 << LUT_BITS):
            slot = k << (PROB_BITS - LUT_BITS)
            while end <= slot:
                sym += 1
                end += freq[off + sym]
            bucket[(t << LUT_BITS) | k] = sym
    return bucket


def _tables(counts_list):
    """Frequency / cumulative tables of every (segment, context), concatenated, and their offsets."""
    freqs = [quantize_frequencies(c) for c in counts_list]
    tab_off = np.zeros(max(len(freqs), 1), np.int64)
    if freqs:
        tab_off[1:len(freqs)] = np.cumsum([len(f) for f in freqs])[:-1]
    freq = np.concatenate(freqs + [np.zeros(1, np.int64)])
    cum = np.concatenate([np.concatenate(([0], np.cumsum(f)[:-1])).astype(np.int64) for f in freqs]
                         + [np.zeros(1, np.int64)])
    return freqs, freq, cum, tab_off


def _cost(hist):
    """Estimated bytes of coding with these histograms (one row per context): their tables plus the codes."""
    buf = np.empty(hist.shape[0] * (20 * hist.shape[1] + 10), np.uint8)
    n = 0
    for c in hist:
        n += histogram_varints(c, buf[n:])
    tot = hist.sum(axis=1, keepdims=True)
    nz = hist > 0
    bits = -np.sum(hist[nz] * np.log2((hist / np.maximum(tot, 1))[nz]))
    return n + bits / 8.0, buf[:n].tobytes()


def encode_codes(codes, sizes):
    """Entropy-code ``codes`` segment by segment.

    Parameters
    ----------
    codes : ndarray of int32, shape (n,)
    sizes : sequence of int
        Segment sizes summing to ``n``.

    Returns
    -------
    tables : bytes
        Per segment its kind and histograms (varints; compress them with the rest of the header),
        then any raw segments.
    words : ndarray of uint16
        The rANS stream.
    """
    tables, raw = bytearray(), bytearray()
    counts_list, seg_start, seg_n, seg_lo, seg_ctx, start = [], [], [], [], [], 0
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    for size in sizes:
        seg = codes[start:start + size]
        lo, hi = (int(v) for v in _min_max(seg)) if size else (0, 0)
        nb = hi - lo + 1
        hist = _context_counts(seg, lo, nb) if size and nb <= 1 << 20 else None
        if hist is None:
            n_distinct = PROB_SCALE if size else 0
        else:
            n_distinct = int(np.count_nonzero(hist.sum(axis=0)))
        if n_distinct <= 1:
            kind = 0  # constant
        elif n_distinct <= PROB_SCALE // 4:
            kind = 2  # rANS
        else:
            kind = 1  # raw int32
        per_ctx = [np.zeros(1, np.int64)] * N_CONTEXTS
        body = b""
        if kind == 2:
            with_ctx, tab_ctx = _cost(hist)
            merged = hist.sum(axis=0, keepdims=True)
            without, tab_one = _cost(merged)
            if without <= with_ctx:  # contexts do not pay for their tables: one histogram
                kind, hist, body = 3, merged, tab_one
            else:
                body = tab_ctx
            per_ctx = list(hist) + [np.zeros(1, np.int64)] * (N_CONTEXTS - len(hist))
        elif kind == 1:
            raw += seg.astype("<i4").tobytes()
        write_varint(tables, kind)
        write_varint(tables, zigzag(lo))
        if kind in (2, 3):
            write_varint(tables, nb)
            tables += body
        counts_list += per_ctx
        seg_start.append(start)
        seg_n.append(size if kind in (2, 3) else 0)
        seg_lo.append(lo)
        seg_ctx.append(kind == 2)
        start += size
    _, freq, cum, tab_off = _tables(counts_list)
    out = np.empty(codes.size + 4, dtype=np.uint16)
    n = _rans_encode(codes, np.asarray(seg_start, np.int64), np.asarray(seg_n, np.int64),
                     np.asarray(seg_lo, np.int64), np.asarray(seg_ctx, np.bool_), tab_off, freq, cum,
                     *reciprocals(freq), out)
    return bytes(tables) + bytes(raw), out[:n][::-1].copy()


def decode_codes(tables, words, sizes):
    """Inverse of :func:`encode_codes`.

    Returns
    -------
    codes : ndarray of int32, shape (sum(sizes),)
    pos : int
        Bytes of ``tables`` consumed.

    Raises
    ------
    ValueError
        On histograms that do not match their segment size, or a truncated stream (corrupt payload).
    """
    tables = bytes(tables)
    pos, counts_list, kinds, seg_start, seg_n, seg_lo, start = 0, [], [], [], [], [], 0
    seg_ctx = []
    for size in sizes:
        kind, pos = read_varint(tables, pos)
        u, pos = read_varint(tables, pos)
        lo = unzigzag(u)
        if kind in (2, 3):
            nb, pos = read_varint(tables, pos)
            if nb > 1 << 20:
                raise ValueError(f"stream codec: {nb} histogram bins (corrupt payload)")
            hist = np.zeros((N_CONTEXTS if kind == 2 else 1, nb), np.int64)
            pos = parse_histograms(np.frombuffer(tables, np.uint8), pos, nb, len(hist), hist)
            if pos < 0:
                raise ValueError("stream codec: corrupt histogram")
            per_ctx = list(hist) + [np.zeros(1, np.int64)] * (N_CONTEXTS - len(hist))
            if int(sum(int(c.sum()) for c in per_ctx)) != size:
                raise ValueError(f"stream codec: histograms count {sum(int(c.sum()) for c in per_ctx)} codes, "
                                 f"the segment has {size}")
        elif kind in (0, 1):
            per_ctx = [np.zeros(1, np.int64)] * N_CONTEXTS
        else:
            raise ValueError(f"stream codec: unknown segment kind {kind}")
        counts_list += per_ctx
        kinds.append(kind)
        seg_ctx.append(kind == 2)
        seg_start.append(start)
        seg_n.append(size if kind in (2, 3) else 0)
        seg_lo.append(lo)
        start += size
    freqs, freq, cum, tab_off = _tables(counts_list)
    tab_len = np.array([len(f) for f in freqs] or [0], np.int64)
    bucket = _buckets(freq, tab_off, tab_len)
    codes = np.zeros(start, dtype=np.int32)
    used = _rans_decode(np.asarray(words, dtype=np.uint16), np.asarray(seg_start, np.int64),
                        np.asarray(seg_n, np.int64), np.asarray(seg_lo, np.int64), np.asarray(seg_ctx, np.bool_),
                        tab_off, tab_len, freq, cum,
                        bucket, codes)
    if used < 0:
        raise ValueError("stream codec: truncated rANS stream")
    for g, size in enumerate(sizes):
        a = seg_start[g]
        if kinds[g] == 1:
            if pos + 4 * size > len(tables):
                raise ValueError("stream codec: truncated raw segment")
            codes[a:a + size] = np.frombuffer(tables, "<i4", size, pos)
            pos += 4 * size
        elif kinds[g] == 0:
            codes[a:a + size] = seg_lo[g]
    return codes, pos
