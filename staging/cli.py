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
2     invalid configuration or command line (ConfigError, UsageError); also the run directory or
      contact file is in use by a live job (ContactFileInUse: a second ``stage`` or ``sim`` on one
      run directory; the message names it and the live pid)
3     a peer never came or stopped answering (StreamTimeoutError); ``run``: staging could not read
      the stream, or the code closed it before staging opened it
4     a peer went away mid-run (PeerLostError)
5     a model update was malformed (ModelFormatError)
6     ADIOS2 missing or lacking MPI (AdiosUnavailableError)
7     the simulation failed (``stagelearn run``: the external code exited non-zero;
      ``errors.EXIT_SIMULATION_FAILED``)
130   interrupted (SIGINT); the side stopped at a step boundary and closed its files, or, while
      it waited in an SST ``Open`` (nothing written yet), at once (within 2 s)
143   terminated (SIGTERM); likewise
====  ==========================================================
"""

from __future__ import annotations

import argparse
import json
import logging
import os
import sys

from .cli_generate import add_launch_parser, add_xml_parser, launch_command, xml_command
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
    add_launch_parser(sub)
    add_xml_parser(sub)
    return p



def _comm():
    from mpi4py import MPI

    return MPI.COMM_WORLD


def _run_side(args, side):
    """`sim` / `stage`: one side under mpiexec; any rank's error aborts the whole job."""
    comm = _comm()
    try:
        from .config import load_config
        from .producer_exit import cli_maps_errors

        cli_maps_errors()  # errors reach the mapping below, not a Producer's own exit

        cfg = load_config(args.config)
        run_dir = args.run_dir or str(cfg.run_dir)
        from .contact import set_blocking_limit

        set_blocking_limit(max(cfg.timeouts.open_s, cfg.timeouts.step_s))  # claims outlive a blocked heartbeat
        if side == "sim":
            from .sides import simulation_main

            simulation_main(cfg, comm, run_dir)
        else:
            from .contact import staging_claim
            from .sides import staging_main
            from .world_check import check_world_size

            # a singleton rank (srun without --mpi) must hear the fix, not race its twin for the claim
            check_world_size(comm, "stage", yaml_ranks=cfg.staging.ranks, yaml_key="staging.ranks")
            with staging_claim(comm, run_dir):
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
        from .decode_listing import describe_output

        print(describe_output(args.file, reader))
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
            return launch_command(args)
        if args.command == "xml":  # `stagelearn xml`
            return xml_command(args)
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
