"""In-transit mode: staging codes the raw blocks of an unchanged ADIOS2 code itself.

The simulation writes plain float arrays (``staging.mode: in_transit``); each staging rank codes
the blocks it read with the current encoder, as producers do in situ, and fills in their report
rows (:meth:`InTransitCoder.encode`). Before the first encoder the blocks stay raw (stored
losslessly). Every ``sz3_every``-th coded step is also an SZ3 sample, as on producers in situ:
each block is compressed with SZ3 at the PSNR our code reached on it
(:func:`~stagelearn.analytics.step_encode.encode_step_block` ``sample_sz3``), its size and error
go in the block's report row, and the run summary's ``sz3_*`` figures come from those rows
(:meth:`~stagelearn.staging.accounts.StepAccounts.sz3_reference`). With ``sz3_every`` above 0,
every coded step also runs SZ3 in closed loop (:class:`~stagelearn.analytics.sz3_closed_loop.ClosedLoopSZ3`)
on the blocks of variable number ``writer rank % len(variables)`` (one block per writer rank), at
the PSNR our code reached on each. Each coded row carries this rank's coding time of the block
(``encode_s``, the closed-loop reference timed out) and the time since this rank's previous coded
step (``interval_s``: the code's step interval as staging sees it; on the rank's first coded row
of the step only). At a clean end the raw last
step of the first variable is assembled on rank 0 (:meth:`InTransitCoder.save_reference`) for the
end-to-end check of ``stagelearn report``. With a moment policy (``encoder.qoi``: moments given by
weight vectors, the code's blocks holding whole velocity slices in their last two axes) each coded
block of its variable gets side information verified against the writer's own values
(:func:`~stagelearn.analytics.qoi_policy.protect_block`) and is coded with the policy's raw-tile
budget (``qoi.raw_fraction``, :func:`~stagelearn.analytics.qoi_policy.raw_fraction_for`); a block that
does not fit the policy is sent without side information and an error is logged once per variable.
"""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..analytics.correction import absolute_bound
from ..analytics.framing import pack_frame, unpack_frame
from ..analytics.metrics import ErrorStats
from ..analytics.qoi_policy import protect_block, raw_fraction_for
from ..analytics.step_encode import encode_step_block, step_targets
from ..analytics.sz3_closed_loop import ClosedLoopSZ3, follows
from ..analytics.stream_step import StreamStates
from ..analytics.temporal import PredictionChain
from .block_report import coded_report, raw_report
from .config import MetricsConfig
from .mpiutil import allreduce_flag, gather_bytes
from .wire import qoi_report

logger = logging.getLogger(__name__)

_REFERENCE = b"SLR1"  # the reference blocks frame (not a block bundle)


class InTransitCoder:
    """Codes this staging rank's raw blocks (collective :meth:`encode`, :meth:`save_reference`).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The staging ranks.
    sz3_every : int, optional
        Also compress every n-th coded step with SZ3 at the PSNR reached (0: never); default
        ``metrics.sz3_every``'s default.

    Attributes
    ----------
    encoded_steps : int
        Steps coded with an encoder so far (the same on every rank).
    closed_loop : ClosedLoopSZ3
        SZ3's own previous reconstructions of the followed blocks, keyed ``(variable, writer rank)``.
    """

    def __init__(self, comm, sz3_every=None):
        self.comm = comm
        self.sz3_every = int(MetricsConfig.model_fields["sz3_every"].default if sz3_every is None else sz3_every)
        self.encoded_steps = 0
        self.closed_loop = ClosedLoopSZ3()
        self._last_coded = None  # perf_counter at the start of the previous coded step
        self._chain = PredictionChain()  # staging encodes, so it holds the temporal prediction chain
        self._stream_states = StreamStates()  # and the stream codec's rate control per (variable, rank)
        self._last_raw = []  # (start, count, shape, raw) of the reference variable's blocks, last step it had data
        self.reference_step = None  # that step (the same on every rank)
        self._qoi_refused = set()  # variables whose blocks do not fit the moment policy (logged once)

    def encode(self, blocks, encoder, variables):
        """Code ``blocks`` in place with ``encoder`` and fill in their reports (collective over ``comm``).

        Parameters
        ----------
        blocks : list of ReceivedBlock
            This rank's raw blocks of the step; on return ``payload`` and ``report`` are set and
            ``raw`` is None (unless ``encoder`` is None: they stay raw, with a raw report row).
        encoder : Encoder or None
        variables : list of str
            All variables of the stream, the same on every rank (the first is the reference variable).
        """
        ref = variables[0]
        mine = [(b.start, b.count, b.shape, b.raw) for b in blocks if b.var == ref]  # kept, not copied
        ref_step = allreduce_flag(self.comm, max((b.step for b in blocks if b.var == ref), default=-1))
        if ref_step >= 0:  # a step without the reference variable keeps the last one that had it
            self._last_raw, self.reference_step = mine, ref_step
        enc = encoder
        coded = [v for v in variables if enc is not None and v in enc.variables]
        for b in blocks:  # raw before the first encoder and for variables it does not know yet (late ones)
            if b.var not in coded:  # the range of the finite values (NaN/Inf cells travel losslessly)
                b.report = raw_report(b.step, b.rank, b.raw, given=b.source)
        if not coded:
            return
        t0 = time.perf_counter()
        interval = t0 - self._last_coded if self._last_coded is not None else 0.0
        self._last_coded = t0
        targets, spans = step_targets(self.comm, {v: [b.raw for b in blocks if b.var == v] for v in coded},
                                      enc.psnr_db, encoder=enc, chain=self._chain,
                                      keys={v: [(v, b.rank) for b in blocks if b.var == v] for v in coded})
        mine = [b for b in blocks if b.var in coded]
        shared = (time.perf_counter() - t0) / max(len(mine), 1)
        self._chain.keyframe_every = enc.keyframe_every
        sample = self.sz3_every > 0 and self.encoded_steps % self.sz3_every == 0
        self.encoded_steps += 1
        for b in mine:
            t1 = time.perf_counter()
            code = encode_step_block(b.raw, enc.variables[b.var], step=b.step, chain=self._chain,
                                     chain_key=(b.var, b.rank), target_mse=targets[b.var],
                                     abs_bound=absolute_bound(enc.error_bound, spans[b.var]),
                                     raw_fraction=raw_fraction_for(enc, b.var), reference=b.source, sample_sz3=sample,
                                     stream_state=self._stream_states,
                                     header={"step": b.step, "variable": b.var, "rank": b.rank,
                                             "encoder_version": enc.version, "shape": list(b.shape),
                                             "start": list(b.start), "count": list(b.count)})
            encode_s = time.perf_counter() - t1 + shared
            closed = None
            if self.sz3_every > 0 and follows(variables, b.var, b.rank):
                closed = self.closed_loop.update((b.var, b.rank), b.raw, code.local_psnr_db, given=b.source)
            b.report = coded_report(b.step, b.rank, enc.version, b.raw, code, given=b.source, closed_loop=closed,
                                    encode_s=encode_s, interval_s=interval if b is mine[0] else 0.0)
            if enc.qoi is not None and b.var == enc.qoi["variable"]:
                b.qoi = self._protect(b, enc.qoi, code.reconstruction)
            b.payload, b.raw, b.source = code.payload, None, None
        self._chain.end_step()
        self.closed_loop.end_step()

    def _protect(self, b, policy, reconstruction):
        """Moment side information of block ``b`` (verified against the writer's own values), counted in its
        report; None, with an error logged once per variable, when the block's layout does not fit the policy."""
        given = b.source if b.source is not None else b.raw
        try:
            blob, corrected, worst = protect_block(b.step, policy, given, reconstruction, b.start, b.count)
        except ValueError as exc:  # e.g. the code's blocks split velocity space: the moments cannot be kept
            if b.var not in self._qoi_refused:
                self._qoi_refused.add(b.var)
                logger.error("step %d: %s: moments not preserved (no side information sent): %s", b.step, b.var, exc)
            return None
        qoi_report(b.report, blob, worst, ErrorStats.from_arrays(given, corrected))
        return blob

    def save_reference(self, run_dir, variable, step):
        """The raw last step of ``variable`` (the reference variable), assembled and saved on rank 0 (collective).

        Parameters
        ----------
        run_dir : str
        variable : str
            The first variable (the one :meth:`encode` kept).
        step : int or None
            The last stored step (rank 0; None: no step).

        Returns
        -------
        dict ``{"variable", "step"}`` on rank 0 when a reference was written
        (``reference_<variable>_step<step>.npy``), else None.
        """
        frame = pack_frame(_REFERENCE, {"blocks": [{"start": list(s), "count": list(c), "shape": list(g)}
                                                   for s, c, g, _ in self._last_raw]},
                           {str(i): r.tobytes() for i, (_, _, _, r) in enumerate(self._last_raw)})
        parts = gather_bytes(self.comm, frame)
        if self.comm.Get_rank() != 0:
            return None
        out = None
        for part in parts:
            header, sec = unpack_frame(_REFERENCE, part, "reference blocks")
            for i, m in enumerate(header["blocks"]):
                out = np.zeros(m["shape"], dtype=np.float32) if out is None else out
                sel = tuple(slice(a, a + c) for a, c in zip(m["start"], m["count"]))
                out[sel] = np.frombuffer(bytes(sec[str(i)]), dtype=np.float32).reshape(m["count"])
        if out is None:
            return None
        np.save(os.path.join(run_dir, f"reference_{variable}_step{step}.npy"), out)
        return {"variable": variable, "step": step}
