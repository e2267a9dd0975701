"""Turn a benchopt result (parquet) into results/bench/summary.{md,csv} and rate-distortion plots.

    python benchmarks/bench_summary.py benchmarks/outputs/bench.parquet [--out results/bench]
"""

import argparse
import os

import pandas as pd

METRICS = ["compression_ratio", "bit_rate", "psnr", "nrmse", "max_abs_error", "ssim", "spectrum_rel_error",
           "compress_MBps", "decompress_MBps", "comm_bytes"]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("parquet")
    ap.add_argument("--out", default="results/bench")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    df = pd.read_parquet(args.parquet)
    df = df.rename(columns={f"objective_{m}": m for m in METRICS})
    table = df[["dataset_name", "solver_name"] + METRICS].sort_values(["dataset_name", "solver_name"])
    table.to_csv(os.path.join(args.out, "summary.csv"), index=False)
    lines = ["| dataset | solver | ratio | bits/value | PSNR dB | NRMSE | max abs err | SSIM | spectrum err | comp MB/s | decomp MB/s | comm bytes |",
             "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    for _, r in table.iterrows():
        lines.append(f"| {r.dataset_name} | {r.solver_name} | {r.compression_ratio:.1f} | {r.bit_rate:.3f} | {r.psnr:.1f} | "
                     f"{r.nrmse:.1e} | {r.max_abs_error:.1e} | {r.ssim:.4f} | {r.spectrum_rel_error:.1e} | "
                     f"{r.compress_MBps:.1f} | {r.decompress_MBps:.1f} | {r.comm_bytes:.0f} |")
    with open(os.path.join(args.out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for dataset, sub in table.groupby("dataset_name"):
        fig, ax = plt.subplots(figsize=(6.5, 4.5), layout="constrained")
        sub = sub.assign(family=sub.solver_name.str.replace(r"\[.*rel_tol=[^,\]]*\]?", "", regex=True)
                         .str.replace(r"\[inflevel=.*\]", "", regex=True).str.replace(r",?rel_tol=[^,\]]*", "", regex=True))
        for family, g in sub.groupby("family"):
            g = g.sort_values("bit_rate")
            ax.plot(g.bit_rate, g.psnr, "o-", label=family)
        ax.set_xscale("log")
        ax.set_xlabel("bit rate (bits per value, side information included)")
        ax.set_ylabel("PSNR (dB)")
        ax.set_title(dataset)
        ax.legend(fontsize=8)
        fig.savefig(os.path.join(args.out, "rd_" + "".join(c if c.isalnum() else "_" for c in dataset) + ".png"), dpi=100)
        plt.close(fig)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
