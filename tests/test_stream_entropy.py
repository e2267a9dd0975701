"""Interleaved rANS of the stream codec (analytics/stream_codec/rans.py, entropy_coding.py).

Round trips on random and adversarial code streams in both lane layouts, the frequency tables
against a plain numpy reference, corrupt and truncated payloads (a StreamFormatError, never a crash
or a hang), and the same decoded codes and frames in other processes with other BLAS and thread
settings.
"""

import os
import sys
import zlib

import numpy as np
import pytest

from stagelearn.analytics.stream_codec import StreamDecoder, StreamEncoder, StreamFormatError, decode_frame
from stagelearn.analytics.stream_codec.entropy_coding import (ENTROPY_TAG, N_LANES, PROB_SCALE, decode_codes,
                                                              encode_codes, quantize_frequencies)

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from test_stream_codec import _run, moving_field  # noqa: E402  (the subprocess helper and test field)

RADIUS = 32767


def _reference_frequencies(counts):
    """The frequency rule written out in numpy (the first codec's implementation)."""
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


def _streams():
    rng = np.random.default_rng(7)
    lap = lambda n, b: np.round(rng.laplace(0, b, n)).astype(np.int32)  # noqa: E731
    return {
        "empty": ([], []),
        "single value": ([5], [1]),
        "all zeros": ([0] * 10000, [4096, 5904]),
        "one symbol per segment": ([3] * 4096 + [-2] * 4099, [4096, 4099]),
        "two symbols": (list(rng.integers(0, 2, 9001)), [9001]),
        "laplace, odd segment sizes": (list(lap(40003, 2.0)), [1, 2, 3, 4097, 35900]),
        "near-certain zero": (list(lap(65536, 0.05)), [16384, 49152]),
        "max radius and escapes": (list(rng.choice([-RADIUS, RADIUS, RADIUS + 1, 0, 1], 12000)), [5000, 7000]),
        "wide alphabet": (list(rng.integers(-8000, 8000, 20000)), [20000]),
        "raw segment (too many codes)": (list(rng.integers(-2 ** 20, 2 ** 20, 30000)), [30000]),
        "mixed kinds": ([7] * 100 + list(lap(5000, 3.0)) + list(rng.integers(-2 ** 20, 2 ** 20, 30000)),
                        [100, 5000, 30000]),
    }


@pytest.mark.parametrize("lanes", [None, 1, N_LANES])
@pytest.mark.parametrize("name", list(_streams()))
def test_round_trip_of_adversarial_streams(name, lanes):
    codes, sizes = _streams()[name]
    codes = np.asarray(codes, np.int32)
    tables, words = encode_codes(codes, sizes, lanes=lanes)
    if sizes and lanes is not None:  # tagged with N_LANES states; one state: the first format's layout
        assert (tables[0] >= ENTROPY_TAG) == (lanes == N_LANES)
    back, pos = decode_codes(tables, words, sizes)
    assert back.dtype == np.int32 and np.array_equal(back, codes)
    assert pos == len(tables)


def test_lanes_are_chosen_by_stream_size():
    rng = np.random.default_rng(3)
    small = np.round(rng.laplace(0, 0.3, 8192)).astype(np.int32)
    big = np.round(rng.laplace(0, 4.0, 65536)).astype(np.int32)
    assert encode_codes(small, [8192])[0][0] in (2, 3)  # one state: the first format's kinds (rANS segment)
    assert encode_codes(big, [65536])[0][0] in (ENTROPY_TAG + 2, ENTROPY_TAG + 3)  # N_LANES states: tagged
    with pytest.raises(ValueError, match="lanes"):
        encode_codes(big, [65536], lanes=3)
    with pytest.raises(ValueError, match="segment sizes"):
        encode_codes(big, [100])


def test_frequencies_equal_the_numpy_reference():
    rng = np.random.default_rng(11)
    cases = [[1, 0, 10 ** 9], [5], list(range(1, 3000)), [1] * 16000 + [10 ** 6], [0, 0, 0], [3, 3, 3]]
    cases += [rng.integers(0, 1000, rng.integers(1, 500)) * (rng.random(1) < 0.9) for _ in range(50)]
    cases += [rng.integers(0, 3, 16384), np.r_[np.ones(16383, np.int64), 10 ** 7]]
    for c in cases:
        assert np.array_equal(quantize_frequencies(c), _reference_frequencies(c)), c


def test_unknown_entropy_tags_are_refused():
    codes = np.round(np.random.default_rng(0).laplace(0, 2, 5000)).astype(np.int32)
    tables, words = encode_codes(codes, [5000])
    for tag in (2 * ENTROPY_TAG, 2 * ENTROPY_TAG + 3, 0x7F):
        with pytest.raises(ValueError, match="entropy format"):
            decode_codes(bytes([tag]) + tables[1:], words, [5000])
    with pytest.raises(IndexError):
        decode_codes(b"", words, [5000])  # a payload cut before its tables (frame.py: StreamFormatError)


def test_corrupt_and_truncated_code_streams_raise():
    rng = np.random.default_rng(2)
    codes = np.round(rng.laplace(0, 3, 20000)).astype(np.int32)
    for lanes in (1, N_LANES):
        tables, words = encode_codes(codes, [4096, 15904], lanes=lanes)
        for cut in (0, 1, 5, len(words) // 2, len(words) - 1):
            with pytest.raises(ValueError):
                decode_codes(tables, words[:cut], [4096, 15904])
        with pytest.raises(ValueError):
            decode_codes(tables[:len(tables) // 2], words, [4096, 15904])
        # a histogram with more distinct codes than a table holds (a corrupt payload could say so); 70,000
        # bins are also over MAX_BINS, refused first, so 20,000 (> PROB_SCALE / 4 distinct) tests the distinct count
        with pytest.raises(ValueError):
            decode_codes(bytes([(ENTROPY_TAG if lanes == N_LANES else 0) + 3, 0]) + _varint(70000)
                         + _dense_hist(70000),
                         words, [70000])
        with pytest.raises(ValueError, match="more distinct codes"):
            decode_codes(bytes([(ENTROPY_TAG if lanes == N_LANES else 0) + 3, 0]) + _varint(20000)
                         + _dense_hist(20000),
                         words, [20000])
        assert_flips_raise_or_decode_in_shape(lambda t, w: decode_codes(t, w, [4096, 15904]), tables, words,
                                              codes.shape, rng, 300)


def assert_flips_raise_or_decode_in_shape(decode, tables, words, shape, rng, n):
    """``n`` decodes of ``tables``, ``words`` with one word (odd tries) or table byte (even tries) flipped:
    each raises ``ValueError`` or gives codes of ``shape`` (wrong codes, never a crash or a hang)."""
    for k in range(n):
        bad_words, bad_tables = words.copy(), bytearray(tables)
        if k % 2:
            bad_words[rng.integers(0, len(words))] ^= rng.integers(1, 1 << 16)
        else:
            bad_tables[rng.integers(0, len(tables))] ^= rng.integers(1, 256)
        try:
            back, _ = decode(bytes(bad_tables), bad_words)
        except ValueError:
            continue
        assert back.shape == shape


def _varint(v):
    out = bytearray()
    while v >= 0x80:
        out.append((v & 0x7F) | 0x80)
        v >>= 7
    out.append(v)
    return bytes(out)


def _dense_hist(n):
    return _varint(n) + b"".join(_varint(0) + _varint(1) for _ in range(n))


def test_corrupt_frames_raise_format_errors_without_hanging():
    """Every truncation and many byte flips of real payloads (both lane layouts): StreamFormatError or,
    where the flip hit nothing the decoder reads, the producer's frame bit for bit."""
    rng = np.random.default_rng(4)
    cases = []
    for shape, target in (((40, 36, 32), 70.0), ((24, 20, 18), 40.0)):
        enc = StreamEncoder("psnr", target)
        f0 = enc.encode(moving_field(0, shape))
        f1 = enc.encode(moving_field(1, shape))
        cases.append((f1, f0.reconstruction))
    tags = set()
    for frame, prev in cases:
        payload = frame.payload
        tags.add(decode_frame(payload, prev).tobytes() == frame.reconstruction.tobytes())
        for cut in sorted(set(np.linspace(0, len(payload) - 1, 40).astype(int))):
            with pytest.raises(StreamFormatError):
                decode_frame(payload[:cut], prev)
        for _ in range(150):
            b = bytearray(payload)
            i = int(rng.integers(4, len(b)))
            b[i] ^= int(rng.integers(1, 256))
            try:
                rec = decode_frame(bytes(b), prev)
            except StreamFormatError:
                continue
            assert rec.tobytes() == frame.reconstruction.tobytes()
    assert tags == {True}


_PRODUCER = """
import json, sys, zlib, numpy as np
sys.path.insert(0, {tests!r})
from test_stream_codec import moving_field
from stagelearn.analytics.stream_codec import StreamEncoder
from stagelearn.analytics.stream_codec.entropy_coding import encode_codes
out = []
for shape, target in (((40, 36, 32), 70.0), ((20, 18, 16), 45.0)):
    enc = StreamEncoder("psnr", target)
    for t in range(3):
        f = enc.encode(moving_field(t, shape))
        open({d!r} + f"/f{{shape[0]}}_{{t}}.bin", "wb").write(f.payload)
        out.append(zlib.crc32(f.reconstruction.tobytes()))
rng = np.random.default_rng(9)
codes = np.round(rng.laplace(0, 3, 50001)).astype(np.int32)
for lanes in (1, 4):
    tables, words = encode_codes(codes, [4096, 45905], lanes=lanes)
    open({d!r} + f"/codes{{lanes}}.bin", "wb").write(len(tables).to_bytes(4, "little") + tables + words.tobytes())
out.append(zlib.crc32(codes.tobytes()))
print(json.dumps(out))
"""

_DECODER = """
import json, zlib, numpy as np
from stagelearn.analytics.stream_codec import StreamDecoder
from stagelearn.analytics.stream_codec.entropy_coding import decode_codes
out = []
for n in (40, 20):
    dec = StreamDecoder()
    out += [zlib.crc32(dec.decode(open({d!r} + f"/f{{n}}_{{t}}.bin", "rb").read()).tobytes()) for t in range(3)]
crcs = set()
for lanes in (1, 4):
    b = open({d!r} + f"/codes{{lanes}}.bin", "rb").read()
    k = int.from_bytes(b[:4], "little")
    codes, _ = decode_codes(b[4:4 + k], np.frombuffer(b[4 + k:], np.uint16), [4096, 45905])
    crcs.add(zlib.crc32(codes.tobytes()))
out.append(crcs.pop() if len(crcs) == 1 else -1)
print(json.dumps(out))
"""


@pytest.mark.parametrize("producer_env,decoder_env", [
    ({"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
     {"OPENBLAS_CORETYPE": None, "OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"}),
    ({"OPENBLAS_CORETYPE": None, "NUMBA_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
     {"OPENBLAS_CORETYPE": "Haswell", "NUMBA_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}),
])
def test_interleaved_streams_decode_the_same_in_other_processes(tmp_path, producer_env, decoder_env):
    tests = os.path.dirname(os.path.abspath(__file__))
    produced = _run(_PRODUCER.format(tests=tests, d=str(tmp_path)), producer_env)
    decoded = _run(_DECODER.format(d=str(tmp_path)), decoder_env)
    assert decoded == produced
    tags = {decode_codes_tag(tmp_path / f"codes{lanes}.bin") >= ENTROPY_TAG for lanes in (1, 4)}
    assert tags == {False, True}  # one state and N_LANES states
    dec = StreamDecoder()  # and this process
    here = [zlib.crc32(dec.decode((tmp_path / f"f40_{t}.bin").read_bytes()).tobytes()) for t in range(3)]
    assert here == produced[:3]


def decode_codes_tag(path):
    b = path.read_bytes()
    return b[4]


def test_outlier_codes_that_do_not_match_the_outliers_raise():
    """More (or fewer) escape codes than outlier values: a ValueError, never a read past the values."""
    from stagelearn.analytics.stream_codec.interpolation import decode_field, encode_field, n_levels

    x = moving_field(0, (9, 10, 11)).astype(np.float64)
    x[2, 3, 4] = 1e9
    levels = n_levels(x.shape)
    q, w = np.full(levels + 1, 1e-3), np.tile([1.0, 1.0, -1.0], (levels, 1))
    codes, outliers, rec, _, _ = encode_field(x, None, q, w, radius=RADIUS)
    assert outliers.size >= 1
    back = decode_field(codes, outliers, x.shape, x.dtype, None, q, w, radius=RADIUS)
    assert back.tobytes() == rec.tobytes()
    more = codes.copy()
    more[::7] = RADIUS + 1
    for c, o in ((more, outliers), (codes, outliers[:0]), (codes, np.r_[outliers, 1.0])):
        with pytest.raises(ValueError, match="outlier"):
            decode_field(c, o, x.shape, x.dtype, None, q, w, radius=RADIUS)


def test_payloads_of_the_first_single_state_format_still_decode():
    """tests/data/stream_codec_v1_frame.bin: an intra frame (moving_field(0, (12, 10, 9)), step 1e-3)
    written by the first stream codec (one rANS state, before interleaving). One state keeps that
    layout: it decodes to the producer's reconstruction (decode_frame checks its CRC-32), within
    half a step of the field, and re-coding its codes with one state gives the same bytes."""
    from stagelearn.analytics.stream_codec import frame_info
    from stagelearn.analytics.stream_codec.entropy_coding import merge_segments
    from stagelearn.analytics.stream_codec.interpolation import level_counts

    old = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stream_codec_v1_frame.bin"),
               "rb").read()
    rec = decode_frame(old)
    x = moving_field(0, (12, 10, 9))
    assert rec.shape == x.shape and np.max(np.abs(rec.astype(np.float64) - x)) <= 0.5e-3 * (1 + 1e-6)
    info = frame_info(old)
    sizes = merge_segments(level_counts(x.shape))
    codes, _ = decode_codes(info["_tables"], info["_words"], sizes)
    tables, words = encode_codes(codes, sizes, lanes=1)
    assert tables == bytes(info["_tables"]) and np.array_equal(words, info["_words"])


def test_corrupt_header_fields_are_format_errors():
    """A header with step 0, level factors outside [1, 16] or a shape beyond any real frame is refused
    as a StreamFormatError before anything is allocated or divided (not ZeroDivisionError/MemoryError)."""
    import struct as _struct

    import zstandard

    from stagelearn.analytics.stream_codec import StreamFormatError, decode_frame, encode_frame
    from stagelearn.analytics.stream_codec.frame import MAGIC
    from stagelearn.analytics.stream_codec.varint import read_varint

    f = encode_frame(moving_field(0), 1e-3, alpha=1.25)  # format 4 writes alpha, beta only when not 1.5, 4.0
    n, pos = read_varint(f.payload, len(MAGIC))
    hdr = f.payload[pos:pos + n // 2]
    if n % 2:  # zstd-compressed header (format 4: without zstd's magic): send it plain (bit 0 of the length clear)
        hdr = zstandard.ZstdDecompressor(format=zstandard.FORMAT_ZSTD1_MAGICLESS).decompress(hdr)
    rest = f.payload[pos + n // 2:]
    at = hdr.find(_struct.pack("<3f", np.float32(1e-3), 1.25, 4.0))
    assert at > 0
    assert decode_frame(bytes(MAGIC) + bytes(_varint(len(hdr) << 1)) + hdr + rest).tobytes() == \
        f.reconstruction.tobytes()  # the plain re-packing itself decodes
    for bad in ((0.0, 1.25, 4.0), (1e-3, 0.5, 4.0), (1e-3, 1.25, 1e9), (float("nan"), 1.25, 4.0)):
        h = hdr[:at] + _struct.pack("<3f", *bad) + hdr[at + 12:]
        with pytest.raises(StreamFormatError, match="corrupt payload"):
            decode_frame(bytes(MAGIC) + bytes(_varint(len(h) << 1)) + h + rest)
    body = bytes(_varint(3) + _varint(0) + _varint(2) + _varint(2 ** 20) + _varint(2 ** 20))  # 2^40 values
    with pytest.raises(StreamFormatError, match="corrupt payload"):
        decode_frame(bytes(MAGIC) + bytes(_varint(len(body) << 1)) + body + b"\0" * 64)



def test_stored_format_3_payloads_still_decode_bit_for_bit():
    """tests/data/stream_codec_v3_frames.bin: three frames of moving_field(t, (24, 40, 36)), t = 0, 1, 2,
    coded by ``StreamEncoder("psnr", 60.0)`` before the decoder's speed work (format 3: a keyframe and a
    predicted frame with 4 interleaved rANS states, a predicted frame with one), each as a 4-byte
    little-endian length and the payload. They decode, in a chain, to the producer's reconstructions
    (SHA-256 recorded when they were written; decode_frame also checks each frame's CRC-32)."""
    import hashlib

    from stagelearn.analytics.stream_codec import frame_info

    blob = open(os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "stream_codec_v3_frames.bin"),
                "rb").read()
    payloads, pos = [], 0
    while pos < len(blob):
        n = int.from_bytes(blob[pos:pos + 4], "little")
        payloads.append(blob[pos + 4:pos + 4 + n])
        pos += 4 + n
    want = ["3f39d80bdc61e4e613845e4d30a50ff388b7d0058240bcf6e8ffbdffaeef758d",
            "87f9a306452185cd17ae1776e49d41a49476e9319f4fab7fc403fb82ce839d6d",
            "a8316d993e0c7b8c951b3c2b84a8e88136cc36e8db354b5aaaaddf1bbcd74152"]
    assert len(payloads) == 3
    tags = [bytes(frame_info(p)["_tables"])[0] for p in payloads]
    assert [frame_info(p)["version"] for p in payloads] == [3, 3, 3]
    assert tags[0] >= ENTROPY_TAG and tags[1] >= ENTROPY_TAG and tags[2] < ENTROPY_TAG  # 4 states, 4, one
    dec = StreamDecoder()
    for t, (p, h) in enumerate(zip(payloads, want)):
        rec = dec.decode(p)
        assert hashlib.sha256(rec.tobytes()).hexdigest() == h
        x = moving_field(t, (24, 40, 36))
        assert rec.shape == x.shape and rec.dtype == x.dtype
