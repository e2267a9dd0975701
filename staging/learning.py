"""A staging run's learners, one per variable: feeding them, checking them, saving them.

:class:`LearnerSet` holds what ``staging/service.py`` used to keep about learning. API::

    ls = LearnerSet(cfg.learner, comm, seed_rank=comm.Get_rank())
    ls.add("T", (4, 4, 4))                    # a learner for variable T (no communication)
    ls.learn("T", tiles, sources, step_index)  # collective: every rank, every variable, every step
    ls.pace_update(wait_s, busy_s)            # collective when the learner is paced (autoencoder)
    ls.models_finite()                        # False (and logged on rank 0) if a model diverged
    ls.publishable()                          # some model ready, every ready one finite
    ls.ready_view()                           # the variables whose model is ready (for an encoder)
    ls.nonfinite_variables()                  # variables whose model is missing or non-finite
    ls.anomaly_components(0.999)              # {var: PCA components explaining that fraction}
    ls.save(directory, step=..., encoder_version=..., published=..., ranges=..., seen=...)
    state = ls.restore(directory)             # collective; learners and tile shapes from a checkpoint
    ls.training_summary()                     # the training_* and learner_* entries of staging_summary.json
    ls.close()                                # at the end of the run (collective-free)

Attributes: ``learners`` (dict variable -> learner of the protocol of
:mod:`stagelearn.analytics.learners`; give it to ``Encoder.from_learners``), ``tile_shapes``
(dict variable -> tuple), ``variables`` (names in the order added), ``tiles_learned`` (tiles this
rank fed), ``nonfinite_tiles`` (dict variable -> tiles with NaN/Inf kept out, summed over all
ranks), ``pace`` (:class:`~.pacing.TrainingPace` or None), ``checkpointable`` (bool).
"""

from __future__ import annotations

import logging
import math

import numpy as np

from ..analytics.learners import checkpointable, make_learner, training_budget
from ..analytics.stream_learner import StreamWeightsLearner
from ..analytics.stream_model import MAX_LEVELS, statistics
from ..analytics.stream_payload import StreamPayloadError, is_stream_payload
from ..analytics.stream_step import decode_stream_block, payload_axis_order
from . import checkpoint
from .pacing import TrainingPace

logger = logging.getLogger(__name__)


class LearnerSet:
    """The learners of one staging run, one per variable (collective over ``comm`` where noted).

    Parameters
    ----------
    learner_cfg : LearnerConfig
        ``learner:`` section.
    comm : mpi4py.MPI.Comm
        The staging ranks; they learn together.
    seed_rank : int, optional
        Seeds per-rank randomness (replay buffers); default ``comm.Get_rank()``.
    codec_kind : {"learned", "stream"}
        ``codec.kind``: ``stream`` learns the stream codec's blend weights instead of ``learner.type``.
    entropy : {"rans", "adaptive"}
        ``codec.entropy`` of the stream models it publishes.
    psnr_db : float, optional
        ``codec.psnr_db`` when the codec has a PSNR target (no ``codec.error_bound``): sets an iterative
        PCA learner's ``tol`` when ``learner.tol`` is not given
        (:func:`~stagelearn.analytics.learners.distributed_pca.codec_tolerance`).
    """

    def __init__(self, learner_cfg, comm, *, seed_rank=None, codec_kind="learned", entropy="rans", psnr_db=None):
        self.cfg, self.comm = learner_cfg, comm
        self.psnr_db = psnr_db  # codec.psnr_db when the codec has a PSNR target: an iterative PCA's default tol
        self.rank = comm.Get_rank()
        self.seed_rank = self.rank if seed_rank is None else int(seed_rank)
        self.learners, self.tile_shapes, self.variables = {}, {}, []
        self.tiles_learned, self.nonfinite_tiles = 0, {}
        budget = training_budget(learner_cfg)
        self.pace = TrainingPace(budget[0], adaptive=budget[1]) if budget else None
        self.stream = codec_kind == "stream"  # learners of the stream codec's blend weights
        self.entropy = entropy  # codec.entropy of the stream codec's published models
        self.checkpointable = checkpointable(learner_cfg, codec_kind)  # the stream learner always is
        self._last = {}  # stream: (variable, producer rank) -> that block at the last step (raw or decoded)

    @classmethod
    def for_run(cls, cfg, comm):
        """The learners of a run: ``learner:`` with the ``codec:`` settings they depend on (no communication).

        Parameters
        ----------
        cfg : RunConfig
        comm : mpi4py.MPI.Comm
            The staging ranks.

        Returns
        -------
        LearnerSet
            With ``codec.kind``, ``codec.entropy`` and, when the codec has a PSNR target (no
            ``codec.error_bound``), ``codec.psnr_db``.
        """
        psnr_db = cfg.codec.psnr_db if cfg.codec.error_bound is None else None
        return cls(cfg.learner, comm, codec_kind=cfg.codec.kind, entropy=cfg.codec.entropy, psnr_db=psnr_db)

    def add(self, var, tile_shape):
        """Create the learner of ``var`` for tiles of ``tile_shape`` (no communication).

        Parameters
        ----------
        var : str
        tile_shape : tuple of int
        """
        self.tile_shapes[var] = tuple(int(t) for t in tile_shape)
        self.learners[var] = self._fresh(var, self.tile_shapes[var])
        if var not in self.variables:
            self.variables.append(var)

    def learn(self, var, tiles, sources, step_index, *, step=None):
        """Feed this rank's raw tiles of ``var`` for one step to its learner (collective over ``comm``).

        Tiles with NaN or Inf are kept out; their number, summed over ranks, is added to
        ``nonfinite_tiles[var]``.

        Parameters
        ----------
        var : str
        tiles : ndarray of shape (n_tiles, prod(tile_shape))
            ``n_tiles`` may be 0.
        sources : ndarray of shape (n_tiles,)
            Producer rank of each tile.
        step_index : int
            Steps learned before this one (0 for the first).
        step : int, optional
            The output step, for the log.

        Returns
        -------
        int
            Tiles kept out on this rank.
        """
        from mpi4py import MPI  # mpi4py only where a real communicator is used

        tiles = np.asarray(tiles)
        sources = np.asarray(sources)
        finite = np.all(np.isfinite(tiles), axis=1)
        bad = int((~finite).sum())
        if bad:
            logger.warning("step %d: %s: %d tiles with NaN/Inf kept out of the learner (staging rank %d)",
                           step_index if step is None else step, var, bad, self.rank)
            tiles, sources = tiles[finite], sources[finite]
        est = self.learners[var]
        if self.pace is not None:
            est.iterations_per_step = self.pace.iterations
        est.partial_fit(tiles, sources=sources, step=step_index)
        self.tiles_learned += tiles.shape[0]
        total = np.array([bad], dtype=np.int64)
        self.comm.Allreduce(MPI.IN_PLACE, total, op=MPI.SUM)
        self.nonfinite_tiles[var] = self.nonfinite_tiles.get(var, 0) + int(total[0])
        return bad

    def learn_blocks(self, var, blocks):
        """Stream codec: add the blend statistics of this rank's blocks of ``var`` (each against the same
        producer block at the last step; raw blocks as they are, stream payloads decoded) and refit
        the weights from the sums over ``comm`` (collective: one Allreduce).

        Parameters
        ----------
        var : str
        blocks : list of ReceivedBlock
            This rank's blocks of the step (every variable; corrupt ones left out by the caller).
        """
        stats = np.zeros((MAX_LEVELS, 13))
        for b in blocks:
            if b.var != var:
                continue
            key, cur, axis_order = (var, b.rank), b.raw, None
            if cur is None and b.payload is not None and is_stream_payload(b.payload):
                try:
                    cur = decode_stream_block(b.payload, self._last.get(key))[0]
                    axis_order = payload_axis_order(b.payload)  # the axis order the producer's kernels saw
                except StreamPayloadError:  # a step staging did not see: learn again from the next keyframe
                    cur = None
            prev = self._last.get(key)
            if cur is not None and prev is not None and prev.shape == cur.shape:
                stats += statistics(cur, prev, axis_order)
            self._last[key] = cur
        self.learners[var].partial_fit_statistics(stats)

    def pace_update(self, wait_s, busy_s):
        """Record a step's timing and set the next step's training iterations (collective when paced).

        Parameters
        ----------
        wait_s, busy_s : float
            Seconds this rank waited for the step, then spent on it.
        """
        if self.pace is not None:
            self.pace.update(self.comm, wait_s, busy_s)

    # ----------------------------------------------------------------- checks
    def nonfinite_variables(self):
        """Variables whose model does not exist yet or has non-finite parameters (local; the same on
        all ranks, training being collective).

        Returns
        -------
        list of str
        """
        return [v for v, est in self.learners.items() if not (est.ready and est.params_finite())]

    def models_finite(self):
        """True when every model exists and is finite; rank 0 logs the others (a diverged model is not published)."""
        bad = self.nonfinite_variables()
        if bad and self.rank == 0:
            logger.error("not publishing an encoder: the model of %s has non-finite parameters (training diverged? "
                         "lower learner.autoencoder.lr)", bad)
        return not bad

    def publishable(self):
        """True when some model is ready and every ready one is finite (local; the same on all ranks).

        A variable whose learner has no model yet (it appeared late on the stream, or never had tiles)
        is left out of the encoder (:meth:`ready_view`): its blocks stay raw (lossless) until a later
        encoder holds it, instead of holding back every other variable's encoder. Rank 0 logs the
        diverged ones.
        """
        ready = [v for v in self.variables if self.learners[v].ready]
        bad = [v for v in ready if not self.learners[v].params_finite()]
        if bad and self.rank == 0:
            logger.error("not publishing an encoder: the model of %s has non-finite parameters (training diverged? "
                         "lower learner.autoencoder.lr)", bad)
        return bool(ready) and not bad

    def ready_view(self):
        """A :class:`LearnerSet` view of the variables whose model is ready (what an encoder can hold)."""
        view = object.__new__(LearnerSet)
        view.__dict__.update(self.__dict__)
        view.variables = [v for v in self.variables if self.learners[v].ready]
        view.learners = {v: self.learners[v] for v in view.variables}
        view.tile_shapes = {v: self.tile_shapes[v] for v in view.variables}
        return view

    def anomaly_components(self, fraction):
        """Per variable, the PCA components explaining ``fraction`` of the variance (anomaly scoring).

        Raises
        ------
        ValueError
            With a learner that has no components (the autoencoder).
        """
        return {v: est.n_components_explaining(fraction) for v, est in self.learners.items()}

    # ----------------------------------------------------------------- checkpoint
    def save(self, directory, *, step, encoder_version, published, ranges, seen):
        """Write this rank's part of a checkpoint (no communication); nothing when not checkpointable.

        Parameters
        ----------
        directory : str
            ``<run_dir>/checkpoint``.
        step : int
            Last output step stored.
        encoder_version : int
            Last published encoder version (0: none yet).
        published : list of (int, int)
            ``(version, step)`` of each publication.
        ranges : dict of str to (float, float)
            Value ranges (rank 0 accounts them; ``{}`` on the other ranks).
        seen : int
            Steps learned (the same on every rank).
        """
        if not self.checkpointable or not self.learners:
            return
        checkpoint.save(directory, learners=self.learners, step=step, encoder_version=encoder_version,
                        published=published, tile_shapes=self.tile_shapes, ranges=ranges, rank=self.rank, seen=seen)

    def restore(self, directory):
        """Replace the learners by a checkpoint's (collective over ``comm`` for the autoencoder).

        With the stream codec the learners' statistics and the weights they publish come back as
        stored (:func:`.checkpoint.load` checks the weights against the checkpoint's); the last
        block of each producer, which the next step's statistics pair with, is not stored, so the
        first step after a restart adds no statistics.

        Returns
        -------
        state : dict
            :func:`.checkpoint.load`'s state (``step``, ``encoder_version``, ``tile_shapes``, ``ranges``, ...).

        Raises
        ------
        ConfigError
            See :func:`.checkpoint.load`.
        """
        state, learners = checkpoint.load(directory, self.comm, make_learner=self._fresh)
        self.learners, self.tile_shapes = learners, dict(state["tile_shapes"])
        self.variables = sorted(learners)
        return state

    def _fresh(self, var, tile_shape):
        """A new learner of ``var`` for this run's codec and ``learner:`` settings (no communication)."""
        if self.stream:
            return StreamWeightsLearner(self.comm, entropy=self.entropy)
        return make_learner(self.cfg, tuple(tile_shape), self.comm, seed_rank=self.seed_rank, psnr_db=self.psnr_db)

    # ----------------------------------------------------------------- summary, end
    def training_summary(self):
        """``training_*`` entries of the staging summary (paced learners), and :meth:`learner_summary`'s.

        Returns
        -------
        dict
            ``training_bytes_rank0``, ``training_rounds_rank0``, ``training_iterations``,
            ``training_iterations_per_step_mean``, ``training_loss``.
        """
        out = self.learner_summary()
        if self.pace is None:
            return out
        stats = [s for s in (est.training_stats() for est in self.learners.values()) if s is not None]
        return {**out, "training_bytes_rank0": int(sum(s["bytes"] for s in stats)),
                "training_rounds_rank0": int(sum(s["rounds"] for s in stats)),
                "training_iterations": int(sum(s["iterations"] for s in stats)),
                "training_iterations_per_step_mean": float(np.mean(self.pace.history)) if self.pace.history else 0.0,
                "training_loss": float(np.mean([s["loss"] for s in stats])) if stats else math.nan}

    def learner_summary(self):
        """``learner_*`` entries of the staging summary: what this rank's PCA learners sent (local).

        Only learners that count their communication (``learner.algorithm`` other than ``exact``:
        :class:`~stagelearn.analytics.learners.DistributedPCA`) contribute; ``{}`` otherwise. Figures
        are this rank's (rank 0 writes the summary; every rank of an all-reduce or all-gather sends
        the same payload, and rank 0 also the per-round control byte to each other rank, so rank 0's
        figure is the largest), summed over variables; "per step" divides by the steps learned.

        Returns
        -------
        dict
            ``learner_algorithm``, ``learner_bytes_rank0``, ``learner_rounds_rank0``,
            ``learner_steps``, ``learner_bytes_per_step``, ``learner_rounds_per_step`` (all
            rounds, the mean and explained-variance all-reduces included),
            ``learner_solver_rounds_per_step`` (the algorithm's own rounds),
            ``learner_certificate_sin_theta`` (the largest over variables of the certified bound on
            sin theta of the last basis; None when the algorithm certifies nothing) and
            ``learner_certificate_by_variable``.
        """
        stats = {v: s for v, s in ((v, getattr(est, "comm_stats", lambda: None)()) for v, est in self.learners.items())
                 if s is not None}
        if not stats:
            return {}
        steps = max(s["updates"] for s in stats.values())
        certs = {v: (None if s["certificate"] is None else float(s["certificate"])) for v, s in stats.items()}
        known = [c for c in certs.values() if c is not None]
        total = {key: int(sum(s[key] for s in stats.values())) for key in ("bytes", "rounds", "solver_rounds")}
        return {"learner_algorithm": next(iter(stats.values()))["algorithm"],
                "learner_bytes_rank0": total["bytes"], "learner_rounds_rank0": total["rounds"],
                "learner_steps": int(steps),
                "learner_bytes_per_step": total["bytes"] / steps if steps else 0.0,
                "learner_rounds_per_step": total["rounds"] / steps if steps else 0.0,
                "learner_solver_rounds_per_step": total["solver_rounds"] / steps if steps else 0.0,
                "learner_certificate_sin_theta": max(known) if known and len(known) == len(certs) else None,
                "learner_certificate_by_variable": certs}

    def close(self):
        """Release the learners' communication resources (torch process groups); no MPI collective."""
        for est in self.learners.values():
            est.close()
