"""Contact files of live jobs, Ctrl-C while a side waits in Open, and a Producer script with no staging.

Issue 15 item 6: a second ``stagelearn stage`` on a run directory deleted the first job's live SST
contact file as "stale (1 s old)" (the first then ended with exit 3); Ctrl-C on ``stagelearn sim``
waiting in Open was honoured only when ``open_s`` ran out (exit 3), ``stagelearn stage``
interrupted there exited 1. Issue 18: a ``Producer`` script whose Open timed out ended with a
traceback and exit code 1.
"""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import MPIEXEC, child_env, run_cmd
from test_pipeline import small_config

from stagelearn.staging import contact
from stagelearn.staging.adios import remove_stale_contact_file

HEAT = {"type": "heat2d", "ranks": 1, "nx": 32, "ny": 32, "steps": 20, "plotgap": 2}


def _config(tmp_path, name, open_s=60):
    return small_config(tmp_path, name, simulation=dict(HEAT), staging={"ranks": 1},
                        metrics={"sz3_every": 0}, timeouts={"open_s": open_s, "step_s": 60, "run_s": 240})


def _start(tmp_path, side, path, run_dir, log_name):
    """``mpiexec -n 1 stagelearn SIDE`` in its own process group (Ctrl-C reaches the whole group)."""
    log = open(tmp_path / log_name, "w")
    proc = subprocess.Popen([MPIEXEC, "-n", "1", sys.executable, "-m", "stagelearn", side, str(path), "--run-dir",
                             str(run_dir)], cwd=tmp_path, env=child_env(), stdout=log, stderr=subprocess.STDOUT,
                            stdin=subprocess.DEVNULL, start_new_session=True)
    proc.log_path = tmp_path / log_name
    log.close()
    return proc


def _wait_for(path, proc, timeout=60):
    t_end = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None:
            pytest.fail(f"ended ({proc.returncode}) before {path} appeared:\n{proc.log_path.read_text()}")
        if time.time() > t_end:
            pytest.fail(f"{path} did not appear within {timeout} s:\n{proc.log_path.read_text()}")
        time.sleep(0.1)


def _ctrl_c(proc, timeout=20):
    """Ctrl-C as a terminal sends it (SIGINT to the process group); returns (exit code, seconds to exit)."""
    t0 = time.monotonic()
    os.killpg(proc.pid, signal.SIGINT)
    try:
        proc.wait(timeout)
    except subprocess.TimeoutExpired:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        pytest.fail(f"still running {timeout} s after Ctrl-C:\n{proc.log_path.read_text()}")
    return proc.returncode, time.monotonic() - t0


def _kill(proc):
    if proc.poll() is None:
        os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()


# ----------------------------------------------------------------- staleness by owner, not age
@pytest.mark.timeout(60)
def test_contact_file_of_a_live_writer_is_kept_and_named(tmp_path):
    """A contact file claimed by a live process is never removed, whatever its age; once that
    process is gone, the same file is stale and removed with its claim."""
    sst = tmp_path / "run" / "sst"
    sst.mkdir(parents=True)
    writer = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        (sst / "stream.sst").write_text("contact")
        rec = {**contact.this_process(), "pid": writer.pid, "start": contact._start_time(writer.pid)}
        (sst / "stream.sst.owner").write_text(json.dumps(rec))
        old = time.time() - 3600
        os.utime(sst / "stream.sst", (old, old))  # an hour old: age says nothing
        with pytest.raises(contact.ContactFileInUse) as err:
            remove_stale_contact_file(str(sst / "stream"))
        text = str(err.value)
        assert f"pid {writer.pid}" in text and str(tmp_path / "run") in text and "--run-dir" in text, text
        assert (sst / "stream.sst").exists()
    finally:
        writer.kill()
        writer.wait()
    assert remove_stale_contact_file(str(sst / "stream")) is True
    assert not (sst / "stream.sst").exists() and not (sst / "stream.sst.owner").exists()


@pytest.mark.timeout(30)
def test_claims_judge_pid_reuse_and_other_hosts(tmp_path):
    path = str(tmp_path / "x.sst.owner")
    mine = contact.this_process()
    assert contact.is_live({**mine, "pid": os.getppid(), "start": None}, path)
    assert not contact.is_live({**mine, "pid": os.getppid(), "start": -5}, path)  # same pid, another process
    assert not contact.is_live({**mine, "pid": 2**22 + 12345}, path)
    other = {**mine, "host": "elsewhere.invalid", "pid": 1}
    with open(path, "w") as f:
        json.dump(other, f)
    assert contact.is_live(other, path)  # touched just now: its heartbeat is fresh
    old = time.time() - contact.STALE_AFTER_S - 5
    os.utime(path, (old, old))
    assert not contact.is_live(other, path)
    contact.claim(path, "a test")  # stale: taken over
    assert contact.read_claim(path)["pid"] == os.getpid()
    contact.release(path)
    assert not os.path.exists(path)


# ----------------------------------------------------------------- a second staging job, Ctrl-C in Open
@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_second_stage_on_a_live_run_dir_stops_at_once(tmp_path):
    """The first staging job waits in Open for its producers; a second one on the same run directory
    exits 2 at once naming the directory and the live pid, and leaves the first one's contact file in
    place (it used to remove it as "stale (1 s old)")."""
    path = _config(tmp_path, "twice")
    run_dir = tmp_path / "results" / "twice"
    first = _start(tmp_path, "stage", path, run_dir, "stage1.log")
    try:
        contact_file = run_dir / "sst" / "stream-model.sst"
        _wait_for(contact_file, first)
        second = run_cmd([MPIEXEC, "-n", "1", sys.executable, "-m", "stagelearn", "stage", str(path), "--run-dir",
                          str(run_dir)], timeout=40, cwd=tmp_path)
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        owner = json.loads((run_dir / "sst" / "staging.owner").read_text())
        err = " ".join(second.stderr.split())
        assert f"pid {owner['pid']}" in err and str(run_dir) in err and "held by a live process" in err, err
        assert "Traceback" not in second.stderr and "stale" not in err
        assert contact_file.exists() and first.poll() is None  # the first job is untouched
    finally:
        _kill(first)


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("side", ["sim", "stage"])
def test_ctrl_c_while_waiting_in_open_exits_130_within_2_s(tmp_path, side):
    """`stagelearn sim` (no staging: in the model stream's reader Open) or `stagelearn stage` (no
    producers: in the model stream's writer Open), open_s 60: Ctrl-C ends it within 2 s with exit
    code 130 and one line; a writer removes its contact file on the way out."""
    path = _config(tmp_path, f"wait_{side}")
    run_dir = tmp_path / "results" / f"wait_{side}"
    proc = _start(tmp_path, side, path, run_dir, f"{side}.log")
    try:
        if side == "stage":
            _wait_for(run_dir / "sst" / "stream-model.sst", proc)
        else:
            _wait_for(run_dir / "sst", proc)
        time.sleep(3.0)  # in Open by now (a Ctrl-C before it must end the side as fast)
        code, took = _ctrl_c(proc)
        log = proc.log_path.read_text()
        assert code == 130, (code, log)
        assert took < 2.0, took
        assert "SIGINT while waiting for" in log and "Traceback" not in log, log
        assert not (run_dir / "sst" / "stream-model.sst").exists()
    finally:
        _kill(proc)


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_second_sim_on_a_live_data_stream_stops_at_once(tmp_path):
    """A second producer job on a run directory whose producer waits for staging stops at once (exit 2)."""
    path = _config(tmp_path, "twosims")
    run_dir = tmp_path / "results" / "twosims"
    first = _start(tmp_path, "sim", path, run_dir, "sim1.log")
    try:
        _wait_for(run_dir / "sst", first)
        time.sleep(3.0)
        second = run_cmd([MPIEXEC, "-n", "1", sys.executable, "-m", "stagelearn", "sim", str(path), "--run-dir",
                          str(run_dir)], timeout=40, cwd=tmp_path)
        assert second.returncode == 2, (second.returncode, second.stderr[-2000:])
        owner = json.loads((run_dir / "sst" / "stream.sst.owner").read_text())
        err = " ".join(second.stderr.split())
        assert f"pid {owner['pid']}" in err and str(run_dir) in err, err
        assert first.poll() is None
    finally:
        _kill(first)


# ----------------------------------------------------------------- a Producer script with no staging
PRODUCER_SCRIPT = """
import sys
from mpi4py import MPI
from stagelearn.staging import Producer
from stagelearn.staging.config import default_xml

comm = MPI.COMM_WORLD
with Producer(sys.argv[1], comm=comm, config_file=default_xml(), open_timeout_s=2, step_timeout_s=5) as prod:
    prod.define_variable("T", (8, 8 * comm.Get_size()), (0, 8 * comm.Get_rank()), (8, 8))
    prod.open()
    print("NOT REACHED")
"""


@pytest.mark.sst
@pytest.mark.mpi
@pytest.mark.timeout(120)
@pytest.mark.parametrize("ranks", [1, 2])
def test_producer_script_without_staging_ends_in_one_line_with_exit_3(tmp_path, ranks):
    """No staging: the uncaught StreamTimeoutError ends the script with exit 3 and one line naming the
    stream, the timeout as the script passed it and the fix; no traceback."""
    script = tmp_path / "my_sim.py"
    script.write_text(PRODUCER_SCRIPT)
    (tmp_path / "run" / "sst").mkdir(parents=True)
    proc = run_cmd([MPIEXEC, "-n", str(ranks), sys.executable, str(script), str(tmp_path / "run" / "sst" / "stream")],
                   timeout=90, cwd=tmp_path)
    assert proc.returncode == 3, (proc.returncode, proc.stdout, proc.stderr)
    assert "Traceback" not in proc.stderr and "NOT REACHED" not in proc.stdout, proc.stderr
    lines = [ln for ln in proc.stderr.splitlines() if ": stagelearn: " in ln]
    assert len(lines) == 1, proc.stderr
    assert "my_sim.py" in lines[0] and "(open_timeout_s=2)" in lines[0] and "is it running" in lines[0]
    assert "[exit 3]" in lines[0]
