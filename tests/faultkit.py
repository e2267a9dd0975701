"""Process control for fault injection: start `stagelearn run`, wait for progress, find the rank
processes of a side (used by tests/test_faults.py and benchmarks/reliability.py)."""

import json
import os
import subprocess
import sys
import time

from conftest import child_env


class FaultKitError(AssertionError):
    """A scenario did not reach the state it waits for (a test failure)."""


def start_run(tmp_path, path):
    return subprocess.Popen([sys.executable, "-m", "stagelearn", "run", str(path), "--no-progress"], cwd=tmp_path,
                            env=child_env(), stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            stdin=subprocess.DEVNULL)


def finish(proc, timeout=200):
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        proc.kill()
        out, err = proc.communicate()
        raise FaultKitError(f"run did not end within {timeout} s (hang?):\n{out[-2000:]}\n{err[-3000:]}")
    return proc.returncode, out, err


def wait_progress(run_dir, n, proc, timeout=120):
    """Wait until staging stored ``n`` steps (progress.json)."""
    t_end = time.time() + timeout
    while time.time() < t_end:
        try:
            if json.load(open(run_dir / "progress.json"))["steps_received"] >= n:
                return
        except (OSError, ValueError, KeyError):
            pass
        if proc is not None and proc.poll() is not None:
            raise FaultKitError(f"run ended before {n} steps: {proc.communicate()}")
        time.sleep(0.2)
    raise FaultKitError(f"fewer than {n} steps stored after {timeout} s")


def rank_pids(side, config):
    """PIDs of the Python rank processes of ``stagelearn SIDE CONFIG`` (not mpiexec, not the watchdog)."""
    pids = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            argv = open(f"/proc/{entry}/cmdline", "rb").read().split(b"\0")
        except OSError:
            continue
        words = [a.decode(errors="replace") for a in argv if a]
        if len(words) > 3 and words[1:3] == ["-m", "stagelearn"] and side in words and str(config) in words \
                and "mpiexec" not in os.path.basename(words[0]):
            pids.append(int(entry))
    return sorted(pids)


