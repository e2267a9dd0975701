"""The one place that maps ``learner:`` settings to a learner class.

Callers (staging's :class:`~stagelearn.staging.learning.LearnerSet`, checkpoints) ask these
functions instead of looking at ``learner.type`` or ``learner.algorithm`` themselves.
"""

from __future__ import annotations

from .distributed_pca import DistributedPCA, codec_tolerance

#: Algorithms whose stop is a certified bound on sin theta: only there is a codec-derived tol a guarantee
#: (the others stop on an estimate or on the basis' movement, and keep 1e-3 unless learner.tol is given).
CERTIFIED = ("delta_ritz", "delta_ritz_rs")
#: The codec-derived tol is not taken below this (codec.psnr_db above 126 dB): finer bases cost rounds that
#: float32 products cannot buy.
TOL_FLOOR = 1e-6
from .incremental_pca import IncrementalPCA


STREAM_KIND = "stream"  # the stream codec's blend-weight learner (analytics/stream_learner.py)


def learner_kind(learner_cfg, codec_kind="learned"):
    """The model family a run trains, as checkpoints and encoders name it.

    Parameters
    ----------
    learner_cfg : LearnerConfig
    codec_kind : {"learned", "stream"}
        ``codec.kind``: with ``stream`` staging learns the stream codec's blend weights, whatever
        ``learner:`` says.

    Returns
    -------
    str
        ``"stream"``, ``"ae"`` or ``"pca"``.
    """
    if codec_kind == STREAM_KIND:
        return STREAM_KIND
    return "ae" if learner_cfg.type == "autoencoder" else "pca"


def checkpointable(learner_cfg, codec_kind="learned"):
    """True when the run's learner has a checkpoint state: the stream codec's blend-weight learner,
    the exact incremental PCA or the autoencoder (``codec_kind`` as in :func:`learner_kind`)."""
    return codec_kind == STREAM_KIND or learner_cfg.type == "autoencoder" or learner_cfg.algorithm == "exact"


def training_budget(learner_cfg):
    """Iterations per step and whether staging adapts them, for learners trained iteratively.

    Returns
    -------
    (int, bool) or None
        ``(iterations_per_step, adaptive)`` for the autoencoder; None for PCA (a step is one update).
    """
    if learner_cfg.type != "autoencoder":
        return None
    ac = learner_cfg.autoencoder
    return ac.iterations_per_step, ac.adaptive_iterations


def make_learner(learner_cfg, tile_shape, comm, *, seed_rank=None, psnr_db=None):
    """A fresh learner for one variable (no communication; its ``partial_fit`` is collective over ``comm``).

    Parameters
    ----------
    learner_cfg : LearnerConfig
        ``learner:`` section.
    tile_shape : tuple of int
        The variable's tile shape.
    comm : mpi4py.MPI.Comm
        The ranks that learn together.
    seed_rank : int, optional
        Seeds per-rank randomness (the autoencoder's replay buffer); default ``comm.Get_rank()``.
    psnr_db : float, optional
        ``codec.psnr_db`` of a run with a PSNR target: a certified algorithm (:data:`CERTIFIED`) without
        ``learner.tol`` stops at :func:`~.distributed_pca.codec_tolerance` of it, not below
        :data:`TOL_FLOOR`; otherwise (and when None) ``tol`` is 1e-3.

    Returns
    -------
    IncrementalPCA, DistributedPCA or AutoencoderLearner
        An object of the learner protocol (:mod:`stagelearn.analytics.learners`).
    """
    lc = learner_cfg
    if lc.type == "autoencoder":
        from .autoencoder import AutoencoderLearner  # imports torch: only for autoencoder runs

        return AutoencoderLearner(tile_shape, comm=comm, ae_cfg=lc.autoencoder, replay_cfg=lc.replay,
                                  warmup_steps=lc.warmup_steps,
                                  seed_rank=comm.Get_rank() if seed_rank is None else seed_rank)
    if lc.algorithm == "exact":
        return IncrementalPCA(lc.n_components, forgetting_factor=lc.forgetting_factor, comm=comm)
    tol = lc.tol if lc.tol is not None else 1e-3
    if lc.tol is None and psnr_db is not None and lc.algorithm in CERTIFIED:
        tol = max(codec_tolerance(psnr_db), TOL_FLOOR)
    return DistributedPCA(lc.n_components, algorithm=lc.algorithm, tol=tol, comm=comm)
