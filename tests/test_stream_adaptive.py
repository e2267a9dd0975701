"""Stream codec's context-adaptive binary coder (analytics/stream_codec/adaptive_coding.py, format versions 2 and 5).

Round trips of the coder on codes written here (every magnitude class, the outlier marker), the
frame-level choice (never a longer payload than the static rANS coding of the same codes, the same
reconstruction bit for bit), truncation errors, and a decoder in another process with other BLAS
and thread settings.
"""

import os
import zlib

import numpy as np
import pytest

from stagelearn.analytics.stream_codec import (StreamDecoder, StreamEncoder, StreamFormatError, decode_frame,
                                               encode_frame, frame_info)
from stagelearn.analytics.stream_codec.adaptive_coding import decode_codes_adaptive, encode_codes_adaptive
from stagelearn.analytics.stream_codec.stream import first_weights
from test_stream_codec import _run  # noqa: E402  (decode in a subprocess with other BLAS/thread settings)


def plume(t, shape=(64, 64)):
    """A Gaussian plume drifting over zeros: most codes 0, the adaptive coder's case."""
    grids = np.meshgrid(*[np.arange(n, dtype=np.float64) for n in shape], indexing="ij")
    r2 = sum((g - (0.3 + 0.01 * t) * n) ** 2 for g, n in zip(grids, shape))
    return np.exp(-r2 / 60.0).astype(np.float32)


@pytest.mark.parametrize("shape", [(1, 1, 1), (1, 1, 7), (3, 5, 9), (9, 16, 17)])
@pytest.mark.parametrize("with_prev", [True, False])
def test_adaptive_coder_round_trips_every_magnitude(shape, with_prev):
    rng = np.random.default_rng(sum(shape))
    n = int(np.prod(shape))
    codes = rng.laplace(0, 4, n).astype(np.int32)
    special = np.array([0, 1, -1, 14, 15, 16, -15, 1000, -32767, 32767, 32768], np.int32)  # 32768: outlier mark
    codes[:min(n, special.size)] = special[:n]
    prev = rng.standard_normal(shape).astype(np.float32) if with_prev else None
    q = np.linspace(0.05, 1.0, 12)
    data = encode_codes_adaptive(codes, shape, prev, q)
    back = decode_codes_adaptive(data, shape, prev, q)
    assert back.dtype == np.int32 and np.array_equal(back, codes)


def test_adaptive_coder_spends_almost_nothing_on_zeros():
    shape = (1, 128, 128)
    data = encode_codes_adaptive(np.zeros(128 * 128, np.int32), shape, None, np.ones(8))
    assert len(data) < 40  # 16384 certain zeros
    assert np.array_equal(decode_codes_adaptive(data, shape, None, np.ones(8)), np.zeros(128 * 128, np.int32))


def test_frame_keeps_the_shorter_coding_and_the_same_reconstruction():
    prev, versions = None, set()
    for t in range(6):
        x = plume(t)
        for step in (1e-3, 1e-2):
            a = encode_frame(x, step, prev=prev, adaptive=True)
            s = encode_frame(x, step, prev=prev, adaptive=False)
            assert frame_info(s.payload)["version"] == 4
            assert len(a.payload) <= len(s.payload)
            assert a.reconstruction.tobytes() == s.reconstruction.tobytes()
            versions.add(frame_info(a.payload)["version"])
            rec = decode_frame(a.payload, prev)
            assert rec.tobytes() == a.reconstruction.tobytes()
            # the error bound of the step holds (independent check)
            assert np.max(np.abs(rec.astype(np.float64) - x)) <= step / 2 * (1 + 1e-6) + 1e-7
        prev = a.reconstruction
    assert versions == {4, 5} or versions == {5}
    assert 5 in versions


def test_truncated_or_corrupt_adaptive_payload_raises():
    prev = plume(0)
    f = encode_frame(plume(1), 1e-3, prev=prev, adaptive=True)
    assert frame_info(f.payload)["version"] == 5
    with pytest.raises(StreamFormatError):
        decode_frame(f.payload[:-3], prev)
    bad = bytearray(f.payload)
    bad[len(bad) - 12] ^= 0x5A  # inside the code stream (its last bytes are the coder's flush)
    with pytest.raises(StreamFormatError):
        decode_frame(bytes(bad), prev)
    with pytest.raises(StreamFormatError):  # another previous frame: other contexts, other codes
        decode_frame(f.payload, plume(5))


def test_first_predicted_frame_gets_fitted_weights():
    x0, x1 = plume(0), plume(1)
    w = first_weights(x1, x0)
    assert w is not None and w.shape[1] == 3 and np.isfinite(w).all()
    enc, dec = StreamEncoder("psnr", 50.0, adaptive=True), StreamDecoder()
    for t in range(3):
        x = plume(t)
        f = enc.encode(x)
        assert dec.decode(f.payload).tobytes() == f.reconstruction.tobytes()
        mse = float(np.mean((x.astype(np.float64) - f.reconstruction) ** 2))
        assert 10 * np.log10(float(x.max() - x.min()) ** 2 / mse) >= 50.0


_PRODUCER = """
import json, sys, zlib
sys.path.insert(0, {tests!r})
from test_stream_adaptive import plume
from stagelearn.analytics.stream_codec import StreamEncoder, frame_info
enc, out = StreamEncoder("psnr", 45.0, adaptive=True), []
for t in range(5):
    f = enc.encode(plume(t))
    open({d!r} + f"/f{{t}}.bin", "wb").write(f.payload)
    out.append([zlib.crc32(f.reconstruction.tobytes()), frame_info(f.payload)["version"]])
print(json.dumps(out))
"""

_DECODER = """
import json, zlib
from stagelearn.analytics.stream_codec import StreamDecoder
dec = StreamDecoder()
print(json.dumps([zlib.crc32(dec.decode(open({d!r} + f"/f{{t}}.bin", "rb").read()).tobytes()) for t in range(5)]))
"""




def test_adaptive_frames_decode_bit_for_bit_in_another_process(tmp_path):
    tests = os.path.dirname(os.path.abspath(__file__))
    produced = _run(_PRODUCER.format(tests=tests, d=str(tmp_path)),
                    {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"})
    assert any(v == 5 for _, v in produced)
    decoded = _run(_DECODER.format(d=str(tmp_path)),
                   {"OPENBLAS_CORETYPE": None, "OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"})
    assert decoded == [c for c, _ in produced]
    dec = StreamDecoder()
    assert [zlib.crc32(dec.decode((tmp_path / f"f{t}.bin").read_bytes()).tobytes()) for t in range(5)] == decoded
