"""The stream codec's faster rANS decoding gives the codes the encoder was given
(analytics/stream_codec/rans_decoding.py, rans.py, entropy_coding.py).

Format 4's tables and codes are decoded in one compiled call (``decode_compact``) with lookup
buckets for the tables that code only, one state reuses the previous symbol when it repeats, and
four states read words unclamped while four are left. Each test compares with values known
independently: the codes given to ``encode_codes``, the buckets of ``rans_tables.buckets``, the
error the format-3 reader gives. Corrupt tables and words raise ``ValueError`` (``decode_frame``
turns it into ``StreamFormatError``), never a crash or a hang.
"""

import numpy as np
import pytest

from stagelearn.analytics.stream_codec.entropy_coding import N_LANES, decode_codes, encode_codes
from stagelearn.analytics.stream_codec.rans_decoding import lookups
from stagelearn.analytics.stream_codec.rans_tables import LUT_BITS, N_CONTEXTS, build_tables, buckets

from test_stream_entropy import assert_flips_raise_or_decode_in_shape

RADIUS = 32767
MAX_BINS = 2 * RADIUS + 2


def _streams():
    rng = np.random.default_rng(17)
    lap = lambda n, b: np.round(rng.laplace(0, b, n)).astype(np.int32)  # noqa: E731
    runs = np.zeros(70000, np.int32)
    runs[rng.integers(0, runs.size, 300)] = rng.choice([-3, -1, 1, 2, 40], 300)  # long zero runs, few others
    return {
        "all zeros": (np.zeros(10000, np.int32), [4096, 5904]),
        "zero runs, rare codes": (runs, [4096, 16384, 49520]),
        "ones in a context of their own": (np.tile(np.int32([1, 1, 1, 0, 5, 5, 5, 5]), 3000), [24000]),
        "laplace, odd segment sizes": (lap(40003, 2.0), [1, 2, 3, 4097, 35900]),
        "near-certain zero": (lap(65536, 0.05), [16384, 49152]),
        "busy": (lap(90001, 12.0), [4096, 20480, 65425]),
        "escapes at the radius": (rng.choice(np.int32([-RADIUS, RADIUS, 0, 1, -1]), 12000), [5000, 7000]),
        "mixed kinds": (np.concatenate([np.full(100, 7, np.int32), lap(5000, 3.0),
                                        rng.integers(-2 ** 20, 2 ** 20, 30000).astype(np.int32)]),
                        [100, 5000, 30000]),
    }


@pytest.mark.parametrize("lanes", [1, N_LANES])
@pytest.mark.parametrize("name", list(_streams()))
def test_compact_round_trip_gives_the_encoded_codes(name, lanes):
    codes, sizes = _streams()[name]
    tables, words = encode_codes(codes, sizes, lanes=lanes, compact=True)
    back, pos = decode_codes(tables, words, sizes, compact=True, max_bins=1 << 20)
    assert back.dtype == np.int32 and np.array_equal(back, codes)
    assert pos == len(tables)
    # the same stream through the format-3 reader's path (its own tables, the shared rANS kernel)
    t3, w3 = encode_codes(codes, sizes, lanes=lanes)
    assert np.array_equal(decode_codes(t3, w3, sizes)[0], codes)


def test_lookups_hold_the_buckets_of_every_table_that_codes():
    rng = np.random.default_rng(5)
    nb = 300
    hist = [rng.integers(0, 50, nb) * (rng.random(nb) < 0.6) for _ in range(2 * N_CONTEXTS)]
    hist[4] = np.zeros(nb, np.int64)  # a context that never occurs: symbol 0 of full width
    lengths = np.full(len(hist), nb, np.int64)
    counts = np.concatenate(hist).astype(np.int64)
    freq, cum, tab_off = build_tables(counts, lengths)
    ref, ref_skip = buckets(freq, cum, tab_off, lengths)
    seg_lo, seg_ctx, seg_n = np.array([-7, 3], np.int64), np.array([True, True]), np.array([100, 100], np.int64)
    bucket, skip, nctx, tab_base = lookups(freq, cum, tab_off, lengths, seg_lo, seg_ctx, seg_n, N_LANES, LUT_BITS)
    width = 1 << LUT_BITS
    for t in range(len(hist)):
        got = bucket[tab_base[t]:tab_base[t] + width]
        assert np.array_equal(got, ref[t * width:(t + 1) * width])
        if hist[t].sum():
            assert np.array_equal(skip[tab_off[t]:tab_off[t] + nb], ref_skip[tab_off[t]:tab_off[t] + nb])
        g = t // N_CONTEXTS
        nxt = np.minimum(np.abs((got & 0x1FFFFF) + seg_lo[g]), N_CONTEXTS - 1) << LUT_BITS
        assert np.array_equal(nctx[tab_base[t]:tab_base[t] + width], nxt)
    # a segment without rANS codes gets no buckets; one histogram: one table
    bucket1, _, _, base1 = lookups(freq, cum, tab_off, lengths, seg_lo, np.array([False, True]),
                                   np.array([0, 100], np.int64), 1, LUT_BITS)
    assert bucket1.size == N_CONTEXTS * width and base1[N_CONTEXTS] == 0


@pytest.mark.parametrize("lanes", [1, N_LANES])
def test_corrupt_or_truncated_compact_streams_raise_or_decode_in_shape(lanes):
    rng = np.random.default_rng(lanes)
    codes = np.round(rng.laplace(0, 3, 40000)).astype(np.int32)
    codes[:5000] = 0
    sizes = [4096, 12288, 23616]
    tables, words = encode_codes(codes, sizes, lanes=lanes, compact=True)
    for cut in (0, 1, 5, len(words) // 2, len(words) - 1):
        with pytest.raises(ValueError, match="truncated rANS stream"):
            decode_codes(tables, words[:cut], sizes, compact=True, max_bins=MAX_BINS)
    with pytest.raises(ValueError):
        decode_codes(tables[:len(tables) // 3], words, sizes, compact=True, max_bins=MAX_BINS)
    with pytest.raises(ValueError, match="truncated segment headers"):
        decode_codes(b"", words, sizes, compact=True, max_bins=MAX_BINS)
    assert_flips_raise_or_decode_in_shape(  # flipped words or table bytes: wrong codes or an error, never a crash
        lambda t, w: decode_codes(t, w, sizes, compact=True, max_bins=MAX_BINS), tables, words, codes.shape, rng, 400)


def test_bins_beyond_the_header_radius_are_refused():
    codes = np.zeros(5000, np.int32)
    codes[::7] = 30000
    tables, words = encode_codes(codes, [5000], compact=True)
    assert np.array_equal(decode_codes(tables, words, [5000], compact=True, max_bins=30001)[0], codes)
    with pytest.raises(ValueError, match="truncated segment headers"):
        decode_codes(tables, words, [5000], compact=True, max_bins=30000)
