"""Reading producer blocks from the SST stream on the staging ranks (both layouts).

- :class:`SharedStreamReader`: all producers are one SST writer; the staging ranks open it as
  one reader cohort over their communicator and each reads the blocks given by
  :func:`~stagelearn.staging.wire.assign_blocks` (``SetBlockSelection``).
- :class:`PerRankStreamReader`: each producer rank is its own SST writer
  (``<stream>.p<rank>``); each staging rank opens the streams of its assigned producers.
- :class:`~.plain_stream.PlainStreamReader` (its own module): an unchanged ADIOS2 code's stream
  (in-transit mode), built on this module's :class:`_CohortReader`.

All return, per step, a list of :class:`~stagelearn.staging.block.ReceivedBlock` read from the
stream alone: variables, shapes and selections come from ADIOS2 metadata and payload headers,
never from the simulation's Python objects. Payloads stay bytes (this module imports no codec;
:attr:`~stagelearn.staging.block.ReceivedBlock.parsed` parses each once, later). ``read_step``
returns None when it stops; ``status`` then says why: ``end`` (the writer closed the stream,
ADIOS2 ``StepStatus.EndOfStream``), ``failed`` (the writer went away without closing it,
``StepStatus.OtherError``; ``failed_producers`` names whose stream, or holds -1 for the shared stream).
"""

from __future__ import annotations

import logging
import re
from contextlib import contextmanager

import numpy as np

from ..analytics.anomaly import parse_map
from .adios import begin_step, bindings, blocks_info_dims, deadline, declare_io, make_adios, open_reader
from .block import ReceivedBlock
from .block_check import check_block, writer_extent
from .mpiutil import allreduce_flag
from .wire import (REPORT_FIELDS, anomaly_name, assign_blocks, field_names, payload_name, qoi_blob, qoi_name, rank_stream,
                   report_get, report_name)

# ReceivedBlock (staging/block.py) stays importable from here: the readers return it
__all__ = ["ReceivedBlock", "SharedStreamReader", "PerRankStreamReader", "reader_status"]

logger = logging.getLogger(__name__)


def reader_status(step_status):
    """A reader's ``status`` after ``BeginStep``: ``"ok"``, ``"end"`` or ``"failed"``.

    Parameters
    ----------
    step_status : adios2.bindings.StepStatus
        As returned by :func:`~stagelearn.staging.adios.begin_step` (``OK``, ``EndOfStream``,
        ``OtherError``; ``NotReady`` raised there already).
    """
    b = bindings()
    if step_status == b.StepStatus.OK:
        return "ok"
    return "end" if step_status == b.StepStatus.EndOfStream else "failed"


@contextmanager
def _writer_failure(reader, producer):
    """A writer that dies between ``BeginStep`` and the data (``Writer failed before returning data``)
    ends the reader's stream as ``failed`` instead of raising."""
    try:
        yield
    except RuntimeError as exc:
        if "failed" not in str(exc).lower():
            raise
        text = re.sub(r"\x1b\[[0-9;]*m", "", " ".join(str(exc).split()))  # ADIOS2 colours its messages
        logger.error("stream of producer %s failed while reading a step: %s", "(shared)" if producer < 0 else producer,
                     text[-160:])
        reader.status = "failed"
        reader.failed_producers.add(producer)


def _any_failed(reader):
    """Collective: True on every rank of ``reader.comm`` when the read failed on any (writer gone)."""
    if allreduce_flag(reader.comm, reader.status == "failed"):
        reader.status = "failed"
        reader.failed_producers.add(-1)
        return True
    return False


def data_wait_message(path):
    """What the step_s watchdog says when a step's data never comes (the step itself was announced).

    The writer announced the step (``BeginStep`` returned it) but its data did not arrive: either the
    writer hangs, or the SST data plane the writer chose cannot deliver here. An SST reader follows
    the writer's ``DataTransport``; ``MPI`` needs ``MPI_Open_port``, which this MPI cannot do, and
    the reader then gets zeros for a step and waits for the next one for ever.
    """
    return (f"the data of a step on {path} (timeouts.step_s): the writer announced the step but its data never "
            "came. Either the writer hangs, or its SST data plane cannot deliver here: a code whose XML or own "
            "code sets DataTransport=MPI (this MPI cannot open the ports it needs) must use "
            "<parameter key=\"DataTransport\" value=\"WAN\"/> and not set DataTransport in its code; "
            "steps stored before this one may hold zeros instead of the code's data")


def _set_parameters(io, parameters):
    for key, value in (parameters or {}).items():
        io.SetParameter(key, str(value))


def _get_block(engine, io, name, bid, dtype=np.float32):
    b = bindings()
    v = io.InquireVariable(name)
    v.SetBlockSelection(bid)
    out = np.empty(int(v.SelectionSize()), dtype=dtype)
    engine.Get(v, out, b.Mode.Sync)
    return out


def _read_blocks(engine, io, step, writer_ids=None):
    """Read the blocks of every field variable of the current step (optionally some writers only)."""
    b = bindings()
    available = io.AvailableVariables()
    out, pending = [], []
    for var in field_names(available):
        rep_var = io.InquireVariable(report_name(var))
        rep_info = engine.BlocksInfo(report_name(var), step)
        raw_info = {}
        if var in available:
            raw_info = {int(bi["WriterID"]): bi for bi in engine.BlocksInfo(var, step)}
        qoi_ids = {}  # writer -> block of X/qoi (only coded blocks of a variable with a moment policy have one)
        if qoi_name(var) in available:
            qoi_ids = {int(bi["WriterID"]): int(bi["BlockID"]) for bi in engine.BlocksInfo(qoi_name(var), step)}
        for bi in rep_info:
            writer, bid = int(bi["WriterID"]), int(bi["BlockID"])
            if writer_ids is not None and writer not in writer_ids:
                continue
            row = np.empty(len(REPORT_FIELDS))
            rep_var.SetBlockSelection(bid)
            engine.Get(rep_var, row, b.Mode.Sync)
            blk = ReceivedBlock(var=var, rank=int(report_get(row, "rank")), report=row)
            if writer in raw_info:
                ri = raw_info[writer]
                v = io.InquireVariable(var)
                blk.shape = tuple(int(x) for x in v.Shape())
                blk.start, blk.count = blocks_info_dims(ri["Start"]), blocks_info_dims(ri["Count"])
                blk.raw = np.empty(blk.count, dtype=np.float32)
                v.SetSelection([list(blk.start), list(blk.count)])
                engine.Get(v, blk.raw, b.Mode.Deferred)
                pending.append((blk, ri))
            elif payload_name(var) in available:
                pv = io.InquireVariable(payload_name(var))
                pv.SetBlockSelection(bid)
                buf = np.empty(int(pv.SelectionSize()), dtype=np.uint8)
                engine.Get(pv, buf, b.Mode.Sync)
                blk.payload = buf.tobytes()
                if anomaly_name(var) in available:
                    blk.anomaly = parse_map(_get_block(engine, io, anomaly_name(var), bid))
                if writer in qoi_ids:
                    blk.qoi = qoi_blob(_get_block(engine, io, qoi_name(var), qoi_ids[writer], np.uint32))
            else:
                logger.error("step %d: writer %d reported %s but sent neither raw data nor payload", step, writer, var)
                continue
            out.append(blk)
    if pending:
        engine.PerformGets()
    for blk, info in pending:
        _check(blk, info)
    return out


_UNCHECKED_WARNED = set()  # variables whose writer recorded no min/max: warned once per process


def _check(blk, info):
    """Flag ``blk`` corrupt (logged) when its data cannot be what the writer's ``BlocksInfo`` describes.

    A writer that records no min/max (an SST writer without ``StatsLevel=1``) gives nothing to check
    against: said once per variable, so that "no corrupt block" is never read as "blocks checked".
    """
    if writer_extent(info) is None and blk.var not in _UNCHECKED_WARNED:
        _UNCHECKED_WARNED.add(blk.var)
        logger.warning("%s: the writer records no per-block min/max, so its blocks cannot be checked for corruption "
                       "(garbage or all-zero blocks would be stored as data); add <parameter key=\"StatsLevel\" "
                       "value=\"1\"/> to the code's stream IO", blk.var)
    blk.corrupt = check_block(blk.raw, info)
    if blk.corrupt:
        logger.error("step %d: %s block %d is corrupt: %s (stored as it came, kept out of the learner)", blk.step,
                     blk.var, blk.rank, blk.corrupt)


class _CohortReader:
    """One SST reader cohort over the staging communicator: open, begin and end steps, close
    (collective calls). Subclasses read the blocks of a step between :meth:`_begin` and :meth:`_end_step`."""

    peer = "the writer"  # for messages

    def __init__(self, config_file, io_name, stream_path, comm, known_ios, *, open_timeout_s, step_timeout_s,
                 parameters=None):
        self.comm = comm
        self.adios = make_adios(config_file, comm)
        self.io = declare_io(self.adios, io_name, config_file, known_ios)
        _set_parameters(self.io, parameters)
        self.path, self.step_timeout_s = stream_path, step_timeout_s
        self.engine = open_reader(self.io, stream_path, open_timeout_s, self.peer)
        self.n_producers = None
        self.status, self.failed_producers = "ok", set()
        self.on_step = None  # called with the writer's step once BeginStep returned it, before its data is read

    def _begin(self):
        """``BeginStep``; True when a step is there, else ``status`` says why."""
        self.status = reader_status(begin_step(self.engine, self.step_timeout_s, f"stream {self.path}"))
        if self.status == "failed":
            self.failed_producers.add(-1)
        if self.status == "ok" and self.on_step is not None:
            self.on_step(int(self.engine.CurrentStep()))
        return self.status == "ok"

    @contextmanager
    def _reading(self):
        """Around the reads of a step: a writer failure ends the stream, a silent writer the process (step_s)."""
        with _writer_failure(self, -1), deadline(self.step_timeout_s, data_wait_message(self.path)):
            yield

    def _end_step(self):
        """``EndStep`` unless the read failed on any rank (then nobody waits in it alone); True when done."""
        if _any_failed(self):
            return False
        self.engine.EndStep()
        return True

    def close(self):
        self.engine.Close()


class SharedStreamReader(_CohortReader):
    """One SST reader cohort over the staging communicator (collective calls).

    Parameters
    ----------
    config_file : str
    io_name : str
    stream_path : str
    comm : mpi4py.MPI.Comm
        Staging ranks.
    known_ios : collection of str
    open_timeout_s, step_timeout_s : float
    """

    peer = "simulation"

    def read_step(self):
        """Blocks of this rank for the next step, or None when the stream stops (collective; see ``status``)."""
        if not self._begin():
            return None
        step = self.engine.CurrentStep()
        reports = [n for n in self.io.AvailableVariables() if n.endswith("/report")]
        n_blocks = len(self.engine.BlocksInfo(reports[0], step)) if reports else 0
        self.n_producers = n_blocks
        mine = set(assign_blocks(n_blocks, self.comm.Get_size(), self.comm.Get_rank()))
        with self._reading():
            blocks = _read_blocks(self.engine, self.io, step, writer_ids=mine)
        return blocks if self._end_step() else None


class PerRankStreamReader:
    """The streams of this staging rank's producers, one serial SST reader each.

    Parameters
    ----------
    config_file, io_name, stream_path : str
    n_producers : int
        Producer ranks M (one stream each).
    comm : mpi4py.MPI.Comm
        Staging ranks (for the M-to-N assignment only; no collective here).
    known_ios : collection of str
    open_timeout_s, step_timeout_s : float
    """

    def __init__(self, config_file, io_name, stream_path, n_producers, comm, known_ios, *, open_timeout_s, step_timeout_s,
                 parameters=None):
        self.step_timeout_s = step_timeout_s
        self.n_producers = n_producers
        self.streams = []
        self.status, self.failed_producers = "ok", set()
        for p in assign_blocks(n_producers, comm.Get_size(), comm.Get_rank()):
            adios = make_adios(config_file, None)
            io = declare_io(adios, io_name, config_file, known_ios)
            _set_parameters(io, parameters)
            path = rank_stream(stream_path, p)
            engine = open_reader(io, path, open_timeout_s, f"producer rank {p}")
            self.streams.append({"adios": adios, "io": io, "engine": engine, "path": path, "ended": False, "producer": p})

    def read_step(self):
        """Blocks of this rank's producers for the next step, or None once all streams stopped (see ``status``)."""
        blocks, any_open = [], False
        for s in self.streams:
            if s["ended"]:
                continue
            status = reader_status(begin_step(s["engine"], self.step_timeout_s, f"stream {s['path']}"))
            if status != "ok":
                s["ended"] = True
                if status == "failed":
                    self.failed_producers.add(s["producer"])
                    self.status = "failed"
                continue
            with _writer_failure(self, s["producer"]), deadline(self.step_timeout_s, data_wait_message(s["path"])):
                got = _read_blocks(s["engine"], s["io"], s["engine"].CurrentStep())
                s["engine"].EndStep()
                blocks += got
                any_open = True
            if self.status == "failed":
                s["ended"] = True
        if not any_open and self.status == "ok":
            self.status = "end"
        return blocks if any_open else None

    def close(self):
        for s in self.streams:
            s["engine"].Close()
