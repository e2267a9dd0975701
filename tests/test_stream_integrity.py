"""Stream integrity in transit (issues 19 and 15): steps stay aligned with the writer's, arrays that
appear late are stored, integer arrays are listed as skipped, odd variables do not crash staging,
coded blocks never exceed raw, and blocks are identified by writer.

The end-to-end tests stream known values from a plain ADIOS2 writer (no stagelearn import) and
compare every decoded step with them through :class:`CompressedOutputReader`.
"""

from __future__ import annotations

import json
import sys

import numpy as np
import pytest
import yaml

from stagelearn.staging.errors import StagelearnError
from stagelearn.staging.output import CompressedOutputReader
from stagelearn.staging.wire import report_get
from test_pipeline import ADIOS2_MPI, IN_TRANSIT, in_transit_config

N = 32

# A plain ADIOS2 code: T (float64, global) at every step but GAP, where the step holds only scalars
# and an int64 array; x (float64) only at X_STEPS; y (int64 near 2^40, not exact in float32) every step;
# its own step variable `step` = 100 + stream step.
GAPPY_WRITER = '''
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

STEPS, GAP, X_STEPS = 8, 3, (1, 2, 4, 5, 6, 7)
N = 32
i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")

def known(var, s):
    base = np.sin(0.2 * i + 0.05 * s) * np.cos(0.15 * j)
    return base + 10.0 * s if var == "T" else -base - 10.0 * s

ad = adios2.ADIOS(sys.argv[1], MPI.COMM_WORLD)
io = ad.DeclareIO("SimulationOutput")
T, x, y, st = np.zeros((N, N)), np.zeros((N, N)), np.zeros(16, dtype=np.int64), np.zeros(1, dtype=np.int64)
vT = io.DefineVariable("T", T, [N, N], [0, 0], [N, N])
vx = io.DefineVariable("x", x, [N, N], [0, 0], [N, N])
vy = io.DefineVariable("y", y, [16], [0], [16])
vs = io.DefineVariable("step", st)
engine = io.Open(sys.argv[2], adios2.Mode.Write)
for s in range(STEPS):
    engine.BeginStep()
    st[0] = 100 + s
    engine.Put(vs, st, adios2.Mode.Sync)
    if s != GAP:
        T[:] = known("T", s)
        engine.Put(vT, T, adios2.Mode.Sync)
    if s in X_STEPS:
        x[:] = known("x", s)
        engine.Put(vx, x, adios2.Mode.Sync)
    y[:] = 2**40 + 3 * np.arange(16) + s
    engine.Put(vy, y, adios2.Mode.Sync)
    engine.EndStep()
engine.Close()
'''

STEPS, GAP, X_STEPS = 8, 3, (1, 2, 4, 5, 6, 7)


def known(var, s):
    """The writer's values (computed independently of the product)."""
    i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")
    base = np.sin(0.2 * i + 0.05 * s) * np.cos(0.15 * j)
    return base + 10.0 * s if var == "T" else -base - 10.0 * s


def writer_config(tmp_path, name, source, variables, *, steps, update=None, **kwargs):
    """The run YAML for a plain ADIOS2 writer script (``source``) in transit; ``update`` maps a
    YAML section to the keys to set in it (e.g. ``{"simulation": {"ranks": 3}}``)."""
    script = tmp_path / f"{name}_writer.py"
    script.write_text(source)
    cfg = in_transit_config(tmp_path, name, [sys.executable, str(script), str(IN_TRANSIT / "adios2.xml"), "sim.bp"],
                            variables, steps=steps, **kwargs)
    doc = yaml.safe_load(cfg.read_text())
    for section, keys in (update or {}).items():
        doc[section].update(keys)
    cfg.write_text(yaml.safe_dump(doc))
    return cfg


def _gappy_run(tmp_path, stagelearn_cli, name, variables):
    # one writer block per step, two staging ranks (one holds nothing)
    cfg = writer_config(tmp_path, name, GAPPY_WRITER, variables, steps=STEPS - 1, tile_shape=[8, 8],
                        update={"simulation": {"ranks": 1}})
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    return proc, tmp_path / "results" / name


def _check_decoded(reader, var, steps):
    """Every step of ``var`` decodes to the writer's values of that same step (raw steps bit-exact
    in float32; coded steps within the PSNR target; steps are 10 apart, so a shift cannot pass)."""
    for s in steps:
        got = reader.read(s, var)
        want = known(var, s).astype(np.float32)
        if all(report_get(r, "encoder_version") == 0 for r in reader.reports(s, var)):
            np.testing.assert_array_equal(got, want, err_msg=f"{var} step {s}")
        else:
            assert np.abs(got - want).max() < 0.2, f"{var} step {s}: max error {np.abs(got - want).max()}"


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_steps_stay_aligned_late_variables_are_stored_and_integers_listed(tmp_path, stagelearn_cli):
    """Issue 19 item 1, issue 15 items 1 and 2 (in transit), discovery (no staging.variables)."""
    proc, run_dir = _gappy_run(tmp_path, stagelearn_cli, "gappy", None)
    out = proc.stdout + proc.stderr
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    staging = json.loads((run_dir / "staging_summary.json").read_text())
    assert staging["steps_without_data"] == {"T": [GAP], "x": [GAP]}
    assert "y" in staging["skipped_variables"] and "int64" in staging["skipped_variables"]["y"]
    logs = out + "".join(p.read_text() for p in run_dir.rglob("*.log"))
    assert "y is skipped" in logs  # the log says so, with the reason
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_lost"] == 0
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.steps == list(range(STEPS))  # the writer's steps, no -1
    assert reader.fields() == ["T", "x"]  # y (int64) is not stored as float32
    assert {s: int(v[0]) for s, v in reader.summary("code_step").items()} == {s: 100 + s for s in range(STEPS)}
    _check_decoded(reader, "T", [s for s in range(STEPS) if s != GAP])
    _check_decoded(reader, "x", X_STEPS)
    for var, s in (("T", GAP), ("x", GAP), ("x", 0)):
        with pytest.raises(StagelearnError, match="no data"):
            reader.read(s, var)
    reader.close()


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_listed_variable_absent_at_step_0_and_listed_integers(tmp_path, stagelearn_cli):
    """Issue 15 items 1 and 2: `variables: [x, T, y]` does not abort at step 0; x is stored from its
    first step; the listed int64 y (not exact in float32) is listed as skipped, never reported exact."""
    proc, run_dir = _gappy_run(tmp_path, stagelearn_cli, "listed", ["x", "T", "y"])
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    staging = json.loads((run_dir / "staging_summary.json").read_text())
    assert "int64" in staging["skipped_variables"]["y"]
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.fields() == ["T", "x"] and reader.steps == list(range(STEPS))
    _check_decoded(reader, "x", X_STEPS)
    _check_decoded(reader, "T", [s for s in range(STEPS) if s != GAP])
    reader.close()



# Two writer ranks: T (global, one block each), `rid` a per-rank local value (LocalValueDim), `late`
# a float array first written at step 5 (after the 3 warm-up steps).
ODD_WRITER = '''
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

comm = MPI.COMM_WORLD
r = comm.rank
ad = adios2.ADIOS(sys.argv[1], comm)
io = ad.DeclareIO("SimulationOutput")
i, j = np.meshgrid(np.arange(16), np.arange(32), indexing="ij")
T, late, rid = np.zeros((16, 32)), np.zeros((16, 32)), np.zeros(1)
vT = io.DefineVariable("T", T, [32, 32], [16 * r, 0], [16, 32])
vl = io.DefineVariable("late", late, [32, 32], [16 * r, 0], [16, 32])
vr = io.DefineVariable("rid", rid, [adios2.LocalValueDim], [], [])
engine = io.Open(sys.argv[2], adios2.Mode.Write)
for s in range(10):
    engine.BeginStep()
    T[:] = np.sin(0.2 * (i + 16 * r) + 0.05 * s) * np.cos(0.1 * j) + 10.0 * s
    engine.Put(vT, T, adios2.Mode.Sync)
    rid[0] = 100 * s + r
    engine.Put(vr, rid, adios2.Mode.Sync)
    if s >= 5:
        late[:] = np.cos(0.1 * (i + 16 * r)) * np.sin(0.2 * j) - 10.0 * s
        engine.Put(vl, late, adios2.Mode.Sync)
    engine.EndStep()
engine.Close()
'''


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_odd_variables_do_not_crash_staging(tmp_path, stagelearn_cli):
    """Issue 19 item 4: a listed per-rank local value (no tiles ever) and a variable first written after
    the warm-up are stored as-is; T is still coded; `stagelearn decode --var` on them works or says why."""
    cfg = writer_config(tmp_path, "odd", ODD_WRITER, ["T", "rid", "late"], steps=9,
                        update={"learner": {"publish_every": 4}})
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    run_dir = tmp_path / "results" / "odd"
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    assert reader.steps == list(range(10))
    for s in range(10):
        np.testing.assert_array_equal(reader.read(s, "rid"), [100.0 * s, 100.0 * s + 1])
    assert any(report_get(r, "encoder_version") >= 1 for r in reader.reports(9, "T"))
    i, j = np.meshgrid(np.arange(32), np.arange(32), indexing="ij")
    for s in range(5, 10):
        want = (np.cos(0.1 * i) * np.sin(0.2 * j) - 10.0 * s).astype(np.float32)
        assert np.abs(reader.read(s, "late") - want).max() < 0.2
    with pytest.raises(StagelearnError, match="no data"):
        reader.read(2, "late")
    reader.close()
    ok = stagelearn_cli("decode", run_dir / "compressed.bp", "--step", 3, "--var", "rid", timeout=60)
    assert ok.returncode == 0 and "rid step 3: shape (2,)" in ok.stdout, ok.stderr
    bad = stagelearn_cli("decode", run_dir / "compressed.bp", "--step", 2, "--var", "late", timeout=60)
    assert bad.returncode != 0 and "Traceback" not in bad.stderr and "no data for late" in bad.stderr



# Three writer ranks put a local array of 3x8 values each; rank 1 skips step 2.
SKIPPING_WRITER = '''
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

comm = MPI.COMM_WORLD
r = comm.rank
ad = adios2.ADIOS(sys.argv[1], comm)
io = ad.DeclareIO("SimulationOutput")
a = np.zeros((3, 8))
var = io.DefineVariable("a", a, [], [], [3, 8])  # a local array
engine = io.Open(sys.argv[2], adios2.Mode.Write)
for s in range(5):
    engine.BeginStep()
    if not (r == 1 and s == 2):
        a[:] = 100.0 * s + 10.0 * r + np.arange(3)[:, None] + 0.01 * np.arange(8)
        engine.Put(var, a, adios2.Mode.Sync)
    engine.EndStep()
engine.Close()
'''


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_local_array_blocks_are_placed_by_writer_when_a_rank_skips_a_step(tmp_path, stagelearn_cli):
    """Issue 15 item 4: rank 2's values never land in rank 1's place; the skipped slot is reported missing."""
    cfg = writer_config(tmp_path, "skip", SKIPPING_WRITER, None, steps=4,
                        update={"simulation": {"ranks": 3}, "staging": {"ranks": 1}})
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=280)
    assert proc.returncode == 0, f"run failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    reader = CompressedOutputReader(tmp_path / "results" / "skip" / "compressed.bp")
    def want(s, r):
        return 100.0 * s + 10.0 * r + np.arange(3)[:, None] + 0.01 * np.arange(8)

    for s in (0, 1, 3, 4):
        np.testing.assert_allclose(reader.read(s, "a"), np.concatenate([want(s, r) for r in range(3)]), atol=0.2)
    with pytest.raises(StagelearnError, match="incomplete"):
        reader.read(2, "a")
    got = reader.read(2, "a", partial=True)
    assert got.shape == (9, 8) and np.isnan(got[3:6]).all()
    np.testing.assert_allclose(got[:3], want(2, 0), atol=0.2)
    np.testing.assert_allclose(got[6:], want(2, 2), atol=0.2)  # rank 2's values in rank 2's place
    reader.close()



DEAD_AFTER_OPEN = '''
import os
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

ad = adios2.ADIOS(sys.argv[1], MPI.COMM_WORLD)
io = ad.DeclareIO("SimulationOutput")
io.DefineVariable("T", np.zeros((8, 8)), [8, 8], [0, 0], [8, 8])
engine = io.Open(sys.argv[2], adios2.Mode.Write)
os._exit(1)  # the code dies after Open, before its first step
'''


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_code_dead_before_its_first_step_still_gets_a_merged_ledger(tmp_path, stagelearn_cli):
    """Issue 19 item 4: `run` and `report` do not crash in merge_ledger (n_ranks None); the ledger is written."""
    cfg = writer_config(tmp_path, "dead", DEAD_AFTER_OPEN, None, steps=4,
                        update={"simulation": {"ranks": 1}, "staging": {"ranks": 1},
                                "timeouts": {"open_s": 20, "step_s": 20}})
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=200)
    out = proc.stdout + proc.stderr
    assert proc.returncode != 0, out[-3000:]  # the code failed (its own exit code comes first)
    assert "TypeError" not in out and "Traceback" not in out and "not a stagelearn compressed output" not in out, out
    run_dir = tmp_path / "results" / "dead"
    assert (run_dir / "ledger.jsonl").exists()
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["staging_end"] == "producer_lost" and summary["steps_received"] == 0
    reader = CompressedOutputReader(run_dir / "compressed.bp")  # an empty output is still an output
    assert reader.steps == [] and reader.fields() == []
    reader.close()
    again = stagelearn_cli("report", cfg, timeout=100)
    assert "TypeError" not in again.stdout + again.stderr and "Traceback" not in again.stdout + again.stderr


# ----------------------------------------------------------------------------- unit tests (no SST)

def _noise_block_and_model(seed=0):
    """A block of white noise of one tile (nothing a smooth PCA basis predicts) and such a basis: coded at a tight
    MSE target, the payload (codes plus raw tiles) outgrows the raw block."""
    from test_step_encode import pca_model

    rng = np.random.default_rng(seed)
    return rng.normal(size=(4, 4)).astype(np.float32), pca_model(rng)  # one tile: headers dominate


def test_a_coded_block_never_exceeds_raw_plus_a_fixed_header():
    """Issue 19 item 5: a block whose code is larger than raw goes raw (lossless), on the one encode path."""
    from stagelearn.analytics.codec import decode_block, encode_block
    from stagelearn.analytics.payload import encode_raw_block, parse_payload
    from stagelearn.analytics.step_encode import encode_step_block
    from stagelearn.analytics.temporal import PredictionChain

    block, model = _noise_block_and_model()
    header = {"step": 2, "variable": "T", "rank": 0, "encoder_version": 1, "shape": [4, 4], "start": [0, 0],
              "count": [4, 4]}
    plain = encode_block(block, model.codec(), model.tile_shape, raw_fraction=0.02, target_mse=1e-8,
                         header=dict(header, ref_step=None))
    raw = encode_raw_block(block, header=dict(header, tile_shape=list(model.tile_shape)))
    assert len(plain.payload) > len(raw)  # the codec alone expands this block
    chain = PredictionChain()
    code = encode_step_block(block, model, step=2, chain=chain, chain_key=("T", 0), target_mse=1e-8, header=header)
    assert len(code.payload) <= block.nbytes + 512  # raw size plus a fixed header
    assert parse_payload(code.payload)[0]["kind"] == "raw"
    np.testing.assert_array_equal(code.reconstruction, block)
    assert code.stats.max_abs_error == 0.0
    got, _, _ = decode_block(code.payload, model.codec(), prev=None)
    np.testing.assert_array_equal(got, block)


def test_learner_tiles_of_a_raw_fallback_payload_are_the_block():
    """The staging learner reads the tiles of a block that went raw after an encoder (in situ path)."""
    from stagelearn.analytics.step_encode import encode_step_block
    from stagelearn.analytics.temporal import PredictionChain
    from stagelearn.analytics.tiling import to_tiles
    from stagelearn.staging.block import ReceivedBlock
    from stagelearn.staging.step_tiles import raw_tiles_of
    from stagelearn.staging.wire import make_report

    block, model = _noise_block_and_model(1)
    code = encode_step_block(block, model, step=0, chain=PredictionChain(), chain_key="T", target_mse=1e-8,
                             header={"step": 0, "variable": "T", "rank": 0, "start": [0, 0], "shape": [4, 4]})
    blk = ReceivedBlock(var="T", rank=0, report=make_report(step=0, rank=0), payload=code.payload)
    np.testing.assert_array_equal(raw_tiles_of(blk, model.tile_shape), to_tiles(block, model.tile_shape))


@pytest.mark.parametrize("in_transit", [True, False])
def test_ledger_is_merged_when_staging_never_saw_a_step(tmp_path, in_transit):
    """Issue 19 item 4: a code dead after Open (or gone before staging opened) leaves staging without
    a block count (n_ranks None); the ledger is still merged (no TypeError) and names the steps."""
    from stagelearn.staging.ledger import merge_ledger, staging_part

    part = staging_part(str(tmp_path))
    part.add(event="end", status="clean", last_step=-1, missing=None)
    part.close()
    counts = merge_ledger(str(tmp_path), expected_steps=3, n_ranks=None, in_transit=in_transit)
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    assert [(e["step"], e["rank"]) for e in lines] == [(0, 0), (1, 0), (2, 0)]
    assert counts["steps_expected"] == 3 and counts["staging_end"] == "clean"
    if in_transit:
        assert counts["steps_lost"] == 3 and all(e["status"] == "lost" for e in lines)


def test_a_step_without_data_is_in_the_ledger_as_such(tmp_path):
    """Issue 19 item 1: a writer step holding none of the stored arrays is listed as ``no_data``, not lost."""
    from stagelearn.staging.ledger import merge_ledger, staging_part

    part = staging_part(str(tmp_path))
    part.add(step=0, rank=0, encoder_version=0, bytes=10)
    part.add(event="no_data", step=1)
    part.add(step=2, rank=0, encoder_version=1, bytes=5)
    part.add(event="end", status="clean", last_step=2, missing=None)
    part.close()
    counts = merge_ledger(str(tmp_path), expected_steps=3, n_ranks=1, in_transit=True)
    assert counts["steps_lost"] == 0 and counts["entries"] == {"sent_raw": 1, "no_data": 1, "sent_encoded": 1}


def test_a_variable_without_tiles_does_not_hold_back_or_crash_publication():
    """Issue 19 item 4: a learner that never got tiles (a late variable, a per-rank value) is left out
    of the encoder; the others publish (before: never published, or AttributeError)."""
    from fakes import run_ranks
    from stagelearn.analytics.config import LearnerConfig
    from stagelearn.staging.learning import LearnerSet

    rng = np.random.default_rng(0)
    tiles = rng.normal(size=(40, 16))

    def rank(comm):
        ls = LearnerSet(LearnerConfig(), comm)
        ls.add("T", (4, 4))
        ls.add("late", (4, 4))
        ls.learn("T", tiles, np.zeros(len(tiles), dtype=np.int64), 0)
        ls.learn("late", np.zeros((0, 16)), np.zeros(0, dtype=np.int64), 0)
        view = ls.ready_view()
        return ls.publishable(), view.variables, sorted(view.learners), sorted(view.tile_shapes)

    assert run_ranks(2, rank) == [(True, ["T"], ["T"], ["T"])] * 2


def _bp5_blocks_info(tmp_path, values):
    """The writer's own BlocksInfo of ``values`` (one block of a plain BP5 file written here)."""
    from stagelearn.staging.adios import bindings

    b = bindings()
    adios = b.ADIOS()
    io = adios.DeclareIO("w")
    io.SetEngine("BP5")
    engine = io.Open(str(tmp_path / "one.bp"), b.Mode.Write)
    var = io.DefineVariable("x", values, list(values.shape), [0] * values.ndim, list(values.shape))
    engine.BeginStep()
    engine.Put(var, values, b.Mode.Sync)
    engine.EndStep()
    engine.Close()
    io = adios.DeclareIO("r")
    io.SetEngine("BP5")
    engine = io.Open(str(tmp_path / "one.bp"), b.Mode.ReadRandomAccess)
    info = engine.BlocksInfo("x", 0)[0]
    engine.Close()
    return info


def test_blocks_are_checked_against_the_writers_blocksinfo(tmp_path):
    """Issue 19 item 3: garbage (huge values, -inf) and all zeros that the writer's own min/max rule out
    are found; the writer's true block passes (its min/max travel with 6 digits only)."""
    from stagelearn.staging.block_check import check_block

    rng = np.random.default_rng(0)
    good = (rng.normal(size=(8, 8)) * 1234.5678 + 0.001).astype(np.float64)
    info = _bp5_blocks_info(tmp_path, good)
    assert check_block(good, info) is None and check_block(good.astype(np.float32), info) is None
    garbage = good.copy()
    garbage[0, :3] = (-2.9e29, -np.inf, 7.0)
    assert "infinite" in check_block(garbage, info)
    garbage[0, 1] = 1.0
    assert "outside the writer's BlocksInfo min/max" in check_block(garbage, info)
    assert "all zeros" in check_block(np.zeros_like(good), info)
    (tmp_path / "zeros").mkdir()
    zeros_info = _bp5_blocks_info(tmp_path / "zeros", np.zeros(4))
    assert check_block(np.zeros(4), zeros_info) is None
    with_nan = good.copy()
    with_nan[1, 1] = np.nan  # a NaN the writer put: ADIOS2's min/max of such a block say nothing reliable
    assert check_block(with_nan, info) is None
    assert check_block(good, {"Min": "nan", "Max": "1"}) is None and check_block(good, {}) is None


def test_corrupt_blocks_are_flagged_stored_kept_out_of_learning_and_the_run_is_not_clean(tmp_path):
    """Issue 19 item 3, the staging loop: a block flagged by its BlocksInfo check is stored as it came,
    kept out of the learner, listed in staging_summary.json and the ledger (status corrupt, with the
    reason), and staging ends with CorruptDataError (exit 1) instead of a clean end."""
    from fakes import run_ranks
    from stagelearn.staging.block_check import CorruptDataError, check_block
    from stagelearn.staging.ledger import merge_ledger
    from test_staging_loop import FakeReader, FakeService, make_config

    class GarbageReader(FakeReader):
        def read_step(self):
            blocks = super().read_step()
            for b in blocks or []:
                info = {"Min": f"{b.raw.min():.6g}", "Max": f"{b.raw.max():.6g}"}  # what the writer recorded
                if b.step == 4 and b.rank == 1:
                    b.raw = b.raw.copy()
                    b.raw[0, :2] = (-2.9e29, -np.inf)  # what a late SST reader was handed
                b.corrupt = check_block(b.raw, info)
            return blocks

    class Service(FakeService):
        def open_reader(self):
            return GarbageReader(self.comm, self.cfg.simulation.steps + 1, self.cfg.simulation.ranks)

    cfg = make_config(tmp_path, steps=7, warmup=3, every=100)

    def rank_main(comm):
        svc = Service(cfg, comm, tmp_path)
        with pytest.raises(CorruptDataError, match="1 blocks"):
            svc.run()
        return svc.fake_writer.steps, dict(svc.learning.nonfinite_tiles)

    out = run_ranks(2, rank_main, timeout_s=60.0)
    stored = [s for steps, _ in out for s in steps if s[0] == 4]
    assert sorted(r for _, blocks, _ in stored for _, r in blocks) == [0, 1]  # stored as it came
    assert out[0][1] == {"u": 0}  # its -inf tile never reached the learner (it would count here)
    summary = json.loads((tmp_path / "staging_summary.json").read_text())
    assert [(c["step"], c["rank"], c["variable"]) for c in summary["corrupt_blocks"]] == [(4, 1, "u")]
    assert "infinite" in summary["corrupt_blocks"][0]["reason"]
    counts = merge_ledger(str(tmp_path), expected_steps=8, n_ranks=2)
    assert counts["steps_corrupt"] == 1 and counts["entries"]["corrupt"] == 1
    lines = [json.loads(x) for x in (tmp_path / "ledger.jsonl").read_text().splitlines()]
    bad = [e for e in lines if e["status"] == "corrupt"]
    assert [(e["step"], e["rank"]) for e in bad] == [(4, 1)] and "infinite" in bad[0]["reason"]


def test_discovery_reads_float_arrays_and_says_why_it_skips_the_others():
    """Issue 15 item 2 (in transit): nothing is skipped without a reason; scalars are not arrays."""
    from stagelearn.staging.plain_discovery import plain_discovery

    available = {"T": {"Type": "double", "SingleValue": "false"}, "y": {"Type": "int64_t", "SingleValue": "false"},
                 "step": {"Type": "int64_t", "SingleValue": "true"}, "f": {"Type": "float", "SingleValue": "false"},
                 "name": {"Type": "string", "SingleValue": "true"}}
    read, skipped = plain_discovery(available)
    assert read == ["T", "f"] and list(skipped) == ["y"] and "int64_t" in skipped["y"]
    read, skipped = plain_discovery(available, ["y", "T", "step", "late"])
    assert read == ["T"] and sorted(skipped) == ["step", "y"]


def test_block_layout_identifies_blocks_by_writer():
    """Issue 15 item 4: a writer that skips a step keeps its block number and its slot."""
    from stagelearn.staging.plain_layout import BlockLayout

    def infos(writers, rows=3):
        return [{"WriterID": str(w), "BlockID": str(i), "Count": f"{rows},8", "Start": ""} for i, w in enumerate(writers)]

    layout = BlockLayout()
    assert layout.place("a", 0, (), infos([0, 1, 2])) == ((9, 8), [(0, (0, 0), (3, 8)), (1, (3, 0), (3, 8)),
                                                                     (2, (6, 0), (3, 8))])
    assert layout.place("a", 1, (), infos([0, 2])) == ((9, 8), [(0, (0, 0), (3, 8)), (2, (6, 0), (3, 8))])
    glob = [{"WriterID": "2", "BlockID": "1", "Count": "4,8", "Start": "8,0"}]
    assert layout.place("g", 0, (12, 8), glob) == ((12, 8), [(0, (8, 0), (4, 8))])
    assert layout.n_blocks == 3
