"""The reverse stream: staging publishes encoders, producers poll for them without blocking.

One writer (staging rank 0) and one reader (producer rank 0), each its own ADIOS2 object over
``COMM_SELF``, so the channel works the same with a serial or an MPI build of ADIOS2. Each
publication is one step holding ``model/spec`` (uint8 UTF-8 JSON, see
:meth:`stagelearn.analytics.encoder.Encoder.spec`) and one float32 variable per array
(``model/<variable>/mean_``, ``model/<variable>/components_``). No pickle: the reader checks every
name, shape and dtype against the spec (:meth:`Encoder.from_arrays`).

The XML's ``ModelUpdates`` IO should use ``RendezvousReaderCount=1`` (SST admits a late reader
only inside the writer's ``EndStep``, and staging publishes only after it has data, so a reader
that must wait for the first publication to finish its ``Open`` would deadlock the producers) and
``QueueFullPolicy=Discard``, so that after the rendezvous staging never waits on producers.
Producers always take the newest version available.

Every step staging stores also publishes a small step with ``model/ack`` (int64: the last output
step written to ``compressed.bp``), with or without an encoder. Producers use it to know which of
their steps are safe (the rest are replayed to their fallback file if staging goes away) and how
deep the queue is. A publisher that dies shows up on the reader as a failed stream
(``StepStatus.OtherError``), one that closes as the end of the stream; both set
:attr:`ModelSubscriber.ended` before the producers closed theirs, which they treat as staging lost.
"""

from __future__ import annotations

import logging

import numpy as np

from ..analytics.encoder import Encoder, EncoderFormatError, spec_from_bytes, spec_to_bytes
from . import contact
from .adios import bindings, deadline, declare_io, make_adios, open_reader, open_writer, remove_stale_contact_file
from .errors import ModelFormatError

logger = logging.getLogger(__name__)

SPEC_VAR = "model/spec"
VERSION_VAR = "model/version"
TRAINED_VAR = "model/trained_until_step"
ACK_VAR = "model/ack"
SCALAR_VARS = (VERSION_VAR, TRAINED_VAR)
PREFIX = "model/"


def open_model_io(config_file, io_name, known_ios, sst_parameters=None):
    """The model stream's ADIOS object and IO, over ``COMM_SELF`` (both sides open it the same way).

    Parameters
    ----------
    config_file : str
        ADIOS2 XML defining ``io_name``.
    io_name : str
        The model IO (``adios2.model_io`` in the run YAML).
    known_ios : dict
        The XML's IOs (:func:`stagelearn.staging.xmlconfig.read_ios`).
    sst_parameters : dict, optional
        The data stream's SST parameters; only ``NetworkInterface`` applies to the model stream.

    Returns
    -------
    adios, io
        Keep ``adios`` alive as long as the engine opened on ``io``.
    """
    adios = make_adios(config_file, None)
    io = declare_io(adios, io_name, config_file, known_ios)
    if sst_parameters and "NetworkInterface" in sst_parameters:
        io.SetParameter("NetworkInterface", str(sst_parameters["NetworkInterface"]))
    return adios, io


class ModelPublisher:
    """Writes encoders on the reverse stream (staging side).

    Parameters
    ----------
    io : adios2.bindings.IO
        The model IO (engine from the XML), on an ADIOS object over ``COMM_SELF``.
    stream_path : str
        Stream name (SST writes ``<stream_path>.sst`` as contact file).
    open_timeout_s : float
        Bound on waiting for the producers' reader at ``Open`` (exit code 3 past it; SIGINT/SIGTERM
        while it waits end the process at once with 130/143).

    Raises
    ------
    ContactFileInUse
        (exit code 2) If the model stream's contact file belongs to a live staging of another job
        (two staging jobs on one run directory); see :mod:`.contact`.
    """

    def __init__(self, io, stream_path, open_timeout_s):
        self.io = io
        self.stream_path = stream_path
        remove_stale_contact_file(stream_path)
        self._claim = contact.owner_file(stream_path)
        contact.claim(self._claim, "the model stream's SST contact file")
        self.engine = open_writer(io, stream_path, open_timeout_s,
                                  f"producer rank 0 to open the model stream {stream_path} (timeouts.open_s)",
                                  contact_file=True)
        self._vars = {}

    def _var(self, name, arr):
        shape, zeros = list(arr.shape), [0] * arr.ndim
        var = self._vars.get(name)
        if var is None:
            var = self.io.DefineVariable(name, arr, shape, zeros, shape)
            self._vars[name] = var
        var.SetShape(shape)
        var.SetSelection([zeros, shape])
        return var

    def publish(self, encoder=None, *, ack=None):
        """Write one step: an encoder, an acknowledgement (last output step stored), or both
        (never blocks with a Discard queue policy)."""
        b = bindings()
        self.engine.BeginStep()
        if ack is not None:
            arr = np.array([int(ack)], dtype=np.int64)
            self.engine.Put(self._var(ACK_VAR, arr), arr, b.Mode.Sync)
        if encoder is not None:
            spec = spec_to_bytes(encoder.spec())
            self.engine.Put(self._var(SPEC_VAR, spec), spec, b.Mode.Sync)
            for name, value in ((VERSION_VAR, encoder.version), (TRAINED_VAR, encoder.trained_until_step)):
                arr = np.array([value], dtype=np.int64)
                self.engine.Put(self._var(name, arr), arr, b.Mode.Sync)
            for name, arr in encoder.arrays().items():
                self.engine.Put(self._var(PREFIX + name, arr), arr, b.Mode.Sync)
        self.engine.EndStep()
        if encoder is not None:
            logger.info("published encoder version %d (trained until step %d)", encoder.version, encoder.trained_until_step)

    def close(self, timeout_s=60.0):
        """Close the stream (bounded: SST waits for readers to release queued steps)."""
        with deadline(timeout_s, f"producer rank 0 to release the model stream {self.stream_path}"):
            self.engine.Close()
        contact.release(self._claim)


class ModelSubscriber:
    """Polls the reverse stream for new encoders (producer side).

    Parameters
    ----------
    io : adios2.bindings.IO
        The model IO, on an ADIOS object over ``COMM_SELF``.
    stream_path : str
    open_timeout_s : float
        How long ``Open`` waits for the publisher's contact file (SST ``OpenTimeoutSecs``).
    """

    def __init__(self, io, stream_path, open_timeout_s):
        self.io = io
        self.stream_path = stream_path
        self.engine = open_reader(io, stream_path, open_timeout_s, "staging (model publisher)")
        self.version = 0
        self.ended = False
        self.failed = False
        self.acked = -1

    def poll(self):
        """Return the newest valid encoder published since the last call, or None (never blocks).

        Also advances :attr:`acked` (the last output step staging stored). A malformed update is
        logged and skipped (the last good encoder stays in use); a broken stream (the publisher
        died) sets :attr:`failed` and :attr:`ended`, a closed one :attr:`ended`.
        """
        b = bindings()
        newest = None
        while not self.ended:
            status = self.engine.BeginStep(b.StepMode.Read, 0.0)
            if status == b.StepStatus.NotReady:
                break
            if status != b.StepStatus.OK:
                if status != b.StepStatus.EndOfStream:
                    logger.error("model stream %s failed (%s): staging is gone", self.stream_path, status)
                    self.failed = True
                self.ended = True
                break
            try:
                if ACK_VAR in self.io.AvailableVariables():
                    self.acked = max(self.acked, int(self._get(ACK_VAR, np.int64)[0]))
                if SPEC_VAR not in self.io.AvailableVariables():
                    continue  # an acknowledgement only
                enc = self._read_step()
            except ModelFormatError as exc:
                logger.error("%s; keeping encoder version %d", exc, self.version)
                continue
            finally:
                self.engine.EndStep()
            if enc.version <= self.version:
                logger.warning("ignoring encoder version %d (have %d)", enc.version, self.version)
                continue
            newest, self.version = enc, enc.version
        return newest

    def _read_step(self):
        available = set(self.io.AvailableVariables())
        if SPEC_VAR not in available:
            raise ModelFormatError(f"model step without {SPEC_VAR} (variables: {sorted(available)})")
        try:
            spec = spec_from_bytes(self._get(SPEC_VAR, np.uint8))
        except EncoderFormatError as exc:
            raise ModelFormatError(f"rejected model update on {self.stream_path}: {exc}") from None
        scalars = {}
        for name in SCALAR_VARS:
            if name in available:
                scalars[name] = int(self._get(name, np.int64)[0])
        arrays = {}
        for name in sorted(available - {SPEC_VAR, ACK_VAR} - set(SCALAR_VARS)):
            if not name.startswith(PREFIX):
                raise ModelFormatError(f"unexpected variable {name!r} on the model stream")
            var = self.io.InquireVariable(name)
            if var.Type() != "float":
                raise ModelFormatError(f"model variable {name!r} has type {var.Type()}, expected float")
            arrays[name[len(PREFIX):]] = self._get(name, np.float32)
        try:
            enc = Encoder.from_arrays(spec, arrays)
        except EncoderFormatError as exc:
            raise ModelFormatError(f"rejected model update on {self.stream_path}: {exc}") from None
        if scalars.get(VERSION_VAR, enc.version) != enc.version or \
                scalars.get(TRAINED_VAR, enc.trained_until_step) != enc.trained_until_step:
            raise ModelFormatError(f"rejected model update on {self.stream_path}: {VERSION_VAR}/{TRAINED_VAR} disagree with the spec")
        return enc

    def _get(self, name, dtype):
        b = bindings()
        var = self.io.InquireVariable(name)
        shape = [int(c) for c in var.Shape()]
        if not shape or any(n <= 0 for n in shape) or int(np.prod(shape)) > 2**28:
            raise ModelFormatError(f"model variable {name!r} has unusable shape {shape}")
        var.SetSelection([[0] * len(shape), shape])
        out = np.empty(shape, dtype=dtype)
        self.engine.Get(var, out, b.Mode.Sync)
        return out

    def close(self):
        self.engine.Close()
