"""The stream codec as the product's block codec (analytics/stream_step.py, stream_payload.py,
stream_model.py, stream_learner.py): the encode_step_block contract, keyframes and late decoders,
foreign payloads, bit-exact decoding in other processes, and staging's merged fit.
"""

import json
import os
import zlib

import numpy as np
import pytest

from stagelearn.analytics.payload import encode_raw_block
from stagelearn.analytics.stream_codec import fit_weights
from stagelearn.analytics.stream_learner import StreamWeightsLearner
from stagelearn.analytics.stream_model import (MAX_LEVELS, StreamModelError, StreamVariableModel,
                                               fit_from_statistics, statistics)
from stagelearn.analytics.stream_payload import StreamPayloadError, parse_stream_payload
from stagelearn.analytics.stream_step import StreamStates, decode_stream_block, encode_stream_block
from stagelearn.analytics.temporal import PredictionChain

from fakes import run_ranks
from test_stream_codec import _run  # noqa: E402  (decode in a subprocess with other BLAS/thread settings)
from test_stream_codec import moving_field


def _target(x, db):
    x = np.asarray(x, np.float64)
    return float(x.max() - x.min()) ** 2 * 10.0 ** (-db / 10.0)


def _stream(frames, *, keyframe_every=4, db=50.0, abs_bound=None, model=None):
    """Encode frames as a producer does (one block, key 'v'); return the codes."""
    chain, states, model = PredictionChain(keyframe_every), StreamStates(), model or StreamVariableModel()
    out = []
    for t, x in enumerate(frames):
        out.append(encode_stream_block(np.asarray(x, np.float32), model, step=10 * t, chain=chain, chain_key="v",
                                       target_mse=_target(x, db), abs_bound=abs_bound, reference=x, state=states,
                                       header={"step": 10 * t, "variable": "v", "rank": 3, "encoder_version": 1,
                                               "shape": list(x.shape), "start": [0] * x.ndim,
                                               "count": list(x.shape)}))
        chain.end_step()
    return out


def _decode_at(payloads, step):
    """A reader that starts at ``step``: walk ``ref_step`` back to a block coded on its own, decode forward."""
    chain, s = [], step
    while True:
        header, _, _ = parse_stream_payload(payloads[s])
        chain.append(s)
        if header["ref_step"] is None:
            break
        s = header["ref_step"]
    prev = None
    for s in reversed(chain):
        prev, _ = decode_stream_block(payloads[s], prev)
    return prev, len(chain)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_round_trip_bit_exact_and_target_met_against_the_callers_values(dtype):
    frames = [moving_field(t, (20, 18, 16), dtype=dtype) for t in range(9)]
    codes = _stream(frames, keyframe_every=4)
    prev = None
    for t, (x, c) in enumerate(zip(frames, codes)):
        rec, header = decode_stream_block(c.payload, prev)
        assert rec.dtype == np.dtype(dtype) and rec.tobytes() == c.reconstruction.tobytes()
        assert (header["ref_step"] is None) == (t % 4 == 0), "keyframe every 4 coded steps"
        mse = float(np.mean((x.astype(np.float64) - rec.astype(np.float64)) ** 2))
        assert mse <= _target(x, 50.0) and c.stats.sse == pytest.approx(mse * x.size, rel=1e-12)
        assert header["rank"] == 3 and header["step"] == 10 * t and header["variable"] == "v"
        prev = rec
    assert sum(len(c.payload) for c in codes) < 0.1 * sum(x.nbytes for x in frames)


def test_a_decoder_starting_late_walks_back_to_the_last_keyframe():
    frames = [moving_field(t, (16, 16, 12)) for t in range(11)]
    codes = _stream(frames, keyframe_every=5)
    payloads = {10 * t: c.payload for t, c in enumerate(codes)}
    for t in (3, 7, 9, 10):
        rec, n = _decode_at(payloads, 10 * t)
        assert rec.tobytes() == codes[t].reconstruction.tobytes()
        assert n == t % 5 + 1


def test_predicted_block_without_its_reference_is_refused_clearly():
    codes = _stream([moving_field(t, (16, 12)) for t in range(3)], keyframe_every=10)
    with pytest.raises(StreamPayloadError, match="predicted from step 10"):
        decode_stream_block(codes[2].payload)
    # the wrong previous block: never decoded slightly off (the CRC of the reconstruction, or the adaptive
    # entropy coder's own consistency check, whichever fails first)
    with pytest.raises(StreamPayloadError, match="CRC|corrupt payload"):
        decode_stream_block(codes[2].payload, codes[0].reconstruction)


def test_pointwise_bound_and_integer_inputs_verified_in_their_own_dtype():
    frames = [np.round(1000 * moving_field(t, (24, 20))).astype(np.int32) for t in range(4)]
    for x, c in zip(frames, _stream(frames, db=30.0, abs_bound=0.75)):
        rec = c.reconstruction
        assert rec.dtype == np.float64
        err = np.abs(x.astype(np.float64) - rec)
        assert err.max() <= 0.75 and c.stats.max_abs_error == err.max()


def test_noise_the_codec_cannot_shrink_is_stored_exactly():
    rng = np.random.default_rng(1)
    x = rng.standard_normal((8, 8)).astype(np.float32)
    c = _stream([x], db=150.0)[0]
    rec, header = decode_stream_block(c.payload)
    assert header["kind"] == "exact" and rec.tobytes() == x.tobytes() and c.stats.sse == 0.0


def test_foreign_and_future_payloads_are_refused_with_a_clear_error():
    x = moving_field(0, (8, 8))
    with pytest.raises(StreamPayloadError, match="PCA/autoencoder codec"):
        decode_stream_block(encode_raw_block(x, header={"step": 0}))
    good = _stream([x])[0].payload
    with pytest.raises(StreamPayloadError, match="format version 2"):
        decode_stream_block(good[:4] + b"\x02" + good[5:])
    with pytest.raises(StreamPayloadError, match="not a stagelearn payload"):
        decode_stream_block(b"\x00" * 40)
    with pytest.raises(StreamPayloadError):
        decode_stream_block(good[:len(good) // 2])


def test_anomaly_scorer_and_bad_targets_are_rejected():
    chain, x = PredictionChain(), moving_field(0, (8, 8))
    with pytest.raises(ValueError, match="anomaly scoring needs the PCA codec"):
        encode_stream_block(x, StreamVariableModel(), step=0, chain=chain, chain_key="v", target_mse=1e-3,
                            scorer=object())
    with pytest.raises(ValueError, match="target_mse"):
        encode_stream_block(x, StreamVariableModel(), step=0, chain=chain, chain_key="v", target_mse=float("nan"))


def test_model_export_follows_the_encoder_conventions():
    w = fit_weights(np.abs(np.random.default_rng(0).standard_normal((6, 13))) + 1.0)
    m = StreamVariableModel(weights=w, refit="published", data_min=-1.0, data_max=2.0)
    entry, arrays = m.spec_entry(), m.arrays()
    json.dumps(entry)
    assert arrays["stream/weights"].dtype == np.float32 and entry["arrays"]["stream/weights"]["shape"] == [6, 3]
    back = StreamVariableModel.from_spec("T", json.loads(json.dumps(entry)), arrays)
    assert np.array_equal(back.weights, m.weights) and back.refit == "published"
    assert np.array_equal(back.level_weights(8)[:6], m.weights) and np.all(back.level_weights(8)[6:] == [1, 1, -1])
    bad = dict(arrays, **{"stream/weights": arrays["stream/weights"] + np.float32(1e-6)})
    with pytest.raises(StreamModelError, match="2\\^-16 grid"):
        StreamVariableModel.from_spec("T", entry, bad)
    with pytest.raises(StreamModelError, match="'stream' must be an object"):
        StreamVariableModel.from_spec("T", dict(entry, stream={"alpha": 1.5, "pickle": 1}), arrays)
    with pytest.raises(StreamModelError, match="float32"):
        StreamVariableModel.from_spec("T", entry, {"stream/weights": arrays["stream/weights"].astype(np.float64)})


def _pairs(n_blocks):
    """Blocks of two consecutive frames of a 3-D field, split along the first axis."""
    a, b = moving_field(0, (32, 24, 20)), moving_field(1, (32, 24, 20))
    return [(b[i::n_blocks].copy(), a[i::n_blocks].copy()) for i in range(n_blocks)]


def test_merged_fit_over_ranks_equals_the_serial_fit_on_the_gathered_blocks():
    pairs = _pairs(6)

    def rank(comm):
        mine = pairs[comm.Get_rank()::comm.Get_size()]
        local = sum((statistics(x, p) for x, p in mine), np.zeros((MAX_LEVELS, 13)))
        return fit_from_statistics(local, comm)

    results = run_ranks(3, rank)
    serial = sum(statistics(x, p) for x, p in pairs)
    w_serial, _ = fit_from_statistics(serial)
    for w, merged in results:
        np.testing.assert_allclose(merged, serial, rtol=1e-12)
        np.testing.assert_array_equal(w, results[0][0])  # the same weights on every rank
        np.testing.assert_array_equal(w, w_serial)
    assert not np.allclose(w_serial[:3], [1, 1, -1]), "the fit moved away from the prior"


def test_learner_merges_and_exports_a_model_the_codec_uses():
    pairs = _pairs(4)

    def rank(comm):
        est = StreamWeightsLearner(comm, decay=0.5)
        mine = pairs[comm.Get_rank()::comm.Get_size()]
        est.partial_fit_statistics(sum(statistics(x, p) for x, p in mine))
        return est.model().spec_entry(), est.model().arrays(), est.get_state()

    out = run_ranks(2, rank)
    entry, arrays, state = out[0]
    assert np.array_equal(arrays["stream/weights"], out[1][1]["stream/weights"])
    model = StreamVariableModel.from_spec("v", entry, arrays)
    again = StreamWeightsLearner()
    again.set_state(state)
    assert np.array_equal(again.model().arrays()["stream/weights"], arrays["stream/weights"])
    codes = _stream([moving_field(t, (32, 24, 20)) for t in range(3)], model=model, keyframe_every=10)
    assert decode_stream_block(codes[1].payload, codes[0].reconstruction)[0].tobytes() == \
        codes[1].reconstruction.tobytes()


_PRODUCER = """
import json, sys, zlib
sys.path.insert(0, {tests!r})
import numpy as np
from test_stream_step import _stream
from test_stream_codec import moving_field
codes = _stream([moving_field(t, (20, 18, 16), dtype=np.{dtype}) for t in range(5)], keyframe_every=3)
for t, c in enumerate(codes):
    open({d!r} + f"/b{{t}}.bin", "wb").write(c.payload)
print(json.dumps([zlib.crc32(c.reconstruction.tobytes()) for c in codes]))
"""

_DECODER = """
import json, zlib
from stagelearn.analytics.stream_step import decode_stream_block
prev, out = None, []
for t in range(5):
    prev, _ = decode_stream_block(open({d!r} + f"/b{{t}}.bin", "rb").read(), prev)
    out.append(zlib.crc32(prev.tobytes()))
print(json.dumps(out))
"""




@pytest.mark.parametrize("dtype,producer_env,decoder_env", [
    ("float32", {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "NUMBA_NUM_THREADS": "1"},
     {"OPENBLAS_CORETYPE": None, "OPENBLAS_NUM_THREADS": "2", "NUMBA_NUM_THREADS": "2"}),
    ("float64", {"OPENBLAS_CORETYPE": None, "OPENBLAS_NUM_THREADS": "2", "OMP_NUM_THREADS": "2"},
     {"OPENBLAS_CORETYPE": "Haswell", "OPENBLAS_NUM_THREADS": "1", "OMP_NUM_THREADS": "1"}),
])
def test_blocks_decode_bit_for_bit_in_processes_with_other_blas_settings(tmp_path, dtype, producer_env, decoder_env):
    tests = os.path.dirname(os.path.abspath(__file__))
    produced = _run(_PRODUCER.format(tests=tests, d=str(tmp_path), dtype=dtype), producer_env)
    assert _run(_DECODER.format(d=str(tmp_path)), decoder_env) == produced
    prev, here = None, []
    for t in range(5):
        prev, _ = decode_stream_block((tmp_path / f"b{t}.bin").read_bytes(), prev)
        here.append(zlib.crc32(prev.tobytes()))
    assert here == produced


def test_one_pass_error_statistics_agree_with_error_stats_from_arrays():
    from stagelearn.analytics.metrics import ErrorStats
    from stagelearn.analytics.stream_step import error_stats

    rng = np.random.default_rng(3)
    for dtype in (np.float32, np.float64):
        x = rng.standard_normal((17, 9)).astype(dtype)
        rec = (x + 1e-3 * rng.standard_normal(x.shape)).astype(dtype)
        a, b = error_stats(x, rec), ErrorStats.from_arrays(x, rec)
        assert a.n == b.n and a.max_abs_error == b.max_abs_error and (a.vmin, a.vmax) == (b.vmin, b.vmax)
        assert a.sse == pytest.approx(b.sse, rel=1e-12)
        x[3, 4] = np.nan  # non-finite values: the general path
        assert error_stats(x, x.copy()).sse == ErrorStats.from_arrays(x, x.copy()).sse == 0.0


def test_ranks_code_a_stream_learn_merged_weights_and_a_reader_decodes_any_step():
    """The in-transit loop on 3 fake ranks: global targets (step_targets), each rank codes its slab,
    staging's learner merges the codes' statistics (one Allreduce) and republishes every 2 steps
    (spec + arrays through JSON), the ranks code with the published model; a reader that starts at
    any step decodes the global field, which meets the PSNR target against the original values."""
    from stagelearn.analytics.step_encode import step_targets

    n_ranks, n_steps, db, shape = 3, 7, 45.0, (30, 20, 16)
    fields = [moving_field(t, shape, dtype=np.float64) for t in range(n_steps)]

    def rank(comm):
        r = comm.Get_rank()
        chain, states, learner, model = PredictionChain(4), StreamStates(), StreamWeightsLearner(comm), \
            StreamVariableModel()
        out = []
        for t, f in enumerate(fields):
            given = f[r * 10:(r + 1) * 10]
            block = given.astype(np.float32)
            targets, _ = step_targets(comm, {"u": [given]}, db)
            code = encode_stream_block(block, model, step=t, chain=chain, chain_key="u", target_mse=targets["u"],
                                       reference=given, state=states,
                                       header={"step": t, "variable": "u", "rank": r, "encoder_version": 1,
                                               "shape": list(shape), "start": [r * 10, 0, 0],
                                               "count": list(block.shape)})
            chain.end_step()
            learner.partial_fit_statistics(code.stream_stats)
            if t % 2 == 1 and learner.fitted:  # publish: rank 0's model, as JSON spec + named arrays
                sent = (json.dumps(learner.model().spec_entry()), learner.model().arrays()) if r == 0 else None
                entry, arrays = comm.bcast(sent, root=0)
                model = StreamVariableModel.from_spec("u", json.loads(entry), arrays)
            out.append((code.payload, code.reconstruction))
        return out

    per_rank = run_ranks(n_ranks, rank, timeout_s=60.0)
    payloads = {(t, r): per_rank[r][t][0] for r in range(n_ranks) for t in range(n_steps)}
    for start in (0, 3, 6):
        field = np.zeros(shape)
        for r in range(n_ranks):
            block, n = _decode_at({t: payloads[(t, r)] for t in range(n_steps)}, start)
            # walked back to the last block coded on its own: the scheduled keyframe or a later unscheduled one
            last_key = max(t for t in range(start + 1) if parse_stream_payload(payloads[(t, r)])[0]["ref_step"] is None)
            assert block.tobytes() == per_rank[r][start][1].tobytes() and n == start - last_key + 1
            assert last_key >= start - start % 4
            header = parse_stream_payload(payloads[(start, r)])[0]
            field[tuple(slice(a, a + c) for a, c in zip(header["start"], header["count"]))] = block
        x = fields[start]
        mse = float(np.mean((x - field) ** 2))
        assert 10 * np.log10(float(x.max() - x.min()) ** 2 / mse) >= db


def test_empty_constant_and_non_finite_blocks_round_trip():
    chain, model = PredictionChain(4), StreamVariableModel()
    empty = np.zeros((0, 5), np.float32)
    c = encode_stream_block(empty, model, step=0, chain=chain, chain_key="e", target_mse=1e-4)
    rec, header = decode_stream_block(c.payload)
    assert rec.shape == (0, 5) and header["kind"] == "exact" and c.stats.n == 0
    x = np.linspace(0, 1, 200, dtype=np.float32).reshape(10, 20)
    x[2, 3], x[4, 4], x[5, 5] = np.nan, np.inf, -np.inf
    c = encode_stream_block(x, model, step=0, chain=chain, chain_key="n", target_mse=1e-6)
    rec, _ = decode_stream_block(c.payload)
    assert rec.tobytes() == c.reconstruction.tobytes()
    assert np.isnan(rec[2, 3]) and rec[4, 4] == np.inf and rec[5, 5] == -np.inf
    finite = np.isfinite(x)
    d = x.astype(np.float64)[finite] - rec[finite]
    assert float(np.sum(d ** 2)) / x.size <= 1e-6
    const = np.full((7, 9), 3.0, np.float32)
    c = encode_stream_block(const, model, step=0, chain=chain, chain_key="c", target_mse=1e-4)
    assert float(np.mean((decode_stream_block(c.payload)[0] - 3.0) ** 2)) <= 1e-4


def test_a_learner_without_statistics_publishes_the_default_blend():
    est = StreamWeightsLearner()
    assert est.ready and not est.fitted and est.model().arrays() == {}
    model = StreamVariableModel.from_spec("v", json.loads(json.dumps(est.model().spec_entry())), {})
    assert model.weights is None and np.all(model.level_weights(5) == [1.0, 1.0, -1.0])
    est.partial_fit_statistics(np.zeros((MAX_LEVELS, 13)))  # a step without pairs: still the default
    assert not est.fitted
    with pytest.raises(ValueError, match="decay"):
        StreamWeightsLearner(decay=1.5)
