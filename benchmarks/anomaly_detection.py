"""Anomaly detection on the mocks with injected events: latency, precision, recall, extra bytes.

Runs `stagelearn run` on a heat2d case (a new narrow hot spot that stays, and two unphysical
spikes) and a Gray-Scott case (a seeded perturbation that grows, and a spike), then scores the
flagged tiles against the injected ground truth and draws the anomaly map over time next to the
field. Writes docs/anomalies_<case>.png and prints the Markdown table used in docs/anomalies.md.

    python benchmarks/anomaly_detection.py [--out results/anomaly_bench]
"""

import argparse
import json
import os
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
ANOMALY = {"enabled": True, "method": "threshold", "threshold": 8.0, "persistence_steps": 5}
THRESHOLDS = (6.0, 8.0)
CASES = {
    "heat2d": {
        "simulation": {"type": "heat2d", "ranks": 4, "nx": 128, "ny": 128, "steps": 1500, "plotgap": 10,
                       "events": [{"kind": "hotspot", "step": 60, "center": [40, 96], "radius": 1.0, "amplitude": 5.0},
                                  {"kind": "spike", "step": 100, "center": [90, 20], "amplitude": 150.0},
                                  {"kind": "spike", "step": 130, "center": [20, 30], "amplitude": 150.0}]},
        "staging": {"ranks": 2, "tile_shape": [8, 8]},
        "tile": (8, 8),
    },
    "gray_scott": {
        # events after the pattern has filled the box (about output step 120): its growth front is a real
        # regime change the detector flags too, which would count as false positives here
        "simulation": {"type": "gray_scott", "ranks": 4, "L": 48, "steps": 3000, "plotgap": 10,
                       "events": [{"kind": "perturbation", "step": 200, "center": [12, 12, 36], "radius": 3.0, "amplitude": 0.5},
                                  {"kind": "spike", "step": 250, "center": [30, 40, 10], "amplitude": 5.0}]},
        "staging": {"ranks": 2, "tile_shape": [4, 4, 4]},
        "tile": (4, 4, 4),
    },
}


def run_case(name, case, out, threshold):
    from benchmark_utils import run_stagelearn

    return run_stagelearn(out, name, {
        "simulation": case["simulation"], "staging": case["staging"],
        "adios2": {"config_file": os.path.join(REPO, "xml_configs", "stagelearn.xml")},
        "learner": {"warmup_steps": 5, "publish_every": 40}, "codec": {"kind": "learned", "psnr_db": 41.0},
        "anomaly": dict(ANOMALY, threshold=threshold), "metrics": {"sz3_every": 0}})


def extra_bytes(run_dir):
    from stagelearn.staging.output import CompressedOutputReader
    from stagelearn.staging.wire import report_get

    reader = CompressedOutputReader(os.path.join(run_dir, "compressed.bp"))
    anomaly = sent = 0.0
    for step in reader.steps:
        for var in reader.fields():
            for row in reader.reports(step, var):
                if report_get(row, "encoder_version") > 0:
                    anomaly += report_get(row, "anomaly_bytes")
                    sent += report_get(row, "sent_bytes")
    return anomaly, sent, reader


def plot(name, run_dir, reader, var, events, path, threshold):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    coded = [s for s in reader.steps if reader.reports(s, var)[:, 2].min() > 0]
    maps = {s: reader.anomaly_map(s, var) for s in coded}
    onset = events[0]["step"]
    show = min(coded[-1], onset + 2)
    field = reader.read(show, var)
    if field.ndim == 3:
        field = field[:, :, events[0]["center"][2]]
    fig, axes = plt.subplots(1, 2, figsize=(12, 4.8), layout="constrained")
    ax = axes[0]
    im = ax.imshow(field.T, origin="lower", cmap="viridis")
    fig.colorbar(im, ax=ax, shrink=0.8)
    for row in maps.get(show, []):
        if row[-1] == 1 and (field.ndim == 2 or True):
            ax.add_patch(plt.Rectangle((row[2] - 0.5, row[3] - 0.5), 8 if field.ndim == 2 else 4,
                                       8 if field.ndim == 2 else 4, fill=False, ec="red", lw=1.5))
    ax.set_title(f"{name}: {var} at step {show} (red: flagged tiles)")
    ax = axes[1]
    for s, m in maps.items():
        if len(m):
            c = np.where(m[:, -1] == 1, "red", np.where(m[:, -1] == 2, "orange", "0.6"))
            ax.scatter(np.full(len(m), s), m[:, -2], c=c, s=6)
    ax.axhline(threshold, color="k", lw=0.8, ls="--")
    for ev in events:
        ax.axvline(ev["step"], color="C0", lw=0.8)
        ax.text(ev["step"], ax.get_ylim()[1] if ax.get_ylim()[1] > 0 else 10, f" {ev['kind']}", va="top", fontsize=8)
    ax.set_yscale("symlog")
    ax.set_xlabel("output step")
    ax.set_ylabel("tile anomaly score (robust z)")
    ax.set_title("anomaly map over time\n(red flagged, orange persistent, grey listed)")
    fig.savefig(path, dpi=100)
    plt.close(fig)


def main():
    from stagelearn.analytics.anomaly_eval import evaluate

    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "results", "anomaly_bench"))
    args = ap.parse_args()
    lines = ["| case | threshold | event | onset step | detected | latency (steps) | event tiles found | precision | recall | flagged rows | extra bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for name, case in CASES.items():
        for threshold in THRESHOLDS:
            run_dir = run_case(name, case, args.out, threshold)
            res = evaluate(os.path.join(run_dir, "anomalies.csv"), os.path.join(run_dir, "events.json"), case["tile"],
                           ANOMALY["persistence_steps"])
            anomaly, sent, reader = extra_bytes(run_dir)
            var = reader.fields()[-1] if name == "gray_scott" else reader.fields()[0]
            if threshold == ANOMALY["threshold"]:
                plot(name, run_dir, reader, var, case["simulation"]["events"],
                     os.path.join(REPO, "docs", f"anomalies_{name}.png"), threshold)
            prec = "-" if res["precision"] is None else f"{res['precision']:.2f}"
            for ev in res["events"]:
                lines.append(f"| {name} | {threshold:g} | {ev['kind']} | {ev['step']} | {'yes' if ev['detected'] else 'no'} | "
                             f"{'-' if ev['latency_steps'] is None else ev['latency_steps']} | {ev['tiles_found']}/{ev['tiles']} | "
                             f"{prec} | {res['recall']:.2f} | {res['flagged_rows']} | {100 * anomaly / sent:.2f}% |")
        print(json.dumps({name: res, "anomaly_bytes": anomaly, "sent_bytes": sent}), file=sys.stderr)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
