"""The producer API: what a simulation calls to stream its fields and receive encoders.

Minimal use, from any mpi4py simulation::

    from stagelearn.staging import Producer
    with Producer("run/sst/stream", comm=comm, config_file="adios2.xml") as prod:
        prod.define_variable("T", shape=global_shape, start=start, count=count)
        prod.open()
        for step in range(n_steps):
            ...advance the simulation...
            prod.write(step, {"T": local_block})

``write`` sends raw float32 blocks until staging pushes an encoder back, then per-tile codes
(:func:`stagelearn.analytics.step_encode.encode_step_block`: PCA or autoencoder, optionally
predicted from the previous step's reconstruction and with a pointwise error bound, as the
encoder's policy says) plus the worst-reconstructed tiles raw, and in every step a report of bytes
and of the error of what was sent against the raw block.

Staging failure: staging acknowledges every step it has stored (``model/ack`` on the model
stream). When its model stream fails or ends before this side closes, or it stops acknowledging
(``peer_timeout_s``), all ranks switch together, at a step boundary, to their fallback file: first
the steps they sent that staging never acknowledged (each rank keeps the raw blocks of its last
``QueueLimit + 3`` steps for that), then every later step. The simulation keeps running.

:class:`Producer` is a facade over one piece per concern: :class:`~.stream_writer.StreamWriter` (the
ADIOS2 data stream), :class:`~.producer_link.StagingLink` (acknowledgements, staging loss,
fallback, replay), :class:`~.step_coder.StepCoder` (what each block becomes) and
:mod:`.field_check` (what ``write`` accepts).
"""

from __future__ import annotations

import logging
import os
import time

from . import producer_exit, signals
from .errors import Interrupted, StreamTimeoutError
from .fallback import FallbackSink
from .field_check import check_fields, check_selection
from .ledger import producer_part
from .model_channel import ModelSubscriber, open_model_io
from .mpiutil import raise_first_error
from .producer_link import StagingLink
from .results import write_json
from .step_coder import StepCoder
from .stream_writer import StreamWriter
from .wire import rank_stream, resolve_layout
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


def default_run_dir(stream_path):
    """The run directory of a stream: the folder above the stream's when that is ``sst/``, else the stream's."""
    parent = os.path.dirname(os.path.abspath(stream_path))
    return os.path.dirname(parent) if os.path.basename(parent) == "sst" else parent


PRODUCER_RECORD = "producer.json"


def producer_record(producer, *, status="clean", wall_s=None, **extra):
    """The side's record that ``stagelearn report`` reads (``producer.json``), from a closed :class:`Producer`.

    Parameters
    ----------
    producer : Producer
    status : {"clean", "interrupted"}
    wall_s : float, optional
        Seconds the side ran (default: since the producer was made).
    **extra
        Fields known only to the caller (``steps_written``, ``compute_s``, ``io_s``, ``reference``,
        ``source``...), set over the producer's own.

    Returns
    -------
    record : dict
        ``steps_written``, ``ranks``, ``layout``, ``engine``, ``last_encoder_version``, ``reference``
        (None: no end-to-end check), ``staging_lost``, ``stalls``, ``stall_s``, ``queue_limit``,
        ``queue_full_policy``, ``fallback_file``, ``status``, ``compute_s``/``io_s`` (None when
        unknown), ``source`` and ``wall_s``.
    """
    record = {"steps_written": producer.steps_written, "compute_s": None, "io_s": None,
              "ranks": producer.comm.Get_size(), "layout": producer.layout, "engine": producer.engine_type,
              "last_encoder_version": producer.encoder.version if producer.encoder else 0, "reference": None,
              "staging_lost": producer.staging_lost, "stalls": producer.stalls, "stall_s": producer.stall_s,
              "queue_limit": producer.queue_limit, "queue_full_policy": producer.queue_full_policy,
              "fallback_file": producer.fallback_file, "status": status, "source": "Producer",
              "wall_s": time.time() - producer.created_at if wall_s is None else wall_s}
    record.update(extra)
    return record


def write_producer_record(run_dir, record):
    """Write ``record`` (:func:`producer_record`) to ``<run_dir>/producer.json`` (rank 0 calls this)."""
    write_json(os.path.join(str(run_dir), PRODUCER_RECORD), record)


def _delegate(part, name, default=None, doc=None):
    """A read-only property reading ``self.<part>.<name>`` (``default`` while the part is None)."""
    def get(self):
        obj = getattr(self, part)
        return default if obj is None else getattr(obj, name)

    return property(get, doc=doc)


class Producer:
    """Streams a simulation's blocks to staging and applies the encoders it pushes back.

    Parameters
    ----------
    stream_path : str
        Stream name; SST writes its contact file next to it (``<stream_path>.sst``), BP5 writes
        ``<stream_path>.bp``.
    comm : mpi4py.MPI.Comm
        The simulation's ranks. ``open``, ``write`` and ``close`` are collective over ``comm``.
    config_file : str
        ADIOS2 XML defining ``io_name`` and ``model_io_name``.
    io_name, model_io_name : str
        IO of the data stream and of the reverse (model) stream.
    layout : {"auto", "shared", "per_rank"}
        ``shared``: the ranks form one SST writer (needs ADIOS2 with MPI); ``per_rank``: each rank
        writes its own stream ``<stream_path>.p<rank>``.
    open_timeout_s, step_timeout_s : float
        Bounds on waiting for staging to connect and for one step to be accepted; past them the
        process exits with code 3 and says what it waited for.
    sz3_every : int, default=0
        Also compress every n-th encoded step with SZ3 at the PSNR reached, for the report.
    sst_parameters : dict of str to str, optional
        SST parameters of the data stream set over the XML (``QueueLimit``, ``QueueFullPolicy``,
        ``NetworkInterface``; see :func:`stagelearn.staging.config.sst_parameters`);
        ``NetworkInterface`` also applies to the model stream. Where neither sets them the queue
        is :data:`~stagelearn.staging.wire.SST_QUEUE_DEFAULTS` (``QueueLimit=4``, ``QueueFullPolicy=Block``).
    run_dir : str, optional
        Where ``ledger/producer.p<rank>.jsonl`` goes (default: the folder above the stream's).
    fallback_dir : str, optional
        Where each rank writes its steps once staging is gone (default ``<run_dir>/fallback``).
    fallback_encode : bool, default=True
        Fallback steps coded with the last encoder (else raw float32).
    peer_timeout_s : float, default=30
        Staging is declared lost when it acknowledged no step for this long while this side's
        queue is full (a staging that dies is seen at once, from its model stream); steps then go
        to per-rank fallback files (see the module docstring).
    timeout_names : dict, optional
        How error messages name the ``open`` and ``step`` timeouts; default: these arguments with
        their values (``open_timeout_s=60``). ``stagelearn sim`` names the run YAML's keys.
    exit_on_error : bool, default=True
        A stagelearn error that the script does not catch (no staging came:
        :class:`~stagelearn.staging.errors.StreamTimeoutError`; interrupted; staging lost...)
        prints one line and ends the process, or the MPI job, with ``stagelearn sim``'s exit code
        (3 for no staging, 130 for Ctrl-C; :mod:`.producer_exit`) instead of a traceback and exit
        code 1. A script that catches it sees the exception as before. False: Python's own
        handling of uncaught exceptions.

    Attributes
    ----------
    steps_written : int
        Steps written so far (to the stream, the fallback file or the BP file).
    encoder, streaming, staging_lost, stalls, stall_s, acked, queue_limit, queue_full_policy, fallback_file, is_open
        Read-only properties, each documented on its own.
    """

    def __init__(self, stream_path, *, comm, config_file, io_name="SimulationOutput", model_io_name="ModelUpdates",
                 layout="auto", open_timeout_s=60.0, step_timeout_s=120.0, sz3_every=0, sst_parameters=None,
                 run_dir=None, fallback_dir=None, fallback_encode=True, peer_timeout_s=30.0, timeout_names=None,
                 exit_on_error=True):
        self.comm, self.rank = comm, comm.Get_rank()
        self.stream_path, self.config_file, self.model_io_name = str(stream_path), str(config_file), model_io_name
        self.layout = resolve_layout(layout)
        self.open_timeout_s, self.step_timeout_s, self.peer_timeout_s = open_timeout_s, step_timeout_s, float(peer_timeout_s)
        self.fallback_encode = bool(fallback_encode)
        self._sst = dict(sst_parameters or {})
        self._ios = read_ios(self.config_file)
        self._writer = StreamWriter(self.config_file, io_name, self._ios, comm if self.layout == "shared" else None,
                                    self._sst)
        self._writer.timeout_names = dict(timeout_names or {"open": f"open_timeout_s={float(open_timeout_s):g}",
                                                             "step": f"step_timeout_s={float(step_timeout_s):g}"})
        self.run_dir = str(run_dir if run_dir is not None else default_run_dir(self.stream_path))
        self._fallback = FallbackSink(fallback_dir or os.path.join(self.run_dir, "fallback"), self.rank)
        self._defs = {}  # name -> (shape, start, count)
        self._inexact_warned = set()  # integer variables warned about values float32 cannot hold
        self._coder = StepCoder(comm, self._defs, sz3_every)
        self._link = None  # the StagingLink, from open() on (streaming only)
        self._model_adios = None  # kept alive while the model stream is open
        self._opened = False
        self.steps_written, self._last_step = 0, -1
        self.created_at = time.time()
        self._write_end = None  # perf_counter at the end of the last write: the simulation computes until the next
        self.exit_on_error = bool(exit_on_error)
        if self.exit_on_error:
            producer_exit.install(comm)  # an uncaught stagelearn error: one line and the CLI's exit code

    # ----------------------------------------------------------------- state (delegated)
    is_open = property(lambda self: self._opened,
                       doc="True between :meth:`open` and :meth:`close` (also while steps go to the fallback file).")
    streaming = _delegate("_writer", "streaming", doc="True when the data IO's engine is SST (else no encoder comes).")
    queue_limit = _delegate("_writer", "queue_limit", doc="SST ``QueueLimit`` of the data stream (0: unbounded).")
    queue_full_policy = _delegate("_writer", "queue_full_policy", doc="SST ``QueueFullPolicy`` of the data stream.")
    engine_type = _delegate("_writer", "engine_type", doc="The data IO's ADIOS2 engine type (``SST``, ``BP5``...).")
    io = _delegate("_writer", "io", doc="The data stream's ADIOS2 IO (prefer :attr:`engine_type`).")
    engine = _delegate("_writer", "engine", doc="The data engine; None when closed or staging is lost (see is_open).")
    sz3_every = _delegate("_coder", "sz3_every", doc="Every n-th coded step is also an SZ3 sample (0: never).")
    encoder = _delegate("_link", "encoder", None, doc="The encoder in use, or None.")
    staging_lost = _delegate("_link", "staging_lost", False, doc="True once steps go to the fallback file.")
    acked = _delegate("_link", "acked", -1, doc="Last output step staging acknowledged (-1: none).")
    stalls = _delegate("_link", "stalls", 0, doc="Steps that waited for staging.")
    stall_s = _delegate("_link", "stall_s", 0.0, doc="Seconds waited for staging.")
    fallback_file = _delegate("_fallback", "file", doc="This rank's fallback file, or None while it holds no step.")

    # ----------------------------------------------------------------- setup
    def define_variable(self, name, shape, start, count):
        """Declare a field: global ``shape``, this rank's ``start`` and ``count`` (cells).

        ``count`` may hold zeros: a rank that owns no cells of the field still takes part in every
        step (it sends an empty block and its report row).

        Raises
        ------
        ValueError
            If the name contains ``/``, or the selection is negative or lies outside the shape.
        """
        self._defs[name] = check_selection(name, shape, start, count)
        self._writer.define(name, *self._defs[name])

    def open(self):
        """Open, on rank 0, the model stream, then the data stream (waits for staging to connect).

        Both sides open the model channel first and the data stream second, so that each process
        has at most one SST handshake in flight (two concurrent handshakes in one process have
        crashed inside ADIOS2 under CPU contention). Collective over ``comm`` in the shared layout.
        """
        streaming, shared = self.streaming, self.layout == "shared"
        path = self._writer.prepare(self.stream_path if shared else rank_stream(self.stream_path, self.rank),
                                    owner=not shared or self.rank == 0)
        subscriber = None
        if streaming and self.rank == 0:
            self._model_adios, model_io = open_model_io(self.config_file, self.model_io_name, self._ios, self._sst)
            try:
                subscriber = ModelSubscriber(model_io, f"{self.stream_path}-model", self.open_timeout_s)
            except StreamTimeoutError as exc:  # name the timeout as this caller set it, and how staging starts
                name = self._writer.timeout_names["open"]
                hint = ("" if name == "timeouts.open_s" else
                        f" Start staging for this run directory (`stagelearn stage RUN.yaml --run-dir {self.run_dir}`; "
                        f"either side may start first), or give it longer ({name.split('=')[0]}).")
                raise StreamTimeoutError(str(exc).replace("(timeouts.open_s)", f"({name})") + hint) from None
        self._writer.open(path, self.open_timeout_s)
        signals.reclaim()
        if streaming:
            self._link = StagingLink(self.comm, subscriber, self._fallback, producer_part(self.run_dir, self.rank),
                                     self._defs, queue_limit=self.queue_limit, queue_full_policy=self.queue_full_policy,
                                     peer_timeout_s=self.peer_timeout_s, on_lost=self._on_staging_lost)
        self._opened = True
        logger.info("producer rank %d opened %s (%s, layout %s)", self.rank, path, self.engine_type, self.layout)
        return self

    # ----------------------------------------------------------------- steps
    def poll_encoder(self, *, wait_for_queue=False):
        """Take the newest encoder staging has published, and its acknowledgements (collective over ``comm``).

        Rank 0 polls the model stream and broadcasts what it got, so all ranks switch encoder, and
        to the fallback file when staging is lost, at the same step boundary. :meth:`write` calls
        this at every step (see :meth:`~.producer_link.StagingLink.poll` for ``wait_for_queue``).

        Returns
        -------
        new : bool
            True when a new encoder is now in use.

        Raises
        ------
        Interrupted
            On every rank when SIGINT/SIGTERM arrived on rank 0.
        """
        if not self.streaming or self._link is None:
            return False
        new = self._link.poll(wait_for_queue=wait_for_queue)
        if new:
            self._coder.adopt(self._link.encoder)
        return new

    def _on_staging_lost(self):
        """Staging is gone (all ranks, after the replay): a new prediction chain, the engine dropped."""
        self._coder.restart_chain()
        self._writer.abandon()

    def write(self, step, fields):
        """Write one output step (collective over ``comm``).

        Parameters
        ----------
        step : int
            Output step index (increasing).
        fields : dict of str to ndarray or None
            This rank's block of each defined variable, of shape ``count``: any real dtype
            (floating point or integer; it travels as float32, so integers are exact only up to 2**24:
            beyond, a warning names the variable and the largest such value, and the report rows
            count the rounding as error against your values in their own dtype, never as exact),
            any memory order or strides (C or Fortran order, slices, transposed views: copied).
            NaN and Inf are allowed: the tiles holding them are sent raw (exact) and kept out of
            the learner. A defined variable that is None or left out has no block from this rank
            in this step: the rank sends an empty block (its report row says ``n = 0``), staging
            stores the step with the blocks it has, and decoding that step of the variable raises
            an error naming the cells without data. Left out on every rank, the variable is absent
            from the step (no values stored; the other variables are written as usual).

        Returns
        -------
        reports : dict of str to ndarray
            The report row of each variable (:data:`~stagelearn.staging.wire.REPORT_FIELDS`).

        Raises
        ------
        RuntimeError
            If the producer is not open.
        ValueError
            If a name was never defined, or a block has another shape than its ``count`` or a
            complex or non-numeric dtype. Raised on every rank with the first bad rank's message,
            before anything of the step is sent.
        Interrupted
            When SIGINT/SIGTERM arrived (see :mod:`.signals`), on every rank, before this step.
        """
        if not self._opened:
            raise RuntimeError("Producer.open() must be called before write()")
        # the simulation's compute time before this step: since the end of the last write (0: first step)
        interval = time.perf_counter() - self._write_end if self._write_end is not None else 0.0
        error, given, blocks = check_fields(step, self.rank, self._defs, fields, self._inexact_warned)
        raise_first_error(self.comm, error)  # agreed before any other collective: no rank hangs
        if self.streaming and not self.staging_lost:
            self.poll_encoder(wait_for_queue=True)
        else:
            signals.check(self.comm)
        lost = self.staging_lost
        encoder = self.encoder if (not lost or self.fallback_encode) else None
        if not self.streaming:  # BP5 in the XML: the simulation writes the file itself
            records = []
            self._writer.write_plain(step, blocks, self.step_timeout_s)
        else:
            records = self._coder.records(step, given, blocks, encoder, allow_sz3=not lost, interval_s=interval)
            if lost:
                self._link.to_fallback(step, records, encoder)
            else:
                blocked = self._writer.put_step(step, records, self.step_timeout_s)
                self._link.sent(step, records, blocks, blocked)
        self._coder.end_step()  # only once the step is written: the next step may predict from it
        self.steps_written += 1
        self._last_step = step
        self._write_end = time.perf_counter()
        return {r["var"]: r["report"] for r in records}

    # ----------------------------------------------------------------- teardown
    def close(self, status="clean"):
        """Close the streams and the fallback file (collective). Staging sees the end of the stream.

        First waits (at most ``peer_timeout_s`` without progress) until staging has acknowledged
        the last step sent; steps it never acknowledged go to the fallback file. The fallback file
        and the ledger are complete before the stream is closed (SST's ``Close`` waits for staging to
        release its queued steps). ``status`` is recorded in the ledger's end line (``clean`` or
        ``interrupted``). A second call does nothing.

        While streaming, rank 0 then writes ``<run_dir>/producer.json`` (:func:`producer_record`), so
        that ``stagelearn report`` can merge this side's record with staging's.
        """
        if not self._opened:
            return
        self._opened = False
        if self._link is not None:
            self._link.drain()
            self._link.close(status, last_step=self._last_step, steps_written=self.steps_written)
        else:
            self._fallback.close()
        self._writer.close(self.step_timeout_s)
        if self._link is not None:
            self._link.close_subscriber()
            if self.rank == 0:
                try:
                    write_producer_record(self.run_dir, producer_record(self, status=status))
                except OSError as exc:  # the steps are safe; only `stagelearn report` lacks this side's record
                    logger.warning("could not write %s/%s (%s): `stagelearn report` will not find this side's "
                                   "record", self.run_dir, PRODUCER_RECORD, exc)

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb):
        if exc_type is None:
            self.close()
        elif issubclass(exc_type, Interrupted):  # raised on every rank at the same step boundary
            self.close(status="interrupted")
        # On another error other ranks may be inside a collective (EndStep, Close): leave the
        # engines to the job abort instead of blocking in a collective Close here.
        return False
