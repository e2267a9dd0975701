"""In-transit mode: staging codes the raw blocks of an unchanged ADIOS2 code itself.

The simulation writes plain float arrays (``staging.mode: in_transit``); each staging rank codes
the blocks it read with the current encoder, as producers do in situ, and fills in their report
rows (:meth:`InTransitCoder.encode`). Before the first encoder the blocks stay raw (stored
losslessly). At a clean end the raw last step of the first variable is assembled on rank 0
(:meth:`InTransitCoder.save_reference`) for the end-to-end check of ``stagelearn report``.
"""

from __future__ import annotations

import os

import numpy as np

from ..analytics.correction import absolute_bound
from ..analytics.framing import pack_frame, unpack_frame
from ..analytics.step_encode import encode_step_block, step_targets
from ..analytics.temporal import PredictionChain
from .block_report import coded_report, raw_report
from .mpiutil import allreduce_flag, gather_bytes

_REFERENCE = b"SLR1"  # the reference blocks frame (not a block bundle)


class InTransitCoder:
    """Codes this staging rank's raw blocks (collective :meth:`encode`, :meth:`save_reference`).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The staging ranks.
    """

    def __init__(self, comm):
        self.comm = comm
        self._chain = PredictionChain()  # staging encodes, so it holds the temporal prediction chain
        self._last_raw = []  # (start, count, shape, raw) of the reference variable's blocks, last step it had data
        self.reference_step = None  # that step (the same on every rank)

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
        targets, spans = step_targets(self.comm, {v: [b.raw for b in blocks if b.var == v] for v in coded},
                                      enc.psnr_db)
        self._chain.keyframe_every = enc.keyframe_every
        for b in blocks:
            if b.var not in coded:
                continue
            code = encode_step_block(b.raw, enc.variables[b.var], step=b.step, chain=self._chain,
                                     chain_key=(b.var, b.rank), target_mse=targets[b.var],
                                     abs_bound=absolute_bound(enc.error_bound, spans[b.var]),
                                     raw_fraction=enc.raw_fraction, reference=b.source,
                                     header={"step": b.step, "variable": b.var, "rank": b.rank,
                                             "encoder_version": enc.version, "shape": list(b.shape),
                                             "start": list(b.start), "count": list(b.count)})
            b.report = coded_report(b.step, b.rank, enc.version, b.raw, code, given=b.source)
            b.payload, b.raw, b.source = code.payload, None, None
        self._chain.end_step()

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
