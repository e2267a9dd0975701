"""Entropy coding of quantization codes: one exact histogram per segment, interleaved static rANS.

The code stream is cut into *segments* (consecutive runs of codes with similar statistics: the
interpolation levels, small coarse levels merged). Within a segment each code is coded in one of
``N_CONTEXTS`` contexts, ``min(|previous code|, N_CONTEXTS - 1)`` (the previous code in stream
order: residuals come in patches of activity). Each (segment, context) carries its histogram
(integer counts over the segment's ``[lo, hi]``; formats 1-3: varint-coded, zero runs collapsed;
format 4: an Exp-Golomb bit stream, :mod:`.histogram_coding`); both sides
derive the same 16-bit frequency table from those integers with integer arithmetic only
(:func:`quantize_frequencies`), and the codes are coded with interleaved range-variant ANS coders
(:mod:`.rans`, tables in :mod:`.rans_tables`: up to ``N_LANES`` 32-bit states taking the codes in
turn, 16-bit words). All arithmetic is on integers: decoding is bit-exact on any machine. A
segment whose contexts do not pay for their tables gets one histogram; a segment with a single
code value costs its header only; one with too many distinct codes for 16-bit frequencies is
stored as raw little-endian int32.

The number of interleaved states, ``lanes``, is 1 for streams too short to pay for the extra
states' 4 bytes each, else ``N_LANES``. With one state the layout is the first stream codec's
(payloads written before interleaving decode unchanged, and the reverse); with ``N_LANES`` the first
byte of ``tables``, the first segment's kind (< 4), is raised by ``ENTROPY_TAG`` (no extra byte).
A decoder that predates interleaving refuses such tables (unknown segment kind).

With ``compact=True`` (payload format 4, :mod:`.frame_header`) every segment's kind, lowest code
and number of bins come first, then the histograms of all segments as one bit stream
(:mod:`.histogram_coding`: Exp-Golomb codes, each row dense or sparse, the first row's largest
count implied by the segment's size; byte-aligned at its end), then the raw segments. The decoder
reads these tables and the codes in one compiled call (:func:`.rans_decoding.decode_compact`).
"""

from __future__ import annotations

import numpy as np

from . import rans, rans_decoding as dec, rans_tables as tabs
from .histogram_coding import write_histograms, write_segment_heads
from .rans_tables import N_CONTEXTS, N_LANES, PROB_SCALE
from .varint import histograms_varints, parse_histograms, read_varint, unzigzag, write_varint, zigzag

MIN_SEGMENT = 4096  # codes: smaller consecutive segments are merged (their histograms cost more than they save)
ENTROPY_TAG = 4  # added to the first segment's kind (first byte of ``tables``) when N_LANES states interleave
MIN_LANE_BYTES = 1024  # estimated stream bytes below which one rANS state is used (the others' flush costs more)
#: the widest histogram a segment may have (bins); wider segments are stored raw. Codes lie in
#: ``[-radius, radius + 1]`` and every payload this project wrote has ``radius`` 32767 (``frame_header.RADIUS``),
#: so its histograms have at most ``2 * 32767 + 2`` bins: the decoder refuses more, whatever radius a
#: (corrupt) header declares. A decoder's tables take about 100 bytes a bin (3 contexts, 4 arrays):
#: at most ~6 MB a segment.
MAX_BINS = 1 << 16
_KIND_CONST, _KIND_RAW, _KIND_CTX, _KIND_ONE = 0, 1, 2, 3


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
    counts = np.ascontiguousarray(counts, dtype=np.int64)
    f = np.zeros(counts.size, np.int64)
    tabs.quantize_table(counts, f)
    return f


def reciprocals(freq):
    """``(m, l)`` with ``x // f == (x + (x * m >> 32)) >> l`` for ``x < 2^32`` (:func:`.rans_tables.reciprocals`)."""
    return tabs.reciprocals(np.asarray(freq, dtype=np.int64))


def _layout(tab_counts):
    """Concatenated counts of every (segment, context) table and each table's length."""
    lengths = np.array([c.size for c in tab_counts] or [0], np.int64)
    flat = np.concatenate(tab_counts) if tab_counts else np.zeros(0, np.int64)
    return np.ascontiguousarray(flat, np.int64), lengths


def encode_codes(codes, sizes, lanes=None, compact=False):
    """Entropy-code ``codes`` segment by segment.

    Parameters
    ----------
    codes : ndarray of int32, shape (n,)
    sizes : sequence of int
        Segment sizes summing to ``n``.
    lanes : {None, 1, N_LANES}
        Interleaved rANS states (None: ``N_LANES`` unless the stream is estimated below
        ``MIN_LANE_BYTES``, where the extra states' flush would cost more than 1 %).
    compact : bool
        Format 4's tables (module docstring); False: formats 1 and 3.

    Returns
    -------
    tables : bytes
        Per segment its kind (the first one tagged with the lanes) and histograms (varints; compress
        them with the rest of the header), then any raw segments.
    words : ndarray of uint16
        The rANS stream.
    """
    codes = np.ascontiguousarray(codes, dtype=np.int32)
    sizes = [int(s) for s in sizes]
    if sum(sizes) != codes.size or min(sizes, default=0) < 0:
        raise ValueError(f"stream codec: segment sizes {sizes} do not cover {codes.size} codes")
    starts = np.zeros(len(sizes), np.int64)
    if sizes:
        starts[1:] = np.cumsum(sizes)[:-1]
    seg_n_all = np.asarray(sizes, np.int64)
    los, his = tabs.segment_ranges(codes, starts, seg_n_all)
    body, raw, tab_counts, seg_n, seg_ctx, est, hists, heads = bytearray(), bytearray(), [], [], [], 0.0, [], []
    zero = np.zeros(1, np.int64)
    for g, size in enumerate(sizes):
        lo, nb = int(los[g]), int(his[g] - los[g]) + 1
        kind, per_ctx, hist_bytes = _KIND_CONST, [zero] * N_CONTEXTS, b""
        if size and nb > 1:
            seg = codes[starts[g]:starts[g] + size]
            too_wide, hist, cost = tabs.segment_layout(seg, lo, nb, compact) if nb <= MAX_BINS else (True, None, 0.0)
            if too_wide:  # more distinct codes than a frequency table holds
                kind = _KIND_RAW
                raw += codes[starts[g]:starts[g] + size].astype("<i4").tobytes()
            else:  # one histogram where the contexts do not pay for their tables
                kind, est = (_KIND_ONE if len(hist) == 1 else _KIND_CTX), est + cost
                if compact:
                    hists.append(hist)
                else:
                    hist_bytes = histograms_varints(hist).tobytes()
                per_ctx = list(hist) + [zero] * (N_CONTEXTS - len(hist))
        heads.append((kind, zigzag(lo), nb))
        if not compact:
            write_varint(body, kind)
            write_varint(body, zigzag(lo))
            if kind in (_KIND_CTX, _KIND_ONE):
                write_varint(body, nb)
                body += hist_bytes
        tab_counts += per_ctx
        seg_n.append(size if kind in (_KIND_CTX, _KIND_ONE) else 0)
        seg_ctx.append(kind == _KIND_CTX)
    if lanes is None:
        lanes = N_LANES if est >= MIN_LANE_BYTES else 1
    elif lanes not in (1, N_LANES):
        raise ValueError(f"stream codec: lanes={lanes!r} (1 or {N_LANES})")
    if compact:  # segment headers and histograms in one bit stream (histogram_coding.py)
        bits = np.zeros(sum(h.shape[0] * (11 * h.shape[1] + 16) for h in hists) + 24 * len(heads) + 1, np.uint8)
        kinds, zlos, nbs = (np.array([h[i] for h in heads], np.int64) for i in range(3))
        bp = write_segment_heads(lanes == N_LANES, kinds, zlos, nbs, bits, 0)
        for h in hists:
            bp = write_histograms(h, bits, bp)
        body += bits[:(bp + 7) // 8].tobytes()
    flat, lengths = _layout(tab_counts)
    freq, cum, tab_off = tabs.build_tables(flat, lengths)
    rcp_m, rcp_l = tabs.reciprocals(freq)
    out = np.empty(codes.size + 2 * N_LANES + 1, dtype=np.uint16)
    n = rans.rans_encode(codes, starts, np.asarray(seg_n, np.int64), los, np.asarray(seg_ctx, np.bool_), tab_off,
                         freq, cum, rcp_m, rcp_l, lanes, out)
    if lanes == N_LANES and body and not compact:
        body[0] += ENTROPY_TAG  # the first kind (< 4, one byte) carries the tag: no extra byte
    return bytes(body + raw), out[:n][::-1].copy()


def _check_histograms(hist, size):
    """Refuse histograms no encoder writes: more distinct codes than a table holds, or another count than ``size``."""
    if int(np.count_nonzero(hist.sum(axis=0))) > PROB_SCALE // 4:
        raise ValueError("stream codec: more distinct codes than a frequency table holds (corrupt payload)")
    if int(hist.sum()) != size:
        raise ValueError(f"stream codec: histograms count {int(hist.sum())} codes, the segment has {size}")


def decode_codes(tables, words, sizes, compact=False, max_bins=MAX_BINS):
    """Inverse of :func:`encode_codes` (``compact`` as it was encoded).

    ``max_bins`` bounds the bins a histogram may declare (the codes' range, ``2 radius + 2``, from
    the frame header), and never more than :data:`MAX_BINS`: a corrupt header cannot make the
    decoder allocate more.

    Returns
    -------
    codes : ndarray of int32, shape (sum(sizes),)
    pos : int
        Bytes of ``tables`` consumed.

    Raises
    ------
    ValueError
        On an unknown entropy format, histograms that do not match their segment size, or a
        truncated stream (corrupt payload).
    """
    tables = bytes(tables)
    buf = np.frombuffer(tables, np.uint8)
    max_bins = min(int(max_bins), MAX_BINS)
    if compact:
        return _decode_compact(buf, words, sizes, max_bins)
    tag = tables[0] if tables and sizes else 0
    if tag >= 2 * ENTROPY_TAG:
        raise ValueError(f"stream codec: entropy format tag {tag} (this decoder reads the first segment kinds "
                         f"0-3, one rANS state, and {ENTROPY_TAG}-{2 * ENTROPY_TAG - 1}, {N_LANES} interleaved states)")
    lanes = N_LANES if tag >= ENTROPY_TAG else 1
    first_kind, pos = tag % ENTROPY_TAG, 0
    tab_counts, kinds, seg_n, seg_lo, seg_ctx = [], [], [], [], []
    zero = np.zeros(1, np.int64)
    for g, size in enumerate(sizes):
        kind, pos = read_varint(tables, pos)
        kind = first_kind if g == 0 else kind
        u, pos = read_varint(tables, pos)
        lo = _check_lo(unzigzag(u))
        if kind in (_KIND_CTX, _KIND_ONE):
            nb, pos = read_varint(tables, pos)
            if nb > max_bins:
                raise ValueError(f"stream codec: {nb} histogram bins (corrupt payload)")
            hist = np.zeros((N_CONTEXTS if kind == _KIND_CTX else 1, nb), np.int64)
            pos = parse_histograms(buf, pos, nb, len(hist), hist)
            if pos < 0:
                raise ValueError("stream codec: corrupt histogram")
            _check_histograms(hist, size)
            per_ctx = list(hist) + [zero] * (N_CONTEXTS - len(hist))
        elif kind in (_KIND_CONST, _KIND_RAW):
            per_ctx = [zero] * N_CONTEXTS
        else:
            raise ValueError(f"stream codec: unknown segment kind {kind}")
        tab_counts += per_ctx
        kinds.append(kind)
        seg_ctx.append(kind == _KIND_CTX)
        seg_n.append(size if kind in (_KIND_CTX, _KIND_ONE) else 0)
        seg_lo.append(lo)
    return _decode_body(tables, words, sizes, lanes, kinds, seg_lo, seg_ctx, seg_n, tab_counts, pos)


def _check_lo(lo):
    """A segment's lowest code, refused outside int32 (codes are int32; the rANS kernels index with it)."""
    if not -(1 << 31) <= lo < (1 << 31):
        raise ValueError(f"stream codec: lowest code {lo} of a segment (corrupt payload)")
    return lo


_COMPACT_ERRORS = {dec.BAD_HEADS: "truncated segment headers", dec.BAD_HIST: "corrupt histogram",
                   dec.TOO_WIDE: "more distinct codes than a frequency table holds (corrupt payload)",
                   dec.SHORT_RANS: "truncated rANS stream", dec.SHORT_RAW: "truncated raw segment"}


def _decode_compact(buf, words, sizes, max_bins):
    """Format 4: tables and codes in one compiled call (:func:`.rans_decoding.decode_compact`); the
    checks and errors of the format-3 reader (:func:`_check_histograms`, :func:`_check_lo`,
    :func:`_decode_body`), in their order."""
    sizes_a = np.asarray(sizes, np.int64)
    if sizes_a.ndim != 1 or (sizes_a.size and sizes_a.min() < 0):
        raise ValueError(f"stream codec: segment sizes {list(sizes)} (corrupt payload)")
    codes, pos, status, value = dec.decode_compact(buf, sizes_a, int(max_bins),
                                                   np.ascontiguousarray(words, np.uint16), tabs.LUT_BITS)
    if status == dec.OK:
        return codes, int(pos)
    if status == dec.BAD_COUNT:
        raise ValueError(f"stream codec: histograms count {int(value)} codes, the segment has a different number")
    if status == dec.BAD_LO:
        _check_lo(int(value))
    raise ValueError(f"stream codec: {_COMPACT_ERRORS[status]}")


def _decode_body(tables, words, sizes, lanes, kinds, seg_lo, seg_ctx, seg_n, tab_counts, pos):
    """The codes from the parsed tables (every format): rANS segments, then raw and constant ones."""
    start = sum(sizes)
    flat, lengths = _layout(tab_counts)
    seg_lo_a, seg_ctx_a = np.asarray(seg_lo, np.int64), np.asarray(seg_ctx, np.bool_)
    seg_n_a = np.asarray(seg_n, np.int64)
    freq, cum, tab_off = tabs.build_tables(flat, lengths)
    bucket, skip, nctx, tab_base = dec.lookups(freq, cum, tab_off, lengths, seg_lo_a, seg_ctx_a, seg_n_a, lanes,
                                               tabs.LUT_BITS)
    codes = np.empty(start, dtype=np.int32)
    padded = np.zeros(len(words) + 1, np.uint16)  # a spare word: the decoder reads without a branch
    padded[:len(words)] = words
    seg_start = np.zeros(len(sizes), np.int64)
    if sizes:
        seg_start[1:] = np.cumsum(sizes)[:-1]
    used = rans.rans_decode(padded, seg_start, seg_n_a, seg_lo_a, seg_ctx_a, tab_off, lengths,
                            freq, cum, bucket, nctx, skip, lanes, tabs.LUT_BITS, tab_base, codes)
    if used < 0:
        raise ValueError("stream codec: truncated rANS stream")
    for g, size in enumerate(sizes):
        a = int(seg_start[g])
        if kinds[g] == _KIND_RAW:
            if pos + 4 * size > len(tables):
                raise ValueError("stream codec: truncated raw segment")
            codes[a:a + size] = np.frombuffer(tables, "<i4", size, pos)
            pos += 4 * size
        elif kinds[g] == _KIND_CONST:
            codes[a:a + size] = seg_lo[g]
    return codes, pos
