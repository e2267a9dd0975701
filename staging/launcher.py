"""``stagelearn run``: start the simulation and staging as two ``mpiexec`` jobs coupled only by SST.

As on an HPC system, the two sides are separate MPI jobs (``MPI_COMM_WORLD`` of each is its own
side); they find each other through the SST contact files in ``<run_dir>/sst/``. The launcher
shows progress and enforces ``timeouts.run_s``. When one side fails mid-run the other handles it
(producers write to their fallback files, staging stores what it has and names what is missing);
only a failure before the first step stops the other side at once. SIGINT/SIGTERM are passed on to
both sides, which stop at a step boundary. At the end :mod:`.report` merges the sides' ledger parts
into ``ledger.jsonl`` and their records into ``summary.json``, prints the per-step table and draws
the plot.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time

from tqdm import tqdm

from .adios import remove_stale_contact_file
from .config import load_config
from .errors import ConfigError, Interrupted, StreamTimeoutError
from .ledger import clear as clear_ledger
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


def _stop(proc, grace=5.0):
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(grace)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def launch(args):
    """Run both sides; returns the exit code (0, or the failing side's code)."""
    cfg = load_config(args.config)
    overrides = {"output_dir": args.output_dir, "run_name": args.run_name}
    cfg = cfg.model_copy(update={k: v for k, v in overrides.items() if v})  # the config is frozen
    run_dir = str(cfg.run_dir)
    if os.path.exists(os.path.join(run_dir, "compressed.bp")):
        shutil.rmtree(os.path.join(run_dir, "compressed.bp"))
    sst_dir = prepare_run_dir(run_dir)
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
    for stale in sorted(os.listdir(sst_dir)):  # contact files of an earlier run would point readers at dead writers
        if stale.endswith(".sst"):
            remove_stale_contact_file(os.path.join(sst_dir, stale[: -len(".sst")]))
    if cfg.staging.mode == "in_transit":
        remove_stale_contact_file(os.path.join(run_dir, cfg.staging.stream))
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
    except StreamTimeoutError:
        partial_summary(cfg, run_dir, time.time() - t0)  # what the ledger parts say so far
        raise
    finally:
        for f in logs.values():
            f.close()
    wall = time.time() - t0
    signum = codes.pop("_signal", 0)
    first = codes.pop("_first_failure", None)
    failed = {s: c for s, c in codes.items() if c != 0}
    for side, code in failed.items():
        with open(os.path.join(run_dir, f"{side}.log"), errors="replace") as f:
            tail = f.read().strip().splitlines()[-8:]
        print(f"stagelearn run: {side} side exited with code {code}; last lines of {run_dir}/{side}.log:", file=sys.stderr)
        print("\n".join("  " + t for t in tail), file=sys.stderr)
    if not streaming:
        if not failed:
            print(f"stream IO {cfg.adios2.stream_io!r} uses {read_ios(cfg.adios2.config_file)[cfg.adios2.stream_io].type}: "
                  f"the simulation wrote {run_dir}/sst/stream*.bp (no staging, no push-back)")
        return next(iter(failed.values()), 0)
    if os.path.exists(os.path.join(run_dir, "staging_summary.json")):
        finish(cfg, run_dir, wall)
    elif failed:
        partial_summary(cfg, run_dir, wall)
    if signum:
        raise Interrupted(signum)
    if failed:
        # the side that failed first carries the cause
        code = failed.get(first, next(iter(failed.values())))
        return code if code > 0 else 1
    return 0


def _wait(procs, cfg, run_dir, total, show):
    """Wait for both sides. A side that fails before any step was stored stops the other (it would
    wait for its peer until its open timeout); later the other side copes by itself. SIGINT/SIGTERM
    are passed on to both sides (recorded as ``codes["_signal"]``)."""
    bar = tqdm(total=total, unit="step", desc="steps received", disable=not show or None)
    codes, deadline = {}, time.time() + cfg.timeouts.run_s
    progress = os.path.join(run_dir, "progress.json")
    received = 0
    # once the simulation has ended, staging has this long to store what is queued and finish (a hung
    # staging would otherwise hold the run until run_s)
    grace = max(cfg.timeouts.peer_s, cfg.timeouts.step_s) + 10.0
    sim_done = None
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
                        for other, q in procs.items():
                            if other not in codes:
                                _stop(q)
                                codes[other] = q.returncode if q.returncode is not None else -15
                    elif p.returncode != 0:
                        codes.setdefault("_first_failure", side)
            if os.path.exists(progress):
                try:
                    with open(progress) as f:
                        received = json.load(f)["steps_received"]
                    bar.update(received - bar.n)
                except (ValueError, KeyError, OSError):
                    pass
            if "sim" in codes and sim_done is None:
                sim_done = time.time()
            if sim_done is not None and "stage" in procs and "stage" not in codes and time.time() > sim_done + grace:
                logger.error("staging did not finish within %.0f s after the simulation ended; stopping it", grace)
                print(f"stagelearn run: staging did not finish within {grace:.0f} s after the simulation ended "
                      "(hung?); stopped", file=sys.stderr)
                _stop(procs["stage"])
                codes["stage"] = procs["stage"].returncode
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
