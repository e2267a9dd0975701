"""What a producer rank sends for one step: raw blocks, or blocks coded with the encoder in use.

:class:`StepCoder` holds the producer side's coding state across steps (the prediction chain that
the decoder mirrors, the anomaly persistence trackers, the SZ3 sampling count and the closed-loop
SZ3 reference, :class:`~stagelearn.analytics.sz3_closed_loop.ClosedLoopSZ3`) and turns a step's
blocks into records (:func:`stagelearn.analytics.step_encode.encode_step_block` and the report rows
of :mod:`.block_report`) for the stream writer or the fallback file. Each coded block's row also
carries the time this rank spent coding it (``encode_s``: the step's target agreement shared over
its blocks plus the block's own coding; the closed-loop SZ3 reference is timed out) and the
simulation's compute time before the step (``interval_s``, measured by the producer; on the rank's
first coded row of the step only, so that summed over rows each step of each rank counts once).
With a moment policy (``encoder.qoi``, the run's ``qoi:`` section) each coded block of its variable
also gets side information (:func:`stagelearn.analytics.qoi_policy.protect_block`, verified against
the caller's own values; record key ``qoi``), counted in the row's ``sent_bytes`` and ``qoi_bytes``,
and the row's error is that of the corrected block the decoder reads.
"""

from __future__ import annotations

import math
import time

import numpy as np

from ..analytics.anomaly import AnomalyScorer, PersistenceTracker
from ..analytics.correction import absolute_bound
from ..analytics.metrics import ErrorStats
from ..analytics.qoi_policy import protect_block, raw_fraction_for
from ..analytics.step_encode import check_bound, encode_step_block, step_targets
from ..analytics.sz3_closed_loop import ClosedLoopSZ3, follows
from ..analytics.stream_step import StreamStates
from ..analytics.temporal import PredictionChain
from .block_report import coded_report, raw_record
from .errors import ConfigError
from .wire import qoi_report


class StepCoder:
    """Codes one producer rank's blocks, step after step.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The producer ranks; :meth:`records` is collective over it when an encoder is given.
    variables : dict of str to tuple
        The defined fields: name -> ``(shape, start, count)`` (records come in this order).
    sz3_every : int, default=0
        Also compress every n-th coded step with SZ3 at the PSNR reached, for the report; when
        above 0, every coded step streamed also runs SZ3 in closed loop on this rank's block of
        variable number ``rank % len(variables)`` (:func:`~stagelearn.analytics.sz3_closed_loop.follows`).

    Attributes
    ----------
    chain : PredictionChain
        This rank's previous reconstructions (temporal prediction), keyed by variable.
    closed_loop : ClosedLoopSZ3
        SZ3's own previous reconstructions of the followed block (the closed-loop reference).
    encoded_steps : int
        Steps coded with an encoder so far.
    """

    def __init__(self, comm, variables, sz3_every=0):
        self.comm, self.rank = comm, comm.Get_rank()
        self.variables = variables
        self.sz3_every = int(sz3_every)
        self.chain = PredictionChain()
        self.stream_states = StreamStates()  # the stream codec's rate control per variable
        self.closed_loop = ClosedLoopSZ3()
        self.encoded_steps = 0
        self._trackers = {}
        self._warned_bound = set()
        self._coded = False

    def records(self, step, given, blocks, encoder, *, allow_sz3=True, interval_s=0.0):
        """The records of one step, one per defined variable.

        Parameters
        ----------
        step : int
        given : dict of str to ndarray
            The caller's blocks as passed (any real dtype): the error is measured against them.
        blocks : dict of str to ndarray of float32
            The same as they travel.
        encoder : Encoder or None
            None: every block goes raw. Otherwise the targets of the step are agreed over ``comm``
            (collective) and each variable the encoder models is coded.
        allow_sz3 : bool, default=True
            Whether this step may be an SZ3 sample and run the closed-loop reference (not for steps
            to the fallback file).
        interval_s : float, default=0.0
            The simulation's compute time before this step on this rank (the report's ``interval_s``).

        Returns
        -------
        records : list of dict
            ``var``, ``report``, ``shape``, ``start``, ``count`` and either ``raw`` or ``payload``
            and ``amap``.
        """
        self._coded = encoder is not None
        if encoder is None:
            return [raw_record(name, step, self.rank, blocks[name], shape, start, given.get(name))
                    for name, (shape, start, _) in self.variables.items()]
        names = [n for n in self.variables if n in encoder.variables]
        t0 = time.perf_counter()
        targets, spans = step_targets(self.comm, {n: [blocks[n]] for n in names}, encoder.psnr_db, encoder=encoder,
                                      chain=self.chain)  # the step's error budget shared over its blocks
        shared = (time.perf_counter() - t0) / max(len(names), 1)
        self.chain.keyframe_every = encoder.keyframe_every
        sample = allow_sz3 and self.sz3_every > 0 and self.encoded_steps % self.sz3_every == 0
        # the interval goes on the rank's first coded row only: summed over rows, each (step, rank) counts once
        timing = {"shared_s": shared, "interval_s": float(interval_s), "first": names[0] if names else None,
                  "closed_loop": allow_sz3 and self.sz3_every > 0}
        return [self._record(step, name, blocks[name], given[name], encoder, targets, spans, sample, timing)
                for name in self.variables]

    def adopt(self, encoder):
        """Prepare for a new encoder: an autoencoder's encoding gets ``encoder.encode_threads`` torch threads
        (the simulation keeps its other cores)."""
        if encoder.encode_threads and any(m.kind == "ae" for m in encoder.variables.values()):
            import torch

            torch.set_num_threads(encoder.encode_threads)

    def end_step(self):
        """The step is written: its reconstructions become the next step's references."""
        if self._coded:
            self.encoded_steps += 1
            self.chain.end_step()
            self.closed_loop.end_step()
        self._coded = False

    def restart_chain(self):
        """Forget the previous reconstructions: the next coded step stands on its own (a new file)."""
        self.chain = PredictionChain()
        self.stream_states.forget()
        self.closed_loop.reset()

    def _record(self, step, name, block, given, encoder, targets, spans, sample_sz3, timing):
        shape, start, _ = self.variables[name]
        model = encoder.variables.get(name)
        if model is None:
            return raw_record(name, step, self.rank, block, shape, start, given)
        scorer = None
        if encoder.anomaly is not None:
            tracker = self._trackers.setdefault(name, PersistenceTracker(encoder.anomaly["persistence_steps"]))
            scorer = AnomalyScorer(encoder.anomaly, name, spans[name], int(np.prod(model.tile_shape)),
                                   # the plain per-value target (not the shared water level): the scorer's scale
                                   math.sqrt(spans[name] ** 2 * 10 ** (-encoder.psnr_db / 10)), tracker)
        bound = absolute_bound(encoder.error_bound, spans[name])
        header = {"step": int(step), "variable": name, "rank": self.rank, "encoder_version": encoder.version,
                  "shape": list(shape), "start": list(start), "count": list(block.shape)}
        t0 = time.perf_counter()
        code = encode_step_block(block, model, step=step, chain=self.chain, chain_key=name, target_mse=targets[name],
                                 abs_bound=bound, raw_fraction=raw_fraction_for(encoder, name), header=header, reference=given,
                                 scorer=scorer, sample_sz3=sample_sz3, stream_state=self.stream_states)
        blob, qoi_worst, stats = None, 0.0, code.stats
        if encoder.qoi is not None and name == encoder.qoi["variable"]:
            # the moments of what decoders read, verified against the caller's own values; the chain keeps
            # the codec's reconstruction (decoders predict from it too)
            try:
                blob, corrected, qoi_worst = protect_block(step, encoder.qoi, given, code.reconstruction, start,
                                                           block.shape)
            except ValueError as exc:  # the block's layout does not fit the run's qoi section
                raise ConfigError(f"qoi: step {step}: {exc}") from None
            stats = ErrorStats.from_arrays(given, corrected)
        if bound is not None:
            check_bound(step, name, stats, bound, self._warned_bound)
        encode_s = time.perf_counter() - t0 + timing["shared_s"]
        closed = None
        if timing["closed_loop"] and follows(self.variables, name, self.rank):
            closed = self.closed_loop.update(name, block, code.local_psnr_db, given=given)
        report = coded_report(step, self.rank, encoder.version, block, code, given, closed_loop=closed,
                              encode_s=encode_s, interval_s=timing["interval_s"] if name == timing["first"] else 0.0)
        if blob is not None:
            qoi_report(report, blob, qoi_worst, stats)
        return {"var": name, "payload": code.payload, "amap": code.amap, "qoi": blob, "report": report,
                "shape": shape, "start": start, "count": block.shape}
