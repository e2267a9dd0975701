"""Publication of encoders: when, with which codec and anomaly policy, and the acknowledgements.

After ``learner.warmup_steps`` received steps, and then every ``learner.publish_every`` steps,
staging rank 0 builds an :class:`~stagelearn.analytics.encoder.Encoder` from the current learners
with the run's codec policy (``codec``: PSNR target, raw fraction, keyframes, error bound) and
anomaly policy (``anomaly``: method, threshold and the median/MAD of each variable's tile
log-errors), and writes it on the model stream
(:class:`~stagelearn.staging.model_channel.ModelPublisher`) together with the acknowledgement of
the stored step (``model/ack``). With anomaly detection on, the first encoder that carries error
statistics is published as soon as ``anomaly.calibration_steps`` steps of histograms are in.

State flags (``encoder_sent``, ``encoder_calibrated``, ``stats_ready``, ``last_publish``) are
the same on every staging rank; the encoder itself lives on rank 0 (and on every rank in transit,
where all ranks encode with it).
"""

from __future__ import annotations

import logging
import math

from ..analytics.encoder import Encoder
from ..analytics.qoi_policy import qoi_policy
from .mpiutil import allreduce_flag, bcast_bytes

logger = logging.getLogger(__name__)


def anomaly_policy(anomaly, n_components, error_hists):
    """The encoder's anomaly section: policy plus median/MAD of each variable's tile log-errors.

    Parameters
    ----------
    anomaly : AnomalyConfig
    n_components : dict of str to int
        Per variable, the PCA components explaining ``anomaly.explained_variance`` of the variance.
    error_hists : dict of str to LogErrorHistogram

    Returns
    -------
    dict
    """
    ac = anomaly
    stats = {}
    for var, h in error_hists.items():
        if h.total > 0:
            med, mad = h.median_mad()
            if math.isfinite(med) and math.isfinite(mad):
                stats[var] = [med, mad]
    return {"method": ac.method, "threshold": ac.threshold, "top_k": ac.top_k, "report_score": ac.report_score,
            "max_report": ac.max_report, "persistence_steps": ac.persistence_steps, "n_components": dict(n_components),
            "stats": stats}


class Publication:
    """When to publish, building the encoder, and the model channel's steps.

    Parameters
    ----------
    cfg : RunConfig
        Uses ``learner``, ``codec`` and ``anomaly``.
    comm : mpi4py.MPI.Comm
        The staging ranks.
    publisher : ModelPublisher or None
        Rank 0's model stream writer (None elsewhere, and in transit: nobody to push encoders to).

    Attributes
    ----------
    encoder : Encoder or None
        The last published encoder (rank 0; every rank in transit).
    published : list of (int, int)
        ``(version, after step)`` of every encoder published (rank 0).
    version_base : int
        Encoder versions restored from a checkpoint.
    """

    def __init__(self, cfg, comm, publisher=None):
        self.cfg, self.comm, self.publisher = cfg, comm, publisher
        self.rank = comm.Get_rank()
        self.encoder = None
        self.published = []
        self.version_base = 0
        self.last_publish = None
        self.encoder_sent = False  # same on all ranks: an encoder has been published
        self.encoder_calibrated = False  # same on all ranks: the last encoder carried error statistics
        self.stats_ready = False  # same on all ranks: rank 0 holds calibration_steps steps of histograms
        self._unstored = None  # a restored encoder, stored in compressed.bp with the first step

    @property
    def version(self):
        """Version of the current encoder (``version_base`` before the first)."""
        return self.encoder.version if self.encoder else self.version_base

    def check_stats(self, hist_steps):
        """Agree whether rank 0 holds enough error histograms to calibrate (collective).

        Parameters
        ----------
        hist_steps : int
            Steps of histograms folded in on rank 0 (ignored elsewhere).
        """
        if self.cfg.anomaly.enabled and not self.encoder_calibrated and self.encoder_sent:
            self.stats_ready = bool(allreduce_flag(
                self.comm, self.rank == 0 and hist_steps >= self.cfg.anomaly.calibration_steps))

    def due(self, steps_seen):
        """True when an encoder is due after ``steps_seen`` received steps (same on all ranks)."""
        lc, ac = self.cfg.learner, self.cfg.anomaly
        if steps_seen < lc.warmup_steps:
            return False
        if self.last_publish is None:
            return True
        since = steps_seen - self.last_publish
        if ac.enabled and not self.encoder_calibrated and self.stats_ready:
            return True  # ship the first error statistics early: scoring starts with them
        return since >= lc.publish_every

    def build(self, learning, *, version, step, ranges, error_hists):
        """Rank 0: the encoder of the current models with the run's codec and anomaly policy.

        Parameters
        ----------
        learning : LearnerSet
            Its fitted learners (every variable) and tile shapes.
        version, step : int
            The encoder version and the last step it was trained on.
        ranges : dict of str to (float, float)
            Value range of each variable seen so far.
        error_hists : dict of str to LogErrorHistogram
            Running tile log-error histograms (the anomaly statistics).

        Returns
        -------
        Encoder
        """
        cc, ac = self.cfg.codec, self.cfg.anomaly
        enc = Encoder.from_learners({v: learning.learners[v] for v in learning.variables}, version=version,
                                    trained_until_step=step, tile_shapes=learning.tile_shapes, ranges=ranges,
                                    psnr_db=cc.psnr_db, raw_fraction=cc.raw_fraction)
        enc.anomaly = anomaly_policy(ac, learning.anomaly_components(ac.explained_variance), error_hists) \
            if ac.enabled else None
        enc.keyframe_every, enc.encode_threads = cc.keyframes(), cc.encode_threads
        enc.error_bound = cc.error_bound.as_dict() if cc.error_bound is not None else None
        enc.qoi = qoi_policy(getattr(self.cfg, "qoi", None), getattr(self.cfg, "simulation", None))  # None without a qoi: section
        return enc

    def new_encoder(self, learning, *, step, ranges, error_hists):
        """Rank 0: build the next version after ``step`` (see :meth:`build`) and make it current; return it."""
        version = self.version + 1
        self.encoder = self.build(learning, version=version, step=step, ranges=ranges, error_hists=error_hists)
        self.published.append((version, step))
        return self.encoder

    def to_store(self, new):
        """The encoder to store with this step's output: ``new``, else a restored one not stored yet."""
        store, self._unstored = new or self._unstored, None
        return store

    def acknowledge(self, new, ack):
        """Rank 0: write the model channel's step (the new encoder, if any, and the stored step ``ack``)."""
        if self.publisher is not None:
            self.publisher.publish(new, ack=ack)

    def published_now(self, steps_seen, *, share):
        """After an encoder was published at ``steps_seen`` (collective).

        Parameters
        ----------
        steps_seen : int
        share : bool
            True in transit: every rank then holds the encoder (broadcast from rank 0) to encode with.
        """
        self.last_publish = steps_seen
        self.encoder_sent = True
        if share:
            self._share()
        self.encoder_calibrated = bool(allreduce_flag(self.comm, self.rank == 0 and self.calibrated))

    def _share(self):
        self.encoder = Encoder.from_frame(bcast_bytes(self.comm, self.encoder.to_frame() if self.rank == 0 else b""))

    @property
    def calibrated(self):
        """The current encoder carries anomaly statistics."""
        return bool(self.encoder is not None and self.encoder.anomaly and self.encoder.anomaly["stats"])

    def restored(self, learning, *, version_base, step, ranges):
        """Publish the model restored from a checkpoint at once as the next version (collective).

        Every rank ends with the encoder; rank 0 stores it with the first output step.
        """
        self.version_base = version_base
        if self.rank == 0:
            version = version_base + 1
            self.encoder = self.build(learning, version=version, step=step, ranges=ranges, error_hists={})
            self.published.append((version, -1))
            if self.publisher is not None:
                self.publisher.publish(self.encoder)
            self._unstored = self.encoder
        self._share()
        self.last_publish = 0
        self.encoder_sent = True

    def close(self, timeout_s):
        """Close the model stream (rank 0, bounded by ``timeout_s``)."""
        if self.publisher is not None:
            self.publisher.close(timeout_s)
        self.publisher = None
