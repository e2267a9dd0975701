"""SZ3 in closed loop (analytics/sz3_closed_loop.py) on a fake stream of frames, and its accounting.

The chain is replayed here with ``pysz`` alone, from the settings the module reports: the same bytes,
the same reconstruction, and each step's PSNR within ``PSNR_MATCH_DB`` of the PSNR asked.
"""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagelearn.analytics.baselines import PSNR_MATCH_DB, sz3_matched_psnr
from stagelearn.analytics.sz3_closed_loop import ClosedLoopSZ3, follows
from stagelearn.staging.accounts import StepAccounts
from stagelearn.staging.wire import make_report

pysz = pytest.importorskip("pysz")


def frame(t, shape=(48, 64)):
    """A smooth field drifting slowly with ``t`` (float64), plus a little fixed noise."""
    i, j = np.meshgrid(np.arange(shape[0]), np.arange(shape[1]), indexing="ij")
    noise = 1e-3 * np.random.default_rng(7).standard_normal(shape)
    return np.sin(0.15 * i + 0.05 * t) * np.cos(0.1 * j - 0.03 * t) + 0.2 * np.cos(0.07 * (i + j)) + noise


def pysz_psnr_mode(data, setting):
    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(setting)
    data = np.ascontiguousarray(data, dtype=np.float32)
    comp, _ = pysz.sz.compress(data, cfg)
    rec, _ = pysz.sz.decompress(comp, np.float32, data.shape)
    return int(comp.nbytes), rec


def psnr(ref, rec):
    d = np.asarray(rec, dtype=np.float64) - ref
    return 20 * math.log10(float(ref.max() - ref.min())) - 10 * math.log10(float(np.mean(d * d)))


@pytest.mark.parametrize("target", [40.0, 55.0])
def test_closed_loop_replays_with_pysz_and_matches_the_psnr(target):
    cl = ClosedLoopSZ3()
    prev = np.zeros((48, 64), np.float32)  # the replay: SZ3's decoder state, kept here
    total_cl = total_frame = n_matched = 0
    deviations = []
    for t in range(8):
        given = frame(t)
        block = given.astype(np.float32)
        s = cl.update("T", block, target, given=given)
        cl.end_step()
        assert not s.raw and cl.steps["T"] == t + 1
        diff = block - prev
        nbytes, drec = pysz_psnr_mode(diff, s.setting)  # SZ3 alone, on the difference
        prev = (prev + drec).astype(np.float32)
        assert s.nbytes == nbytes
        d = prev.astype(np.float64) - given
        assert s.sse == pytest.approx(float(np.sum(d * d)), rel=1e-12)
        assert s.psnr_db == pytest.approx(psnr(given, prev), abs=1e-9)
        # mostly within the window (float32 rounding of the sum aside); on blocks this small SZ3's PSNR can
        # jump over it as its setting moves, and the chain's mean stays within it
        assert abs(s.psnr_db - target) <= 3.0
        n_matched += abs(s.psnr_db - target) <= PSNR_MATCH_DB + 0.01
        deviations.append(s.psnr_db - target)
        total_cl += nbytes
        total_frame += sz3_matched_psnr(block, target)[0]
    assert n_matched >= 5 and abs(np.mean(deviations)) <= PSNR_MATCH_DB
    # a slowly drifting field: the difference from SZ3's own previous frame costs less than the frame
    assert total_cl < total_frame


def test_a_gap_restarts_the_chain_and_inexact_cases_go_raw():
    cl = ClosedLoopSZ3()
    cl.update(("T", 0), frame(0), 45.0)
    cl.update(("T", 1), frame(0), 45.0)
    cl.end_step()
    cl.update(("T", 0), frame(1), 45.0)  # ("T", 1) misses this step
    cl.end_step()
    assert ("T", 0) in cl and ("T", 1) not in cl and cl.steps[("T", 0)] == 2
    # restarted: the next step is SZ3 on the block alone (no stale reference)
    s = cl.update(("T", 1), frame(2), 45.0)
    assert cl.steps[("T", 1)] == 1
    assert s.nbytes == pysz_psnr_mode(frame(2).astype(np.float32), s.setting)[0]
    # our PSNR was inf (exact block): kept exact, the block's float32 size
    s = cl.update(("T", 1), frame(3), math.inf)
    assert s.raw and s.nbytes == frame(3).astype(np.float32).nbytes and s.setting == math.inf
    assert s.sse == pytest.approx(float(np.sum((frame(3).astype(np.float32) - frame(3)) ** 2)))
    # non-finite values: exact, and the chain starts afresh
    bad = frame(4).astype(np.float32)
    bad[0, 0] = np.nan
    s = cl.update(("T", 1), bad, 45.0)
    assert s.raw and ("T", 1) not in cl
    # a new block shape: the chain starts afresh; an empty block: nothing
    s = cl.update(("T", 0), frame(5, (16, 64)), 45.0)
    assert cl.steps[("T", 0)] == 1 and s.nbytes == pysz_psnr_mode(frame(5, (16, 64)).astype(np.float32), s.setting)[0]
    assert cl.update(("T", 0), np.zeros((0, 64), np.float32), 45.0) is None


def test_follows_picks_one_fixed_variable_per_rank():
    names = ["U", "V", "W"]
    for rank in range(7):
        assert [v for v in names if follows(names, v, rank)] == [names[rank % 3]]
    assert not follows([], "U", 0)


def test_accounts_closed_loop_and_encode_fraction():
    acc = StepAccounts()
    # step 1: first coded step (no interval); step 2: a per-frame SZ3 sample; steps 3, 4 counted
    for step in (1, 2, 3, 4):
        for rank in (0, 1):
            for var in ("U", "V"):
                followed = follows(["U", "V"], var, rank)
                acc.add(var, make_report(
                    step=step, rank=rank, encoder_version=1, raw_bytes=800, sent_bytes=100 + rank, sse=0.02, n=100,
                    vmin=0.0, vmax=1.0, sz3_bytes=90 if step == 2 else 0, sz3_sse=0.03 if step == 2 else 0,
                    sz3_cl_bytes=50 + step if followed else 0, sz3_cl_sse=0.01 * step if followed else 0,
                    encode_s=0.01 * (rank + 1), interval_s=(0.1 * step if var == "U" and step > 1 else 0.0)))
    cl = acc.closed_loop_reference([1, 2, 3, 4])
    # followed blocks: (rank 0, U) and (rank 1, V) at every step
    assert cl["sz3_closed_loop_blocks"] == 8 and cl["sz3_closed_loop_steps"] == 4
    assert cl["sz3_closed_loop_compression_ratio"] == pytest.approx(8 * 800 / sum(2 * (50 + s) for s in (1, 2, 3, 4)))
    assert cl["compression_ratio_closed_loop_blocks"] == pytest.approx(8 * 800 / (4 * (100 + 101)))
    want = np.mean([10 * math.log10(1.0 / (0.01 * s / 100)) for s in (1, 2, 3, 4) for _ in ("U", "V")])
    assert cl["sz3_closed_loop_psnr_db"] == pytest.approx(want)
    assert cl["psnr_db_closed_loop_blocks"] == pytest.approx(10 * math.log10(1.0 / (0.02 / 100)))
    timing = acc.encode_timing([1, 2, 3, 4])
    enc = 2 * (0.01 + 0.02)  # per step: two variables on each of ranks 0 and 1
    assert timing["encode_fraction_steps"] == 2
    assert timing["encode_fraction"] == pytest.approx(2 * enc / (2 * 0.3 + 2 * 0.4))
    assert timing["encode_s_per_step"] == pytest.approx(2 * enc / 4)
    assert timing["step_interval_s"] == pytest.approx((0.6 + 0.8) / 4)
    summary = acc.summary()
    assert summary["encode_fraction"] == timing["encode_fraction"]
    assert summary["sz3_closed_loop_compression_ratio"] == cl["sz3_closed_loop_compression_ratio"]
    assert StepAccounts().closed_loop_reference([])["sz3_closed_loop_compression_ratio"] is None


# ----------------------------------------------------------------------------------------- in situ, end to end
N_SITU, STEPS_SITU = 64, 14

PRODUCER_SCRIPT = '''
import json, os, sys, time
import numpy as np
from mpi4py import MPI
from stagelearn.staging import Producer
from stagelearn.staging.config import default_xml

N, STEPS = 64, 14
run_dir = sys.argv[1]
comm = MPI.COMM_WORLD
rows = np.array_split(np.arange(N), comm.size)[comm.rank]
i, j = np.meshgrid(np.arange(N), np.arange(N), indexing="ij")

def known(s):
    noise = 1e-3 * np.random.default_rng(s).standard_normal((N, N))
    t = np.sin(0.1 * i + 0.07 * s) * np.cos(0.13 * j) + 0.3 * np.cos(0.05 * (i + j) - 0.1 * s) + noise
    u = np.cos(0.08 * i - 0.05 * s) * np.sin(0.11 * j + 0.04 * s) + 0.5 * noise
    return {"T": t, "U": u}

timing = {}
with Producer(os.path.join(run_dir, "sst", "stream"), comm=comm, config_file=default_xml(), sz3_every=2,
              open_timeout_s=60, step_timeout_s=60) as prod:
    for name in ("T", "U"):
        prod.define_variable(name, shape=(N, N), start=(int(rows[0]), 0), count=(len(rows), N))
    prod.open()
    end = None
    for s in range(STEPS):
        fields = known(s)                       # the "simulation": some compute before each write
        a = np.random.default_rng(s).standard_normal((300, 300))
        for _ in range(4):
            a = np.tanh(a @ a.T / 300.0)
        time.sleep(0.02)
        t0 = time.perf_counter()
        prod.write(s, {k: v[rows] for k, v in fields.items()})
        t1 = time.perf_counter()
        timing[s] = {"compute_s": t0 - end if end is not None else 0.0, "write_s": t1 - t0}
        end = t1
with open(os.path.join(run_dir, f"timing.{comm.rank}.json"), "w") as f:
    json.dump(timing, f)
'''

STAGING_YAML = {
    "run_name": "closed_loop_situ",
    "simulation": {"type": "heat2d", "ranks": 2},
    "staging": {"ranks": 1, "tile_shape": [8, 8]},
    "learner": {"warmup_steps": 3, "publish_every": 20},
    "codec": {"psnr_db": 40},
    "metrics": {"sz3_every": 2},
    "timeouts": {"open_s": 60, "step_s": 60},
}


def known_situ(s):
    """The producer script's values of step ``s`` (float64, global), computed here."""
    i, j = np.meshgrid(np.arange(N_SITU), np.arange(N_SITU), indexing="ij")
    noise = 1e-3 * np.random.default_rng(s).standard_normal((N_SITU, N_SITU))
    t = np.sin(0.1 * i + 0.07 * s) * np.cos(0.13 * j) + 0.3 * np.cos(0.05 * (i + j) - 0.1 * s) + noise
    u = np.cos(0.08 * i - 0.05 * s) * np.sin(0.11 * j + 0.04 * s) + 0.5 * noise
    return {"T": t, "U": u}


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(300)
def test_sz3_closed_loop_and_encode_fraction_in_situ(tmp_path, stagelearn_cli):
    """Issue 14: in situ, SZ3 in closed loop at matched PSNR on the same blocks and steps (rank 0 follows T,
    rank 1 follows U), replayed here with pysz; the producer's encode time over the simulation's compute."""
    import json

    import yaml

    from conftest import stage_and_script
    from stagelearn.staging.output import CompressedOutputReader
    from stagelearn.staging.wire import report_get
    from test_transit_attributes_sz3 import check_closed_loop, check_encode_fraction

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    script, cfg = tmp_path / "producer.py", tmp_path / "run.yaml"
    script.write_text(PRODUCER_SCRIPT)
    cfg.write_text(yaml.safe_dump(STAGING_YAML))
    sim, stage_rc, stage_out = stage_and_script(tmp_path, cfg, run_dir, [script, run_dir], sim_ranks=2, timeout=200)
    assert sim.returncode == 0, f"producer failed ({sim.returncode}):\n{sim.stdout[-2000:]}\n{sim.stderr[-3000:]}"
    assert stage_rc == 0, f"stagelearn stage failed ({stage_rc}):\n{stage_out[-3000:]}"
    proc = stagelearn_cli("report", cfg, "--run-dir", run_dir, timeout=120)
    assert proc.returncode == 0, f"report failed:\n{proc.stdout[-2000:]}\n{proc.stderr[-2000:]}"
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["sz3_closed_loop_compression_ratio"] is not None and summary["encode_fraction"] > 0
    assert "SZ3 in closed loop at the same PSNR" in proc.stdout and "encode fraction" in proc.stdout
    reader = CompressedOutputReader(run_dir / "compressed.bp")
    try:
        coded = check_closed_loop(summary, reader, known_situ, ["T", "U"])
        check_encode_fraction(summary, reader, ["T", "U"])
        # the rows' timings against the script's own clock: interval_s is the compute between its writes
        # (on each rank's first coded row, T), and a rank's coding time fits inside its write call.
        # The producer reads its clock inside write(): its interval spans the script's compute_s and at
        # most the two write calls around it (no timing tolerance: the bounds hold under any load).
        timing = {r: json.loads((run_dir / f"timing.{r}.json").read_text()) for r in (0, 1)}
        for step in coded:
            for var in ("T", "U"):
                for row in reader.reports(step, var):
                    rank = int(report_get(row, "rank"))
                    t = timing[rank][str(step)]
                    if var == "T":
                        around = t["write_s"] + timing[rank].get(str(step - 1), {"write_s": 0.0})["write_s"]
                        assert t["compute_s"] <= report_get(row, "interval_s") <= t["compute_s"] + around
                    else:
                        assert report_get(row, "interval_s") == 0.0
            for rank in (0, 1):
                enc = sum(report_get(r, "encode_s") for v in ("T", "U") for r in reader.reports(step, v)
                          if int(report_get(r, "rank")) == rank)
                assert 0 < enc <= timing[rank][str(step)]["write_s"]
    finally:
        reader.close()
    assert summary["sz3_closed_loop_steps"] == summary["encoded_steps"] == len(coded)
    assert summary["sz3_closed_loop_blocks"] == 2 * len(coded)  # one block per rank and step
