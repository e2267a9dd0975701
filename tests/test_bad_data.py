"""Bad data from the simulation (issue 6), end to end: a small producer script built on
``stagelearn.staging.Producer`` (2-3 MPI ranks) streams over SST to a ``stagelearn stage`` job
(1 rank), and the decoded output is compared with exactly what the producers passed.

Cases: NaN/Inf in a field; block shape and dtype changes; a rank without a block in a step; a
rank that owns no cells; strided and Fortran-ordered arrays; a variable left out of a step;
values far outside the training range, with and without a pointwise error bound.
"""

import json
import math
import subprocess
import sys

import numpy as np
import pytest
import yaml

from conftest import MPIEXEC, REPO, child_env, run_cmd
from stagelearn.staging.adios import built_with_mpi
from stagelearn.staging.errors import StagelearnError
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.wire import report_get

pytestmark = [pytest.mark.sst, pytest.mark.mpi]

XML = REPO / "xml_configs" / "stagelearn.xml"
N = 32  # global field N x N, split by rows over the producer ranks
TILE = 8  # staging's default 2-D tile (8 x 8)
PSNR_DB = 40.0

# The producer side. Each scenario gives this rank's fields at a step; every block passed is saved
# (float64, per rank) so that the test compares the decoded output with exactly what was passed.
PRODUCER = r'''
import logging
import sys

import numpy as np
from mpi4py import MPI

from stagelearn.staging import Producer

logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
comm = MPI.COMM_WORLD
rank, size = comm.Get_rank(), comm.Get_size()
run_dir, xml, scenario, n_steps = sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])
N = 32
edges = [0, 16, 16, 32] if scenario == "zero_rows" else np.linspace(0, N, size + 1).astype(int).tolist()
a, b = edges[rank], edges[rank + 1]
x = np.linspace(0.0, 1.0, N)
VARIABLES = {"layout": ("T", "P", "Q"), "missing_variable": ("T", "P")}.get(scenario, ("T",))


def smooth(step):
    """A smooth travelling pattern: easy to learn, so coded steps meet the target."""
    return (np.sin(2 * np.pi * x[:, None] + 0.2 * step) * np.cos(2 * np.pi * x[None, :] - 0.1 * step)
            + 0.3 * np.sin(5 * x[:, None] * x[None, :]))


def fields(step):
    g = smooth(step)
    if scenario == "nonfinite" and step in (0, 7, 12):  # a raw step and two coded ones
        g[3:5, 20:22] = np.nan  # inside one tile
        g[6:10, 6:10] = np.nan  # across four tiles
        g[20, 9] = np.inf
        g[31, 31] = -np.inf
    if scenario == "outlier" and step == 12:  # an encoder is in use by then
        g[4:10, 4:10] *= 1000.0
    if scenario == "rank_without_block":
        return {"T": None if (rank == 1 and step in (3, 9, 14)) else g[a:b]}
    if scenario == "missing_variable":  # P left out on every rank at steps 1 and 7, on rank 0 at step 11
        out = {"T": g[a:b]}
        if step not in (1, 7) and not (step == 11 and rank == 0):
            out["P"] = g[a:b] + 2.0
        return out
    if scenario == "layout":
        wide = np.full((b - a, 2 * N), -7.0)
        wide[:, ::2] = g[a:b]
        return {"T": wide[:, ::2],  # strided view of a larger float64 array
                "P": np.asfortranarray(2.0 * g[a:b], dtype=np.float32),  # Fortran order, float32
                "Q": np.ascontiguousarray((g[a:b] - 1.0).T).T}  # transposed view
    return {"T": g[a:b]}


passed = {}
with Producer(f"{run_dir}/sst/stream", comm=comm, config_file=xml, open_timeout_s=30, step_timeout_s=30) as prod:
    for name in VARIABLES:
        prod.define_variable(name, (N, N), (a, 0), (b - a, N))
    prod.open()
    for step in range(n_steps):
        f = fields(step)
        prod.write(step, f)
        passed.update({f"{k}/{step}": np.array(v, dtype=np.float64) for k, v in f.items() if v is not None})
np.savez(f"{run_dir}/passed.p{rank}.npz", start=np.array([a]), **passed)
'''


def run_pipeline(tmp_path, scenario, *, producers=2, steps=20, codec=None):
    """Stage (1 rank) and the producer script (``producers`` ranks) over SST; returns the run directory."""
    run_dir = tmp_path / "run"
    (run_dir / "sst").mkdir(parents=True)
    cfg = {
        "run_name": scenario, "output_dir": str(tmp_path),
        # only `ranks` (per_rank layout) and the step count matter here: the script is the simulation
        "simulation": {"type": "heat2d", "ranks": producers, "nx": N, "ny": N, "steps": steps - 1, "plotgap": 1},
        "staging": {"ranks": 1},
        "adios2": {"config_file": str(XML)},
        "learner": {"warmup_steps": 2, "publish_every": 5},
        "codec": {"kind": "learned", "psnr_db": PSNR_DB, "raw_fraction": 0.02, **(codec or {})},
        "metrics": {"sz3_every": 0},
        "timeouts": {"open_s": 30, "step_s": 30, "run_s": 60},
    }
    path = tmp_path / f"{scenario}.yaml"
    path.write_text(yaml.safe_dump(cfg))
    script = tmp_path / "producer.py"
    script.write_text(PRODUCER)
    stage = subprocess.Popen([MPIEXEC, "-n", "1", sys.executable, "-m", "stagelearn", "stage", str(path), "--run-dir",
                              str(run_dir)], cwd=tmp_path, env=child_env(), stdout=subprocess.PIPE,
                             stderr=subprocess.STDOUT, text=True)
    try:
        prod = run_cmd([MPIEXEC, "-n", str(producers), sys.executable, "-m", "mpi4py", str(script), str(run_dir), str(XML),
                        scenario, str(steps)], timeout=60, cwd=tmp_path)
        stage_out, _ = stage.communicate(timeout=30)
    finally:
        if stage.poll() is None:  # never leave a staging job behind
            stage.terminate()
            try:
                stage.wait(timeout=10)
            except subprocess.TimeoutExpired:
                stage.kill()
    assert prod.returncode == 0, f"producers failed:\n{prod.stdout[-3000:]}\n{prod.stderr[-3000:]}"
    assert stage.returncode == 0, f"staging failed:\n{stage_out[-3000:]}"
    (run_dir / "producer.log").write_text(prod.stdout + prod.stderr)
    (run_dir / "stage.log").write_text(stage_out)
    return run_dir


def passed_field(run_dir, var, step, producers=2):
    """The global field the producers passed at ``step`` (float64) and the mask of cells they passed."""
    field, covered = np.zeros((N, N)), np.zeros((N, N), dtype=bool)
    for r in range(producers):
        with np.load(run_dir / f"passed.p{r}.npz") as part:
            if f"{var}/{step}" in part:
                block, a = part[f"{var}/{step}"], int(part["start"][0])
                field[a:a + block.shape[0]] = block
                covered[a:a + block.shape[0]] = True
    return field, covered


def psnr_db(decoded, exact):
    """PSNR of ``decoded`` against the finite values of ``exact`` (non-finite cells must be equal)."""
    finite = np.isfinite(exact)
    err = np.where(finite, decoded.astype(np.float64) - np.where(finite, exact, 0.0), 0.0)
    span = float(exact[finite].max() - exact[finite].min())
    mse = float(np.mean(err**2))
    return math.inf if mse == 0 else 10.0 * math.log10(span**2 / mse)


def version(reader, step, var):
    return int(max(report_get(r, "encoder_version") for r in reader.reports(step, var)))


def check_step(reader, run_dir, var, step, producers=2):
    """Decoded ``var`` at ``step`` against what was passed: a raw step bit-exact (as float32), a coded
    step within the PSNR target, its maximum error the one the producers reported."""
    exact, covered = passed_field(run_dir, var, step, producers)
    assert covered.all()
    decoded = reader.read(step, var)
    if version(reader, step, var) == 0:
        np.testing.assert_array_equal(decoded, exact.astype(np.float32), err_msg=f"raw step {step} of {var}")
    else:
        assert psnr_db(decoded, exact) >= PSNR_DB - 0.05, (var, step)
        finite = np.isfinite(exact)
        reported = max(report_get(r, "max_abs_error") for r in reader.reports(step, var))
        assert float(np.abs(decoded[finite] - exact[finite]).max()) == pytest.approx(reported, rel=1e-5, abs=1e-7)
    return decoded, exact


@pytest.mark.timeout(120)
def test_nonfinite_tiles_are_sent_raw_kept_out_of_the_learner_and_counted(tmp_path):
    run_dir = run_pipeline(tmp_path, "nonfinite")
    summary = json.loads((run_dir / "staging_summary.json").read_text())
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.steps == list(range(20))
    assert version(reader, 0, "T") == 0 and version(reader, 7, "T") >= 1 and version(reader, 12, "T") >= 1
    expected = 0
    for step in reader.steps:
        decoded, exact = check_step(reader, run_dir, "T", step)
        # NaN and +-Inf exactly where they were passed, nowhere else
        for kind in (np.isnan, np.isposinf, np.isneginf):
            np.testing.assert_array_equal(kind(decoded), kind(exact), err_msg=f"step {step}: {kind.__name__}")
        rows, cols = np.nonzero(~np.isfinite(exact))
        expected += len({(r // TILE, c // TILE) for r, c in zip(rows, cols)})  # rank blocks are whole tiles
    assert expected == 3 * 7  # (1 + 4 + 1 + 1) tiles at steps 0, 7 and 12
    assert summary["nonfinite_tiles"] == {"T": expected}
    # the learner got every raw tile but those: all tiles of raw steps, the raw tiles of coded ones
    raw_tiles = sum(report_get(r, "n") / TILE**2 if report_get(r, "encoder_version") == 0 else report_get(r, "n_raw_tiles")
                    for step in reader.steps for r in reader.reports(step, "T"))
    assert summary["tiles_learned_rank0"] == raw_tiles - expected
    for v in range(1, summary["encoder_versions"] + 1):  # finite models (from_arrays rejects NaN/Inf)
        assert reader.encoder(v).variables["T"].kind == "pca"
    reader.close()


SHAPE_AND_DTYPE = '''
import numpy as np
from mpi4py import MPI
from stagelearn.staging import Producer
from stagelearn.staging.adios import bindings

comm = MPI.COMM_WORLD
rank = comm.Get_rank()
base = np.arange(24, dtype=np.float64).reshape(4, 6) + 100 * rank


def refused(prod, step, fields, *words):
    try:
        prod.write(step, fields)
    except ValueError as exc:
        assert all(w in str(exc) for w in words), (rank, str(exc))
        print(f"rank {rank} refused: {exc}", flush=True)
    else:
        raise AssertionError(f"rank {rank}: step {step} was accepted")


# BP5 in the XML: the producer writes a file itself, no staging needed for the checks
with Producer("stream", comm=comm, config_file="XML", layout="LAYOUT") as prod:
    prod.define_variable("T", (8, 6), (4 * rank, 0), (4, 6))
    prod.open()
    prod.write(0, {"T": base.astype(np.float32)})
    prod.write(1, {"T": base})  # float64
    prod.write(2, {"T": base.astype(np.int32)})  # int32
    # one bad rank: every rank raises the same error (no rank waits in a collective)
    refused(prod, 3, {"T": base[:3] if rank == 1 else base}, "step 3", "producer rank 1", "variable T",
            "block shape (3, 6)", "expected (4, 6)")
    refused(prod, 3, {"T": base.astype(np.complex64) if rank == 0 else base}, "step 3", "producer rank 0",
            "variable T", "complex64", "real and imaginary parts")
    refused(prod, 3, {"T": base.astype(bool)}, "step 3", "variable T", "dtype bool")
    refused(prod, 3, {"T": base, "U": base}, "step 3", "undefined variables ['U']", "define_variable")
    prod.write(3, {"T": base})  # nothing was sent for the refused calls: step 3 is still free
    assert prod.steps_written == 4

if rank == 0:
    b = bindings()
    adios = b.ADIOS()
    io = adios.DeclareIO("check")
    eng = io.Open("stream.bp" if "LAYOUT" == "shared" else "stream.p0.bp", b.Mode.ReadRandomAccess)
    var = io.InquireVariable("T")
    assert var.Steps() == 4, var.Steps()
    for step in range(4):
        var.SetStepSelection([step, 1])
        var.SetSelection([[0, 0], [4, 6]])
        out = np.empty((4, 6), dtype=np.float32)
        eng.Get(var, out, b.Mode.Sync)
        np.testing.assert_array_equal(out, base.astype(np.float32))
    eng.Close()
'''


@pytest.mark.timeout(90)
def test_shape_and_dtype_changes(tmp_path, mpirun):
    """A block shape that changes, or a complex or non-numeric dtype, raises a ValueError naming the
    step, rank, variable and the expected shape on every rank; float32, float64 and int32 steps are
    accepted."""
    layout = "shared" if built_with_mpi() else "per_rank"
    code = SHAPE_AND_DTYPE.replace("XML", str(REPO / "xml_configs" / "stagelearn-bp5.xml")).replace("LAYOUT", layout)
    proc = mpirun(2, code, timeout=60)
    for rank in (0, 1):
        assert f"rank {rank} refused: step 3, producer rank 1: variable T has block shape (3, 6), expected (4, 6)" \
            in proc.stdout
        assert f"rank {rank} refused: step 3, producer rank 0: variable T is complex (complex64)" in proc.stdout


@pytest.mark.timeout(120)
def test_rank_without_a_block_in_some_steps(tmp_path):
    """``fields["T"] = None`` on rank 1 at a raw step (3) and two coded steps (9, 14)."""
    run_dir = run_pipeline(tmp_path, "rank_without_block")
    summary = json.loads((run_dir / "staging_summary.json").read_text())
    assert summary["steps_received"] == 20 and summary["steps_lost"] == 0 and summary["end"] == "clean"
    log = (run_dir / "producer.log").read_text()
    for step in (3, 9, 14):
        assert f"step {step}, producer rank 1: no block of ['T']" in log
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert version(reader, 3, "T") == 0 and version(reader, 9, "T") >= 1
    for step in reader.steps:
        if step not in (3, 9, 14):
            check_step(reader, run_dir, "T", step)
            continue
        with pytest.raises(StagelearnError, match=f"step {step} of T is incomplete: 512 of 1024 values have no block"):
            reader.read(step, "T")
        rows = reader.reports(step, "T")
        assert [int(report_get(r, "rank")) for r in rows] == [0, 1]
        assert report_get(rows[1], "n") == 0 and report_get(rows[1], "raw_bytes") == 0  # staging accounts the rank
        block, header = reader.decoded_block(step, "T", 0)  # rank 0's half is there and meets the target
        exact, _ = passed_field(run_dir, "T", step)
        assert header["count"] == [16, N] and header["start"] == [0, 0]
        if version(reader, step, "T") == 0:
            np.testing.assert_array_equal(block, exact[:16].astype(np.float32))
        else:
            assert float(np.abs(block - exact[:16]).max()) == pytest.approx(report_get(rows[0], "max_abs_error"), rel=1e-5)
    reader.close()


@pytest.mark.timeout(120)
def test_rank_owning_no_cells(tmp_path):
    """Three producers; rank 1 owns 0 of the 32 rows (count (0, 32)) in every step."""
    run_dir = run_pipeline(tmp_path, "zero_rows", producers=3, steps=16)
    summary = json.loads((run_dir / "staging_summary.json").read_text())
    assert summary["steps_received"] == 16 and summary["blocks_per_step"] == 3 and summary["encoder_versions"] >= 2
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert version(reader, reader.steps[-1], "T") >= 1
    for step in reader.steps:
        check_step(reader, run_dir, "T", step, producers=3)
        empty = reader.reports(step, "T")[1]
        assert int(report_get(empty, "rank")) == 1 and report_get(empty, "n") == 0 and report_get(empty, "raw_bytes") == 0
    reader.close()


@pytest.mark.timeout(120)
def test_strided_transposed_and_fortran_ordered_blocks(tmp_path):
    """A strided view (float64), a Fortran-ordered float32 array and a transposed view decode to the
    values passed: bit-exact in raw steps, within the target in coded ones."""
    run_dir = run_pipeline(tmp_path, "layout", steps=14)
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.fields() == ["P", "Q", "T"]
    for var in ("T", "P", "Q"):
        assert version(reader, 0, var) == 0 and version(reader, 13, var) >= 1
        for step in reader.steps:
            check_step(reader, run_dir, var, step)
    reader.close()


@pytest.mark.timeout(120)
def test_variable_left_out_of_a_step(tmp_path, stagelearn_cli):
    """P is left out on every rank at steps 1 (raw) and 7 (coded), on rank 0 only at step 11: those
    steps have no (or half of) P, every other step and variable is complete."""
    run_dir = run_pipeline(tmp_path, "missing_variable")
    summary = json.loads((run_dir / "staging_summary.json").read_text())
    assert summary["steps_received"] == 20 and summary["steps_lost"] == 0 and summary["encoder_versions"] >= 2
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert version(reader, 7, "T") >= 1
    for step in reader.steps:
        check_step(reader, run_dir, "T", step)
        if step in (1, 7, 11):
            missing = 512 if step == 11 else 1024
            with pytest.raises(StagelearnError, match=f"step {step} of P is incomplete: {missing} of 1024 values"):
                reader.read(step, "P")
            assert [report_get(r, "n") for r in reader.reports(step, "P")] == ([0, 512] if step == 11 else [0, 0])
        else:  # the steps after a missing one still decode (each step of P has its blocks)
            check_step(reader, run_dir, "P", step)
    reader.close()
    out = stagelearn_cli("decode", run_dir / "compressed.bp", "--step", 7, "--var", "P", timeout=60)
    assert out.returncode == 1 and "Traceback" not in out.stderr
    assert "step 7 of P is incomplete: 1024 of 1024 values have no block" in out.stderr
    assert stagelearn_cli("decode", run_dir / "compressed.bp", "--step", 8, "--var", "P", timeout=60).returncode == 0


@pytest.mark.timeout(120)
@pytest.mark.parametrize("bound", [None, 0.01])
def test_values_far_outside_the_training_range(tmp_path, bound):
    """At step 12, after the first encoder, a 6 x 6 region is multiplied by 1000. Without a bound the
    report shows the large error there (and the decoded field has it); with ``codec.error_bound``
    every decoded value stays within the bound of the exact field."""
    run_dir = run_pipeline(tmp_path, "outlier", codec={"error_bound": {"abs": bound}} if bound else None)
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert version(reader, 12, "T") >= 1
    table = {row["step"]: row for row in json.loads((run_dir / "steps.json").read_text())}
    errors = {}
    for step in reader.steps:
        decoded, exact = check_step(reader, run_dir, "T", step)
        errors[step] = float(np.abs(decoded - exact).max())
        assert table[step]["max_abs_error"] == pytest.approx(errors[step], rel=1e-5, abs=1e-7)
        if bound is not None and version(reader, step, "T") >= 1:  # pointwise, float32 rounding of the value aside
            slack = np.spacing(np.abs(exact).astype(np.float32)).astype(np.float64)
            assert np.all(np.abs(decoded - exact) <= bound + slack), step
    reader.close()
    others = max(e for s, e in errors.items() if s != 12)
    if bound is None:
        assert errors[12] > 1.0 and errors[12] > 100 * others  # values ~1000 coded with a basis learned on ~1
    else:
        assert errors[12] <= bound * (1 + 1e-6) + np.spacing(np.float32(1300.0))
