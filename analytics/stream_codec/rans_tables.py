"""Tables of the stream codec's rANS coder (numba, integers only): code ranges and context
histograms of segments (encoder), 16-bit frequency tables from counts (both sides, the same
integers), reciprocals for a divide-free encoder, packed decoder lookups (:mod:`.rans`; the
decoder builds them for the tables that code only, :func:`.rans_decoding.lookups`). After editing
this file clear ``stream_codec/__pycache__``: compiled callers in other modules are cached.
"""

from __future__ import annotations

import math

import numpy as np
from numba import njit

from .histogram_coding import histogram_bits

PROB_BITS = 16
PROB_SCALE = 1 << PROB_BITS
RANS_L = 1 << 16  # state in [RANS_L, 2^32)
N_CONTEXTS = 3
N_LANES = 4  # interleaved rANS states
CTX_PENALTY = 16.0  # bytes: format 4's contexts must save this much (the decoder builds 2 more tables, ~20 us)
LUT_BITS = 10  # decoder lookup buckets per table: 8 KB of packed entries + 2 KB of next contexts (first-level cache)
_U = np.uint64  # unsigned indices: no negative-index wrap-around in compiled loops


@njit(cache=True)
def segment_ranges(codes, starts, sizes):
    """``(lo, hi)`` of each segment (``(0, 0)`` for an empty one), int64 arrays."""
    n_seg = starts.size
    lo = np.zeros(n_seg, np.int64)
    hi = np.zeros(n_seg, np.int64)
    for g in range(n_seg):
        a, n = starts[g], sizes[g]
        if n == 0:
            continue
        mn = np.int32(codes[_U(a)])
        mx = mn
        for k in range(_U(1), _U(n)):  # unsigned indices, branch-free min/max: vectorised
            v = codes[_U(a) + k]
            mn = min(mn, v)
            mx = max(mx, v)
        lo[g], hi[g] = mn, mx
    return lo, hi


@njit(cache=True)
def context_counts(seg, lo, nb):
    """Counts of ``seg - lo`` per context, shape ``(N_CONTEXTS, nb)``.

    Counted into four interleaved copies (positions modulo 4) and added: runs of one code then do
    not wait on the previous increment of the same counter.
    """
    c4 = np.zeros((4, N_CONTEXTS, nb), np.int64)
    cm = N_CONTEXTS - 1
    ctx = 0
    n = seg.size
    t = 0
    while t + 3 < n:
        v0 = np.int64(seg[_U(t)])
        c4[0, ctx, _U(v0 - lo)] += 1
        ctx = min(abs(v0), cm)
        v1 = np.int64(seg[_U(t + 1)])
        c4[1, ctx, _U(v1 - lo)] += 1
        ctx = min(abs(v1), cm)
        v2 = np.int64(seg[_U(t + 2)])
        c4[2, ctx, _U(v2 - lo)] += 1
        ctx = min(abs(v2), cm)
        v3 = np.int64(seg[_U(t + 3)])
        c4[3, ctx, _U(v3 - lo)] += 1
        ctx = min(abs(v3), cm)
        t += 4
    while t < n:
        v0 = np.int64(seg[_U(t)])
        c4[0, ctx, _U(v0 - lo)] += 1
        ctx = min(abs(v0), cm)
        t += 1
    return c4[0] + c4[1] + c4[2] + c4[3]


@njit(cache=True)
def quantize_table(counts, f):
    """16-bit frequencies summing to ``2^16`` from integer ``counts`` into ``f`` (same length).

    Every nonzero count gets a frequency >= 1; a rounding deficit goes to the first largest count,
    a surplus is taken from the (first) largest frequencies. All zeros in, all zeros out.
    """
    n = counts.size
    total = 0
    for i in range(n):
        total += counts[i]
    if total == 0:
        for i in range(n):
            f[i] = 0
        return
    s = 0
    for i in range(n):
        v = counts[i] * PROB_SCALE // total
        if v == 0 and counts[i] > 0:
            v = 1
        f[i] = v
        s += v
    diff = PROB_SCALE - s
    if diff > 0:
        best = 0
        for i in range(1, n):
            if counts[i] > counts[best]:
                best = i
        f[best] += diff
    while diff < 0:
        best = 0
        for i in range(1, n):
            if f[i] > f[best]:
                best = i
        take = min(-diff, f[best] - 1)
        if take <= 0:  # more than 2^16 nonzero counts: no table exists (callers refuse such counts)
            break
        f[best] -= take
        diff += take


@njit(cache=True)
def build_tables(counts, lengths):
    """Frequency and cumulative tables of every (segment, context), concatenated.

    Parameters
    ----------
    counts : int64 array
        Every table's counts, concatenated (table ``t`` has ``lengths[t]`` entries).

    Returns
    -------
    freq, cum, tab_off : int64 arrays (``freq``/``cum`` with one spare zero at the end)
    """
    n_tab = lengths.size
    tab_off = np.zeros(max(n_tab, 1), np.int64)
    total = 0
    for t in range(n_tab):
        tab_off[t] = total
        total += lengths[t]
    freq = np.zeros(total + 1, np.int64)
    cum = np.zeros(total + 1, np.int64)
    for t in range(n_tab):
        off, n = tab_off[t], lengths[t]
        quantize_table(counts[off:off + n], freq[off:off + n])
        c = 0
        for i in range(n):
            cum[off + i] = c
            c += freq[off + i]
    return freq, cum, tab_off


@njit(cache=True)
def reciprocals(f):
    """Exact division by each frequency without a divide: ``x // f == (x + (x * m >> 32)) >> l``.

    Granlund and Montgomery (1994, theorem 4.2): with ``l = ceil(log2 f)`` and
    ``m = ceil(2^(32 + l) / f) - 2^32`` (``0 <= m < 2^32``) the identity holds for every
    ``0 <= x < 2^32``; the encoder's state is below ``f * 2^16 <= 2^32`` when it divides.
    Returns ``m, l`` (uint64; zeros where ``f == 0``: never used).
    """
    m = np.zeros(f.size, np.uint64)
    sh = np.zeros(f.size, np.uint64)
    for i in range(f.size):
        v = np.int64(f[i])
        if v > 0:
            lv = 0
            while (np.int64(1) << lv) < v:
                lv += 1
            num = np.int64(1) << (32 + lv)  # at most 2^48 for 16-bit frequencies
            m[i] = np.uint64((num + v - 1) // v - (np.int64(1) << 32))
            sh[i] = np.uint64(lv)
    return m, sh


@njit(cache=True)
def buckets(freq, cum, tab_off, tab_len):
    """Decoder lookup, one int64 per bucket: ``bucket[t << LUT_BITS | k]`` packs the symbol ``s`` of
    table ``t`` holding slot ``k << (PROB_BITS - LUT_BITS)`` (bits 0-20), its frequency (bits 21-37)
    and its cumulative frequency (bits 40-55); ``skip[off + i]`` is the next symbol after ``i``
    with a nonzero frequency (the decoder's search past a bucket's first symbol visits no empty
    bins: an escape code far from the others costs one step, not one per bin between). Tables
    whose frequencies do not sum to ``PROB_SCALE`` (contexts that never occur) get symbol 0 with
    frequency ``PROB_SCALE``: a corrupt stream that reaches them decodes wrong codes quickly.
    Integer-only; ``s`` is the same as a ``searchsorted`` of the slot in the table's cumulative
    frequencies (side ``right``)."""
    n_tab = tab_len.size
    bucket = np.full(max(n_tab, 1) << LUT_BITS, PROB_SCALE << 21, np.int64)  # symbol 0 of full width
    skip = np.zeros(freq.size, np.int64)
    for t in range(n_tab):
        off, n = tab_off[t], tab_len[t]
        if not table_skips(freq, off, n, skip):  # never used by a valid stream: the symbol 0 of full width
            continue
        sym = 0
        end = freq[off]  # cumulative frequency up to and including ``sym``
        for k in range(1 << LUT_BITS):
            slot = k << (PROB_BITS - LUT_BITS)
            while end <= slot:
                sym += 1
                end += freq[off + sym]
            bucket[(t << LUT_BITS) | k] = (cum[off + sym] << 40) | (freq[off + sym] << 21) | sym
    return bucket, skip


@njit(cache=True)
def table_skips(freq, off, n, skip):
    """For the table ``freq[off:off + n]``: whether its frequencies sum to ``PROB_SCALE`` (a table a
    valid stream codes with) and, if so, ``skip[off + i]`` = the next bin after ``i`` with a
    non-zero frequency (the decoder's search past empty bins; ``n - 1`` past the last one)."""
    total = 0
    for i in range(n):
        total += freq[off + i]
    if total != PROB_SCALE:
        return False
    nxt = n - 1
    for i in range(n - 1, -1, -1):
        skip[off + i] = nxt
        if freq[off + i] > 0:
            nxt = i
    return True


@njit(cache=True)
def _cost(hist, compact):
    """Estimated bytes of coding with these histograms (one row per context): their tables (varints;
    ``compact``: format 4's bit stream) plus the codes' entropy. Only the encoder's choice of a
    layout depends on it."""
    nbytes = 0
    bits = 0.0
    if compact:
        bits = float(histogram_bits(hist))
    for r in range(hist.shape[0]):
        row = hist[r]
        tot = 0
        nz = 0
        for i in range(row.size):
            c = row[i]
            tot += c
            if c != 0:
                nz += 1
        if not compact:
            nbytes += _varint_len(nz)
        last = -1
        for i in range(row.size):
            c = row[i]
            if c != 0:
                if not compact:
                    nbytes += _varint_len(i - last - 1) + _varint_len(c)
                last = i
                bits += c * math.log2(tot / c)
    return nbytes + bits / 8.0


@njit(cache=True, inline="always")
def _varint_len(v):
    n = 1
    while v >= 0x80:
        v >>= 7
        n += 1
    return n


@njit(cache=True)
def segment_layout(seg, lo, nb, compact=False):
    """How a segment is coded, in one call: ``(too_wide, histograms, estimated bytes)``.

    ``too_wide``: more distinct codes than a 16-bit frequency table holds (the segment is stored
    raw); else the ``N_CONTEXTS`` context histograms of :func:`context_counts` or, where the contexts
    do not pay for their tables (:func:`_cost`; ``compact``: format 4's tables, where contexts must
    also save ``CTX_PENALTY`` bytes), one histogram of the segment (one row). On Allen-Cahn at 40 dB
    the penalty costs 1 % of the bytes and keeps decode_codes as fast as format 3 (same-process A/B)."""
    hist = context_counts(seg, lo, nb)
    merged = np.zeros((1, nb), np.int64)
    for c in range(hist.shape[0]):
        for i in range(nb):
            merged[0, i] += hist[c, i]
    nz = 0
    for i in range(nb):
        if merged[0, i] != 0:
            nz += 1
    if nz > PROB_SCALE // 4:
        return True, merged, 0.0
    with_ctx, without = _cost(hist, compact) + (CTX_PENALTY if compact else 0.0), _cost(merged, compact)
    if without <= with_ctx:
        return False, merged, without
    return False, hist, with_ctx
