"""Writing the compressed output file (layout: :mod:`.output_format`), collectively over staging.

With an MPI build of ADIOS2 every staging rank opens the one BP5 file over the staging
communicator and puts its own blocks; ADIOS2 aggregates them (its ``AggregationType`` and
``NumAggregators`` settings in the XML decide which ranks move data to which subfile). Rank 0
adds only the per-step items: the step number, a newly published encoder, optional
summaries and, in transit, the code's stream attributes that are new or changed
(:mod:`.code_attributes`, stored as ``code/<name>``). No block crosses the staging communicator
in stagelearn's code.

With a serial ADIOS2 (or ``gather=True``) the blocks are gathered on rank 0 as one byte bundle
per rank (:func:`~stagelearn.staging.block.pack_blocks`, buffer-based MPI, no pickle) and rank 0
writes the file alone, as before the collective writer existed.
"""

from __future__ import annotations

import logging

import numpy as np

from ..analytics.encoder import spec_to_bytes
from ..analytics.payload import encode_raw_block
from .adios import bindings, built_with_mpi, declare_io, make_adios
from .block import pack_blocks, unpack_blocks
from .code_attributes import define_attribute, same_value, suspected_loss
from .mpiutil import gather_bytes
from .output_format import (REPORT_FIELDS_ATTR, STEP_VAR, code_attribute_name, encoder_prefix, summary_name,
                            summary_step_name)
from .wire import REPORT_FIELDS, anomaly_name, payload_name, qoi_array, qoi_name, report_name
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


def _open_io(config_file, io_name, comm, tag):
    """``(adios, io)``: the XML's ``io_name``, or a plain BP5 IO when ``io_name`` is None."""
    b = bindings()
    if io_name is None:  # a plain BP5 file (producers' fallback files need no XML entry)
        adios = b.ADIOS(comm) if comm is not None else b.ADIOS()
        io = adios.DeclareIO(tag)
        io.SetEngine("BP5")
        return adios, io
    adios = make_adios(config_file, comm)
    return adios, declare_io(adios, io_name, config_file, read_ios(config_file))


def _anomaly_array(blk):
    """The block's anomaly map as stored: float32 ``[n, rows...]`` (``[0]`` when it has none)."""
    rows = [] if blk.anomaly is None else np.asarray(blk.anomaly).ravel()
    return np.concatenate([[0.0 if blk.anomaly is None else float(len(blk.anomaly))], rows]).astype(np.float32)


class CompressedOutputWriter:
    """BP5 writer of the compressed stream, collective over the staging communicator.

    Parameters
    ----------
    config_file : str or None
        ADIOS2 XML defining ``io_name``.
    io_name : str or None
        None: a plain BP5 engine, no XML needed.
    path : str
        Output file (e.g. ``results/<run>/compressed.bp``).
    comm : mpi4py.MPI.Comm or None
        Staging ranks. The constructor, :meth:`write_step` and :meth:`close` are collective over
        it. None: a serial writer of the blocks it is given (producers' fallback files).
    gather : bool or None, keyword-only
        Gather the blocks on rank 0, which writes alone. Default (None): only when ADIOS2 is
        built without MPI and ``comm`` has several ranks.

    Attributes
    ----------
    collective : bool
        True when every rank puts its own blocks through ADIOS2 over ``comm``.
    bytes_put : int
        Bytes this rank passed to ADIOS2 ``Put`` for blocks (payload, anomaly map, report).
    bytes_gathered : int
        Bytes of block bundles this rank received from other ranks (rank 0, gather mode only).

    Raises
    ------
    ConfigError
        If the XML or its IO is missing.
    AdiosUnavailableError
        If ADIOS2 is not installed.
    """

    def __init__(self, config_file, io_name, path, comm=None, *, gather=None):
        self.comm, self.path = comm, str(path)
        size = comm.Get_size() if comm is not None else 1
        self.rank = comm.Get_rank() if comm is not None else 0
        if gather is None:
            gather = size > 1 and not built_with_mpi()
        self.gather = bool(gather) and size > 1
        self.collective = size > 1 and not self.gather
        self.bytes_put = self.bytes_gathered = 0
        self.engine, self._vars = None, {}
        self._code_attrs, self.attributes_not_stored = {}, {}  # code attributes defined so far; name -> why not
        if self.gather and self.rank != 0:
            return  # rank 0 writes
        b = bindings()
        self.adios, self.io = _open_io(config_file, io_name, comm if self.collective else None,
                                       f"stagelearn-file-{id(self)}")
        self.io.DefineAttribute(REPORT_FIELDS_ATTR, list(REPORT_FIELDS))
        self.engine = self.io.Open(self.path, b.Mode.Write)

    def _local(self, name, arr):
        var = self._vars.get(name)
        if var is None:
            var = self.io.DefineVariable(name, arr, [], [], [arr.size])
            self._vars[name] = var
        var.SetSelection([[], [arr.size]])
        return var

    def _global(self, name, arr):
        var = self._vars.get(name)
        if var is None:
            var = self.io.DefineVariable(name, arr, list(arr.shape), [0] * arr.ndim, list(arr.shape))
            self._vars[name] = var
        var.SetShape(list(arr.shape))
        var.SetSelection([[0] * arr.ndim, list(arr.shape)])
        return var

    def _put(self, var, arr):
        self.engine.Put(var, arr, bindings().Mode.Sync)

    def write_step(self, step, blocks, *, encoder=None, summary=None, attributes=None):
        """Write one output step (collective over ``comm``).

        Parameters
        ----------
        step : int
            Producer output step; the same on every rank.
        blocks : list of ReceivedBlock
            This rank's producer blocks of the step (raw or payload); may be empty.
        encoder : Encoder, optional
            An encoder published at this step, stored once (used on rank 0 only).
        summary : dict of str to array_like, optional
            Per-step numeric items, stored as 1-D arrays ``summary/<name>`` with the step in
            ``summary/<name>/step`` (rank 0 only).
        attributes : dict of str to value, optional
            The code's stream attributes as of this step (in transit, rank 0 only;
            :func:`~.code_attributes.stream_attributes`): the new or changed ones are stored as
            ``code/<name>``. Default: ``summary.attributes`` when ``summary`` has one
            (:class:`~.step_facts.StepItems`).
        """
        if attributes is None:
            attributes = getattr(summary, "attributes", None)
        summary = _numeric_items(self.path, summary)  # checked before any collective (BeginStep/EndStep)
        if self.gather:
            parts = gather_bytes(self.comm, pack_blocks(blocks))
            if self.rank != 0:
                return
            self.bytes_gathered += sum(len(p) for p in parts[1:])
            blocks = list(blocks) + [blk for p in parts[1:] for blk in unpack_blocks(p)]
        self.engine.BeginStep()
        if self.rank == 0:
            self._put_step_items(step, encoder, summary)
            self._define_code_attributes(step, attributes)
        for blk in sorted(blocks, key=lambda x: (x.var, x.rank)):
            self._put_block(step, blk)
        self.engine.EndStep()

    def _put_step_items(self, step, encoder, summary):
        s = np.array([step], dtype=np.int64)
        self._put(self._global(STEP_VAR, s), s)
        if encoder is not None:
            prefix = encoder_prefix(encoder.version)
            spec = spec_to_bytes(encoder.spec())
            self._put(self._global(f"{prefix}/spec", spec), spec)
            for name, arr in encoder.arrays().items():
                self._put(self._global(f"{prefix}/{name}", arr), arr)
        for name, arr in (summary or {}).items():
            self._put(self._global(summary_name(name), arr), arr)
            self._put(self._global(summary_step_name(name), s), s)

    def _define_code_attributes(self, step, attributes):
        """Define the code's attributes that are new or changed since the last step (rank 0)."""
        for name, value in (attributes or {}).items():
            if name in self._code_attrs and same_value(self._code_attrs[name], value):
                continue
            try:
                define_attribute(self.io, code_attribute_name(name), value)
            except ValueError as exc:
                if name not in self.attributes_not_stored:
                    logger.warning("%s: step %d: the code's %s; it is not stored", self.path, step, exc)
                self.attributes_not_stored[name] = str(exc)
                continue
            self._code_attrs[name] = value
            warning = suspected_loss(name, value)
            if warning:
                logger.warning("%s: step %d: %s", self.path, step, warning)

    def _put_block(self, step, blk):
        if blk.raw is not None:
            payload = encode_raw_block(blk.raw, header={"step": int(step), "variable": blk.var, "rank": blk.rank,
                                                        "shape": list(blk.shape), "start": list(blk.start),
                                                        "count": list(blk.count)})
        else:
            payload = blk.payload
        p = np.frombuffer(payload, dtype=np.uint8).copy()
        amap = _anomaly_array(blk)
        report = np.array(blk.report, dtype=np.float64)  # a writeable copy (ADIOS2 Put needs one)
        items = [(payload_name(blk.var), p), (anomaly_name(blk.var), amap), (report_name(blk.var), report)]
        if blk.qoi is not None:  # only blocks with side information (their report's qoi_bytes > 0), in block order
            items.append((qoi_name(blk.var), qoi_array(blk.qoi)))
        for name, arr in items:
            self._put(self._local(name, arr), arr)
            self.bytes_put += arr.nbytes

    def close(self):
        """Close the file (collective over ``comm`` when collective)."""
        if self.engine is not None:
            self.engine.Close()
            self.engine = None


def write_field_bp(path, name, field):
    """Write one array as a one-step BP5 file (``stagelearn decode -o FILE.bp``).

    Parameters
    ----------
    path : str
    name : str
        Variable name.
    field : ndarray
        Written as a global array of its own shape.
    """
    b = bindings()
    adios = b.ADIOS()
    io = adios.DeclareIO("decoded")
    io.SetEngine("BP5")
    var = io.DefineVariable(name, field, list(field.shape), [0] * field.ndim, list(field.shape))
    engine = io.Open(str(path), b.Mode.Write)
    engine.BeginStep()
    engine.Put(var, field, b.Mode.Sync)
    engine.EndStep()
    engine.Close()


def _numeric_items(path, summary):
    """``summary`` as 1-D numeric arrays; TypeError naming the item otherwise (raised on the calling
    rank before the step's collectives, so no other rank waits in ``EndStep``)."""
    out = {}
    for name, value in (summary or {}).items():
        arr = np.array(value).ravel()
        if arr.dtype.kind not in "fiu":
            raise TypeError(f"{path}: summary item {name!r} is {arr.dtype}, not numeric")
        out[name] = arr
    return out
