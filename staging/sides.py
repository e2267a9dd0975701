"""The two sides of a run, each executed by every rank of its own ``mpiexec`` job."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..sim_mocks.events import ground_truth, written_fields
from ..sim_mocks.runner import build_simulation, gather_field, run_simulation
from .code_xml import enforce
from .config import sst_parameters
from .errors import Interrupted, UsageError
from .producer import Producer, producer_record, write_producer_record
from .results import write_json
from .service import StagingService
from .stream_writer import TIMEOUT_NAMES
from .world_check import check_world_size

logger = logging.getLogger(__name__)


def prepare_run_dir(run_dir):
    """Create ``run_dir`` and its ``sst/`` folder for contact files (mode 0700)."""
    os.makedirs(run_dir, exist_ok=True)
    sst = os.path.join(run_dir, "sst")
    os.makedirs(sst, mode=0o700, exist_ok=True)
    os.chmod(sst, 0o700)
    return sst


def simulation_main(cfg, comm, run_dir):
    """Producer side: run the configured mock simulation through a :class:`Producer` (collective)."""
    if cfg.simulation.type == "external":
        raise UsageError(f"{cfg.source}: simulation.type external is an unchanged code: start it yourself "
                         f"(`mpiexec -n {cfg.simulation.ranks} {' '.join(cfg.simulation.command)}` in the run directory) "
                         "or let `stagelearn run` start it; `stagelearn sim` runs the mock simulations")
    # before any collective: ranks started as singletons (srun without --mpi=pmi2) stop here, exit 2
    check_world_size(comm, "sim", yaml_ranks=cfg.simulation.ranks, yaml_key="simulation.ranks")
    t0 = time.time()
    if comm.Get_rank() == 0:
        prepare_run_dir(run_dir)
    comm.Barrier()
    sim = build_simulation(cfg.simulation, comm)
    dom = sim.domain
    producer = Producer(os.path.join(run_dir, "sst", "stream"), comm=comm, config_file=cfg.adios2.config_file,
                        io_name=cfg.adios2.stream_io, model_io_name=cfg.adios2.model_io, layout=cfg.adios2.layout,
                        open_timeout_s=cfg.timeouts.open_s, step_timeout_s=cfg.timeouts.step_s,
                        sz3_every=cfg.metrics.sz3_every, sst_parameters=sst_parameters(cfg), run_dir=run_dir,
                        fallback_dir=cfg.fallback.dir, fallback_encode=cfg.fallback.encode,
                        peer_timeout_s=cfg.timeouts.peer_s, timeout_names=TIMEOUT_NAMES)
    for var in sim.variables:
        producer.define_variable(var, dom.shape, dom.start, dom.count)
    interrupted = None
    with producer:
        producer.open()
        try:
            stats = run_simulation(sim, producer, steps=cfg.simulation.steps, plotgap=cfg.simulation.plotgap,
                                   events=cfg.simulation.events)
        except Interrupted as exc:  # every rank, at the same step boundary: close cleanly, then report it
            interrupted = exc
            producer.close(status="interrupted")
            stats = {"steps_written": producer.steps_written, "compute_s": None, "io_s": None}
    status = "interrupted" if interrupted else "clean"
    reference = None
    if interrupted is None:
        # the last output step, assembled once, lets `stagelearn run` check the decoded file end to end
        var = sim.variables[0]
        last = stats["steps_written"] - 1
        ref = gather_field(comm, written_fields(sim, cfg.simulation.events, last)[var], dom.start, dom.count, dom.shape)
        reference = None if producer.staging_lost else {"variable": var, "step": last}
        if comm.Get_rank() == 0:
            np.save(os.path.join(run_dir, f"reference_{var}_step{last}.npy"), ref)
            if cfg.simulation.events:
                write_json(os.path.join(run_dir, "events.json"), ground_truth(cfg.simulation.events, dom.shape))
    if comm.Get_rank() == 0:
        write_producer_record(run_dir, producer_record(producer, status=status, wall_s=time.time() - t0,
                                                       reference=reference, source="stagelearn sim", **stats))
    if interrupted is not None:
        raise interrupted


def staging_main(cfg, comm, run_dir):
    """Staging side: :class:`~stagelearn.staging.service.StagingService` until the stream ends (collective).

    In transit the code's own XML is judged first (:func:`~stagelearn.staging.code_xml.enforce`, the
    same on every rank, before any collective): a stream that would lose steps is refused. Before
    that, :func:`~stagelearn.staging.world_check.check_world_size` stops ranks started as singletons.
    """
    check_world_size(comm, "stage", yaml_ranks=cfg.staging.ranks, yaml_key="staging.ranks")
    for note in enforce(cfg):
        if comm.Get_rank() == 0:
            logger.warning("%s", note)
    if comm.Get_rank() == 0:
        prepare_run_dir(run_dir)
    comm.Barrier()
    summary = StagingService(cfg, comm, run_dir).run()
    if comm.Get_rank() == 0 and summary is not None:
        print(stage_summary_line(summary, run_dir), flush=True)
    return summary


def _figure(value, spec, unit=""):
    """``value`` formatted by ``spec``, or ``-`` when unknown (None, or a non-finite float as JSON keeps it)."""
    if value is None or isinstance(value, str) or (isinstance(value, float) and not np.isfinite(value)):
        return "-"
    return format(value, spec) + unit


def stage_summary_line(summary, run_dir):
    """The one line ``stagelearn stage`` prints when it ends: steps received/lost, ratio, PSNR (from ``summary``)."""
    return (f"stagelearn stage: received {summary.get('steps_received')} steps, lost {summary.get('steps_lost')}; "
            f"{summary.get('encoder_versions')} encoders; after the first encoder ({summary.get('encoded_steps')} steps) "
            f"compression ratio {_figure(summary.get('compression_ratio'), '.2f')}, "
            f"PSNR {_figure(summary.get('psnr_db'), '.2f', ' dB')}; results in {run_dir}")
