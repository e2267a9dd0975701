"""The certified bound on sin theta (delta_ritz) and the complement sketch, against a serial eigendecomposition.

Every case builds ``p`` shares ``A_r`` in one process, the exact top-k basis ``U`` with
``numpy.linalg.eigh`` of ``C = sum_r A_r`` (independent of the code under test), a basis ``X``
with a guard column, a perturbed product ``G = C X + E`` with ``||E||_2 <= eps`` (random or
aimed at the wrong directions), and checks that neither bound is ever below the truth:
``lambda_max`` of ``C`` on the complement of ``X`` for the complement bounds, the exact sin theta
of the returned basis ``span(G Q[:, :k])`` for the certificate.
"""

import numpy as np
import pytest

from stagelearn.analytics.dpca import FactorShare, orthonormal, sin_theta
from stagelearn.analytics.dpca_certificate import combine, local_sketch
from stagelearn.analytics.dpca_delta import certificate, complement_lambda_max


def _shares(rng, d, p, spectrum, kind):
    """p PSD shares summing to a covariance with the given spectrum (kind: how the ranks' parts line up)."""
    Q = orthonormal(rng.normal(size=(d, d)))
    C = (Q * spectrum) @ Q.T
    if kind == "split":  # random PSD split: A_r = C^(1/2) W_r C^(1/2), W_r = S^(-1/2) M_r S^(-1/2), S = sum_r M_r
        ranks = [int(rng.integers(1, d + 1)) for _ in range(p)]  # M_r = F_r F_r^T of random rank (non-i.i.d. shares)
        ranks[-1] = max(ranks[-1], d - sum(ranks[:-1]))  # S of full rank
        M = [F @ F.T for F in (rng.normal(size=(d, r)) * rng.lognormal(0, 1, size=r) for r in ranks)]
        ws, Vs = np.linalg.eigh(sum(M))
        S_inv_half = (Vs / np.sqrt(ws)) @ Vs.T
        C_half = (Q * np.sqrt(spectrum)) @ Q.T
        shares = [C_half @ S_inv_half @ m @ S_inv_half @ C_half for m in M]
        shares = [(a + a.T) / 2 for a in shares]
        return shares, sum(shares)  # the truth is taken from the shares' own sum (equal to C up to round-off)
    if kind == "disjoint":  # every rank holds different eigen-directions (non-i.i.d.)
        parts = np.array_split(rng.permutation(d), p)
        return [(Q[:, i] * spectrum[i]) @ Q[:, i].T for i in parts], C
    # "aligned": the tail of every rank lies along the same directions (sum_r b_r is tight there)
    out = []
    for r in range(p):
        s = spectrum * rng.dirichlet(np.ones(p))[r] if r < p - 1 else None
        out.append(s)
    out[-1] = spectrum - sum(out[:-1])
    return [(Q * np.maximum(s, 0)) @ Q.T for s in out], C


def _case(rng, d, k, p, kind, gap, start_noise, eps_frac, aimed):
    tail = rng.random(d - k - 1) * (1.0 - gap) * rng.choice([0.2, 0.9, 0.999])
    spectrum = np.concatenate([np.sort(1 + 3 * rng.random(k - 1))[::-1] + 1, [1.0], [1.0 - gap], tail])
    shares, C = _shares(rng, d, p, spectrum, kind)
    w_true, E_true = np.linalg.eigh(sum(shares))
    U = E_true[:, ::-1][:, :k]
    top = E_true[:, ::-1]
    if start_noise < 0:  # the wrong invariant subspace: u_1..u_(k-1), u_(k+1), u_(k+2) (the crossing case)
        X = orthonormal(top[:, list(range(k - 1)) + [k, k + 1]] - start_noise * rng.normal(size=(d, k + 1)))
    else:
        X = orthonormal(top[:, :k + 1] + start_noise * rng.normal(size=(d, k + 1)))
    eps = eps_frac * float(w_true[-1])
    if aimed:  # push the product toward the (k+1)-th eigenvector, ||E||_2 = eps exactly
        g = rng.normal(size=k + 1)
        E = eps * np.outer(E_true[:, -k - 1], g / np.linalg.norm(g))
    else:
        E = rng.normal(size=(d, k + 1))
        E *= eps * rng.random() / np.linalg.norm(E, 2)
    G = C @ X + E
    M = X.T @ G
    w, Q = np.linalg.eigh((M + M.T) / 2)
    return shares, C, U, X, G, Q[:, ::-1], w[::-1], eps


def _true_complement_max(C, X):
    P = np.eye(C.shape[0]) - X @ X.T
    return float(np.linalg.eigvalsh(P @ C @ P)[-1])


@pytest.mark.parametrize("kind", ["split", "disjoint", "aligned"])
def test_bounds_are_never_below_the_truth(kind):
    """300 random cases per kind: gaps 0.5 to 1e-6, warm, poor and wrong-subspace starts, random and aimed errors."""
    rng = np.random.default_rng({"split": 1, "disjoint": 2, "aligned": 3}[kind])
    worst, certified = np.inf, 0
    for i in range(300):
        d, k, p = int(rng.integers(8, 40)), int(rng.integers(1, 5)), int(rng.integers(2, 9))
        gap = float(rng.choice([0.5, 0.1, 1e-2, 1e-4, 1e-6]))
        noise = float(rng.choice([0.0, 1e-6, 1e-3, 1e-1, 1.0, -1e-9, -1e-3]))  # < 0: wrong invariant subspace
        shares, C, U, X, G, Q, w, eps = _case(rng, d, k, p, kind, gap, noise, float(rng.choice([0, 1e-9, 1e-5, 1e-2])),
                                              aimed=bool(i % 2))
        truth_B = _true_complement_max(C, X)
        B_free = sum(complement_lambda_max(A, X) for A in shares)
        sk = [local_sketch(A, X, q=int(rng.integers(1, 3))) for A in shares]
        Zh = np.hstack([z for z, _, _ in sk])
        B_sketch = combine(Zh.T @ Zh, sum(e * e for _, e, _ in sk), sum(r for _, _, r in sk))
        assert B_free >= truth_B * (1 - 1e-12) and B_sketch >= truth_B * (1 - 1e-12), (i, truth_B, B_free, B_sketch)
        returned = orthonormal(G @ Q[:, :k])
        truth = min(sin_theta(returned, U), 1.0)  # a sine; the computed norm can exceed 1 by round-off
        for B in (B_free, min(B_free, B_sketch)):
            bound = certificate(X, G, Q, w, eps, B, k)["bound"]
            assert bound >= truth, (i, kind, gap, noise, bound, truth)
            if bound < 1:
                worst = min(worst, bound / max(truth, 1e-300))
                certified += 1
    assert certified >= 40  # the cases are not all vacuous
    print(kind, "certified", certified, "smallest bound/truth", worst)


def test_sketch_is_tight_where_the_ranks_complements_differ_and_the_free_bound_is_not():
    """Each rank's complement is one direction, all different: sum_r b_r = p mu, the truth and the sketch mu."""
    rng = np.random.default_rng(7)
    d, k, p = 40, 3, 8
    basis = orthonormal(rng.normal(size=(d, d)))
    top = basis[:, :k + 1] * np.sqrt([5.0, 4.0, 3.0, 1.0])
    shares = []
    for r in range(p):
        F = np.hstack([top / np.sqrt(p), 0.5 * basis[:, k + 1 + r:k + 2 + r]])  # rank r's own tail direction
        shares.append(FactorShare(F))
    C = sum(A.factor @ A.factor.T for A in shares)
    X = orthonormal(np.linalg.eigh(C)[1][:, ::-1][:, :k + 1])
    truth = _true_complement_max(C, X)
    B_free = sum(complement_lambda_max(A, X) for A in shares)
    sk = [local_sketch(A, X) for A in shares]
    Zh = np.hstack([z for z, _, _ in sk])
    B_sketch = combine(Zh.T @ Zh, sum(e * e for _, e, _ in sk), sum(r for _, _, r in sk))
    assert np.isclose(truth, 0.25) and np.isclose(B_free, p * 0.25)
    assert truth <= B_sketch <= 1.05 * truth


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_auto_sketch_certifies_where_the_free_bound_cannot(mpirun):
    """4 ranks, rank-specific tails whose sum_r b_r exceeds lambda_k: the free bound never certifies,
    the sketch does, and the certificate stays above the true error in every round."""
    proc = mpirun(4, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.dpca import FactorShare, orthonormal, solve
        comm = MPI.COMM_WORLD
        rng = np.random.default_rng(11)
        d, k, p = 48, 3, comm.size
        basis = orthonormal(rng.normal(size=(d, d)))
        top = basis[:, :k + 1] * np.sqrt([5.0, 4.0, 3.0, 1.5])
        own = basis[:, k + 1 + comm.rank:k + 2 + comm.rank] * 0.9  # lambda = 0.81 per rank, sum 3.24 > lambda_k = 3
        F = np.hstack([top / np.sqrt(p) + 0.02 * rng.normal(size=(d, k + 1)), own])
        A = FactorShare(F)
        C = sum(comm.allgather(F @ F.T))  # evaluation only
        U = np.linalg.eigh(C)[1][:, ::-1][:, :k]
        out = {}
        for mode in ("never", "auto"):
            V, info = solve("delta_ritz_rs", A, k, comm, tol=1e-3, max_rounds=25, reference=U, sketch=mode)
            err = [e for _, _, e in info["history"]]
            assert all(c >= e for c, e in zip(info["certificates"], err)), (mode, info["certificates"], err)
            out[mode] = info
        assert out["never"]["certificate"] == 1.0, (out["never"]["rounds"], out["never"]["certificates"])
        assert out["auto"]["certificate"] <= 1e-3 and any(out["auto"]["sketched"])
        if comm.rank == 0:
            print("OK", out["auto"]["rounds"], out["auto"]["certificates"])
    """)
    assert "OK" in proc.stdout


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_sketch_bytes_by_hand_on_4_ranks(mpirun):
    """The sketch changes no iterate: 'always' minus 'never' over 3 rounds is 3 sketches, counted by hand per rank
    (all-gather: d + 4 + 16; two-phase: off-rank int8 segments with a float32 scale, the two float64 scalars to
    rank 0, then the partial Gram's upper triangle in float64, rank 0 adding the two sums)."""
    proc = mpirun(4, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.dpca import solve
        from stagelearn.analytics.quantized_allreduce import segments
        comm = MPI.COMM_WORLD
        me, p, d, k = comm.rank, comm.size, 30, 2
        rng = np.random.default_rng(me)
        A = np.cov(rng.normal(size=(200, d)) * np.linspace(3, 0.1, d), rowvar=False)
        sent = {}
        for alg in ("delta_ritz", "delta_ritz_rs"):
            for mode in ("never", "always"):
                V, info = solve(alg, A, k, comm, tol=0.0, max_rounds=3, sketch=mode, first_bits=8)
                sent[alg, mode] = (info["bytes_sent"], info["rounds"], V)
            assert np.array_equal(sent[alg, "never"][2], sent[alg, "always"][2])
            assert sent[alg, "never"][1] == sent[alg, "always"][1] == 3
        gather = d + 4 + 16
        seg = segments(d, p)
        phase1 = sum(hi - lo + 4 for j, (lo, hi) in enumerate(seg) if j != me) + (16 if me != 0 else 0)
        phase2 = 8 * (p * (p + 1) // 2) + (16 if me == 0 else 0)
        assert sent["delta_ritz", "always"][0] - sent["delta_ritz", "never"][0] == 3 * gather
        assert sent["delta_ritz_rs", "always"][0] - sent["delta_ritz_rs", "never"][0] == 3 * (phase1 + phase2)
        if me == 0:
            print("OK")
    """)
    assert "OK" in proc.stdout
