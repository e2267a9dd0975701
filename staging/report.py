"""The end-of-run report: ``ledger.jsonl`` and ``summary.json`` from the sides' records, the per-step
table and the plot (``stagelearn run`` at its end, ``stagelearn report`` for sides launched apart).

Inputs, all in the run directory: ``staging_summary.json`` and ``steps.json`` (staging rank 0),
``producer.json`` (producer rank 0), the ledger parts (:mod:`.ledger`), ``compressed.bp`` and the
producers' reference field (``reference_<var>_step<n>.npy``) for the end-to-end decode check.
(Not to be confused with the per-block ``X/report`` rows on the stream, :mod:`.wire`.)
"""

from __future__ import annotations

import json
import math
import os

import numpy as np

from ..analytics.metrics import compression_ratio, psnr as psnr_fn
from ..analytics.plotting import plot_run
from .errors import UsageError
from .ledger import merge_ledger, staging_opened
from .output_reader import CompressedOutputReader
from .results import write_json
from .wire import report_get


def merge_run_ledger(cfg, run_dir):
    """``ledger.jsonl`` of the run from the sides' parts (see :mod:`.ledger`); returns its counts."""
    sim = cfg.simulation
    in_transit = cfg.staging.mode == "in_transit"
    expected = sim.steps // sim.plotgap + 1 if getattr(sim, "steps", None) else None
    n_ranks = sim.ranks
    record = os.path.join(run_dir, "producer.json")
    if not in_transit and os.path.exists(record):  # the producer ranks that ran (a Producer script's own count)
        n_ranks = _read_json(record).get("ranks") or sim.ranks
    if in_transit:  # an unchanged code keeps no ledger: steps and blocks per step as the stream carried them
        path = os.path.join(run_dir, "staging_summary.json")
        n_ranks = _read_json(path).get("blocks_per_step", sim.ranks) if os.path.exists(path) else sim.ranks
        expected = carried_steps(run_dir)  # None: the steps staging stored (see merge_ledger)
        if expected is None and not staging_opened(run_dir):  # never read: the run YAML's count, all not received
            expected = sim.steps // sim.plotgap + 1 if getattr(sim, "steps", None) else None
    return merge_ledger(run_dir, expected_steps=expected, n_ranks=n_ranks,
                        queue_full_policy=cfg.adios2.queue_full_policy or "Block", in_transit=in_transit)


def carried_steps(run_dir):
    """In transit: the output steps the code's stream carried, as staging read them; None if unknown.

    One past the last step staging read from the stream (``staging_summary.json``'s ``steps_written``,
    else ``progress.json``'s ``last_step``). The run YAML's ``simulation.steps // plotgap + 1`` is
    only the progress bar's estimate: an unchanged code decides how many steps it writes.
    """
    path = os.path.join(run_dir, "staging_summary.json")
    if os.path.exists(path):
        n = _read_json(path).get("steps_written")
        if n is not None:
            return int(n)
    path = os.path.join(run_dir, "progress.json")
    if os.path.exists(path):
        last = _read_json(path).get("last_step")
        if last is not None:
            return int(last) + 1
    return None


def float32_figures(compressed_path):
    """The coded steps' ratio counted as float32, the second figure beside ``compression_ratio``.

    ``compression_ratio`` is against the code's own dtype (each report row's ``raw_bytes``: float64
    data counts 8 bytes a value); here every value counts 4 bytes. Also the bits sent per value.

    Parameters
    ----------
    compressed_path : str
        ``compressed.bp``.

    Returns
    -------
    figures : dict
        ``compression_ratio_float32``, ``bits_per_value`` and ``raw_bytes_code_dtype`` over the coded
        blocks (None without coded blocks); empty without the file.
    """
    if not os.path.exists(compressed_path):
        return {}
    reader = CompressedOutputReader(compressed_path)
    n = sent = raw = 0.0
    try:
        for var in reader.fields():
            for step in reader.field_steps(var):
                for row in reader.reports(step, var):
                    if report_get(row, "encoder_version") > 0:
                        n += report_get(row, "n")
                        sent += report_get(row, "sent_bytes")
                        raw += report_get(row, "raw_bytes")
    finally:
        reader.close()
    return {"compression_ratio_float32": compression_ratio(4.0 * n, sent) if sent else None,
            "bits_per_value": 8.0 * sent / n if n else None, "raw_bytes_code_dtype": int(raw) if n else None}


def _read_json(path):
    with open(path, encoding="utf-8") as f:
        return json.load(f)


def partial_summary(cfg, run_dir, wall, failure=None):
    """``summary.json`` of a run whose staging side died before writing its summary: the ledger's account.

    Parameters
    ----------
    cfg : RunConfig
    run_dir : str
    wall : float or None
        Seconds the run took (None: unknown, ``stagelearn report``).
    failure : str, optional
        What ended the run (``stagelearn run``'s judgement), kept as ``failure`` in the summary.
    """
    counts = merge_run_ledger(cfg, run_dir)
    path = os.path.join(run_dir, "producer.json")
    producer = _read_json(path) if os.path.exists(path) else {}
    summary = {"complete": False, "steps_written": producer.get("steps_written"), "wall_s": wall,
               "staging_ranks": cfg.staging.ranks, "learner": cfg.learner.type,
               "stalls": producer.get("stalls"), "stall_s": producer.get("stall_s"), **_ledger_fields(counts),
               "steps_received": _steps_received(run_dir), "staging_opened": counts["staging_opened"]}
    if failure:
        summary["failure"] = failure
    write_json(os.path.join(run_dir, "summary.json"), summary)
    print(f"\nstaging ended without a summary; ledger: {counts['entries']}; steps lost {counts['steps_lost']} of "
          f"{counts['steps_expected']}, in fallback files {counts['steps_fallback']}; see {run_dir}/ledger.jsonl")


def _steps_received(run_dir):
    """Steps staging stored, as its ``progress.json`` says (0 without one)."""
    path = os.path.join(run_dir, "progress.json")
    try:
        return int(_read_json(path).get("steps_received", 0)) if os.path.exists(path) else 0
    except (ValueError, OSError):
        return 0


def _ledger_fields(counts):
    return {"steps_expected": counts["steps_expected"], "steps_lost": counts["steps_lost"],
            "steps_dropped": counts["steps_dropped"], "steps_fallback": counts["steps_fallback"],
            "ledger": counts["entries"], "staging_end": counts["staging_end"], "producer_end": counts["producer_end"]}


def report(cfg, run_dir):
    """``stagelearn report``: the summary of a run whose two sides were launched separately.

    Returns 0; 1 for a run whose staging side ended without its summary (killed, or it timed out
    before the stream opened): its ledger parts are still merged into ``ledger.jsonl`` and a partial
    ``summary.json`` (``complete: false``) is written.
    """
    path = os.path.join(run_dir, "producer.json")
    in_transit = cfg.staging.mode == "in_transit"
    staged = os.path.exists(os.path.join(run_dir, "staging_summary.json"))
    if not staged and os.path.exists(os.path.join(run_dir, "ledger", "staging.jsonl")):
        partial_summary(cfg, run_dir, None, failure="the staging side ended without its summary (killed, or it timed "
                                                    "out; see its output); the ledger lists what it did not store")
        return 1
    if not (os.path.exists(path) or in_transit) or not staged:
        raise UsageError(f"{run_dir}: no finished run here (producer.json and staging_summary.json are written "
                         "when `stagelearn sim` and `stagelearn stage` end); check --run-dir / output_dir")
    with open(path if os.path.exists(path) else os.path.join(run_dir, "staging_summary.json")) as f:
        wall = json.load(f)["wall_s"]
    return finish(cfg, run_dir, wall)


def _producer_record(cfg, run_dir, summary):
    """``producer.json`` of a stagelearn producer; for an unchanged code (in transit) what staging saw:
    the steps the stream carried (:func:`carried_steps`, never the YAML's step count) and the reference it saved."""
    path = os.path.join(run_dir, "producer.json")
    if os.path.exists(path) and cfg.staging.mode != "in_transit":  # in transit, one left by an earlier run is stale
        with open(path) as f:
            return json.load(f)
    if cfg.staging.mode != "in_transit":  # the simulation stopped without its record
        return {"steps_written": None, "layout": cfg.adios2.layout, "compute_s": None, "io_s": None, "reference": None}
    carried = carried_steps(run_dir)
    return {"steps_written": carried if carried is not None else summary["steps_received"],
            "layout": "in_transit", "compute_s": None, "io_s": None, "reference": summary.get("reference")}


def simulation_name(cfg, producer):
    """What produced the run: the mock's type, or ``own code (Producer)`` for a script using :class:`~.producer.Producer`."""
    if producer.get("source") == "Producer":
        return "own code (Producer)"
    return cfg.simulation.type


def finish(cfg, run_dir, wall, failure=None):
    """Merge the sides' records into ``summary.json``, print the table, draw the plot.

    ``failure`` (``stagelearn run``'s account of a side that failed) is kept as ``failure`` in the summary.
    """
    with open(os.path.join(run_dir, "staging_summary.json")) as f:
        summary = json.load(f)
    producer = _producer_record(cfg, run_dir, summary)
    with open(os.path.join(run_dir, "steps.json")) as f:
        table = json.load(f)
    summary["steps_written"] = producer["steps_written"]
    summary.update(_ledger_fields(merge_run_ledger(cfg, run_dir)))  # steps_lost: steps with a dropped or lost entry
    summary["stalls"], summary["stall_s"] = producer.get("stalls"), producer.get("stall_s")
    summary["wall_s"] = wall
    if failure:
        summary["failure"] = failure
    sim_name = simulation_name(cfg, producer)
    n_producers = producer.get("ranks") or cfg.simulation.ranks  # the ranks that ran (a Producer script's own)
    summary["simulation"] = {"type": sim_name, "ranks": n_producers, "layout": producer["layout"],
                             "compute_s": producer["compute_s"], "io_s": producer["io_s"]}
    summary["staging_ranks"] = cfg.staging.ranks
    summary["psnr_target_db"] = cfg.codec.psnr_db
    summary["learner"] = cfg.learner.type
    # compression_ratio is against the code's own dtype (raw_bytes); float32 is the second figure
    summary.update(float32_figures(os.path.join(run_dir, "compressed.bp")))
    # end-to-end check: decode the last step from the file and compare with the producers' raw field
    ref = producer.get("reference")
    ref_path = os.path.join(run_dir, f"reference_{ref['variable']}_step{ref['step']}.npy") if ref else ""
    original = reconstruction = None
    reader = CompressedOutputReader(os.path.join(run_dir, "compressed.bp")) if os.path.exists(ref_path) else None
    if reader is not None and ref["step"] not in reader.steps:  # dropped (Discard) or in a fallback file
        summary["decoded_check"] = {"variable": ref["variable"], "step": ref["step"],
                                    "skipped": "the step is not in compressed.bp (see ledger.jsonl)"}
        reader.close()
    elif reader is not None:
        original = np.load(ref_path)
        try:
            reconstruction = reader.read(ref["step"], ref["variable"])
        finally:
            reader.close()
        summary["decoded_check"] = {"variable": ref["variable"], "step": ref["step"],
                                    "psnr_db": psnr_fn(original, reconstruction),
                                    "max_abs_error": float(np.max(np.abs(original - reconstruction)))}
    write_json(os.path.join(run_dir, "summary.json"), summary)
    plot_run(table, os.path.join(run_dir, "summary.png"), original=original, reconstruction=reconstruction,
             title=f"{cfg.run_name}: {sim_name}, {n_producers} producers -> {cfg.staging.ranks} staging ranks")
    print_table(table)
    print_summary(summary, run_dir)
    return 0


def _fmt(x, spec):
    width = "".join(c for c in spec.split(".")[0] if c.isdigit())
    if x is None or isinstance(x, str) or (isinstance(x, float) and math.isinf(x)):
        return format("-" if x is None or x == "inf" or isinstance(x, float) else x, f">{width}" if width else "")
    return format(x, spec)


def print_table(table):
    """Print the per-step table: one row per step of ``steps.json`` (list of dict), to stdout."""
    print(f"{'step':>5} {'enc':>4} {'raw bytes':>11} {'sent bytes':>11} {'ratio':>7} {'PSNR dB':>8} {'max err':>9}")
    for r in table:
        print(f"{r['step']:>5} {r['encoder_version']:>4} {r['raw_bytes']:>11} {r['sent_bytes']:>11} "
              f"{_fmt(r['compression_ratio'], '7.2f')} {_fmt(r['psnr_db'], '8.2f')} {_fmt(r['max_abs_error'], '9.2e')}")


def print_summary(s, run_dir):
    """Print the run's summary (the dict written to ``summary.json``) in a few lines, to stdout."""
    print(f"\nsteps written {_fmt(s['steps_written'], 'd')}, received {s['steps_received']}, lost {s['steps_lost']}; "
          f"encoder versions {s['encoder_versions']}; wall {s['wall_s']:.1f} s")
    f32 = (f" (counted as float32: {_fmt(s['compression_ratio_float32'], '.2f')})"
           if s.get("compression_ratio_float32") and s.get("compression_ratio") else "")
    print(f"after the first encoder ({s['encoded_steps']} steps): compression ratio {_fmt(s['compression_ratio'], '.2f')}"
          f" against the code's own dtype{f32}, "
          f"PSNR {_fmt(s['psnr_db'], '.2f')} dB (min {_fmt(s['min_psnr_db'], '.2f')}), max abs error {_fmt(s['max_abs_error'], '.3g')}")
    if s.get("sz3_compression_ratio"):
        print(f"SZ3 per frame at the same PSNR on {s['sz3_steps']} sampled steps: ratio {s['sz3_compression_ratio']:.2f} "
              f"(PSNR {s['sz3_psnr_db']:.2f} dB) vs ours {s['compression_ratio_same_blocks']:.2f} on the same blocks")
    if s.get("sz3_closed_loop_compression_ratio"):
        print(f"SZ3 in closed loop at the same PSNR on {s['sz3_closed_loop_blocks']} blocks of "
              f"{s['sz3_closed_loop_steps']} steps: ratio {s['sz3_closed_loop_compression_ratio']:.2f} "
              f"(PSNR {_fmt(s['sz3_closed_loop_psnr_db'], '.2f')} dB) vs ours "
              f"{_fmt(s['compression_ratio_closed_loop_blocks'], '.2f')} "
              f"(PSNR {_fmt(s['psnr_db_closed_loop_blocks'], '.2f')} dB) on the same blocks")
    if s.get("encode_fraction") is not None:
        side = "staging's coding time over the code's step interval per step" if s.get("simulation", {}).get(
            "layout") == "in_transit" else "producer encode time over the simulation's compute time per step"
        print(f"encode fraction {s['encode_fraction']:.3f} ({side}: {s['encode_s_per_step'] * 1e3:.1f} ms / "
              f"{s['step_interval_s'] * 1e3:.1f} ms, {s['encode_fraction_steps']} steps)")
    if "decoded_check" in s:
        d = s["decoded_check"]
        if "skipped" in d:
            print(f"no end-to-end check of {d['variable']} at step {d['step']}: {d['skipped']}")
        else:
            print(f"decoded {d['variable']} at step {d['step']} from compressed.bp: PSNR {_fmt(d['psnr_db'], '.2f')} dB "
                  "against the raw field")
    print(f"results: {run_dir}/summary.json, summary.png, compressed.bp")
