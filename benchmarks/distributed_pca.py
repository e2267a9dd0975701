"""Study of the distributed PCA algorithms on non-i.i.d. partitions with drift.

    python benchmarks/distributed_pca.py            # 2, 4 and 8 ranks (oversubscribed is fine)

For each rank count it starts one `mpiexec` job running every algorithm on synthetic data
(:mod:`stagelearn.analytics.synthetic`: d=64, k=4, 2000 samples per rank, heterogeneity 0, 0.5
and 1, T=6 time steps of slow drift). At every time step each algorithm runs until its basis
stops moving, warm-started from its previous basis except `subspace_cold` (the textbook start
from a random basis). Its error is the sine of the largest principal angle to the exact PCA of
that step's data (worst rank). Writes results/distributed_pca/{summary.csv, summary.md,
error_vs_bytes.png, error_vs_rounds.png}.

Columns: bytes_to_tol / rounds_to_tol = mean over the tracking steps t=1..T-1 of the bytes (all
ranks together) and rounds needed to reach sin(theta) <= 1e-3 (empty if some step never does);
*_t0: the same at the cold first step; final_sin_theta: mean final error.
"""

import argparse
import csv
import json
import os
import subprocess
import sys

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-3
D, K, N, T, DRIFT = 64, 4, 2000, 6, 0.02
HETEROGENEITY = (0.0, 0.5, 1.0)
RANKS = (2, 4, 8)
# (label, algorithm, warm start, graph)
VARIANTS = [("exact", "exact", False, None), ("oneshot", "oneshot", False, None),
            ("subspace_cold", "subspace", False, None), ("subspace", "subspace", True, None),
            ("oja", "oja", True, None), ("iag", "iag", True, None),
            ("gossip_ring", "gossip", True, "ring"), ("gossip_grid", "gossip", True, "grid"),
            ("warm_ritz", "warm_ritz", True, None)]


def worker(out):
    from mpi4py import MPI

    from stagelearn.analytics.comm_ledger import CommLedger
    from stagelearn.analytics.dpca import grid_graph, local_problem, orthonormal, ring_graph, solve
    from stagelearn.analytics.synthetic import sample

    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    graphs = {"ring": ring_graph(p), "grid": grid_graph(tuple(MPI.Compute_dims(p, 2)))}
    results = []
    for h in HETEROGENEITY:
        state = {label: {"V": None, "guard": None} for label, *_ in VARIANTS}
        for t in range(T):
            X = sample(comm.rank, p, N, D, K, heterogeneity=h, t=t, drift=DRIFT)
            A, _, _ = local_problem(X, CommLedger(comm))
            U, _ = solve("exact", A, K, comm)
            for label, alg, warm, graph in VARIANTS:
                st = state[label]
                V0 = st["V"] if warm and st["V"] is not None else orthonormal(np.random.default_rng(100 + t).normal(size=(D, K)))
                max_rounds = 400 if alg == "iag" else 150
                V, info = solve(alg, A, K, comm, V0=V0, tol=TOL / 10, max_rounds=max_rounds, reference=U,
                                graph=graphs.get(graph), guard=st["guard"], ledger=CommLedger(comm))
                st["V"], st["guard"] = V, info.get("guard", st["guard"])
                hist = np.array(info["history"]) if info["history"] else np.zeros((0, 3))
                err = hist[:, 2].copy() if len(hist) else np.zeros(0)
                byt = hist[:, 1].copy() if len(hist) else np.zeros(0)
                comm.Allreduce(MPI.IN_PLACE, err, op=MPI.MAX)  # worst rank (matters for gossip)
                comm.Allreduce(MPI.IN_PLACE, byt, op=MPI.SUM)  # all ranks together
                if comm.rank == 0:
                    results.append({"algorithm": label, "n_ranks": p, "heterogeneity": h, "t": t,
                                    "rounds": hist[:, 0].tolist() if len(hist) else [],
                                    "bytes": byt.tolist(), "sin_theta": err.tolist()})
    if comm.rank == 0:
        with open(os.path.join(out, f"raw_{p}.json"), "w") as f:
            json.dump(results, f)


def first_at_tol(run):
    for r, b, e in zip(run["rounds"], run["bytes"], run["sin_theta"]):
        if e <= TOL:
            return r, b
    return None


def summarise(out):
    rows = []
    runs = [r for p in RANKS for r in json.load(open(os.path.join(out, f"raw_{p}.json")))]
    for label, *_ in VARIANTS:
        for p in RANKS:
            for h in HETEROGENEITY:
                mine = sorted((r for r in runs if r["algorithm"] == label and r["n_ranks"] == p and r["heterogeneity"] == h),
                              key=lambda r: r["t"])
                hits = [first_at_tol(r) for r in mine]
                track = hits[1:]
                ok = all(x is not None for x in track)
                rows.append({
                    "algorithm": label, "n_ranks": p, "heterogeneity": h,
                    "bytes_to_tol": float(np.mean([x[1] for x in track])) if ok else "",
                    "rounds_to_tol": float(np.mean([x[0] for x in track])) if ok else "",
                    "bytes_to_tol_t0": hits[0][1] if hits[0] else "",
                    "rounds_to_tol_t0": hits[0][0] if hits[0] else "",
                    "final_sin_theta": float(np.mean([r["sin_theta"][-1] for r in mine if r["sin_theta"]])),
                })
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| algorithm | ranks | heterogeneity | bytes to 1e-3 (tracking) | rounds | bytes to 1e-3 (cold t=0) | rounds t=0 | final sin θ |",
             "|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, f: "never" if x == "" else format(x, f)
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['n_ranks']} | {r['heterogeneity']:g} | {fmt(r['bytes_to_tol'], ',.0f')} | "
                     f"{fmt(r['rounds_to_tol'], '.1f')} | {fmt(r['bytes_to_tol_t0'], ',.0f')} | {fmt(r['rounds_to_tol_t0'], '.0f')} | "
                     f"{r['final_sin_theta']:.1e} |")
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(runs, out)
    return rows, lines


def plot(runs, out):
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    for xkey, name in (("bytes", "error_vs_bytes.png"), ("rounds", "error_vs_rounds.png")):
        fig, axes = plt.subplots(1, 2, figsize=(12, 4.5), layout="constrained")
        for ax, t in zip(axes, (0, 1)):
            for label, *_ in VARIANTS:
                run = next((r for r in runs if r["algorithm"] == label and r["n_ranks"] == 8 and r["heterogeneity"] == 1.0
                            and r["t"] == t), None)
                if run and run["sin_theta"]:
                    ax.plot(np.maximum(run[xkey], 1), np.maximum(run["sin_theta"], 1e-16), ".-", ms=3, label=label)
            ax.axhline(TOL, color="k", lw=0.8, ls="--")
            ax.set_xscale("log")
            ax.set_yscale("log")
            ax.set_xlabel("bytes sent, all ranks" if xkey == "bytes" else "communication rounds")
            ax.set_ylabel("sin θ to exact PCA (worst rank)")
            ax.set_title(f"8 ranks, heterogeneity 1, {'cold first step' if t == 0 else 'tracking step t=1 (warm)'}")
        axes[1].legend(fontsize=8)
        fig.savefig(os.path.join(out, name), dpi=100)
        plt.close(fig)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "results", "distributed_pca"))
    ap.add_argument("--worker", action="store_true")
    args = ap.parse_args()
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        return worker(args.out)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for p in RANKS:
        subprocess.run([mpiexec, "-n", str(p), sys.executable, os.path.abspath(__file__), "--worker", "--out", args.out],
                       check=True, env=env, timeout=1800)
    _, lines = summarise(args.out)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
