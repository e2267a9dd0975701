"""What a producer rank sends for one step: raw blocks, or blocks coded with the encoder in use.

:class:`StepCoder` holds the producer side's coding state across steps (the prediction chain that
the decoder mirrors, the anomaly persistence trackers, the SZ3 sampling count) and turns a
step's blocks into records (:func:`stagelearn.analytics.step_encode.encode_step_block` and the
report rows of :mod:`.block_report`) for the stream writer or the fallback file.
"""

from __future__ import annotations

import math

import numpy as np

from ..analytics.anomaly import AnomalyScorer, PersistenceTracker
from ..analytics.correction import absolute_bound
from ..analytics.step_encode import check_bound, encode_step_block, step_targets
from ..analytics.temporal import PredictionChain
from .block_report import coded_report, raw_record


class StepCoder:
    """Codes one producer rank's blocks, step after step.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The producer ranks; :meth:`records` is collective over it when an encoder is given.
    variables : dict of str to tuple
        The defined fields: name -> ``(shape, start, count)`` (records come in this order).
    sz3_every : int, default=0
        Also compress every n-th coded step with SZ3 at the PSNR reached, for the report.

    Attributes
    ----------
    chain : PredictionChain
        This rank's previous reconstructions (temporal prediction), keyed by variable.
    encoded_steps : int
        Steps coded with an encoder so far.
    """

    def __init__(self, comm, variables, sz3_every=0):
        self.comm, self.rank = comm, comm.Get_rank()
        self.variables = variables
        self.sz3_every = int(sz3_every)
        self.chain = PredictionChain()
        self.encoded_steps = 0
        self._trackers = {}
        self._warned_bound = set()
        self._coded = False

    def records(self, step, given, blocks, encoder, *, allow_sz3=True):
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
            Whether this step may be an SZ3 sample (not for steps to the fallback file).

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
        targets, spans = step_targets(self.comm, {n: [blocks[n]] for n in names}, encoder.psnr_db)
        self.chain.keyframe_every = encoder.keyframe_every
        sample = allow_sz3 and self.sz3_every > 0 and self.encoded_steps % self.sz3_every == 0
        return [self._record(step, name, blocks[name], given[name], encoder, targets, spans, sample)
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
        self._coded = False

    def restart_chain(self):
        """Forget the previous reconstructions: the next coded step stands on its own (a new file)."""
        self.chain = PredictionChain()

    def _record(self, step, name, block, given, encoder, targets, spans, sample_sz3):
        shape, start, _ = self.variables[name]
        model = encoder.variables.get(name)
        if model is None:
            return raw_record(name, step, self.rank, block, shape, start, given)
        scorer = None
        if encoder.anomaly is not None:
            tracker = self._trackers.setdefault(name, PersistenceTracker(encoder.anomaly["persistence_steps"]))
            scorer = AnomalyScorer(encoder.anomaly, name, spans[name], int(np.prod(model.tile_shape)),
                                   math.sqrt(targets[name]), tracker)
        bound = absolute_bound(encoder.error_bound, spans[name])
        header = {"step": int(step), "variable": name, "rank": self.rank, "encoder_version": encoder.version,
                  "shape": list(shape), "start": list(start), "count": list(block.shape)}
        code = encode_step_block(block, model, step=step, chain=self.chain, chain_key=name, target_mse=targets[name],
                                 abs_bound=bound, raw_fraction=encoder.raw_fraction, header=header, reference=given,
                                 scorer=scorer, sample_sz3=sample_sz3)
        if bound is not None:
            check_bound(step, name, code.stats, bound, self._warned_bound)
        return {"var": name, "payload": code.payload, "amap": code.amap,
                "report": coded_report(step, self.rank, encoder.version, block, code, given),
                "shape": shape, "start": start, "count": block.shape}
