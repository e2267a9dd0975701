"""How a run ends when it cannot go on (issue 19, items 2, 4 and 6): promptly, with the right exit code,
a merged ledger, a summary and no contact file left behind.

Each end-to-end test runs ``stagelearn run`` on a plain ADIOS2 writer (no stagelearn import) whose
problem is set in its own code, where ``validate``'s check of the code's XML cannot see it: the
run-time guarantees are what is tested.

- a data plane staging cannot read (the writer sets ``DataTransport=MPI``; this MPI cannot open the
  ports SST's MPI data plane needs): staging ends after ``timeouts.step_s``, ``run`` stops the code
  at once (not after ``timeouts.run_s``) and exits 3;
- a code that aborts on ADIOS2's ``MissingOperatorFailure`` (an operator not compiled in) exits
  ``run`` with 7, "the simulation failed", never 6 ("ADIOS2 missing", stagelearn's own);
- a writer that does not wait for its reader (``RendezvousReaderCount=0``) and closes its stream
  before staging opened it: a merged ledger listing every step as lost (not received), a summary
  that says so, exit 3 at once.
"""

from __future__ import annotations

import json
import time

import pytest

from stagelearn.staging.errors import AdiosUnavailableError
from test_pipeline import ADIOS2_MPI
from test_stream_integrity import writer_config

# A plain ADIOS2 code writing T = step + 1 (float64, 16x16); PROBLEM is replaced by each test's line(s).
WRITER = '''
import os
import sys
import numpy as np
from mpi4py import MPI
from adios2 import bindings as adios2

N = 16
ad = adios2.ADIOS(sys.argv[1], MPI.COMM_WORLD)
io = ad.DeclareIO("SimulationOutput")
T = np.zeros((N, N))
vT = io.DefineVariable("T", T, [N, N], [0, 0], [N, N])
PROBLEM
engine = io.Open(sys.argv[2], adios2.Mode.Write)
for s in range(STEPS):
    engine.BeginStep()
    T[:] = s + 1.0
    engine.Put(vT, T, adios2.Mode.Sync)
    engine.EndStep()
engine.Close()
print("writer closed its stream", flush=True)
'''

# What a C++ code does with ADIOS2's exception for an operator not compiled in: nobody catches it,
# std::terminate aborts the rank (SIGABRT), and mpiexec reports that as exit status 6.
MISSING_OPERATOR = '''
try:
    op = ad.DefineOperator("lossy", "zfp", {})
    vT.AddOperation(op, {"accuracy": "0.001"})
    print("ZFP_COMPILED_IN", flush=True)
except Exception as exc:
    print("terminate called after throwing an instance of 'adios2::helper::MissingOperatorFailure'", file=sys.stderr)
    print("  what():  " + str(exc), file=sys.stderr, flush=True)
    os.abort()
'''


def _config(tmp_path, name, problem, *, steps=4, **timeouts):
    source = WRITER.replace("PROBLEM", problem).replace("STEPS", str(steps))
    limits = {"open_s": 30, "step_s": 10, "run_s": 600, "peer_s": 10, **timeouts}
    return writer_config(tmp_path, name, source, ["T"], steps=steps - 1,
                         update={"simulation": {"ranks": 1}, "staging": {"ranks": 1}, "timeouts": limits})


def _ledger(run_dir):
    return [json.loads(line) for line in (run_dir / "ledger.jsonl").read_text().splitlines()]


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_a_data_plane_staging_cannot_read_ends_the_run_within_step_s(tmp_path, stagelearn_cli):
    """Item 2: the code sets DataTransport=MPI in its own code. Before: staging exited 3 after step_s
    and `run` waited for run_s (600 s here) with the contact file left; now the code is stopped a few
    seconds after staging ended, `run` exits 3 and says what happened and the fix."""
    cfg = _config(tmp_path, "dataplane", 'io.SetParameter("DataTransport", "MPI")  # in code: no XML check sees it')
    t0 = time.time()
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=150)  # run_s is 600: waiting for it fails here
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    assert proc.returncode == 3, (proc.returncode, out[-3000:])
    assert wall < 10 + 60, wall  # step_s + start-up, open and a few seconds on 2 busy cores; not run_s
    assert "its data never came" in out and 'value="WAN"' in out and "DataTransport" in out, out[-3000:]
    assert "sim side stopped by stagelearn run" in proc.stderr, proc.stderr[-3000:]
    run_dir = tmp_path / "results" / "dataplane"
    assert not list(run_dir.glob("*.sst")) and not list((run_dir / "sst").glob("*.sst"))  # no contact file left
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is False and "DataTransport" in summary["failure"]
    lost = [e for e in _ledger(run_dir) if e["status"] == "lost"]
    assert lost and summary["steps_lost"] >= 1, summary  # the step whose data never came is on record
    assert any("data never came" in e["reason"] for e in lost), lost


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(200)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_a_code_aborting_on_missing_operator_failure_exits_simulation_failed(tmp_path, stagelearn_cli):
    """Item 6: a code aborted by MissingOperatorFailure made `run` exit 6, stagelearn's code for
    "ADIOS2 missing"; now 7 ("the simulation failed") with the code's status and last log lines."""
    cfg = _config(tmp_path, "operator", MISSING_OPERATOR)
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=150)
    out = proc.stdout + proc.stderr
    run_dir = tmp_path / "results" / "operator"
    if "ZFP_COMPILED_IN" in (run_dir / "sim.log").read_text():
        pytest.skip("zfp is compiled into this ADIOS2: the code does not abort")
    assert proc.returncode == 7, (proc.returncode, out[-3000:])  # errors.EXIT_SIMULATION_FAILED
    assert "the simulation failed" in proc.stderr and "status 6" in proc.stderr and "SIGABRT" in proc.stderr
    assert "MissingOperatorFailure" in proc.stderr and "didn't compile with zfp" in proc.stderr  # the code's own lines
    assert "BAD TERMINATION" not in proc.stderr  # mpiexec's banner is left out of the tail
    assert (run_dir / "ledger.jsonl").exists() and not list(run_dir.glob("*.sst"))
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is False and "your code" in summary["failure"]


def test_exit_codes_tell_a_failed_code_from_adios2_missing(stagelearn_cli):
    """Item 6 (no processes): the launcher's mapping and the documented codes."""
    from stagelearn.staging.cli import exit_code_for
    from stagelearn.staging.errors import EXIT_SIMULATION_FAILED
    from stagelearn.staging.launcher import exit_code

    assert EXIT_SIMULATION_FAILED == 7

    assert exit_code_for(AdiosUnavailableError("no adios2")) == 6  # stagelearn's own ADIOS2 import
    assert exit_code({"sim": 6}, "sim", external=True) == 7  # an aborted code (SIGABRT) is not "ADIOS2 missing"
    assert exit_code({"sim": 1, "stage": 4}, "sim", external=True) == 7
    assert exit_code({"sim": 1}, "sim", external=False) == 1  # `stagelearn sim` keeps its own codes
    assert exit_code({"stage": 3, "sim": -15}, "stage", external=True) == 3
    assert exit_code({}, None, external=True) == 0
    top = stagelearn_cli("--help", timeout=60).stdout
    assert "\n  7    the simulation failed" in top and "\n  6    ADIOS2 missing" in top


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(200)
@pytest.mark.skipif(not ADIOS2_MPI, reason="the reader cohort needs ADIOS2 built with MPI")
def test_a_writer_gone_before_staging_opened_leaves_a_merged_ledger(tmp_path, stagelearn_cli):
    """Item 4: a writer that does not wait for its reader (RendezvousReaderCount=0, set in its code)
    writes its 4 steps and closes before staging opens. Before: an empty ledger.jsonl and a summary
    with 0 of 0 steps lost (a clean-looking report), exit 15 after a grace period; now every step is
    listed lost (not received), the summary says why, and `run` exits 3 at once."""
    cfg = _config(tmp_path, "early", 'io.SetParameter("RendezvousReaderCount", "0")  # does not wait for staging')
    t0 = time.time()
    proc = stagelearn_cli("run", cfg, "--no-progress", timeout=150)
    wall = time.time() - t0
    out = proc.stdout + proc.stderr
    run_dir = tmp_path / "results" / "early"
    summary = json.loads((run_dir / "summary.json").read_text())
    if summary.get("staging_opened") or summary.get("steps_received"):
        pytest.skip("staging opened the stream before the writer closed it (a race this test cannot force)")
    assert proc.returncode == 3, (proc.returncode, out[-3000:])
    assert "Traceback" not in out and "before staging opened it" in proc.stderr and "RendezvousReaderCount" in proc.stderr
    assert wall < 60, wall  # not open_s + the after-simulation grace
    entries = _ledger(run_dir)
    assert [(e["step"], e["rank"]) for e in entries] == [(s, 0) for s in range(4)]
    assert all(e["status"] == "lost" and "staging never opened the stream" in e["reason"] for e in entries)
    assert summary["complete"] is False and summary["steps_expected"] == 4 and summary["steps_lost"] == 4
    assert summary["steps_received"] == 0 and "RendezvousReaderCount" in summary["failure"]
    assert not list(run_dir.glob("*.sst"))


def test_merge_names_steps_announced_but_never_read_and_streams_never_opened(tmp_path):
    """Item 4 (no processes): staging's ``opened`` and ``begun`` lines decide what the ledger says."""
    from stagelearn.staging.ledger import merge_ledger, staging_opened, staging_part

    assert not staging_opened(str(tmp_path))
    never = merge_ledger(str(tmp_path), expected_steps=2, n_ranks=1, in_transit=True)
    lines = _ledger(tmp_path)
    assert never["steps_lost"] == 2 and never["staging_opened"] is False
    assert all("never opened" in e["reason"] for e in lines)
    part = staging_part(str(tmp_path))  # staging killed while reading step 1's data (no end line)
    part.add(event="opened", stream="sim.bp")
    part.add(event="begun", step=0)
    part.add(step=0, rank=0, encoder_version=0, bytes=8)
    part.add(event="begun", step=1)
    part.close()
    assert staging_opened(str(tmp_path))
    counts = merge_ledger(str(tmp_path), expected_steps=1, n_ranks=1, in_transit=True)  # progress: 1 step stored
    lines = _ledger(tmp_path)
    assert [(e["step"], e["status"]) for e in lines] == [(0, "sent_raw"), (1, "lost")]
    assert "data never came" in lines[1]["reason"] and counts["steps_lost"] == 1 and counts["steps_expected"] == 2


def test_report_of_sides_launched_apart_merges_the_ledger_when_staging_left_no_summary(tmp_path):
    """Item 4, `stagelearn report` (sides launched apart): staging that opened its reader and was killed, or
    timed out, leaves no staging_summary.json; the ledger is still merged and a partial summary written."""
    from stagelearn.staging.config import load_config
    from stagelearn.staging.ledger import staging_part
    from stagelearn.staging.report import report

    cfg = load_config(_config(tmp_path, "apart", "", steps=3))
    run_dir = tmp_path / "results" / "apart"
    part = staging_part(str(run_dir))
    part.add(event="opened", stream="sim.bp")
    part.add(event="begun", step=0)
    part.close()
    assert report(cfg, str(run_dir)) == 1
    entries = _ledger(run_dir)
    assert [(e["step"], e["status"]) for e in entries] == [(0, "lost")] and "data never came" in entries[0]["reason"]
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["complete"] is False and summary["steps_lost"] == 1 and "without its summary" in summary["failure"]
