"""Scaling: bytes on the wire per step and wall time versus producer and staging rank counts.

    python benchmarks/perf_scaling.py

Gray-Scott 48^3, 600 time steps (61 output steps), producers M in {1, 2, 4, 8} with N = 2 staging
ranks, then N in {1, 2, 4} with M = 4 (all oversubscribed on this machine). Bytes per step are
taken after the first encoder (what the steady state costs); wall is the whole run.
"""

import os
import tempfile

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def run(tmp, m, n):
    from benchmark_utils import read_json, run_stagelearn

    run_dir = run_stagelearn(tmp, f"m{m}n{n}", {
        "simulation": {"type": "gray_scott", "ranks": m, "L": 48, "steps": 600, "plotgap": 10},
        "staging": {"ranks": n}, "adios2": {"config_file": os.path.join(REPO, "xml_configs", "stagelearn.xml")},
        "learner": {"warmup_steps": 5, "publish_every": 20}, "codec": {"psnr_db": 41}, "metrics": {"sz3_every": 0}})
    s = read_json(run_dir, "summary.json")
    steps = [r for r in read_json(run_dir, "steps.json") if r["encoder_version"] > 0]
    return sum(r["sent_bytes"] for r in steps) / len(steps), s["wall_s"], s["compression_ratio"]


def main():
    print("| producers M | staging N | bytes/step (coded) | ratio | wall s |")
    print("|---|---|---|---|---|")
    with tempfile.TemporaryDirectory() as tmp:
        for m, n in [(1, 2), (2, 2), (4, 2), (8, 2), (4, 1), (4, 4)]:
            b, wall, ratio = run(tmp, m, n)
            print(f"| {m} | {n} | {b:,.0f} | {ratio:.2f} | {wall:.1f} |")
            print(f"bytes_per_step_M{m}_N{n}: {b:.0f}")
            print(f"wall_s_M{m}_N{n}: {wall:.1f}")


if __name__ == "__main__":
    main()
