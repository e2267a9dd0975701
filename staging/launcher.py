"""``stagelearn run``: start the simulation and staging as two ``mpiexec`` jobs coupled only by SST.

As on an HPC system, the two sides are separate MPI jobs (``MPI_COMM_WORLD`` of each is its own
side); they find each other through the SST contact files in ``<run_dir>/sst/``. The launcher
shows progress, enforces ``timeouts.run_s``, stops the other side when one fails, and at the end
merges both sides' records into ``summary.json``, prints the per-step table and draws the plot.
"""

from __future__ import annotations

import logging
import math
import os
import shutil
import subprocess
import sys
import time

import numpy as np

from .adios import remove_stale_contact_file
from .config import load_config
from .errors import ConfigError, StreamTimeoutError, UsageError
from .results import write_json
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
    if args.output_dir:
        cfg.output_dir = args.output_dir
    if args.run_name:
        cfg.run_name = args.run_name
    run_dir = str(cfg.run_dir)
    if os.path.exists(os.path.join(run_dir, "compressed.bp")):
        shutil.rmtree(os.path.join(run_dir, "compressed.bp"))
    sst_dir = prepare_run_dir(run_dir)
    for old in ("progress.json", "summary.json", "staging_summary.json", "producer.json", "steps.json"):
        if os.path.exists(os.path.join(run_dir, old)):
            os.remove(os.path.join(run_dir, old))
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
    codes = _wait(procs, cfg, run_dir, total, show=not args.no_progress)
    for f in logs.values():
        f.close()
    wall = time.time() - t0
    failed = {s: c for s, c in codes.items() if c != 0}
    if failed:
        first = codes.pop("_first_failure", None)
        failed.pop("_first_failure", None)
        for side, code in failed.items():
            tail = open(os.path.join(run_dir, f"{side}.log")).read().strip().splitlines()[-8:]
            print(f"stagelearn run: {side} side exited with code {code}; last lines of {run_dir}/{side}.log:", file=sys.stderr)
            print("\n".join("  " + t for t in tail), file=sys.stderr)
        # the side that failed first carries the cause; the other was stopped by us
        code = failed.get(first, next(iter(failed.values())))
        return code if code > 0 else 1
    if not streaming:
        print(f"stream IO {cfg.adios2.stream_io!r} uses {read_ios(cfg.adios2.config_file)[cfg.adios2.stream_io].type}: "
              f"the simulation wrote {run_dir}/sst/stream*.bp (no staging, no push-back)")
        return 0
    return finish(cfg, run_dir, wall)


def _wait(procs, cfg, run_dir, total, show):
    from tqdm import tqdm

    bar = tqdm(total=total, unit="step", desc="steps received", disable=not show or None)
    codes, deadline = {}, time.time() + cfg.timeouts.run_s
    progress = os.path.join(run_dir, "progress.json")
    try:
        while len([s for s in codes if s in procs]) < len(procs):
            for side, p in procs.items():
                if side not in codes and p.poll() is not None:
                    codes[side] = p.returncode
                    if p.returncode != 0:  # the other side would wait for its peer until its own timeout
                        codes.setdefault("_first_failure", side)
                        time.sleep(2.0)
                        for other, q in procs.items():
                            if other not in codes:
                                _stop(q)
                                codes[other] = q.returncode if q.returncode is not None else -15
            if os.path.exists(progress):
                try:
                    import json

                    with open(progress) as f:
                        n = json.load(f)["steps_received"]
                    bar.update(n - bar.n)
                except (ValueError, KeyError, OSError):
                    pass
            if time.time() > deadline:
                for p in procs.values():
                    _stop(p)
                raise StreamTimeoutError(f"run exceeded timeouts.run_s = {cfg.timeouts.run_s:g} s; both sides stopped")
            time.sleep(0.25)
    except KeyboardInterrupt:
        for p in procs.values():
            _stop(p)
        raise
    finally:
        bar.close()
    return codes


def report(cfg, run_dir):
    """``stagelearn report``: the summary of a run whose two sides were launched separately."""
    import json

    path = os.path.join(run_dir, "producer.json")
    in_transit = cfg.staging.mode == "in_transit"
    if not (os.path.exists(path) or in_transit) or not os.path.exists(os.path.join(run_dir, "staging_summary.json")):
        raise UsageError(f"{run_dir}: no finished run here (producer.json and staging_summary.json are written "
                         "when `stagelearn sim` and `stagelearn stage` end); check --run-dir / output_dir")
    with open(path if os.path.exists(path) else os.path.join(run_dir, "staging_summary.json")) as f:
        wall = json.load(f)["wall_s"]
    return finish(cfg, run_dir, wall)


def _producer_record(cfg, run_dir, summary):
    """``producer.json`` of a stagelearn producer; for an unchanged code (in transit) what staging saw:
    the steps it received (the code's own count is unknown here) and the reference it saved."""
    import json

    path = os.path.join(run_dir, "producer.json")
    if os.path.exists(path) and cfg.staging.mode != "in_transit":  # in transit, one left by an earlier run is stale
        with open(path) as f:
            return json.load(f)
    sim = cfg.simulation
    declared = sim.steps // sim.plotgap + 1 if sim.type == "external" and sim.steps else None  # from the YAML
    return {"steps_written": declared if sim.type == "external" else summary["steps_received"],
            "layout": "in_transit", "compute_s": None, "io_s": None, "reference": summary.get("reference")}


def finish(cfg, run_dir, wall):
    """Merge the sides' records into ``summary.json``, print the table, draw the plot."""
    import json

    from ..analytics.metrics import psnr as psnr_fn
    from ..analytics.plotting import plot_run
    from .output import CompressedOutputReader

    with open(os.path.join(run_dir, "staging_summary.json")) as f:
        summary = json.load(f)
    producer = _producer_record(cfg, run_dir, summary)
    with open(os.path.join(run_dir, "steps.json")) as f:
        table = json.load(f)
    summary["steps_written"] = producer["steps_written"]
    summary["steps_lost"] = (producer["steps_written"] - summary["steps_received"]
                             if producer["steps_written"] is not None else None)
    summary["wall_s"] = wall
    summary["simulation"] = {"type": cfg.simulation.type, "ranks": cfg.simulation.ranks, "layout": producer["layout"],
                             "compute_s": producer["compute_s"], "io_s": producer["io_s"]}
    summary["staging_ranks"] = cfg.staging.ranks
    summary["psnr_target_db"] = cfg.codec.psnr_db
    summary["learner"] = cfg.learner.type
    # end-to-end check: decode the last step from the file and compare with the producers' raw field
    ref = producer["reference"]
    ref_path = os.path.join(run_dir, f"reference_{ref['variable']}_step{ref['step']}.npy") if ref else ""
    original = reconstruction = None
    if os.path.exists(ref_path):
        original = np.load(ref_path)
        reader = CompressedOutputReader(os.path.join(run_dir, "compressed.bp"))
        try:
            reconstruction = reader.read(ref["step"], ref["variable"])
        finally:
            reader.close()
        summary["decoded_check"] = {"variable": ref["variable"], "step": ref["step"],
                                    "psnr_db": psnr_fn(original, reconstruction),
                                    "max_abs_error": float(np.max(np.abs(original - reconstruction)))}
    write_json(os.path.join(run_dir, "summary.json"), summary)
    plot_run(table, os.path.join(run_dir, "summary.png"), original=original, reconstruction=reconstruction,
             title=f"{cfg.run_name}: {cfg.simulation.type}, {cfg.simulation.ranks} producers -> {cfg.staging.ranks} staging ranks")
    print_table(table)
    print_summary(summary, run_dir)
    return 0


def _fmt(x, spec):
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    if x is None or isinstance(x, str) or (isinstance(x, float) and math.isinf(x)):
        return format("-" if x is None or x == "inf" or isinstance(x, float) else x, f">{width}" if width else "")
    return format(x, spec)


def print_table(table):
    print(f"{'step':>5} {'enc':>4} {'raw bytes':>11} {'sent bytes':>11} {'ratio':>7} {'PSNR dB':>8} {'max err':>9}")
    for r in table:
        print(f"{r['step']:>5} {r['encoder_version']:>4} {r['raw_bytes']:>11} {r['sent_bytes']:>11} "
              f"{_fmt(r['compression_ratio'], '7.2f')} {_fmt(r['psnr_db'], '8.2f')} {_fmt(r['max_abs_error'], '9.2e')}")


def print_summary(s, run_dir):
    print(f"\nsteps written {s['steps_written']}, received {s['steps_received']}, lost {s['steps_lost']}; "
          f"encoder versions {s['encoder_versions']}; wall {s['wall_s']:.1f} s")
    print(f"after the first encoder ({s['encoded_steps']} steps): compression ratio {_fmt(s['compression_ratio'], '.2f')}, "
          f"PSNR {_fmt(s['psnr_db'], '.2f')} dB (min {_fmt(s['min_psnr_db'], '.2f')}), max abs error {_fmt(s['max_abs_error'], '.3g')}")
    if s.get("sz3_compression_ratio"):
        print(f"SZ3 at the same PSNR on {s['sz3_steps']} sampled steps: ratio {s['sz3_compression_ratio']:.2f} "
              f"(PSNR {s['sz3_psnr_db']:.2f} dB) vs ours {s['compression_ratio_same_blocks']:.2f} on the same blocks")
    if "decoded_check" in s:
        d = s["decoded_check"]
        print(f"decoded {d['variable']} at step {d['step']} from compressed.bp: PSNR {_fmt(d['psnr_db'], '.2f')} dB against the raw field")
    print(f"results: {run_dir}/summary.json, summary.png, compressed.bp")
