"""``stagelearn run``: start the simulation and staging as two ``mpiexec`` jobs coupled only by SST.

As on an HPC system, the two sides are separate MPI jobs (``MPI_COMM_WORLD`` of each is its own
side); they find each other through the SST contact files in ``<run_dir>/sst/``. The launcher
shows progress and enforces ``timeouts.run_s``. When one side fails mid-run the other handles it
(producers write to their fallback files, staging stores what it has and names what is missing);
a failure before the first step stops the other side at once. In transit (an unchanged code, no
fallback) the run also ends at once when staging fails (its SST writer has no reader any more;
e.g. a data plane staging cannot read, ended by ``timeouts.step_s``) or when the code closed its
stream before staging opened it (nothing can be received). SIGINT/SIGTERM are passed on to both
sides, which stop at a step boundary. At the end the contact files are gone, and :mod:`.report`
merges the sides' ledger parts into ``ledger.jsonl`` and their records into ``summary.json``
(also for a run that failed), prints the per-step table and draws the plot. The exit code is the
failing side's, except that a failed code (``simulation.type: external``) gives
:data:`~.errors.EXIT_SIMULATION_FAILED` (its own status is printed, never mistaken for ours).
"""

from __future__ import annotations

import json
import logging
import os
import re
import shutil
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from .adios import remove_stale_contact_file
from .config import load_config
from .contact import in_use_error, live_owner
from .errors import (EXIT_SIMULATION_FAILED, EXIT_TIMEOUT, ConfigError, Interrupted, StreamTimeoutError, UsageError,
                     strip_ansi)
from .ledger import clear as clear_ledger, staging_opened
from .report import finish, partial_summary
from .sides import prepare_run_dir
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


def mpiexec_path():
    """``mpiexec`` next to the running Python (the ``mpich`` wheel's), else the one on PATH."""
    local = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    found = local if os.path.exists(local) else shutil.which("mpiexec")
    if not found:
        raise ConfigError("mpiexec not found: install the `mpich` wheel (`make setup`) or load your site's MPI module")
    return found


def side_command(side, config, ranks, run_dir):
    """Argument list of one side's job (no shell)."""
    return [mpiexec_path(), "-n", str(ranks), sys.executable, "-m", "stagelearn", side, str(config), "--run-dir", str(run_dir)]


def external_command(sim):
    """``mpiexec -n M COMMAND...`` of an unchanged simulation code (no shell; a leading ``python`` is this
    interpreter, so the code sees the same packages)."""
    command = list(sim.command)
    if command[0] in ("python", "python3"):
        command[0] = sys.executable
    return [mpiexec_path(), "-n", str(sim.ranks), *command]


def _child_env():
    env = dict(os.environ)
    # one BLAS thread per rank: the ranks already oversubscribe the cores
    for key in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
        env.setdefault(key, "1")
    env.setdefault("PYTHONUNBUFFERED", "1")
    return env


#: In transit, seconds a code may go on after staging failed before it is stopped (its writer has no reader).
CODE_GRACE_S = 5.0
#: In transit, seconds staging may take to open after the code ended cleanly before nothing was stored.
OPEN_GRACE_S = 3.0

# mpiexec's (hydra's) banner around a rank that failed, left out of the log tail (its exit string is kept)
_MPIEXEC_BANNER = re.compile(r"^(={5,}|=   |This typically refers to a problem|Please see the FAQ page)")
_SIGNALLED = {6: "SIGABRT: e.g. an exception nobody caught in a C++ code", 9: "SIGKILL", 11: "SIGSEGV", 15: "SIGTERM"}


def _stop(proc, grace=5.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(args):
    """Run both sides; returns the exit code (0, the failing side's code, or :func:`exit_code`'s judgement)."""
    cfg = load_config(args.config)
    overrides = {"output_dir": args.output_dir, "run_name": args.run_name}
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v})  # the config is frozen
    run_dir = str(cfg.run_dir)
    sst_dir = prepare_run_dir(run_dir)
    refuse_live_run(sst_dir)  # before anything of a live run in this directory is deleted
    remove_contact_files(cfg, run_dir)  # contact files of an earlier run would point readers at dead writers
    if os.path.exists(os.path.join(run_dir, "compressed.bp")):
        shutil.rmtree(os.path.join(run_dir, "compressed.bp"))
    for old in ("progress.json", "summary.json", "staging_summary.json", "producer.json", "steps.json"):
        if os.path.exists(os.path.join(run_dir, old)):
            os.remove(os.path.join(run_dir, old))
    clear_ledger(run_dir)
    fallback = cfg.fallback.dir or os.path.join(run_dir, "fallback")
    if os.path.isdir(fallback):
        shutil.rmtree(fallback)
    ckpt = os.path.join(run_dir, "checkpoint")  # an earlier run's, unless this run restarts from it
    if os.path.isdir(ckpt) and os.path.abspath(cfg.staging.restart_from or "") != os.path.abspath(ckpt):
        shutil.rmtree(ckpt)
    streaming = read_ios(cfg.adios2.config_file)[cfg.adios2.stream_io].type.lower() == "sst"
    env = _child_env()
    t0 = time.time()
    logs = {}
    procs = {}
    sides = [("stage", cfg.staging.ranks), ("sim", cfg.simulation.ranks)] if streaming else [("sim", cfg.simulation.ranks)]
    for side, ranks in sides:
        logs[side] = open(os.path.join(run_dir, f"{side}.log"), "w")
        external = side == "sim" and cfg.simulation.type == "external"
        cmd = external_command(cfg.simulation) if external else side_command(side, cfg.source, ranks, run_dir)
        if args.log_level != "warning" and not external:
            cmd[6:6] = ["--log-level", args.log_level]
        procs[side] = subprocess.Popen(cmd, stdout=logs[side], stderr=subprocess.STDOUT, env=env, stdin=subprocess.DEVNULL,
                                       cwd=run_dir if external else None)
    total = cfg.simulation.steps // cfg.simulation.plotgap + 1
    try:
        codes = _wait(procs, cfg, run_dir, total, show=not args.no_progress)
    except StreamTimeoutError as exc:
        remove_contact_files(cfg, run_dir, ending=True)
        partial_summary(cfg, run_dir, time.time() - t0, failure=str(exc))  # what the ledger parts say so far
        raise
    finally:
        for f in logs.values():
            f.close()
    wall = time.time() - t0
    remove_contact_files(cfg, run_dir, ending=True)  # both sides are gone: any contact file left is stale
    signum = codes.pop("_signal", 0)
    first = codes.pop("_first_failure", None)
    stopped = codes.pop("_stopped", set())
    why = codes.pop("_why", None)
    why_code = codes.pop("_why_code", None)
    external = cfg.simulation.type == "external"
    failed = {s: c for s, c in codes.items() if c != 0}
    for side, code in failed.items():
        _print_failure(run_dir, side, code, stopped=side in stopped, external=external and side == "sim")
    if why:
        print(f"stagelearn run: {why}", file=sys.stderr)
    if not streaming:
        if not failed:
            print(f"stream IO {cfg.adios2.stream_io!r} uses {read_ios(cfg.adios2.config_file)[cfg.adios2.stream_io].type}: "
                  f"the simulation wrote {run_dir}/sst/stream*.bp (no staging, no push-back)")
        if failed and external:
            return EXIT_SIMULATION_FAILED
        return next(iter(failed.values()), 0)
    failure = (why or _failure_text(first, failed, external)) if failed else None
    if os.path.exists(os.path.join(run_dir, "staging_summary.json")):
        finish(cfg, run_dir, wall, failure=failure)
    elif failed:
        partial_summary(cfg, run_dir, wall, failure=failure)
    if signum:
        raise Interrupted(signum)
    if why_code:
        return why_code
    return exit_code(failed, first, external)


def exit_code(failed, first, external):
    """The run's exit code from its sides' codes.

    Parameters
    ----------
    failed : dict
        Side (``sim``, ``stage``) -> non-zero exit code of its ``mpiexec``.
    first : str or None
        The side that failed first (it carries the cause).
    external : bool
        The simulation is an unchanged code (``simulation.type: external``): its failure gives
        :data:`~.errors.EXIT_SIMULATION_FAILED`, whatever status it ended with (``mpiexec`` reports
        a rank killed by SIGABRT as 6, which is also stagelearn's code for "ADIOS2 missing").

    Returns
    -------
    int
        0 when nothing failed.
    """
    if not failed:
        return 0
    side = first if first in failed else next(iter(failed))
    if side == "sim" and external:
        return EXIT_SIMULATION_FAILED
    code = failed[side]
    return code if code > 0 else 1


def _failure_text(first, failed, external):
    side = first if first in failed else next(iter(failed), None)
    if side is None:
        return None
    who = "the simulation (your code)" if side == "sim" and external else f"the {side} side"
    return f"{who} failed first, with exit code {failed[side]}"


def _print_failure(run_dir, side, code, *, stopped, external):
    """The failing side's code (a failed code's status, explained) and the last lines of its log, on stderr."""
    log = os.path.join(run_dir, f"{side}.log")
    try:
        with open(log, errors="replace") as f:
            lines = strip_ansi(f.read()).splitlines()
    except OSError:
        lines = []
    tail = [t for t in lines if t.strip() and not _MPIEXEC_BANNER.match(t)][-10:]
    if stopped:
        print(f"stagelearn run: {side} side stopped by stagelearn run (its {side}.log: {log})", file=sys.stderr)
        return
    if external:
        note = f" ({_SIGNALLED[code]})" if code in _SIGNALLED else ""
        print(f"stagelearn run: the simulation failed: your code exited with status {code}{note} (exit code "
              f"{EXIT_SIMULATION_FAILED}: the simulation failed; not an error of stagelearn's own ADIOS2); "
              f"last lines of {log}:", file=sys.stderr)
    else:
        print(f"stagelearn run: {side} side exited with code {code}; last lines of {log}:", file=sys.stderr)
    print("\n".join("  " + t for t in tail), file=sys.stderr)


def refuse_live_run(sst_dir):
    """Raise :class:`~.contact.ContactFileInUse` (exit 2) when a live staging job holds this run directory."""
    claim_path = os.path.join(sst_dir, "staging.owner")
    rec = live_owner(claim_path)
    if rec is not None:
        raise in_use_error(claim_path, rec, "its staging")


def remove_contact_files(cfg, run_dir, *, ending=False):
    """Remove the run's SST contact files left by writers that are gone (``sst/*.sst``; in transit the code's
    ``<stream>.sst``). At the start a file of a live job raises (:class:`~.contact.ContactFileInUse`);
    at the end (``ending``) it is only logged."""
    sst_dir = os.path.join(run_dir, "sst")
    paths = [os.path.join(sst_dir, f[: -len(".sst")]) for f in sorted(os.listdir(sst_dir)) if f.endswith(".sst")] \
        if os.path.isdir(sst_dir) else []
    if cfg.staging.mode == "in_transit":
        paths.append(os.path.join(run_dir, cfg.staging.stream))
    for path in paths:
        try:
            if remove_stale_contact_file(path) and ending:
                logger.info("removed the contact file %s.sst left by a writer that was stopped", path)
        except UsageError as exc:
            if not ending:
                raise
            logger.warning("%s", exc)


def _stop_other(procs, codes, side, why=None, code=None):
    """Stop ``side``'s job (recorded in ``codes``: its code, ``_stopped``, and what ended the run)."""
    _stop(procs[side])
    codes[side] = procs[side].returncode if procs[side].returncode is not None else -15
    codes.setdefault("_stopped", set()).add(side)
    if why:
        codes.setdefault("_why", why)
        if code is not None:
            codes.setdefault("_why_code", code)


def _in_transit_ending(procs, codes, cfg, run_dir, received, since):
    """In transit, what ends the run before its sides do (an unchanged code has no fallback file).

    - staging failed (not by a signal) before the end of the stream (no ``staging_summary.json``)
      while the code runs: the code's SST writer has no reader any more (it may wait for one for
      ever, e.g. after a data plane staging cannot read): the code is stopped :data:`CODE_GRACE_S`
      seconds later (a code that goes on working after closing its stream is left alone);
    - the code ended cleanly, nothing was stored and staging never opened the stream
      (:func:`~.ledger.staging_opened`): the stream is closed and its contact file gone, so staging
      would wait until ``timeouts.open_s`` for nothing: staging is stopped :data:`OPEN_GRACE_S`
      seconds later, and the run exits with code 3.

    ``since`` maps an ending to when it was first seen (the grace periods).
    """
    now = time.time()
    sim, stage = codes.get("sim"), codes.get("stage")
    mid_stream = not os.path.exists(os.path.join(run_dir, "staging_summary.json"))
    if stage not in (None, 0) and sim is None and "_signal" not in codes and mid_stream:
        if now - since.setdefault("stage_failed", now) >= CODE_GRACE_S:
            logger.error("staging ended with code %s while the code still runs; stopping the code", stage)
            _stop_other(procs, codes, "sim", why=(
                f"staging ended with exit code {stage} (see stage.log: it could not read the code's stream) while the "
                f"code still ran; an unchanged code's SST writer has no reader any more (it would wait up to "
                f"timeouts.run_s = {cfg.timeouts.run_s:g} s), so it was stopped after {CODE_GRACE_S:g} s. If stage.log "
                "says the data of a step never came: set <parameter key=\"DataTransport\" value=\"WAN\"/> in the "
                "code's XML and do not set DataTransport in its code"))
    elif sim == 0 and stage is None and received == 0 and "_signal" not in codes and not staging_opened(run_dir):
        if now - since.setdefault("sim_done_unread", now) >= OPEN_GRACE_S:
            logger.error("the code closed its stream before staging opened it; stopping staging")
            _stop_other(procs, codes, "stage", code=EXIT_TIMEOUT, why=(
                "the code finished (closed its stream) before staging opened it: none of its steps were received "
                "(listed as lost in ledger.jsonl). Its SST writer did not wait for a reader: set <parameter "
                "key=\"RendezvousReaderCount\" value=\"1\"/> in the code's XML (and do not set it to 0 in its code)"))


def _wait(procs, cfg, run_dir, total, show):
    """Wait for both sides. A side that fails before any step was stored stops the other (it would
    wait for its peer until its open timeout); later the other side copes by itself, except in
    transit (:func:`_in_transit_ending`). SIGINT/SIGTERM are passed on to both sides (recorded as
    ``codes["_signal"]``)."""
    bar = tqdm(total=total, unit="step", desc="steps received", disable=not show or None)
    codes, deadline = {}, time.time() + cfg.timeouts.run_s
    progress = os.path.join(run_dir, "progress.json")
    received = 0
    # once the simulation has ended, staging has this long to store what is queued and finish (a hung
    # staging would otherwise hold the run until run_s)
    grace = max(cfg.timeouts.peer_s, cfg.timeouts.step_s) + 10.0
    sim_done = None
    in_transit = cfg.staging.mode == "in_transit" and "stage" in procs
    since = {}
    got = []
    old = {sig: signal.signal(sig, lambda signum, frame: got.append(signum)) for sig in (signal.SIGINT, signal.SIGTERM)}
    try:
        while len([s for s in codes if s in procs]) < len(procs):
            if got and "_signal" not in codes:
                codes["_signal"] = got[0]
                for p in procs.values():
                    if p.poll() is None:
                        p.send_signal(got[0])  # mpiexec passes it on to every rank
                deadline = min(deadline, time.time() + cfg.timeouts.peer_s + 30)
            for side, p in procs.items():
                if side not in codes and p.poll() is not None:
                    codes[side] = p.returncode
                    if p.returncode != 0 and received == 0 and "_signal" not in codes:
                        codes.setdefault("_first_failure", side)
                        time.sleep(2.0)
                        for other in procs:
                            if other not in codes:
                                _stop_other(procs, codes, other)
                    elif p.returncode != 0:
                        codes.setdefault("_first_failure", side)
            if os.path.exists(progress):
                try:
                    with open(progress) as f:
                        received = json.load(f)["steps_received"]
                    bar.update(received - bar.n)
                except (ValueError, KeyError, OSError):
                    pass
            if in_transit:
                _in_transit_ending(procs, codes, cfg, run_dir, received, since)
            if "sim" in codes and sim_done is None:
                sim_done = time.time()
            if sim_done is not None and "stage" in procs and "stage" not in codes and time.time() > sim_done + grace:
                logger.error("staging did not finish within %.0f s after the simulation ended; stopping it", grace)
                print(f"stagelearn run: staging did not finish within {grace:.0f} s after the simulation ended "
                      "(hung?); stopped", file=sys.stderr)
                _stop_other(procs, codes, "stage")
                codes.setdefault("_first_failure", "stage")
            if time.time() > deadline:
                for p in procs.values():
                    _stop(p)
                raise StreamTimeoutError(f"run exceeded timeouts.run_s = {cfg.timeouts.run_s:g} s (or the sides did not "
                                         "stop after a signal); both sides stopped")
            time.sleep(0.25)
    finally:
        for sig, handler in old.items():
            signal.signal(sig, handler)
        bar.close()
    return codes
