"""learner.tol in staging (issue 17): validated, passed to DistributedPCA, and the codec rule it follows."""

import numpy as np
import pytest
from mpi4py import MPI
from pydantic import ValidationError

from stagelearn.analytics.config import AnomalyConfig, CodecConfig, LearnerConfig, stream_codec_conflicts
from stagelearn.analytics.dpca import orthonormal
from stagelearn.analytics.learners import make_learner
from stagelearn.analytics.learners.distributed_pca import codec_tolerance


def test_learner_tol_reaches_the_distributed_learner():
    est = make_learner(LearnerConfig(algorithm="delta_ritz", n_components=3, tol=2e-3), (4, 4), MPI.COMM_SELF)
    assert est.tol == 2e-3 and est.algorithm == "delta_ritz"
    assert make_learner(LearnerConfig(algorithm="delta_ritz_rs", n_components=3), (4, 4), MPI.COMM_SELF).tol == 1e-3


def test_without_learner_tol_a_run_stops_where_its_psnr_target_needs():
    """Staging passes codec.psnr_db (not with codec.error_bound): tol = 2 * 0.1 * 10**(-psnr/20), given tol wins."""
    from stagelearn.staging.config import RunConfig
    from stagelearn.staging.learning import LearnerSet

    def tol_of(codec, **learner):
        cfg = RunConfig.model_validate({"simulation": {"type": "heat2d"}, "codec": {"kind": "learned", **codec},
                                        "learner": {"algorithm": "delta_ritz", "n_components": 3, **learner}})
        return LearnerSet.for_run(cfg, MPI.COMM_SELF)._fresh("T", (4, 4)).tol  # as staging/service.py builds it

    assert tol_of({"psnr_db": 41}) == pytest.approx(2 * 0.1 * 10 ** (-41 / 20))  # 1.78e-3
    assert tol_of({"psnr_db": 60}) == pytest.approx(2e-4)
    assert tol_of({"psnr_db": 60}, tol=5e-3) == 5e-3
    assert tol_of({"error_bound": {"abs": 1e-3}}) == 1e-3
    assert tol_of({"psnr_db": 60}, algorithm="warm_ritz") == 1e-3  # its stop is an estimate: no guarantee to derive
    assert tol_of({"psnr_db": 200}) == 1e-6  # the floor: float32 products cannot buy finer bases


@pytest.mark.parametrize("keys, message", [
    ({"tol": 1e-2}, "learner.tol sets when an iterative PCA algorithm stops; type 'pca' with algorithm 'exact'"),
    ({"type": "autoencoder", "tol": 1e-2}, "type 'autoencoder' with algorithm 'exact' has none"),
    ({"algorithm": "delta_ritz", "n_components": 3, "tol": 0.0}, "greater than 0"),
    ({"algorithm": "delta_ritz", "n_components": 3, "tol": 1.0}, "less than 1"),
    ({"algorithm": "delta_ritz", "n_components": 3, "tol": float("inf")}, "finite number"),
])
def test_tol_is_refused_where_it_means_nothing(keys, message):
    with pytest.raises(ValidationError, match=message):
        LearnerConfig(**keys)


def test_the_stream_codec_names_tol_among_the_keys_it_would_ignore():
    lc = LearnerConfig(algorithm="delta_ritz", n_components=3, tol=2e-3)
    assert "learner.tol" in stream_codec_conflicts(lc, CodecConfig(), AnomalyConfig())
    assert stream_codec_conflicts(lc, CodecConfig(kind="learned"), AnomalyConfig()) == []


@pytest.mark.parametrize("psnr_db", [30.0, 41.0, 60.0])
def test_codec_tolerance_keeps_the_basis_error_below_its_share_of_the_budget(psnr_db):
    """Tiles at the extremes of their range (the largest variance a range allows), k-dim exact basis U (numpy eigh)
    and a basis V turned by the tolerance toward the complement in every column: the energy V leaves outside
    itself beyond what U leaves is at most 1 % of the codec's budget (d * span^2 * 10^(-psnr/10) per tile)."""
    rng = np.random.default_rng(int(psnr_db))
    d, k, n, span = 64, 8, 4000, 3.0
    signs = np.sign(rng.normal(size=(n, 4)) @ rng.normal(size=(4, d)) + 0.3 * rng.normal(size=(n, d)))
    tiles = 1.0 + span / 2 * signs  # values in [1 - span/2, 1 + span/2]
    C = np.cov(tiles, rowvar=False)
    w, E = np.linalg.eigh(C)
    U, W = E[:, ::-1][:, :k], E[:, ::-1][:, k:2 * k]
    s = codec_tolerance(psnr_db)
    V = orthonormal(U * np.sqrt(1 - s * s) + W * s)  # every principal angle is asin(s)
    assert np.linalg.norm(V - U @ (U.T @ V), 2) == pytest.approx(s, rel=1e-6)
    extra = np.trace(U.T @ C @ U) - np.trace(V.T @ C @ V)  # energy per tile leaving the basis beyond U's
    budget = d * span ** 2 * 10 ** (-psnr_db / 10)
    assert 0 <= extra <= 0.01 * budget, (extra, budget)
    print(psnr_db, "tolerance", s, "extra / budget", extra / budget)
