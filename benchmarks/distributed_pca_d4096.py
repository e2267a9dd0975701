"""Distributed PCA at d = 4096: 16^3 tiles of the 3-D Gray-Scott mock, where the exact merge is too expensive.

    python benchmarks/distributed_pca.py --d4096            # 8 ranks (oversubscribed is fine), ~2-4 min
    python benchmarks/distributed_pca_d4096.py --ranks 8    # the same

The mock runs on the benchmark's ranks (64^3 grid, the tutorial's parameters, noise 1e-7), each rank
holding the block of its Cartesian decomposition; its V field is cut into 16x16x16 tiles (d = 4096),
so every rank holds the tiles of its own subdomain (8 ranks: 8 tiles each, 64 in all). Time steps
t = 0..T-1 are 10 simulation steps apart after 300 steps of spin-up. Each rank keeps its share of the
covariance as a factor (:class:`stagelearn.analytics.dpca.FactorShare`, d x n_r): a d x d share would
be 134 MB per rank, and the exact merge all-reduces it (``8 d^2`` bytes per rank per update, then an
O(d^3) eigendecomposition). The iterative methods run warm-started from the previous step (t >= 1)
and the error is measured against the exact top-k of the pooled samples (an SVD of all tiles,
evaluation only). The delta_* methods run with their defaults (complement sketch, first-round rate control
aimed at 1e-3); "delta_ritz_rs:never" is delta_ritz_rs without them. Prints the table and the certificate
against the true sin theta per round, and writes results/distributed_pca/d4096.{json,md}.
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
L, TILE, K, T, SPIN_UP, GAP, TOL = 64, 16, 4, 5, 300, 10, 1e-3
ALGORITHMS = ("subspace_f32", "krylov_f32", "warm_ritz", "delta_ritz", "delta_ritz_rs", "delta_ritz_rs:never")
# "name:never": the same algorithm without the complement sketch (analytics/dpca_certificate.py) and with int8
# codes in every round (no rate control, analytics/dpca_rate.py): the method as before 2026-12-07


def worker(out):
    from mpi4py import MPI

    from stagelearn.analytics.comm_counter import CommCounter
    from stagelearn.analytics.dpca import local_factor, sin_theta, solve
    from stagelearn.analytics.tiling import to_tiles
    from stagelearn.sim_mocks import GrayScott3D

    comm = MPI.COMM_WORLD
    p = comm.Get_size()
    gs = GrayScott3D(L, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=comm)
    gs.advance(SPIN_UP)
    d = TILE ** 3
    state = {a: {"V": None, "guard": None, "state": None} for a in ALGORITHMS}
    rows = []
    for t in range(T):
        gs.advance(GAP)
        tiles = to_tiles(np.ascontiguousarray(gs.fields()["V"]), (TILE,) * 3).astype(np.float64)
        share, mean, n = local_factor(tiles, CommCounter(comm))
        everything = np.vstack(comm.allgather(tiles))  # evaluation only: the exact basis of the pooled tiles
        s, Vt = np.linalg.svd(everything - everything.mean(axis=0), full_matrices=False)[1:]
        U, lam = Vt[:K].T, s ** 2 / max(n - 1, 1)
        for name in ALGORITHMS:
            alg, _, sketch = name.partition(":")
            st = state[name]
            comm.Barrier()
            t0 = time.perf_counter()
            counter = CommCounter(comm)
            V, info = solve(alg, share, K, comm, V0=st["V"], tol=TOL / 10, max_rounds=60, reference=U,
                            guard=st["guard"], state=st["state"], counter=counter, sketch=sketch or "auto",
                            rate_target=TOL, first_bits=8 if sketch else "auto")
            wall = comm.allreduce(time.perf_counter() - t0, op=MPI.MAX)
            st["V"], st["guard"], st["state"] = V, info.get("guard", st["guard"]), info.get("state")
            err = [e for _, _, e in info["history"]]
            hit = next((i for i, e in enumerate(err) if e <= TOL), None)
            certs = info.get("certificates", [])
            cert_hit = next((i for i, c in enumerate(certs) if c <= TOL), None)
            mine = (info["history"][hit][1], info["wire_history"][hit]) if hit is not None else (0, 0)
            total = comm.allreduce(np.array(mine, dtype=np.float64))  # all ranks together
            if comm.rank == 0:
                rows.append({"algorithm": name, "t": t, "ranks": p, "d": d, "k": K, "tiles": n,
                             "rounds_to_tol": None if hit is None else info["history"][hit][0],
                             "bytes_to_tol": None if hit is None else float(total[0]),
                             "wire_to_tol": None if hit is None else float(total[1]),
                             "rounds_certified": None if cert_hit is None else info["history"][cert_hit][0],
                             "final_sin_theta": sin_theta(V, U), "certificate": info.get("certificate"),
                             "sound": all(c >= e for c, e in zip(certs, err)) if certs else None,
                             "rho": float(lam[K] / lam[K - 1]), "wall_ms": 1e3 * wall,
                             "sin_theta_per_round": err, "certificate_per_round": certs,
                             "free_certificate_per_round": info.get("certificates_free", []),
                             "sketched_per_round": info.get("sketched", []),
                             "bytes_per_round": [b for _, b, _ in info["history"]],
                             "bits_per_round": info.get("bits", [])})
    if comm.rank == 0:
        with open(os.path.join(out, "d4096.json"), "w") as f:
            json.dump(rows, f, indent=1)


def table(rows, p):
    d = TILE ** 3
    fmt = lambda x, f: "never" if x is None else format(x, f)
    lines = [f"d = {d} (16^3 tiles of a {L}^3 Gray-Scott V field), k = {K}, {p} ranks, {rows[0]['tiles']} tiles; "
             f"exact merge: {8 * d * d * p:,} bytes per update (all ranks; upper triangle {4 * d * (d + 1) * p:,}) "
             f"and a d x d eigendecomposition; λ_(k+1)/λ_k = " + ", ".join(f"{r['rho']:.2f}" for r in rows if r["algorithm"] == ALGORITHMS[0]),
             "", "| algorithm | t | rounds to 1e-3 | bytes to 1e-3 (all ranks) | wire bytes to 1e-3 | rounds to certified 1e-3 | "
             "final sin θ | certificate | certificate >= sin θ every round | ms |", "|---|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['algorithm']} | {r['t']} | {fmt(r['rounds_to_tol'], 'd')} | {fmt(r['bytes_to_tol'], ',.0f')} | "
                     f"{fmt(r['wire_to_tol'], ',.0f')} | {fmt(r['rounds_certified'], 'd')} | {r['final_sin_theta']:.1e} | "
                     f"{'' if r['certificate'] is None else format(r['certificate'], '.1e')} | "
                     f"{'' if r['sound'] is None else r['sound']} | {r['wall_ms']:.0f} |")
    lines += ["", "Certificate against the true sin θ per round (`delta_ritz_rs`, rank 0's cumulative payload bytes; "
              "free: the bound with `Σ_r b_r` alone; sketch: whether the round sent the complement sketch):", "",
              "| t | round | bits | true sin θ | certificate | free bound | sketch | bytes (rank 0) |", "|---|---|---|---|---|---|---|---|"]
    for r in rows:
        if r["algorithm"] != "delta_ritz_rs":
            continue
        for i, e in enumerate(r["sin_theta_per_round"]):
            lines.append(f"| {r['t']} | {i + 1} | {r['bits_per_round'][i]} | {e:.1e} | {r['certificate_per_round'][i]:.1e} | "
                         f"{r['free_certificate_per_round'][i]:.1e} | {'yes' if r['sketched_per_round'][i] else ''} | "
                         f"{r['bytes_per_round'][i]:,} |")
    return lines


def main(argv=None):
    ap = argparse.ArgumentParser()
    ap.add_argument("--out", default=os.path.join(REPO, "results", "distributed_pca"))
    ap.add_argument("--worker", action="store_true")
    ap.add_argument("--ranks", type=int, default=8)
    args = ap.parse_args(argv)
    os.makedirs(args.out, exist_ok=True)
    if args.worker:
        return worker(args.out)
    mpiexec = os.path.join(os.path.dirname(sys.executable), "mpiexec")
    env = dict(os.environ, OMP_NUM_THREADS="1", OPENBLAS_NUM_THREADS="1")
    subprocess.run([mpiexec, "-n", str(args.ranks), sys.executable, os.path.abspath(__file__), "--worker", "--out",
                    args.out], check=True, env=env, timeout=1800)
    with open(os.path.join(args.out, "d4096.json")) as f:
        lines = table(json.load(f), args.ranks)
    with open(os.path.join(args.out, "d4096.md"), "w") as f:
        f.write("\n".join(lines) + "\n")
    print("\n".join(lines))


if __name__ == "__main__":
    main()
