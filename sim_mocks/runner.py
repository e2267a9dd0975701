"""Run a mock simulation and stream its output through :class:`~stagelearn.staging.Producer`."""

from __future__ import annotations

import logging
import time

import numpy as np

from .config import GrayScottConfig, GyrokineticConfig, GyrokineticTurbulenceConfig, Heat2DConfig
from .events import apply_state_events, written_fields
from .gray_scott import GrayScott3D
from .gyrokinetic import GyrokineticMock5D
from .gyrokinetic_turbulence import TurbulentGyrokineticMock5D
from .heat2d import AdvectionDiffusion2D

logger = logging.getLogger(__name__)


def build_simulation(sim_cfg, comm):
    """Instantiate the mock named by ``sim_cfg.type`` over ``comm`` (collective)."""
    if isinstance(sim_cfg, GrayScottConfig):
        return GrayScott3D(sim_cfg.L, F=sim_cfg.F, k=sim_cfg.k, Du=sim_cfg.Du, Dv=sim_cfg.Dv, dt=sim_cfg.dt,
                           noise=sim_cfg.noise, comm=comm, seed=sim_cfg.seed)
    if isinstance(sim_cfg, Heat2DConfig):
        return AdvectionDiffusion2D(sim_cfg.nx, sim_cfg.ny, kappa=sim_cfg.kappa, velocity=sim_cfg.velocity,
                                    amplitude=sim_cfg.amplitude, sigma=sim_cfg.sigma, omega=sim_cfg.omega,
                                    decay=sim_cfg.decay, dt=sim_cfg.dt, comm=comm)
    if isinstance(sim_cfg, GyrokineticTurbulenceConfig):  # before its base class GyrokineticConfig
        return TurbulentGyrokineticMock5D(sim_cfg.n_r, sim_cfg.n_theta, sim_cfg.n_phi, sim_cfg.n_vpar, sim_cfg.n_mu,
                                          comm=comm, noise=sim_cfg.noise, dt=sim_cfg.dt, seed=sim_cfg.seed,
                                          m_max=sim_cfg.m_max, n_max=sim_cfg.n_max,
                                          spectrum_alpha=sim_cfg.spectrum_alpha, beam_density=sim_cfg.beam_density)
    if isinstance(sim_cfg, GyrokineticConfig):
        return GyrokineticMock5D(sim_cfg.n_r, sim_cfg.n_theta, sim_cfg.n_phi, sim_cfg.n_vpar, sim_cfg.n_mu, comm=comm,
                                 noise=sim_cfg.noise, dt=sim_cfg.dt, seed=sim_cfg.seed)
    raise TypeError(f"unknown simulation config {type(sim_cfg).__name__}")


def run_simulation(sim, producer, *, steps, plotgap, progress=None, events=()):
    """Advance ``sim`` for ``steps`` time steps, writing every ``plotgap``-th state (collective).

    Output step ``i`` holds the state after ``i * plotgap`` time steps (step 0 is the initial
    state, as in the ADIOS2 Gray-Scott tutorial). ``events`` (:mod:`.events`) starting at output
    step ``i`` are applied before the time steps that lead to it, so step ``i`` is the first that
    shows them.

    Returns
    -------
    stats : dict
        ``steps_written``, ``compute_s`` (simulation only) and ``io_s`` (time in ``write``).
    """
    compute = io = 0.0
    n_out = steps // plotgap + 1
    for i in range(n_out):
        apply_state_events(sim, events, i)  # before the advance, so output step i already shows it
        if i:
            t = time.perf_counter()
            sim.advance(plotgap)
            compute += time.perf_counter() - t
        t = time.perf_counter()
        producer.write(i, written_fields(sim, events, i))
        io += time.perf_counter() - t
        if progress is not None:
            progress(i)
    return {"steps_written": producer.steps_written, "compute_s": compute, "io_s": io}


def gather_field(comm, block, start, count, shape, root=0):
    """Assemble a global field on ``root`` from every rank's block (collective; for checks and plots).

    Returns
    -------
    field : ndarray of ``shape`` (float32) on ``root``, None elsewhere.
    """
    from mpi4py import MPI

    block = np.ascontiguousarray(block, dtype=np.float32)
    sel = np.array(list(start) + list(count), dtype=np.int64)
    sels = np.zeros((comm.Get_size(), sel.size), dtype=np.int64) if comm.Get_rank() == root else None
    comm.Gather(sel, sels, root=root)
    sizes = np.zeros(comm.Get_size(), dtype=np.int64)
    comm.Gather(np.array([block.size], dtype=np.int64), sizes, root=root)
    if comm.Get_rank() != root:
        comm.Gatherv(block.ravel(), None, root=root)
        return None
    recv = np.empty(int(sizes.sum()), dtype=np.float32)
    displs = np.concatenate([[0], np.cumsum(sizes)[:-1]])
    comm.Gatherv(block.ravel(), [recv, sizes, displs, MPI.FLOAT], root=root)
    out = np.zeros(shape, dtype=np.float32)
    nd = len(shape)
    for r in range(comm.Get_size()):
        st, ct = sels[r, :nd], sels[r, nd:]
        out[tuple(slice(s, s + c) for s, c in zip(st, ct))] = recv[displs[r]:displs[r] + sizes[r]].reshape(ct)
    return out
