"""The run ledger: where each (step, producer rank) went, so no output step vanishes without a record.

Each process appends its own part while the run goes, one JSON line per event, flushed at once
so a killed process leaves every line it wrote:

- producer rank ``r``: ``ledger/producer.p<r>.jsonl``, one line per step it handled, ``to``
  ``stream`` (sent over SST) or ``fallback`` (written to its fallback BP5 file), with the encoder
  version and bytes; ``replayed`` lines for steps it had sent but staging never acknowledged;
  a final ``end`` line (``clean`` or ``interrupted``);
- staging rank 0: ``ledger/staging.jsonl``: an ``opened`` line once its stream reader is open,
  in transit a ``begun`` line per step the writer announced (before its data is read), one line
  per (step, producer rank) stored in ``compressed.bp``, and a final ``end`` line.

:func:`merge_ledger` joins the parts into ``ledger.jsonl`` with one line per (step, producer rank)
of the steps the run was to produce, each with a ``status``: ``sent_raw``, ``sent_encoded``
(stored in ``compressed.bp``), ``corrupt`` (stored as it came, but it did not match the writer's
``BlocksInfo`` min/max; ``reason`` says how), ``no_data`` (the writer's step, stored in ``compressed.bp``,
held none of the stored arrays: a code step with only scalars), ``fallback`` (in a producer's fallback file), ``dropped`` (by the SST
``QueueFullPolicy=Discard``), ``lost`` (with a ``reason``), or ``not_produced`` (the simulation
closed its stream before that step, e.g. interrupted by SIGINT/SIGTERM, or never opened it). ``steps_lost`` in ``summary.json`` counts the steps with any
``dropped`` or ``lost`` entry.
"""

from __future__ import annotations

import glob
import json
import logging
import os
import time

logger = logging.getLogger(__name__)

LEDGER_DIR = "ledger"


class LedgerPart:
    """Append-only JSON-lines file of one process (line-buffered: each record reaches the OS at once).

    Parameters
    ----------
    path : str
    """

    def __init__(self, path):
        os.makedirs(os.path.dirname(path) or ".", exist_ok=True)
        self.path = path
        self._f = open(path, "w", buffering=1, encoding="utf-8")

    def add(self, **record):
        """Append one record (a JSON object)."""
        if self._f is not None:
            record.setdefault("t", round(time.time(), 3))  # wall clock, for timing failures across processes
            self._f.write(json.dumps(record, separators=(",", ":")) + "\n")

    def close(self):
        if self._f is not None:
            self._f.close()
            self._f = None


def producer_part(run_dir, rank):
    return LedgerPart(os.path.join(run_dir, LEDGER_DIR, f"producer.p{int(rank)}.jsonl"))


def staging_part(run_dir):
    return LedgerPart(os.path.join(run_dir, LEDGER_DIR, "staging.jsonl"))


def _read(path):
    out = []
    with open(path, encoding="utf-8") as f:
        for n, line in enumerate(f, 1):
            try:
                out.append(json.loads(line))
            except ValueError:  # a line cut by a killed process
                logger.warning("%s:%d: unreadable ledger line skipped (cut by a killed process?)", path, n)
    return out


def clear(run_dir):
    """Remove an earlier run's ledger parts and merged ledger."""
    for path in glob.glob(os.path.join(run_dir, LEDGER_DIR, "*.jsonl")) + [os.path.join(run_dir, "ledger.jsonl")]:
        if os.path.exists(path):
            os.remove(path)


def staging_opened(run_dir):
    """True when staging's ledger part says its stream reader opened (the ``opened`` line).

    ``stagelearn run`` asks this when an unchanged code ended before staging stored anything: a
    stream closed before staging opened it can never be read.
    """
    path = os.path.join(run_dir, LEDGER_DIR, "staging.jsonl")
    return os.path.exists(path) and any(r.get("event") == "opened" for r in _read(path))


def merge_ledger(run_dir, *, expected_steps, n_ranks, queue_full_policy="Block", in_transit=False):
    """Join the ledger parts of ``run_dir`` into ``ledger.jsonl`` and count what went where.

    Parameters
    ----------
    run_dir : str
    expected_steps : int or None
        Output steps the simulation was to write (None: the highest step any part names, plus one).
        When every producer rank ended cleanly, its own last step decides instead.
    n_ranks : int or None
        Producer ranks (in transit: blocks per step as staging saw them). None (staging never saw a
        step, e.g. the code died after ``Open``, or finished before staging opened): the ranks the
        parts name, at least one.
    queue_full_policy : {"Block", "Discard"}
        The stream's SST policy: with Discard, a step sent while staging kept running but never
        received was dropped by the writer, not lost.
    in_transit : bool
        An unchanged code (no producer parts): what staging did not receive is reported lost.

    Returns
    -------
    counts : dict
        ``steps_expected``, ``steps_lost`` (steps with any dropped or lost entry), ``steps_dropped``,
        ``steps_fallback``, ``steps_corrupt``, ``entries`` per status, ``producer_end`` and ``staging_end`` (the parts'
        end records, or None when a side stopped without one), ``staging_opened`` (staging's reader opened).
    """
    known_ranks = n_ranks is not None
    n_ranks = int(n_ranks) if known_ranks else 1 << 30  # None: from the parts (a side that never saw a step)
    base = os.path.join(run_dir, LEDGER_DIR)
    stored, staging_end, no_data, corrupt, opened, begun = {}, None, set(), {}, False, set()
    path = os.path.join(base, "staging.jsonl")
    for r in _read(path) if os.path.exists(path) else []:
        if r.get("event") == "opened":
            opened = True
        elif r.get("event") == "begun":
            begun.add(int(r["step"]))
        elif r.get("event") == "end":
            staging_end = r
        elif r.get("event") == "no_data":
            no_data.add(int(r["step"]))
        elif r.get("event") == "corrupt":
            corrupt.setdefault((int(r["step"]), int(r["rank"])), []).append(f"{r.get('variable')}: {r.get('reason')}")
        elif "step" in r and "rank" in r:
            stored[(r["step"], r["rank"])] = r
    sent, fallback, ends, last = {}, {}, {}, {}
    for path in sorted(glob.glob(os.path.join(base, "producer.p*.jsonl"))):
        for r in _read(path):
            rank = r["rank"]
            if rank >= n_ranks:  # a part left by an earlier run with more producer ranks
                break
            if r.get("event") == "end":
                ends[rank] = r
                continue
            last[rank] = max(last.get(rank, -1), r["step"])
            (fallback if r["to"] == "fallback" else sent)[(r["step"], rank)] = r
    if not known_ranks:  # the ranks the parts name (at least one: the stream itself)
        n_ranks = max([r for _, r in list(stored) + list(sent) + list(fallback)] + list(ends) + [0]) + 1
    if len(ends) >= n_ranks and all(e.get("status") == "clean" for e in ends.values()):
        expected_steps = max(int(e.get("last_step", -1)) for e in ends.values()) + 1  # the simulation said when it ended
    if expected_steps is None:
        keys = list(stored) + list(sent) + list(fallback) + [(s, 0) for s in no_data]
        expected_steps = max((s for s, _ in keys), default=-1) + 1
    if in_transit and begun:  # the writer announced these steps: they were carried, stored or not
        expected_steps = max(int(expected_steps), max(begun) + 1)
    lines, counts = [], {}
    lost_steps, dropped_steps, fallback_steps, corrupt_steps = set(), set(), set(), set()
    for step in range(int(expected_steps)):
        for rank in range(int(n_ranks)):
            key = (step, rank)
            entry = {"step": step, "rank": rank}
            if key in stored:
                s = stored[key]
                v = int(s.get("encoder_version", 0))
                entry.update(status="sent_encoded" if v else "sent_raw", encoder_version=v, file="compressed.bp",
                             bytes=s.get("bytes"))
                if key in corrupt:  # stored as it came, but it does not match the writer's metadata
                    entry.update(status="corrupt", reason="; ".join(corrupt[key]))
                    corrupt_steps.add(step)
                if key in fallback:
                    entry["also_in"] = fallback[key]["file"]
            elif step in no_data:
                entry.update(status="no_data", file="compressed.bp",
                             reason="the writer's step holds none of the stored arrays (stored as such)")
            elif key in fallback:
                f = fallback[key]
                entry.update(status="fallback", file=f["file"], encoder_version=f.get("encoder_version", 0),
                             bytes=f.get("bytes"), replayed=bool(f.get("replayed", False)))
                fallback_steps.add(step)
            elif key in sent:
                later = any(k[1] == rank and k[0] > step for k in stored)
                if queue_full_policy == "Discard" and (later or (staging_end or {}).get("status") == "clean"):
                    entry.update(status="dropped", reason="QueueFullPolicy=Discard: the SST writer dropped this step "
                                                          "while the staging queue was full")
                    dropped_steps.add(step)
                else:
                    why = ("sent to the stream, but the simulation went away before staging received all of the step"
                           if (staging_end or {}).get("status") == "producer_lost" else
                           "sent to the stream, but staging stopped before storing it")
                    entry.update(status="lost", reason=why)
                    lost_steps.add(step)
            elif in_transit:
                why = ("not received by staging (an unchanged code keeps no ledger)" if opened or staging_end else
                       "not received: staging never opened the stream (the code closed it, or failed, before "
                       "staging opened it; steps counted from the run YAML)")
                if step in begun and staging_end is None:
                    why = ("announced by the writer, but its data never came before staging stopped (see stage.log: "
                           "a writer that hangs, or a data plane staging cannot read)")
                elif step in begun:
                    why = f"announced by the writer, but not stored (staging ended: {staging_end.get('status')})"
                entry.update(status="lost", reason=why)
                lost_steps.add(step)
            else:
                end = ends.get(rank)
                if end is not None:  # the simulation closed its stream before this step
                    how = "was interrupted (SIGINT/SIGTERM)" if end.get("status") == "interrupted" else "ended"
                    entry.update(status="not_produced", reason=f"the simulation {how} after step {end.get('last_step')}")
                    counts["not_produced"] = counts.get("not_produced", 0) + 1
                    lines.append(entry)
                    continue
                if rank in last:
                    why = f"producer rank {rank} stopped without closing after step {last[rank]} (killed?)"
                else:  # no ledger part: the producer never opened its stream
                    entry.update(status="not_produced", reason=f"producer rank {rank} never opened its stream (the "
                                                              "run stopped before; see sim.log)")
                    counts["not_produced"] = counts.get("not_produced", 0) + 1
                    lines.append(entry)
                    continue
                entry.update(status="lost", reason=why)
                lost_steps.add(step)
            counts[entry["status"]] = counts.get(entry["status"], 0) + 1
            lines.append(entry)
    with open(os.path.join(run_dir, "ledger.jsonl"), "w", encoding="utf-8") as f:
        for entry in lines:
            f.write(json.dumps(entry, separators=(",", ":")) + "\n")
    return {"steps_expected": int(expected_steps), "steps_lost": len(lost_steps | dropped_steps),
            "steps_dropped": len(dropped_steps), "steps_fallback": len(fallback_steps),
            "steps_corrupt": len(corrupt_steps), "entries": counts,
            "producer_end": {str(k): v.get("status") for k, v in sorted(ends.items())} or None,
            "staging_end": staging_end.get("status") if staging_end else None, "staging_opened": opened}
