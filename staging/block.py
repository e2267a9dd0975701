"""One producer block as staging holds it, and the byte bundle that moves blocks between ranks.

A :class:`ReceivedBlock` is what the stream readers (:mod:`.stream`) return and what the
learner, the recorder and the output writer (:mod:`.output_writer`) consume. Its payload is
parsed at most once on its way through staging (:attr:`ReceivedBlock.parsed`, with the codec's
payload parser); the error histogram of an anomaly-scored block is derived from that parse.

:func:`pack_blocks` / :func:`unpack_blocks` serialise a list of blocks into one byte frame
(:mod:`stagelearn.analytics.framing`, no pickle) for the buffer-based MPI gather of the output
writer's fallback (an ADIOS2 built without MPI).
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional

import numpy as np

from ..analytics.anomaly import payload_histogram
from ..analytics.framing import pack_frame, unpack_frame
from ..analytics.payload import parse_payload
from ..analytics.stream_payload import is_stream_payload, parse_stream_payload
from .wire import report_get

#: Magic of a block bundle frame.
BUNDLE_MAGIC = b"SLB1"


@dataclass
class ReceivedBlock:
    """One producer block of one variable in one step.

    Attributes
    ----------
    var : str
    rank : int
        Producer (writer) rank.
    report : ndarray of shape (len(REPORT_FIELDS),), float64
    raw : ndarray or None
        The float32 block when sent raw.
    payload : bytes or None
        The coded block otherwise.
    anomaly : ndarray of shape (n, 4) or None
        Anomaly map rows ``(tile, score, flagged, persistent)`` when the encoder scores tiles.
    shape, start, count : tuple of int or None
        Global shape and selection (for raw blocks; payload headers carry their own).
    corrupt : str or None
        Why the block does not match its writer's metadata (:func:`~.block_check.check_block`);
        such a block is stored as it came but kept out of the learner.
    source : ndarray or None
        In transit, the block in the writer's own dtype when that is not float32 (e.g. float64):
        what the report's error and raw bytes are measured against. Dropped once coded.
    qoi : bytes or None
        Moment side information of a coded block (:mod:`stagelearn.analytics.qoi_side`) when the
        encoder carries a moment policy for ``var``; the decoder restores the moments with it.
    """

    var: str
    rank: int
    report: np.ndarray
    raw: Optional[np.ndarray] = None
    payload: Optional[bytes] = None
    anomaly: Optional[np.ndarray] = None
    shape: Optional[tuple] = None
    start: Optional[tuple] = None
    count: Optional[tuple] = None
    corrupt: Optional[str] = None
    source: Optional[np.ndarray] = None
    qoi: Optional[bytes] = None
    _parsed: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)
    _parsed_of: Optional[bytes] = field(default=None, init=False, repr=False, compare=False)
    _err_hist: Optional[tuple] = field(default=None, init=False, repr=False, compare=False)

    @property
    def step(self):
        """Producer step of the block (from its report), int."""
        return int(report_get(self.report, "step"))

    @property
    def parsed(self):
        """``(header, sections)`` of the payload, parsed once; None for a raw block.

        The parse is cached for the current :attr:`payload` object (assigning a new payload, as
        in-transit coding does, parses that one on next use).

        Raises
        ------
        ValueError
            If the payload is not a stagelearn block payload.
        """
        if self.payload is None:
            return None
        if self._parsed is None or self._parsed_of is not self.payload:
            parsed = (parse_stream_payload(self.payload)[0], {}) if is_stream_payload(self.payload) \
                else parse_payload(self.payload)  # a stream-codec payload has no named sections
            self._parsed, self._parsed_of = parsed, self.payload
        return self._parsed

    @property
    def err_hist(self):
        """Histogram of the block's tile log-errors (ndarray of float64), or None.

        Present when the block carries an anomaly map and its payload an ``err_hist`` section;
        derived from :attr:`parsed` on first use.
        """
        if self._err_hist is not None and self._err_hist[0] is self.payload:
            return self._err_hist[1]
        hist = None
        if self.anomaly is not None and self.payload is not None:
            hist = payload_histogram(self.parsed[1])
        self._err_hist = (self.payload, hist)
        return hist

    @err_hist.setter
    def err_hist(self, value):
        self._err_hist = (self.payload, value)

    @property
    def nbytes(self):
        """Bytes of the block's data (raw array or payload), int."""
        if self.raw is not None:
            return int(self.raw.nbytes)
        return len(self.payload) if self.payload is not None else 0


def pack_blocks(blocks):
    """Serialise blocks into one bundle frame.

    Parameters
    ----------
    blocks : list of ReceivedBlock

    Returns
    -------
    frame : bytes
        Readable with :func:`unpack_blocks` (error histograms are re-derived from payloads).
    """
    meta, sections = [], {}
    for i, blk in enumerate(blocks):
        meta.append({"var": blk.var, "rank": blk.rank, "shape": blk.shape, "start": blk.start, "count": blk.count,
                     "raw": blk.raw is not None, "anomaly": blk.anomaly is not None, "qoi": blk.qoi is not None})
        sections[f"{i}/report"] = np.ascontiguousarray(blk.report, dtype=np.float64).tobytes()
        if blk.anomaly is not None:
            sections[f"{i}/anomaly"] = np.ascontiguousarray(blk.anomaly, dtype=np.float64).tobytes()
        if blk.qoi is not None:
            sections[f"{i}/qoi"] = bytes(blk.qoi)
        sections[f"{i}/data"] = np.ascontiguousarray(blk.raw, dtype=np.float32).tobytes() if blk.raw is not None \
            else blk.payload
    return pack_frame(BUNDLE_MAGIC, {"blocks": meta}, sections)


def _dims(value):
    return tuple(value) if value else None


def unpack_blocks(frame):
    """Inverse of :func:`pack_blocks`.

    Parameters
    ----------
    frame : bytes

    Returns
    -------
    blocks : list of ReceivedBlock
        With writeable arrays (ADIOS2 ``Put`` needs them).

    Raises
    ------
    ValueError
        If ``frame`` is not a block bundle.
    """
    header, sec = unpack_frame(BUNDLE_MAGIC, frame, "block bundle")
    out = []
    for i, m in enumerate(header["blocks"]):
        report = np.frombuffer(bytes(sec[f"{i}/report"]), dtype=np.float64).copy()
        blk = ReceivedBlock(var=m["var"], rank=m["rank"], report=report, shape=_dims(m["shape"]), start=_dims(m["start"]),
                            count=_dims(m["count"]))
        if m.get("anomaly"):
            blk.anomaly = np.frombuffer(bytes(sec[f"{i}/anomaly"]), dtype=np.float64).reshape(-1, 4).copy()
        if m.get("qoi"):
            blk.qoi = bytes(sec[f"{i}/qoi"])
        data = bytes(sec[f"{i}/data"])
        if m["raw"]:
            blk.raw = np.frombuffer(data, dtype=np.float32).reshape(blk.count).copy()
        else:
            blk.payload = data
        out.append(blk)
    return out
