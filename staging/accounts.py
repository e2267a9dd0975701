"""Per-step accounting of the producers' reports on staging rank 0, and the run summary figures.

:class:`StepAccounts` keeps one report row (:mod:`.wire` ``REPORT_FIELDS``) per (step, producer rank,
variable) and turns them into the step table (``steps.json``) and the staging summary (merged into
``summary.json``). Not to be confused with the run ledger (:mod:`.ledger`, ``ledger.jsonl``).
"""

from __future__ import annotations

import math
from collections import defaultdict

import numpy as np

from ..analytics.metrics import ErrorStats, compression_ratio
from .wire import report_get


class StepAccounts:
    """The report rows of every (step, producer rank, variable), collected on staging rank 0.

    Attributes
    ----------
    rows : dict of int to dict
        ``step -> {(producer rank, variable): report row}`` (ndarray of shape ``(len(REPORT_FIELDS),)``).
    """

    def __init__(self):
        self.rows = defaultdict(dict)  # step -> {(rank, var): row}

    def add(self, var, row):
        """Keep the report ``row`` (ndarray of shape ``(len(REPORT_FIELDS),)``) of one block of ``var``."""
        self.rows[int(report_get(row, "step"))][(int(report_get(row, "rank")), var)] = np.asarray(row)

    def step_table(self):
        """One dict per received step: version, bytes, ratio, PSNR (mean over variables), max error."""
        table = []
        for step in sorted(self.rows):
            entries = self.rows[step]
            per_var = defaultdict(ErrorStats)
            raw = sent = values = 0.0
            versions, coded_vars = set(), set()
            for (rank, var), row in entries.items():
                raw += report_get(row, "raw_bytes")
                sent += report_get(row, "sent_bytes")
                values += report_get(row, "n")
                versions.add(int(report_get(row, "encoder_version")))
                if report_get(row, "encoder_version") > 0:
                    coded_vars.add(var)
                per_var[var] = per_var[var].merge(ErrorStats(report_get(row, "sse"), int(report_get(row, "n")),
                                                             report_get(row, "max_abs_error"), report_get(row, "vmin"),
                                                             report_get(row, "vmax")))
            psnrs = {v: s.psnr_db for v, s in per_var.items()}
            # the step's PSNR is over the coded variables (a variable sent raw has only float32 rounding,
            # or none); +inf is exact and left out, -inf (an error on a constant field) is kept
            judged = [psnrs[v] for v in sorted(coded_vars)] if coded_vars else list(psnrs.values())
            finite = [p for p in judged if p != math.inf]
            nrmses = [s.nrmse for s in per_var.values() if s.sse > 0]
            table.append({
                "step": step,
                "encoder_version": max(versions),
                "producer_blocks": len({r for r, _ in entries}),
                "raw_bytes": int(raw),
                "n_values": int(values),
                "sent_bytes": int(sent),
                "compression_ratio": compression_ratio(raw, sent),
                "psnr_db": float(np.mean(finite)) if finite else math.inf,
                "psnr_db_per_variable": psnrs,
                "nrmse": float(np.mean(nrmses)) if nrmses else 0.0,
                "max_abs_error": max(s.max_abs_error for s in per_var.values()),
            })
        return table

    def sz3_reference(self, steps):
        """SZ3 at the PSNR our codec reached, on the sampled blocks of ``steps``.

        Each sampled block was compressed with SZ3 at the PSNR our code reached on it (in situ by
        its producer, in transit by staging). PSNRs are per (step, variable) over the sampled
        blocks, against the step's value range, then averaged over those.

        Returns
        -------
        dict with ``sz3_compression_ratio``, ``sz3_psnr_db``, ``compression_ratio_same_blocks``,
        ``psnr_db_same_blocks`` (ours on the same blocks), ``sz3_steps`` (None values when no
        block was sampled).
        """
        raw = ours = sz3 = 0.0
        per_var, ours_var = defaultdict(ErrorStats), defaultdict(ErrorStats)
        sampled = set()
        for step in steps:
            for (rank, var), row in self.rows[step].items():
                if report_get(row, "sz3_bytes") <= 0:
                    continue
                sampled.add(step)
                raw += report_get(row, "raw_bytes")
                ours += report_get(row, "sent_bytes")
                sz3 += report_get(row, "sz3_bytes")
                n, lo, hi = int(report_get(row, "n")), report_get(row, "vmin"), report_get(row, "vmax")
                per_var[(step, var)] = per_var[(step, var)].merge(
                    ErrorStats(report_get(row, "sz3_sse"), n, 0.0, lo, hi))
                ours_var[(step, var)] = ours_var[(step, var)].merge(ErrorStats(
                    report_get(row, "sse"), n, report_get(row, "max_abs_error"), lo, hi))
        if not sampled:
            return {"sz3_compression_ratio": None, "sz3_psnr_db": None, "compression_ratio_same_blocks": None,
                    "psnr_db_same_blocks": None, "sz3_steps": 0}
        return {
            "sz3_compression_ratio": compression_ratio(raw, sz3),
            "sz3_psnr_db": float(np.mean([s.psnr_db for s in per_var.values()])),
            "compression_ratio_same_blocks": compression_ratio(raw, ours),
            "psnr_db_same_blocks": float(np.mean([s.psnr_db for s in ours_var.values()])),
            "sz3_steps": len(sampled),
        }

    def closed_loop_reference(self, steps):
        """SZ3 in closed loop at the PSNR our codec reached, on the blocks it followed in ``steps``.

        The rows with ``sz3_cl_bytes`` (:mod:`stagelearn.analytics.sz3_closed_loop`: SZ3 on the
        difference from its own previous reconstruction, on one fixed block per writer rank, every
        coded step). PSNRs per (step, variable) over those blocks, against the value range of all
        the step's blocks of the variable (the step's range, as ``psnr_db``), then averaged.

        Returns
        -------
        dict with ``sz3_closed_loop_compression_ratio``, ``sz3_closed_loop_psnr_db``,
        ``compression_ratio_closed_loop_blocks`` and ``psnr_db_closed_loop_blocks`` (ours on the
        same blocks and steps), ``sz3_closed_loop_steps``, ``sz3_closed_loop_blocks`` (block rows
        covered) (None values when the chain ran on no block).
        """
        raw = ours = sz3 = 0.0
        per_var, ours_var = defaultdict(ErrorStats), defaultdict(ErrorStats)
        covered, blocks = set(), 0
        for step in steps:
            extent = {}  # var -> (lo, hi) over all the step's blocks: PSNR against the step's range
            for (rank, var), row in self.rows[step].items():
                if report_get(row, "n") > 0:
                    lo, hi = extent.get(var, (math.inf, -math.inf))
                    extent[var] = (min(lo, report_get(row, "vmin")), max(hi, report_get(row, "vmax")))
            for (rank, var), row in self.rows[step].items():
                if report_get(row, "sz3_cl_bytes") <= 0:
                    continue
                covered.add(step)
                blocks += 1
                raw += report_get(row, "raw_bytes")
                ours += report_get(row, "sent_bytes")
                sz3 += report_get(row, "sz3_cl_bytes")
                (lo, hi), n = extent[var], int(report_get(row, "n"))
                per_var[(step, var)] = per_var[(step, var)].merge(
                    ErrorStats(report_get(row, "sz3_cl_sse"), n, 0.0, lo, hi))
                ours_var[(step, var)] = ours_var[(step, var)].merge(ErrorStats(
                    report_get(row, "sse"), n, report_get(row, "max_abs_error"), lo, hi))
        if not covered:
            return {"sz3_closed_loop_compression_ratio": None, "sz3_closed_loop_psnr_db": None,
                    "compression_ratio_closed_loop_blocks": None, "psnr_db_closed_loop_blocks": None,
                    "sz3_closed_loop_steps": 0, "sz3_closed_loop_blocks": 0}
        return {
            "sz3_closed_loop_compression_ratio": compression_ratio(raw, sz3),
            "sz3_closed_loop_psnr_db": _mean_psnr(per_var.values()),
            "compression_ratio_closed_loop_blocks": compression_ratio(raw, ours),
            "psnr_db_closed_loop_blocks": _mean_psnr(ours_var.values()),
            "sz3_closed_loop_steps": len(covered),
            "sz3_closed_loop_blocks": blocks,
        }

    def encode_timing(self, steps):
        """The coding time per step as a fraction of the step interval, over the coded ``steps``.

        From the rows' ``encode_s`` and ``interval_s`` (:data:`~.wire.REPORT_FIELDS`): in situ each
        producer rank's coding time of its blocks over the simulation's compute time before the
        step; in transit each staging rank's coding time over the time since its previous coded
        step. Steps that are per-frame SZ3 samples (their coding time holds SZ3's) and steps
        without an interval (the first coded one) are left out.

        Returns
        -------
        dict with ``encode_fraction`` (sum of coding times / sum of intervals), ``encode_s_per_step``
        and ``step_interval_s`` (means per step and coding rank), ``encode_fraction_steps`` (steps
        counted) (None values when no step qualifies).
        """
        enc = interval = 0.0
        counted, pairs = set(), 0
        for step in steps:
            rows = [r for r in self.rows[step].values() if report_get(r, "encoder_version") > 0]
            if any(report_get(r, "sz3_bytes") > 0 for r in rows):
                continue
            step_interval = sum(report_get(r, "interval_s") for r in rows)
            if not rows or step_interval <= 0:
                continue
            counted.add(step)
            pairs += sum(report_get(r, "interval_s") > 0 for r in rows)
            enc += sum(report_get(r, "encode_s") for r in rows)  # every block's coding time; interval once per rank
            interval += step_interval
        if not counted:
            return {"encode_fraction": None, "encode_s_per_step": None, "step_interval_s": None,
                    "encode_fraction_steps": 0}
        return {"encode_fraction": enc / interval, "encode_s_per_step": enc / pairs,
                "step_interval_s": interval / pairs, "encode_fraction_steps": len(counted)}

    def summary(self, *, steps_written=None, wall_s=None, published=()):
        """The run summary (see README: ``summary.json``).

        Parameters
        ----------
        steps_written : int, optional
            Output steps the simulation wrote (default: one past the last received step).
        wall_s : float, optional
        published : sequence of (int, int)
            ``(encoder version, after step)`` of every published encoder (step -1: restored from
            a checkpoint).
        """
        table = self.step_table()
        received = [r["step"] for r in table]
        if steps_written is None:
            steps_written = (max(received) + 1) if received else 0
        coded = [r for r in table if r["encoder_version"] > 0]
        raw = sum(r["raw_bytes"] for r in coded)
        sent = sum(r["sent_bytes"] for r in coded)
        n_values = sum(r["n_values"] for r in coded)
        out = {
            "steps_written": int(steps_written),
            "steps_received": len(received),
            "steps_lost": int(steps_written) - len(set(received)),
            "encoder_versions": len(published),
            "first_encoded_step": coded[0]["step"] if coded else None,
            "encoded_steps": len(coded),
            "compression_ratio": compression_ratio(raw, sent) if coded else None,
            # bits sent per value, all side information included (latent scales, headers, raw tiles)
            "bits_per_value": 8.0 * sent / n_values if coded and n_values else None,
            "psnr_db": float(np.mean([r["psnr_db"] for r in coded])) if coded else None,
            "min_psnr_db": float(min(r["psnr_db"] for r in coded)) if coded else None,
            "max_abs_error": float(max(r["max_abs_error"] for r in coded)) if coded else None,
            "nrmse": float(np.mean([r["nrmse"] for r in coded])) if coded else None,
            "raw_bytes_total": int(sum(r["raw_bytes"] for r in table)),
            "sent_bytes_total": int(sum(r["sent_bytes"] for r in table)),
            "wall_s": wall_s,
            "published": [{"version": v, "after_step": s} for v, s in published],
        }
        out.update(self.sz3_reference([r["step"] for r in coded]))
        out.update(self.closed_loop_reference([r["step"] for r in coded]))
        out.update(self.encode_timing([r["step"] for r in coded]))
        return out


def _mean_psnr(stats):
    """Mean PSNR (dB) of ErrorStats, each against its own range (inf for exact ones, as they are)."""
    return float(np.mean([s.psnr_db for s in stats]))
