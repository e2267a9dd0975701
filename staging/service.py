"""The staging step loop: read the stream, learn, publish encoders, write the compressed output.

Every staging rank runs :meth:`StagingService.run`. Per step:

1. read this rank's producer blocks (:mod:`.stream`); the ranks agree whether to go on (a
   producer lost, a signal, the end of the stream);
2. feed the raw tiles of the blocks to the learners (collective: every rank ends with the same
   global model);
3. in transit, code the blocks with the current encoder (:mod:`.in_transit`);
4. gather the blocks' accounting (never their data, :mod:`.bundle`) on rank 0, which records it
   (:mod:`.recorder`) and, when due, builds the next encoder (:mod:`.publication`);
5. every rank writes its own blocks into ``compressed.bp`` (collective
   :class:`~stagelearn.staging.output.CompressedOutputWriter`), rank 0 the new encoder;
6. rank 0 acknowledges the stored step on the model stream (with the new encoder) and records it
   in ``ledger/staging.jsonl`` and ``progress.json``.

When the producers go away without closing the stream, staging stores what it has, writes its
checkpoint (:mod:`.checkpoint`), names the missing producer ranks and steps in
``staging_summary.json`` and ends with :class:`~stagelearn.staging.errors.PeerLostError` (exit 4).
SIGINT/SIGTERM end the loop at a step boundary the same way (exit 130/143).

The stream reader, the output writer and the model publisher come from :meth:`StagingService.open_reader`,
:meth:`~StagingService.open_writer` and :meth:`~StagingService.open_publisher`; a test overrides
them with fakes to drive the loop without SST.
"""

from __future__ import annotations

import json
import logging
import os
import time

from . import signals
from .block_check import CorruptDataError
from .bundle import gather_records
from .config import sst_parameters
from .errors import ConfigError, Interrupted, PeerLostError
from .in_transit import InTransitCoder
from .learning import LearnerSet
from .model_channel import ModelPublisher, open_model_io
from .mpiutil import allreduce_flag, bcast_bytes
from .output import CompressedOutputWriter
from .publication import Publication
from .recorder import StepRecorder
from .step_facts import block_counts, gather_corrupt, skipped_variables, step_items, sum_over_ranks, writer_step
from .step_tiles import agree_tile_shapes, agree_variables, step_tiles
from .plain_stream import PlainStreamReader
from .stream import PerRankStreamReader, SharedStreamReader
from .wire import resolve_layout
from .xmlconfig import read_ios

logger = logging.getLogger(__name__)


class StagingService:
    """Staging side of a run (collective over ``comm``).

    Parameters
    ----------
    cfg : RunConfig
    comm : mpi4py.MPI.Comm
        The staging ranks.
    run_dir : path
        Where the stream contact files, the output file and the summary go.

    Attributes
    ----------
    publication : Publication
        When to publish, the current encoder, the model stream.
    recorder : StepRecorder or None
        Rank 0's accounts and result files (None on other ranks).
    end_status : str
        ``clean``, ``producer_lost`` or ``interrupted`` once :meth:`run` returns or raises.
    """

    def __init__(self, cfg, comm, run_dir):
        self.cfg, self.comm, self.run_dir = cfg, comm, str(run_dir)
        self.rank = comm.Get_rank()
        self.variables = list(cfg.staging.variables) if cfg.staging.variables else None
        self.in_transit = cfg.staging.mode == "in_transit"
        self.coder = InTransitCoder(comm, sz3_every=cfg.metrics.sz3_every) if self.in_transit else None
        self.reader = self.writer = self.recorder = None
        self.publication = Publication(cfg, comm)
        self.steps_seen = 0
        self.n_corrupt = 0  # blocks this rank flagged corrupt
        self.end_status = "clean"  # or producer_lost, interrupted
        self.learning = LearnerSet.for_run(cfg, comm)

    # ----------------------------------------------------------------- channels (a test overrides these)
    def _stream_path(self):
        if self.in_transit:
            return os.path.join(self.run_dir, self.cfg.staging.stream)
        return os.path.join(self.run_dir, "sst", "stream")

    def open_publisher(self):
        """Rank 0 (not in transit): the model stream writer (:class:`ModelPublisher`)."""
        cfg = self.cfg
        xml = cfg.adios2.config_file
        self._model_adios, io = open_model_io(xml, cfg.adios2.model_io, read_ios(xml), sst_parameters(cfg))
        return ModelPublisher(io, f"{self._stream_path()}-model", cfg.timeouts.open_s)

    def open_reader(self):
        """This rank's stream reader (collective): plain arrays in transit, else by ``adios2.layout``."""
        cfg, t = self.cfg, self.cfg.timeouts
        xml, ios, params = cfg.adios2.config_file, read_ios(cfg.adios2.config_file), sst_parameters(cfg)
        kw = dict(open_timeout_s=t.open_s, step_timeout_s=t.step_s, parameters=params)
        stream, io = self._stream_path(), cfg.adios2.stream_io
        if self.in_transit:  # an unchanged ADIOS2 code: raw arrays in, nobody to push encoders to
            return PlainStreamReader(xml, io, stream, self.comm, ios, variables=self.variables, **kw)
        if resolve_layout(cfg.adios2.layout) == "shared":
            return SharedStreamReader(xml, io, stream, self.comm, ios, **kw)
        return PerRankStreamReader(xml, io, stream, cfg.simulation.ranks, self.comm, ios, **kw)

    def open_writer(self):
        """The ``compressed.bp`` writer (collective; every rank writes its own blocks)."""
        cfg = self.cfg
        return CompressedOutputWriter(cfg.adios2.config_file, cfg.adios2.output_io,
                                      os.path.join(self.run_dir, "compressed.bp"), comm=self.comm)

    def _open(self):
        if self.rank == 0:
            self.recorder = StepRecorder(self.run_dir, self.cfg.anomaly)
        if self.rank == 0 and not self.in_transit:  # the model channel first, as the producers do (one SST handshake at a time)
            self.publication.publisher = self.open_publisher()
        if self.cfg.staging.restart_from:  # published before the data stream opens: producers code from their first step
            self._restore()
        self.reader = self.open_reader()
        if self.recorder is not None:  # `stagelearn run` tells a stream closed before this from one that ended
            part = self.recorder.ledger_part
            part.add(event="opened", stream=self._stream_path())
            if self.in_transit:  # a step announced whose data never comes is still on record (no producer ledger)
                self.reader.on_step = lambda step: part.add(event="begun", step=step)
        self.writer = self.open_writer()
        signals.reclaim()
        logger.info("staging rank %d/%d reading %s (%s)", self.rank, self.comm.Get_size(), self._stream_path(),
                    "in transit" if self.in_transit else f"{resolve_layout(self.cfg.adios2.layout)} layout")

    def _close_local(self, *, failed=False):
        """Close what this rank holds; after a failure only what needs no other rank (the collective
        output file is then left to the job's abort; a serial one is closed by rank 0)."""
        if self.recorder is not None:
            self.recorder.close_log()
        if self.writer is not None and not (failed and getattr(self.writer, "collective", False)):
            self.writer.close()
        self.publication.close(self.cfg.timeouts.step_s)
        self.writer = None

    # ----------------------------------------------------------------- the loop
    def _go_on(self, blocks):
        """Agree over ``comm`` whether to handle this step; else set ``end_status`` (collective)."""
        status = "interrupted" if signals.pending() else self.reader.status
        worst = allreduce_flag(self.comm, {"interrupted": 2, "failed": 1}.get(status, 0))
        if worst == 2:
            self.end_status = "interrupted"  # steps read but not stored are replayed by the producers
            return False
        if worst == 1:  # a producer went away: stop on every rank (steps read by some ranks only are not stored)
            self.end_status = "producer_lost"
            return False
        return bool(allreduce_flag(self.comm, blocks is not None))

    def _loop(self):
        while True:
            t_wait = time.perf_counter()
            blocks = self.reader.read_step()
            t_busy = time.perf_counter()
            if not self._go_on(blocks):
                break
            self._step(blocks or [])
            self.learning.pace_update(t_busy - t_wait, time.perf_counter() - t_busy)
            every = self.cfg.staging.checkpoint_every
            if every and self.steps_seen % every == 0:
                self._checkpoint()

    def _step(self, blocks):
        """Learn, (in transit) code, account, publish and store one step (collective)."""
        pub, rec = self.publication, self.recorder
        self._discover_variables(blocks)
        counts = block_counts(self.comm, blocks, self.variables)
        corrupt = gather_corrupt(self.comm, blocks)
        self.n_corrupt += sum(1 for b in blocks if b.corrupt)
        self._learn([b for b in blocks if b.corrupt is None])  # stored as they came, never learned
        if self.in_transit:
            self.coder.encode(blocks, pub.encoder, self.variables)
        self.steps_seen += 1
        pub.check_stats(rec.hist_steps if rec is not None else 0)
        records = gather_records(self.comm, blocks)
        publish = pub.due(self.steps_seen) and self.learning.publishable()
        step = writer_step(self.comm, self.reader, blocks)
        new = None
        if rec is not None:
            rec.account(records)
            rec.step_counts(step, counts)
            rec.corrupt(corrupt)
            if publish:
                new = pub.new_encoder(self.learning.ready_view(), step=step, ranges=rec.ranges,
                                      error_hists=rec.error_hists)
        items = step_items(counts, self.reader) if rec is not None else None
        self.writer.write_step(step, blocks, encoder=pub.to_store(new) if rec is not None else None, summary=items)
        if rec is not None:
            rec.stored(step, records)
            pub.acknowledge(new, ack=min(r.step for r in records) if records else None)
            rec.progress(self.steps_seen, step, pub.encoder.version if pub.encoder else 0)
        if publish:
            pub.published_now(self.steps_seen, share=self.in_transit)

    def _discover_variables(self, blocks):
        """Agree on the variables and their tile shapes (collective).

        In situ the variables are rank 0's of the first step (or ``staging.variables``). In transit
        without ``staging.variables`` every array on the stream is added when it first appears (the
        reader's ``step_variables``, the same on every rank); a learner is made for a variable the
        first step some rank holds it raw.
        """
        step_vars = getattr(self.reader, "step_variables", None) if self.in_transit else None
        if self.variables is None and step_vars is None:
            self.variables = agree_variables(self.comm, blocks)
        elif self.variables is None or (step_vars is not None and self.cfg.staging.variables is None):
            known = list(self.variables or [])
            self.variables = known + [v for v in step_vars if v not in known]
            if self.recorder is not None and known and len(self.variables) > len(known):
                logger.info("in transit: new variables on the stream: %s", self.variables[len(known):])
        raw_here = {b.var for b in blocks if b.raw is not None}
        candidates = [v for v in self.variables if v not in self.learning.tile_shapes]
        missing = [v for v, n in zip(candidates, sum_over_ranks(self.comm, [int(v in raw_here) for v in candidates])) if n]
        if missing:
            shapes = agree_tile_shapes(self.comm, blocks, missing, self.cfg.staging.tile_shape, self.cfg.source)
            for v in missing:
                self.learning.add(v, shapes[v])

    def _learn(self, blocks):
        """Feed each variable's raw tiles of this step to its learner (collective)."""
        for var in self.learning.variables:
            if self.learning.stream:
                self.learning.learn_blocks(var, blocks)
                continue
            tiles, sources = step_tiles(blocks, var, self.learning.tile_shapes[var])
            self.learning.learn(var, tiles, sources, self.steps_seen, step=blocks[0].step if blocks else None)

    # ----------------------------------------------------------------- checkpoint, restart, end
    def _checkpoint(self):
        """Write the learner checkpoint: the model from rank 0 (identical on all ranks after each step),
        each rank's replay buffer and optimizer state (autoencoder) from that rank. No collective."""
        rec = self.recorder  # value ranges and the last stored step are accounted on rank 0
        self.learning.save(os.path.join(self.run_dir, "checkpoint"), step=rec.last_step if rec is not None else -1,
                           encoder_version=self.publication.version, published=self.publication.published,
                           ranges=rec.ranges if rec is not None else {}, seen=self.steps_seen)

    def _restore(self):
        """``staging.restart_from``: learners, value ranges and version numbering from a checkpoint
        (every rank reads it); the restored model is published at once as the next version."""
        source = self.cfg.staging.restart_from
        if not self.learning.checkpointable:
            raise ConfigError(f"{self.cfg.source}: staging.restart_from needs learner.type autoencoder, or pca with "
                              "algorithm exact (the learners that are checkpointed)")
        state = self.learning.restore(source)
        if not self.learning.learners:
            raise ConfigError(f"{source}: the checkpoint holds no trained learner yet (written before the end of "
                              "the warm-up)")
        if self.variables is not None and set(self.variables) != set(self.learning.learners):
            raise ConfigError(f"{self.cfg.source}: staging.variables {self.variables} differ from the checkpoint's "
                              f"{sorted(self.learning.learners)}")
        self.variables = list(self.learning.variables)
        if self.recorder is not None:
            self.recorder.ranges = state["ranges"]
        logger.info("staging rank %d restarted from %s (step %d, encoder version %d)", self.rank, source,
                    state["step"], state["encoder_version"])
        self.publication.restored(self.learning, version_base=state["encoder_version"], step=state["step"],
                                  ranges=state["ranges"])

    def run(self):
        """Run until the simulation closes its stream; return the summary dict on rank 0 (collective).

        Returns
        -------
        dict on rank 0 (``staging_summary.json``), None elsewhere.

        Raises
        ------
        PeerLostError
            After storing everything, when the producers went away without closing the stream.
        Interrupted
            After storing everything, on SIGINT/SIGTERM.
        """
        t0 = time.time()
        self._open()
        try:
            self._loop()
        except BaseException:
            # Other ranks may be inside a collective: do not call collective closes here. The
            # caller aborts the job; rank 0 still closes a serial output file.
            logger.exception("staging rank %d failed", self.rank)
            self._close_local(failed=True)
            raise
        if allreduce_flag(self.comm, bool(self.reader.failed_producers)) and self.end_status == "clean":
            self.end_status = "producer_lost"
        if self.end_status != "producer_lost":  # a stream whose writer died is left to the process exit
            self.reader.close()
        reference = None
        if self.in_transit and self.end_status == "clean":
            rows = self.recorder.accounts.rows if self.recorder is not None else {}
            ref_step = self.coder.reference_step if self.coder.reference_step is not None else (max(rows) if rows else None)
            reference = self.coder.save_reference(self.run_dir, self.variables[0], ref_step) if self.variables else None
        self._checkpoint()
        signum = signals.agreed(self.comm) if self.end_status == "interrupted" else 0
        self._close_local()
        self.learning.close()
        summary = self._summary(t0, reference) if self.rank == 0 else None
        if self.end_status == "producer_lost":
            missing = bcast_bytes(self.comm, json.dumps(summary.get("missing")).encode() if self.rank == 0 else b"")
            raise PeerLostError(f"the simulation went away without closing its stream; missing: {missing.decode()} "
                                f"(stored steps are in {self.run_dir}/compressed.bp, learner in checkpoint/)")
        if signum:
            raise Interrupted(signum)
        n_corrupt = allreduce_flag(self.comm, self.n_corrupt, "sum")
        if n_corrupt:
            raise CorruptDataError(f"{n_corrupt} blocks did not match their writer's BlocksInfo min/max (stored as "
                                   f"they came, flagged corrupt in {self.run_dir}/ledger.jsonl and "
                                   "staging_summary.json corrupt_blocks)")
        return summary

    def _summary(self, t0, reference):
        fields = {"tiles_learned_rank0": self.learning.tiles_learned, "nonfinite_tiles": dict(self.learning.nonfinite_tiles),
                  "mode": self.cfg.staging.mode,
                  "skipped_variables": skipped_variables(self.reader, self.variables, self.learning.tile_shapes,
                                                         self.cfg.staging.variables)}
        summary = self.recorder.summary(wall_s=time.time() - t0, published=self.publication.published, fields=fields,
                                        end_status=self.end_status, n_producers=self.reader.n_producers,
                                        simulation=self.cfg.simulation)
        if reference is not None:
            summary["reference"] = reference
        summary.update(self.learning.training_summary())
        self.recorder.finish(summary)
        return summary
