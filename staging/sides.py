"""The two sides of a run, each executed by every rank of its own ``mpiexec`` job."""

from __future__ import annotations

import logging
import os
import time

import numpy as np

from ..sim_mocks.events import ground_truth, written_fields
from ..sim_mocks.runner import build_simulation, gather_field, run_simulation
from .config import sst_parameters
from .errors import Interrupted, UsageError
from .producer import Producer
from .results import write_json
from .service import StagingService

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
                        peer_timeout_s=cfg.timeouts.peer_s)
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
        versions = producer.encoder.version if producer.encoder else 0
    record = dict(stats, ranks=comm.Get_size(), layout=producer.layout, engine=producer.engine_type,
                  last_encoder_version=versions, reference=None, staging_lost=producer.staging_lost,
                  stalls=producer.stalls, stall_s=producer.stall_s, queue_limit=producer.queue_limit,
                  queue_full_policy=producer.queue_full_policy,
                  fallback_file=producer.fallback_file,
                  status="interrupted" if interrupted else "clean")
    if interrupted is None:
        # the last output step, assembled once, lets `stagelearn run` check the decoded file end to end
        var = sim.variables[0]
        last = stats["steps_written"] - 1
        ref = gather_field(comm, written_fields(sim, cfg.simulation.events, last)[var], dom.start, dom.count, dom.shape)
        record["reference"] = None if producer.staging_lost else {"variable": var, "step": last}
        if comm.Get_rank() == 0:
            np.save(os.path.join(run_dir, f"reference_{var}_step{last}.npy"), ref)
            if cfg.simulation.events:
                write_json(os.path.join(run_dir, "events.json"), ground_truth(cfg.simulation.events, dom.shape))
    if comm.Get_rank() == 0:
        write_json(os.path.join(run_dir, "producer.json"), dict(record, wall_s=time.time() - t0))
    if interrupted is not None:
        raise interrupted


def staging_main(cfg, comm, run_dir):
    """Staging side: :class:`~stagelearn.staging.service.StagingService` until the stream ends (collective)."""
    if comm.Get_rank() == 0:
        prepare_run_dir(run_dir)
    comm.Barrier()
    return StagingService(cfg, comm, run_dir).run()
