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
(:func:`stagelearn.analytics.codec.encode_block`: PCA or autoencoder, optionally predicted from the
previous step's reconstruction and with a pointwise error bound, as the encoder's policy says)
plus the worst-reconstructed tiles raw, and in every step a report of bytes and of the error of
what was sent against the raw block.
"""

from __future__ import annotations

import collections
import json
import logging
import math
import os
import time

import numpy as np

from ..analytics.anomaly import AnomalyScorer, PersistenceTracker
from ..analytics.baselines import sz3_at_psnr
from ..analytics.codec import encode_block
from ..analytics.correction import absolute_bound
from ..analytics.encoder import Encoder
from ..analytics.temporal import PredictionChain
from ..analytics.metrics import ErrorStats, psnr_from_mse
from . import signals
from .adios import bindings, deadline, declare_io, make_adios, remove_stale_contact_file
from .errors import Interrupted, ModelFormatError
from .fallback import FallbackSink
from .ledger import producer_part
from .model_channel import ModelSubscriber
from .mpiutil import allreduce_flag, bcast_bytes
from .wire import (REPORT_FIELDS, WIRE_DTYPE, anomaly_name, make_report, payload_name, rank_stream, report_get,
                   report_name, resolve_layout)
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)

STALL_S = 0.05  # a wait for staging longer than this (for an acknowledgement, or inside EndStep) is a stall


def _finite_extent(block):
    """``[min, -max]`` over the finite values of a block (``[inf, inf]`` when there are none)."""
    finite = block[np.isfinite(block)] if not np.all(np.isfinite(block)) else block
    return [finite.min(), -finite.max()] if finite.size else [np.inf, np.inf]


def finite_range(block):
    """``(min, max)`` over the finite values of a block (``(inf, -inf)`` when there are none)."""
    lo, neg_hi = _finite_extent(block)
    return float(lo), -float(neg_hi)


def _rss_mib():
    """Resident set size of this process in MiB (Linux ``/proc``; None elsewhere)."""
    try:
        with open("/proc/self/statm") as f:
            return round(int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE") / 2**20, 2)
    except (OSError, ValueError, IndexError):
        return None


def step_targets(comm, blocks, psnr_db):
    """MSE per value allowed by a PSNR target and the step's global value range (collective over ``comm``).

    Every block meeting this MSE makes the global field meet the target.

    Parameters
    ----------
    comm : mpi4py.MPI.Comm
        The ranks holding the step's blocks; all pass the same variable names in the same order.
    blocks : dict of str to list of ndarray
        This rank's blocks of each variable (possibly none).
    psnr_db : float

    Returns
    -------
    targets, spans : dict of str to float
        Target MSE and global range of finite values (1.0 for a constant field) per variable.
    """
    from mpi4py import MPI

    names = list(blocks)
    ext = np.array([np.min([_finite_extent(b) for b in blocks[n]] or [[np.inf, np.inf]], axis=0) for n in names],
                   dtype=np.float64).reshape(-1)
    comm.Allreduce(MPI.IN_PLACE, ext, op=MPI.MIN)
    targets, spans = {}, {}
    for i, n in enumerate(names):
        span = -ext[2 * i + 1] - ext[2 * i]
        spans[n] = span if span > 0 else 1.0
        targets[n] = spans[n] ** 2 * 10.0 ** (-psnr_db / 10.0)
    return targets, spans


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
        is ``QueueLimit=4`` with ``QueueFullPolicy=Block``.
    run_dir : str, optional
        Where ``ledger/producer.p<rank>.jsonl`` goes (default: the folder above the stream's).
    fallback_dir : str, optional
        Where each rank writes its steps once staging is gone (default ``<run_dir>/fallback``).
    fallback_encode : bool, default=True
        Fallback steps coded with the last encoder (else raw float32).
    peer_timeout_s : float, default=30
        Staging is declared lost when it acknowledged no step for this long while this side's
        queue is full (a staging that dies is seen at once, from its model stream).

    Staging failure
    ---------------
    Staging acknowledges every step it has stored (``model/ack`` on the model stream). When its
    model stream fails or ends before this side closes, or it stops acknowledging (above), all
    ranks switch together, at a step boundary, to their fallback file: first the steps they
    sent that staging never acknowledged (each rank keeps the raw blocks of its last
    ``QueueLimit + 3`` steps for that), then every later step. The simulation keeps running.

    Attributes
    ----------
    encoder : Encoder or None
        Encoder in use.
    steps_written : int
    streaming : bool
        True when the data IO's engine is SST (else it writes a file and no encoder comes).
    staging_lost : bool
        True once staging is gone and steps go to the fallback file.
    stalls, stall_s : int, float
        Steps that waited for staging (queue full with ``QueueFullPolicy=Block``) and the seconds waited.
    """

    def __init__(self, stream_path, *, comm, config_file, io_name="SimulationOutput", model_io_name="ModelUpdates",
                 layout="auto", open_timeout_s=60.0, step_timeout_s=120.0, sz3_every=0, sst_parameters=None,
                 run_dir=None, fallback_dir=None, fallback_encode=True, peer_timeout_s=30.0):
        self.comm = comm
        self.rank = comm.Get_rank()
        self.stream_path = str(stream_path)
        self.config_file = str(config_file)
        self.io_name, self.model_io_name = io_name, model_io_name
        self.layout = resolve_layout(layout)
        self.open_timeout_s, self.step_timeout_s = open_timeout_s, step_timeout_s
        self.sz3_every = sz3_every
        self._ios = read_ios(self.config_file)
        self.adios = make_adios(self.config_file, comm if self.layout == "shared" else None)
        self.io = declare_io(self.adios, io_name, self.config_file, self._ios)
        self.streaming = self.io.EngineType().lower() == "sst"
        self._sst = dict(sst_parameters or {})
        if self.streaming:
            for key, value in self._sst.items():
                self.io.SetParameter(key, str(value))
        params = self.io.Parameters()
        for key, value in (("QueueLimit", "4"), ("QueueFullPolicy", "Block")):  # never an unbounded queue by default
            if self.streaming and key not in params and key not in self._sst:
                self.io.SetParameter(key, value)
                params[key] = value
        self.queue_limit = int(params.get("QueueLimit", "0") or 0)
        self.queue_full_policy = params.get("QueueFullPolicy", "Block")
        if self.streaming and self.queue_limit <= 0:
            logger.warning("stream IO %s has no QueueLimit: the writer queue is unbounded while staging is slow", io_name)
        if run_dir is None:
            parent = os.path.dirname(os.path.abspath(self.stream_path))
            run_dir = os.path.dirname(parent) if os.path.basename(parent) == "sst" else parent
        self.run_dir = str(run_dir)
        self.fallback_encode, self.peer_timeout_s = bool(fallback_encode), float(peer_timeout_s)
        self._fallback = FallbackSink(fallback_dir or os.path.join(self.run_dir, "fallback"), self.rank)
        self._ledger = None
        self._unacked = collections.deque(maxlen=max(self.queue_limit, 1) + 3)  # (step, {name: raw block}) for replay
        self.staging_lost = False
        self._abandoned = None  # the stream engine of a lost staging (never closed, see _switch_to_fallback)
        self.acked = -1
        self._last_ack_change = time.monotonic()
        self.stalls, self.stall_s = 0, 0.0
        self._last_sent = self._last_step = -1
        self._defs = {}
        self._vars = {}
        self.engine = None
        self._subscriber = None
        self.encoder = None
        self._trackers = {}
        self.steps_written = 0
        self._encoded_steps = 0
        self._chain = PredictionChain()  # previous reconstructions the decoder also holds (temporal prediction)
        self._warned_bound = set()

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
        if "/" in name or not name:
            raise ValueError(f"variable name {name!r} must be non-empty and must not contain '/'")
        shape, start, count = (tuple(int(x) for x in v) for v in (shape, start, count))
        if not (len(shape) == len(start) == len(count)) or any(s < 0 or c < 0 or s + c > n
                                                                 for s, c, n in zip(start, count, shape)):
            raise ValueError(f"variable {name}: start {start} + count {count} does not fit in shape {shape}")
        self._defs[name] = (shape, start, count)
        dummy = np.zeros(1, dtype=WIRE_DTYPE)
        self._vars[name] = self.io.DefineVariable(name, dummy, list(shape), list(start), list(count))
        if self.streaming:
            self._vars[payload_name(name)] = self.io.DefineVariable(payload_name(name), np.zeros(1, np.uint8), [], [], [1])
            self._vars[report_name(name)] = self.io.DefineVariable(
                report_name(name), np.zeros(len(REPORT_FIELDS)), [], [], [len(REPORT_FIELDS)])
            self._vars[anomaly_name(name)] = self.io.DefineVariable(anomaly_name(name), np.zeros(1, np.float32), [], [], [1])

    def open(self):
        """Open, on rank 0, the model stream, then the data stream (waits for staging to connect).

        Both sides open the model channel first and the data stream second, so that each process
        has at most one SST handshake in flight (two concurrent handshakes in one process have
        crashed inside ADIOS2 under CPU contention).
        """
        b = bindings()
        path = self.stream_path if self.layout == "shared" else rank_stream(self.stream_path, self.rank)
        if not self.streaming:
            path += ".bp"
        if self.streaming and (self.layout == "per_rank" or self.rank == 0):
            remove_stale_contact_file(path)
        if self.streaming and self.rank == 0:
            model_adios = make_adios(self.config_file, None)
            model_io = declare_io(model_adios, self.model_io_name, self.config_file, self._ios)
            if "NetworkInterface" in self._sst:
                model_io.SetParameter("NetworkInterface", self._sst["NetworkInterface"])
            self._model_adios = model_adios
            self._subscriber = ModelSubscriber(model_io, f"{self.stream_path}-model", self.open_timeout_s)
        if self.streaming:
            self.io.DefineAttribute("stagelearn/report_fields", list(REPORT_FIELDS))
        with deadline(self.open_timeout_s, f"staging to open stream {path} (timeouts.open_s)"):
            self.engine = self.io.Open(path, b.Mode.Write)
        signals.reclaim()
        if self.streaming:
            self._ledger = producer_part(self.run_dir, self.rank)
            self._last_ack_change = time.monotonic()
        logger.info("producer rank %d opened %s (%s, layout %s)", self.rank, path, self.io.EngineType(), self.layout)
        return self

    # ----------------------------------------------------------------- steps
    def poll_encoder(self, *, wait_for_queue=False):
        """Take the newest encoder staging has published, and its acknowledgements (collective over ``comm``).

        Rank 0 polls the model stream and broadcasts what it got, so all ranks switch encoder, and
        to the fallback file when staging is lost, at the same step boundary. :meth:`write` calls
        this at every step.

        Parameters
        ----------
        wait_for_queue : bool
            With ``QueueFullPolicy=Block``, wait (polling, interruptible) while writing the next step
            would leave more than ``QueueLimit`` steps unacknowledged (so SST's own ``EndStep`` never
            blocks: acknowledgements come after SST releases a step); counted as a stall. Past
            ``peer_timeout_s`` without a new acknowledgement staging is declared lost.

        Returns
        -------
        new : bool
            True when a new encoder is now in use.
        """
        if not self.streaming:
            return False
        frame, state = b"", {}
        if self._subscriber is not None:
            enc, state = self._poll_rank0(wait_for_queue)
            frame = enc.to_frame() if enc is not None else b""
        state = self._bcast_state(state)
        frame = bcast_bytes(self.comm, frame)
        self.acked = state.get("acked", self.acked)
        if state.get("stall_s"):
            self.stalls += 1
            self.stall_s += state["stall_s"]
        if state.get("lost") and not self.staging_lost:
            self._switch_to_fallback(state["lost"])
        if state.get("signal"):
            raise Interrupted(state["signal"])
        if frame:
            self.encoder = Encoder.from_frame(frame)
            if self.encoder.encode_threads and any(m.kind == "ae" for m in self.encoder.variables.values()):
                import torch

                torch.set_num_threads(self.encoder.encode_threads)  # the simulation keeps its other cores
            logger.info("producer rank %d switches to encoder version %d", self.rank, self.encoder.version)
            return True
        return False

    def _bcast_state(self, state):
        """Rank 0's view of staging (acknowledged step, lost, stall, signal) on every rank (collective)."""
        return json.loads(bcast_bytes(self.comm, json.dumps(state).encode() if self.rank == 0 else b"").decode() or "{}")

    def _poll_rank0(self, wait_for_queue, *, until_step=None):
        """Rank 0: read the model stream; optionally wait for the queue to drain (or, with ``until_step``,
        for that step to be acknowledged). Returns ``(encoder or None, state dict)``."""
        sub, newest = self._subscriber, None
        t0 = time.monotonic()
        waited = False
        while True:
            try:
                enc = sub.poll() if not sub.ended else None
            except ModelFormatError as exc:
                logger.error("%s; keeping encoder version %s", exc, self.encoder.version if self.encoder else None)
                enc = None
            newest = enc or newest
            if sub.acked != self.acked:
                self.acked, self._last_ack_change = sub.acked, time.monotonic()
            lost = self._lost_reason()
            sent = self._last_sent
            if until_step is not None:
                pending = self.acked < until_step
            else:
                # the next step would make more than queue_limit steps unacknowledged: wait here, where
                # signals and timeouts work, instead of inside SST's EndStep (which holds the GIL)
                pending = wait_for_queue and self.queue_full_policy == "Block" and sent + 1 - self.acked > self.queue_limit
            if lost or not pending or self.staging_lost or (signals.pending() and until_step is None):
                break
            # with Discard, steps SST dropped are never acknowledged: at close, a quiet staging has
            # stored all it will (the rest is replayed to the fallback file)
            if until_step is not None and self.queue_full_policy == "Discard" \
                    and time.monotonic() - self._last_ack_change > min(2.0, self.peer_timeout_s):
                break
            if time.monotonic() - self._last_ack_change > self.peer_timeout_s:
                lost = (f"staging acknowledged no step for {self.peer_timeout_s:g} s (timeouts.peer_s) with steps "
                        f"{self.acked + 1}..{sent} waiting")
                break
            waited = True
            time.sleep(0.02)
        stall = time.monotonic() - t0 if waited and until_step is None else 0.0
        stall = stall if stall > STALL_S else 0.0
        return newest, {"acked": self.acked, "lost": lost, "stall_s": stall, "signal": signals.pending()}

    @property
    def fallback_file(self):
        """This rank's fallback file, or None while it holds no step."""
        return self._fallback.path if self._fallback.steps else None

    def _lost_reason(self):
        sub = self._subscriber
        if self.staging_lost or not sub.ended:
            return None
        return ("staging's model stream failed (staging died)" if sub.failed
                else "staging closed its model stream before the simulation ended")

    def _switch_to_fallback(self, reason):
        """All ranks: staging is gone. Replay what it never acknowledged, then write to the fallback file."""
        self.staging_lost = True
        logger.error("producer rank %d: %s; steps go to %s from now on", self.rank, reason, self._fallback.path)
        self._replay_unacked(reason)
        self._chain = PredictionChain()  # the fallback file starts with a self-contained step
        # not closed: SST's writer Close waits for its readers to release their queued steps, forever
        # for a staging that hangs; the engine is dropped at exit ("Destroyed without a prior Close()")
        self._abandoned, self.engine = self.engine, None

    def _replay_unacked(self, reason):
        """Write the steps sent but never acknowledged by staging (raw, from the replay buffer) to the fallback file."""
        replay = [(step, raw) for step, raw in self._unacked if step > self.acked]
        if replay:
            logger.warning("producer rank %d: %s; steps %d..%d go to %s as well", self.rank, reason, replay[0][0],
                           replay[-1][0], self._fallback.path)
        for step, raw in replay:
            blocks = [self._block_record(name, step, raw[name], None) for name in self._defs]
            self._fallback.write_step(step, blocks)
            self._ledger.add(step=step, rank=self.rank, to="fallback", file=self._fallback.path, encoder_version=0,
                             bytes=int(sum(r.nbytes for r in raw.values())), replayed=True)
        self._unacked.clear()

    def _block_record(self, name, step, raw, report):
        shape, start, _ = self._defs[name]
        if report is None:
            lo, hi = finite_range(raw)
            report = make_report(step=step, rank=self.rank, raw_bytes=raw.nbytes, sent_bytes=raw.nbytes, n=raw.size,
                                 vmin=lo, vmax=hi, local_psnr_db=math.inf)
        return {"var": name, "raw": raw, "report": report, "shape": shape, "start": start, "count": raw.shape}

    def _check_fields(self, step, fields):
        """Check this rank's ``fields`` for ``step`` (local, no communication).

        Returns
        -------
        error : str or None
            What is wrong, naming the step, this rank, the variable and the fix.
        given : dict of str to ndarray
            Each defined variable's block as passed; an empty block (``(0,) + count[1:]``) where this
            rank has none this step (None, or the name left out).
        blocks : dict of str to ndarray
            The same as C-ordered float32 copies: what travels, and what is kept for replay (a copy,
            so the simulation may reuse its arrays once ``write`` returns).
        """
        where = f"step {step}, producer rank {self.rank}"
        unknown = sorted(set(fields) - set(self._defs))
        if unknown:
            return (f"{where}: undefined variables {unknown} (defined: {sorted(self._defs)}); call define_variable "
                    "for every variable before open()"), {}, {}
        given, blocks, absent = {}, {}, []
        for name, (shape, start, count) in self._defs.items():
            if fields.get(name) is None:
                absent.append(name)
                arr = np.zeros((0,) + count[1:], dtype=WIRE_DTYPE)
            else:
                arr = np.asarray(fields[name])
                if arr.dtype.kind == "c":
                    return (f"{where}: variable {name} is complex ({arr.dtype}); only real values can be streamed: "
                            "write the real and imaginary parts as two variables"), {}, {}
                if arr.dtype.kind not in "fiu":
                    return (f"{where}: variable {name} has dtype {arr.dtype}; pass a real numeric array (floating "
                            "point or integer, sent as float32)"), {}, {}
                if arr.shape != count:
                    return (f"{where}: variable {name} has block shape {arr.shape}, expected {count} (the count given "
                            "to define_variable, fixed for the whole run; pass None for a step without a block)"), {}, {}
            given[name] = arr
            blocks[name] = np.array(arr, dtype=WIRE_DTYPE, order="C")
        if absent:
            logger.info("%s: no block of %s (None or left out): sending an empty block", where, absent)
        return None, given, blocks

    def _target_mse(self, blocks, encoder):
        """MSE per value allowed by the PSNR target and this step's global range, per variable (collective)."""
        names = [n for n in self._defs if n in encoder.variables]
        return step_targets(self.comm, {n: [blocks[n]] for n in names}, encoder.psnr_db)

    def _check_bound(self, step, name, stats, bound):
        """Log when the error bound does not hold against the caller's values. encode_block verified
        it on the float32 wire values; float64 inputs also carry float32 rounding (half an ulp)."""
        magnitude = max(abs(stats.vmin), abs(stats.vmax)) if math.isfinite(stats.vmin) else 0.0
        ulp = float(np.spacing(np.float32(magnitude)))
        if bound < ulp and name not in self._warned_bound:
            self._warned_bound.add(name)
            logger.warning("%s: error bound %.3g is below float32 resolution (%.3g at |x| = %.3g); values are sent "
                           "as float32, so it cannot hold for float64 inputs", name, bound, ulp, magnitude)
        if math.isfinite(stats.max_abs_error) and stats.max_abs_error > bound + 0.5 * ulp:
            logger.error("step %d: %s max error %.3g exceeds the bound %.3g", step, name, stats.max_abs_error, bound)

    def write(self, step, fields):
        """Write one output step (collective over ``comm``).

        Parameters
        ----------
        step : int
            Output step index (increasing).
        fields : dict of str to ndarray or None
            This rank's block of each defined variable, of shape ``count``: any real dtype
            (floating point or integer; it travels as float32, so integers are exact up to 2**24),
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
        ValueError
            If a name was never defined, or a block has another shape than its ``count`` or a
            complex or non-numeric dtype. Raised on every rank with the first bad rank's message,
            before anything of the step is sent.
        Interrupted
            When SIGINT/SIGTERM arrived (see :mod:`.signals`), on every rank, before this step.
        """
        b = bindings()
        if self.engine is None and not self.staging_lost:
            raise RuntimeError("Producer.open() must be called before write()")
        error, given, blocks = self._check_fields(step, fields)
        # agree before any collective: the first bad rank's error is raised on every rank, no rank hangs
        size = self.comm.Get_size()
        first = allreduce_flag(self.comm, self.rank if error is not None else size, op="min")
        if first < size:
            raise ValueError(bcast_bytes(self.comm, (error or "").encode(), root=first).decode())
        if self.streaming and not self.staging_lost:
            self.poll_encoder(wait_for_queue=True)
        else:
            signals.check(self.comm)
        encoder = self.encoder if (not self.staging_lost or self.fallback_encode) else None
        sample_sz3 = encoder is not None and not self.staging_lost and self.sz3_every > 0 \
            and self._encoded_steps % self.sz3_every == 0
        target_mse, spans = self._target_mse(blocks, encoder) if encoder is not None else ({}, {})
        if encoder is not None:
            self._chain.keyframe_every = encoder.keyframe_every
        records = [self._encode(step, name, blocks[name], given[name], encoder, target_mse, spans, sample_sz3)
                   for name in self._defs] if self.streaming else []
        if not self.streaming:  # BP5 in the XML: the simulation writes the file itself
            with deadline(self.step_timeout_s, f"writing step {step} (timeouts.step_s)"):
                self.engine.BeginStep()
                for name in self._defs:
                    if blocks[name].size:  # an empty block (no cells, or no block this step) writes nothing
                        self.engine.Put(self._vars[name], blocks[name], b.Mode.Sync)
                self.engine.EndStep()
        elif self.staging_lost:
            self._fallback.write_step(step, records, encoder=encoder if any("payload" in r for r in records) else None)
            self._ledger.add(step=step, rank=self.rank, to="fallback", file=self._fallback.path,
                             encoder_version=encoder.version if encoder else 0, bytes=self._bytes(records),
                             rss_mib=_rss_mib())
        else:
            self._send(step, records)
            self._unacked.append((step, {name: blocks[name] for name in self._defs}))
        if encoder is not None:
            self._encoded_steps += 1
            self._chain.end_step()  # only once the step is written: the next step may predict from it
        self.steps_written += 1
        self._last_step = step
        return {r["var"]: r["report"] for r in records}

    @staticmethod
    def _bytes(records):
        return int(sum(len(r["payload"]) if "payload" in r else r["raw"].nbytes for r in records))

    def _send(self, step, records):
        """Put one step on the stream; time beyond ``STALL_S`` in ``EndStep`` counts as a stall (SST's Block)."""
        b = bindings()
        with deadline(self.step_timeout_s, f"staging to accept step {step} (timeouts.step_s)"):
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
                else:
                    var = self._vars[name]
                    var.SetSelection([list(r["start"]), list(r["raw"].shape)])  # empty: this rank has no block
                    self.engine.Put(var, r["raw"], b.Mode.Sync)
                self.engine.Put(self._vars[report_name(name)], r["report"], b.Mode.Sync)
            t = time.monotonic()
            self.engine.EndStep()
            blocked = time.monotonic() - t
        if blocked > STALL_S:
            self.stalls += 1
            self.stall_s += blocked
        self._last_sent = step
        self._ledger.add(step=step, rank=self.rank, to="stream", encoder_version=int(report_get(records[0]["report"],
                         "encoder_version")) if records else 0, bytes=self._bytes(records), acked=self.acked,
                         stall_s=round(blocked, 4) if blocked > STALL_S else 0.0, rss_mib=_rss_mib())

    def _encode(self, step, name, block, given, encoder, target_mse, spans, sample_sz3):
        """The record of one variable's block: raw (no encoder) or the coded payload, its report row and
        anomaly map."""
        shape, start, _ = self._defs[name]
        count = block.shape  # the defined count, or empty when this rank has no block this step
        model = encoder.variables.get(name) if encoder is not None else None
        if model is None:
            lo, hi = finite_range(block)
            row = make_report(step=step, rank=self.rank, raw_bytes=block.nbytes, sent_bytes=block.nbytes,
                              n=block.size, vmin=lo, vmax=hi, local_psnr_db=math.inf)
            return {"var": name, "raw": block, "report": row, "shape": shape, "start": start, "count": count}
        scorer = None
        if encoder.anomaly is not None:
            scorer = AnomalyScorer(encoder.anomaly, name, spans[name], int(np.prod(model.tile_shape)),
                                   math.sqrt(target_mse[name]),
                                   self._trackers.setdefault(name, PersistenceTracker(encoder.anomaly["persistence_steps"])))
        bound = absolute_bound(encoder.error_bound, spans[name])
        prev_step, prev = self._chain.reference(name, block.shape)
        given = np.asarray(given)  # float64 fields: the bound is verified against them
        eb = encode_block(given if given.dtype == np.float64 else block, model.codec(), model.tile_shape,
                          raw_fraction=encoder.raw_fraction, target_mse=target_mse[name],
                          tile_hook=scorer, prev=prev, abs_bound=bound,
                          header={"step": int(step), "variable": name, "rank": self.rank,
                                  "encoder_version": encoder.version, "shape": list(shape),
                                  "start": list(start), "count": list(count), "ref_step": prev_step})
        self._chain.record(name, step, eb.reconstruction)
        amap, anomaly_bytes = None, 0
        if scorer is not None:
            amap = scorer.map_array()
            # side channel: the map, the histogram section, and raw tiles beyond the raw budget
            extra_tiles = max(0, eb.n_raw_tiles - int(math.floor(encoder.raw_fraction * eb.tile_sse.size)))
            anomaly_bytes = amap.nbytes + len(scorer.sections()["err_hist"]) + 8 + extra_tiles * eb.raw_tiles.shape[1] * 4
        stats = ErrorStats.from_arrays(given, eb.reconstruction)  # vs the caller's own values
        if bound is not None:
            self._check_bound(step, name, stats, bound)
        local_psnr = psnr_from_mse(stats.mse, stats.data_range)
        sz3_bytes = sz3_sse = 0.0
        if sample_sz3 and math.isfinite(local_psnr):
            sz3_bytes, rec = sz3_at_psnr(block, local_psnr)
            d = (np.asarray(given, dtype=np.float64) - rec).ravel()
            sz3_sse = float(d @ d)
        row = make_report(step=step, rank=self.rank, encoder_version=encoder.version,
                          raw_bytes=block.nbytes, sent_bytes=len(eb.payload) + (amap.nbytes if amap is not None else 0),
                          sse=stats.sse, n=block.size,
                          max_abs_error=stats.max_abs_error, vmin=stats.vmin, vmax=stats.vmax,
                          n_raw_tiles=eb.n_raw_tiles, sz3_bytes=sz3_bytes, sz3_sse=sz3_sse,
                          local_psnr_db=local_psnr, n_flagged=len(scorer.flagged) if scorer else 0,
                          anomaly_bytes=anomaly_bytes)
        return {"var": name, "payload": eb.payload, "amap": amap, "report": row, "shape": shape, "start": start,
                "count": count}

    # ----------------------------------------------------------------- teardown
    def close(self, status="clean"):
        """Close the streams and the fallback file (collective). Staging sees the end of the stream.

        First waits (at most ``peer_timeout_s`` without progress) until staging has acknowledged
        the last step sent; steps it never acknowledged go to the fallback file. The fallback file
        and the ledger are complete before the stream is closed (SST's ``Close`` waits for staging to
        release its queued steps). ``status`` is recorded in the ledger's end line (``clean`` or
        ``interrupted``).
        """
        if self.streaming and self.engine is not None and not self.staging_lost:
            state = {}
            if self._subscriber is not None:
                _, state = self._poll_rank0(False, until_step=self._last_sent)
            state = self._bcast_state(state)
            self.acked = state.get("acked", self.acked)
            if state.get("lost"):
                self._switch_to_fallback(state["lost"])
            elif self.acked < self._last_sent:  # staging is there but did not store them all (yet)
                self._replay_unacked(f"at close staging had acknowledged up to step {self.acked} of {self._last_sent}")
        self._fallback.close()
        if self._ledger is not None:
            self._ledger.add(event="end", rank=self.rank, status=status, last_step=self._last_step,
                             steps_written=self.steps_written, stalls=self.stalls, stall_s=round(self.stall_s, 3),
                             fallback_steps=self._fallback.steps, staging_lost=self.staging_lost)
            self._ledger.close()
            self._ledger = None
        if self.engine is not None:
            with deadline(self.step_timeout_s, "staging to release the last steps at close (timeouts.step_s)"):
                self.engine.Close()
            self.engine = None
        if self._subscriber is not None:
            self._subscriber.close()
            self._subscriber = None

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
