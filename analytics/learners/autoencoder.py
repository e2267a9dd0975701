"""The autoencoder learner: warm-up, a distributed trainer per variable, and its checkpoint state.

:class:`AutoencoderLearner` is fed like every learner (``partial_fit`` once per step, collective
over ``comm``). Its normalisation (offset, scale) comes from all warm-up steps, not the first
alone (often a near-constant initial state): it holds their tiles until the last warm-up step,
then builds the :class:`~stagelearn.analytics.ae_training.AETrainer` (with the configured replay
buffer) and feeds it the held steps in order. Importing this module imports torch.
"""

from __future__ import annotations

import logging

import numpy as np
import torch

from ..ae_training import AETrainer, destroy
from ..autoencoder import from_arrays, named_arrays, spec_from_data
from ..replay import make_buffer

logger = logging.getLogger(__name__)


class AutoencoderLearner:
    """Online tile autoencoder of one variable over the ranks of ``comm`` (learner protocol).

    Parameters
    ----------
    tile_shape : tuple of int
        The variable's tile shape; convolutions run over its axes longer than one (a 5-D
        velocity-space tile ``(1, 1, 1, nv, nmu)`` is a 2-D image).
    comm : mpi4py.MPI.Comm
        Ranks sharing the model; ``partial_fit`` and ``set_state`` are collective over it.
    ae_cfg : AutoencoderConfig
        ``learner.autoencoder`` (architecture, training).
    replay_cfg : ReplayConfig
        ``learner.replay`` (this rank's buffer).
    warmup_steps : int
        Steps whose tiles set the normalisation; the trainer exists from the last of them on.
    seed_rank : int
        Seeds this rank's replay buffer.

    Attributes
    ----------
    trainer : AETrainer or None
        None until the end of the warm-up (or :meth:`set_state`).
    iterations_per_step : int
        Training iterations of the next ``partial_fit`` (staging's pace sets it).
    """

    #: Model family, as checkpoints and encoders name it.
    kind = "ae"

    def __init__(self, tile_shape, *, comm, ae_cfg, replay_cfg, warmup_steps, seed_rank):
        self.tile_shape = tuple(int(t) for t in tile_shape)
        self.comm, self.ae_cfg, self.replay_cfg = comm, ae_cfg, replay_cfg
        self.warmup_steps, self.seed_rank = int(warmup_steps), int(seed_rank)
        self.iterations_per_step = ae_cfg.iterations_per_step
        self.trainer = None
        self._held, self._calls = [], 0

    # ------------------------------------------------------------------ training
    def partial_fit(self, X, *, sources=None, step=None):
        """Learn this rank's tiles of one step (collective over ``comm``).

        Parameters
        ----------
        X : ndarray of shape (n_tiles, prod(tile_shape))
            Finite tiles in field units; ``n_tiles`` may be 0.
        sources : ndarray of shape (n_tiles,), optional
            Producer rank of each tile (for the replay buffer).
        step : int, optional
            Index of the step (0 for the first learned); default: the number of earlier calls.

        Returns
        -------
        self : object

        Raises
        ------
        ValueError
            On every rank, when any rank's tiles have the wrong shape or NaN/Inf values.
        """
        step = self._calls if step is None else int(step)
        self._calls += 1
        if self.trainer is None:
            self._held.append((X, sources, step))
            if step < self.warmup_steps - 1:
                return self
            held, self._held = self._held, []
            self.trainer = self.make_trainer(spec_from_data(
                np.concatenate([t for t, _, _ in held]), self._conv_shape(), channels=tuple(self.ae_cfg.channels),
                latent_dim=self.ae_cfg.latent_dim, latent_bits=self.ae_cfg.latent_bits, comm=self.comm))
        else:
            held = [(X, sources, step)]
        self.trainer.iterations_per_step = int(self.iterations_per_step)
        for tiles, src, s in held:
            self.trainer.partial_fit(tiles, sources=src, step=s)
        return self

    def _conv_shape(self):
        return tuple(t for t in self.tile_shape if t > 1) or (1,)

    def make_trainer(self, spec):
        """A distributed trainer for ``spec`` with the configured replay buffer (collective).

        Parameters
        ----------
        spec : AESpec or dict

        Returns
        -------
        AETrainer
        """
        ac, rc = self.ae_cfg, self.replay_cfg
        if ac.threads:
            torch.set_num_threads(ac.threads)
        kw = {"time_bins": rc.time_bins} if rc.kind == "stratified" else {}
        buffer = make_buffer(rc.kind, rc.max_mib, seed=self.seed_rank, **kw)
        return AETrainer(spec, comm=self.comm, mode=ac.mode, sync_every=ac.sync_every, lr=ac.lr,
                         batch_size=ac.batch_size, iterations_per_step=ac.iterations_per_step, device=ac.device,
                         buffer=buffer, timeout_s=ac.timeout_s, host=ac.rendezvous_host)

    # ------------------------------------------------------------------ protocol
    @property
    def ready(self):
        """True once the trainer exists (after the warm-up)."""
        return self.trainer is not None

    @property
    def spec(self):
        """The trainer's :class:`~stagelearn.analytics.autoencoder.AESpec`."""
        return self.trainer.spec

    @property
    def model(self):
        """The trained :class:`~stagelearn.analytics.autoencoder.TileAutoencoder` on the CPU."""
        return self.trainer.model

    def params_finite(self):
        """True when every parameter is finite (local; the same on all ranks: training is collective)."""
        return all(bool(np.all(np.isfinite(p.detach().cpu().numpy()))) for p in self.trainer.model.parameters())

    def n_components_explaining(self, fraction):
        """Not defined for an autoencoder.

        Raises
        ------
        ValueError
            Always (anomaly scoring needs the PCA learner).
        """
        raise ValueError("anomaly scoring uses PCA components: it needs learner.type pca")

    def model_arrays(self):
        """The arrays an encoder carries: ``<parameter>`` float32 (:func:`~..autoencoder.named_arrays`)."""
        return named_arrays(self.trainer.model)

    def training_stats(self):
        """``bytes`` and ``rounds`` this rank sent, ``iterations`` and last ``loss``; None before the warm-up ends."""
        t = self.trainer
        if t is None:
            return None
        return {"bytes": int(t.bytes_communicated), "rounds": int(t.rounds), "iterations": int(t.n_iter_),
                "loss": float(t.loss_)}

    def close(self):
        """Destroy the ``torch.distributed`` group of a multi-rank trainer (idempotent)."""
        if self.comm.Get_size() > 1:
            destroy()

    # ------------------------------------------------------------------ state
    def get_state(self):
        """The model (the same on every rank) and this rank's replay buffer and Adam moments.

        Returns
        -------
        state : dict
            ``meta`` (``kind``, ``spec``, ``n_samples_seen_``, ``n_iter_``), ``arrays``
            (``ae/<parameter>``, float32) and ``rank_arrays`` (``buffer/{tiles,sources,steps,counts}``
            and ``opt/<i>/<moment>``).

        Raises
        ------
        ValueError
            Before the end of the warm-up (no trainer yet).
        """
        t = self.trainer
        if t is None:
            raise ValueError("AutoencoderLearner.get_state: no trainer before the end of the warm-up")
        meta = {"kind": self.kind, "spec": t.spec.to_dict(), "n_samples_seen_": int(t.n_samples_seen_),
                "n_iter_": int(t.n_iter_)}
        arrays = {f"ae/{k}": v for k, v in named_arrays(t.model).items()}
        mine, buf = {}, t.buffer
        if buf is not None and buf.n_features_in_ is not None:
            mine["buffer/tiles"], mine["buffer/sources"], mine["buffer/steps"] = buf.tiles(), buf.sources(), buf.steps()
            mine["buffer/counts"] = np.array([buf.n_seen_, buf.n_rejected_], dtype=np.int64)
        for i, st in t.optimizer_.state_dict()["state"].items():
            for key, value in st.items():
                mine[f"opt/{i}/{key}"] = np.asarray(value.detach().cpu().numpy() if hasattr(value, "detach") else value)
        return {"meta": meta, "arrays": arrays, "rank_arrays": mine}

    def set_state(self, state):
        """Rebuild the trainer from a state of :meth:`get_state` (collective over ``comm``).

        Parameters
        ----------
        state : dict
            ``meta``, ``arrays`` and ``rank_arrays``; ``rank_arrays`` None (another number of
            staging ranks) starts this rank with an empty buffer and fresh optimizer moments.

        Returns
        -------
        self : object

        Raises
        ------
        ValueError
            If the state is not an autoencoder state.
        """
        meta, arrays, mine = state["meta"], state["arrays"], state.get("rank_arrays")
        if meta.get("kind") != self.kind:
            raise ValueError(f"AutoencoderLearner.set_state: a {meta.get('kind')!r} state, expected {self.kind!r}")
        t = self.make_trainer(meta["spec"])
        weights = from_arrays(meta["spec"], {k[3:]: v for k, v in arrays.items() if k.startswith("ae/")})
        t.net_.load_state_dict(weights.state_dict())
        t.n_samples_seen_, t.n_iter_ = meta["n_samples_seen_"], meta["n_iter_"]
        self.trainer, self._held = t, []
        if mine is None:
            logger.warning("no per-rank state for this rank in the checkpoint (a different number of staging ranks?): "
                           "it starts with an empty replay buffer and fresh optimizer moments")
            return self
        if "buffer/tiles" in mine and t.buffer is not None:
            t.buffer.add(mine["buffer/tiles"], mine["buffer/sources"], mine["buffer/steps"])
            t.buffer.n_seen_, t.buffer.n_rejected_ = (int(x) for x in mine["buffer/counts"])
        opt = t.optimizer_.state_dict()
        for i in range(len(opt["param_groups"][0]["params"])):
            keys = {k.rsplit("/", 1)[1]: v for k, v in mine.items() if k.startswith(f"opt/{i}/")}
            if keys:
                opt["state"][i] = {k: torch.as_tensor(v) for k, v in keys.items()}
        t.optimizer_.load_state_dict(opt)
        return self
