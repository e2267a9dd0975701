"""Shared fixtures: paths, and running commands or scripts under mpiexec with a hard timeout."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
MPIEXEC = os.path.join(os.path.dirname(sys.executable), "mpiexec")


def child_env(**extra):
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1", PYTHONUNBUFFERED="1")
    env.update(extra)
    return env


def run_cmd(args, *, timeout, cwd=None, env=None):
    """Run a command; a hang becomes a test failure after ``timeout`` seconds (never a stuck suite)."""
    try:
        return subprocess.run(args, capture_output=True, text=True, timeout=timeout, cwd=cwd, env=env or child_env(),
                              stdin=subprocess.DEVNULL)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"command timed out after {timeout} s (deadlock?): {' '.join(map(str, args))}\n"
                    f"stdout: {exc.stdout}\nstderr: {exc.stderr}")


def stage_and_script(tmp_path, yaml_path, run_dir, script_argv, *, sim_ranks=1, timeout=150):
    """Run `stagelearn stage` (1 rank) and a user's producer script (``sim_ranks`` ranks) apart, as a
    user would; returns ``(script CompletedProcess, staging exit code, staging output)``."""
    stage_log = tmp_path / "stage.log"  # a file, not a pipe: nothing read until the end can block staging
    with open(stage_log, "w") as log:
        stage = subprocess.Popen([MPIEXEC, "-n", "1", sys.executable, "-m", "stagelearn", "stage", str(yaml_path),
                                  "--run-dir", str(run_dir)], cwd=tmp_path, env=child_env(),
                                 stdout=log, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
        try:
            sim = run_cmd([MPIEXEC, "-n", str(sim_ranks), sys.executable, *map(str, script_argv)], timeout=timeout,
                          cwd=tmp_path)
            stage.wait(timeout=60)
        finally:
            if stage.poll() is None:
                stage.kill()
                stage.wait()
    return sim, stage.returncode, stage_log.read_text()


@pytest.fixture
def mpirun(tmp_path):
    """Run a Python snippet on ``n`` MPI ranks; returns the CompletedProcess (asserts exit 0 unless told)."""

    def _run(n, code, *, timeout=120, check=True):
        script = tmp_path / f"mpi_script_{n}.py"
        script.write_text(textwrap.dedent(code))
        proc = run_cmd([MPIEXEC, "-n", str(n), sys.executable, "-m", "mpi4py", str(script)], timeout=timeout, cwd=tmp_path)
        if check:
            assert proc.returncode == 0, f"mpiexec -n {n} failed ({proc.returncode}):\n{proc.stdout}\n{proc.stderr}"
        return proc

    return _run


@pytest.fixture
def stagelearn_cli(tmp_path):
    """Run ``python -m stagelearn ARGS`` in ``tmp_path``."""

    def _run(*args, timeout=300):
        return run_cmd([sys.executable, "-m", "stagelearn", *map(str, args)], timeout=timeout, cwd=tmp_path)

    return _run
