"""Faults with real processes: sides killed, slowed, started in either order, restarted, interrupted.

Every test starts the two sides with ``mpiexec`` (through ``stagelearn run`` or as two jobs),
injects the fault from outside (``SIGKILL``/``SIGSTOP``/``SIGINT``/``SIGTERM`` to the rank
processes, a stale contact file) and asserts on the run ledger (``ledger.jsonl``), the sides' exit
codes and the files they leave.
"""

import json
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

from conftest import MPIEXEC, child_env
from faultkit import finish, rank_pids, start_run, wait_progress
from test_pipeline import ADIOS2_MPI, small_config
from stagelearn.staging.output import CompressedOutputReader

pytestmark = [pytest.mark.sst, pytest.mark.mpi]

HEAT = {"type": "heat2d", "ranks": 2, "nx": 64, "ny": 64, "steps": 300, "plotgap": 2}


def heat_config(tmp_path, name, **overrides):
    base = {"simulation": dict(HEAT), "learner": {"warmup_steps": 3, "publish_every": 10},
            "metrics": {"sz3_every": 0}, "timeouts": {"open_s": 30, "step_s": 60, "run_s": 240}}
    for key, value in overrides.items():
        if isinstance(value, dict) and key in base and "type" not in value:
            base[key] = {**base[key], **value}
        else:
            base[key] = value
    return small_config(tmp_path, name, **base)


def ledger(run_dir):
    return [json.loads(line) for line in open(run_dir / "ledger.jsonl")]


def part(run_dir, name):
    return [json.loads(line) for line in open(run_dir / "ledger" / name)]


def reference_field(path, step):
    """The heat2d field at output ``step``, computed here on one rank (the mock is decomposition invariant)."""
    from mpi4py import MPI

    from stagelearn.sim_mocks.runner import build_simulation
    from stagelearn.staging.config import load_config

    cfg = load_config(path)
    sim = build_simulation(cfg.simulation, MPI.COMM_SELF)
    sim.advance(step * cfg.simulation.plotgap)
    return np.asarray(sim.fields()["T"], dtype=np.float32)


@pytest.mark.timeout(300)
@pytest.mark.parametrize("layout", ["shared", "per_rank"])
def test_staging_killed_producers_write_fallback_files(tmp_path, layout):
    """A staging rank is SIGKILLed mid-run: producers notice at once (well under timeouts.peer_s), keep
    simulating, replay what staging never acknowledged and write every later step to their fallback
    files; the ledger accounts for every (step, rank) and nothing is lost."""
    if layout == "shared" and not ADIOS2_MPI:
        pytest.skip("the shared layout needs ADIOS2 with MPI")
    path = heat_config(tmp_path, "kill_stage", adios2={"layout": layout})
    run_dir = tmp_path / "results" / "kill_stage"
    proc = start_run(tmp_path, path)
    wait_progress(run_dir, 20, proc)
    victims = rank_pids("stage", path)
    assert len(victims) == 2, victims
    t_kill = time.time()
    os.kill(victims[1], signal.SIGKILL)
    code, out, err = finish(proc)
    assert code != 0 and "stage side exited" in err, (code, err[-2000:])
    producer = json.load(open(run_dir / "producer.json"))
    assert producer["status"] == "clean" and producer["staging_lost"] and producer["steps_written"] == 151
    entries = ledger(run_dir)
    assert len(entries) == 151 * 2 and {(e["step"], e["rank"]) for e in entries} == {(s, r) for s in range(151) for r in (0, 1)}
    status = [e["status"] for e in entries]
    assert "lost" not in status and "dropped" not in status
    assert status.count("fallback") >= 2 * 50 and status.count("sent_encoded") > 0
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["steps_lost"] == 0 and summary["steps_fallback"] >= 50
    for rank in (0, 1):
        lines = [r for r in part(run_dir, f"producer.p{rank}.jsonl") if r.get("to") == "fallback"]
        assert lines[0]["t"] - t_kill < 30, "staging loss noticed too late"
        assert lines[-1]["step"] == 150 and lines[-1]["file"].endswith(f"producer.p{rank}.bp")
        # steps staging never acknowledged were replayed (raw); the rest follow in order
        steps = [r["step"] for r in lines]
        assert steps == list(range(steps[0], 151))
    # the fallback files decode: replayed steps bit for bit, coded ones within the PSNR target
    first_fb = next(r["step"] for r in part(run_dir, "producer.p0.jsonl") if r.get("to") == "fallback")
    reader = CompressedOutputReader(str(run_dir / "fallback" / "producer.p0.bp"))
    assert reader.steps == list(range(first_fb, 151))
    for step in (first_fb, 150):
        got = reader.read(step, "T", partial=True)
        want = reference_field(path, step)
        mine = ~np.isnan(got)
        assert 0 < mine.sum() < got.size  # rank 0's block only
        entry = next(r for r in part(run_dir, "producer.p0.jsonl") if r.get("to") == "fallback" and r["step"] == step)
        if entry["encoder_version"] == 0:
            np.testing.assert_array_equal(got[mine], want[mine])
        else:
            span = float(want.max() - want.min())
            mse = float(np.mean((got[mine] - want[mine]) ** 2))
            assert 10 * np.log10(span ** 2 / mse) >= 39.9  # codec.psnr_db 40 over the step's global range


@pytest.mark.timeout(300)
def test_producer_killed_staging_checkpoints_and_reports(tmp_path):
    """A producer rank is SIGKILLed: staging stores the steps it has, checkpoints, names the missing ranks
    and steps, and exits with code 4; the ledger says which steps were lost and why."""
    path = heat_config(tmp_path, "kill_sim", staging={"ranks": 2, "checkpoint_every": 0})
    run_dir = tmp_path / "results" / "kill_sim"
    proc = start_run(tmp_path, path)
    wait_progress(run_dir, 20, proc)
    victims = rank_pids("sim", path)
    assert len(victims) == 2, victims
    os.kill(victims[1], signal.SIGKILL)
    code, out, err = finish(proc)
    assert code != 0 and "stage side exited with code 4" in err, err[-3000:]
    staging = json.load(open(run_dir / "staging_summary.json"))
    assert staging["end"] == "producer_lost"
    stored = json.load(open(run_dir / "steps.json"))
    last = stored[-1]["step"]
    assert staging["missing"]["ranks"] == [0, 1] and staging["missing"]["steps"] == [last + 1, 150]
    # the stored steps decode; the checkpoint holds the learner as of the last stored step
    reader = CompressedOutputReader(str(run_dir / "compressed.bp"))
    assert reader.steps == list(range(last + 1))
    assert np.isfinite(reader.read(last, "T")).all()
    state = json.load(open(run_dir / "checkpoint" / "state.json"))
    assert state["step"] == last and state["encoder_version"] == staging["encoder_versions"]
    entries = ledger(run_dir)
    lost = [e for e in entries if e["status"] == "lost"]
    assert {e["step"] for e in lost} == set(range(last + 1, 151))
    assert any("stopped without closing" in e["reason"] for e in lost)
    assert json.load(open(run_dir / "summary.json"))["steps_lost"] == 150 - last


@pytest.mark.timeout(300)
def test_hung_staging_is_declared_lost_after_peer_timeout(tmp_path):
    """Staging stopped (SIGSTOP: alive, not reading) for longer than timeouts.peer_s with Block: the
    producers never block inside SST, declare staging lost after peer_s and finish their run with
    fallback files; `stagelearn run` then stops the hung staging job instead of waiting for run_s, and
    still writes the ledger and the summary; nothing is lost."""
    path = heat_config(tmp_path, "hung", timeouts={"open_s": 30, "step_s": 15, "run_s": 240, "peer_s": 5})
    run_dir = tmp_path / "results" / "hung"
    proc = start_run(tmp_path, path)
    wait_progress(run_dir, 20, proc)
    stopped = rank_pids("stage", path)
    t_stop = time.time()
    for pid in stopped:
        os.kill(pid, signal.SIGSTOP)
    try:
        code, out, err = finish(proc, timeout=150)
    finally:
        for pid in stopped:  # orphaned by the stopped mpiexec
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
    assert code != 0 and "staging did not finish within 25 s after the simulation ended" in err, err[-2000:]
    assert time.time() - t_stop < 100  # not run_s
    producer = json.load(open(run_dir / "producer.json"))
    assert producer["status"] == "clean" and producer["staging_lost"] and producer["steps_written"] == 151
    first = min(r["t"] for r in part(run_dir, "producer.p0.jsonl") if r.get("to") == "fallback")
    assert 3.0 <= first - t_stop < 20.0  # peer_s after the last acknowledgement (just before the stop)
    entries = ledger(run_dir)
    assert {e["status"] for e in entries} <= {"sent_raw", "sent_encoded", "fallback"}
    assert json.load(open(run_dir / "summary.json"))["steps_lost"] == 0


def _slow_staging(tmp_path, name, policy, *, at=(150, 450), pause_s=3.0):
    """1001 small steps; the staging ranks are stopped (SIGSTOP) for ``pause_s`` once they stored each of ``at`` steps."""
    path = heat_config(tmp_path, name, simulation={**HEAT, "nx": 32, "ny": 32, "steps": 1000, "plotgap": 1},
                       staging={"ranks": 1}, adios2={"queue_limit": 3, "queue_full_policy": policy},
                       learner={"warmup_steps": 3, "publish_every": 200})
    run_dir = tmp_path / "results" / name
    proc = start_run(tmp_path, path)
    for n in at:
        wait_progress(run_dir, n, proc, timeout=200)
        pids = rank_pids("stage", path)
        for pid in pids:
            os.kill(pid, signal.SIGSTOP)
        time.sleep(pause_s)
        for pid in pids:
            os.kill(pid, signal.SIGCONT)
    code, out, err = finish(proc, timeout=400)
    assert code == 0, err[-3000:]
    return run_dir


def _flat_memory(run_dir):
    """Producer RSS over the run (ledger lines carry it): no growth between step 200 and the end."""
    for rank in (0, 1):
        rss = {r["step"]: r["rss_mib"] for r in part(run_dir, f"producer.p{rank}.jsonl") if "rss_mib" in r}
        assert len(rss) == 1001
        growth = max(rss[s] for s in range(900, 1001)) - rss[200]
        assert growth < 8.0, f"producer rank {rank} RSS grew by {growth:.1f} MiB over 800 steps"


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_slow_staging_block_counts_stalls(tmp_path):
    """QueueFullPolicy=Block with a finite queue: the simulation waits for a stopped staging side, the
    waits are counted, nothing is dropped, and producer memory stays flat over 1000 steps."""
    run_dir = _slow_staging(tmp_path, "slow_block", "Block")
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["steps_lost"] == 0 and summary["steps_dropped"] == 0 and summary["steps_received"] == 1001
    assert summary["stalls"] >= 2 and summary["stall_s"] >= 3.0  # two pauses of 3 s
    assert {e["status"] for e in ledger(run_dir)} <= {"sent_raw", "sent_encoded"}
    _flat_memory(run_dir)


@pytest.mark.timeout(600)
@pytest.mark.slow
def test_slow_staging_discard_records_dropped_steps(tmp_path):
    """QueueFullPolicy=Discard: the simulation never waits; the steps SST drops while staging is stopped
    are recorded in the ledger as dropped (never silently), and counted in steps_lost."""
    run_dir = _slow_staging(tmp_path, "slow_discard", "Discard", at=(60,))
    summary = json.load(open(run_dir / "summary.json"))
    entries = ledger(run_dir)
    dropped = {e["step"] for e in entries if e["status"] == "dropped"}
    assert dropped and summary["steps_dropped"] == len(dropped) == summary["steps_lost"]
    # the last steps SST dropped are still in the producers' replay buffers: they go to the fallback files
    assert summary["steps_received"] + len(dropped) + summary["steps_fallback"] == 1001
    assert all("Discard" in e["reason"] for e in entries if e["status"] == "dropped")
    assert "lost" not in {e["status"] for e in entries} and summary["stalls"] == 0  # the simulation never waited
    _flat_memory(run_dir)


def _two_jobs(tmp_path, path, first, delay):
    env = child_env()
    cmd = {side: [MPIEXEC, "-n", "2", sys.executable, "-m", "stagelearn", side, str(path)] for side in ("sim", "stage")}
    second = "stage" if first == "sim" else "sim"
    procs = {first: subprocess.Popen(cmd[first], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)}
    time.sleep(delay)
    procs[second] = subprocess.Popen(cmd[second], cwd=tmp_path, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
                                     text=True)
    outs = {}
    for side, p in procs.items():
        try:
            outs[side] = p.communicate(timeout=150)[0]
        except subprocess.TimeoutExpired:
            for q in procs.values():
                q.kill()
            pytest.fail(f"{side} did not end (hang?)")
    return {s: p.returncode for s, p in procs.items()}, outs


@pytest.mark.timeout(400)
@pytest.mark.parametrize("first", ["sim", "stage"])
def test_either_start_order_with_a_stale_contact_file(tmp_path, stagelearn_cli, first):
    """Staging started 4 s after the simulation, or the other way round, with contact files left by a
    crashed earlier run in place: the stale files are reported and replaced, nobody waits on them."""
    path = heat_config(tmp_path, f"order_{first}", simulation={**HEAT, "steps": 40})
    sst = tmp_path / "results" / f"order_{first}" / "sst"
    # an earlier run's writers, killed: their contact files stay behind
    stale = run_dir_with_stale_contacts(tmp_path, sst)
    codes, outs = _two_jobs(tmp_path, path, first, delay=4.0)
    assert codes == {"sim": 0, "stage": 0}, outs
    log = outs["sim"] + outs["stage"]
    assert "stale" in log.lower(), log[-3000:]
    for f in stale:
        assert not f.exists() or f.stat().st_mtime > time.time() - 200
    assert stagelearn_cli("report", path, timeout=60).returncode == 0
    summary = json.load(open(tmp_path / "results" / f"order_{first}" / "summary.json"))
    assert summary["steps_lost"] == 0 and summary["steps_received"] == 21


def run_dir_with_stale_contacts(tmp_path, sst):
    """Start a writer of ``<sst>/stream`` and of its model stream, SIGKILL them, keep their contact files."""
    sst.mkdir(parents=True, exist_ok=True, mode=0o700)
    script = tmp_path / "crashing_writer.py"
    script.write_text(
        "import sys, time, numpy as np\n"
        "from mpi4py import MPI\n"
        "import adios2.bindings as b\n"
        "ad = b.ADIOS(MPI.COMM_SELF)\n"
        "io = ad.DeclareIO('w'); io.SetEngine('SST'); io.SetParameter('RendezvousReaderCount', '0')\n"
        "e = io.Open(sys.argv[1], b.Mode.Write)\n"
        "print('open', flush=True)\n"
        "time.sleep(60)\n")
    files = []
    for name in ("stream", "stream-model"):
        p = subprocess.Popen([sys.executable, str(script), str(sst / name)], env=child_env(), stdout=subprocess.PIPE,
                             text=True)
        assert p.stdout.readline().strip() == "open"
        p.kill()
        p.wait()
        files.append(sst / f"{name}.sst")
        assert files[-1].exists()
    return files


@pytest.mark.timeout(400)
def test_checkpoint_restart_continues_versions_with_the_same_basis(tmp_path, stagelearn_cli):
    """A new staging job restarts from the checkpoint: the restored basis is the checkpointed one
    bit for bit, it is published at once as the next version, and producers code from their first step."""
    first = heat_config(tmp_path, "before", simulation={**HEAT, "steps": 60})
    proc = stagelearn_cli("run", first, "--no-progress", timeout=200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "results" / "before" / "checkpoint"
    state = json.load(open(ckpt / "state.json"))
    assert state["step"] == 30 and state["encoder_version"] >= 2
    second = heat_config(tmp_path, "after", simulation={**HEAT, "steps": 40}, staging={"ranks": 2, "restart_from": str(ckpt)})
    proc = stagelearn_cli("run", second, "--no-progress", timeout=200)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.load(open(tmp_path / "results" / "after" / "summary.json"))
    versions = [p["version"] for p in summary["published"]]
    assert versions[0] == state["encoder_version"] + 1 and versions == sorted(versions)
    steps = json.load(open(tmp_path / "results" / "after" / "steps.json"))
    assert steps[1]["encoder_version"] == versions[0]  # coded from (almost) the first step: no warm-up again
    with np.load(ckpt / "learner.npz", allow_pickle=False) as saved:
        components, mean = saved["T/components_"], saved["T/mean_"]
    enc = CompressedOutputReader(str(tmp_path / "results" / "after" / "compressed.bp")).encoder(versions[0])
    np.testing.assert_array_equal(enc.variables["T"].components_, components.astype(np.float32))
    np.testing.assert_array_equal(enc.variables["T"].mean_, mean.astype(np.float32))


@pytest.mark.timeout(300)
@pytest.mark.parametrize("sig", [signal.SIGINT, signal.SIGTERM])
def test_signal_to_run_stops_both_sides_cleanly(tmp_path, sig):
    """Ctrl-C / SIGTERM to `stagelearn run`: both sides stop at a step boundary within seconds, close
    their files, and exit 128 + signal; nothing written is lost."""
    path = heat_config(tmp_path, f"sig{int(sig)}")
    run_dir = tmp_path / "results" / f"sig{int(sig)}"
    proc = start_run(tmp_path, path)
    wait_progress(run_dir, 20, proc)
    t0 = time.time()
    proc.send_signal(sig)
    code, out, err = finish(proc, timeout=60)
    assert code == 128 + int(sig), (code, err[-2000:])
    assert time.time() - t0 < 20
    for side in ("sim", "stage"):
        assert f"interrupted by {signal.Signals(sig).name}" in (run_dir / f"{side}.log").read_text(errors="replace")
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["staging_end"] == "interrupted" and set(summary["producer_end"].values()) == {"interrupted"}
    entries = ledger(run_dir)
    assert summary["steps_lost"] == 0 and "lost" not in {e["status"] for e in entries}
    written = max(e["step"] for e in entries if e["status"] != "not_produced")
    assert all(e["status"] == "not_produced" for e in entries if e["step"] > written)
    reader = CompressedOutputReader(str(run_dir / "compressed.bp"))  # complete and readable
    assert np.isfinite(reader.read(reader.steps[-1], "T")).all()


@pytest.mark.timeout(300)
def test_sigterm_to_staging_only_producers_carry_on(tmp_path):
    """SIGTERM to the staging job alone: staging stores what it read and exits 143; the simulation
    switches to its fallback files and finishes its run."""
    path = heat_config(tmp_path, "term_stage")
    run_dir = tmp_path / "results" / "term_stage"
    proc = start_run(tmp_path, path)
    wait_progress(run_dir, 20, proc)
    for pid in rank_pids("stage", path):
        os.kill(pid, signal.SIGTERM)
    code, out, err = finish(proc)
    assert code == 143 and "stage side exited with code 143" in err, err[-2000:]
    assert json.load(open(run_dir / "staging_summary.json"))["end"] == "interrupted"
    producer = json.load(open(run_dir / "producer.json"))
    assert producer["status"] == "clean" and producer["staging_lost"] and producer["steps_written"] == 151
    summary = json.load(open(run_dir / "summary.json"))
    assert summary["steps_lost"] == 0 and summary["steps_fallback"] > 50


@pytest.mark.timeout(500)
def test_autoencoder_checkpoint_restart(tmp_path, stagelearn_cli):
    """The autoencoder's weights, replay buffers and optimizer moments are checkpointed per staging rank;
    a restarted staging publishes the same weights as the next version at once."""
    ae = {"type": "autoencoder", "warmup_steps": 2, "publish_every": 5,
          "autoencoder": {"channels": [4, 8], "latent_dim": 4, "iterations_per_step": 3, "batch_size": 64},
          "replay": {"kind": "reservoir", "max_mib": 1}}
    sim = {**HEAT, "nx": 32, "ny": 32, "steps": 30}
    first = heat_config(tmp_path, "ae_before", simulation=sim, learner=ae)
    proc = stagelearn_cli("run", first, "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    ckpt = tmp_path / "results" / "ae_before" / "checkpoint"
    state = json.load(open(ckpt / "state.json"))
    assert state["learners"]["T"]["kind"] == "ae" and state["step"] == 15
    for rank in (0, 1):  # each rank's buffer and Adam moments
        with np.load(ckpt / f"rank{rank}.npz", allow_pickle=False) as part_:
            assert part_["T/buffer/tiles"].shape[1] == 64 and len(part_["T/buffer/tiles"]) > 0
            assert any(k.startswith("T/opt/0/") for k in part_.files)
    second = heat_config(tmp_path, "ae_after", simulation=sim, learner=ae,
                         staging={"ranks": 2, "restart_from": str(ckpt)})
    proc = stagelearn_cli("run", second, "--no-progress", timeout=300)
    assert proc.returncode == 0, proc.stderr[-2000:]
    summary = json.load(open(tmp_path / "results" / "ae_after" / "summary.json"))
    first_version = summary["published"][0]["version"]
    assert first_version == state["encoder_version"] + 1
    enc = CompressedOutputReader(str(tmp_path / "results" / "ae_after" / "compressed.bp")).encoder(first_version)
    with np.load(ckpt / "learner.npz", allow_pickle=False) as saved:
        for name, arr in enc.variables["T"].ae_arrays.items():
            np.testing.assert_array_equal(arr, saved[f"T/ae/{name}"])
