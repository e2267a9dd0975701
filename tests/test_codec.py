"""Tiling, transform codec, payload framing and the encoder's named-array format."""

import numpy as np
import pytest

from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.codec import decode_block, encode_block, encode_raw_block, parse_payload, quant_step_for_psnr
from stagelearn.analytics.encoder import Encoder, EncoderFormatError
from stagelearn.analytics.metrics import psnr
from stagelearn.analytics.tiling import from_tiles, tile_grid, to_tiles


def smooth_field(shape, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    for ax in range(len(shape)):
        x = np.cumsum(x, axis=ax)
    return (x - x.mean()) / x.std()


@pytest.mark.parametrize("shape, tile", [((8, 8, 8), (4, 4, 4)), ((10, 7, 5), (4, 4, 4)), ((9, 16), (8, 8)), ((13,), (4,))])
def test_tiles_round_trip(shape, tile):
    a = np.arange(np.prod(shape), dtype=np.float64).reshape(shape)
    t = to_tiles(a, tile)
    assert t.shape == (int(np.prod(tile_grid(shape, tile))), int(np.prod(tile)))
    np.testing.assert_array_equal(from_tiles(t, shape, tile), a)


def test_tile_content_is_a_contiguous_box():
    a = np.arange(8 * 8).reshape(8, 8)
    t = to_tiles(a, (4, 4))
    np.testing.assert_array_equal(t[1].reshape(4, 4), a[0:4, 4:8])


def _codec(x, tile, psnr_db):
    est = IncrementalPCA().partial_fit(to_tiles(x, tile))
    return TransformCodec(est.mean_, est.components_, quant_step_for_psnr(psnr_db, float(np.ptp(x))))


@pytest.mark.parametrize("target", [35.0, 45.0, 55.0])
def test_error_target_is_met(target):
    """With a full orthonormal basis the PSNR reaches the target (dead-zone rounding overshoots a little)."""
    x = smooth_field((24, 24, 24)).astype(np.float32)
    eb = encode_block(x, _codec(x, (4, 4, 4), target), (4, 4, 4), raw_fraction=0.0)
    got = psnr(x, eb.reconstruction)
    assert target - 0.2 <= got <= target + 5.0, got


@pytest.mark.parametrize("target", [30.0, 45.0, 60.0])
@pytest.mark.parametrize("n_components", [None, 40])
@pytest.mark.parametrize("raw_fraction", [0.0, 0.05])
def test_rate_control_hits_target_mse(target, n_components, raw_fraction):
    """With ``target_mse`` the block lands in [target, target + 0.5 dB], full or truncated basis, with raw tiles,
    on a block that is not a whole number of tiles (padding does not count)."""
    x = smooth_field((26, 24, 23), seed=2).astype(np.float32)
    x[:12] *= 0.01  # a quiet half, where the uniform-noise model of the step is far off
    est = IncrementalPCA(n_components).partial_fit(to_tiles(x, (4, 4, 4)))
    codec = TransformCodec(est.mean_, est.components_, 1.0)
    rng_x = float(np.ptp(x))
    eb = encode_block(x, codec, (4, 4, 4), raw_fraction=raw_fraction, target_mse=rng_x**2 * 10 ** (-target / 10))
    got = psnr(x, eb.reconstruction)
    np.testing.assert_array_equal(decode_block(eb.payload, codec)[0], eb.reconstruction)
    assert got >= target
    if n_components is None or got < 59:  # a truncated basis cannot go below its own residual
        assert got <= target + 0.5, got


def test_payload_round_trip_and_raw_tiles_exact():
    x = smooth_field((20, 16, 12), seed=1).astype(np.float32)
    codec = _codec(x, (4, 4, 4), 40.0)
    eb = encode_block(x, codec, (4, 4, 4), raw_fraction=0.05, header={"step": 7, "variable": "V"})
    block, header, raw_tiles = decode_block(eb.payload, codec)
    np.testing.assert_array_equal(block, eb.reconstruction)
    assert header["step"] == 7 and header["n_raw"] == eb.n_raw_tiles == int(0.05 * header["n_tiles"])
    # the raw tiles are the worst ones and are reconstructed exactly
    tiles, rec = to_tiles(x, (4, 4, 4)), to_tiles(block, (4, 4, 4))
    exact = np.all(tiles == rec, axis=1)
    assert exact.sum() >= eb.n_raw_tiles
    assert eb.stats.psnr_db == pytest.approx(psnr(x, block))
    assert eb.stats.max_abs_error == pytest.approx(float(np.abs(x - block).max()))


def test_non_finite_tiles_travel_raw():
    x = smooth_field((8, 8, 8), seed=3).astype(np.float32)
    codec = _codec(x, (4, 4, 4), 40.0)
    x[1, 1, 1], x[6, 6, 6] = np.nan, np.inf
    eb = encode_block(x, codec, (4, 4, 4), raw_fraction=0.0, target_mse=1e-4)
    block, _, _ = decode_block(eb.payload, codec)
    assert np.isnan(block[1, 1, 1]) and np.isinf(block[6, 6, 6])
    assert eb.n_raw_tiles == 2
    np.testing.assert_array_equal(block[:4, :4, :4], x[:4, :4, :4])


def test_raw_payload_round_trip():
    x = smooth_field((6, 5, 4)).astype(np.float32)
    block, header, _ = decode_block(encode_raw_block(x, header={"step": 0}))
    np.testing.assert_array_equal(block, x)
    assert header["kind"] == "raw"


def test_codes_pack_unpack():
    rng = np.random.default_rng(0)
    codes = np.rint(rng.laplace(scale=[0.1, 1, 10, 300], size=(500, 4))).astype(np.int32)
    codec = TransformCodec(np.zeros(4), np.eye(4), 1.0)
    np.testing.assert_array_equal(TransformCodec.unpack(codec.pack(codes), 500, 4), codes)
    np.testing.assert_array_equal(TransformCodec.unpack(codec.pack(np.zeros((3, 4), np.int32)), 3, 4), 0)
    huge = codes.copy()
    huge[7, 2] = 10**7  # far outside the model range: that column is escaped, the others still coded
    np.testing.assert_array_equal(TransformCodec.unpack(codec.pack(huge), 500, 4), huge)


def test_entropy_coder_beats_raw_integers():
    """Laplace-distributed codes cost close to their entropy, far less than int32."""
    rng = np.random.default_rng(1)
    codes = np.rint(rng.laplace(scale=2.0, size=(4000, 8))).astype(np.int32)
    nbytes = len(TransformCodec(np.zeros(8), np.eye(8), 1.0).pack(codes))
    assert nbytes < codes.size * 4 / 8  # under 4 bits per code


@pytest.mark.parametrize("corrupt", [b"XXXX" + b"\0" * 10, b"SLP1\xff\xff\x00\x00{}", b"SLP1\x02\x00\x00\x00{]"])
def test_bad_payload_is_rejected(corrupt):
    with pytest.raises(ValueError):
        parse_payload(corrupt)


def _encoder():
    x = smooth_field((16, 16, 16)).astype(np.float32)
    est = IncrementalPCA(8).partial_fit(to_tiles(x, (4, 4, 4)))
    return Encoder.from_learners({"U": est}, version=3, trained_until_step=12, tile_shapes={"U": (4, 4, 4)},
                                 ranges={"U": (float(x.min()), float(x.max()))}, psnr_db=40.0, raw_fraction=0.02)


def test_encoder_named_arrays_round_trip():
    enc = _encoder()
    back = Encoder.from_arrays(enc.spec(), enc.arrays())
    assert (back.version, back.trained_until_step, back.psnr_db) == (3, 12, 40.0)
    np.testing.assert_array_equal(back.variables["U"].components_, enc.variables["U"].components_)
    frame_back = Encoder.from_frame(enc.to_frame())
    np.testing.assert_array_equal(frame_back.variables["U"].mean_, enc.variables["U"].mean_)


@pytest.mark.parametrize("tamper, match", [
    (lambda s, a: a.update({"U/extra": np.zeros(3, np.float32)}), "unexpected"),
    (lambda s, a: a.pop("U/mean_"), "missing"),
    (lambda s, a: a.update({"U/mean_": np.zeros(5, np.float32)}), "spec says"),
    (lambda s, a: a.update({"U/mean_": a["U/mean_"].astype(np.float64)}), "spec says"),
    (lambda s, a: a["U/components_"].__setitem__((0, 0), np.nan), "NaN"),
    (lambda s, a: s.update({"format": "pickle"}), "unknown encoder format"),
    (lambda s, a: s.update({"psnr_db": -1}), "psnr_db"),
    (lambda s, a: s["variables"]["U"].update({"tile_shape": [2, 2, 2]}), "tile shape"),
])
def test_crafted_encoder_is_rejected(tamper, match):
    enc = _encoder()
    spec, arrays = enc.spec(), enc.arrays()
    tamper(spec, arrays)
    with pytest.raises(EncoderFormatError, match=match):
        Encoder.from_arrays(spec, arrays)
