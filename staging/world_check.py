"""The start-up check that ``MPI_COMM_WORLD`` has as many ranks as the launcher started.

When ``srun`` and the MPI library do not share a PMI (``srun`` without ``--mpi=pmi2`` for the
``mpich`` wheel, or ``--mpi=pmix`` for an MPI built without PMIx, or another MPI's ``mpiexec``),
every task starts as a *singleton*: ``COMM_WORLD`` of size 1, rank 0, and no error from MPI. Left
alone, staging ranks then delete each other's contact files and the run ends in timeouts minutes
later. :func:`check_world_size` compares the size with what the launcher asked for and raises
:class:`~stagelearn.staging.errors.UsageError` (exit code 2) with the fix, on every rank, before any
collective.

What the launcher asked for, first found wins (the launcher's own count, not the YAML):

``PMI_SIZE``
    Set by MPICH's ``mpiexec`` (Hydra) and by ``srun --mpi=pmi2``.
``OMPI_COMM_WORLD_SIZE``
    Set by Open MPI's ``mpirun`` (an Open MPI launcher with an MPICH-ABI library gives singletons).
``SLURM_STEP_NUM_TASKS``
    Set by ``srun`` in every task of a job step, also for one component of a heterogeneous job
    (``srun --het-group=1``: that component's tasks; ``SLURM_HET_SIZE`` counts the components).

Without any of them (a plain ``stagelearn sim`` without a launcher), the YAML's ranks are the only
hint: a difference is reported as a warning, not an error (one rank may be what the user wants).
"""

from __future__ import annotations

import logging
import os

from .errors import UsageError

logger = logging.getLogger(__name__)

LAUNCHER_VARIABLES = ("PMI_SIZE", "OMPI_COMM_WORLD_SIZE", "SLURM_STEP_NUM_TASKS")
FIX = ("launch each side with `srun --mpi=pmi2` (what `stagelearn launch` writes by default; `--srun-mpi pmi2`), "
       "or with the `mpiexec` of the environment stagelearn runs in; the mpich wheel speaks PMI-1/PMI-2 only, "
       "not PMIx (`srun --mpi=list` shows what SLURM offers; docs/hpc.md)")


def launcher_size(environ=None):
    """``(variable, size)`` of the first launcher variable set in ``environ`` (``os.environ``), or ``(None, None)``."""
    environ = os.environ if environ is None else environ
    for name in LAUNCHER_VARIABLES:
        value = environ.get(name)
        if value is None or not str(value).strip():
            continue
        try:
            return name, int(str(value).strip())
        except ValueError:
            continue  # not a count (a site's wrapper may set odd values): try the next one
    return None, None


def _any_launcher_size_is(size, environ):
    """True when one of the launcher variables holds ``size`` (the launcher that started these ranks)."""
    for name in LAUNCHER_VARIABLES:
        try:
            if int(str(environ.get(name, "")).strip()) == size:
                return True
        except ValueError:
            continue
    return False


def _describe(name, environ):
    """The launcher variable, with the heterogeneous-job component when there is one."""
    het = environ.get("SLURM_HET_SIZE")
    if name == "SLURM_STEP_NUM_TASKS" and het:
        return f"{name} (one component of a heterogeneous job of SLURM_HET_SIZE={het} components)"
    return name


def check_world_size(comm, side, *, yaml_ranks=None, yaml_key=None, environ=None):
    """Raise :class:`UsageError` when ``comm`` is smaller or larger than the launcher's task count.

    Called on every rank before the first collective; every rank sees the same environment
    variable values, so all of them raise together (singletons each raise on their own).

    Parameters
    ----------
    comm : mpi4py communicator (or a fake with ``Get_size`` / ``Get_rank``)
        The side's ``MPI_COMM_WORLD``.
    side : str
        ``"sim"`` or ``"stage"``, for the message.
    yaml_ranks : int, optional
        The YAML's ranks for this side; compared (as a warning) only when no launcher variable is set.
    yaml_key : str, optional
        The YAML key of ``yaml_ranks`` (``simulation.ranks``), for the warning.
    environ : mapping, optional
        Default ``os.environ``.

    Returns
    -------
    int or None
        The launcher's task count, or None when no launcher variable was set.
    """
    environ = os.environ if environ is None else environ
    size = int(comm.Get_size())
    name, expected = launcher_size(environ)
    if expected is not None and size != expected and _any_launcher_size_is(size, environ):
        expected = size  # a variable inherited from an outer launcher (e.g. PMI_SIZE of mpiexec -n 1 around mpirun)
    if expected is not None:
        if size != expected:
            what = ("every rank runs as a singleton (COMM_WORLD of size 1): the launcher and the MPI library do not "
                    "share a PMI" if size == 1 else "the MPI job is not the one the launcher started")
            raise UsageError(f"MPI COMM_WORLD of `stagelearn {side}` has {size} rank(s) but the launcher started {expected} "
                             f"tasks ({_describe(name, environ)}={expected}): {what}; fix: {FIX}")
        return expected
    if yaml_ranks is not None and int(yaml_ranks) != size and comm.Get_rank() == 0:
        logger.warning("stagelearn %s: MPI COMM_WORLD has %d rank(s), the run YAML's %s is %d; no launcher variable "
                       "(%s) is set: start it with `mpiexec -n %d` or `srun --mpi=pmi2 -n %d`", side, size,
                       yaml_key or "ranks", int(yaml_ranks), ", ".join(LAUNCHER_VARIABLES), int(yaml_ranks),
                       int(yaml_ranks))
    return None
