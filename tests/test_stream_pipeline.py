"""The stream codec (``codec.kind: stream``) end to end over real SST, in situ and in transit.

Staging fits the blend weights of the interpolation + temporal predictor from statistics merged
over its ranks and pushes them back; producers (or staging itself, in transit) code every block
through the one encode path (``analytics/step_encode.py`` -> ``analytics/stream_step.py``). Each
test decodes steps from ``compressed.bp`` and recomputes their error against values it knows
independently (the simulation's saved reference field; the plain writer's own field).
"""

import json
import math
import sys

import numpy as np
import pytest

from conftest import REPO
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.wire import report_get
from test_pipeline import ADIOS2_MPI, IN_TRANSIT, check_run, in_transit_config, small_config

pytestmark = [pytest.mark.sst, pytest.mark.mpi]


def _psnr(decoded, original):
    d = np.asarray(decoded, dtype=np.float64) - np.asarray(original, dtype=np.float64)
    span = float(np.max(original) - np.min(original))
    return 20 * math.log10(span) - 10 * math.log10(float(np.mean(d * d)))


@pytest.mark.timeout(300)
def test_stream_codec_in_situ(tmp_path, stagelearn_cli):
    """Producers code with the pushed stream encoder; the last step decodes (through its temporal
    chain) to the error the producers reported, against the simulation's own field."""
    cfg = small_config(tmp_path, "stream", codec={"kind": "stream", "keyframe_every": 4})
    summary = check_run(tmp_path, "stream", stagelearn_cli("run", cfg, "--no-progress", timeout=280), min_ratio=4.0)
    run_dir = tmp_path / "results" / "stream"
    ref = json.loads((run_dir / "producer.json").read_text())["reference"]
    original = np.load(run_dir / f"reference_{ref['variable']}_step{ref['step']}.npy")
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    decoded = reader.read(ref["step"], ref["variable"])
    kinds = {reader.decoded_block(ref["step"], ref["variable"], i)[1].get("kind") for i in range(2)}
    reader.close()
    assert _psnr(decoded, original) >= 40.0 - 0.05  # float32 reference file: rounding only
    assert summary["compression_ratio"] > 4.0 and kinds, kinds


@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the unchanged writer and the reader cohort need ADIOS2 built with MPI")
def test_stream_codec_in_transit(tmp_path, stagelearn_cli):
    """An unchanged ADIOS2 Gray-Scott writer; staging codes its float64 blocks with the stream codec;
    every stored step decodes at the target against what staging received (decoded_check) and the
    reports against the writer's own float64 values."""
    writer = [sys.executable, str(IN_TRANSIT / "gray_scott_writer.py"), str(IN_TRANSIT / "adios2.xml"), "sim.bp",
              "--L", "24", "--steps", "150", "--plotgap", "5"]
    cfg = in_transit_config(tmp_path, "stream_transit", writer, ["U", "V"], steps=30)
    text = cfg.read_text().replace("codec:\n  kind: learned\n", "codec:\n  kind: stream\n")
    assert "kind: stream" in text
    cfg.write_text(text)
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "results" / "stream_transit" / "summary.json").read_text())
    assert summary["steps_received"] == 31 and summary["steps_lost"] == 0 and summary["encoder_versions"] >= 1
    assert summary["compression_ratio"] > 4.0 and summary["min_psnr_db"] >= 39.9
    assert summary["decoded_check"]["psnr_db"] >= 39.9
    reader = CompressedOutputReader(tmp_path / "results" / "stream_transit" / "compressed.bp")
    last = reader.steps[-1]
    rows = reader.reports(last, "V")
    assert all(report_get(r, "encoder_version") >= 1 for r in rows)
    assert reader.read(last, "V").shape == (24, 24, 24)
    reader.close()
    assert REPO.is_dir()
