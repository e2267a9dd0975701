"""The one encode path of a step's block (analytics/step_encode.py) and its report rows
(staging/block_report.py): the same payload as the codec's own call, the error against the
caller's values, step targets over fake ranks."""

import math

import numpy as np
import pytest

from fakes import run_ranks
from stagelearn.analytics.codec import encode_block
from stagelearn.analytics.encoder import VariableModel
from stagelearn.analytics.metrics import ErrorStats, psnr_from_mse
from stagelearn.analytics.step_encode import encode_step_block, finite_range, step_targets
from stagelearn.analytics.temporal import PredictionChain
from stagelearn.staging.block_report import coded_report, raw_record, raw_report
from stagelearn.staging.wire import report_get

TILE = (4, 4)


def pca_model(rng):
    """A 3-component PCA model of 4x4 tiles fitted (SVD) to smooth random tiles."""
    x = np.linspace(0, 1, 4)
    tiles = np.array([np.add.outer(a * x, b * x).ravel() + c for a, b, c in rng.normal(size=(200, 3))])
    mean = tiles.mean(axis=0)
    _, _, vt = np.linalg.svd(tiles - mean, full_matrices=False)
    return VariableModel(TILE, float(tiles.min()), float(tiles.max()), "pca", mean.astype(np.float32),
                         vt[:3].astype(np.float32))


def field(rng, shape=(16, 12)):
    yy, xx = np.meshgrid(np.linspace(0, 3, shape[0]), np.linspace(0, 2, shape[1]), indexing="ij")
    return np.sin(yy) * np.cos(xx) + 0.01 * rng.normal(size=shape)


def test_float32_block_gives_the_codec_payload_and_its_stats():
    """(target 1e-3: the 3-component model leaves ~1e-4 per value outside its basis, so 1e-4 goes raw)"""
    rng = np.random.default_rng(0)
    model, block = pca_model(rng), field(rng).astype(np.float32)
    header = {"step": 3, "variable": "T", "rank": 1}
    chain = PredictionChain()
    code = encode_step_block(block, model, step=3, chain=chain, chain_key=("T", 1), target_mse=1e-3,
                             raw_fraction=0.05, header=header)
    eb = encode_block(block, model.codec(), TILE, raw_fraction=0.05, target_mse=1e-3, header=dict(header, ref_step=None))
    assert code.payload == eb.payload
    np.testing.assert_array_equal(code.reconstruction, eb.reconstruction)
    assert code.stats == eb.stats and code.n_raw_tiles == eb.n_raw_tiles
    assert code.local_psnr_db == psnr_from_mse(eb.stats.mse, eb.stats.data_range)
    assert code.amap is None and code.sz3_bytes == code.sz3_sse == 0.0 and code.sent_bytes == len(eb.payload)


def test_the_error_is_measured_against_the_callers_float64_values_and_the_chain_predicts():
    rng = np.random.default_rng(1)
    model, given = pca_model(rng), field(rng)
    block = given.astype(np.float32)
    chain = PredictionChain(keyframe_every=2)
    code = encode_step_block(block, model, step=0, chain=chain, chain_key="T", target_mse=1e-4, reference=given)
    assert code.stats == ErrorStats.from_arrays(given, code.reconstruction)
    assert chain.reference("T", block.shape) == (None, None)  # not before the step ends
    chain.end_step()
    ref_step, prev = chain.reference("T", block.shape)
    assert ref_step == 0
    np.testing.assert_array_equal(prev, code.reconstruction)
    nxt = encode_step_block(block, model, step=1, chain=chain, chain_key="T", target_mse=1e-4, reference=given)
    eb = encode_block(given, model.codec(), TILE, target_mse=1e-4, prev=prev, header={"ref_step": 0})
    assert nxt.payload == eb.payload  # float64 values are what is coded, predicted from step 0


def test_report_rows_of_coded_and_raw_blocks():
    rng = np.random.default_rng(2)
    model, block = pca_model(rng), field(rng).astype(np.float32)
    code = encode_step_block(block, model, step=5, chain=PredictionChain(), chain_key="T", target_mse=1e-4)
    row = coded_report(5, 2, 7, block, code)
    expected = {"step": 5, "rank": 2, "encoder_version": 7, "raw_bytes": block.size * 4, "sent_bytes": len(code.payload),
                "sse": code.stats.sse, "n": block.size, "max_abs_error": code.stats.max_abs_error,
                "vmin": float(block.min()), "vmax": float(block.max()), "n_raw_tiles": code.n_raw_tiles,
                "local_psnr_db": code.local_psnr_db, "n_flagged": 0, "anomaly_bytes": 0, "sz3_bytes": 0}
    for name, value in expected.items():
        assert report_get(row, name) == pytest.approx(value), name

    raw = np.array([[np.nan, 2.0], [-3.0, np.inf]], dtype=np.float32)
    assert finite_range(raw) == (-3.0, 2.0)
    row = raw_report(4, 1, raw)
    assert (report_get(row, "vmin"), report_get(row, "vmax"), report_get(row, "n")) == (-3.0, 2.0, 4)
    assert report_get(row, "raw_bytes") == report_get(row, "sent_bytes") == 16
    assert math.isinf(report_get(row, "local_psnr_db"))
    rec = raw_record("T", 4, 1, raw, (8, 2), (2, 0))
    assert rec["count"] == (2, 2) and rec["start"] == (2, 0) and rec["shape"] == (8, 2) and rec["raw"] is raw


def test_step_targets_use_the_global_range_over_ranks():
    psnr = 30.0
    blocks = {0: {"T": [np.array([1.0, 2.0, np.nan])], "C": [np.full(3, 5.0)]},
              1: {"T": [np.array([-4.0, 0.5])], "C": [np.zeros((0,))]}}  # rank 1 holds no C cells

    got = run_ranks(2, lambda comm: step_targets(comm, blocks[comm.Get_rank()], psnr))
    span_t = 2.0 - (-4.0)  # finite values over both ranks
    for targets, spans in got:
        assert spans == {"T": span_t, "C": 1.0}  # a constant field counts a range of 1
        assert targets["T"] == pytest.approx(span_t ** 2 * 10 ** (-psnr / 10))
        assert targets["C"] == pytest.approx(10 ** (-psnr / 10))
