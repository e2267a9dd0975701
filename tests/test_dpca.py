"""Distributed PCA family: convergence to the exact basis, byte accounting, gossip graphs."""

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics.comm_counter import CommCounter
from stagelearn.analytics.dpca import local_problem, orthonormal, sin_theta, solve
from stagelearn.analytics.dpca_graphs import grid_graph, ring_graph
from stagelearn.analytics.dpca_certificate import sketch_message_bytes
from stagelearn.analytics.dpca_delta import _encode, _pack, message_bytes
from stagelearn.analytics.synthetic import sample

# rounds within which each algorithm reaches sin(theta) <= 1e-3 on i.i.d. data (d=16, k=3)
ROUNDS = {"subspace": 60, "subspace_f32": 60, "oja": 60, "iag": 600, "gossip": 60, "warm_ritz": 15, "delta_ritz": 15,
          "delta_power": 15, "delta_ritz_rs": 15,
          "krylov_f32": 30, "gossip_int8": 60}


def _crossing_problem(d=32, k=4, gap=0.02, seed=0):
    """Tiny gap lambda_k - lambda_(k+1) with a warm start on the wrong invariant subspace.

    The eigenvalues 5.12 and 5.10 have just crossed: the previous basis spans u1, u2, u3 and u5
    (an exact invariant subspace, residual 0), the guard is u6. Returns (C, U exact top-k, X0 = [V0, guard]).
    """
    rng = np.random.default_rng(seed)
    Q = orthonormal(rng.normal(size=(d, d)))
    lam = np.full(d, 0.5)
    lam[:5] = [10, 8, 6.4, 5.12, 5.12 - gap]
    C = (Q * lam) @ Q.T
    w, E = np.linalg.eigh(C)  # independent reference: numpy eigh on the full matrix
    return C, E[:, ::-1][:, :k], Q[:, [0, 1, 2, 4, 5]]


def test_byte_accounting_of_the_new_method_and_baselines():
    """delta_ritz sends exactly its packed message per round; float32 and upper-triangle baselines by hand."""
    d, k, rounds = 8, 2, 3
    A = np.cov(sample(0, 1, 300, d, k, heterogeneity=0.0), rowvar=False)
    codes, scale = _encode(np.ones((d, k + 1)))
    assert _pack(codes, scale, 1.0).nbytes == message_bytes(d, k) == d * (k + 1) + 4 * (k + 1) + 8
    _, info = solve("delta_ritz", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0, sketch="never")
    assert info["rounds"] == rounds and info["bytes_sent"] == rounds * message_bytes(d, k)
    _, info = solve("delta_ritz", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0, sketch="always")
    assert info["rounds"] == rounds and info["bytes_sent"] == rounds * (message_bytes(d, k) + d + 4 + 16)
    _, info = solve("delta_ritz", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0)  # "auto": never on one rank
    assert info["bytes_sent"] == rounds * message_bytes(d, k) and not any(info["sketched"])
    assert sketch_message_bytes(d) == d + 4 + 16
    _, info = solve("delta_power", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0, sketch="never")
    assert info["bytes_sent"] == rounds * message_bytes(d, k, guard_columns=0) == rounds * (d * k + 4 * k + 8)
    _, info = solve("subspace_f32", A, k, MPI.COMM_SELF, max_rounds=rounds, tol=0.0)
    assert info["bytes_sent"] == rounds * d * k * 4
    V, info = solve("exact_triu", A, k, MPI.COMM_SELF)
    assert info["bytes_sent"] == 8 * d * (d + 1) // 2 and info["rounds"] == 1
    U = np.linalg.eigh(A)[1][:, ::-1][:, :k]
    assert sin_theta(V, U) < 1e-12


def test_quantizer_error_is_within_half_a_step():
    D = np.random.default_rng(1).normal(size=(50, 3)) * [1e-3, 1.0, 1e4]
    codes, scale = _encode(D)
    assert np.all(np.abs(codes.astype(np.float64) * scale.astype(np.float64) - D) <= scale * 0.5 * (1 + 1e-6))


def test_certificate_holds_on_the_tiny_gap_crossing_that_fools_the_estimate():
    """warm_ritz stops at once with sin theta = 1 (residual 0); the certificate refuses, then converges."""
    C, U, X0 = _crossing_problem()
    k = U.shape[1]
    V, info = solve("warm_ritz", C, k, MPI.COMM_SELF, V0=X0[:, :k], guard=X0[:, k:], tol=1e-3, max_rounds=50)
    assert info["rounds"] <= 2 and sin_theta(V, U) > 0.9  # the old rule is fooled
    V, info = solve("delta_ritz", C, k, MPI.COMM_SELF, V0=X0[:, :k], state={"X": X0, "Y": np.zeros((1,) + X0.shape)},
                    tol=1e-3, max_rounds=80, reference=U)
    errors = [e for _, _, e in info["history"]]
    assert all(c >= e for c, e in zip(info["certificates"], errors)), list(zip(info["certificates"], errors))
    assert info["certificates"][0] == 1.0  # nothing certified while the wrong subspace is held
    assert sin_theta(V, U) <= info["certificate"] <= 1e-3


def test_patience_stops_an_update_that_certifies_nothing():
    """The crossing case: the certificate stays 1.0 for 7 rounds; patience 5 stops after 6, saying so."""
    C, U, X0 = _crossing_problem()
    k = U.shape[1]
    state = {"X": X0, "Y": np.zeros((1,) + X0.shape)}
    V, info = solve("delta_ritz", C, k, MPI.COMM_SELF, V0=X0[:, :k], state=state, tol=1e-3, max_rounds=80, patience=5)
    assert info["rounds"] == 6 and info["stalled"] and info["certificates"] == [1.0] * 6
    assert sin_theta(V, U) <= info["certificate"]
    V, info = solve("delta_ritz", C, k, MPI.COMM_SELF, V0=V, state=info["state"], tol=1e-3, max_rounds=80, patience=5)
    assert "stalled" not in info and sin_theta(V, U) <= info["certificate"] <= 1e-3  # the next update goes on


@pytest.mark.parametrize("gap", [0.5, 0.05, 0.005])
@pytest.mark.parametrize("noise", [1e-3, 1e-1, None])
def test_certificate_is_an_upper_bound_in_every_round(gap, noise):
    d, k = 24, 3
    rng = np.random.default_rng(int(gap * 1000) + (0 if noise is None else int(1 / noise)))
    Q = orthonormal(rng.normal(size=(d, d)))
    lam = np.concatenate([[9.0, 7.0, 5.0, 5.0 - gap], 3.0 * rng.random(d - 4)])
    C = (Q * lam) @ Q.T
    U = np.linalg.eigh(C)[1][:, ::-1][:, :k]
    V0 = None if noise is None else orthonormal(U + noise * rng.normal(size=(d, k)))
    for alg in ("delta_ritz", "delta_power"):
        V, info = solve(alg, C, k, MPI.COMM_SELF, V0=V0, tol=1e-6, max_rounds=40, reference=U)
        errors = [e for _, _, e in info["history"]]
        assert all(c >= e for c, e in zip(info["certificates"], errors)), (alg, list(zip(info["certificates"], errors)))


def test_byte_accounting_matches_a_hand_count():
    """Subspace iteration on 1 rank: (d + 1) floats for the mean, then d x k floats per round."""
    d, k = 8, 2
    X = sample(0, 1, 200, d, k, heterogeneity=0.0)
    counter = CommCounter(MPI.COMM_SELF)
    A, _, _ = local_problem(X, counter)
    assert counter.bytes_sent == (d + 1) * 8 and counter.rounds == 1
    _, info = solve("subspace", A, k, MPI.COMM_SELF, counter=counter, max_rounds=5, tol=0.0)
    assert info["rounds"] == 1 + 5 and info["bytes_sent"] == (d + 1) * 8 + 5 * d * k * 8


def test_graphs():
    assert ring_graph(4) == [[1, 3], [0, 2], [1, 3], [0, 2]]
    assert grid_graph((2, 2)) == [[1, 2], [0, 3], [0, 3], [1, 2]]
    g = grid_graph((2, 3))
    assert all(r in g[n] for r in range(6) for n in g[r])  # symmetric


@pytest.mark.mpi
@pytest.mark.timeout(240)
@pytest.mark.parametrize("n_ranks", [1, 2, 4])
def test_every_algorithm_converges_on_iid_data(mpirun, n_ranks):
    proc = mpirun(n_ranks, f"""
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.comm_counter import CommCounter
        from stagelearn.analytics.dpca import ALGORITHMS, local_problem, sin_theta, solve
        from stagelearn.analytics.dpca_graphs import grid_graph
        from stagelearn.analytics.synthetic import sample
        comm = MPI.COMM_WORLD
        d, k = 16, 3
        X = sample(comm.rank, comm.size, 4000, d, k, heterogeneity=0.0)
        A, _, _ = local_problem(X, CommCounter(comm))
        U, _ = solve("exact", A, k, comm)
        rounds = {ROUNDS!r}
        for alg in ALGORITHMS:
            graphs = [None, grid_graph((2, 2))] if alg == "gossip" and comm.size == 4 else [None]
            for graph in graphs:
                V, info = solve(alg, A, k, comm, reference=U, tol=1e-4, max_rounds=rounds.get(alg, 1), graph=graph)
                err = sin_theta(V, U)
                # one-shot averaging is exact only in the limit of infinite samples
                limit = 5e-2 if alg == "oneshot" else 1e-3
                assert err <= limit, (alg, graph, err, info["rounds"])
                if comm.rank == 0:
                    print(alg, "grid" if graph else "ring/all", info["rounds"], "%.1e" % err)
    """)
    assert len(proc.stdout.splitlines()) >= 7


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_streaming_estimator_tracks_exact_pca(mpirun):
    proc = mpirun(3, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics import IncrementalPCA
        from stagelearn.analytics.dpca import sin_theta
        from stagelearn.analytics.learners import DistributedPCA
        from stagelearn.analytics.synthetic import sample
        comm = MPI.COMM_WORLD
        est = DistributedPCA(3, algorithm="warm_ritz", comm=comm, tol=1e-4)
        ref = IncrementalPCA(3, comm=comm)
        for t in range(4):
            X = sample(comm.rank, comm.size, 500, 16, 3, heterogeneity=1.0, t=t, drift=0.05)
            assert est.partial_fit(X) is est
            ref.partial_fit(X)
            err = sin_theta(est.components_.T, ref.components_.T)
            assert err < 1e-3, (t, err)
        np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-4)
        np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-10)
        if comm.rank == 0:
            print("OK", est.rounds_, est.bytes_sent_)
    """)
    assert "OK" in proc.stdout


@pytest.mark.mpi
@pytest.mark.timeout(240)
def test_delta_ritz_tracks_the_exact_basis_within_its_certificate(mpirun):
    """4 ranks, disjoint dominant directions, drifting: every step certified <= 1e-3 and truly within it."""
    proc = mpirun(4, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics.comm_counter import CommCounter
        from stagelearn.analytics.dpca import local_problem, sin_theta, solve
        from stagelearn.analytics.dpca_delta import message_bytes
        from stagelearn.analytics.learners import DistributedPCA
        from stagelearn.analytics.synthetic import sample
        comm = MPI.COMM_WORLD
        d, k = 32, 4
        V, state = None, None
        est = DistributedPCA(k, algorithm="delta_ritz", comm=comm, tol=1e-3)
        seen = []
        for t in range(5):
            X = sample(comm.rank, comm.size, 1500, d, k, heterogeneity=1.0, t=t, drift=0.02)
            seen.append(X)
            A, _, _ = local_problem(X, CommCounter(comm))
            C = comm.allreduce(A)  # evaluation only
            U = np.linalg.eigh(C)[1][:, ::-1][:, :k]
            counter = CommCounter(comm)
            V, info = solve("delta_ritz", A, k, comm, V0=V, state=state, tol=1e-3, max_rounds=20, reference=U,
                            counter=counter)
            state = info["state"]
            errors = [e for _, _, e in info["history"]]
            assert all(c >= e for c, e in zip(info["certificates"], errors)), (t, info["certificates"], errors)
            assert sin_theta(V, U) <= info["certificate"] <= 1e-3, (t, sin_theta(V, U), info["certificate"])
            sent = sum(message_bytes(d, k, bits=b) for b in info["bits"]) + sum(info["sketched"]) * (d + 20)
            sent += info["rounds"] * (comm.size - 1) if comm.rank == 0 else 0  # rank 0's control byte (dpca_control)
            assert counter.bytes_sent == sent
            assert comm.allreduce(V.tobytes()) == V.tobytes() * comm.size  # identical basis on every rank
            if t > 0:
                assert info["rounds"] <= 4, (t, info["rounds"])
            est.partial_fit(X)  # the streaming estimator's covariance is that of all data seen so far
            A_all, _, _ = local_problem(np.vstack(seen), CommCounter(comm))
            U_all = np.linalg.eigh(comm.allreduce(A_all))[1][:, ::-1][:, :k]
            assert sin_theta(est.components_.T, U_all) <= est.certificate_ <= 1e-3, (t, est.certificate_)
        if comm.rank == 0:
            print("OK", est.rounds_, est.bytes_sent_)
    """)
    assert "OK" in proc.stdout
