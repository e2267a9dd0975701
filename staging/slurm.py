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
``%apprun`` sections, ``containers/stagelearn.def``). Every value taken from the config or the
command line is quoted with :func:`shlex.quote`; the functions only return text.
"""

from __future__ import annotations

import math
import shlex

MODES = ("hetjob", "mpmd")


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
             time=None, partition=None, account=None, srun_mpi=None, log_level=None):
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
        ``srun --mpi=...`` (``pmi2`` or ``pmix`` for the container's MPICH; see containers/README.md).
    """
    if mode not in MODES:
        raise ValueError(f"mode must be one of {MODES}, got {mode!r}")
    values = [config_path, run_dir, container, job_name, time, partition, account, srun_mpi, *binds]
    if cfg.simulation.type == "external":
        values += list(cfg.simulation.command)
    if any(v is not None and ("\n" in str(v) or "\r" in str(v)) for v in values):
        raise ValueError("launch: a path, name or command argument contains a line break")
    warnings = sst_warnings(cfg)
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
    srun_opts = [f"--mpi={srun_mpi}"] if srun_mpi else []
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
        if any("NetworkInterface=lo" in w or "loopback" in w for w in warnings):
            lines += ["#SBATCH --nodes=1  # the XML's NetworkInterface=lo: both sides on one node"]
        sim_srun = ["srun", "--exact", f"--ntasks={m}", *srun_opts]
        stage_srun = ["srun", "--exact", f"--ntasks={n}", *srun_opts]
    sst = f"{run_dir.rstrip('/') or '/'}/sst"
    in_image = (["apptainer", "exec", *[a for b in binds for a in ("--bind", str(b))], str(container)]
                if container else [])
    lines += [
        "",
        "set -uo pipefail",
        "# `stagelearn` must be on PATH in the job (e.g. source <repo>/.venv/bin/activate) unless --container is used.",
        'cd "${SLURM_SUBMIT_DIR:-$PWD}"',
        "export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1} OPENBLAS_NUM_THREADS=${OPENBLAS_NUM_THREADS:-1} PYTHONUNBUFFERED=1",
        "# SST contact files go to <run dir>/sst: a directory both sides must see (shared file system / bind).",
        "# Remove stale ones first: a reader would connect to the dead writer of an earlier run.",
        f"{_join(in_image + ['mkdir', '-p', sst])} || exit 2",
        f"{_join(in_image + ['find', sst, '-maxdepth', '1', '-name', '*.sst', '-delete'])} || exit 2",
        *([f"{_join(in_image + ['rm', '-f', run_dir.rstrip('/') + '/' + cfg.staging.stream + '.sst'])}"]
          if cfg.staging.mode == "in_transit" else []),
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
