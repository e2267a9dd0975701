"""Tables of ``benchmarks/rate_distortion.py``: ratios interpolated at fixed PSNR, summary.md, CSV files."""

from __future__ import annotations

import csv
import math
import os

TARGETS = (40.0, 50.0, 60.0)


def ratio_at(rows, target):
    """log(ratio) interpolated linearly in PSNR; returns (ratio, extrapolated) or (nan, True)."""
    pts = sorted((r["psnr_db"], math.log(r["ratio"])) for r in rows if math.isfinite(r["psnr_db"]))
    if not pts:
        return math.nan, True
    if len(pts) == 1:
        return math.exp(pts[0][1]), True
    ps = [p for p, _ in pts]
    extra = not ps[0] <= target <= ps[-1]
    if target <= ps[0]:
        (p0, l0), (p1, l1) = pts[0], pts[1]
    elif target >= ps[-1]:
        (p0, l0), (p1, l1) = pts[-2], pts[-1]
    else:
        k = next(i for i in range(1, len(pts)) if ps[i] >= target)
        (p0, l0), (p1, l1) = pts[k - 1], pts[k]
    if p1 == p0:
        return math.exp(l0), extra
    return math.exp(l0 + (l1 - l0) * (target - p0) / (p1 - p0)), extra


def write_summary(rows, meta, out_dir, command, speed=None):
    os.makedirs(out_dir, exist_ok=True)
    cols = ["dataset", "method", "psnr_db", "ratio", "encode_mb_s", "decode_mb_s", "setting"]
    with open(os.path.join(out_dir, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.4g}" if isinstance(r[c], float) else r[c]) for c in cols})
    lines = ["# Rate-distortion on frame streams", "", f"Command: `{command}`", "",
             "Ratio = raw float32 bytes / every byte sent, interpolated log-linearly in PSNR at each target "
             "(`*`: extrapolated from the two nearest settings). MB/s: single thread, raw MB per second of the median "
             "frame, harmonic mean over the settings. `vs sz3`: ratio over sz3's at the same PSNR; "
             "`vs best CL`: over the better "
             "of sz3_closed_loop and sperr_closed_loop.", ""]
    for ds, info in meta.items():
        lines += [f"## {ds}", "", f"{info['description']}; {info['frames']} frames of shape "
                  f"{'x'.join(map(str, info['shape']))}.", "",
                  "| method | " + " | ".join(f"ratio @{t:g} dB" for t in TARGETS) + " | "
                  + " | ".join(f"vs sz3 @{t:g}" for t in TARGETS) + " | "
                  + " | ".join(f"vs best CL @{t:g}" for t in TARGETS)
                  + " | encode MB/s | decode MB/s |",
                  "|---" * (3 * len(TARGETS) + 3) + "|"]
        by = {}
        for r in rows:
            if r["dataset"] == ds:
                by.setdefault(r["method"], []).append(r)
        at = {m: {t: ratio_at(rs, t) for t in TARGETS} for m, rs in by.items()}
        for m, rs in by.items():
            cells = [f"{at[m][t][0]:.1f}{'*' if at[m][t][1] else ''}" for t in TARGETS]
            vs = []
            for t in TARGETS:
                s = at.get("sz3", {}).get(t, (math.nan, True))[0]
                vs.append(f"{at[m][t][0] / s:.2f}" if s == s else "")
            cl = []
            for t in TARGETS:
                best = max([at[b][t][0] for b in ("sz3_closed_loop", "sperr_closed_loop") if b in at] or [math.nan])
                cl.append(f"{at[m][t][0] / best:.2f}" if best == best else "")
            enc = sum(info["raw_mb"] for _ in rs) / sum(info["raw_mb"] / r["encode_mb_s"] for r in rs)
            dec = sum(info["raw_mb"] for _ in rs) / sum(info["raw_mb"] / r["decode_mb_s"] for r in rs)
            lines.append(f"| {m} | " + " | ".join(cells + vs + cl) + f" | {enc:.0f} | {dec:.0f} |")
        lines.append("")
    if speed:
        lines += ["## Speed, methods interleaved", "",
                  "Single thread, 6 frames from the middle of each stream at 50 dB, the methods alternating frame "
                  "by frame, each time the minimum of 3 runs (`--speed`; on a shared machine the sweep's own timings "
                  "above, taken minutes apart, are not comparable). `stream` includes its rate control "
                  "(re-encodes when a frame misses the PSNR target); `ours` is timed with the previous raw frame "
                  "as its temporal reference.", "", speed_table(speed), ""]
    with open(os.path.join(out_dir, "summary.md"), "w") as f:
        f.write("\n".join(lines))
    return "\n".join(lines)


def write_speed(rows, out_dir):
    cols = ["dataset", "method", "encode_mb_s", "decode_mb_s", "frames", "setting"]
    with open(os.path.join(out_dir, "speed.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=cols)
        w.writeheader()
        for r in rows:
            w.writerow({c: (f"{r[c]:.4g}" if isinstance(r[c], float) else r[c]) for c in cols})


def speed_table(rows):
    """Markdown table of speed rows: MB/s and the ratio to sz3's on the same dataset."""
    sz3 = {r["dataset"]: r for r in rows if r["method"] == "sz3"}
    lines = ["| dataset | method | encode MB/s | decode MB/s | encode / sz3 | decode / sz3 |",
             "|---|---|---|---|---|---|"]
    for r in rows:
        s = sz3.get(r["dataset"])
        lines.append(f"| {r['dataset']} | {r['method']} | {r['encode_mb_s']:.0f} | {r['decode_mb_s']:.0f} | "
                     + (f"{r['encode_mb_s'] / s['encode_mb_s']:.2f} | {r['decode_mb_s'] / s['decode_mb_s']:.2f} |"
                        if s else " | |"))
    return "\n".join(lines)


def read_csv(paths):
    rows = []
    for path in paths:
        with open(path) as f:
            for r in csv.DictReader(f):
                rows.append({k: (float(v) if k not in ("dataset", "method") else v) for k, v in r.items()})
    return rows
