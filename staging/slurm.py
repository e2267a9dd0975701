"""``stagelearn launch --scheduler slurm``: a SLURM batch script for a run YAML (text only, nothing is submitted).

Two layouts, both running the existing one-side commands ``stagelearn sim CFG --run-dir D`` and
``stagelearn stage CFG --run-dir D`` as two separate MPI jobs (each side's ``MPI_COMM_WORLD`` is
its own side, as with ``stagelearn run``; they meet through the SST contact files in ``D/sst/``):

``hetjob``
    A heterogeneous job: component 0 has ``simulation.ranks`` tasks, component 1
    ``staging.ranks``; ``srun --het-group=0 ... sim`` and ``srun --het-group=1 ... stage`` run
    concurrently, then ``wait``.
``mpmd``
    One ordinary allocation of ``simulation.ranks + staging.ranks`` tasks split into two
    concurrent job steps (``srun --exact``). Not ``srun --multi-prog``: a multi-prog step is ONE
    MPI job, so both programs would share one ``MPI_COMM_WORLD``, and each side of stagelearn
    uses ``MPI_COMM_WORLD`` as its own communicator (collectives would mix the two sides).

With ``container``, each side runs as ``apptainer run --app sim|stage IMAGE ...`` (the image's
``%apprun`` sections, ``containers/stagelearn.def``); without it, the script puts the environment it
was generated from first on ``PATH`` (so ``sbatch --export=NONE`` works) and exports
``SLURM_EXPORT_ENV=ALL`` for its job steps. Every ``srun`` gets ``--mpi=pmi2`` unless told otherwise:
the ``mpich`` wheel speaks PMI-1/PMI-2, not PMIx (:func:`check_srun_mpi`). A heterogeneous job with
``adios2.network_interface: lo`` stops (exit 2) when its components are not on one node. Every
value taken from the config or the command line is quoted with :func:`shlex.quote`; the functions
only return text.
"""

from __future__ import annotations

import importlib.metadata
import math
import os
import shlex
import sys

MODES = ("hetjob", "mpmd")
DEFAULT_SRUN_MPI = "pmi2"  # what the mpich wheel (the `mpi` extra, the hybrid image) speaks: PMI-1 / PMI-2


def _q(value):
    return shlex.quote(str(value))


def walltime(run_s, margin_min=5):
    """``HH:MM:SS`` for SLURM's ``--time``: ``timeouts.run_s`` rounded up to minutes, plus a margin."""
    minutes = math.ceil(float(run_s) / 60.0) + margin_min
    return f"{minutes // 60:02d}:{minutes % 60:02d}:00"


def sst_warnings(cfg):
    """Warnings about the SST settings of ``cfg`` for a batch (multi-node) run."""
    if cfg.adios2.network_interface != "lo":
        return []
    return ["this run's SST streams use NetworkInterface=lo (loopback; adios2.network_interface, default lo): both "
            "sides must then share one node; for a multi-node job set adios2.network_interface to the nodes' "
            "high-speed interface (e.g. hsn0, ib0) in the run YAML (containers/README.md)"]


def local_mpi():
    """``"mpich-wheel"`` when this environment's MPI is PyPI's ``mpich`` wheel (PMI-1/PMI-2 only), else ``"site"``."""
    try:
        importlib.metadata.distribution("mpich")
    except importlib.metadata.PackageNotFoundError:
        return "site"
    return "mpich-wheel"


def check_srun_mpi(srun_mpi, *, container=None, mpi=None):
    """Warnings about ``srun --mpi=srun_mpi``; ValueError where it cannot work.

    ``pmix`` (or ``pmix_v3``, ...) cannot work with the ``mpich`` wheel: it is built without PMIx and
    aborts with "unsupported PMI version PMIx". Without ``container`` the MPI is this environment's
    (``mpi``, default :func:`local_mpi`): refused for the wheel. With a container it is the image's:
    the hybrid image has the wheel, the bind image the host MPI, so a warning says which works.
    """
    value = str(srun_mpi)
    if not value.startswith("pmix"):
        if value == "none":
            return [f"--srun-mpi none: srun starts the tasks without a PMI, so every rank of the mpich wheel runs as a "
                    f"singleton (each side stops at start with exit 2); use --srun-mpi {DEFAULT_SRUN_MPI}"]
        return []
    if container:
        return [f"--srun-mpi {value}: works only with the bind image (stagelearn-bind.def) on a host MPI built with "
                f"PMIx; the hybrid image's MPICH (the mpich wheel) speaks PMI-1/PMI-2 only: use --srun-mpi "
                f"{DEFAULT_SRUN_MPI} with it (containers/README.md)"]
    if (mpi or local_mpi()) == "mpich-wheel":
        raise ValueError(f"launch: --srun-mpi {value} cannot work here: this environment's MPI is the mpich wheel "
                         f"({sys.prefix}), built without PMIx (it aborts with 'unsupported PMI version PMIx'); use "
                         f"--srun-mpi {DEFAULT_SRUN_MPI} (the default), or PMIx with a site MPI built with it "
                         "(docs/hpc.md)")
    return []


def launch_warnings(cfg, *, mode="hetjob", srun_mpi=None, container=None, mpi=None):
    """Every warning of :func:`generate` for these arguments (the CLI prints them; the script has them as NOTEs)."""
    warnings = sst_warnings(cfg)
    if warnings and mode == "hetjob":
        warnings = [warnings[0] + "; this heterogeneous job stops at start (exit 2) if its components run on "
                    "different nodes: set adios2.network_interface, or use --mode mpmd (pinned to one node)"]
    return warnings + check_srun_mpi(srun_mpi or DEFAULT_SRUN_MPI, container=container, mpi=mpi)


def environment_bin():
    """The ``bin`` directory of the environment running this process (the venv's, or the interpreter's)."""
    if sys.prefix != sys.base_prefix:  # a venv: <prefix>/bin holds python and the stagelearn entry point
        return os.path.join(os.path.abspath(sys.prefix), "bin")
    return os.path.dirname(os.path.abspath(sys.executable))


def _activation(env_bin):
    """Script lines that make the job use ``env_bin`` (``stagelearn`` from it) even under ``--export=NONE``."""
    venv = os.path.dirname(env_bin) if os.path.isfile(os.path.join(os.path.dirname(env_bin), "pyvenv.cfg")) else None
    lines = ["# The environment this script was generated from, first on PATH: the job needs no `source activate`",
             "# (sbatch --export=NONE starts it without the submitting shell's environment)."]
    if venv:
        lines.append(f"export VIRTUAL_ENV={_q(venv)}")
    lines += [f'export PATH={_q(env_bin)}:"${{PATH:-/usr/bin:/bin}}"',
              f"if [ ! -x {_q(os.path.join(env_bin, 'stagelearn'))} ]; then",
              f"  echo {_q(f'stagelearn: no stagelearn in {env_bin} (the environment this script was generated from, as seen on this node): install it there or regenerate the script with `stagelearn launch` from the environment to use')} >&2",
              "  exit 2",
              "fi"]
    return lines


def _hetjob_lo_check():
    """Script lines of a heterogeneous job whose SST uses ``lo``: stop unless both components share one node."""
    msg = ("stagelearn: adios2.network_interface is lo (loopback) but this heterogeneous job's components run on "
           "${g0:-?} (simulation) and ${g1:-?} (staging): SST cannot connect across nodes. Set "
           "adios2.network_interface in the run YAML to the nodes' interface (interfaces on this node: ${ifaces:-?}; "
           "hsn0 on Slingshot, ib0 on InfiniBand; 'ip -br addr' on a compute node) and regenerate, or use "
           "'stagelearn launch --mode mpmd' on one node")
    return ["# SST over lo (adios2.network_interface): both components must share ONE node, else stop now (exit 2).",
            'g0=${SLURM_JOB_NODELIST_HET_GROUP_0:-}; g1=${SLURM_JOB_NODELIST_HET_GROUP_1:-}',
            'if [ -z "$g0" ] || [ "$g0" != "$g1" ] || [[ "$g0" == *[,[]* ]]; then',
            "  ifaces=$(echo $(ls /sys/class/net 2>/dev/null | grep -vx lo))",
            f'  echo "{msg}" >&2',
            "  exit 2",
            "fi"]


def side_argv(side, config, run_dir, *, container=None, binds=(), log_level=None):
    """Argument list (unquoted) of one side's program, as ``srun`` starts it on every task."""
    tail = [str(config), "--run-dir", str(run_dir)]
    if container:
        argv = ["apptainer", "run", "--app", side]
        for b in binds:
            argv += ["--bind", str(b)]
        argv.append(str(container))
        # %apprun <side> is `stagelearn <side> "$@"`: global options cannot precede the side there
        return argv + tail
    argv = ["stagelearn"]
    if log_level:
        argv += ["--log-level", log_level]
    return argv + [side] + tail


def report_argv(config, run_dir, *, container=None, binds=()):
    """Argument list of ``stagelearn report`` (after both sides ended)."""
    tail = ["report", str(config), "--run-dir", str(run_dir)]
    if container:
        argv = ["apptainer", "exec"]
        for b in binds:
            argv += ["--bind", str(b)]
        return argv + [str(container), "stagelearn"] + tail
    return ["stagelearn"] + tail


def _join(argv):
    return " ".join(_q(a) for a in argv)


def generate(cfg, config_path, *, mode="hetjob", run_dir=None, container=None, binds=(), job_name=None,
             time=None, partition=None, account=None, srun_mpi=None, log_level=None, mpi=None, env_bin=None):
    """The batch script (text) for ``cfg`` (a :class:`~stagelearn.staging.config.RunConfig`).

    Parameters
    ----------
    cfg : RunConfig
        From :func:`~stagelearn.staging.config.load_config`; gives ``simulation.ranks``,
        ``staging.ranks``, ``run_dir`` and ``timeouts.run_s``.
    config_path : str
        The run YAML as the job will see it (relative paths are relative to the submit directory).
    mode : {"hetjob", "mpmd"}
    run_dir : str, optional
        Default ``<output_dir>/<run_name>``; must be on a file system both sides see (SST contact files).
    container : str, optional
        Apptainer image; each side runs as ``apptainer run --app <side> IMAGE``.
    binds : sequence of str
        ``--bind`` specs for apptainer (e.g. ``$SCRATCH/run:/run_dir`` written literally).
    srun_mpi : str, optional
        ``srun --mpi=...``; default ``pmi2`` (the mpich wheel speaks PMI-1/PMI-2). ``pmix`` is refused
        without ``container`` when this environment's MPI is the mpich wheel (:func:`check_srun_mpi`).
    mpi : {"mpich-wheel", "site"}, optional
        This environment's MPI (default :func:`local_mpi`), for that check.
    env_bin : str, optional
        Without ``container``: the environment's ``bin`` put first on ``PATH`` in the job (default
        :func:`environment_bin`, the environment running ``stagelearn launch``).

    Raises
    ------
    ValueError
        Unknown ``mode``, a line break in a value, or an ``srun_mpi`` that cannot work.
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    values = [config_path, run_dir, container, job_name, time, partition, account, srun_mpi, env_bin, *binds]
    if cfg.simulation.type == "external":
        values += list(cfg.simulation.command)
    if any(v is not None and ("\n" in str(v) or "\r" in str(v)) for v in values):
        raise ValueError("launch: a path, name or command argument contains a line break")
    srun_mpi = srun_mpi or DEFAULT_SRUN_MPI
    warnings = launch_warnings(cfg, mode=mode, srun_mpi=srun_mpi, container=container, mpi=mpi)
    m, n = int(cfg.simulation.ranks), int(cfg.staging.ranks)
    run_dir = str(run_dir or cfg.run_dir)
    job_name = job_name or f"stagelearn-{cfg.run_name}"
    time = time or walltime(cfg.timeouts.run_s)
    common = [f"#SBATCH --job-name={_q(job_name)}"]
    per_component = [f"#SBATCH --time={_q(time)}"]  # repeated in each hetjob component
    if partition:
        per_component.append(f"#SBATCH --partition={_q(partition)}")
    if account:
        per_component.append(f"#SBATCH --account={_q(account)}")
    srun_opts = [f"--mpi={srun_mpi}"]
    sim = side_argv("sim", config_path, run_dir, container=container, binds=binds, log_level=log_level)
    stage = side_argv("stage", config_path, run_dir, container=container, binds=binds, log_level=log_level)
    if cfg.simulation.type == "external":  # an unchanged code: started as is, in the run directory (as `run` does)
        sim = [*(["apptainer", "exec", *[a for b in binds for a in ("--bind", str(b))], str(container)] if container else []),
               "env", "-C", run_dir, *cfg.simulation.command]

    lines = ["#!/bin/bash",
             f"# stagelearn launch --scheduler slurm --mode {mode}: generated from {config_path}",
             f"# simulation: {m} ranks ({cfg.simulation.type}); staging: {n} ranks; run directory {run_dir}",
             "# Submit from the directory the relative paths are relative to (sbatch starts the job there)."]
    lines += [f"# NOTE: {w}" for w in warnings]
    if mode == "hetjob":
        lines += ["# Heterogeneous job: component 0 = simulation, component 1 = staging."]
        lines += common + per_component
        lines += [f"#SBATCH --ntasks={m}", "#SBATCH hetjob", *per_component, f"#SBATCH --ntasks={n}"]
        sim_srun = ["srun", "--het-group=0", f"--ntasks={m}", *srun_opts]
        stage_srun = ["srun", "--het-group=1", f"--ntasks={n}", *srun_opts]
    else:
        lines += ["# One allocation, two concurrent job steps (each its own MPI_COMM_WORLD); not --multi-prog,",
                  "# which would put both sides in one MPI_COMM_WORLD. With per-node memory allocation, add",
                  "# --mem-per-cpu so that the first step does not take all the memory of the node."]
        lines += common + per_component
        lines += [f"#SBATCH --ntasks={m + n}"]
        if cfg.adios2.network_interface == "lo":
            lines += ["#SBATCH --nodes=1  # the XML's NetworkInterface=lo: both sides on one node"]
        sim_srun = ["srun", "--exact", f"--ntasks={m}", *srun_opts]
        stage_srun = ["srun", "--exact", f"--ntasks={n}", *srun_opts]
    sst = f"{run_dir.rstrip('/') or '/'}/sst"
    in_image = (["apptainer", "exec", *[a for b in binds for a in ("--bind", str(b))], str(container)]
                if container else [])
    lines += [
        "",
        "set -uo pipefail",
        'cd "${SLURM_SUBMIT_DIR:-$PWD}"',
        *([] if container else _activation(env_bin or environment_bin())),
        "# Job steps get this script's environment, also under sbatch --export=NONE (which steps would inherit).",
        "export SLURM_EXPORT_ENV=ALL",
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONUNBUFFERED=1",
        *(_hetjob_lo_check() if mode == "hetjob" and cfg.adios2.network_interface == "lo" else []),
        "# SST contact files go to <run dir>/sst: a directory both sides must see (shared file system / bind).",
        "# Stale ones of an earlier run are removed by the sides themselves, judged by their owner's claim",
        "# (a live job's are never touched: a second job on this run directory stops with exit 2).",
        f"{_join(in_image + ['mkdir', '-p', sst])} || exit 2",
        "",
        f"{_join(stage_srun + stage)} &",
        "stage_pid=$!",
        f"{_join(sim_srun + sim)} &",
        "sim_pid=$!",
        "sim_rc=0; stage_rc=0",
        'wait "$sim_pid" || sim_rc=$?',
        'wait "$stage_pid" || stage_rc=$?',
        'if [ "$sim_rc" -ne 0 ] || [ "$stage_rc" -ne 0 ]; then',
        '  echo "stagelearn: simulation exited with $sim_rc, staging with $stage_rc" >&2',
        '  if [ "$sim_rc" -ne 0 ]; then exit "$sim_rc"; else exit "$stage_rc"; fi',
        "fi",
        f"{_join(report_argv(config_path, run_dir, container=container, binds=binds))}",
        "",
    ]
    return "\n".join(lines)
