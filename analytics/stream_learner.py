"""Staging's online learner of the stream codec's blend weights (statistics merged over ranks).

Each step, every staging rank adds the blend statistics of its blocks (from the producers'
:attr:`~stagelearn.analytics.stream_step.StreamBlockCode.stream_stats`, or computed from raw blocks
with :func:`~stagelearn.analytics.stream_model.statistics` in transit) and calls
:meth:`StreamWeightsLearner.partial_fit_statistics` (collective: one ``Allreduce``). The learner
keeps an exponentially forgotten sum (``decay`` per step), so the weights follow a changing flow,
and exports a :class:`~stagelearn.analytics.stream_model.StreamVariableModel`.

Learner protocol (:mod:`stagelearn.analytics.learners`): ``kind``, ``ready``, ``params_finite``,
``model_arrays``, ``get_state``/``set_state``, ``training_stats``, ``close``.
"""

from __future__ import annotations

import math

import numpy as np

from . import stream_rate
from .stream_model import KIND, MAX_LEVELS, StreamVariableModel, fit_from_statistics
from .stream_codec.interpolation import N_STATS
from .stream_codec.tuning import CANDIDATES, choose_factors, trial_bytes


class StreamWeightsLearner:
    """Blend weights of one variable, fitted from statistics merged over ``comm``.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm or None
        The staging ranks (None: this process alone).
    decay : float, default=0.5
        Weight of the past sums at each new step (0: the last step only; 1: never forget).
    alpha, beta, refit, entropy
        Passed to the exported :class:`StreamVariableModel` (``entropy``: ``codec.entropy``).
    """

    kind = KIND

    def __init__(self, comm=None, *, decay=0.5, alpha=1.5, beta=4.0, refit="local", entropy="rans"):
        if not 0.0 <= float(decay) <= 1.0:
            raise ValueError(f"stream learner: decay must be in [0, 1], got {decay!r}")
        self.comm, self.decay = comm, float(decay)
        self.alpha, self.beta, self.refit, self.entropy = float(alpha), float(beta), refit, entropy
        self.stats = np.zeros((MAX_LEVELS, N_STATS))
        self.weights = None
        self.steps = 0

    @property
    def ready(self):
        """Always True: the codec works without fitted weights (``(1, 1, -1)``: interpolate the
        temporal difference), so an encoder can be published from the first step; :attr:`fitted`
        says whether some level had statistics yet."""
        return True

    @property
    def fitted(self):
        """True once some level had statistics (a pair of consecutive steps was seen)."""
        return self.weights is not None

    def partial_fit_statistics(self, stats):
        """Add this rank's statistics of one step (collective over ``comm``); returns self."""
        _, merged = fit_from_statistics(stats, self.comm)
        self.stats = self.decay * self.stats + merged
        self.steps += 1
        if np.any(self.stats[:, 0] > 0):
            self.weights, _ = fit_from_statistics(self.stats, None)
        return self

    def tune_factors(self, pairs, target_mse, candidates=CANDIDATES, max_step=None):
        """Choose the level factors ``alpha``, ``beta`` from trial encodes of this rank's block pairs
        (collective over ``comm``: one ``Allreduce`` of the byte counts; the same choice on every rank).

        Parameters
        ----------
        pairs : list of (ndarray, ndarray)
            ``(previous, current)`` blocks of the variable on this rank (may be empty).
        target_mse : float
            MSE per value of the run's target (:func:`~stagelearn.analytics.step_encode.step_targets`).
        max_step : float, optional
            The largest step of the trial encodes; default the run's rate control's tight cap,
            ``sqrt(12 target_mse / MIN_MSE_FACTOR)`` (:mod:`~stagelearn.analytics.stream_codec.stream`;
            predicted frames of predictable blocks may go up to ``MIN_MSE_FACTOR_PREDICTABLE``): factors
            that reach the target only at a larger step are charged what they cost at the cap (a run
            would code at the cap, above the target PSNR).

        Returns
        -------
        alpha, beta : float
            Also kept here and published with the next :meth:`model`.
        """
        if max_step is None:
            max_step = math.sqrt(12.0 * target_mse / stream_rate.MIN_MSE_FACTOR) if target_mse > 0 else math.inf
        costs = (trial_bytes(pairs, target_mse, candidates, adaptive=self.entropy == "adaptive", max_step=max_step)
                 if pairs else np.zeros(len(candidates)))
        self.alpha, self.beta = choose_factors(costs, candidates, self.comm)
        return self.alpha, self.beta

    def params_finite(self):
        return self.weights is None or bool(np.isfinite(self.weights).all())

    def model(self, data_min=0.0, data_max=0.0):
        """The :class:`StreamVariableModel` to publish (only the levels that had statistics)."""
        w = None
        if self.weights is not None:
            used = np.flatnonzero(self.stats[:, 0] > 0)
            w = self.weights[:int(used.max()) + 1] if used.size else None
        return StreamVariableModel(weights=w, alpha=self.alpha, beta=self.beta, refit=self.refit,
                                   entropy=self.entropy, data_min=data_min, data_max=data_max)

    def model_arrays(self):
        return self.model().arrays()

    def get_state(self):
        """The learner state for checkpoints (no pickle; local): ``meta`` (JSON-able: ``kind``,
        ``decay``, ``steps``, ``alpha``, ``beta``, ``refit``), ``arrays`` (``stats``, float64,
        the same on every rank) and ``rank_arrays`` (empty)."""
        return {"meta": {"kind": KIND, "decay": self.decay, "steps": self.steps, "alpha": self.alpha,
                         "beta": self.beta, "refit": self.refit},
                "arrays": {"stats": self.stats.copy()}, "rank_arrays": {}}

    def set_state(self, state):
        """Restore a state of :meth:`get_state`; returns self.

        Raises
        ------
        ValueError
            On a state of another kind or statistics of the wrong shape or non-finite.
        """
        meta, stats = state["meta"], np.asarray(state["arrays"]["stats"], dtype=np.float64)
        if meta.get("kind") != KIND:
            raise ValueError(f"stream learner state: kind {meta.get('kind')!r}, expected {KIND!r}")
        if stats.shape != (MAX_LEVELS, N_STATS) or not np.isfinite(stats).all():
            raise ValueError(f"stream learner state: stats of shape {stats.shape} (expected ({MAX_LEVELS}, {N_STATS}))")
        self.stats, self.steps, self.decay = stats, int(meta["steps"]), float(meta["decay"])
        self.alpha, self.beta, self.refit = float(meta["alpha"]), float(meta["beta"]), meta["refit"]
        self.weights = fit_from_statistics(stats, None)[0] if np.any(stats[:, 0] > 0) else None
        return self

    def training_stats(self):
        return None

    def close(self):
        pass
