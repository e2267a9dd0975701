"""Study of the distributed PCA algorithms on non-i.i.d. partitions with drift.

    python benchmarks/distributed_pca.py            # 2, 4 and 8 ranks (oversubscribed is fine)
    python benchmarks/distributed_pca.py --ranks 16 --only subspace_f32 krylov_f32 delta_ritz_rs   # a subset
    python benchmarks/distributed_pca.py --d4096    # d = 4096: 16^3 tiles, 8 ranks (distributed_pca_d4096.py)

For each rank count it starts one `mpiexec` job running every algorithm on synthetic data
(:mod:`stagelearn.analytics.synthetic`: d=64, k=4, 2000 samples per rank, heterogeneity 0, 0.5
and 1, T=6 time steps of slow drift) and on Gray-Scott tiles partitioned by subdomain
(heterogeneity "subdomain": 32^3 V field, 4x4x4 tiles, each rank the tiles of its block of a
Cartesian decomposition, T=6 output steps 20 time steps apart; every 5th tile held out). At every time step each algorithm runs until its basis
stops moving, warm-started from its previous basis except `subspace_cold` (the textbook start
from a random basis). Its error is the sine of the largest principal angle to the exact PCA of
that step's data (worst rank). Writes results/distributed_pca/{summary.csv, summary.md,
error_vs_bytes.png, error_vs_rounds.png}.

The delta_* methods run with their defaults (complement sketch and first-round rate control aimed at
1e-3: analytics/dpca_certificate.py, analytics/dpca_rate.py); delta_ritz_rs_int8 is delta_ritz_rs without
them (int8 in every round, no sketch), the method as it was before 2026-12-07.

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
VARIANTS = [("exact", "exact", False, None), ("exact_triu", "exact_triu", False, None), ("oneshot", "oneshot", False, None),
            ("subspace_cold", "subspace", False, None), ("subspace", "subspace", True, None),
            ("subspace_f32", "subspace_f32", True, None),
            ("oja", "oja", True, None), ("iag", "iag", True, None),
            ("gossip_ring", "gossip", True, "ring"), ("gossip_grid", "gossip", True, "grid"),
            ("warm_ritz", "warm_ritz", True, None), ("delta_ritz", "delta_ritz", True, None),
            ("delta_power", "delta_power", True, None), ("delta_ritz_rs", "delta_ritz_rs", True, None),
            ("krylov_f32", "krylov_f32", True, None), ("gossip_grid_int8", "gossip_int8", True, "grid"),
            ("delta_ritz_rs_int8", "delta_ritz_rs", True, None)]
# delta_* options: the first round's rate aims at TOL (dpca_rate); delta_ritz_rs_int8 is delta_ritz_rs as before
# 2026-12-07 (int8 in every round, no complement sketch: dpca_certificate)
OPTIONS = {"delta_ritz_rs_int8": {"sketch": "never", "first_bits": 8}}


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


def worker(out, only):
    from mpi4py import MPI

    from stagelearn.analytics.comm_counter import CommCounter
    from stagelearn.analytics.dpca import local_problem, orthonormal, solve
    from stagelearn.analytics.dpca_graphs import grid_graph, ring_graph

    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    graphs = {"ring": ring_graph(p), "grid": grid_graph(tuple(MPI.Compute_dims(p, 2)))}
    results = []
    for h in HETEROGENEITY:
        state = {label: {"V": None, "guard": None, "state": None} for label, *_ in VARIANTS}
        for t in range(T):
            X, held = data(comm, h, t)
            A, mean, _ = local_problem(X, CommCounter(comm))
            C = np.empty_like(A)
            comm.Allreduce(A, C, op=MPI.SUM)  # evaluation only: exact spectrum for the predicted contraction
            lam = np.linalg.eigvalsh(C)[::-1]
            U, _ = solve("exact", A, K, comm)
            for label, alg, warm, graph in VARIANTS:
                if only and label not in only:
                    continue
                st = state[label]
                V0 = st["V"] if warm and st["V"] is not None else orthonormal(np.random.default_rng(100 + t).normal(size=(D, K)))
                max_rounds = 400 if alg == "iag" else 150
                comm.Barrier()
                t0 = time.perf_counter()
                V, info = solve(alg, A, K, comm, V0=V0, tol=TOL / 10, max_rounds=max_rounds, reference=U,
                                graph=graphs.get(graph), guard=st["guard"], state=st["state"], counter=CommCounter(comm),
                                rate_target=TOL, **OPTIONS.get(label, {}))
                wall = np.array([time.perf_counter() - t0])
                comm.Allreduce(MPI.IN_PLACE, wall, op=MPI.MAX)
                st["V"], st["guard"], st["state"] = V, info.get("guard", st["guard"]), info.get("state")
                ev_gap, nrmse = quality(comm, A, V, U, mean, held)
                hist = np.array(info["history"]) if info["history"] else np.zeros((0, 3))
                err = hist[:, 2].copy() if len(hist) else np.zeros(0)
                byt = hist[:, 1].copy() if len(hist) else np.zeros(0)
                wire = np.array(info["wire_history"], dtype=np.float64) if len(hist) else np.zeros(0)
                comm.Allreduce(MPI.IN_PLACE, err, op=MPI.MAX)  # worst rank (matters for gossip)
                comm.Allreduce(MPI.IN_PLACE, byt, op=MPI.SUM)  # all ranks together
                comm.Allreduce(MPI.IN_PLACE, wire, op=MPI.SUM)
                if comm.rank == 0:
                    results.append({"algorithm": label, "n_ranks": p, "heterogeneity": h, "t": t,
                                    "rounds": hist[:, 0].tolist() if len(hist) else [],
                                    "bytes": byt.tolist(), "wire": wire.tolist(), "sin_theta": err.tolist(), "ev_gap": ev_gap,
                                    "heldout_nrmse": nrmse, "wall_ms": 1e3 * float(wall[0]),
                                    "certificates": info.get("certificates", []),
                                    "rho": float(lam[K] / lam[K - 1])})
    if comm.rank == 0:
        with open(os.path.join(out, f"raw_{p}.json"), "w") as f:
            json.dump(results, f)


def first_at_tol(run):
    """(rounds, payload bytes, wire bytes) at the first round with sin theta <= TOL, else None."""
    for r, b, w, e in zip(run["rounds"], run["bytes"], run.get("wire", run["bytes"]), run["sin_theta"]):
        if e <= TOL:
            return r, b, w
    return None


def first_certified(run):
    """(rounds, bytes) at the first round whose certificate is <= TOL (the certified stop), else None."""
    for i, c in enumerate(run.get("certificates", [])):
        if c <= TOL:
            return run["rounds"][i], run["bytes"][i]
    return None


def summarise(out, ranks=RANKS, only=()):
    rows = []
    runs = [r for p in ranks for r in json.load(open(os.path.join(out, f"raw_{p}.json")))]
    for label, *_ in VARIANTS:
        if only and label not in only:
            continue
        for p in ranks:
            for h in HETEROGENEITY:
                mine = sorted((r for r in runs if r["algorithm"] == label and r["n_ranks"] == p and r["heterogeneity"] == h),
                              key=lambda r: r["t"])
                if not mine:
                    continue
                hits = [first_at_tol(r) for r in mine]
                certified = [first_certified(r) for r in mine[1:]]
                cert_ok = bool(mine[0].get("certificates")) and all(x is not None for x in certified)
                sound = all(c >= e for r in mine for c, e in zip(r.get("certificates", []), r["sin_theta"]))
                track = hits[1:]
                ok = all(x is not None for x in track)
                rows.append({
                    "algorithm": label, "n_ranks": p, "heterogeneity": h,
                    "bytes_to_tol": float(np.mean([x[1] for x in track])) if ok else "",
                    "wire_to_tol": float(np.mean([x[2] for x in track])) if ok else "",
                    "rounds_to_tol": float(np.mean([x[0] for x in track])) if ok else "",
                    "bytes_to_tol_t0": hits[0][1] if hits[0] else "",
                    "rounds_to_tol_t0": hits[0][0] if hits[0] else "",
                    "final_sin_theta": float(np.mean([r["sin_theta"][-1] for r in mine if r["sin_theta"]])),
                    "ev_gap": float(np.mean([r["ev_gap"] for r in mine[1:]])),
                    "heldout_nrmse": float(np.mean([r["heldout_nrmse"] for r in mine[1:]])),
                    "wall_ms": float(np.mean([r["wall_ms"] for r in mine[1:]])),
                    "bytes_certified": float(np.mean([x[1] for x in certified])) if cert_ok else "",
                    "rounds_certified": float(np.mean([x[0] for x in certified])) if cert_ok else "",
                    "certificate_sound": sound if mine[0].get("certificates") else "",
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
    lines += ["", "Target check (tracking, bytes all ranks; ratio to float32 warm subspace iteration; certified stop at 1e-3;"
              " wire = what leaves the ranks under ring collectives, comm_counter.py):", "",
              "| algorithm | ranks | heterogeneity | bytes to 1e-3 | ratio to subspace_f32 | wire bytes to 1e-3 | wire ratio | "
              "rounds | rounds subspace_f32 | "
              "bytes at certified stop | rounds at certified stop | certificate >= true sin θ in every round |",
              "|---|---|---|---|---|---|---|---|---|---|---|---|"]
    base = {(r["n_ranks"], r["heterogeneity"]): r for r in rows if r["algorithm"] == "subspace_f32"}
    for r in rows:
        b = base.get((r["n_ranks"], r["heterogeneity"]))
        if r["algorithm"] not in ("delta_ritz", "delta_power", "delta_ritz_rs", "delta_ritz_rs_int8", "warm_ritz", "subspace", "exact_triu",
                                  "subspace_f32", "krylov_f32", "gossip_grid_int8") or not b:
            continue
        ratio = r["bytes_to_tol"] / b["bytes_to_tol"] if r["bytes_to_tol"] != "" and b["bytes_to_tol"] != "" else ""
        wratio = r["wire_to_tol"] / b["wire_to_tol"] if r["wire_to_tol"] != "" and b["wire_to_tol"] != "" else ""
        lines.append(f"| {r['algorithm']} | {r['n_ranks']} | {r['heterogeneity']} | {fmt(r['bytes_to_tol'], ',.0f')} | "
                     f"{fmt(ratio, '.2f')} | {fmt(r['wire_to_tol'], ',.0f')} | {fmt(wratio, '.2f')} | "
                     f"{fmt(r['rounds_to_tol'], '.1f')} | {fmt(b['rounds_to_tol'], '.1f')} | "
                     + (f"{fmt(r['bytes_certified'], ',.0f')} | {fmt(r['rounds_certified'], '.1f')} | {r['certificate_sound']} |"
                        if r["certificate_sound"] != "" else "no certificate | | |"))
    with open(os.path.join(out, "summary.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    plot(runs, out)
    plot_contraction(runs, out)
    return rows, lines


def plot_contraction(runs, out):
    """sin theta per round of ``delta_ritz`` against the predicted contraction, per heterogeneity (largest rank count)."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    mine = [r for r in runs if r["algorithm"] == "delta_ritz" and r.get("certificates")]
    if not mine:
        return
    p = max(r["n_ranks"] for r in mine)
    fig, axes = plt.subplots(1, len(HETEROGENEITY), figsize=(4 * len(HETEROGENEITY), 3.8), layout="constrained")
    for ax, h in zip(axes, HETEROGENEITY):
        for r in (r for r in mine if r["n_ranks"] == p and r["heterogeneity"] == h and r["t"] in (0, 1, 3)):
            e = np.maximum(r["sin_theta"], 1e-16)
            line, = ax.semilogy(r["rounds"], e, ".-", label=f"t={r['t']} measured")
            ax.semilogy(r["rounds"], r["certificates"], ":", color=line.get_color(), label=f"t={r['t']} certificate")
            pred = e[0] * r["rho"] ** (np.asarray(r["rounds"]) - r["rounds"][0])
            ax.semilogy(r["rounds"], np.maximum(pred, 1e-16), "--", color=line.get_color(), lw=0.8,
                        label=f"t={r['t']} predicted (λk+1/λk={r['rho']:.2f})")
        ax.axhline(TOL, color="k", lw=0.8, ls="--")
        ax.set_title(f"delta_ritz, {p} ranks, heterogeneity {h}")
        ax.set_xlabel("round")
        ax.set_ylabel("sin θ")
    axes[0].legend(fontsize=6)
    fig.savefig(os.path.join(out, "delta_ritz_contraction.png"), dpi=100)
    plt.close(fig)


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
    ap.add_argument("--ranks", type=int, nargs="+", default=list(RANKS))
    ap.add_argument("--only", nargs="+", default=[], help="run only these variants (labels)")
    ap.add_argument("--d4096", action="store_true", help="the d = 4096 run instead (benchmarks/distributed_pca_d4096.py)")
    args = ap.parse_args()
    if args.d4096:
        import distributed_pca_d4096

        return distributed_pca_d4096.main(["--out", args.out, "--ranks", str(args.ranks[-1] if args.ranks != list(RANKS) else 8)])
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        return worker(args.out, args.only)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    for p in args.ranks:
        subprocess.run([mpiexec, "-n", str(p), sys.executable, os.path.abspath(__file__), "--worker", "--out", args.out]
                       + (["--only", *args.only] if args.only else []), check=True, env=env, timeout=1800)
    _, lines = summarise(args.out, args.ranks, args.only)
    print("\n".join(lines))


if __name__ == "__main__":
    main()
