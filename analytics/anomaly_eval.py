"""Score a run's flagged tiles (``anomalies.csv``) against injected events (``events.json``).

Ground truth: a tile belongs to an event when its box comes within ``margin * radius`` cells of
the event centre (``margin`` 2 for ``hotspot`` and ``perturbation``, which spread; spikes touch
one cell). Persistent events count from their onset to the end; a spike only at its step.
"""

from __future__ import annotations

import csv
import json

import numpy as np

_MARGIN = {"hotspot": 2.0, "perturbation": 2.0, "spike": 0.0}


def read_anomalies(path):
    """Rows of ``anomalies.csv`` as dicts with typed fields (``origin`` a tuple of int)."""
    with open(path, newline="") as f:
        return [dict(r, step=int(r["step"]), rank=int(r["rank"]), tile=int(r["tile"]), score=float(r["score"]),
                     origin=tuple(int(x) for x in r["origin"].split())) for r in csv.DictReader(f)]


def _touches(origin, tile_shape, event):
    lo = np.asarray(origin, dtype=float)
    hi = lo + np.asarray(tile_shape, dtype=float) - 1
    nearest = np.clip(np.asarray(event["center"], dtype=float), lo, hi)
    reach = _MARGIN[event["kind"]] * event["radius"] + 0.5
    return float(np.linalg.norm(nearest - np.asarray(event["center"], dtype=float))) <= reach


def _active(event, step):
    return step == event["step"] if event["kind"] == "spike" else step >= event["step"]


def evaluate(anomalies_csv, events_json, tile_shape, persistence_steps):
    """Detection latency, precision and recall of a run.

    Parameters
    ----------
    anomalies_csv, events_json : str
        Files written by ``stagelearn run`` with ``anomaly.enabled`` and ``simulation.events``.
    tile_shape : sequence of int
    persistence_steps : int
        Recall counts an event tile as found if flagged within ``persistence_steps + 1`` steps of
        the onset (afterwards a persistent change is, by design, the new normal).

    Returns
    -------
    result : dict
        ``events`` (per event: kind, step, detected, latency_steps, tiles, tiles_found),
        ``precision`` (flagged (step, tile) pairs that belong to an active event / all flagged
        pairs, variables merged),
        ``recall`` (event tiles found / event tiles), ``flagged_rows``.
    """
    rows, seen = [], set()
    for r in read_anomalies(anomalies_csv):  # one row per (step, tile), whichever variables flagged it
        if r["status"] == "flagged" and (r["step"], r["origin"]) not in seen:
            seen.add((r["step"], r["origin"]))
            rows.append(r)
    with open(events_json) as f:
        truth = json.load(f)
    shape = truth["shape"]
    grid = [range(0, n, t) for n, t in zip(shape, tile_shape)]
    all_origins = [tuple(o) for o in np.stack(np.meshgrid(*grid, indexing="ij"), -1).reshape(-1, len(shape))]
    per_event, hits, total = [], 0, 0
    for ev in truth["events"]:
        region = {o for o in all_origins if _touches(o, tile_shape, ev)}
        window = range(ev["step"], ev["step"] + (1 if ev["kind"] == "spike" else persistence_steps + 1))
        found = {r["origin"] for r in rows if r["origin"] in region and r["step"] in window}
        detected = [r["step"] for r in rows if r["origin"] in region and _active(ev, r["step"])]
        per_event.append({"kind": ev["kind"], "step": ev["step"], "detected": bool(detected),
                          "latency_steps": (min(detected) - ev["step"]) if detected else None,
                          "tiles": len(region), "tiles_found": len(found)})
        hits += len(found)
        total += len(region)
    true_rows = [r for r in rows if any(_active(ev, r["step"]) and _touches(r["origin"], tile_shape, ev) for ev in truth["events"])]
    return {"events": per_event, "precision": len(true_rows) / len(rows) if rows else None,
            "recall": hits / total if total else None, "flagged_rows": len(rows)}
