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

import logging
import math

import numpy as np

from ..analytics.anomaly import AnomalyScorer, PersistenceTracker
from ..analytics.baselines import sz3_at_psnr
from ..analytics.codec import encode_block
from ..analytics.correction import absolute_bound
from ..analytics.encoder import Encoder
from ..analytics.temporal import PredictionChain
from ..analytics.metrics import ErrorStats, psnr_from_mse
from .adios import bindings, deadline, declare_io, make_adios, remove_stale_contact_file
from .errors import ModelFormatError
from .model_channel import ModelSubscriber
from .mpiutil import bcast_bytes
from .mpiutil import allreduce_flag
from .wire import (REPORT_FIELDS, WIRE_DTYPE, anomaly_name, make_report, payload_name, rank_stream, report_name,
                   resolve_layout)
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


def _finite_extent(block):
    """``[min, -max]`` over the finite values of a block (``[inf, inf]`` when there are none)."""
    finite = block[np.isfinite(block)] if not np.all(np.isfinite(block)) else block
    return [finite.min(), -finite.max()] if finite.size else [np.inf, np.inf]


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

    Attributes
    ----------
    encoder : Encoder or None
        Encoder in use.
    steps_written : int
    streaming : bool
        True when the data IO's engine is SST (else it writes a file and no encoder comes).
    """

    def __init__(self, stream_path, *, comm, config_file, io_name="SimulationOutput", model_io_name="ModelUpdates",
                 layout="auto", open_timeout_s=60.0, step_timeout_s=120.0, sz3_every=0):
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

        Raises
        ------
        ValueError
            If the name contains ``/`` or the selection lies outside the shape.
        """
        if "/" in name or not name:
            raise ValueError(f"variable name {name!r} must be non-empty and must not contain '/'")
        shape, start, count = (tuple(int(x) for x in v) for v in (shape, start, count))
        if not (len(shape) == len(start) == len(count)) or any(s < 0 or s + c > n for s, c, n in zip(start, count, shape)):
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
            self._model_adios = model_adios
            self._subscriber = ModelSubscriber(model_io, f"{self.stream_path}-model", self.open_timeout_s)
        if self.streaming:
            self.io.DefineAttribute("stagelearn/report_fields", list(REPORT_FIELDS))
        with deadline(self.open_timeout_s, f"staging to open stream {path} (timeouts.open_s)"):
            self.engine = self.io.Open(path, b.Mode.Write)
        logger.info("producer rank %d opened %s (%s, layout %s)", self.rank, path, self.io.EngineType(), self.layout)
        return self

    # ----------------------------------------------------------------- steps
    def poll_encoder(self):
        """Take the newest encoder staging has published, if any (collective over ``comm``, never blocks).

        Rank 0 polls the model stream and broadcasts what it got, so all ranks switch at the same
        step boundary. :meth:`write` calls this at every step.

        Returns
        -------
        new : bool
            True when a new encoder is now in use.
        """
        if not self.streaming:
            return False
        frame = b""
        if self._subscriber is not None:
            try:
                enc = self._subscriber.poll()
            except ModelFormatError as exc:
                logger.error("%s; keeping encoder version %s", exc, self.encoder.version if self.encoder else None)
                enc = None
            frame = enc.to_frame() if enc is not None else b""
        frame = bcast_bytes(self.comm, frame)
        if frame:
            self.encoder = Encoder.from_frame(frame)
            if self.encoder.encode_threads and any(m.kind == "ae" for m in self.encoder.variables.values()):
                import torch

                torch.set_num_threads(self.encoder.encode_threads)  # the simulation keeps its other cores
            logger.info("producer rank %d switches to encoder version %d", self.rank, self.encoder.version)
            return True
        return False

    def _check_fields(self, step, fields):
        missing, unknown = set(self._defs) - set(fields), set(fields) - set(self._defs)
        if missing or unknown:
            return f"step {step}: missing variables {sorted(missing)}, undefined variables {sorted(unknown)}", {}
        blocks = {}
        for name, (shape, start, count) in self._defs.items():
            arr = np.asarray(fields[name])
            if arr.shape != count:
                return f"step {step}: variable {name} has block shape {arr.shape}, defined count is {count}", {}
            if not np.issubdtype(arr.dtype, np.floating) and not np.issubdtype(arr.dtype, np.integer):
                return f"step {step}: variable {name} has dtype {arr.dtype}; pass a numeric array", {}
            blocks[name] = np.ascontiguousarray(arr, dtype=WIRE_DTYPE)
        return None, blocks

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
        fields : dict of str to ndarray
            This rank's block of each defined variable, shape ``count`` (any float dtype,
            C or Fortran order; copied as float32).

        Returns
        -------
        reports : dict of str to ndarray
            The report row of each variable (:data:`~stagelearn.staging.wire.REPORT_FIELDS`).

        Raises
        ------
        ValueError
            If a variable is missing, unknown, or has the wrong block shape.
        """
        b = bindings()
        if self.engine is None:
            raise RuntimeError("Producer.open() must be called before write()")
        error, blocks = self._check_fields(step, fields)
        # agree before any collective: a bad block on one rank raises on every rank, no rank hangs
        if allreduce_flag(self.comm, error is not None):
            raise ValueError(error or f"step {step}: another producer rank passed invalid fields to write()")
        self.poll_encoder()
        encoder = self.encoder
        sample_sz3 = encoder is not None and self.sz3_every > 0 and self._encoded_steps % self.sz3_every == 0
        target_mse, spans = self._target_mse(blocks, encoder) if encoder is not None else ({}, {})
        if encoder is not None:
            self._chain.keyframe_every = encoder.keyframe_every
        reports = {}
        with deadline(self.step_timeout_s, f"staging to accept step {step} (timeouts.step_s)"):
            self.engine.BeginStep()
            for name, (shape, start, count) in self._defs.items():
                block = blocks[name]
                if not self.streaming:
                    self.engine.Put(self._vars[name], block, b.Mode.Sync)
                    continue
                lo, hi = (float(block.min()), float(block.max())) if block.size else (0.0, 0.0)
                model = encoder.variables.get(name) if encoder is not None else None
                if model is None:
                    self.engine.Put(self._vars[name], block, b.Mode.Sync)
                    row = make_report(step=step, rank=self.rank, raw_bytes=block.nbytes, sent_bytes=block.nbytes,
                                      n=block.size, vmin=lo, vmax=hi, local_psnr_db=math.inf)
                else:
                    scorer = None
                    if encoder.anomaly is not None:
                        scorer = AnomalyScorer(encoder.anomaly, name, spans[name], int(np.prod(model.tile_shape)),
                                               math.sqrt(target_mse[name]),
                                               self._trackers.setdefault(name, PersistenceTracker(encoder.anomaly["persistence_steps"])))
                    bound = absolute_bound(encoder.error_bound, spans[name])
                    prev_step, prev = self._chain.reference(name, block.shape)
                    given = np.asarray(fields[name])  # float64 fields: the bound is verified against them
                    eb = encode_block(given if given.dtype == np.float64 else block, model.codec(), model.tile_shape,
                                      raw_fraction=encoder.raw_fraction, target_mse=target_mse[name],
                                      tile_hook=scorer, prev=prev, abs_bound=bound,
                                      header={"step": int(step), "variable": name, "rank": self.rank,
                                              "encoder_version": encoder.version, "shape": list(shape),
                                              "start": list(start), "count": list(count), "ref_step": prev_step})
                    self._chain.record(name, step, eb.reconstruction)
                    payload = np.frombuffer(eb.payload, dtype=np.uint8).copy()
                    var = self._vars[payload_name(name)]
                    var.SetSelection([[], [payload.size]])
                    self.engine.Put(var, payload, b.Mode.Sync)
                    anomaly_bytes = 0
                    if scorer is not None:
                        amap = scorer.map_array()
                        v = self._vars[anomaly_name(name)]
                        v.SetSelection([[], [amap.size]])
                        self.engine.Put(v, amap, b.Mode.Sync)
                        # side channel: the map, the histogram section, and raw tiles beyond the raw budget
                        extra_tiles = max(0, eb.n_raw_tiles - int(math.floor(encoder.raw_fraction * eb.tile_sse.size)))
                        anomaly_bytes = (amap.nbytes + len(scorer.sections()["err_hist"]) + 8
                                         + extra_tiles * eb.raw_tiles.shape[1] * 4)
                    stats = ErrorStats.from_arrays(fields[name], eb.reconstruction)  # vs the caller's own values
                    if bound is not None:
                        self._check_bound(step, name, stats, bound)
                    local_psnr = psnr_from_mse(stats.mse, stats.data_range)
                    sz3_bytes = sz3_sse = 0.0
                    if sample_sz3 and math.isfinite(local_psnr):
                        sz3_bytes, rec = sz3_at_psnr(block, local_psnr)
                        d = (np.asarray(fields[name], dtype=np.float64) - rec).ravel()
                        sz3_sse = float(d @ d)
                    row = make_report(step=step, rank=self.rank, encoder_version=encoder.version,
                                      raw_bytes=block.nbytes, sent_bytes=payload.size + (amap.nbytes if scorer else 0),
                                      sse=stats.sse, n=block.size,
                                      max_abs_error=stats.max_abs_error, vmin=stats.vmin, vmax=stats.vmax,
                                      n_raw_tiles=eb.n_raw_tiles, sz3_bytes=sz3_bytes, sz3_sse=sz3_sse,
                                      local_psnr_db=local_psnr, n_flagged=len(scorer.flagged) if scorer else 0,
                                      anomaly_bytes=anomaly_bytes)
                self.engine.Put(self._vars[report_name(name)], row, b.Mode.Sync)
                reports[name] = row
            self.engine.EndStep()
        if encoder is not None:
            self._encoded_steps += 1
            self._chain.end_step()  # only once the step is written: the next step may predict from it
        self.steps_written += 1
        return reports

    # ----------------------------------------------------------------- teardown
    def close(self):
        """Close the streams (collective). Staging sees the end of the stream."""
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
        # On an error other ranks may be inside a collective (EndStep, Close): leave the engines
        # to the job abort instead of blocking in a collective Close here.
        return False
