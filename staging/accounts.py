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

        Returns
        -------
        dict with ``sz3_compression_ratio``, ``sz3_psnr_db``, ``compression_ratio_same_blocks``,
        ``sz3_steps`` (None values when no block was sampled).
        """
        raw = ours = sz3 = 0.0
        per_var = defaultdict(ErrorStats)
        sampled = set()
        for step in steps:
            for (rank, var), row in self.rows[step].items():
                if report_get(row, "sz3_bytes") <= 0:
                    continue
                sampled.add(step)
                raw += report_get(row, "raw_bytes")
                ours += report_get(row, "sent_bytes")
                sz3 += report_get(row, "sz3_bytes")
                per_var[(step, var)] = per_var[(step, var)].merge(ErrorStats(
                    report_get(row, "sz3_sse"), int(report_get(row, "n")), 0.0, report_get(row, "vmin"), report_get(row, "vmax")))
        if not sampled:
            return {"sz3_compression_ratio": None, "sz3_psnr_db": None, "compression_ratio_same_blocks": None, "sz3_steps": 0}
        return {
            "sz3_compression_ratio": compression_ratio(raw, sz3),
            "sz3_psnr_db": float(np.mean([s.psnr_db for s in per_var.values()])),
            "compression_ratio_same_blocks": compression_ratio(raw, ours),
            "sz3_steps": len(sampled),
        }

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
        return out
