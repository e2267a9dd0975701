"""The staging service: read the stream, learn, push encoders back, write the compressed output.

Every staging rank runs :meth:`StagingService.run`. Per step:

1. read this rank's producer blocks (:mod:`.stream`);
2. cut raw data into tiles - whole blocks before the first encoder, afterwards the raw tiles
   producers chose to send (their worst-reconstructed) - and ``partial_fit`` one
   :class:`~stagelearn.analytics.IncrementalPCA` per variable (collective: every rank ends with
   the same exact global basis);
3. gather the blocks on rank 0, which writes them to the BP5 output and accounts their reports;
4. after ``learner.warmup_steps`` steps, and then every ``learner.publish_every`` steps, rank 0
   builds an :class:`~stagelearn.analytics.encoder.Encoder` and publishes it on the model stream;
   every stored step is acknowledged there (``model/ack``) and recorded in ``ledger/staging.jsonl``.

When the producers go away without closing the stream, staging stores what it has, writes its
checkpoint (:mod:`.checkpoint`), names the missing producer ranks and steps in
``staging_summary.json`` and ends with :class:`~stagelearn.staging.errors.PeerLostError` (exit 4).
SIGINT/SIGTERM end the loop at a step boundary the same way (exit 130/143).
"""

from __future__ import annotations

import json
import logging
import math
import os
import time

import numpy as np

from ..analytics.anomaly import LogErrorHistogram
from ..analytics.codec import parse_payload, payload_raw_tiles
from ..analytics.encoder import Encoder
from ..analytics.framing import pack_frame, unpack_frame
from ..analytics.dpca import DistributedPCA
from ..analytics.incremental_pca import IncrementalPCA
from ..analytics.temporal import PredictionChain
from ..analytics.tiling import tile_grid, to_tiles
from . import checkpoint, signals
from .adios import declare_io, make_adios
from .config import sst_parameters
from .errors import ConfigError, Interrupted, PeerLostError
from .ledger import staging_part
from .model_channel import ModelPublisher
from .mpiutil import allreduce_flag, bcast_bytes, gather_bytes
from .output import CompressedOutputWriter
from .pacing import TrainingPace
from .results import RunLedger, write_json
from .stream import PerRankStreamReader, PlainStreamReader, ReceivedBlock, SharedStreamReader
from .wire import make_report, report_get, resolve_layout
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)

_BUNDLE = b"SLB1"


def default_tile_shape(block_shape):
    """64-feature tiles: 4x4x4 in 3D, 8x8 in 2D, 64 in 1D (see README, "Tile shape"); for 5-D
    phase-space fields f(r, theta, phi, v_par, mu) one velocity-space slice per spatial point."""
    ndim = len(block_shape)
    if ndim == 5 and int(np.prod(block_shape[3:])) <= 4096:
        return (1, 1, 1) + tuple(int(n) for n in block_shape[3:])
    return {1: (64,), 2: (8, 8), 3: (4, 4, 4)}.get(ndim, (2,) * ndim)


def raw_tiles_of(blk, tile_shape):
    """Raw (exact) tiles a block gives the learner: all tiles of a raw block, else the raw section
    of its payload without the tiles flagged as anomalies (persistent ones, also raw, are the new
    normal and are learned)."""
    if blk.raw is not None:
        return to_tiles(blk.raw, tile_shape)
    header, tiles, index = payload_raw_tiles(blk.payload)
    if list(header["tile_shape"]) != list(tile_shape):
        raise ValueError(f"payload of {blk.var} from rank {blk.rank} has tile shape {header['tile_shape']}, expected {tile_shape}")
    if blk.anomaly is not None and len(blk.anomaly):
        flagged = blk.anomaly[blk.anomaly[:, 2] > 0, 0].astype(np.int64)
        tiles = tiles[~np.isin(index, flagged)]
    return tiles


def _pack_blocks(blocks):
    meta, sections = [], {}
    for i, blk in enumerate(blocks):
        meta.append({"var": blk.var, "rank": blk.rank, "shape": blk.shape, "start": blk.start, "count": blk.count,
                     "raw": blk.raw is not None, "anomaly": blk.anomaly is not None})
        sections[f"{i}/report"] = blk.report.tobytes()
        if blk.anomaly is not None:
            sections[f"{i}/anomaly"] = np.ascontiguousarray(blk.anomaly, dtype=np.float64).tobytes()
            sections[f"{i}/err_hist"] = np.ascontiguousarray(blk.err_hist, dtype=np.float64).tobytes()
        sections[f"{i}/data"] = blk.raw.tobytes() if blk.raw is not None else blk.payload
    return pack_frame(_BUNDLE, {"blocks": meta}, sections)


def _unpack_blocks(frame):
    header, sec = unpack_frame(_BUNDLE, frame, "block bundle")
    out = []
    for i, m in enumerate(header["blocks"]):
        blk = ReceivedBlock(var=m["var"], rank=m["rank"], report=np.frombuffer(bytes(sec[f"{i}/report"]), dtype=np.float64).copy(),
                            shape=tuple(m["shape"]) if m["shape"] else None, start=tuple(m["start"]) if m["start"] else None,
                            count=tuple(m["count"]) if m["count"] else None)
        if m.get("anomaly"):
            blk.anomaly = np.frombuffer(bytes(sec[f"{i}/anomaly"]), dtype=np.float64).reshape(-1, 4).copy()
            blk.err_hist = np.frombuffer(bytes(sec[f"{i}/err_hist"]), dtype=np.float64).copy()
        data = bytes(sec[f"{i}/data"])
        if m["raw"]:
            blk.raw = np.frombuffer(data, dtype=np.float32).reshape(blk.count).copy()  # ADIOS2 Put needs writeable arrays
        else:
            blk.payload = data
        out.append(blk)
    return out


class StagingService:
    """Staging side of a run (collective over ``comm``).

    Parameters
    ----------
    cfg : RunConfig
    comm : mpi4py.MPI.Comm
        The staging ranks.
    run_dir : path
        Where the stream contact files, the output file and the summary go.
    """

    def __init__(self, cfg, comm, run_dir):
        self.cfg, self.comm, self.run_dir = cfg, comm, str(run_dir)
        self.rank = comm.Get_rank()
        self.learners = {}
        self.tile_shapes = {}
        self.variables = list(cfg.staging.variables) if cfg.staging.variables else None
        self.ranges = {}
        self.encoder = None
        self.ledger = RunLedger()
        self.steps_seen = 0
        self.last_publish = None
        self.tiles_learned = 0
        self.nonfinite_tiles = {}  # variable -> tiles with NaN/Inf kept out of the learner, all ranks (rank 0 reports)
        self.in_transit = cfg.staging.mode == "in_transit"
        self._chain, self._last_raw = PredictionChain(), []  # in transit: staging encodes, so it holds these
        self._warmup_tiles = {}  # autoencoder: tiles of the warm-up steps, until the trainer exists
        ac = cfg.learner.autoencoder
        self.pace = TrainingPace(ac.iterations_per_step, adaptive=ac.adaptive_iterations) \
            if cfg.learner.type == "autoencoder" else None
        self.error_hists = {}  # rank 0: running histograms of tile log-errors per variable
        self.anomaly_log = None
        self.encoder_calibrated = False  # same on all ranks: the last encoder carried error statistics
        self.encoder_sent = False  # same on all ranks: an encoder has been published
        self.stats_ready = False  # same on all ranks: rank 0 holds calibration_steps steps of histograms
        self.hist_steps = 0  # rank 0: steps whose error histograms were folded in
        self.ledger_part = None  # rank 0: ledger/staging.jsonl
        self.end_status = "clean"  # or producer_lost, interrupted
        self.last_step = -1
        self.version_base = 0  # encoder versions restored from a checkpoint
        self._unstored_encoder = None

    # ----------------------------------------------------------------- helpers
    def _open(self):
        cfg = self.cfg
        xml = cfg.adios2.config_file
        ios = read_ios(xml)
        stream = os.path.join(self.run_dir, "sst", "stream")
        layout = resolve_layout(cfg.adios2.layout)
        t = cfg.timeouts
        params = sst_parameters(cfg)
        self.publisher = self.writer = None
        if self.in_transit:  # an unchanged ADIOS2 code: raw arrays in, nobody to push encoders to
            stream, layout = os.path.join(self.run_dir, cfg.staging.stream), "in_transit"
            self.reader = PlainStreamReader(xml, cfg.adios2.stream_io, stream, self.comm, ios, variables=self.variables,
                                            open_timeout_s=t.open_s, step_timeout_s=t.step_s, parameters=params)
        else:
            if self.rank == 0:  # the model channel first, as the producers do (one SST handshake at a time)
                self._model_adios = make_adios(xml, None)
                model_io = declare_io(self._model_adios, cfg.adios2.model_io, xml, ios)
                if "NetworkInterface" in params:
                    model_io.SetParameter("NetworkInterface", params["NetworkInterface"])
                self.publisher = ModelPublisher(model_io, f"{stream}-model", cfg.timeouts.open_s)
            if layout == "shared":
                self.reader = SharedStreamReader(xml, cfg.adios2.stream_io, stream, self.comm, ios,
                                                 open_timeout_s=t.open_s, step_timeout_s=t.step_s, parameters=params)
            else:
                self.reader = PerRankStreamReader(xml, cfg.adios2.stream_io, stream, cfg.simulation.ranks, self.comm, ios,
                                                  open_timeout_s=t.open_s, step_timeout_s=t.step_s, parameters=params)
        if self.rank == 0:
            self.ledger_part = staging_part(self.run_dir)
            self.writer = CompressedOutputWriter(xml, cfg.adios2.output_io, os.path.join(self.run_dir, "compressed.bp"))
            if cfg.anomaly.enabled:
                self.anomaly_log = open(os.path.join(self.run_dir, "anomalies.csv"), "w")
                self.anomaly_log.write("step,variable,rank,tile,origin,score,status\n")
        signals.reclaim()
        logger.info("staging rank %d/%d reading %s (%s layout)", self.rank, self.comm.Get_size(), stream, layout)

    def _discover_variables(self, blocks):
        if self.variables is None:
            names = sorted({b.var for b in blocks}) if self.rank == 0 else []
            self.variables = json.loads(bcast_bytes(self.comm, json.dumps(names).encode()).decode())
            if self.in_transit:  # the variables of the first step; any that appear later are not read
                self.reader.variables = list(self.variables)
        # tile shapes from the dimensionality seen on the stream (agreed through rank 0)
        missing = [v for v in self.variables if v not in self.tile_shapes]
        if missing:
            dims = {}
            for blk in blocks:
                if blk.raw is not None:
                    dims[blk.var] = list(blk.raw.shape)
            info = json.loads(bcast_bytes(self.comm, json.dumps(dims).encode() if self.rank == 0 else b"").decode())
            for v in missing:
                if v not in info:
                    raise ConfigError(f"staging.variables: {v!r} is not on the stream (first step has {sorted(info)})")
                shape = tuple(self.cfg.staging.tile_shape) if self.cfg.staging.tile_shape else default_tile_shape(info[v])
                if len(shape) != len(info[v]):
                    raise ConfigError(f"{self.cfg.source}: staging.tile_shape {shape} does not match the "
                                      f"{len(info[v])}-D variable {v}")
                self.tile_shapes[v] = shape
                lc = self.cfg.learner
                if lc.type == "autoencoder":
                    self.learners[v] = None  # built at the first step: its normalisation comes from the data
                elif lc.algorithm == "exact":
                    self.learners[v] = IncrementalPCA(lc.n_components, forgetting_factor=lc.forgetting_factor, comm=self.comm)
                else:
                    self.learners[v] = DistributedPCA(lc.n_components, algorithm=lc.algorithm, comm=self.comm)

    def _learn(self, blocks):
        """Feed each variable's raw tiles of this step to its learner (collective). Tiles with NaN or
        Inf are kept out and counted over all ranks (``nonfinite_tiles`` in the summary)."""
        from mpi4py import MPI

        nonfinite = np.zeros(len(self.variables), dtype=np.int64)
        for i, var in enumerate(self.variables):
            d = int(np.prod(self.tile_shapes[var]))
            parts = [raw_tiles_of(b, self.tile_shapes[var]) for b in blocks if b.var == var]
            sources = np.concatenate([np.full(p.shape[0], b.rank) for p, b in zip(parts, (b for b in blocks if b.var == var))]) \
                if parts else np.zeros(0, dtype=np.int64)
            tiles = np.concatenate(parts) if parts else np.zeros((0, d), dtype=np.float32)
            finite = np.all(np.isfinite(tiles), axis=1)
            if not finite.all():
                nonfinite[i] = int((~finite).sum())
                logger.warning("step %d: %s: %d tiles with NaN/Inf kept out of the learner (staging rank %d)",
                               blocks[0].step, var, nonfinite[i], self.rank)
                tiles, sources = tiles[finite], sources[finite]
            if self.cfg.learner.type == "autoencoder":
                self._train_autoencoder(var, tiles, sources)
            else:
                self.learners[var].partial_fit(tiles)
            self.tiles_learned += tiles.shape[0]
        self.comm.Allreduce(MPI.IN_PLACE, nonfinite, op=MPI.SUM)
        for var, n in zip(self.variables, nonfinite):
            self.nonfinite_tiles[var] = self.nonfinite_tiles.get(var, 0) + int(n)

    def _train_autoencoder(self, var, tiles, sources):
        """Feed the autoencoder of ``var`` (collective). Its normalisation (offset, scale) comes from
        all warm-up steps, not the first alone (often a near-constant initial state): their tiles
        are held until the last warm-up step, then the trainer is built and fed them in order."""
        if self.learners[var] is None:
            held = self._warmup_tiles.setdefault(var, [])
            held.append((tiles, sources, self.steps_seen))
            if self.steps_seen < self.cfg.learner.warmup_steps - 1:
                return
            self.learners[var] = self._autoencoder_trainer(var, np.concatenate([t for t, _, _ in held]))
            del self._warmup_tiles[var]
        else:
            held = [(tiles, sources, self.steps_seen)]
        self.learners[var].iterations_per_step = self.pace.iterations
        for t, src, step in held:
            self.learners[var].partial_fit(t, sources=src, step=step)

    def _autoencoder_trainer(self, var, tiles):
        """A distributed trainer for ``var`` normalised by ``tiles`` over all ranks (collective)."""
        from ..analytics.autoencoder import spec_from_data

        ac = self.cfg.learner.autoencoder
        # convolutions run over the tile's axes longer than one (a 5-D velocity-space tile (1, 1, 1, nv, nmu)
        # is a 2-D image); the flattened features are the same either way
        conv_shape = tuple(t for t in self.tile_shapes[var] if t > 1) or (1,)
        spec = spec_from_data(tiles, conv_shape, channels=tuple(ac.channels), latent_dim=ac.latent_dim,
                              latent_bits=ac.latent_bits, comm=self.comm)
        return self.make_trainer(spec)

    def make_trainer(self, spec):
        """A distributed autoencoder trainer for ``spec`` with the configured replay buffer (collective)."""
        from ..analytics.ae_training import AETrainer
        from ..analytics.replay import make_buffer

        ac, rc = self.cfg.learner.autoencoder, self.cfg.learner.replay
        if ac.threads:
            import torch

            torch.set_num_threads(ac.threads)
        kw = {"time_bins": rc.time_bins} if rc.kind == "stratified" else {}
        buffer = make_buffer(rc.kind, rc.max_mib, seed=self.rank, **kw)
        return AETrainer(spec, comm=self.comm, mode=ac.mode, sync_every=ac.sync_every, lr=ac.lr, batch_size=ac.batch_size,
                         iterations_per_step=ac.iterations_per_step, device=ac.device, buffer=buffer, timeout_s=ac.timeout_s,
                         host=ac.rendezvous_host)

    def _encode_in_transit(self, blocks):
        """In-transit mode: code this rank's raw blocks with the current encoder (collective), as
        producers do in situ, and fill in their report rows. Before the first encoder blocks stay
        raw (stored losslessly)."""
        from ..analytics.codec import encode_block
        from ..analytics.correction import absolute_bound
        from ..analytics.metrics import psnr_from_mse
        from .producer import finite_range, step_targets

        ref = self.variables[0]
        self._last_raw = [(b.start, b.count, b.shape, b.raw) for b in blocks if b.var == ref]  # kept, not copied
        enc = self.encoder
        if enc is None:
            for b in blocks:  # the range of the finite values (NaN/Inf cells travel losslessly)
                lo, hi = finite_range(b.raw)
                b.report = make_report(step=b.step, rank=b.rank, raw_bytes=b.raw.nbytes, sent_bytes=b.raw.nbytes,
                                       n=b.raw.size, vmin=lo, vmax=hi, local_psnr_db=math.inf)
            return
        targets, spans = step_targets(self.comm, {v: [b.raw for b in blocks if b.var == v] for v in self.variables},
                                      enc.psnr_db)
        self._chain.keyframe_every = enc.keyframe_every
        for b in blocks:
            model = enc.variables[b.var]
            prev_step, prev = self._chain.reference((b.var, b.rank), b.raw.shape)
            eb = encode_block(b.raw, model.codec(), model.tile_shape, raw_fraction=enc.raw_fraction,
                              target_mse=targets[b.var], prev=prev, abs_bound=absolute_bound(enc.error_bound, spans[b.var]),
                              header={"step": b.step, "variable": b.var, "rank": b.rank, "encoder_version": enc.version,
                                      "shape": list(b.shape), "start": list(b.start), "count": list(b.count),
                                      "ref_step": prev_step})
            self._chain.record((b.var, b.rank), b.step, eb.reconstruction)
            st = eb.stats
            b.report = make_report(step=b.step, rank=b.rank, encoder_version=enc.version, raw_bytes=b.raw.nbytes,
                                   sent_bytes=len(eb.payload), sse=st.sse, n=b.raw.size, max_abs_error=st.max_abs_error,
                                   vmin=st.vmin, vmax=st.vmax, n_raw_tiles=eb.n_raw_tiles,
                                   local_psnr_db=psnr_from_mse(st.mse, st.data_range))
            b.payload, b.raw = eb.payload, None
        self._chain.end_step()

    def _save_reference(self):
        """In-transit mode: the raw last step of the first variable, assembled on rank 0 (collective),
        for the end-to-end check of ``stagelearn report``."""
        frame = pack_frame(_BUNDLE, {"blocks": [{"start": list(s), "count": list(c), "shape": list(g)}
                                                for s, c, g, _ in self._last_raw]},
                           {str(i): r.tobytes() for i, (_, _, _, r) in enumerate(self._last_raw)})
        parts = gather_bytes(self.comm, frame)
        if self.rank != 0:
            return None
        out = None
        for part in parts:
            header, sec = unpack_frame(_BUNDLE, part, "reference blocks")
            for i, m in enumerate(header["blocks"]):
                out = np.zeros(m["shape"], dtype=np.float32) if out is None else out
                sel = tuple(slice(a, a + c) for a, c in zip(m["start"], m["count"]))
                out[sel] = np.frombuffer(bytes(sec[str(i)]), dtype=np.float32).reshape(m["count"])
        if out is None:
            return None
        step = self.ledger.step_table()[-1]["step"]
        np.save(os.path.join(self.run_dir, f"reference_{self.variables[0]}_step{step}.npy"), out)
        return {"variable": self.variables[0], "step": step}

    def _models_finite(self):
        """True when every model has finite parameters (the same on all ranks: training is collective);
        a diverged model is not published (producers keep the previous encoder)."""
        bad = []
        for var, est in self.learners.items():
            if est is None:
                bad.append(var)
            elif hasattr(est, "components_"):
                if not (np.all(np.isfinite(est.components_)) and np.all(np.isfinite(est.mean_))):
                    bad.append(var)
            elif not all(np.all(np.isfinite(p.detach().cpu().numpy())) for p in est.model.parameters()):
                bad.append(var)
        if bad and self.rank == 0:
            logger.error("not publishing an encoder: the model of %s has non-finite parameters (training diverged? "
                         "lower learner.autoencoder.lr)", bad)
        return not bad

    def _should_publish(self):
        lc, ac = self.cfg.learner, self.cfg.anomaly
        if self.steps_seen < lc.warmup_steps:
            return False
        if self.last_publish is None:
            return True
        since = self.steps_seen - self.last_publish
        if ac.enabled and not self.encoder_calibrated and self.stats_ready:
            return True  # ship the first error statistics early: scoring starts with them
        return since >= lc.publish_every

    def _anomaly_policy(self):
        """The encoder's anomaly section: policy plus median/MAD of each variable's tile log-errors."""
        ac = self.cfg.anomaly
        if not ac.enabled:
            return None
        stats = {}
        for var, h in self.error_hists.items():
            if h.total > 0:
                med, mad = h.median_mad()
                if math.isfinite(med) and math.isfinite(mad):
                    stats[var] = [med, mad]
        n_model = {v: int(min(np.searchsorted(np.cumsum(est.explained_variance_ratio_), ac.explained_variance) + 1,
                              est.n_components_)) for v, est in self.learners.items()}
        return {"method": ac.method, "threshold": ac.threshold, "top_k": ac.top_k, "report_score": ac.report_score,
                "max_report": ac.max_report, "persistence_steps": ac.persistence_steps, "n_components": n_model,
                "stats": stats}

    def _record_anomalies(self, step, blocks):
        """Rank 0: fold error histograms, append flagged tiles to anomalies.csv, log an alert line."""
        alerts = []
        for blk in blocks:
            if blk.err_hist is None:
                continue
            self.error_hists.setdefault(blk.var, LogErrorHistogram(self.cfg.anomaly.decay))
            if blk.anomaly is None or not len(blk.anomaly):
                continue
            header, _ = parse_payload(blk.payload)
            grid = tile_grid(header["block_shape"], header["tile_shape"])
            for tile, score, flagged, persistent in blk.anomaly:
                if not (flagged or persistent):
                    continue
                pos = np.unravel_index(int(tile), grid)
                origin = [int(s0 + p * t) for s0, p, t in zip(header["start"], pos, header["tile_shape"])]
                status = "flagged" if flagged else "persistent"
                self.anomaly_log.write(f"{step},{blk.var},{blk.rank},{int(tile)},{' '.join(map(str, origin))},"
                                       f"{score:.3f},{status}\n")
                if flagged:
                    alerts.append((score, blk.var, blk.rank, origin))
        for var in {b.var for b in blocks if b.err_hist is not None}:
            self.error_hists[var].update(sum(b.err_hist for b in blocks if b.var == var and b.err_hist is not None))
        if any(b.err_hist is not None for b in blocks):
            self.hist_steps += 1
        if alerts:
            score, var, rank, origin = max(alerts)
            logger.warning("anomaly: step %d: %d tiles flagged; highest score %.1f in %s at %s (producer %d)",
                           step, len(alerts), score, var, origin, rank)
        self.anomaly_log.flush()

    def _progress(self, step):
        path = os.path.join(self.run_dir, "progress.json")
        tmp = path + ".tmp"
        with open(tmp, "w") as f:
            json.dump({"steps_received": self.steps_seen, "last_step": step,
                       "encoder_version": self.encoder.version if self.encoder else 0}, f)
        os.replace(tmp, path)

    # ----------------------------------------------------------------- main loop
    def _close_local(self):
        if self.anomaly_log is not None:
            self.anomaly_log.close()
            self.anomaly_log = None
        if self.writer is not None:
            self.writer.close()
        if self.publisher is not None:
            self.publisher.close(self.cfg.timeouts.step_s)
        self.publisher = self.writer = None

    @property
    def anomaly_calibrated(self):
        return bool(self.encoder is not None and self.encoder.anomaly and self.encoder.anomaly["stats"])

    def _loop(self):
        while True:
            t_wait = time.perf_counter()
            blocks = self.reader.read_step()
            t_busy = time.perf_counter()
            status = "interrupted" if signals.pending() else self.reader.status
            worst = allreduce_flag(self.comm, {"interrupted": 2, "failed": 1}.get(status, 0))
            if worst == 2:
                self.end_status = "interrupted"  # steps read but not stored are replayed by the producers
                break
            if worst == 1:  # a producer went away: stop on every rank (steps read by some ranks only are not stored)
                self.end_status = "producer_lost"
                break
            if not allreduce_flag(self.comm, blocks is not None):
                break
            blocks = blocks or []
            self._discover_variables(blocks)
            self._learn(blocks)
            if self.in_transit:
                self._encode_in_transit(blocks)
            self.steps_seen += 1
            if self.cfg.anomaly.enabled and not self.encoder_calibrated and self.encoder_sent:
                # rank 0 counts the steps whose error histograms it has folded in; all ranks must agree
                self.stats_ready = bool(allreduce_flag(
                    self.comm, self.rank == 0 and self.hist_steps >= self.cfg.anomaly.calibration_steps))
            parts = gather_bytes(self.comm, _pack_blocks(blocks))
            publish = self._should_publish() and self._models_finite()
            if self.rank == 0:
                self._record(parts, publish)
            if publish:
                self.last_publish = self.steps_seen
                self.encoder_sent = True
                if self.in_transit:  # every staging rank encodes its blocks with it from the next step on
                    self.encoder = Encoder.from_frame(bcast_bytes(self.comm, self.encoder.to_frame() if self.rank == 0 else b""))
                self.encoder_calibrated = allreduce_flag(self.comm, self.rank == 0 and self.anomaly_calibrated)
            if self.pace is not None:
                self.pace.update(self.comm, t_busy - t_wait, time.perf_counter() - t_busy)
            every = self.cfg.staging.checkpoint_every
            if every and self.steps_seen % every == 0:
                self._checkpoint()

    def _build_encoder(self, version, step):
        """Rank 0: the encoder of the current learners with the run's codec policy (and anomaly statistics)."""
        enc = Encoder.from_learners({v: self.learners[v] for v in self.variables}, version=version,
                                    trained_until_step=step, tile_shapes=self.tile_shapes, ranges=self.ranges,
                                    psnr_db=self.cfg.codec.psnr_db, raw_fraction=self.cfg.codec.raw_fraction)
        enc.anomaly = self._anomaly_policy()
        cc = self.cfg.codec
        enc.keyframe_every, enc.encode_threads = cc.keyframe_every, cc.encode_threads
        enc.error_bound = cc.error_bound.as_dict() if cc.error_bound is not None else None
        return enc

    def _record(self, parts, publish):
        """Rank 0: account the step, publish a new encoder if due, write the output step."""
        all_blocks = [b for p in parts for b in _unpack_blocks(p)]
        step = max(b.step for b in all_blocks) if all_blocks else -1
        for b in all_blocks:
            self.ledger.add(b.var, b.report)
            lo, hi = self.ranges.get(b.var, (math.inf, -math.inf))
            self.ranges[b.var] = (min(lo, report_get(b.report, "vmin")), max(hi, report_get(b.report, "vmax")))
        if self.anomaly_log is not None:
            self._record_anomalies(step, all_blocks)
        new = None
        if publish:
            version = (self.encoder.version if self.encoder else self.version_base) + 1
            new = self._build_encoder(version, step)
            self.ledger.published.append((version, step))
            self.encoder = new
        store, self._unstored_encoder = new or self._unstored_encoder, None
        self.writer.write_step(step, all_blocks, encoder=store)
        per_rank = {}
        for b in all_blocks:
            e = per_rank.setdefault((b.step, b.rank), [0, 0])
            e[0] = max(e[0], int(report_get(b.report, "encoder_version")))
            e[1] += int(report_get(b.report, "sent_bytes"))
        for (s, r), (v, n) in sorted(per_rank.items()):
            self.ledger_part.add(step=s, rank=r, encoder_version=v, bytes=n)
        if all_blocks:
            self.last_step = max(self.last_step, step)
        if self.publisher is not None:  # acknowledge the stored step (and ship the new encoder)
            self.publisher.publish(new, ack=min(b.step for b in all_blocks) if all_blocks else None)
        self._progress(step)

    # ----------------------------------------------------------------- checkpoint, restart, loss
    def _checkpoint(self):
        """Write the learner checkpoint: the model from rank 0 (identical on all ranks after each step),
        each rank's replay buffer and optimizer state (autoencoder) from that rank. No collective."""
        if not checkpoint.supported(self.cfg.learner) or not self.learners:
            return
        ranges = self.ranges if self.rank == 0 else {}  # value ranges are accounted on rank 0
        checkpoint.save(os.path.join(self.run_dir, "checkpoint"), learners=self.learners, step=self.last_step,
                        encoder_version=self.encoder.version if self.encoder else self.version_base,
                        published=self.ledger.published, tile_shapes=self.tile_shapes, ranges=ranges, rank=self.rank,
                        seen=self.steps_seen)

    def _restore(self):
        """``staging.restart_from``: learners, value ranges and version numbering from a checkpoint
        (every rank reads it); the restored model is published at once as the next version."""
        if not checkpoint.supported(self.cfg.learner):
            raise ConfigError(f"{self.cfg.source}: staging.restart_from needs learner.type autoencoder, or pca with "
                              "algorithm exact (the learners that are checkpointed)")
        state, learners = checkpoint.load(self.cfg.staging.restart_from, self.comm, make_trainer=self.make_trainer)
        if not learners:
            raise ConfigError(f"{self.cfg.staging.restart_from}: the checkpoint holds no trained learner yet "
                              "(written before the end of the warm-up)")
        if self.variables is not None and set(self.variables) != set(learners):
            raise ConfigError(f"{self.cfg.source}: staging.variables {self.variables} differ from the checkpoint's "
                              f"{sorted(learners)}")
        self.variables = sorted(learners)
        self.learners, self.tile_shapes, self.ranges = learners, state["tile_shapes"], state["ranges"]
        self.version_base = state["encoder_version"]
        logger.info("staging rank %d restarted from %s (step %d, encoder version %d)", self.rank,
                    self.cfg.staging.restart_from, state["step"], self.version_base)
        if self.rank == 0:
            version = self.version_base + 1
            self.encoder = self._build_encoder(version, state["step"])
            self.ledger.published.append((version, -1))
            if self.publisher is not None:
                self.publisher.publish(self.encoder)
            self._unstored_encoder = self.encoder  # stored in compressed.bp with the first step
        frame = bcast_bytes(self.comm, self.encoder.to_frame() if self.rank == 0 else b"")
        self.encoder = Encoder.from_frame(frame)
        self.last_publish = 0
        self.encoder_sent = True

    def _missing(self):
        """Rank 0: producer ranks and steps never received, from the configured number of output steps."""
        sim = self.cfg.simulation
        expected = sim.steps // sim.plotgap + 1 if getattr(sim, "steps", None) else None
        n = self.reader.n_producers or sim.ranks
        last = {r: -1 for r in range(int(n))}
        for step, entries in self.ledger.rows.items():
            for rank, _ in entries:
                last[rank] = max(last.get(rank, -1), step)
        if expected is None:
            expected = max(last.values()) + 1
        ranks = sorted(r for r, s in last.items() if s < expected - 1)
        if not ranks:
            return None
        first = min(last[r] for r in ranks) + 1
        return {"ranks": ranks, "steps": [first, expected - 1], "n_steps": expected - first,
                "last_step_by_rank": {str(r): last[r] for r in ranks}}

    def run(self):
        """Run until the simulation closes its stream; return the summary dict on rank 0 (collective).

        Raises
        ------
        PeerLostError
            After storing everything, when the producers went away without closing the stream.
        Interrupted
            After storing everything, on SIGINT/SIGTERM.
        """
        t0 = time.time()
        self._open()
        if self.cfg.staging.restart_from:
            self._restore()
        try:
            self._loop()
        except BaseException:
            # Other ranks may be inside a collective: do not call collective closes here. The
            # caller aborts the job; rank 0 still completes its local output file.
            logger.exception("staging rank %d failed", self.rank)
            self._close_local()
            raise
        if allreduce_flag(self.comm, bool(self.reader.failed_producers)) and self.end_status == "clean":
            self.end_status = "producer_lost"
        if self.end_status != "producer_lost":  # a stream whose writer died is left to the process exit
            self.reader.close()
        reference = self._save_reference() if self.in_transit and self.end_status == "clean" else None
        self._checkpoint()
        signum = signals.agreed(self.comm) if self.end_status == "interrupted" else 0
        self._close_local()
        if self.cfg.learner.type == "autoencoder" and self.comm.Get_size() > 1:
            from ..analytics.ae_training import destroy

            destroy()
        summary = self._summary(t0, reference) if self.rank == 0 else None
        if self.end_status == "producer_lost":
            missing = bcast_bytes(self.comm, json.dumps(summary.get("missing")).encode() if self.rank == 0 else b"")
            raise PeerLostError(f"the simulation went away without closing its stream; missing: {missing.decode()} "
                                f"(stored steps are in {self.run_dir}/compressed.bp, learner in checkpoint/)")
        if signum:
            raise Interrupted(signum)
        return summary

    def _summary(self, t0, reference):
        summary = self.ledger.summary(wall_s=time.time() - t0)
        summary["tiles_learned_rank0"] = self.tiles_learned
        summary["nonfinite_tiles"] = dict(self.nonfinite_tiles)
        summary["mode"] = self.cfg.staging.mode
        summary["end"] = self.end_status
        summary["blocks_per_step"] = self.reader.n_producers
        if self.end_status != "clean":
            summary["missing"] = self._missing()
            if summary["missing"]:
                m = summary["missing"]
                logger.error("producer ranks %s: steps %d..%d (%d) not received (%s)", m["ranks"], m["steps"][0],
                             m["steps"][1], m["n_steps"], self.end_status)
        if reference is not None:
            summary["reference"] = reference
        if self.cfg.learner.type == "autoencoder":
            trainers = [t for t in self.learners.values() if t is not None]
            summary["training_bytes_rank0"] = int(sum(t.bytes_communicated for t in trainers))
            summary["training_rounds_rank0"] = int(sum(t.rounds for t in trainers))
            summary["training_iterations"] = int(sum(t.n_iter_ for t in trainers))
            summary["training_iterations_per_step_mean"] = float(np.mean(self.pace.history)) if self.pace.history else 0.0
            summary["training_loss"] = float(np.mean([t.loss_ for t in trainers])) if trainers else math.nan
        write_json(os.path.join(self.run_dir, "staging_summary.json"), summary)
        write_json(os.path.join(self.run_dir, "steps.json"), self.ledger.step_table())
        self.ledger_part.add(event="end", status=self.end_status, last_step=self.last_step,
                             missing=summary.get("missing"))
        self.ledger_part.close()
        return summary
