"""`stagelearn launch --scheduler slurm` scripts submitted to a real SLURM (issue 20).

A controller and two slurmd nodes on localhost (:mod:`slurm_cluster`: Debian's slurm-wlm 22.05 and
munge, root; skipped with the reason elsewhere). A tiny Gray-Scott run (2 simulation + 2 staging
ranks, 9 output steps) goes through the generated MPMD script (under ``sbatch --export=NONE``) and the
heterogeneous job (components on n1 and n2, SST over a real interface); both must end with exit 0,
0 steps lost, and a decoded last step within the PSNR target of the producers' own reference field.
Then the misconfigurations of the issue: ``srun`` without ``--mpi`` (singletons: both sides stop at
once with exit 2 and the fix) and a heterogeneous job with ``network_interface: lo`` (refused,
exit 2, naming the interface to set).
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import time

import numpy as np
import pytest

from conftest import REPO, run_cmd
from slurm_cluster import local_slurm, unavailable_reason
from test_pipeline import ADIOS2_MPI, small_config

from stagelearn.staging.output_reader import CompressedOutputReader

pytestmark = [pytest.mark.mpi, pytest.mark.sst, pytest.mark.slow]

STEPS = 9  # output steps: simulation.steps 40, plotgap 5 -> 0, 5, ..., 40
PSNR_DB = 40.0


@pytest.fixture(scope="module")
def cluster():
    reason = unavailable_reason()
    if reason:
        pytest.skip(f"no local SLURM: {reason}")
    with local_slurm() as c:
        yield c


def interface_with_ipv4():
    """A non-loopback interface with an IPv4 address (SST between the two nodes), or None."""
    if shutil.which("ip") is None:
        return None
    proc = run_cmd(["ip", "-4", "-o", "addr", "show"], timeout=30)
    for line in proc.stdout.splitlines():
        name = line.split()[1]
        if name != "lo" and name.replace("_", "").replace("-", "").replace(".", "").isalnum():
            return name
    return None


def tiny_config(tmp_path, name, **adios2):
    return small_config(tmp_path, name, simulation={"ranks": 2, "L": 16, "steps": 40, "plotgap": 5},
                        staging={"ranks": 2}, learner={"warmup_steps": 2, "publish_every": 3},
                        codec={"kind": "learned", "psnr_db": PSNR_DB, "raw_fraction": 0.01}, metrics={"sz3_every": 0},
                        timeouts={"open_s": 40, "step_s": 40, "run_s": 120},
                        adios2={"config_file": str(REPO / "xml_configs" / "stagelearn.xml"), **adios2})


def generate(tmp_path, cfg, mode, *extra):
    """``stagelearn launch`` run from this test's interpreter (its venv is what the script activates)."""
    script = tmp_path / f"{mode}.sh"
    proc = run_cmd([sys.executable, "-m", "stagelearn", "launch", "--scheduler", "slurm", str(cfg), "--mode", mode,
                    "-o", str(script), *extra], timeout=120, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr
    return script


def check_clean_run(tmp_path, name, rc, out, cluster):
    assert rc == 0, f"job exit {rc}:\n{out[-4000:]}\n{cluster.logs()}"
    run_dir = tmp_path / "results" / name
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps_written"] == STEPS and summary["steps_received"] == STEPS, summary
    assert summary["steps_lost"] == 0 and summary["encoder_versions"] >= 1, summary
    # independent of the run's own figures: decode the last step, compare with the producers' field
    ref = json.loads((run_dir / "producer.json").read_text())["reference"]
    original = np.load(run_dir / f"reference_{ref['variable']}_step{ref['step']}.npy").astype(np.float64)
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    try:
        decoded = reader.read(ref["step"], ref["variable"])
    finally:
        reader.close()
    assert decoded.shape == original.shape and decoded.dtype == np.float32
    mse = float(np.mean((decoded.astype(np.float64) - original) ** 2))
    span = float(original.max() - original.min())
    assert mse == 0 or 10 * np.log10(span * span / mse) >= PSNR_DB - 1.0, (mse, span)


pytestmark.append(pytest.mark.skipif(not ADIOS2_MPI, reason="the shared stream layout needs ADIOS2 with MPI"))


@pytest.mark.timeout(240)
def test_mpmd_script_runs_under_export_none(cluster, tmp_path):
    """The MPMD script (two `srun --exact` steps, pinned to one node for lo) under `sbatch --export=NONE`:
    the job starts without the submitting shell's PATH, so only the script's own activation can find stagelearn."""
    cfg = tiny_config(tmp_path, "mpmd")
    script = generate(tmp_path, cfg, "mpmd")
    text = script.read_text()
    assert "--mpi=pmi2" in text and f"{os.path.dirname(sys.executable)}" in text
    rc, out = cluster.sbatch(script, cwd=tmp_path, output=tmp_path / "mpmd.out", args=["--export=NONE"])
    check_clean_run(tmp_path, "mpmd", rc, out, cluster)


@pytest.mark.timeout(240)
def test_hetjob_runs_across_two_nodes(cluster, tmp_path):
    iface = interface_with_ipv4()
    if iface is None:
        pytest.skip("no non-loopback interface with an IPv4 address: a heterogeneous job needs one across nodes")
    cfg = tiny_config(tmp_path, "het", network_interface=iface)
    script = generate(tmp_path, cfg, "hetjob")
    text = script.read_text().replace("set -uo pipefail\n", "set -uo pipefail\necho \"components on "
                                      "${SLURM_JOB_NODELIST_HET_GROUP_0:-} ${SLURM_JOB_NODELIST_HET_GROUP_1:-}\"\n", 1)
    assert "SLURM_JOB_NODELIST_HET_GROUP_0:-}; g1" not in text  # no lo check: a real interface is set
    script.write_text(text)
    rc, out = cluster.sbatch(script, cwd=tmp_path, output=tmp_path / "het.out")
    check_clean_run(tmp_path, "het", rc, out, cluster)
    assert "components on n1 n2" in out or "components on n2 n1" in out, out[-2000:]


@pytest.mark.timeout(180)
def test_srun_without_mpi_stops_singletons_with_the_fix(cluster, tmp_path):
    """A script without --mpi (before issue 20 the default): every rank a singleton; both sides stop at once."""
    cfg = tiny_config(tmp_path, "single")
    script = generate(tmp_path, cfg, "mpmd")
    script.write_text(script.read_text().replace(" --mpi=pmi2", ""))
    t0 = time.monotonic()
    rc, out = cluster.sbatch(script, cwd=tmp_path, output=tmp_path / "single.out")
    assert rc == 2, out[-3000:]
    for side in ("sim", "stage"):
        assert (f"stagelearn {side}: error: MPI COMM_WORLD of `stagelearn {side}` has 1 rank(s) but the launcher "
                "started 2 tasks (SLURM_STEP_NUM_TASKS=2)") in out, out[-3000:]
    assert "singleton" in out and "srun --mpi=pmi2" in out
    assert time.monotonic() - t0 < 60  # at once, not after the stream timeouts (40 s each)
    assert not (tmp_path / "results" / "single" / "summary.json").exists()


@pytest.mark.timeout(120)
def test_hetjob_with_loopback_on_two_nodes_is_refused(cluster, tmp_path):
    cfg = tiny_config(tmp_path, "het_lo")  # adios2.network_interface: lo (the default)
    script = generate(tmp_path, cfg, "hetjob")
    rc, out = cluster.sbatch(script, cwd=tmp_path, output=tmp_path / "het_lo.out")
    assert rc == 2, out[-3000:]
    assert "adios2.network_interface is lo" in out and "--mode mpmd" in out, out[-3000:]
    assert "components run on n1 (simulation) and n2 (staging)" in out or "on n2 (simulation) and n1" in out
    iface = interface_with_ipv4()
    if iface:
        assert iface in out  # the interface to set, as found on the node
    assert "stagelearn sim" not in out.replace("stagelearn launch", "")  # no side was started
