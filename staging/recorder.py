"""Staging rank 0's record of the run: accounts, ledger part, anomalies, progress, summary.

:class:`StepRecorder` receives every step's :class:`~stagelearn.staging.bundle.BlockRecord` list
(gathered from all staging ranks) and keeps

- the report rows (:class:`~stagelearn.staging.accounts.StepAccounts`) and the value range of
  each variable (the encoder's ``ranges``);
- the running histograms of tile log-errors per variable (the anomaly statistics of the next
  encoder) and ``anomalies.csv`` (one line per flagged or persistent tile);
- ``ledger/staging.jsonl`` (one line per stored (step, producer rank), :mod:`.ledger`);
- ``progress.json`` (rewritten every step);
- at the end ``staging_summary.json`` and ``steps.json``, with the producer ranks and steps
  never received when the run did not end cleanly.

No method is collective: only rank 0 builds a recorder.
"""

from __future__ import annotations

import json
import logging
import math
import os

import numpy as np

from ..analytics.anomaly import LogErrorHistogram
from ..analytics.tiling import tile_grid
from .accounts import StepAccounts
from .ledger import staging_part
from .results import write_json
from .wire import report_get

logger = logging.getLogger(__name__)


class StepRecorder:
    """Rank 0: account, log and summarise the stored steps.

    Parameters
    ----------
    run_dir : str
        Where the files go.
    anomaly : AnomalyConfig
        The run's ``anomaly`` section (``enabled``, ``decay``).

    Attributes
    ----------
    accounts : StepAccounts
    ranges : dict of str to (float, float)
        Smallest and largest value seen per variable.
    error_hists : dict of str to LogErrorHistogram
    hist_steps : int
        Steps whose error histograms were folded in.
    last_step : int
        Last stored step (-1 before the first).
    """

    def __init__(self, run_dir, anomaly):
        self.run_dir, self.decay = str(run_dir), anomaly.decay
        self.accounts = StepAccounts()
        self.ranges = {}
        self.error_hists = {}
        self.hist_steps = 0
        self.last_step = -1
        self.steps_without_data = {}  # variable -> steps stored without any block of it
        self._seen_vars = set()
        self.corrupt_blocks = []  # blocks that did not match their writer's BlocksInfo (stored, flagged)
        self.ledger_part = staging_part(self.run_dir)
        self.anomaly_log = None
        if anomaly.enabled:
            self.anomaly_log = open(os.path.join(self.run_dir, "anomalies.csv"), "w")
            self.anomaly_log.write("step,variable,rank,tile,origin,score,status\n")

    def account(self, records):
        """Account one step's records (reports, value ranges, anomalies); return its step (-1: none)."""
        step = max(r.step for r in records) if records else -1
        for r in records:
            self.accounts.add(r.var, r.report)
            lo, hi = self.ranges.get(r.var, (math.inf, -math.inf))
            self.ranges[r.var] = (min(lo, report_get(r.report, "vmin")), max(hi, report_get(r.report, "vmax")))
        if self.anomaly_log is not None:
            self._record_anomalies(step, records)
        return step

    def _record_anomalies(self, step, records):
        """Fold error histograms, append flagged tiles to anomalies.csv, log an alert line."""
        alerts = []
        for rec in records:
            if rec.err_hist is None:
                continue
            self.error_hists.setdefault(rec.var, LogErrorHistogram(self.decay))
            if rec.anomaly is None or not len(rec.anomaly):
                continue
            where = rec.placement
            grid = tile_grid(where["block_shape"], where["tile_shape"])
            for tile, score, flagged, persistent in rec.anomaly:
                if not (flagged or persistent):
                    continue
                pos = np.unravel_index(int(tile), grid)
                origin = [int(s0 + p * t) for s0, p, t in zip(where["start"], pos, where["tile_shape"])]
                status = "flagged" if flagged else "persistent"
                self.anomaly_log.write(f"{step},{rec.var},{rec.rank},{int(tile)},{' '.join(map(str, origin))},"
                                       f"{score:.3f},{status}\n")
                if flagged:
                    alerts.append((score, rec.var, rec.rank, origin))
        for var in {r.var for r in records if r.err_hist is not None}:
            self.error_hists[var].update(sum(r.err_hist for r in records if r.var == var and r.err_hist is not None))
        if any(r.err_hist is not None for r in records):
            self.hist_steps += 1
        if alerts:
            score, var, rank, origin = max(alerts)
            logger.warning("anomaly: step %d: %d tiles flagged; highest score %.1f in %s at %s (producer %d)",
                           step, len(alerts), score, var, origin, rank)
        self.anomaly_log.flush()

    def step_counts(self, step, counts):
        """Note the variables with no block in ``step`` (after their first appearance; logged).

        Parameters
        ----------
        step : int
            The writer's step.
        counts : dict of str to int
            Blocks of each variable in the step, over all staging ranks.
        """
        for var, n in counts.items():
            if n:
                self._seen_vars.add(var)
            elif var in self._seen_vars:
                self.steps_without_data.setdefault(var, []).append(int(step))
                logger.warning("step %d has no data for %s (the writer did not put it); stored without it", step, var)

    def corrupt(self, items):
        """Record blocks flagged corrupt (``[{step, variable, rank, reason}]``) in the ledger part and the summary."""
        for c in items or []:
            self.corrupt_blocks.append(c)
            self.ledger_part.add(event="corrupt", step=int(c["step"]), rank=int(c["rank"]), variable=c["variable"],
                                 reason=c["reason"])

    def stored(self, step, records):
        """The step is in ``compressed.bp``: one ledger line per (step, producer rank)."""
        per_rank = {}
        for r in records:
            e = per_rank.setdefault((r.step, r.rank), [0, 0])
            e[0] = max(e[0], int(report_get(r.report, "encoder_version")))
            e[1] += int(report_get(r.report, "sent_bytes"))
        for (s, rank), (v, n) in sorted(per_rank.items()):
            self.ledger_part.add(step=s, rank=rank, encoder_version=v, bytes=n)
        if not records:  # the writer's step held none of the stored arrays: stored as such, not lost
            self.ledger_part.add(event="no_data", step=int(step))
        if records:
            self.last_step = max(self.last_step, step)

    def progress(self, steps_seen, step, encoder_version):
        """Rewrite ``progress.json`` (atomically)."""
        path = os.path.join(self.run_dir, "progress.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"steps_received": steps_seen, "last_step": step, "encoder_version": encoder_version}, f)
        os.replace(tmp, path)

    def missing(self, n_producers, simulation):
        """Producer ranks and steps never received: up to the configured number of output steps for a
        mock simulation (it writes exactly those), else up to the last step any producer sent (an
        external code's YAML ``steps`` is not what its stream carried).

        Returns
        -------
        dict with ``ranks``, ``steps`` (first, last), ``n_steps``, ``last_step_by_rank``; or None.
        """
        sim = simulation
        mock = getattr(sim, "type", None) not in (None, "external")
        expected = sim.steps // sim.plotgap + 1 if mock and getattr(sim, "steps", None) else None
        n = n_producers or sim.ranks
        last = {r: -1 for r in range(int(n))}
        for step, entries in self.accounts.rows.items():
            for rank, _ in entries:
                last[rank] = max(last.get(rank, -1), step)
        if expected is None:
            expected = max(last.values()) + 1
        ranks = sorted(r for r, s in last.items() if s < expected - 1)
        if not ranks:
            return None
        first = min(last[r] for r in ranks) + 1
        return {"ranks": ranks, "steps": [first, expected - 1], "n_steps": expected - first,
                "last_step_by_rank": {str(r): last[r] for r in ranks}}

    def summary(self, *, wall_s, published, fields, end_status, n_producers, simulation):
        """The staging summary: the accounts' figures, ``fields``, the end status and what is missing."""
        summary = self.accounts.summary(wall_s=wall_s, published=published)
        summary.update(fields)
        summary["end"] = end_status
        summary["blocks_per_step"] = n_producers
        summary["steps_without_data"] = {v: list(s) for v, s in self.steps_without_data.items()}
        summary["corrupt_blocks"] = list(self.corrupt_blocks)
        if end_status != "clean":
            summary["missing"] = self.missing(n_producers, simulation)
            if summary["missing"]:
                m = summary["missing"]
                logger.error("producer ranks %s: steps %d..%d (%d) not received (%s)", m["ranks"], m["steps"][0],
                             m["steps"][1], m["n_steps"], end_status)
        return summary

    def finish(self, summary):
        """Write ``staging_summary.json`` and ``steps.json``; end and close the ledger part."""
        write_json(os.path.join(self.run_dir, "staging_summary.json"), summary)
        write_json(os.path.join(self.run_dir, "steps.json"), self.accounts.step_table())
        self.ledger_part.add(event="end", status=summary["end"], last_step=self.last_step,
                             missing=summary.get("missing"))
        self.ledger_part.close()

    def close_log(self):
        """Close ``anomalies.csv`` (also after a failure)."""
        if self.anomaly_log is not None:
            self.anomaly_log.close()
            self.anomaly_log = None
