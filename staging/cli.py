"""Command-line interface: ``stagelearn`` / ``python -m stagelearn``.

Subcommands: ``run`` (both sides, two ``mpiexec`` jobs), ``sim`` and ``stage`` (one side, for
sites that launch them separately), ``report`` (the summary of such a run), ``validate``,
``decode``, ``info``, ``schema``, ``launch`` (a SLURM script running ``sim`` and ``stage``), ``xml``
(a simulation's adios2.xml for streaming to stagelearn, a check of one, or ``--inspect`` of any
ADIOS2 XML/YAML without a run YAML).

Exit codes (the only place exceptions become exit codes):

====  ==========================================================
0     success
1     any other error (a traceback is logged)
2     invalid configuration or command line (ConfigError, UsageError)
3     a peer never came or stopped answering (StreamTimeoutError)
4     a peer went away mid-run (PeerLostError)
5     a model update was malformed (ModelFormatError)
6     ADIOS2 missing or lacking MPI (AdiosUnavailableError)
130   interrupted (SIGINT); the side stopped at a step boundary and closed its files
143   terminated (SIGTERM); likewise
====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .cli_help import CONFIG_HELP, DESCRIPTION, EPILOG
from .errors import (AdiosUnavailableError, ConfigError, Interrupted, ModelFormatError, PeerLostError,
                     StagelearnError, StreamTimeoutError, UsageError, strip_ansi)

logger = logging.getLogger(__name__)

EXIT_CODES = (
    (ConfigError, 2),
    (UsageError, 2),
    (StreamTimeoutError, 3),
    (PeerLostError, 4),
    (ModelFormatError, 5),
    (AdiosUnavailableError, 6),
    (StagelearnError, 1),
)


def exit_code_for(exc):
    """Exit code of an exception (see the module docstring)."""
    if isinstance(exc, KeyboardInterrupt):
        return 130
    if isinstance(exc, Interrupted):
        return 128 + exc.signum
    for cls, code in EXIT_CODES:
        if isinstance(exc, cls):
            return code
    return 1


def _print_error(command, exc):
    """``stagelearn COMMAND: error: ...`` on stderr, one line per problem of a ConfigError listing several."""
    for problem in getattr(exc, "problems", None) or (exc,):  # ADIOS2's colours and line breaks removed
        text = " ".join(strip_ansi(problem).split())
        print(f"stagelearn {command}: error: {text}", file=sys.stderr, flush=True)


def _setup_logging(level, tag=""):
    fmt = f"%(asctime)s {tag}%(levelname)s %(name)s: %(message)s" if tag else "%(asctime)s %(levelname)s %(name)s: %(message)s"
    logging.basicConfig(level=getattr(logging, level.upper()), format=fmt, datefmt="%H:%M:%S", stream=sys.stderr)


def _parser():
    from stagelearn import __version__

    p = argparse.ArgumentParser(prog="stagelearn", description=DESCRIPTION, epilog=EPILOG,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--version", action="version", version=f"stagelearn {__version__}")
    p.add_argument("--log-level", default=os.environ.get("STAGELEARN_LOG_LEVEL", "warning"),
                   choices=["debug", "info", "warning", "error"])
    sub = p.add_subparsers(dest="command", required=True)
    r = sub.add_parser("run", help="run simulation and staging as two mpiexec jobs coupled by SST",
                       description="Run the simulation (simulation.ranks) and staging (staging.ranks) as two "
                       "mpiexec jobs, then print the report.")
    r.add_argument("config", help=CONFIG_HELP)
    r.add_argument("--output-dir", help="override output_dir")
    r.add_argument("--run-name", help="override run_name")
    r.add_argument("--no-progress", action="store_true", help="no progress bar")
    for name, help_, n in (("sim", "producer side: the configured mock simulation", "simulation.ranks"),
                           ("stage", "staging side: receive, learn, write compressed.bp", "staging.ranks")):
        text = f"{help_}; run it under `mpiexec -n N` (N = {n})"
        s = sub.add_parser(name, help=text, description=f"{text[0].upper()}{text[1:]}, e.g. "
                           f"`mpiexec -n N stagelearn {name} run.yaml --run-dir run`.")
        s.add_argument("config", help=CONFIG_HELP)
        s.add_argument("--run-dir", help="default: <output_dir>/<run_name>; the other side must be given the same one")
    rp = sub.add_parser("report", help="summary.json, table and plot of a run whose sides were launched separately")
    rp.add_argument("config", help=CONFIG_HELP)
    rp.add_argument("--run-dir", help="default: <output_dir>/<run_name>")
    v = sub.add_parser("validate", help="check a run YAML and its ADIOS2 XML without running")
    v.add_argument("config", help=CONFIG_HELP)
    d = sub.add_parser("decode", help="reconstruct a field from a compressed output file")
    d.add_argument("file", help="compressed.bp written by staging")
    d.add_argument("--step", type=int, help="producer output step (default: list steps)")
    d.add_argument("--var", help="variable (default: list variables)")
    d.add_argument("-o", "--output", help="write .npy or .bp (default: print statistics); .npz with --latents")
    d.add_argument("--partial", action="store_true",
                   help="decode the blocks the file has, NaN elsewhere (a producer's fallback/producer.p<rank>.bp)")
    d.add_argument("--latents", action="store_true",
                   help="export per-tile latent codes of --var (at --step, or every coded step) to the .npz given by -o")
    sub.add_parser("info", help="versions of Python, MPI, ADIOS2, torch")
    sub.add_parser("schema", help="print the JSON schema of the run YAML")
    _add_launch_parser(sub)
    _add_xml_parser(sub)
    return p


# --- `stagelearn launch`: batch script for a scheduler (generation in .slurm; nothing is submitted) ---
def _add_launch_parser(sub):
    la = sub.add_parser("launch", help="write a batch script (SLURM) that runs `stagelearn sim` and `stagelearn stage`")
    la.add_argument("config", help=CONFIG_HELP)
    la.add_argument("--scheduler", choices=["slurm"], default="slurm")
    la.add_argument("--mode", choices=["hetjob", "mpmd"], default="hetjob",
                    help="hetjob: heterogeneous job, one component per side; mpmd: one allocation, two job steps")
    la.add_argument("--container", help="Apptainer image (containers/stagelearn.def): run each side with `apptainer run --app`")
    la.add_argument("--bind", action="append", default=[], help="apptainer --bind spec (repeatable; with --container)")
    la.add_argument("--run-dir", help="default: <output_dir>/<run_name>; both sides must see it (SST contact files)")
    la.add_argument("--srun-mpi", help="srun --mpi=TYPE (e.g. pmi2 or pmix for the container's MPICH)")
    la.add_argument("--time", help="HH:MM:SS (default: timeouts.run_s + 5 min)")
    la.add_argument("--partition")
    la.add_argument("--account")
    la.add_argument("--job-name")
    la.add_argument("-o", "--output", help="write the script here (default: stdout)")


def _launch(args):
    from .config import load_config
    from .slurm import generate, sst_warnings

    cfg = load_config(args.config)
    for warning in sst_warnings(cfg):
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
def _add_xml_parser(sub):
    xp = sub.add_parser("xml", help="write the ADIOS2 XML a simulation needs to stream to stagelearn, or check one")
    xp.add_argument("config", nargs="?", help="run YAML (not with --inspect)")
    xp.add_argument("--io", help="the IO name the simulation's code declares (default: adios2.stream_io)")
    xp.add_argument("-o", "--output", help="write the XML here (default: stdout)")
    xp.add_argument("--check", metavar="EXISTING_XML", help="compare an existing ADIOS2 XML instead; exit 2 on any error")
    xp.add_argument("--inspect", metavar="EXISTING_XML",
                    help="list each IO's engine and parameters of any ADIOS2 XML/YAML and flag mistakes (no run YAML); "
                         "exit 2 on any error")


def _xml(args):
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
        errors = sum(f.severity == "error" for f in findings)
        if errors:
            raise ConfigError(f"{args.check}: {errors} error(s), {len(findings) - errors} warning(s); "
                              f"see `stagelearn xml {args.config}{f' --io {args.io}' if args.io else ''} > adios2.xml` "
                              "for the expected file")
        print(f"{args.check}: OK ({len(findings)} warning(s))", file=sys.stderr)
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
    errors = sum(f.severity == "error" for f in findings)
    if errors:
        raise ConfigError(f"{args.inspect}: {errors} error(s), {len(findings) - errors} warning(s)")
    print(f"{args.inspect}: OK ({len(summary)} IO(s), {len(findings)} warning(s))", file=sys.stderr)
    return 0
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


def _comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _run_side(args, side):
    """`sim` / `stage`: one side under mpiexec; any rank's error aborts the whole job."""
    comm = _comm()
    try:
        from .config import load_config

        cfg = load_config(args.config)
        run_dir = args.run_dir or str(cfg.run_dir)
        if side == "sim":
            from .sides import simulation_main

            simulation_main(cfg, comm, run_dir)
        else:
            from .sides import staging_main

            staging_main(cfg, comm, run_dir)
        return 0
    except BaseException as exc:  # noqa: BLE001 - mapped to an exit code, other ranks aborted
        code = exit_code_for(exc)
        if code == 1:
            logger.exception("%s failed", side)
        else:
            _print_error(side, exc)
        if comm.Get_size() > 1 and not isinstance(exc, (Interrupted, PeerLostError)):
            import time

            time.sleep(0.3)  # let mpiexec forward the message before the abort tears the job down
            comm.Abort(code)  # Interrupted and PeerLostError are raised on every rank together
        return code


def _decode(args):
    import numpy as np

    if args.latents:
        return _export_latents(args)
    if (args.step is None) != (args.var is None):
        raise UsageError("decode: give both --step and --var (or neither, to list the file)")
    reader = _open_output(args.file)
    if args.step is None:
        steps = reader.steps
        span = f"steps {steps[0]}..{steps[-1]} ({len(steps)})" if steps else "no steps stored"
        print(f"{args.file}: variables {reader.fields()}, {span}")
        return 0
    field = reader.read(args.step, args.var, partial=args.partial)
    if args.output:
        if args.output.endswith(".npy"):
            np.save(args.output, field)
        elif args.output.endswith(".bp"):
            from .output_writer import write_field_bp

            write_field_bp(args.output, args.var, field)
        else:
            raise UsageError(f"--output {args.output}: use a .npy or .bp file name")
    print(f"{args.var} step {args.step}: shape {field.shape}, min {np.nanmin(field):.6g}, max {np.nanmax(field):.6g}, mean {np.nanmean(field):.6g}"
          + (f" -> {args.output}" if args.output else ""))
    return 0


def _open_output(path):
    """The reader of ``path``; a missing or unreadable file is a usage error (exit 2) in one line."""
    from .output_reader import CompressedOutputReader

    if not os.path.exists(path):
        raise UsageError(f"{path}: no such file or folder; give the compressed.bp of a run "
                         "(<output_dir>/<run_name>/compressed.bp, or the --run-dir given to `stagelearn stage`)")
    try:
        return CompressedOutputReader(path)
    except StagelearnError as exc:
        if type(exc) is not StagelearnError:  # a specific error keeps its own exit code
            raise
        first = strip_ansi(exc).split("(", 1)[0].strip().rstrip(":")
        raise UsageError(f"{first}: not a compressed output written by stagelearn staging "
                         "(ADIOS2 BP5 with stagelearn's step variable)") from None


def _export_latents(args):
    """``decode --latents``: per-tile codes and tile positions, one row per (step, tile), to .npz."""
    from .latents_export import export_latents

    if not args.var or not args.output or not args.output.endswith(".npz"):
        raise UsageError("decode --latents: give --var and -o FILE.npz")
    print(export_latents(args.file, args.var, args.output, args.step))
    return 0


def main(argv=None):
    """Entry point; returns the exit code."""
    args = _parser().parse_args(argv)
    if args.command in ("sim", "stage"):
        import faulthandler

        faulthandler.enable()  # a crash inside ADIOS2/MPI C code still prints the Python stack
        rank = os.environ.get("PMI_RANK", "0")
        _setup_logging(args.log_level, tag=f"[{args.command} {rank}] ")
        from . import signals

        signals.install()  # SIGINT/SIGTERM stop the side at the next step boundary (exit 130/143)
        return _run_side(args, args.command)
    _setup_logging(args.log_level)
    try:
        if args.command == "validate":
            from .code_xml import code_xml_files, enforce
            from .config import load_config

            cfg = load_config(args.config)
            notes = enforce(cfg)  # in transit: the code's own XML, as `xml --check` judges it
            for note in notes:
                print(note)
            a = cfg.adios2
            queue = (f"; stream queue {a.queue_limit} steps, {a.queue_full_policy}, interface {a.network_interface}"
                     if a.queue_limit is not None else "")
            code = "".join(f", code's XML {p} checked" for p in code_xml_files(cfg))
            sim = (f"simulation {cfg.simulation.type} x {cfg.simulation.ranks} ranks" if cfg.simulation_given else
                   "simulation: your own code (no simulation: section; start your Producer script yourself "
                   "with `mpiexec -n N`, and `stagelearn stage` for the staging side)")
            print(f"{args.config}: OK ({sim}, "
                  f"staging x {cfg.staging.ranks} ranks, ADIOS2 XML {cfg.adios2.config_file}{queue}{code})")
            return 0
        if args.command == "schema":
            from .config import RunConfig

            print(json.dumps(RunConfig.model_json_schema(), indent=2))
            return 0
        if args.command == "info":
            from .info import versions

            print("\n".join(versions()))
            return 0
        if args.command == "decode":
            return _decode(args)
        if args.command == "launch":
            return _launch(args)
        if args.command == "xml":  # `stagelearn xml`
            return _xml(args)
        if args.command == "run":
            from .code_xml import enforce
            from .config import load_config
            from .launcher import launch

            for note in enforce(load_config(args.config)):  # in transit: refuse a code XML that loses steps
                logger.warning("%s", note)
            return launch(args)
        if args.command == "report":
            from .config import load_config
            from .report import report

            cfg = load_config(args.config)
            return report(cfg, args.run_dir or str(cfg.run_dir))
    except BaseException as exc:  # noqa: BLE001 - the one place exceptions become exit codes
        code = exit_code_for(exc)
        if code == 1 and not isinstance(exc, StagelearnError):  # unexpected: keep the traceback
            logger.exception("stagelearn %s failed", args.command)
        else:
            _print_error(args.command, exc)
        return code
    return 2
