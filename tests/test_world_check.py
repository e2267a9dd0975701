"""The start-up world-size check (staging/world_check.py): singletons stop with exit 2 and the fix.

Fake communicators (tests/fakes.py) and fake environments; the same check on a real SLURM is in
tests/test_slurm_real.py, and through `stagelearn sim` / `stagelearn stage` here under a plain
process environment that looks like `srun` without `--mpi`.
"""

from __future__ import annotations

import logging
import sys

import pytest
from conftest import child_env, run_cmd
from fakes import make_group

from stagelearn.staging.cli import exit_code_for
from stagelearn.staging.errors import UsageError
from stagelearn.staging.world_check import check_world_size, launcher_size


def test_launcher_size_order_and_bad_values():
    assert launcher_size({}) == (None, None)
    assert launcher_size({"SLURM_STEP_NUM_TASKS": "4"}) == ("SLURM_STEP_NUM_TASKS", 4)
    # Hydra inside an allocation: PMI_SIZE is the MPI job, SLURM_STEP_NUM_TASKS the proxies' step
    assert launcher_size({"SLURM_STEP_NUM_TASKS": "1", "PMI_SIZE": "6"}) == ("PMI_SIZE", 6)
    assert launcher_size({"OMPI_COMM_WORLD_SIZE": "3", "SLURM_STEP_NUM_TASKS": "3"}) == ("OMPI_COMM_WORLD_SIZE", 3)
    assert launcher_size({"PMI_SIZE": " ", "SLURM_STEP_NUM_TASKS": "x", "OMPI_COMM_WORLD_SIZE": "2"}) == \
        ("OMPI_COMM_WORLD_SIZE", 2)


@pytest.mark.parametrize("side", ["sim", "stage"])
def test_singleton_under_srun_without_mpi_is_a_usage_error_with_the_fix(side):
    (comm,) = make_group(1)
    env = {"SLURM_STEP_NUM_TASKS": "2", "SLURM_NTASKS": "2"}  # srun -n 2 without --mpi: no PMI_SIZE
    with pytest.raises(UsageError) as info:
        check_world_size(comm, side, yaml_ranks=2, environ=env)
    msg = str(info.value)
    assert f"`stagelearn {side}` has 1 rank(s) but the launcher started 2 tasks (SLURM_STEP_NUM_TASKS=2)" in msg
    assert "singleton" in msg and "srun --mpi=pmi2" in msg and "PMIx" in msg
    assert exit_code_for(info.value) == 2


def test_hetjob_component_is_named():
    comms = make_group(2)
    env = {"SLURM_STEP_NUM_TASKS": "3", "SLURM_HET_SIZE": "2"}
    for comm in comms:  # every rank raises, before any collective
        with pytest.raises(UsageError, match=r"has 2 rank\(s\) but the launcher started 3 tasks .*SLURM_HET_SIZE=2 "
                                             r"components.*not the one the launcher started"):
            check_world_size(comm, "stage", environ=env)


def test_matching_sizes_pass_and_return_the_count():
    for comm in make_group(2):
        assert check_world_size(comm, "sim", yaml_ranks=4, environ={"PMI_SIZE": "2"}) == 2  # launcher wins over YAML
    (comm,) = make_group(1)
    assert check_world_size(comm, "sim", environ={"SLURM_STEP_NUM_TASKS": "1"}) == 1


def test_without_launcher_the_yaml_is_only_a_warning(caplog):
    comms = make_group(2)
    with caplog.at_level(logging.WARNING, logger="stagelearn.staging.world_check"):
        assert check_world_size(comms[0], "sim", yaml_ranks=4, yaml_key="simulation.ranks", environ={}) is None
        assert check_world_size(comms[1], "sim", yaml_ranks=4, yaml_key="simulation.ranks", environ={}) is None
        assert check_world_size(comms[0], "stage", yaml_ranks=2, yaml_key="staging.ranks", environ={}) is None
    warnings = [r.getMessage() for r in caplog.records if r.levelno == logging.WARNING]
    assert len(warnings) == 1  # rank 0 only; equal sizes say nothing
    assert "simulation.ranks is 4" in warnings[0] and "COMM_WORLD has 2 rank(s)" in warnings[0]


@pytest.mark.parametrize("side", ["sim", "stage"])
def test_cli_side_stops_at_once_with_exit_2(tmp_path, side):
    """`stagelearn sim|stage` as one task of `srun -n 2` without --mpi sees: a singleton, exit 2, no run directory."""
    from test_pipeline import small_config

    cfg = small_config(tmp_path, "single")
    env = child_env(SLURM_STEP_NUM_TASKS="2", SLURM_NTASKS="2", SLURM_STEP_ID="0")
    for name in ("PMI_SIZE", "PMI_RANK", "PMI_FD", "OMPI_COMM_WORLD_SIZE"):
        env.pop(name, None)
    proc = run_cmd([sys.executable, "-m", "stagelearn", side, str(cfg)], timeout=120, cwd=tmp_path, env=env)
    assert proc.returncode == 2, proc.stderr[-2000:]
    assert f"stagelearn {side}: error: MPI COMM_WORLD of `stagelearn {side}` has 1 rank(s)" in proc.stderr
    assert "--mpi=pmi2" in proc.stderr
    run_dir = tmp_path / "results" / "single"  # stopped before any stream or output: no files but the sst/ folder
    assert not run_dir.exists() or [p.name for p in run_dir.rglob("*")] == ["sst"]
