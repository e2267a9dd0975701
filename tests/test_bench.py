"""The benchopt benchmark passes `benchopt test` at its tiny test size."""

import os
import sys

import pytest

from conftest import REPO, child_env, run_cmd


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_benchopt_test_tiny():
    """benchopt's own benchmark tests (what `benchopt test` runs), at the datasets' test sizes.

    `benchopt test` itself builds a conda environment for its install tests; there is no conda
    here, so the same pytest command runs in this environment with the install tests deselected.
    """
    benchopt_tests = pytest.importorskip("benchopt.tests")
    tests_dir = os.path.dirname(benchopt_tests.__file__)
    bindir = os.path.dirname(sys.executable)
    env = child_env(PATH=bindir + os.pathsep + os.environ.get("PATH", ""))
    proc = run_cmd([sys.executable, "-m", "pytest", "-p", "benchopt.tests.fixtures", "--rootdir", tests_dir,
                    os.path.join(tests_dir, "test_benchmarks.py"), "--benchmark", str(REPO / "benchmarks"),
                    "--import-mode", "importlib", "-k", "not install", "-q", "-p", "no:cacheprovider"],
                   timeout=880, cwd=REPO / "benchmarks", env=env)
    assert proc.returncode == 0, proc.stdout[-4000:] + proc.stderr[-2000:]
