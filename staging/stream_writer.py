"""The producer's side of the data stream: every ADIOS2 call that writes a simulation's steps.

One :class:`StreamWriter` per producer rank holds the data IO and its engine: the SST queue
settings (:data:`~stagelearn.staging.wire.SST_QUEUE_DEFAULTS` where neither the run nor the XML
sets them), the variables of each field (``X``, ``X/payload``, ``X/report``, ``X/anomaly``,
:mod:`.wire`), the bounded ``Open``, one ``BeginStep``/``Put``/``EndStep`` per step (timing the
``EndStep``, where SST's ``QueueFullPolicy=Block`` waits), the plain BP5 file when the XML names
no SST engine, and ``Close``.
"""

from __future__ import annotations

import logging
import time

import numpy as np

from . import contact
from .adios import bindings, deadline, declare_io, make_adios, open_writer, remove_stale_contact_file
from .wire import (REPORT_FIELDS, SST_QUEUE_DEFAULTS, WIRE_DTYPE, anomaly_name, payload_name, qoi_array, qoi_name,
                   report_name)

logger = logging.getLogger(__name__)

#: How messages name the timeouts when the run YAML set them (a :class:`~.producer.Producer` names its arguments).
TIMEOUT_NAMES = {"open": "timeouts.open_s", "step": "timeouts.step_s"}


class StreamWriter:
    """The data stream of one producer rank (or of all ranks as one shared SST writer).

    Parameters
    ----------
    config_file : str
        ADIOS2 XML defining ``io_name``.
    io_name : str
        The data IO.
    known_ios : dict
        The XML's IOs (:func:`stagelearn.staging.xmlconfig.read_ios`).
    comm : mpi4py.MPI.Comm or None
        The ADIOS object's communicator: the producers' in the shared layout (then ``open``,
        ``put_step``, ``write_plain`` and ``close`` are collective over it), None per rank.
    sst_parameters : dict of str to str, optional
        SST parameters set over the XML (only when the engine is SST).

    Attributes
    ----------
    streaming : bool
        True when the IO's engine is SST (else it writes a BP file).
    queue_limit : int
        SST ``QueueLimit`` (0: unbounded).
    queue_full_policy : str
        SST ``QueueFullPolicy`` (``Block`` or ``Discard``).
    """

    def __init__(self, config_file, io_name, known_ios, comm=None, sst_parameters=None):
        self.adios = make_adios(config_file, comm)
        self.io = declare_io(self.adios, io_name, config_file, known_ios)
        self.streaming = self.io.EngineType().lower() == "sst"
        sst = dict(sst_parameters or {})
        if self.streaming:
            for key, value in sst.items():
                self.io.SetParameter(key, str(value))
        params = self.io.Parameters()
        for key, value in SST_QUEUE_DEFAULTS.items():  # never an unbounded queue by default
            if self.streaming and key not in params and key not in sst:
                self.io.SetParameter(key, str(value))
                params[key] = str(value)
        self.queue_limit = int(params.get("QueueLimit", "0") or 0)
        self.queue_full_policy = params.get("QueueFullPolicy", "Block")
        if self.streaming and self.queue_limit <= 0:
            logger.warning("stream IO %s has no QueueLimit: the writer queue is unbounded while staging is slow", io_name)
        self.engine = None
        self._claim = None  # this rank's claim on the contact file (owner rank, SST)
        self._abandoned = None
        self._vars = {}
        self.timeout_names = dict(TIMEOUT_NAMES)  # how messages name the open and step timeouts

    @property
    def engine_type(self):
        """The ADIOS2 engine of the data IO (``SST``, ``BP5``...)."""
        return self.io.EngineType()

    @property
    def is_open(self):
        """True between :meth:`open` and :meth:`close` (or :meth:`abandon`)."""
        return self.engine is not None

    def define(self, name, shape, start, count):
        """Define a field's variables: ``name`` (float32, global ``shape``, this rank's ``start``/``count``)
        and, when streaming, ``name/payload``, ``name/report``, ``name/anomaly`` and ``name/qoi``."""
        self._vars[name] = self.io.DefineVariable(name, np.zeros(1, dtype=WIRE_DTYPE), list(shape), list(start),
                                                  list(count))
        if self.streaming:
            self._vars[payload_name(name)] = self.io.DefineVariable(payload_name(name), np.zeros(1, np.uint8), [], [], [1])
            self._vars[report_name(name)] = self.io.DefineVariable(
                report_name(name), np.zeros(len(REPORT_FIELDS)), [], [], [len(REPORT_FIELDS)])
            self._vars[anomaly_name(name)] = self.io.DefineVariable(anomaly_name(name), np.zeros(1, np.float32), [], [], [1])
            self._vars[qoi_name(name)] = self.io.DefineVariable(qoi_name(name), np.zeros(1, np.uint32), [], [], [1])

    def prepare(self, stream_path, owner):
        """The path to open for ``stream_path`` (``.bp`` added without SST).

        With SST and ``owner`` (the rank that writes the contact file), a contact file left by a
        writer that is gone is removed, and the contact file is claimed for this process
        (``<stream_path>.sst.owner``, :mod:`.contact`) until :meth:`close`.

        Raises
        ------
        ContactFileInUse
            (exit code 2) If a live writer of another job owns the contact file: two producers on
            one run directory.
        """
        if not self.streaming:
            return stream_path + ".bp"
        if owner:
            remove_stale_contact_file(stream_path)
            claim = contact.owner_file(stream_path)
            if contact.claim(claim, "the data stream's SST contact file"):
                self._claim = claim
        return stream_path

    def open(self, path, timeout_s):
        """Open the engine for writing at ``path`` (with SST: waits, at most ``timeout_s``, for staging).

        Past ``timeout_s`` the process exits with code 3 (:func:`~stagelearn.staging.adios.deadline`);
        SIGINT/SIGTERM while it waits end it at once with 130/143 (:func:`~stagelearn.staging.adios.open_writer`).
        """
        if self.streaming:
            self.io.DefineAttribute("stagelearn/report_fields", list(REPORT_FIELDS))
        self.engine = open_writer(self.io, path, timeout_s, f"staging to open stream {path} ({self.timeout_names['open']})",
                                  contact_file=self._claim is not None)

    def put_step(self, step, records, timeout_s):
        """Put one step's records on the stream.

        Parameters
        ----------
        step : int
        records : list of dict
            One per field: ``var`` and ``report``, and either ``payload`` (bytes, with ``amap``
            the anomaly map or None) or ``raw`` (float32 block, possibly empty) with ``start``.
        timeout_s : float
            Bound on the whole step (exit code 3 past it).

        Returns
        -------
        blocked : float
            Seconds spent in ``EndStep`` (SST's ``QueueFullPolicy=Block`` waits there).
        """
        b = bindings()
        with deadline(timeout_s, f"staging to accept step {step} ({self.timeout_names['step']})"):
            self.engine.BeginStep()
            for r in records:
                name = r["var"]
                if "payload" in r:
                    payload = np.frombuffer(r["payload"], dtype=np.uint8).copy()
                    var = self._vars[payload_name(name)]
                    var.SetSelection([[], [payload.size]])
                    self.engine.Put(var, payload, b.Mode.Sync)
                    if r.get("amap") is not None:
                        v = self._vars[anomaly_name(name)]
                        v.SetSelection([[], [r["amap"].size]])
                        self.engine.Put(v, r["amap"], b.Mode.Sync)
                    if r.get("qoi") is not None:  # moment side information (wire.qoi_array)
                        q = qoi_array(r["qoi"])
                        v = self._vars[qoi_name(name)]
                        v.SetSelection([[], [q.size]])
                        self.engine.Put(v, q, b.Mode.Sync)
                else:
                    var = self._vars[name]
                    var.SetSelection([list(r["start"]), list(r["raw"].shape)])  # empty: this rank has no block
                    self.engine.Put(var, r["raw"], b.Mode.Sync)
                self.engine.Put(self._vars[report_name(name)], r["report"], b.Mode.Sync)
            t = time.monotonic()
            self.engine.EndStep()
            return time.monotonic() - t

    def write_plain(self, step, blocks, timeout_s):
        """Write one step of raw float32 blocks to the BP file (no SST: the simulation writes the file itself).

        Parameters
        ----------
        step : int
        blocks : dict of str to ndarray of float32
            This rank's block of each field; an empty block writes nothing.
        timeout_s : float
        """
        b = bindings()
        with deadline(timeout_s, f"writing step {step} ({self.timeout_names['step']})"):
            self.engine.BeginStep()
            for name, block in blocks.items():
                if block.size:
                    self.engine.Put(self._vars[name], block, b.Mode.Sync)
            self.engine.EndStep()

    def abandon(self):
        """Drop the engine of a lost staging without closing it.

        SST's writer ``Close`` waits for its readers to release their queued steps, forever for a
        staging that hangs; the engine is kept referenced and dropped at exit ("Destroyed without
        a prior Close()").
        """
        self._abandoned, self.engine = self.engine, None

    def close(self, timeout_s):
        """Close the engine (SST waits for staging to release the last steps; bounded by ``timeout_s``)."""
        if self.engine is not None:
            with deadline(timeout_s, f"staging to release the last steps at close ({self.timeout_names['step']})"):
                self.engine.Close()
            self.engine = None
        if self._claim is not None:
            contact.release(self._claim)
            self._claim = None
