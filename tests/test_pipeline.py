"""End to end over real SST: producer and staging as separate mpiexec jobs (2-3 writers x 2 readers)."""

import json
import sys
import time

import numpy as np
import pytest
import yaml

from conftest import MPIEXEC, REPO, child_env, run_cmd
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.adios import built_with_mpi
from stagelearn.staging.wire import report_get

pytestmark = [pytest.mark.sst, pytest.mark.mpi]

ADIOS2_MPI = built_with_mpi()


def small_config(tmp_path, name, **overrides):
    cfg = {
        "run_name": name,
        "output_dir": str(tmp_path / "results"),
        "simulation": {"type": "gray_scott", "ranks": 2, "L": 24, "steps": 150, "plotgap": 5, "noise": 0.1},
        "staging": {"ranks": 2},
        "adios2": {"config_file": str(REPO / "xml_configs" / "stagelearn.xml")},
        "learner": {"warmup_steps": 3, "publish_every": 8},
        "codec": {"kind": "learned", "psnr_db": 40.0},  # the tile codec (the stream codec: test_stream_pipeline.py)
        "metrics": {"sz3_every": 4},
        "timeouts": {"open_s": 30, "step_s": 60, "run_s": 240},
    }
    for section, values in overrides.items():
        if isinstance(values, dict) and "type" not in values:  # a new `type` replaces the section
            cfg.setdefault(section, {}).update(values)
        else:
            cfg[section] = values
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


def check_run(tmp_path, name, proc, min_ratio=4.0):
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = tmp_path / "results" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_written"] == 31 and summary["steps_received"] == 31 and summary["steps_lost"] == 0
    assert summary["encoder_versions"] >= 2
    assert summary["compression_ratio"] > min_ratio
    assert summary["psnr_db"] >= 40.0 and summary["min_psnr_db"] >= 39.5
    assert summary["sz3_compression_ratio"] > 1.0
    # independent check: decode the last step from the file and recompute its error from the raw field
    ref = json.loads((run_dir / "producer.json").read_text())["reference"]
    original = np.load(run_dir / f"reference_{ref['variable']}_step{ref['step']}.npy")
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    decoded = reader.read(ref["step"], ref["variable"])
    rows = reader.reports(ref["step"], ref["variable"])
    reader.close()
    assert all(report_get(r, "encoder_version") >= 1 for r in rows)  # producers send codes from a pushed encoder
    sse_reported = sum(report_get(r, "sse") for r in rows)
    sse_actual = float(np.sum((decoded.astype(np.float64) - original) ** 2))
    assert sse_reported == pytest.approx(sse_actual, rel=1e-4)
    # the reference is saved as float32 and the reports are against the simulation's float64 values: allow
    # float32 rounding (half an ulp, ~3e-8 for values below 1)
    assert float(np.abs(decoded - original).max()) == pytest.approx(max(report_get(r, "max_abs_error") for r in rows),
                                                                    rel=1e-5, abs=1e-7)
    assert (run_dir / "summary.png").stat().st_size > 10_000
    return summary


@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the shared layout needs ADIOS2 built with MPI (STAGELEARN_ADIOS2=mpi)")
def test_run_shared_stream_2x2(tmp_path, stagelearn_cli):
    proc = stagelearn_cli("run", small_config(tmp_path, "shared", adios2={"layout": "shared"}), "--no-progress", timeout=280)
    summary = check_run(tmp_path, "shared", proc)
    assert summary["simulation"]["layout"] == "shared"
    assert "compression ratio" in proc.stdout and "PSNR" in proc.stdout


@pytest.mark.timeout(300)
def test_run_per_rank_streams_3x2(tmp_path, stagelearn_cli):
    # L=26 over 3 ranks: 9x26x26 / 8x26x26 blocks, not whole 4x4x4 tiles (padding path)
    path = small_config(tmp_path, "per_rank", adios2={"layout": "per_rank"}, simulation={"ranks": 3, "L": 26})
    summary = check_run(tmp_path, "per_rank", stagelearn_cli("run", path, "--no-progress", timeout=280))
    assert summary["simulation"]["layout"] == "per_rank" and summary["simulation"]["ranks"] == 3


@pytest.mark.timeout(200)
def test_decode_cli_writes_npy_and_bp(tmp_path, stagelearn_cli):
    # learn V only: U travels raw all along (exact), V coded
    path = small_config(tmp_path, "dec", simulation={"steps": 60}, staging={"variables": ["V"]})
    assert stagelearn_cli("run", path, "--no-progress", timeout=180).returncode == 0
    summary = json.loads((tmp_path / "results" / "dec" / "summary.json").read_text())
    assert 40.0 <= summary["psnr_db"] < 80.0 and summary["encoder_versions"] >= 1
    bp = tmp_path / "results" / "dec" / "compressed.bp"
    listing = stagelearn_cli("decode", bp, timeout=60)
    assert listing.returncode == 0 and "['U', 'V']" in listing.stdout
    out = stagelearn_cli("decode", bp, "--step", 12, "--var", "V", "-o", tmp_path / "v.npy", timeout=60)
    assert out.returncode == 0, out.stderr
    reader = CompressedOutputReader(bp)
    np.testing.assert_array_equal(np.load(tmp_path / "v.npy"), reader.read(12, "V"))
    assert stagelearn_cli("decode", bp, "--step", 12, "--var", "V", "-o", tmp_path / "v.bp", timeout=60).returncode == 0
    reader_u = CompressedOutputReader(bp)
    assert all(report_get(r, "encoder_version") == 0 for r in reader_u.reports(12, "U"))
    bad = stagelearn_cli("decode", bp, "--step", 999, "--var", "V", timeout=60)
    assert bad.returncode == 2 and "not in the file" in bad.stderr and "Traceback" not in bad.stderr
    assert stagelearn_cli("decode", bp, "--step", 12, timeout=60).returncode == 2


@pytest.mark.timeout(200)
def test_sides_launched_separately_then_report(tmp_path, stagelearn_cli):
    """`stagelearn stage` and `stagelearn sim` as two jobs (as sites launch them), then `report`."""
    import subprocess
    import sys

    path = small_config(tmp_path, "apart", simulation={"steps": 60})
    env = child_env()
    stage = subprocess.Popen([MPIEXEC, "-n", "2", sys.executable, "-m", "stagelearn", "stage", str(path)], cwd=tmp_path,
                             env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    sim = run_cmd([MPIEXEC, "-n", "2", sys.executable, "-m", "stagelearn", "sim", str(path)], timeout=150, cwd=tmp_path)
    assert stage.wait(timeout=60) == 0 and sim.returncode == 0, sim.stderr[-2000:]
    out = stagelearn_cli("report", path, timeout=60)
    assert out.returncode == 0, out.stderr
    summary = json.loads((tmp_path / "results" / "apart" / "summary.json").read_text())
    assert summary["steps_lost"] == 0 and summary["steps_written"] == 13 and (tmp_path / "results" / "apart" / "summary.png").exists()
    missing = stagelearn_cli("report", path, "--run-dir", tmp_path / "nowhere", timeout=60)
    assert missing.returncode == 2 and "no finished run" in missing.stderr


@pytest.mark.timeout(200)
def test_bp5_in_the_xml_writes_a_file(tmp_path, stagelearn_cli):
    path = small_config(tmp_path, "file", adios2={"config_file": str(REPO / "xml_configs" / "stagelearn-bp5.xml")},
                        simulation={"steps": 20})
    proc = stagelearn_cli("run", path, "--no-progress", timeout=180)
    assert proc.returncode == 0, proc.stderr
    # auto layout: one file from all ranks with ADIOS2+MPI, else one file per rank
    bp = tmp_path / "results" / "file" / "sst" / ("stream.bp" if ADIOS2_MPI else "stream.p0.bp")
    assert bp.is_dir()
    from stagelearn.staging.adios import bindings

    b = bindings()
    adios = b.ADIOS()  # keep a reference: the IO dies with its ADIOS object
    io = adios.DeclareIO("check")
    eng = io.Open(str(bp), b.Mode.ReadRandomAccess)
    var = io.InquireVariable("V")
    assert [int(x) for x in var.Shape()] == [24, 24, 24] and var.Steps() == 5
    eng.Close()


@pytest.mark.timeout(120)
def test_run_reports_the_failing_side(tmp_path, stagelearn_cli):
    """The simulation fails at start-up; `run` stops staging and exits with the simulation's code."""
    path = small_config(tmp_path, "bad_sim", simulation={"type": "heat2d", "ranks": 2, "nx": 16, "ny": 16, "kappa": 1.0,
                                                         "dt": 1.0, "steps": 10, "plotgap": 5})
    t0 = time.time()
    proc = stagelearn_cli("run", path, "--no-progress", timeout=100)
    assert proc.returncode == 1, (proc.returncode, proc.stderr[-2000:])
    assert "sim side exited with code 1" in proc.stderr and "unstable" in proc.stderr
    assert time.time() - t0 < 60


@pytest.mark.timeout(120)
@pytest.mark.parametrize("side", ["stage", "sim"])
def test_missing_peer_times_out_with_exit_code_3(tmp_path, side):
    path = small_config(tmp_path, f"alone_{side}", timeouts={"open_s": 5, "step_s": 10, "run_s": 60})
    t0 = time.time()
    proc = run_cmd([MPIEXEC, "-n", "2", __import__("sys").executable, "-m", "stagelearn", side, str(path)], timeout=100, cwd=tmp_path)
    assert proc.returncode == 3, (proc.returncode, proc.stdout[-2000:], proc.stderr[-2000:])
    assert "timed out" in proc.stderr or "within" in proc.stderr
    assert time.time() - t0 < 90


@pytest.mark.timeout(200)
def test_staging_learns_with_an_iterative_distributed_algorithm(tmp_path, stagelearn_cli):
    """learner.algorithm selects the distributed PCA method (docs/distributed_pca.md)."""
    path = small_config(tmp_path, "ritz", simulation={"steps": 60}, learner={"algorithm": "warm_ritz", "n_components": 48})
    proc = stagelearn_cli("run", path, "--no-progress", timeout=180)
    assert proc.returncode == 0, proc.stderr[-3000:]
    summary = json.loads((tmp_path / "results" / "ritz" / "summary.json").read_text())
    assert summary["encoder_versions"] >= 1 and summary["steps_lost"] == 0 and summary["compression_ratio"] > 1


@pytest.mark.timeout(300)
def test_temporal_prediction_and_error_bound_end_to_end(tmp_path, stagelearn_cli):
    """PCA with steps predicted from the previous reconstruction (keyframe every 4) and a
    pointwise bound: the decoder follows the prediction chain and the bound holds on the raw field."""
    cfg = small_config(tmp_path, "temporal", codec={"keyframe_every": 4, "error_bound": {"rel": 1e-2}})
    summary = check_run(tmp_path, "temporal", stagelearn_cli("run", cfg, "--no-progress", timeout=280), min_ratio=1.5)
    run_dir = tmp_path / "results" / "temporal"
    ref = json.loads((run_dir / "producer.json").read_text())["reference"]
    original = np.load(run_dir / f"reference_{ref['variable']}_step{ref['step']}.npy")
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    decoded = reader.read(ref["step"], ref["variable"])
    last = ref["step"]
    n_inter = [reader.decoded_block(t, ref["variable"], i)[1]["n_inter"] for t in range(last - 3, last + 1) for i in range(2)]
    for step in reader.steps:  # the bound is relative to each step's global range; producers verified it
        rows = reader.reports(step, ref["variable"])
        if report_get(rows[0], "encoder_version") >= 1:
            span = max(report_get(r, "vmax") for r in rows) - min(report_get(r, "vmin") for r in rows)
            assert max(report_get(r, "max_abs_error") for r in rows) <= 1e-2 * span * (1 + 1e-5), step
    reader.close()
    bound = 1e-2 * float(original.max() - original.min())
    assert float(np.abs(decoded - original).max()) <= bound * (1 + 1e-5)
    assert sum(n > 0 for n in n_inter) >= 4  # 3 of every 4 steps predict tiles from the previous one


@pytest.mark.timeout(300)
@pytest.mark.parametrize("mode", ["ddp", "local_sgd"])
def test_autoencoder_learner_end_to_end(tmp_path, stagelearn_cli, mode):
    """Two staging ranks train the autoencoder with gloo and push its encoder back; producers end up
    sending latent codes from it (check_run decodes the last step and recomputes its error)."""
    cfg = small_config(tmp_path, f"ae_{mode}", learner={
        "type": "autoencoder", "autoencoder": {"channels": [4, 8], "mode": mode, "iterations_per_step": 5, "batch_size": 128},
        "replay": {"kind": "stratified", "max_mib": 4}})
    summary = check_run(tmp_path, f"ae_{mode}", stagelearn_cli("run", cfg, "--no-progress", timeout=280), min_ratio=2.0)
    assert summary["learner"] == "autoencoder"
    assert summary["training_rounds_rank0"] > 0 and summary["training_bytes_rank0"] > 0
    reader = CompressedOutputReader(tmp_path / "results" / f"ae_{mode}" / "compressed.bp")
    version = int(max(report_get(r, "encoder_version") for r in reader.reports(reader.steps[-1], "U")))
    assert reader.encoder(version).variables["U"].kind == "ae"
    reader.close()


IN_TRANSIT = REPO / "examples" / "intransit"


def in_transit_config(tmp_path, name, command, variables, steps, **staging):
    cfg = {
        "run_name": name, "output_dir": str(tmp_path / "results"),
        "simulation": {"type": "external", "ranks": 2, "command": command, "steps": steps, "plotgap": 1},
        "staging": {"ranks": 2, "mode": "in_transit", "stream": "sim.bp", "variables": variables, **staging},
        "learner": {"warmup_steps": 3, "publish_every": 8}, "codec": {"kind": "learned", "psnr_db": 40.0},
        "timeouts": {"open_s": 30, "step_s": 60, "run_s": 240},
    }
    path = tmp_path / f"{name}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    return path


@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the unchanged writer and the reader cohort need ADIOS2 built with MPI")
def test_unchanged_adios2_code_in_transit(tmp_path, stagelearn_cli):
    """A Gray-Scott writer that uses only the plain adios2 API and its own XML (SST instead of BP5)
    streams to staging, which discovers U and V, learns, encodes and writes the compressed output."""
    writer = [sys.executable, str(IN_TRANSIT / "gray_scott_writer.py"), str(IN_TRANSIT / "adios2.xml"), "sim.bp",
              "--L", "24", "--steps", "150", "--plotgap", "5"]
    assert "stagelearn" not in (IN_TRANSIT / "gray_scott_writer.py").read_text().split('"""', 2)[2]  # no import of ours
    cfg = in_transit_config(tmp_path, "intransit", writer, ["U", "V"], steps=30)
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = tmp_path / "results" / "intransit"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_received"] == 31 and summary["steps_lost"] == 0 and summary["encoder_versions"] >= 2
    assert summary["compression_ratio"] > 4.0 and summary["min_psnr_db"] >= 39.9
    assert summary["decoded_check"]["psnr_db"] >= 39.9  # decoded from the file vs the raw field staging received
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.fields() == ["U", "V"]
    last = reader.steps[-1]
    rows = reader.reports(last, "V")
    assert len(rows) == 2 and all(report_get(r, "encoder_version") >= 1 for r in rows)
    # the writer's values are float64: raw bytes are counted in its dtype, not as float32
    assert all(report_get(r, "raw_bytes") == 8 * report_get(r, "n") for r in rows)
    assert reader.read(last, "V").shape == (24, 24, 24)
    reader.close()


LOCAL_WRITER = '''
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

comm = MPI.COMM_WORLD
ad = adios2.ADIOS(sys.argv[1], comm)
io = ad.DeclareIO("SimulationOutput")
rows = 16 + 8 * comm.rank  # blocks of different sizes
x = np.linspace(0, 1, 32)
var = io.DefineVariable("T", np.zeros((rows, 32)), [], [], [rows, 32])  # a local array: no global shape
engine = io.Open(sys.argv[2], adios2.Mode.Write)
for step in range(int(sys.argv[3])):
    y = np.linspace(comm.rank, comm.rank + 1, rows)[:, None]
    block = np.sin(6 * x[None, :] + 0.1 * step) * np.cos(4 * y) + 0.01 * np.random.default_rng(step).normal(size=(rows, 32))
    engine.BeginStep()
    engine.Put(var, np.ascontiguousarray(block), adios2.Mode.Sync)
    engine.EndStep()
engine.Close()
'''


@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the unchanged writer and the reader cohort need ADIOS2 built with MPI")
def test_local_arrays_in_transit(tmp_path, stagelearn_cli):
    """Local arrays (blocks without a global shape) are found from the stream and laid side by side."""
    script = tmp_path / "local_writer.py"
    script.write_text(LOCAL_WRITER)
    cfg = in_transit_config(tmp_path, "local", [sys.executable, str(script), str(IN_TRANSIT / "adios2.xml"), "sim.bp", "20"],
                            None, steps=19, tile_shape=[8, 8])
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    summary = json.loads((tmp_path / "results" / "local" / "summary.json").read_text())
    assert summary["steps_received"] == 20 and summary["steps_lost"] == 0 and summary["encoder_versions"] >= 1
    reader = CompressedOutputReader(tmp_path / "results" / "local" / "compressed.bp")
    assert reader.fields() == ["T"]
    field = reader.read(19, "T")
    reader.close()
    assert field.shape == (16 + 24, 32)  # block 0 (16 rows) then block 1 (24 rows)
    assert summary["decoded_check"]["psnr_db"] >= 39.9


@pytest.mark.timeout(300)
@pytest.mark.parametrize("learner", ["pca", "autoencoder"])
def test_gyrokinetic_velocity_space_samples_end_to_end(tmp_path, stagelearn_cli, learner):
    """The 5-D mock streams f(r, theta, phi, v_par, mu); staging learns on velocity-space slices (one
    sample per spatial point). With a pointwise bound e on f, the density and energy of the decoded f
    differ from those of the raw f by at most e times the moment of 1 (their weights are positive)."""
    from mpi4py import MPI

    from stagelearn.sim_mocks.gyrokinetic import GyrokineticMock5D, moments

    sim = {"type": "gyrokinetic", "ranks": 2, "n_r": 8, "n_theta": 8, "n_phi": 4, "n_vpar": 16, "n_mu": 8,
           "steps": 40, "plotgap": 2}
    cfg = small_config(tmp_path, f"gk_{learner}", simulation=sim, learner={"type": learner},
                       codec={"psnr_db": 50.0, "error_bound": {"abs": 1e-4}}, metrics={"sz3_every": 0})
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = tmp_path / "results" / f"gk_{learner}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_lost"] == 0 and summary["encoder_versions"] >= 1 and summary["compression_ratio"] > 2.0
    ref = json.loads((run_dir / "producer.json").read_text())["reference"]
    original = np.load(run_dir / f"reference_f_step{ref['step']}.npy")
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    decoded = reader.read(ref["step"], "f")
    assert reader.encoder(reader.steps and int(max(report_get(r, "encoder_version") for r in reader.reports(ref["step"], "f")))) \
        .variables["f"].tile_shape == (1, 1, 1, 16, 8)
    reader.close()
    mock = GyrokineticMock5D(8, 8, 4, 16, 8, comm=MPI.COMM_SELF)
    raw, rec = moments(original.astype(np.float64), mock.B, mock.grid), moments(decoded.astype(np.float64), mock.B, mock.grid)
    ones = moments(np.ones_like(original, dtype=np.float64), mock.B, mock.grid)
    assert float(np.abs(decoded - original).max()) <= 1e-4 * (1 + 1e-5)
    for name in ("density", "energy"):
        assert np.all(np.abs(rec[name] - raw[name]) <= 1e-4 * ones[name] * (1 + 1e-6) + 1e-12), name
        assert np.linalg.norm(rec[name] - raw[name]) / np.linalg.norm(raw[name]) < 5e-2, name  # ~0.5-1.5% measured
