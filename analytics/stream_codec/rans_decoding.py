"""Decoder side of the static rANS codes (numba, integers only): lookup tables for the tables that
code, and format 4's tables and codes read in one compiled call.

A frame's decode used to pay per-segment Python work (reading each segment's histograms, checking
them, concatenating the tables) and lookup buckets for every (segment, context) table, also those
of constant segments and of the unused contexts of a one-histogram segment. :func:`decode_compact`
does everything from :mod:`.entropy_coding`'s format-4 tables to the codes in one call and reports
a corrupt stream by a status (the caller raises the same ``ValueError`` the step-by-step reader
raised, in the same order of checks); :func:`lookups` builds buckets only for the tables a segment
codes with. The codes are the same integers: the tables come from the same counts by the same
integer arithmetic (:func:`.rans_tables.build_tables`), and each bucket holds what
:func:`.rans_tables.buckets` puts there.

numba's on-disk cache (``cache=True``) checks only this file: :func:`decode_compact` also compiles
in :func:`.rans.rans_decode`, :mod:`.histogram_coding`'s readers and :func:`.rans_tables.build_tables`,
so after editing any of those clear ``stream_codec/__pycache__`` (a clean clone, as CI runs, has none).
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .histogram_coding import read_histograms, read_segment_heads
from .rans import rans_decode
from .rans_tables import N_CONTEXTS, PROB_BITS, PROB_SCALE, build_tables, table_skips

KIND_CONST, KIND_RAW, KIND_CTX, KIND_ONE = 0, 1, 2, 3  # segment kinds (:mod:`.entropy_coding`)
#: statuses of :func:`decode_compact` (0: decoded); ``value`` of the result says more where noted
OK, BAD_HEADS, BAD_HIST, TOO_WIDE, BAD_COUNT, BAD_LO, SHORT_RANS, SHORT_RAW = range(8)


@njit(cache=True)
def lookups(freq, cum, tab_off, lengths, seg_lo, seg_ctx, seg_n, lanes, lut_bits):
    """``bucket, skip, nctx, tab_base`` for the tables that code: the ``N_CONTEXTS`` tables of a segment
    with contexts, the first of a segment with one histogram, none of a segment without rANS codes
    (``seg_n`` 0). Table ``t``'s ``2^lut_bits`` buckets start at ``tab_base[t]``; the entries are
    :func:`.rans_tables.buckets`' (a table that does not sum to ``PROB_SCALE``: symbol 0 of full
    width) and ``nctx`` (``lanes > 1``; else a single zero) the context the bucket's first symbol
    gives the next code, ``min(|symbol + lo|, cm)``, times ``2^lut_bits`` (an offset into the buckets:
    one shift less on the decoder's chain from one code to the next)."""
    n_seg = seg_lo.size
    tab_base = np.zeros(max(n_seg * N_CONTEXTS, 1), np.int64)
    used = 0
    for g in range(n_seg):
        if seg_n[g] > 0:
            for c in range(N_CONTEXTS if seg_ctx[g] else 1):
                tab_base[g * N_CONTEXTS + c] = used << lut_bits
                used += 1
    width = np.int64(1) << lut_bits
    sh = PROB_BITS - lut_bits
    bucket = np.full(max(used, 1) * width, PROB_SCALE << 21, np.int64)
    skip = np.zeros(freq.size, np.int64)
    nctx = np.zeros(used * width if lanes > 1 else 1, np.uint16)
    for g in range(n_seg):
        if seg_n[g] == 0:
            continue
        lo = seg_lo[g]
        cm = N_CONTEXTS - 1 if seg_ctx[g] else 0
        for ctx in range(N_CONTEXTS if seg_ctx[g] else 1):
            t = g * N_CONTEXTS + ctx
            off, n, base = tab_off[t], lengths[t], tab_base[t]
            if not table_skips(freq, off, n, skip):  # a context that never occurs: symbol 0 of full width
                if lanes > 1:
                    nctx[base:base + width] = min(abs(lo), cm) << lut_bits
                continue
            k = 0
            for s in range(n):  # symbol s holds the buckets whose first slot is in [cum, cum + freq)
                f = freq[off + s]
                if f == 0:
                    continue
                k_end = (cum[off + s] + f + (np.int64(1) << sh) - 1) >> sh
                e = (cum[off + s] << 40) | (f << 21) | s
                nc = min(abs(s + lo), cm) << lut_bits
                while k < k_end:
                    bucket[base + k] = e
                    if lanes > 1:
                        nctx[base + k] = nc
                    k += 1
    return bucket, skip, nctx, tab_base


@njit(cache=True)
def _unzigzag(u):
    return u // 2 if u % 2 == 0 else -(u + 1) // 2


@njit(cache=True)
def decode_compact(buf, sizes, max_bins, words, lut_bits):
    """Format 4's tables (``buf``) and rANS ``words`` to the codes of segments of ``sizes`` codes.

    Returns ``(codes, pos, status, value)``: ``pos`` the bytes of ``buf`` consumed (through the raw
    segments), ``status`` :data:`OK` or the first check that failed, in the order of the
    step-by-step reader: segment headers (:data:`BAD_HEADS`, also more than ``max_bins`` bins),
    each segment's histograms (:data:`BAD_HIST`), their distinct codes (:data:`TOO_WIDE`) and total
    (:data:`BAD_COUNT`, ``value`` the total), each lowest code outside int32 (:data:`BAD_LO`, ``value``
    the code), the rANS stream (:data:`SHORT_RANS`), the raw segments (:data:`SHORT_RAW`)."""
    n_seg = sizes.size
    total = 0
    for g in range(n_seg):
        total += sizes[g]
    codes = np.empty(total, np.int32)
    kinds = np.zeros(n_seg, np.int64)
    zlos = np.zeros(n_seg, np.int64)
    nbs = np.zeros(n_seg, np.int64)
    lanes4, bp = read_segment_heads(buf, kinds, zlos, nbs, max_bins)
    if bp < 0:
        return codes, 0, BAD_HEADS, 0
    lanes = 4 if lanes4 else 1
    lengths = np.ones(max(n_seg * N_CONTEXTS, 1), np.int64)
    for g in range(n_seg):
        for c in range(N_CONTEXTS):
            if kinds[g] == KIND_CTX or (kinds[g] == KIND_ONE and c == 0):
                lengths[g * N_CONTEXTS + c] = nbs[g]
    n_counts = 0
    for t in range(lengths.size):
        n_counts += lengths[t]
    counts = np.zeros(n_counts, np.int64)
    off = 0
    for g in range(n_seg):
        nb = nbs[g]
        if kinds[g] >= KIND_CTX:
            nh = N_CONTEXTS if kinds[g] == KIND_CTX else 1
            hist = counts[off:off + nh * nb].reshape((nh, nb))
            bp = read_histograms(buf, bp, nb, nh, sizes[g], hist)
            if bp < 0:
                return codes, 0, BAD_HIST, 0
            distinct, seg_total = 0, 0
            for i in range(nb):
                col = 0
                for h in range(nh):
                    col += hist[h, i]
                seg_total += col
                if col != 0:
                    distinct += 1
            if distinct > PROB_SCALE // 4:
                return codes, 0, TOO_WIDE, 0
            if seg_total != sizes[g]:
                return codes, 0, BAD_COUNT, seg_total
        for c in range(N_CONTEXTS):
            off += lengths[g * N_CONTEXTS + c]
    seg_lo = np.zeros(n_seg, np.int64)
    seg_ctx = np.zeros(n_seg, np.bool_)
    seg_n = np.zeros(n_seg, np.int64)
    seg_start = np.zeros(n_seg, np.int64)
    for g in range(n_seg):
        lo = _unzigzag(zlos[g])
        if not -(np.int64(1) << 31) <= lo < (np.int64(1) << 31):
            return codes, 0, BAD_LO, lo
        seg_lo[g] = lo
        seg_ctx[g] = kinds[g] == KIND_CTX
        seg_n[g] = sizes[g] if kinds[g] >= KIND_CTX else 0
        if g > 0:
            seg_start[g] = seg_start[g - 1] + sizes[g - 1]
    freq, cum, tab_off = build_tables(counts, lengths)
    bucket, skip, nctx, tab_base = lookups(freq, cum, tab_off, lengths, seg_lo, seg_ctx, seg_n, lanes, lut_bits)
    padded = np.zeros(words.size + 1, np.uint16)  # a spare word: the decoder reads without a branch
    padded[:words.size] = words
    used = rans_decode(padded, seg_start, seg_n, seg_lo, seg_ctx, tab_off, lengths, freq, cum, bucket, nctx, skip,
                       lanes, lut_bits, tab_base, codes)
    if used < 0:
        return codes, 0, SHORT_RANS, 0
    pos = (bp + 7) // 8
    for g in range(n_seg):
        a, size = seg_start[g], sizes[g]
        if kinds[g] == KIND_RAW:
            if pos + 4 * size > buf.size:
                return codes, 0, SHORT_RAW, 0
            for i in range(size):  # little-endian int32
                q = pos + 4 * i
                codes[a + i] = np.int32(np.uint32(buf[q]) | (np.uint32(buf[q + 1]) << 8) |
                                        (np.uint32(buf[q + 2]) << 16) | (np.uint32(buf[q + 3]) << 24))
            pos += 4 * size
        elif kinds[g] == KIND_CONST:
            codes[a:a + size] = seg_lo[g]
    return codes, pos, OK, 0
