"""Interleaved static rANS of the stream codec's quantization codes (numba; tables in :mod:`.rans_tables`).

``lanes`` rANS states (1 or ``N_LANES``; 32-bit, 16-bit words, F. Giesen's ``rans_word``
construction) take the codes of a segment in turn (code ``t`` of a segment starting at ``a`` goes
to state ``(t - a) % lanes``) and share one word stream: the encoder runs backwards over the codes,
the decoder forwards, and each state's chain of dependent multiplications is independent of the
others', so the processor overlaps them. Each state emits or reads at most one word per code (it
stays in ``[2^16, 2^32)`` with 16-bit frequencies), so renormalisation is a select, not a loop
(with one state a branch: on near-constant streams it is predicted). The decoder finds a symbol,
its frequency and its cumulative frequency in one packed lookup per code
(:func:`.rans_decoding.lookups`; after editing this file clear ``stream_codec/__pycache__``: the
compiled format-4 decoder of :mod:`.rans_decoding` calls it and numba's cache does not notice). The
context of code ``t`` is ``min(|code[t - 1]|, N_CONTEXTS - 1)`` (the previous code of the segment,
whichever state coded it). That context chains every code to the one before, whatever the state,
so with 4 states the decoder reads the next context, as an offset into the buckets (the context
times ``2^lut_bits``), from a two-byte table per bucket (:func:`.rans_decoding.lookups`, in the
first-level cache with the 2^10-bucket tables) and computes it from the symbol only where the slot
is past the bucket's first symbol. Its loop over 4 codes reads the next word without clamping the
position while 4 words are left (a state reads at most one word per code; the last codes of the
stream go through the clamped loop) and renormalises with a select. The encoder
adds ``q (2^16 - f)`` to the state (one multiplication on its chain; the same integer as
``(q << 16) + x - q f``). All arithmetic is on integers, array indices unsigned (no wrap-around
code in the loops): the same codes on every machine.

With one state the decoder keeps the previous code's symbol, frequency and cumulative frequency
when that code leaves the context unchanged (the next code is decoded with the same table): a slot
in that symbol's range is that symbol again, with no table lookup (runs of zeros, the common case
on smooth fields, then cost a subtraction, a comparison and the state's multiplication). The same
symbol the lookup finds, so the same codes.

The decoder's loops are written out per state: helpers that take arrays and branch, inlined by
numba, kept reference counting in the loop (7x slower); only ``_search`` (rarely taken) and
``_renorm`` (scalars) are helpers.
"""

from __future__ import annotations

import numpy as np
from numba import njit

from .rans_tables import N_CONTEXTS, PROB_BITS, PROB_SCALE, RANS_L, _U


@njit(cache=True, inline="always")
def _enc_put(x, s, freq, cum, rcp_m, rcp_l, out, n):
    """Code table entry ``s`` into state ``x``; at most one word out. Returns ``(x, n)``."""
    su = _U(s)
    f = freq[su]
    out[_U(n)] = x & 0xFFFF  # written always, kept only when the state must shrink
    big = np.int64(x >= (f << 16))
    x >>= big << 4
    xu = _U(x)
    q = np.int64((xu + ((xu * rcp_m[su]) >> _U(32))) >> rcp_l[su])
    # (q << PROB_BITS) + (x - q * f) + cum, with one multiplication on the state's chain
    return (x + cum[su]) + q * (PROB_SCALE - f), n + big


@njit(cache=True, inline="always")
def _enc_entry(codes, t, a, cm, lo_off):
    """Table entry of code ``t`` of a segment starting at ``a``: ``lo_off[ctx] + code``."""
    ctx = min(abs(np.int64(codes[_U(t - 1)])), cm) if t > a else 0
    return np.int64(codes[_U(t)]) + lo_off[ctx]


@njit(cache=True)
def rans_encode(codes, seg_start, seg_n, seg_lo, seg_ctx, tab_off, freq, cum, rcp_m, rcp_l, lanes, out):
    """Encode the coded segments (last code first); returns the number of 16-bit words in ``out``
    (in reverse reading order: the caller reverses them).

    ``tab_off[g * N_CONTEXTS + c]``: where (segment g, context c)'s table starts in ``freq``/``cum``.
    ``lanes`` (1 or 4): interleaved states; ``out`` needs ``len(codes) + 2 * lanes`` words. The
    states are flushed even when no segment is coded (the first format's layout).
    """
    mask = lanes - 1
    x0 = x1 = x2 = x3 = np.int64(RANS_L)
    n = 0
    lo_off = np.zeros(N_CONTEXTS, np.int64)
    for g in range(seg_start.size - 1, -1, -1):
        if seg_n[g] == 0:
            continue
        a = seg_start[g]
        cm = N_CONTEXTS - 1 if seg_ctx[g] else 0
        for c in range(N_CONTEXTS):
            lo_off[c] = tab_off[g * N_CONTEXTS + c] - seg_lo[g]
        t = a + seg_n[g] - 1
        full = a + (seg_n[g] & ~mask)  # codes from here on: the incomplete last round of the lanes
        while t >= full:
            s = _enc_entry(codes, t, a, cm, lo_off)
            lane = (t - a) & mask
            if lane == 0:
                x0, n = _enc_put(x0, s, freq, cum, rcp_m, rcp_l, out, n)
            elif lane == 1:
                x1, n = _enc_put(x1, s, freq, cum, rcp_m, rcp_l, out, n)
            else:
                x2, n = _enc_put(x2, s, freq, cum, rcp_m, rcp_l, out, n)
            t -= 1
        if lanes == 1:  # one state: a predictable branch (low-entropy streams) keeps the renormalisation off its chain
            while t >= a:
                su = _U(_enc_entry(codes, t, a, cm, lo_off))
                f = freq[su]
                if x0 >= (f << 16):
                    out[_U(n)] = x0 & 0xFFFF
                    n += 1
                    x0 >>= 16
                xu = _U(x0)
                q = np.int64((xu + ((xu * rcp_m[su]) >> _U(32))) >> rcp_l[su])
                x0 = (x0 + cum[su]) + q * (PROB_SCALE - f)
                t -= 1
        else:
            while t >= a:
                x3, n = _enc_put(x3, _enc_entry(codes, t, a, cm, lo_off), freq, cum, rcp_m, rcp_l, out, n)
                x2, n = _enc_put(x2, _enc_entry(codes, t - 1, a, cm, lo_off), freq, cum, rcp_m, rcp_l, out, n)
                x1, n = _enc_put(x1, _enc_entry(codes, t - 2, a, cm, lo_off), freq, cum, rcp_m, rcp_l, out, n)
                x0, n = _enc_put(x0, _enc_entry(codes, t - 3, a, cm, lo_off), freq, cum, rcp_m, rcp_l, out, n)
                t -= 4
    if lanes > 2:  # the decoder reads x0 first
        n = _flush(x3, out, n)
        n = _flush(x2, out, n)
    if lanes > 1:
        n = _flush(x1, out, n)
    return _flush(x0, out, n)


@njit(cache=True, inline="always")
def _flush(x, out, n):
    out[n] = x & 0xFFFF
    out[n + 1] = x >> 16
    return n + 2


@njit(cache=True)
def _search(slot, sym, f, c, off, nb, freq, cum, skip):
    """The symbol holding ``slot`` from the bucket's first symbol on (over the nonzero symbols, ``skip``)."""
    while slot - c >= f and sym < nb - 1:
        sym = skip[off + sym]
        f = freq[off + sym]
        c = cum[off + sym]
    return sym, f, c


@njit(cache=True, inline="always")
def _renorm(x, slot, f, c, words, p, n_words):
    """The state after a symbol of frequency ``f`` and cumulative frequency ``c``; at most one word in."""
    x = f * (x >> PROB_BITS) + slot - c
    w = np.int64(words[_U(min(p, n_words))])
    small = np.int64(x < RANS_L)
    return (x << (small << 4)) | (w & -small), p + small


@njit(cache=True)
def rans_decode(words, seg_start, seg_n, seg_lo, seg_ctx, tab_off, tab_len, freq, cum, bucket, nctx, skip, lanes,
                lut_bits, tab_base, codes):
    """Inverse of :func:`rans_encode` (``words`` in reading order, one spare zero word at the end).

    ``bucket``, ``skip`` from :func:`.rans_decoding.lookups` (``2^lut_bits`` buckets per table: an argument,
    not a global, so that code compiled and cached here never disagrees with the tables built in
    :mod:`.rans_tables`), ``nctx`` (the next context times ``2^lut_bits`` per bucket, uint16; read with
    ``lanes`` 4 only) and the buckets of table ``t`` from ``tab_base[t]`` (a multiple of ``2^lut_bits``;
    a segment's context tables follow each other) from :func:`.rans_decoding.lookups`. Returns the words consumed,
    or -1 when the stream is shorter than the codes need.
    """
    n_words = words.size - 1
    n_coded = 0
    for g in range(seg_n.size):
        n_coded += seg_n[g]
    if n_coded == 0:
        return 0
    if n_words < 2 * lanes:
        return -1
    mask = lanes - 1
    sh = PROB_BITS - lut_bits
    x0 = x1 = x2 = x3 = np.int64(RANS_L)
    x0 = (np.int64(words[0]) << 16) | np.int64(words[1])
    if lanes > 1:
        x1 = (np.int64(words[2]) << 16) | np.int64(words[3])
    if lanes > 2:
        x2 = (np.int64(words[4]) << 16) | np.int64(words[5])
        x3 = (np.int64(words[6]) << 16) | np.int64(words[7])
    p = 2 * lanes
    for g in range(seg_start.size):
        if seg_n[g] == 0:
            continue
        a = seg_start[g]
        end = a + seg_n[g]
        lo = seg_lo[g]
        cm = N_CONTEXTS - 1 if seg_ctx[g] else 0  # context = min(|previous code|, cm)
        tab0 = g * N_CONTEXTS
        base = tab_base[tab0]
        off0 = tab_off[tab0]
        nb = tab_len[tab0]
        ctx = 0
        ctxo = 0  # lanes == 4: the context times 2^lut_bits (an offset in the buckets)
        t = a
        if lanes == 4:
            while t + 4 <= end and p + 3 <= n_words:  # 4 codes read at most 4 words: no clamp
                slot = x0 & (PROB_SCALE - 1)
                i = _U((base + ctxo) | (slot >> sh))
                nco = np.int64(nctx[i])
                e = bucket[i]
                sym = e & 0x1FFFFF
                f = (e >> 21) & 0x1FFFF
                c = e >> 40
                if slot - c >= f:
                    sym, f, c = _search(slot, sym, f, c, off0 + (ctxo >> lut_bits) * nb, nb, freq, cum, skip)
                    nco = min(abs(sym + lo), cm) << lut_bits
                x0 = f * (x0 >> PROB_BITS) + slot - c
                y = (x0 << 16) | np.int64(words[_U(p)])
                small = x0 < RANS_L
                x0 = y if small else x0
                p += np.int64(small)
                codes[_U(t)] = sym + lo
                ctxo = nco
                slot = x1 & (PROB_SCALE - 1)
                i = _U((base + ctxo) | (slot >> sh))
                nco = np.int64(nctx[i])
                e = bucket[i]
                sym = e & 0x1FFFFF
                f = (e >> 21) & 0x1FFFF
                c = e >> 40
                if slot - c >= f:
                    sym, f, c = _search(slot, sym, f, c, off0 + (ctxo >> lut_bits) * nb, nb, freq, cum, skip)
                    nco = min(abs(sym + lo), cm) << lut_bits
                x1 = f * (x1 >> PROB_BITS) + slot - c
                y = (x1 << 16) | np.int64(words[_U(p)])
                small = x1 < RANS_L
                x1 = y if small else x1
                p += np.int64(small)
                codes[_U(t + 1)] = sym + lo
                ctxo = nco
                slot = x2 & (PROB_SCALE - 1)
                i = _U((base + ctxo) | (slot >> sh))
                nco = np.int64(nctx[i])
                e = bucket[i]
                sym = e & 0x1FFFFF
                f = (e >> 21) & 0x1FFFF
                c = e >> 40
                if slot - c >= f:
                    sym, f, c = _search(slot, sym, f, c, off0 + (ctxo >> lut_bits) * nb, nb, freq, cum, skip)
                    nco = min(abs(sym + lo), cm) << lut_bits
                x2 = f * (x2 >> PROB_BITS) + slot - c
                y = (x2 << 16) | np.int64(words[_U(p)])
                small = x2 < RANS_L
                x2 = y if small else x2
                p += np.int64(small)
                codes[_U(t + 2)] = sym + lo
                ctxo = nco
                slot = x3 & (PROB_SCALE - 1)
                i = _U((base + ctxo) | (slot >> sh))
                nco = np.int64(nctx[i])
                e = bucket[i]
                sym = e & 0x1FFFFF
                f = (e >> 21) & 0x1FFFF
                c = e >> 40
                if slot - c >= f:
                    sym, f, c = _search(slot, sym, f, c, off0 + (ctxo >> lut_bits) * nb, nb, freq, cum, skip)
                    nco = min(abs(sym + lo), cm) << lut_bits
                x3 = f * (x3 >> PROB_BITS) + slot - c
                y = (x3 << 16) | np.int64(words[_U(p)])
                small = x3 < RANS_L
                x3 = y if small else x3
                p += np.int64(small)
                codes[_U(t + 3)] = sym + lo
                ctxo = nco
                t += 4
        if lanes == 1:  # one state: a predictable branch beats a select on low-entropy streams
            rf, rc, rcode = np.int64(0), np.int64(0), np.int64(0)  # repeat candidate (module docstring)
            for t in range(a, end):
                slot = x0 & (PROB_SCALE - 1)
                d = slot - rc
                if _U(d) < _U(rf):  # the previous code's symbol again, in the same table: no lookup
                    x0 = rf * (x0 >> PROB_BITS) + d
                    code = rcode
                else:
                    e = bucket[_U((base + (ctx << lut_bits)) | (slot >> sh))]
                    sym = e & 0x1FFFFF
                    f = (e >> 21) & 0x1FFFF
                    c = e >> 40
                    if slot - c >= f:
                        sym, f, c = _search(slot, sym, f, c, off0 + ctx * nb, nb, freq, cum, skip)
                    x0 = f * (x0 >> PROB_BITS) + slot - c
                    code = sym + lo
                    nc = min(abs(code), cm)
                    rf = f if nc == ctx else 0
                    rc, rcode, ctx = c, code, nc
                if x0 < RANS_L:
                    x0 = (x0 << 16) | np.int64(words[_U(min(p, n_words))])
                    p += 1
                codes[_U(t)] = code
            continue
        while t < end:  # the last codes of a segment (fewer than 4), or of the stream (words near their end)
            lane = (t - a) & mask
            x = x0 if lane == 0 else (x1 if lane == 1 else (x2 if lane == 2 else x3))
            slot = x & (PROB_SCALE - 1)
            i = _U((base + ctxo) | (slot >> sh))
            nco = np.int64(nctx[i])
            e = bucket[i]
            sym = e & 0x1FFFFF
            f = (e >> 21) & 0x1FFFF
            c = e >> 40
            if slot - c >= f:
                sym, f, c = _search(slot, sym, f, c, off0 + (ctxo >> lut_bits) * nb, nb, freq, cum, skip)
                nco = min(abs(sym + lo), cm) << lut_bits
            x, p = _renorm(x, slot, f, c, words, p, n_words)
            codes[_U(t)] = sym + lo
            ctxo = nco
            if lane == 0:
                x0 = x
            elif lane == 1:
                x1 = x
            elif lane == 2:
                x2 = x
            else:
                x3 = x
            t += 1
    return p if p <= n_words else -1
