"""Stream-codec payload formats 4 and 5 (analytics/stream_codec/frame_header.py, histogram_coding.py).

Format 4 (static rANS) and 5 (adaptive coder) write a shorter header than 3 and 2: level factors,
code radius and outlier count only when not the defaults (a flag bit each), weights predicted within
the frame, the level count derived from the shape, histograms as an Exp-Golomb bit stream. The
reconstruction is the same whatever the format; old formats still decode; a corrupt payload is a
StreamFormatError or decodes to the producer's frame bit for bit.
"""

from __future__ import annotations

import struct
import zlib

import numpy as np
import pytest
import zstandard

from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder, StreamFormatError, decode_frame, \
    encode_frame, finish_frame, frame_info
from stagelearn.analytics.stream_codec.adaptive_coding import encode_codes_adaptive
from stagelearn.analytics.stream_codec.entropy_coding import encode_codes, merge_segments
from stagelearn.analytics.stream_codec.frame import _fitted_levels
from stagelearn.analytics.stream_codec.frame_header import (FLAG_FACTORS, FLAG_OUTLIERS, FLAG_RADIUS, MAGIC,
                                                            RADIUS, WEIGHT_SCALE, _weight_residuals,
                                                            _weights_from_residuals, write_payload)
from stagelearn.analytics.stream_codec.histogram_coding import histogram_bits, read_histograms, write_histograms
from stagelearn.analytics.stream_codec.interpolation import level_counts, n_levels
from stagelearn.analytics.stream_codec.varint import read_varint, write_varint

from test_stream_codec import moving_field  # noqa: E402  (the test field)


def _payload_as(frame, version, radius=RADIUS):
    """The payload of a quantized frame (``encode_frame(..., payload=False)``) in another format version,
    written here from the frame's codes (format 1-3 tables without ``compact``)."""
    x, prev3, shape3, levels, qlev, wfit, codes, outliers, factors, zstd_level, *_ = frame._pending
    crc = zlib.crc32(frame.reconstruction.tobytes())
    head = (x.dtype, x.shape, prev3 is not None, factors, wfit, outliers, crc)
    if version in (2, 5):
        body = encode_codes_adaptive(codes, shape3, prev3, qlev.astype(np.float64))
        return write_payload(version, *head, len(body), b"", body, zstd_level, radius=radius)
    tables, words = encode_codes(codes, merge_segments(level_counts(shape3)), compact=version == 4)
    return write_payload(version, *head, len(words), tables, words.astype("<u2").tobytes(), zstd_level, radius=radius)


def _header(payload):
    """The plain header bytes of a payload (formats 4-5 compress without zstd's magic, 1-3 with it)."""
    n, pos = read_varint(payload, len(MAGIC))
    hdr = payload[pos:pos + n // 2]
    if n % 2:
        fmt = zstandard.FORMAT_ZSTD1 if hdr[:4] == b"\x28\xb5\x2f\xfd" else zstandard.FORMAT_ZSTD1_MAGICLESS
        hdr = zstandard.ZstdDecompressor(format=fmt).decompress(hdr)
    return hdr, payload[pos + n // 2:]


_CASES = {}
_FLAGS = {"intra default": 0, "temporal weights": 0, "factors": FLAG_FACTORS, "outliers": FLAG_OUTLIERS,
          "float64 temporal": 0, "zstd header": FLAG_OUTLIERS}


def _quantized(name):
    """A quantized frame (``encode_frame(..., payload=False)``) of the case ``name``; each case sets or
    clears the header's flags as ``_FLAGS`` says (radius: :func:`test_radius_flag_both_states`)."""
    if not _CASES:
        x0, x1 = moving_field(0, (24, 20, 18)), moving_field(1, (24, 20, 18))
        bad = x1.copy()
        bad[3, 4, 5], bad[7, 1, 2] = np.nan, np.inf  # stored exactly: outliers
        many = x1.copy()
        many.reshape(-1)[::29] = np.nan
        d0, d1 = moving_field(0, (33, 40), dtype=np.float64), moving_field(1, (33, 40), dtype=np.float64)
        g0 = encode_frame(d0, 1e-4)
        big, rng = (40, 36, 32), np.random.default_rng(7)
        y1, e0 = moving_field(1, big), encode_frame(moving_field(0, big), 1e-3)
        assert len(_fitted_levels(big)) == 2
        _CASES.update({
            "intra default": ((x0, 1e-3), {}),
            "temporal weights": ((y1, 1e-3), {"prev": e0.reconstruction,  # 2 levels with weights of their own
                                              "weights": [0.97, 0.6, -0.55] + rng.normal(0, 0.05, (n_levels(big), 3))}),
            "factors": ((x1, 1e-3), {"alpha": 1.25, "beta": 3.0}),
            "outliers": ((bad, 1e-3), {}),
            "zstd header": ((many, 1e-3), {}),  # 300 NaN outliers: the header compresses (magicless zstd)
            "float64 temporal": ((d1, 1e-4), {"prev": g0.reconstruction})})
    args, kw = _CASES[name]
    return encode_frame(*args, payload=False, **kw)


def _prev_of(frame):
    prev = frame._pending[1]
    return None if prev is None else prev.reshape(frame.reconstruction.shape)


@pytest.mark.parametrize("version", [4, 5])
def test_format_4_and_5_round_trip_with_each_flag_set_and_clear(version):
    for name, flags in _FLAGS.items():
        frame = _quantized(name)
        pay = _payload_as(frame, version)
        info = frame_info(pay)
        assert info["version"] == version and (info["n_outliers"] >= 2) == bool(flags & FLAG_OUTLIERS), name
        hdr, _ = _header(pay)
        _, at = read_varint(hdr, 0)
        got, _ = read_varint(hdr, at)
        assert got & (FLAG_FACTORS | FLAG_OUTLIERS | FLAG_RADIUS) == flags, name
        assert decode_frame(pay, _prev_of(frame)).tobytes() == frame.reconstruction.tobytes(), name
        assert read_varint(pay, len(MAGIC))[0] % 2 == (name == "zstd header"), name  # header compressed or not


@pytest.mark.parametrize("name", list(_FLAGS))
def test_every_version_decodes_to_the_same_reconstruction(name):
    """Formats 2, 3 (old headers), 4 and 5 of the same codes: one reconstruction; 4 is shorter than 3
    and 5 shorter than 2; the defaults (alpha 1.5, beta 4.0, radius) are not in a format-4 header."""
    frame = _quantized(name)
    prev = _prev_of(frame)
    pays = {v: _payload_as(frame, v) for v in (2, 3, 4, 5)}
    for v, p in pays.items():
        assert frame_info(p)["version"] == v
        assert decode_frame(p, prev).tobytes() == frame.reconstruction.tobytes(), v
    assert len(pays[4]) < len(pays[3]) and len(pays[5]) < len(pays[2])
    hdr, _ = _header(pays[4])
    if name != "factors":
        assert struct.pack("<2f", 1.5, 4.0) not in hdr and struct.pack("<f", 1.5) not in hdr
    else:
        assert struct.pack("<2f", 1.25, 3.0) in hdr
    i3, i4 = frame_info(pays[3]), frame_info(pays[4])
    assert np.array_equal(i3["steps"], i4["steps"]) and np.array_equal(i3["weights"], i4["weights"])
    assert finish_frame(frame).payload == pays[4]  # what the encoder writes


def test_radius_flag_both_states():
    """A radius other than 32767 travels (flag set) and is what the decoder uses; the default does not."""
    frame = _quantized("temporal weights")
    prev = _prev_of(frame)
    for radius, flagged in ((RADIUS, False), (40000, True)):
        p = _payload_as(frame, 4, radius=radius)
        hdr, _ = _header(p)
        _, at = read_varint(hdr, 0)
        flags, _ = read_varint(hdr, at)
        assert bool(flags & FLAG_RADIUS) == flagged
        assert frame_info(p)["radius"] == radius
        assert decode_frame(p, prev).tobytes() == frame.reconstruction.tobytes()  # no code beyond 32767


def test_weight_residuals_invert_exactly():
    rng = np.random.default_rng(3)
    for k in (1, 2, 3, 6):
        for _ in range(200):
            w = rng.integers(-(1 << 24), (1 << 24) + 1, (k, 3))
            w[rng.random((k, 3)) < 0.3] = WEIGHT_SCALE
            assert np.array_equal(_weights_from_residuals(_weight_residuals(w), k), w)
    # the default blend travels as three zeros (a byte each)
    assert _weight_residuals(np.array([[WEIGHT_SCALE, WEIGHT_SCALE, -WEIGHT_SCALE]])) == [0, 0, 0]


def test_histogram_bit_stream_round_trips_and_refuses_truncation():
    rng = np.random.default_rng(0)
    for t in range(400):
        rows, nb = int(rng.choice([1, 3])), int(rng.integers(2, 300))
        h = np.zeros((rows, nb), np.int64)
        top = [3, 300, 100000, 1 << 35][t % 4]
        for r in range(rows):
            mask = rng.random(nb) < rng.random() ** 3
            h[r, mask] = rng.integers(1, top, mask.sum())
        if h[0].sum() == 0:
            h[0, rng.integers(nb)] = 5
        off = int(rng.integers(0, 16))
        buf = np.zeros(rows * (11 * nb + 16) + 4, np.uint8)
        end = write_histograms(h, buf, off)
        data = buf[:(end + 7) // 8]
        back = np.zeros_like(h)
        assert read_histograms(data, off, nb, rows, int(h.sum()), back) == end and np.array_equal(back, h)
        for cut in range(len(data)):
            assert read_histograms(data[:cut], off, nb, rows, int(h.sum()), np.zeros_like(h)) == -1
        # a wrong segment size: the implied count would be < 1, or another table (the CRC then catches it)
        assert read_histograms(data, off, nb, rows, int(h.sum() - h[0].max()), np.zeros_like(h)) == -1



def _eg_len(v, k):
    return 2 * (v + (1 << k)).bit_length() - 1 - k


def _order_bits(vals):
    """The rule of format 4's first encoder, in plain Python: the first order in 0..24 with the fewest bits
    counted without carries, then the first of it and its neighbours with the fewest exact bits."""
    est = [sum(k + 1 if v.bit_length() <= k else 2 * v.bit_length() - 1 - k for v in vals) for k in range(25)]
    g = est.index(min(est))
    return min(sum(_eg_len(v, k) for v in vals) for k in range(max(g - 1, 0), min(g + 1, 24) + 1))


def _row_bits(row, first):
    nz = [i for i, c in enumerate(row) if c]
    if not nz:
        return 2
    a, b = nz[0], nz[-1]
    top = int(np.argmax(row)) if first else -1
    runs = [i - j - 1 for i, j in zip(nz, [-1] + nz[:-1])]
    sparse = 1 + _eg_len(len(nz), 0) + 10 + _order_bits(runs) + _order_bits([row[i] - 1 for i in nz if i != top])
    dense = 1 + _eg_len(a, 0) + _eg_len(b - a, 0) + 5 + _order_bits([row[i] for i in range(a, b + 1) if i != top])
    if first:
        sparse += _eg_len(nz.index(top), 0)
        dense += _eg_len(top - a, 0)
    return min(dense, sparse)


def test_histogram_bits_are_the_written_bits_of_the_reference_order_rule():
    # histogram_bits gets every order's bits from one pass (bit lengths and carries); a plain-Python
    # count of each order's bits must give the same total, and write_histograms must write exactly it
    rng = np.random.default_rng(1)
    for t in range(150):
        rows, nb = int(rng.choice([1, 3])), int(rng.integers(2, 200))
        h = np.zeros((rows, nb), np.int64)
        top = [2, 64, 5000, 1 << 33][t % 4]
        for r in range(rows):
            mask = rng.random(nb) < rng.random() ** 2
            h[r, mask] = rng.integers(1, top, mask.sum())
            if t % 5 == 0:  # values just below powers of two: v + 2^k carries for some orders
                h[r, mask] = (1 << rng.integers(1, 20, mask.sum())) - 1
        if h[0].sum() == 0:
            h[0, rng.integers(nb)] = 7
        want = sum(_row_bits([int(c) for c in h[r]], r == 0) for r in range(rows))
        buf = np.zeros(rows * (11 * nb + 16) + 4, np.uint8)
        assert histogram_bits(h) == want == write_histograms(h, buf, 3) - 3

def _all_payloads():
    out = []
    for name in _FLAGS:
        frame = _quantized(name)
        out += [(name, v, _payload_as(frame, v), _prev_of(frame), frame.reconstruction) for v in (4, 5)]
    return out


def test_corrupt_format_4_and_5_payloads_raise_or_decode_identically():
    """Every truncation inside the header and 40 in the body; a flip of every bit of each header byte
    (120 sampled bytes of a longer header) and of 40 body bytes: StreamFormatError, or (a flip of
    nothing the decoder reads) the producer's frame bit for bit."""
    rng = np.random.default_rng(5)
    for name, version, pay, prev, rec in _all_payloads():
        n, pos = read_varint(pay, len(MAGIC))
        head_end = pos + n // 2
        cuts = set(range(min(head_end + 8, len(pay)))) | set(np.linspace(0, len(pay) - 1, 40).astype(int).tolist())
        for cut in sorted(cuts):
            with pytest.raises(StreamFormatError):
                decode_frame(pay[:cut], prev)
        positions = list(range(4, min(head_end + 8, len(pay))))
        if len(positions) > 120:
            positions = sorted(rng.choice(positions, 120, replace=False).tolist())
        for i in positions + list(rng.integers(head_end, len(pay), 40)):
            for bit in range(8):
                b = bytearray(pay)
                b[i] ^= 1 << bit
                try:
                    got = decode_frame(bytes(b), prev)
                except StreamFormatError:
                    continue
                assert got.tobytes() == rec.tobytes(), (name, version, i, bit)


def test_corrupt_format_4_header_fields_are_format_errors():
    """Step 0 / NaN / negative, unknown flags, a huge shape, a format-4 header in an old zstd frame or an
    old header in a magicless one: StreamFormatError before anything is allocated or divided."""
    frame = encode_frame(moving_field(0), 1e-3)
    hdr, rest = _header(frame.payload)
    at = hdr.find(struct.pack("<f", np.float32(1e-3)))
    assert at > 0

    def pack(h, z=None, rest=rest):
        body = h if z is None else z
        n = 2 * len(body) + (z is not None)
        out = bytearray(MAGIC)
        while n >= 0x80:
            out.append((n & 0x7F) | 0x80)
            n >>= 7
        out.append(n)
        return bytes(out) + body + rest

    assert decode_frame(pack(hdr)).tobytes() == frame.reconstruction.tobytes()
    for bad in (0.0, -1e-3, float("nan"), float("inf")):
        with pytest.raises(StreamFormatError, match="corrupt payload"):
            decode_frame(pack(hdr[:at] + struct.pack("<f", bad) + hdr[at + 4:]))
    with pytest.raises(StreamFormatError, match="flags"):
        decode_frame(pack(hdr[:1] + bytes([0x7F]) + hdr[2:]))
    with pytest.raises(StreamFormatError, match="corrupt payload"):  # version 4, 2 axes of 2^20: 2^40 values
        decode_frame(pack(bytes([4, 0, 2, 0x80, 0x80, 0x40, 0x80, 0x80, 0x40]) + b"\0" * 64))
    with pytest.raises(StreamFormatError, match="compressed another way"):
        decode_frame(pack(hdr, zstandard.ZstdCompressor().compress(hdr)))
    old = _payload_as(_quantized("intra default"), 3)
    old_hdr, old_rest = _header(old)
    magicless = zstandard.ZstdCompressor(compression_params=zstandard.ZstdCompressionParameters.from_level(
        3, format=zstandard.FORMAT_ZSTD1_MAGICLESS)).compress(old_hdr)
    with pytest.raises(StreamFormatError, match="compressed another way"):
        decode_frame(pack(old_hdr, magicless, old_rest))
    with pytest.raises(StreamFormatError, match="format version 8"):
        decode_frame(pack(bytes([8]) + hdr[1:]))


def test_stream_of_format_4_and_5_frames_decodes_in_a_chain():
    """StreamEncoder writes format 4 (and 5 with adaptive=True where shorter); StreamDecoder follows."""
    for adaptive in (False, True):
        enc, dec, versions = StreamEncoder("psnr", 50.0, adaptive=adaptive), StreamDecoder(), set()
        for t in range(5):
            f = enc.encode(moving_field(t, (33, 40)))
            versions.add(frame_info(f.payload)["version"])
            assert dec.decode(f.payload).tobytes() == f.reconstruction.tobytes()
        assert versions <= {4, 5} if adaptive else versions == {4}


def _bomb_payload(megabytes):
    """A v4 payload whose compressed header (a real prefix for an 8 x 8 frame) inflates to ``megabytes`` MB."""
    params = zstandard.ZstdCompressionParameters.from_level(19, format=zstandard.FORMAT_ZSTD1_MAGICLESS,
                                                            write_content_size=False)
    c = zstandard.ZstdCompressor(compression_params=params).compressobj()
    z = c.compress(bytes([4, 0, 2, 8, 8]))
    for _ in range(megabytes):
        z += c.compress(bytes(1 << 20))
    z += c.flush()
    out = bytearray(MAGIC)
    write_varint(out, 2 * len(z) + 1)
    return bytes(out) + z


def test_compressed_header_cannot_inflate_beyond_what_its_shape_needs():
    pay = _bomb_payload(64)  # a few KB that inflate to 64 MB: an 8 x 8 frame's header has at most ~66 KB
    assert len(pay) < 64 * 1024
    with pytest.raises(StreamFormatError, match="inflates beyond"):
        decode_frame(pay)


def _one_segment_tables(shape, nb):
    """Format 4 tables with one histogram row of ``nb`` bins per segment (a declared width, one used bin)."""
    from stagelearn.analytics.stream_codec.histogram_coding import write_segment_heads
    from stagelearn.analytics.stream_codec.interpolation import as_3d_shape
    sizes = merge_segments(level_counts(as_3d_shape(shape)))
    k = len(sizes)
    bits = np.zeros(64 + 64 * k, np.uint8)
    bp = write_segment_heads(False, np.full(k, 3, np.int64), np.zeros(k, np.int64), np.full(k, nb, np.int64), bits, 0)
    return bits[:(bp + 7) // 8].tobytes(), sizes


def test_histogram_wider_than_the_code_range_is_refused():
    shape = (1 << 20,)
    tables, _ = _one_segment_tables(shape, 2 * RADIUS + 3)  # one bin more than codes in [-radius, radius + 1]
    pay = write_payload(4, np.float32, shape, False, (1e-3, 1.5, 4.0), np.zeros((1, 3), np.int64),
                        np.zeros(0, np.float32), 0, 0, tables, b"", 3)
    with pytest.raises(StreamFormatError, match="truncated segment headers"):
        decode_frame(pay)


def test_histogram_width_is_bounded_whatever_radius_the_header_declares():
    """A corrupt radius (2^30) does not widen the tables the decoder allocates: ``MAX_BINS`` (the
    default radius's code range, the radius every payload was written with) bounds them; before, a
    few dozen bytes declaring 2^20-bin histograms in each of the 9 segments of this shape made the decoder
    fill ~230 MB before it found the histograms corrupt."""
    from stagelearn.analytics.stream_codec.entropy_coding import MAX_BINS
    assert MAX_BINS == 2 * RADIUS + 2
    shape = (1 << 20,)
    tables, sizes = _one_segment_tables(shape, 1 << 20)
    assert len(sizes) >= 8 and len(tables) < 200
    pay = write_payload(4, np.float32, shape, False, (1e-3, 1.5, 4.0), np.zeros((1, 3), np.int64),
                        np.zeros(0, np.float32), 0, 0, tables, b"", 3, radius=1 << 30)
    assert frame_info(pay)["radius"] == 1 << 30
    with pytest.raises(StreamFormatError, match="truncated segment headers"):
        decode_frame(pay)


def test_segment_wider_than_max_bins_is_stored_raw_and_round_trips():
    """Codes spanning more than ``MAX_BINS`` (only a radius above the default's can give them) are a
    raw segment, not a wider table."""
    from stagelearn.analytics.stream_codec.entropy_coding import MAX_BINS, decode_codes, encode_codes
    codes = np.zeros(5000, np.int32)
    codes[7], codes[4000] = -40000, 40000  # three distinct codes, 80,001 bins
    tables, words = encode_codes(codes, [5000], compact=True)
    assert len(tables) >= 4 * codes.size  # raw int32s
    back, _ = decode_codes(tables, words, [5000], compact=True, max_bins=1 << 20)
    assert np.array_equal(back, codes)
    codes[4000] = 40000 - (80001 - MAX_BINS)  # exactly MAX_BINS bins: one histogram
    tables, words = encode_codes(codes, [5000], compact=True)
    assert len(tables) < 100
    assert np.array_equal(decode_codes(tables, words, [5000], compact=True)[0], codes)


def test_format_3_lowest_code_outside_int32_is_refused():
    shape = (100,)
    tab = bytearray()
    for v in (3, (1 << 64) - 1, 3, 3, 0, 90, 0, 7, 0, 3):  # kind ONE, lo = -2^63 (zigzag), 3 bins, a histogram
        write_varint(tab, v)
    words = np.random.default_rng(0).integers(0, 1 << 16, 80).astype("<u2")
    pay = write_payload(3, np.float32, shape, False, (1e-3, 1.5, 4.0), np.zeros((1, 3), np.int64),
                        np.zeros(0, np.float32), 0, len(words), bytes(tab), words.tobytes(), 3)
    with pytest.raises(StreamFormatError, match="lowest code"):
        decode_frame(pay)


@pytest.mark.parametrize("version", [2, 4])
def test_empty_axis_and_underflowing_step_are_format_errors(version):
    empty = write_payload(version, np.float32, (0, 20), False, (1e-3, 1.5, 4.0), np.zeros((1, 3), np.int64),
                          np.zeros(0, np.float32), 0, 0, b"", b"", 3)
    with pytest.raises(StreamFormatError, match="empty axis"):
        decode_frame(empty)
    tiny = write_payload(version, np.float32, (64, 64), False, (1e-45, 1.5, 4.0), np.zeros((1, 3), np.int64),
                         np.zeros(0, np.float32), 0, 0, b"", b"", 3)
    with pytest.raises(StreamFormatError, match="underflows"):
        decode_frame(tiny)
