"""Temporal prediction, the pointwise error bound (ZFP corrections) and the autoencoder codec."""

import numpy as np
import pytest
import zfpy

from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.codec import decode_block, encode_block, parse_payload
from stagelearn.analytics.correction import absolute_bound
from stagelearn.analytics.encoder import Encoder, EncoderFormatError, VariableModel
from stagelearn.analytics.tiling import to_tiles

TILE = (4, 4, 4)


def drifting_field(t, n=16, seed=0):
    """A smooth 3-D pattern that moves slowly in time, plus a little noise."""
    rng = np.random.default_rng(seed + t)
    x = np.linspace(0, 1, n)
    X, Y, Z = np.meshgrid(x, x, x, indexing="ij")
    f = np.sin(6 * X + 0.05 * t) * np.cos(5 * Y) + 0.3 * np.sin(7 * Z - 0.03 * t)
    return (f + 1e-3 * rng.standard_normal(f.shape)).astype(np.float32)


def pca_codec(x):
    est = IncrementalPCA().partial_fit(to_tiles(x, TILE))
    return TransformCodec(est.mean_, est.components_, 1.0)


def test_temporal_prediction_round_trips_and_saves_bytes():
    codec = pca_codec(drifting_field(0))
    target = 4.0 * 10 ** (-45 / 10)  # 45 dB on a range of ~2
    sizes = {False: 0, True: 0}
    for temporal in (False, True):
        prev = None
        for t in range(1, 7):
            x = drifting_field(t)
            eb = encode_block(x, codec, TILE, raw_fraction=0.0, target_mse=target, prev=prev if temporal else None)
            block, header, _ = decode_block(eb.payload, codec, prev=prev if temporal else None)
            np.testing.assert_array_equal(block, eb.reconstruction)  # decoder == producer, bit for bit
            assert eb.stats.mse <= target * (1 + 1e-6)  # closed loop: no drift of the error
            assert (header["n_inter"] > 0) == (temporal and t > 1)
            prev = eb.reconstruction
            sizes[temporal] += len(eb.payload)
    assert sizes[True] < 0.9 * sizes[False], sizes


def test_predicted_payload_needs_the_previous_reconstruction():
    codec = pca_codec(drifting_field(0))
    first = encode_block(drifting_field(1), codec, TILE, raw_fraction=0.0, target_mse=1e-4)
    second = encode_block(drifting_field(2), codec, TILE, raw_fraction=0.0, target_mse=1e-4, prev=first.reconstruction)
    with pytest.raises(ValueError, match="previous step"):
        decode_block(second.payload, codec)


@pytest.mark.parametrize("bound", [1e-2, 1e-3, 1e-4])
def test_error_bound_holds_pointwise(bound):
    x = drifting_field(3)
    x[0, 0, :4] = 50.0  # far outside the training range: large error, the bound still holds
    codec = pca_codec(drifting_field(0))
    eb = encode_block(x, codec, TILE, raw_fraction=0.0, target_mse=1e-2, abs_bound=bound)
    block, header, _ = decode_block(eb.payload, codec)
    np.testing.assert_array_equal(block, eb.reconstruction)
    err = float(np.max(np.abs(block.astype(np.float64) - x)))
    assert err <= bound
    # the bound binds: the step is capped at it, so the error comes near it with few or no corrections
    assert err >= 0.25 * bound and header["n_corrected"] <= 0.1 * header["n_tiles"], (err, header["n_corrected"])


def test_error_bound_correction_is_zfp_of_the_residual():
    """The correction section is a ZFP stream (readable by zfpy itself) of the corrected tiles' residuals."""
    x = drifting_field(4)
    codec = pca_codec(drifting_field(0))
    eb = encode_block(x, codec, TILE, raw_fraction=0.0, target_mse=1e-2, abs_bound=1e-3)
    header, sections = parse_payload(eb.payload)
    resid = zfpy.decompress_numpy(bytes(sections["corrections"]))
    assert resid.shape == (header["n_corrected"],) + TILE


def test_absolute_bound_from_config():
    assert absolute_bound({"abs": 0.5}, 10.0) == 0.5
    assert absolute_bound({"rel": 1e-3}, 20.0) == pytest.approx(0.02)
    assert absolute_bound(None, 1.0) is None


def _ae_model(tile=TILE):
    torch = pytest.importorskip("torch")
    from stagelearn.analytics.ae_training import AETrainer
    from stagelearn.analytics.autoencoder import spec_from_data

    tiles = np.concatenate([to_tiles(drifting_field(t), tile) for t in range(3)])
    spec = spec_from_data(tiles, tile, channels=(4, 8), latent_dim=6, latent_bits=8)
    torch.manual_seed(0)
    trainer = AETrainer(spec, iterations_per_step=30, batch_size=128).partial_fit(tiles)
    return trainer


@pytest.mark.parametrize("temporal", [False, True])
def test_autoencoder_codec_round_trip_meets_target_and_bound(temporal):
    trainer = _ae_model()
    from stagelearn.analytics.autoencoder import named_arrays

    model = VariableModel(TILE, -1.3, 1.3, "ae", autoencoder=trainer.spec.to_dict(), ae_arrays=named_arrays(trainer.model))
    codec = model.codec()
    target, bound, prev = 4.0 * 10 ** (-40 / 10), 0.02, None
    for t in range(3, 6):
        x = drifting_field(t)
        eb = encode_block(x, codec, TILE, raw_fraction=0.01, target_mse=target, abs_bound=bound,
                          prev=prev if temporal else None)
        block, header, _ = decode_block(eb.payload, codec, prev=prev if temporal else None)
        np.testing.assert_array_equal(block, eb.reconstruction)
        assert header["kind"] == "ae" and header["latent_dim"] == 6
        assert eb.stats.mse <= target * (1 + 1e-6)
        assert float(np.max(np.abs(block - x))) <= bound
        prev = eb.reconstruction
    with pytest.raises(ValueError, match="'ae' model"):
        decode_block(eb.payload, pca_codec(drifting_field(0)), prev=prev)


def test_autoencoder_encoder_travels_as_named_arrays():
    trainer = _ae_model()
    enc = Encoder.from_learners({"U": trainer}, version=3, trained_until_step=7, tile_shapes={"U": TILE},
                                ranges={"U": (-1.0, 1.0)}, psnr_db=40.0, raw_fraction=0.01)
    enc.keyframe_every, enc.error_bound = 5, {"rel": 1e-3}
    back = Encoder.from_frame(enc.to_frame())
    assert back.keyframe_every == 5 and back.error_bound == {"rel": 1e-3} and back.variables["U"].kind == "ae"
    tiles = to_tiles(drifting_field(9), TILE)
    a, b = trainer.model.encode_latents(tiles), back.variables["U"].codec().model.encode_latents(tiles)
    np.testing.assert_array_equal(a[0], b[0])
    np.testing.assert_array_equal(a[1], b[1])
    arrays = enc.arrays()
    name = next(n for n in arrays if n.startswith("U/ae/"))
    bad = dict(arrays)
    bad[name] = arrays[name][..., :1].copy()  # a wrong shape
    with pytest.raises(EncoderFormatError, match=name):
        Encoder.from_arrays(enc.spec(), bad)
    bad = dict(arrays, **{"U/ae/evil": np.zeros(3, np.float32)})
    with pytest.raises(EncoderFormatError, match="unexpected"):
        Encoder.from_arrays(enc.spec(), bad)
    spec = enc.spec()
    spec["error_bound"] = {"abs": -1}
    with pytest.raises(EncoderFormatError, match="error_bound"):
        Encoder.from_arrays(spec, arrays)


def test_autoencoder_decoding_is_the_same_for_any_subset_of_tiles():
    """Producer and decoder decode different subsets of tiles (inter and raw tiles carry no latent
    code); each tile's output must not depend on which others are decoded with it."""
    torch = pytest.importorskip("torch")
    from stagelearn.analytics.autoencoder import AESpec, TileAutoencoder

    model = TileAutoencoder(AESpec(TILE))
    rng = np.random.default_rng(0)
    codes = rng.integers(-127, 128, (5000, 8)).astype(np.int32)
    scales = rng.random(5000).astype(np.float32)
    full = model.decode_latents(codes, scales)
    threads = torch.get_num_threads()
    try:
        for n in (1, 2, 3, 5, 8, 100, 4097):
            for t in (1, 2):
                torch.set_num_threads(t)
                idx = rng.choice(5000, n, replace=False)
                np.testing.assert_array_equal(model.decode_latents(codes[idx], scales[idx]), full[idx])
    finally:
        torch.set_num_threads(threads)


def test_malformed_payloads_raise_value_error():
    codec = pca_codec(drifting_field(0))
    first = encode_block(drifting_field(1), codec, TILE, raw_fraction=0.0, target_mse=1e-4)
    eb = encode_block(drifting_field(2), codec, TILE, raw_fraction=0.0, target_mse=1e-4, prev=first.reconstruction, abs_bound=1e-3)
    with pytest.raises(ValueError, match="prev has shape"):
        decode_block(eb.payload, codec, prev=first.reconstruction[:8])
    from stagelearn.analytics.framing import pack_frame
    from stagelearn.analytics.codec import MAGIC

    header, sections = parse_payload(eb.payload)
    del sections["inter"]
    with pytest.raises(ValueError, match="malformed"):
        decode_block(pack_frame(MAGIC, header, sections), codec, prev=first.reconstruction)


def test_version_1_encoders_still_read():
    enc = Encoder.from_learners({"U": IncrementalPCA().partial_fit(to_tiles(drifting_field(0), TILE))}, version=1,
                                trained_until_step=0, tile_shapes={"U": TILE}, ranges={"U": (-1.0, 1.0)}, psnr_db=40.0,
                                raw_fraction=0.01)
    spec = enc.spec()
    spec["format"] = "stagelearn.pca-transform-coder/1"
    for key in ("keyframe_every", "error_bound", "encode_threads"):
        del spec[key]
    for vs in spec["variables"].values():
        del vs["kind"], vs["autoencoder"]
    back = Encoder.from_arrays(spec, enc.arrays())
    assert back.keyframe_every == 0 and back.error_bound is None and back.variables["U"].kind == "pca"


@pytest.mark.parametrize("bad", [{"latent_dim": 2**62}, {"channels": [2**40]}, {"latent_dim": 3e9}])
def test_hostile_autoencoder_spec_is_rejected_before_allocating(bad):
    trainer = _ae_model()
    enc = Encoder.from_learners({"U": trainer}, version=1, trained_until_step=0, tile_shapes={"U": TILE},
                                ranges={"U": (-1.0, 1.0)}, psnr_db=40.0, raw_fraction=0.01)
    spec = enc.spec()
    spec["variables"]["U"]["autoencoder"].update(bad)
    with pytest.raises(EncoderFormatError):
        Encoder.from_arrays(spec, enc.arrays())
    spec = enc.spec()
    spec["keyframe_every"] = float("inf")
    with pytest.raises(EncoderFormatError):
        Encoder.from_arrays(spec, enc.arrays())


@pytest.mark.parametrize("weight_scale", [1e8, 3e30])
def test_a_diverged_autoencoder_still_meets_target_and_bound(weight_scale):
    """Finite but huge weights (a diverged network) pass the format checks; the tiles it cannot code
    go raw, so the PSNR target and the bound hold and the payload decodes."""
    from stagelearn.analytics.autoencoder import named_arrays

    trainer = _ae_model()
    arrays = {k: (v * np.float32(weight_scale)).astype(np.float32) for k, v in named_arrays(trainer.model).items()}
    model = VariableModel(TILE, -1.3, 1.3, "ae", autoencoder=trainer.spec.to_dict(), ae_arrays=arrays)
    x = drifting_field(4)
    target = 4.0 * 10 ** (-40 / 10)
    eb = encode_block(x, model.codec(), TILE, raw_fraction=0.01, target_mse=target, abs_bound=0.01)
    block, _, _ = decode_block(eb.payload, model.codec())
    np.testing.assert_array_equal(block, eb.reconstruction)
    assert eb.stats.mse <= target and float(np.abs(block - x).max()) <= 0.01


def test_error_stats_count_non_finite_values_sent_exactly_as_exact():
    from stagelearn.analytics.metrics import ErrorStats

    x = np.array([1.0, np.nan, 3.0, np.inf])
    st = ErrorStats.from_arrays(x, np.array([1.5, np.nan, 3.0, np.inf]))
    assert st.sse == 0.25 and st.max_abs_error == 0.5 and (st.vmin, st.vmax) == (1.0, 3.0)
    assert np.isnan(ErrorStats.from_arrays(x, np.array([1.0, 0.0, 3.0, np.inf])).max_abs_error)


def test_prediction_chain_keyframes_and_commit_on_step_end():
    from stagelearn.analytics.temporal import PredictionChain

    chain, rec = PredictionChain(keyframe_every=3), np.zeros((2, 2))
    seen = []
    for step in range(7):
        seen.append(chain.reference("U", rec.shape)[0])
        chain.record("U", step, rec + step)
        assert chain.reference("U", rec.shape)[0] == seen[-1]  # recorded, but not a reference before end_step
        chain.end_step()
    assert seen == [None, 0, 1, None, 3, 4, None]  # a self-contained step every 3
    assert chain.reference("U", (3, 2)) == (None, None)  # the block changed shape
    assert PredictionChain().reference("U", rec.shape) == (None, None)  # no temporal prediction
