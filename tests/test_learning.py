"""LearnerSet (staging/learning.py): a run's learners per variable, driven on fake MPI ranks (no mpiexec)."""

import json

import numpy as np
import pytest
from sklearn.decomposition import PCA

from stagelearn.analytics.config import LearnerConfig
from stagelearn.staging.errors import ConfigError
from stagelearn.staging.learning import LearnerSet

from fakes import run_ranks
from test_incremental_pca import _aligned, _data


def test_two_fake_ranks_learn_the_basis_of_the_concatenated_data():
    X = _data()
    parts = [X[:180], X[180:]]  # unequal, non-interleaved shares

    def rank(comm):
        r = comm.Get_rank()
        ls = LearnerSet(LearnerConfig(type="pca", n_components=6), comm)
        ls.add("T", (3, 4))
        for i, chunk in enumerate(np.array_split(parts[r], 3)):
            ls.learn("T", chunk, np.full(len(chunk), r), i)
        return ls

    sets = run_ranks(2, rank)
    ref = PCA(n_components=6, svd_solver="full").fit(X)
    for ls in sets:
        est = ls.learners["T"]
        assert est.kind == "pca" and est.ready and ls.models_finite() and ls.nonfinite_variables() == []
        np.testing.assert_allclose(_aligned(est.components_, ref.components_), ref.components_, atol=1e-8)
        np.testing.assert_allclose(est.explained_variance_, ref.explained_variance_, rtol=1e-10)
        np.testing.assert_allclose(est.mean_, ref.mean_, rtol=1e-12)
        assert est.n_samples_seen_ == len(X)
        assert ls.training_summary() == {} and ls.pace is None
    assert [ls.tiles_learned for ls in sets] == [180, 420]
    np.testing.assert_array_equal(sets[0].learners["T"].components_, sets[1].learners["T"].components_)
    k = sets[0].anomaly_components(0.5)["T"]
    assert 1 <= k <= 6 and k == sets[1].anomaly_components(0.5)["T"]


def test_nonfinite_tiles_are_kept_out_and_counted_on_all_ranks():
    X = _data(1, n=100)

    def rank(comm):
        r = comm.Get_rank()
        ls = LearnerSet(LearnerConfig(), comm)
        ls.add("T", (3, 4))
        tiles = X[r * 50:(r + 1) * 50].copy()
        if r == 1:
            tiles[[3, 7]] = np.nan
            tiles[9, 0] = np.inf
        kept_out = ls.learn("T", tiles, np.full(len(tiles), r), 0, step=12)
        return ls, kept_out

    (a, na), (b, nb) = run_ranks(2, rank)
    assert (na, nb) == (0, 3)
    assert a.nonfinite_tiles == b.nonfinite_tiles == {"T": 3}
    assert a.tiles_learned + b.tiles_learned == 97
    ref = PCA(svd_solver="full").fit(np.delete(X, [53, 57, 59], axis=0))
    np.testing.assert_allclose(a.learners["T"].mean_, ref.mean_, rtol=1e-12)


def test_unready_learner_is_not_finite_and_is_not_checkpointed(tmp_path):
    def rank(comm):
        ls = LearnerSet(LearnerConfig(), comm)
        ls.add("T", (3, 4))
        ls.save(str(tmp_path / "ckpt"), step=0, encoder_version=0, published=[], ranges={}, seen=0)
        return ls.nonfinite_variables(), ls.models_finite()

    assert run_ranks(1, rank) == [(["T"], False)]
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["learners"] == {}


def test_checkpoint_round_trip_restores_the_exact_learner(tmp_path):
    X = _data(2)
    directory = str(tmp_path / "checkpoint")

    def train(comm):
        r = comm.Get_rank()
        ls = LearnerSet(LearnerConfig(forgetting_factor=0.9), comm)
        ls.add("T", (12,))
        ls.add("U", (3, 4))
        for i, chunk in enumerate(np.array_split(X[r::2], 2)):
            ls.learn("T", chunk, np.full(len(chunk), r), i)
            ls.learn("U", chunk[::-1] * 2, np.full(len(chunk), r), i)
        ls.save(directory, step=7, encoder_version=1, published=[(1, 7)],
                ranges={"T": (-1.0, 1.0), "U": (0.0, 2.0)} if r == 0 else {}, seen=2)
        return ls

    before = run_ranks(2, train)

    def restore(comm):
        ls = LearnerSet(LearnerConfig(forgetting_factor=0.9), comm)
        return ls, ls.restore(directory)

    for ls, state in run_ranks(2, restore):
        assert ls.variables == ["T", "U"] and ls.tile_shapes == {"T": (12,), "U": (3, 4)}
        assert state["step"] == 7 and state["encoder_version"] == 1 and state["ranges"]["U"] == (0.0, 2.0)
        for var in ("T", "U"):
            a, b = before[0].learners[var], ls.learners[var]
            for name in ("mean_", "components_", "explained_variance_", "singular_values_", "var_"):
                np.testing.assert_array_equal(getattr(a, name), getattr(b, name))
            assert a.n_samples_seen_ == b.n_samples_seen_ and a.forgetting_factor == b.forgetting_factor
            np.testing.assert_array_equal(a.get_state()["arrays"]["scatter"], b.get_state()["arrays"]["scatter"])


def test_restore_refuses_a_learner_of_another_kind(tmp_path):
    directory = str(tmp_path / "checkpoint")

    def train(comm):
        ls = LearnerSet(LearnerConfig(), comm)
        ls.add("T", (12,))
        ls.learn("T", _data(3, n=40), np.zeros(40, dtype=int), 0)
        ls.save(directory, step=0, encoder_version=0, published=[], ranges={"T": (0.0, 1.0)}, seen=1)

    run_ranks(1, train)
    path = tmp_path / "checkpoint" / "state.json"
    state = json.loads(path.read_text())
    state["learners"]["T"]["kind"] = "ae"
    path.write_text(json.dumps(state))
    with pytest.raises(ConfigError, match="variable T holds a 'ae' learner"):
        run_ranks(1, lambda comm: LearnerSet(LearnerConfig(), comm).restore(directory))


def test_autoencoder_set_is_paced_holds_the_warmup_and_reports_training(tmp_path):
    pytest.importorskip("torch")
    cfg = LearnerConfig(type="autoencoder", warmup_steps=2,
                        autoencoder={"channels": [4], "iterations_per_step": 3, "adaptive_iterations": False,
                                     "device": "cpu", "threads": 0},
                        replay={"kind": "fifo", "max_mib": 1})
    tiles = _data(4, n=64, d=16).astype(np.float32)

    def rank(comm):
        ls = LearnerSet(cfg, comm)
        ls.add("T", (1, 4, 4))
        assert ls.pace is not None and ls.checkpointable and not ls.models_finite()
        ls.learn("T", tiles, np.zeros(len(tiles), dtype=np.int64), 0)
        assert not ls.learners["T"].ready  # held until the last warm-up step
        ls.pace_update(1.0, 1.0)
        ls.learn("T", tiles[::-1], np.zeros(len(tiles), dtype=np.int64), 1)
        ls.pace_update(1.0, 1.0)
        ls.save(str(tmp_path / "ckpt"), step=1, encoder_version=0, published=[], ranges={"T": (0.0, 1.0)}, seen=2)
        ls.close()
        return ls

    (ls,) = run_ranks(1, rank)
    est = ls.learners["T"]
    assert est.kind == "ae" and ls.models_finite() and est.trainer.n_iter_ == 6
    assert est.spec.tile_shape == (4, 4)  # convolutions over the axes longer than one
    summary = ls.training_summary()
    assert summary["training_iterations"] == 6 and summary["training_iterations_per_step_mean"] == 3.0
    assert summary["training_rounds_rank0"] > 0 and np.isfinite(summary["training_loss"])
    state = json.loads((tmp_path / "ckpt" / "state.json").read_text())
    assert state["learners"]["T"]["kind"] == "ae" and (tmp_path / "ckpt" / "rank0.npz").exists()
