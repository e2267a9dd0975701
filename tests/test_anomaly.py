"""Anomaly scores, persistence, ground-truth evaluation, and an end-to-end run with injected events."""

import json

import numpy as np
import pytest
import yaml

from conftest import REPO
from stagelearn.analytics import IncrementalPCA, TransformCodec
from stagelearn.analytics.anomaly import (HIST_EDGES, AnomalyScorer, LogErrorHistogram, PersistenceTracker, histogram,
                                          residual_energy)
from stagelearn.analytics.anomaly_eval import evaluate, read_anomalies
from stagelearn.analytics.codec import decode_block, encode_block
from stagelearn.analytics.tiling import to_tiles


def test_persistent_change_stops_being_flagged():
    tr = PersistenceTracker(3)
    seen = [tr.update([5, 9]) for _ in range(5)]
    assert [list(f) for f, _ in seen] == [[5, 9]] * 3 + [[], []]
    assert [list(p) for _, p in seen] == [[]] * 3 + [[5, 9], [5, 9]]
    flagged, persistent = tr.update([9])  # tile 5 back to normal, 9 still persistent
    assert list(flagged) == [] and list(persistent) == [9]
    flagged, _ = tr.update([5])  # a new episode for tile 5 is flagged again
    assert list(flagged) == [5]


def test_histogram_median_and_mad():
    rng = np.random.default_rng(0)
    e = rng.normal(-4.0, 0.3, size=20000)
    h = LogErrorHistogram(decay=0.5).update(histogram(e))
    med, mad = h.median_mad()
    width = HIST_EDGES[1] - HIST_EDGES[0]
    assert med == pytest.approx(np.median(e), abs=width)
    assert mad == pytest.approx(np.median(np.abs(e - np.median(e))), abs=width)


def test_residual_energy_outside_leading_components():
    coef = np.array([[3.0, 4.0, 1.0, 2.0]])
    assert residual_energy(coef, np.array([30.0]), 2)[0] == pytest.approx(5.0)  # 30 - 9 - 16


def test_scorer_flags_an_outlier_tile_and_sends_it_raw():
    rng = np.random.default_rng(1)
    x = np.cumsum(np.cumsum(np.cumsum(rng.normal(size=(24, 24, 24)), 0), 1), 2).astype(np.float32)
    x /= np.ptp(x)
    est = IncrementalPCA().partial_fit(to_tiles(x, (4, 4, 4)))
    codec = TransformCodec(est.mean_, est.components_, 1.0)
    k = int(np.searchsorted(np.cumsum(est.explained_variance_ratio_), 0.999) + 1)
    span, target = float(np.ptp(x)), float(np.ptp(x)) * 10 ** (-41 / 20)
    policy = {"method": "threshold", "threshold": 8.0, "top_k": 4, "report_score": 4.0, "max_report": 16,
              "persistence_steps": 5, "n_components": {"V": k}, "stats": {}}
    calib = AnomalyScorer(policy, "V", span, 64, target, PersistenceTracker(5))
    encode_block(x, codec, (4, 4, 4), raw_fraction=0.0, target_mse=target**2, tile_hook=calib)
    med, mad = LogErrorHistogram().update(calib.hist).median_mad()
    policy["stats"] = {"V": [med, mad]}
    y = x.copy()
    y[8:12, 8:12, 8:12] += rng.normal(scale=0.3, size=(4, 4, 4)).astype(np.float32)  # tile 2*36 + 2*6 + 2 = 86
    scorer = AnomalyScorer(policy, "V", span, 64, target, PersistenceTracker(5))
    eb = encode_block(y, codec, (4, 4, 4), raw_fraction=0.0, target_mse=target**2, tile_hook=scorer)
    assert list(scorer.flagged) == [86]
    block, _, _ = decode_block(eb.payload, codec)
    np.testing.assert_array_equal(block[8:12, 8:12, 8:12], y[8:12, 8:12, 8:12])  # flagged tile is exact
    rows = scorer.rows
    assert rows[rows[:, 0] == 86, 2][0] == 1 and rows[rows[:, 0] == 86, 1][0] > 8


def test_evaluate_against_ground_truth(tmp_path):
    (tmp_path / "events.json").write_text(json.dumps({"shape": [32, 32], "events": [
        {"kind": "spike", "step": 10, "center": [9, 20], "radius": 3.0, "amplitude": 1.0},
        {"kind": "hotspot", "step": 4, "center": [24, 24], "radius": 2.0, "amplitude": 1.0}]}))
    (tmp_path / "anomalies.csv").write_text(
        "step,variable,rank,tile,origin,score,status\n"
        "10,T,0,0,8 16,12.0,flagged\n"      # the spike, latency 0
        "6,T,0,0,24 24,9.0,flagged\n"       # the hot spot, latency 2
        "6,T,0,0,0 0,9.0,flagged\n"         # a false positive
        "12,T,0,0,24 24,9.0,persistent\n")
    assert len(read_anomalies(tmp_path / "anomalies.csv")) == 4
    res = evaluate(tmp_path / "anomalies.csv", tmp_path / "events.json", (8, 8), 5)
    assert [e["latency_steps"] for e in res["events"]] == [0, 2]
    assert res["precision"] == pytest.approx(2 / 3) and res["flagged_rows"] == 3


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_injected_spike_is_flagged_at_once_and_stored_exactly(tmp_path, stagelearn_cli):
    cfg = {
        "run_name": "events", "output_dir": str(tmp_path / "results"),
        "simulation": {"type": "heat2d", "ranks": 2, "nx": 64, "ny": 64, "steps": 400, "plotgap": 10,
                       "events": [{"kind": "spike", "step": 40, "center": [40, 10], "amplitude": 150.0}]},
        "staging": {"ranks": 2},
        "adios2": {"config_file": str(REPO / "xml_configs" / "stagelearn.xml")},
        "learner": {"warmup_steps": 3, "publish_every": 10},
        "codec": {"kind": "learned"},  # anomaly scores use the PCA tile residual
        "anomaly": {"enabled": True, "threshold": 8.0},
        "timeouts": {"open_s": 30, "step_s": 60, "run_s": 200},
    }
    path = tmp_path / "events.yaml"
    path.write_text(yaml.safe_dump(cfg))
    proc = stagelearn_cli("run", path, "--no-progress", timeout=220)
    assert proc.returncode == 0, proc.stderr[-3000:]
    run = tmp_path / "results" / "events"
    res = evaluate(run / "anomalies.csv", run / "events.json", (8, 8), 5)
    assert res["events"][0]["detected"] and res["events"][0]["latency_steps"] == 0
    spike_rows = [r for r in read_anomalies(run / "anomalies.csv") if r["step"] == 40 and r["origin"] == (40, 8)]
    assert spike_rows and spike_rows[0]["status"] == "flagged"
    # the flagged tile is bit-exact in the output (the last step is also the reference the simulation saved)
    from stagelearn.staging.output import CompressedOutputReader

    reader = CompressedOutputReader(run / "compressed.bp")
    decoded = reader.read(40, "T")
    original = np.load(run / "reference_T_step40.npy")
    np.testing.assert_array_equal(decoded[40:48, 8:16], original[40:48, 8:16])
    amap = reader.anomaly_map(40, "T")
    assert any(row[2] == 40 and row[3] == 8 and row[-1] == 1 for row in amap)
    out = stagelearn_cli("decode", run / "compressed.bp", "--latents", "--var", "T", "--step", 40, "-o", tmp_path / "z.npz")
    assert out.returncode == 0, out.stderr
    z = np.load(tmp_path / "z.npz", allow_pickle=False)
    assert z["latents"].shape == (64, 64) and z["origin"].shape == (64, 2) and set(z["step"]) == {40}
