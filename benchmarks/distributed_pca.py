"""Study of the distributed PCA algorithms on non-i.i.d. partitions with drift.

    python benchmarks/distributed_pca.py            # 2, 4 and 8 ranks (oversubscribed is fine)

For each rank count it starts one `mpiexec` job running every algorithm on synthetic data
(:mod:`stagelearn.analytics.synthetic`: d=64, k=4, 2000 samples per rank, heterogeneity 0, 0.5
and 1, T=6 time steps of slow drift) and on Gray-Scott tiles partitioned by subdomain
(heterogeneity "subdomain": 32^3 V field, 4x4x4 tiles, each rank the tiles of its block of a
Cartesian decomposition, T=6 output steps 20 time steps apart; every 5th tile held out). At every time step each algorithm runs until its basis
stops moving, warm-started from its previous basis except `subspace_cold` (the textbook start
from a random basis). Its error is the sine of the largest principal angle to the exact PCA of
that step's data (worst rank). Writes results/distributed_pca/{summary.csv, summary.md,
error_vs_bytes.png, error_vs_rounds.png}.

Columns: bytes_to_tol / rounds_to_tol = mean over the tracking steps t=1..T-1 of the bytes (all
ranks together) and rounds needed to reach sin(theta) <= 1e-3 (empty if some step never does);
*_t0: the same at the cold first step; final_sin_theta: mean final error; ev_gap: relative gap
between the variance the final basis captures and the exact top-k variance; heldout_nrmse: RMSE
of the k-component reconstruction of held-out samples over their value range; wall_ms: time of
the solve (slowest rank), all averaged over the tracking steps.
"""

import argparse
import csv
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOL = 1e-3
D, K, N, T, DRIFT = 64, 4, 2000, 6, 0.02
HETEROGENEITY = (0.0, 0.5, 1.0, "subdomain")
RANKS = (2, 4, 8)
# (label, algorithm, warm start, graph)
VARIANTS = [("exact", "exact", False, None), ("oneshot", "oneshot", False, None),
            ("subspace_cold", "subspace", False, None), ("subspace", "subspace", True, None),
            ("oja", "oja", True, None), ("iag", "iag", True, None),
            ("gossip_ring", "gossip", True, "ring"), ("gossip_grid", "gossip", True, "grid"),
            ("warm_ritz", "warm_ritz", True, None)]


def gray_scott_tiles(comm, t):
    """This rank's 4x4x4 tiles of the V field of a 32^3 Gray-Scott run (same run on every rank)."""
    from mpi4py import MPI

    from stagelearn.analytics.tiling import to_tiles
    from stagelearn.sim_mocks import GrayScott3D
    from stagelearn.sim_mocks.decomposition import balanced_split

    key = ("gs", t)
    if key not in _CACHE:
        gs = GrayScott3D(32, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF)
        gs.advance(400 + 20 * t)
        _CACHE[key] = gs.fields()["V"].copy()
    field = _CACHE[key]
    dims = MPI.Compute_dims(comm.Get_size(), 3)
    coords = np.unravel_index(comm.Get_rank(), dims)
    sel = tuple(slice(s, s + c) for s, c in (balanced_split(32, d, i) for d, i in zip(dims, coords)))
    return to_tiles(field[sel], (4, 4, 4)).astype(np.float64)


_CACHE = {}


def data(comm, h, t):
    """(training samples, held-out samples) of this rank at time step t."""
    from stagelearn.analytics.synthetic import sample

    if h == "subdomain":
        tiles = gray_scott_tiles(comm, t)
        held = np.arange(len(tiles)) % 5 == 0
        return tiles[~held], tiles[held]
    p = comm.Get_size()
    return (sample(comm.rank, p, N, D, K, heterogeneity=h, t=t, drift=DRIFT),
            sample(comm.rank, p, N // 4, D, K, heterogeneity=h, t=t, drift=DRIFT, draw=1))


def quality(comm, A, V, U, mean, held):
    """(explained-variance gap, held-out NRMSE) of basis V against the exact basis U (evaluation only)."""
    from mpi4py import MPI

    CV = np.empty_like(V)
    comm.Allreduce(A @ V, CV, op=MPI.SUM)
    CU = np.empty_like(U)
    comm.Allreduce(A @ U, CU, op=MPI.SUM)
    captured, best = np.trace(V.T @ CV), np.trace(U.T @ CU)
    r = (held - mean) - (held - mean) @ V @ V.T
    stats = np.array([np.sum(r * r), r.size, -held.min() if held.size else -np.inf, held.max() if held.size else -np.inf])
    sums = np.empty(2)
    comm.Allreduce(stats[:2].copy(), sums, op=MPI.SUM)
    ext = np.empty(2)
    comm.Allreduce(stats[2:].copy(), ext, op=MPI.MAX)
    span = ext[0] + ext[1]
    return (best - captured) / best, float(np.sqrt(sums[0] / sums[1]) / span) if span > 0 else float("nan")


def worker(out):
    from mpi4py import MPI

    from stagelearn.analytics.comm_counter import CommCounter
    from stagelearn.analytics.dpca import grid_graph, local_problem, orthonormal, ring_graph, solve

    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    graphs = {"ring": ring_graph(p), "grid": grid_graph(tuple(MPI.Compute_dims(p, 2)))}
    results = []
    for h in HETEROGENEITY:
        state = {label: {"V": None, "guard": None} for label, *_ in VARIANTS}
        for t in range(T):
            X, held = data(comm, h, t)
            A, mean, _ = local_problem(X, CommCounter(comm))
            U, _ = solve("exact", A, K, comm)
            for label, alg, warm, graph in VARIANTS:
                st = state[label]
                V0 = st["V"] if warm and st["V"] is not None else orthonormal(np.random.default_rng(100 + t).normal(size=(D, K)))
                max_rounds = 400 if alg == "iag" else 150
                comm.Barrier()
                t0 = time.perf_counter()
                V, info = solve(alg, A, K, comm, V0=V0, tol=TOL / 10, max_rounds=max_rounds, reference=U,
                                graph=graphs.get(graph), guard=st["guard"], counter=CommCounter(comm))
                wall = np.array([time.perf_counter() - t0])
                comm.Allreduce(MPI.IN_PLACE, wall, op=MPI.MAX)
                st["V"], st["guard"] = V, info.get("guard", st["guard"])
                ev_gap, nrmse = quality(comm, A, V, U, mean, held)
                hist = np.array(info["history"]) if info["history"] else np.zeros((0, 3))
                err = hist[:, 2].copy() if len(hist) else np.zeros(0)
                byt = hist[:, 1].copy() if len(hist) else np.zeros(0)
                comm.Allreduce(MPI.IN_PLACE, err, op=MPI.MAX)  # worst rank (matters for gossip)
                comm.Allreduce(MPI.IN_PLACE, byt, op=MPI.SUM)  # all ranks together
                if comm.rank == 0:
                    results.append({"algorithm": label, "n_ranks": p, "heterogeneity": h, "t": t,
                                    "rounds": hist[:, 0].tolist() if len(hist) else [],
                                    "bytes": byt.tolist(), "sin_theta": err.tolist(), "ev_gap": ev_gap,
                                    "heldout_nrmse": nrmse, "wall_ms": 1e3 * float(wall[0])})
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
                    "ev_gap": float(np.mean([r["ev_gap"] for r in mine[1:]])),
                    "heldout_nrmse": float(np.mean([r["heldout_nrmse"] for r in mine[1:]])),
                    "wall_ms": float(np.mean([r["wall_ms"] for r in mine[1:]])),
                })
    with open(os.path.join(out, "summary.csv"), "w", newline="") as f:
        w = csv.DictWriter(f, fieldnames=list(rows[0]))
        w.writeheader()
        w.writerows(rows)
    lines = ["| algorithm | ranks | heterogeneity | bytes to 1e-3 (tracking) | rounds | bytes to 1e-3 (cold t=0) | rounds t=0 | final sin θ | EV gap | held-out NRMSE | ms |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    fmt = lambda x, f: "never" if x == "" else format(x, f)
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['n_ranks']} | {r['heterogeneity']} | {fmt(r['bytes_to_tol'], ',.0f')} | "
                     f"{fmt(r['rounds_to_tol'], '.1f')} | {fmt(r['bytes_to_tol_t0'], ',.0f')} | {fmt(r['rounds_to_tol_t0'], '.0f')} | "
                     f"{r['final_sin_theta']:.1e} | {r['ev_gap']:.1e} | {r['heldout_nrmse']:.2e} | {r['wall_ms']:.1f} |")
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
