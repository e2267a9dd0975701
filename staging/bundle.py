"""What staging rank 0 gathers each step: the accounting of every block, never its data.

Each staging rank turns its blocks into :class:`BlockRecord` objects (report row, anomaly map, error
histogram and, for blocks with an anomaly map, the payload header fields that place a tile in the
global domain) and :func:`gather_records` brings them to rank 0 as one frame per rank
(:mod:`~stagelearn.analytics.framing`, no pickle). The data itself goes to ``compressed.bp`` from
each rank (:class:`~stagelearn.staging.output.CompressedOutputWriter`).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Optional

import numpy as np

from ..analytics.framing import pack_frame, unpack_frame
from .mpiutil import gather_bytes
from .wire import report_get

_MAGIC = b"SLR1"


@dataclass
class BlockRecord:
    """The accounting of one producer block of one variable in one step.

    Attributes
    ----------
    var : str
    rank : int
        Producer rank.
    report : ndarray of float64, shape (len(REPORT_FIELDS),)
    anomaly : ndarray of float64, shape (n, 4), or None
        Anomaly map rows ``(tile, score, flagged, persistent)``.
    err_hist : ndarray of float64 or None
        Histogram of the block's tile log-errors.
    placement : dict or None
        ``start``, ``block_shape``, ``tile_shape`` from the payload header (blocks with a
        non-empty anomaly map only: they place flagged tiles in the global domain).
    """

    var: str
    rank: int
    report: np.ndarray
    anomaly: Optional[np.ndarray] = None
    err_hist: Optional[np.ndarray] = None
    placement: Optional[dict] = None

    @property
    def step(self):
        return int(report_get(self.report, "step"))


def record_of(blk):
    """The :class:`BlockRecord` of a received block (``ReceivedBlock``)."""
    placement = None
    if blk.anomaly is not None and len(blk.anomaly) and blk.payload is not None:
        header = blk.parsed[0]  # parsed once per block (ReceivedBlock.parsed)
        placement = {k: [int(x) for x in header[k]] for k in ("start", "block_shape", "tile_shape")}
    return BlockRecord(var=blk.var, rank=int(blk.rank), report=np.asarray(blk.report, dtype=np.float64),
                       anomaly=None if blk.anomaly is None else np.asarray(blk.anomaly, dtype=np.float64).reshape(-1, 4),
                       err_hist=None if blk.err_hist is None else np.asarray(blk.err_hist, dtype=np.float64),
                       placement=placement)


def pack_records(records):
    """One frame (bytes) holding ``records`` (list of :class:`BlockRecord`)."""
    meta, sections = [], {}
    for i, r in enumerate(records):
        meta.append({"var": r.var, "rank": r.rank, "anomaly": r.anomaly is not None,
                     "err_hist": r.err_hist is not None, "placement": r.placement})
        sections[f"{i}/report"] = np.ascontiguousarray(r.report, dtype=np.float64).tobytes()
        if r.anomaly is not None:
            sections[f"{i}/anomaly"] = np.ascontiguousarray(r.anomaly, dtype=np.float64).tobytes()
        if r.err_hist is not None:
            sections[f"{i}/err_hist"] = np.ascontiguousarray(r.err_hist, dtype=np.float64).tobytes()
    return pack_frame(_MAGIC, {"records": meta}, sections)


def unpack_records(frame):
    """Inverse of :func:`pack_records`.

    Raises
    ------
    ValueError
        When ``frame`` is not a block-record frame (names it as "block records").
    """
    header, sec = unpack_frame(_MAGIC, frame, "block records")

    def array(key, shape=(-1,)):
        return np.frombuffer(bytes(sec[key]), dtype=np.float64).reshape(shape).copy()

    return [BlockRecord(var=m["var"], rank=int(m["rank"]), report=array(f"{i}/report"),
                        anomaly=array(f"{i}/anomaly", (-1, 4)) if m["anomaly"] else None,
                        err_hist=array(f"{i}/err_hist") if m["err_hist"] else None, placement=m["placement"])
            for i, m in enumerate(header["records"])]


def gather_records(comm, blocks):
    """The records of every rank's ``blocks`` on rank 0, in rank order (collective over ``comm``).

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The staging ranks.
    blocks : list of ReceivedBlock
        This rank's blocks of the step.

    Returns
    -------
    list of BlockRecord on rank 0, None elsewhere.
    """
    parts = gather_bytes(comm, pack_records([record_of(b) for b in blocks]))
    return None if parts is None else [r for p in parts for r in unpack_records(p)]
