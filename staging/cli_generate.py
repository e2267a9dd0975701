"""The ``stagelearn`` commands that write files for the user: ``xml`` (the ADIOS2 XML a simulation
needs, ``--check`` of one, ``--inspect`` of any) and ``launch`` (a SLURM batch script).

Each ``_add_*_parser`` adds its subcommand to :func:`stagelearn.staging.cli._parser`; errors are
raised as :mod:`.errors` exceptions and mapped to exit codes by :mod:`.cli`.
"""

from __future__ import annotations

import os
import sys

from .cli_help import CONFIG_HELP
from .errors import ConfigError, UsageError

# --- `stagelearn launch`: batch script for a scheduler (generation in .slurm; nothing is submitted) ---
def add_launch_parser(sub):
    la = sub.add_parser("launch", help="write a batch script (SLURM) that runs `stagelearn sim` and `stagelearn stage`")
    la.add_argument("config", help=CONFIG_HELP)
    la.add_argument("--scheduler", choices=["slurm"], default="slurm")
    la.add_argument("--mode", choices=["hetjob", "mpmd"], default="hetjob",
                    help="hetjob: heterogeneous job, one component per side; mpmd: one allocation, two job steps")
    la.add_argument("--container", help="Apptainer image (containers/stagelearn.def): run each side with `apptainer run --app`")
    la.add_argument("--bind", action="append", default=[], help="apptainer --bind spec (repeatable; with --container)")
    la.add_argument("--run-dir", help="default: <output_dir>/<run_name>; both sides must see it (SST contact files)")
    la.add_argument("--srun-mpi", help="srun --mpi=TYPE (default pmi2: the mpich wheel and the hybrid image speak "
                    "PMI-1/PMI-2, not PMIx; pmix only with a site MPI built with PMIx, e.g. the bind image; "
                    "docs/hpc.md)")
    la.add_argument("--time", help="HH:MM:SS (default: timeouts.run_s + 5 min)")
    la.add_argument("--partition")
    la.add_argument("--account")
    la.add_argument("--job-name")
    la.add_argument("-o", "--output", help="write the script here (default: stdout)")


def launch_command(args):
    from .config import load_config
    from .slurm import generate, launch_warnings

    cfg = load_config(args.config)
    try:
        warnings = launch_warnings(cfg, mode=args.mode, srun_mpi=args.srun_mpi, container=args.container)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    for warning in warnings:
        print(f"stagelearn launch: warning: {warning}", file=sys.stderr)
    if args.bind and not args.container:
        raise UsageError("launch: --bind needs --container")
    try:
        text = generate(cfg, args.config, mode=args.mode, run_dir=args.run_dir, container=args.container, binds=args.bind,
                        job_name=args.job_name, time=args.time, partition=args.partition, account=args.account,
                        srun_mpi=args.srun_mpi, log_level=None if args.log_level == "warning" else args.log_level)
    except ValueError as exc:
        raise UsageError(str(exc)) from None
    if not _emit(text, args.output, "launch", mode=0o755):
        return 0
    print(f"{args.output}: SLURM {args.mode} script ({cfg.simulation.ranks} simulation + {cfg.staging.ranks} staging "
          f"ranks); submit with: sbatch {args.output}", file=sys.stderr)
    return 0
# --- end `stagelearn launch` ---


# --- `stagelearn xml`: the simulation's adios2.xml for streaming to stagelearn (.xmlgen), a check of one (.xmllint) ---
def add_xml_parser(sub):
    xp = sub.add_parser("xml", help="write the ADIOS2 XML a simulation needs to stream to stagelearn, or check one")
    xp.add_argument("config", nargs="?", help="run YAML (not with --inspect)")
    xp.add_argument("--io", help="the IO name the simulation's code declares (default: adios2.stream_io)")
    xp.add_argument("-o", "--output", help="write the XML here (default: stdout)")
    xp.add_argument("--check", metavar="EXISTING_XML", help="compare an existing ADIOS2 XML instead; exit 2 on any error")
    xp.add_argument("--inspect", metavar="EXISTING_XML",
                    help="list each IO's engine and parameters of any ADIOS2 XML/YAML and flag mistakes (no run YAML); "
                         "exit 2 on any error")


def xml_command(args):
    from .config import load_config
    from .xmlgen import generate
    from .xmllint import check

    if args.inspect:
        return _xml_inspect(args)
    if not args.config:
        raise UsageError("xml: give the run YAML (or --inspect FILE to inspect an ADIOS2 XML without one)")
    cfg = load_config(args.config)
    if args.check:
        if args.output:
            raise UsageError("xml: --check and -o/--output exclude each other")
        findings = check(cfg, args.check, io_name=args.io)
        for finding in findings:
            print(finding.format(args.check))
        errors, counts = _finding_counts(findings)
        if errors:
            raise ConfigError(f"{args.check}: {counts}; "
                              f"see `stagelearn xml {args.config}{f' --io {args.io}' if args.io else ''} > adios2.xml` "
                              "for the expected file")
        print(f"{args.check}: OK ({counts})", file=sys.stderr)
        return 0
    text = generate(cfg, io_name=args.io)
    if not _emit(text, args.output, "xml"):
        return 0
    print(f"{args.output}: ADIOS2 XML for the simulation (stream IO {args.io or cfg.adios2.stream_io!r}); "
          "adapt NetworkInterface on a cluster", file=sys.stderr)
    return 0


def _xml_inspect(args):
    """``xml --inspect FILE``: one line per IO, then the findings; ConfigError (exit 2) on any error."""
    from .xmllint import inspect

    if args.config or args.check or args.output or args.io:
        raise UsageError("xml: --inspect takes only the file (no run YAML, --check, --io or -o)")
    summary, findings = inspect(args.inspect)
    for line in summary:
        print(line)
    for finding in findings:
        print(finding.format(args.inspect))
    errors, counts = _finding_counts(findings)
    if errors:
        raise ConfigError(f"{args.inspect}: {counts}")
    print(f"{args.inspect}: OK ({len(summary)} IO(s), {counts})", file=sys.stderr)
    return 0


def _finding_counts(findings):
    """``(n_errors, "E error(s), W warning(s), N note(s)")`` of xmllint findings."""
    errors = sum(f.severity == "error" for f in findings)
    notes = sum(f.severity == "note" for f in findings)
    return errors, f"{errors} error(s), {len(findings) - errors - notes} warning(s), {notes} note(s)"

# --- end `stagelearn xml` ---


def _emit(text, output, command, mode=None):
    """Write generated text to stdout (``output`` None: returns False) or to a file (returns True)."""
    if not output:
        sys.stdout.write(text)
        return False
    try:
        with open(output, "w", encoding="utf-8") as f:
            f.write(text)
        if mode is not None:
            os.chmod(output, mode)
    except OSError as exc:
        raise UsageError(f"{command}: cannot write {output}: {exc.strerror}") from None
    return True
