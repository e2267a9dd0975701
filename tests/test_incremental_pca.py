"""IncrementalPCA: exact global basis, checked against scikit-learn PCA on the gathered data."""

import numpy as np
import pytest
from sklearn.decomposition import PCA

from stagelearn.analytics import IncrementalPCA


def _data(seed=0, n=600, d=12):
    rng = np.random.default_rng(seed)
    scales = np.linspace(3.0, 0.2, d)  # distinct variances: well-defined components
    basis = np.linalg.qr(rng.normal(size=(d, d)))[0]
    return (rng.normal(size=(n, d)) * scales) @ basis.T + rng.normal(size=d) * 5


def _aligned(a, b):
    """Flip the rows of ``a`` to the sign of ``b``."""
    signs = np.sign(np.sum(a * b, axis=1))
    return a * signs[:, None]


def test_matches_sklearn_pca_in_batches():
    X = _data()
    est = IncrementalPCA(n_components=5)
    for batch in np.array_split(X, 7):
        assert est.partial_fit(batch) is est
    ref = PCA(n_components=5, svd_solver="full").fit(X)
    np.testing.assert_allclose(_aligned(est.components_, ref.components_), ref.components_, atol=1e-8)
    np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-10)
    np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-10)
    np.testing.assert_allclose(est.singular_values_, ref.singular_values_, rtol=1e-10)
    np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-12)
    np.testing.assert_allclose(est.noise_variance_, ref.noise_variance_, rtol=1e-10)
    assert est.n_samples_seen_ == X.shape[0]
    Z = est.transform(X)
    np.testing.assert_allclose(np.abs(Z), np.abs(ref.transform(X)), atol=1e-8)
    np.testing.assert_allclose(est.inverse_transform(Z), ref.inverse_transform(ref.transform(X)), atol=1e-8)


def test_full_basis_reconstructs_exactly():
    X = _data(1)
    est = IncrementalPCA().partial_fit(X[:300]).partial_fit(X[300:])
    assert est.n_components_ == X.shape[1]
    np.testing.assert_allclose(est.inverse_transform(est.transform(X)), X, atol=1e-9)
    np.testing.assert_allclose(est.components_ @ est.components_.T, np.eye(X.shape[1]), atol=1e-12)


def test_empty_batches_are_noops():
    X = _data(2)
    est = IncrementalPCA(3).partial_fit(X)
    comps = est.components_.copy()
    est.partial_fit(np.zeros((0, X.shape[1])))
    np.testing.assert_array_equal(est.components_, comps)


@pytest.mark.parametrize("bad, match", [
    (np.zeros(5), "2-D"),
    (np.array([[1.0, np.nan]]), "NaN"),
])
def test_bad_input_raises(bad, match):
    with pytest.raises(ValueError, match=match):
        IncrementalPCA().partial_fit(bad)


def test_feature_count_change_raises():
    est = IncrementalPCA().partial_fit(np.ones((4, 3)) + np.arange(12).reshape(4, 3))
    with pytest.raises(ValueError, match="changed from 3 to 4"):
        est.partial_fit(np.ones((4, 4)))


def test_forgetting_factor_follows_drift():
    rng = np.random.default_rng(3)
    old = rng.normal(size=(2000, 4)) * [5, 1, 1, 1]
    new = rng.normal(size=(2000, 4)) * [1, 1, 1, 5]
    exact = IncrementalPCA(1).partial_fit(old).partial_fit(new)
    forget = IncrementalPCA(1, forgetting_factor=0.01).partial_fit(old).partial_fit(new)
    assert abs(forget.components_[0, 3]) > 0.99  # follows the new dominant direction
    assert abs(exact.components_[0, 3]) < 0.99 or abs(exact.components_[0, 0]) > 0.5


@pytest.mark.mpi
@pytest.mark.timeout(180)
@pytest.mark.parametrize("n_ranks", [1, 2, 3])
def test_distributed_matches_sklearn_on_gathered_data(mpirun, n_ranks):
    """Non-i.i.d. partition (each rank its own mean and dominant direction), uneven sizes, 1-3 ranks."""
    proc = mpirun(n_ranks, """
        import numpy as np
        from mpi4py import MPI
        from sklearn.decomposition import PCA
        from stagelearn.analytics import IncrementalPCA

        comm = MPI.COMM_WORLD
        r, size, d = comm.Get_rank(), comm.Get_size(), 10

        def batch(rank, step):  # deterministic, so rank 0 can rebuild every rank's data
            rng = np.random.default_rng(100 * step + rank)
            n = 20 + 7 * rank + 3 * step if (rank + step) % 4 else 0   # uneven sizes, some empty
            scales = np.ones(d); scales[(rank + step) % d] = 4.0 + rank  # rank-specific dominant direction
            return rng.normal(size=(n, d)) * scales + rank * 2.0 + np.arange(d)

        est = IncrementalPCA(n_components=4, comm=comm)
        for step in range(5):
            est.partial_fit(batch(r, step))
        ref_comps = est.components_.copy()
        comm.Bcast(ref_comps, root=0)
        same = np.array([int(np.array_equal(ref_comps, est.components_))])
        comm.Allreduce(MPI.IN_PLACE, same, op=MPI.MIN)
        assert same[0] == 1, "ranks hold different bases"
        if r == 0:
            allX = np.concatenate([batch(q, s) for s in range(5) for q in range(size)])
            ref = PCA(n_components=4, svd_solver="full").fit(allX)
            signs = np.sign(np.sum(est.components_ * ref.components_, axis=1))
            np.testing.assert_allclose(est.components_ * signs[:, None], ref.components_, atol=1e-7)
            np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-5)
            np.testing.assert_allclose(est.explained_variance_ratio_, ref.explained_variance_ratio_, rtol=1e-5)
            np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-10)
            assert est.n_samples_seen_ == allX.shape[0]
            print("OK", allX.shape)
    """)
    assert "OK" in proc.stdout


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_bad_batch_on_one_rank_raises_on_all(mpirun):
    """A NaN on one rank must not leave the other ranks hanging in the next collective."""
    proc = mpirun(2, """
        import numpy as np
        from mpi4py import MPI
        from stagelearn.analytics import IncrementalPCA

        comm = MPI.COMM_WORLD
        X = np.random.default_rng(comm.rank).normal(size=(10, 3))
        if comm.rank == 1:
            X[0, 0] = np.nan
        try:
            IncrementalPCA(comm=comm).partial_fit(X)
        except ValueError as exc:
            print("rank", comm.rank, "raised:", exc)
    """)
    assert proc.stdout.count("raised:") == 2


def test_state_round_trip_continues_bit_for_bit():
    """get_state/set_state (what checkpoints store) rebuild a learner that goes on exactly as the original."""
    X = _data(3)
    a = IncrementalPCA(n_components=4, forgetting_factor=0.95).partial_fit(X[:300])
    state = a.get_state()
    assert state["rank_arrays"] == {} and state["meta"]["kind"] == "pca"
    b = IncrementalPCA().set_state(state)
    assert (b.n_components, b.forgetting_factor) == (4, 0.95)
    a.partial_fit(X[300:])
    b.partial_fit(X[300:])
    for name in ("mean_", "components_", "explained_variance_", "singular_values_", "var_"):
        np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
    with pytest.raises(ValueError, match="not fitted"):
        IncrementalPCA().get_state()
    with pytest.raises(ValueError, match="'ae' state"):
        IncrementalPCA().set_state({"meta": {"kind": "ae"}, "arrays": {}})
