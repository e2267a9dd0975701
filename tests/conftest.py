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
