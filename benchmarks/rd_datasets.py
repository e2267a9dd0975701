"""Frame streams for ``benchmarks/rate_distortion.py``: five simulations, frames in time order (float32).

Each function returns ``(frames, description)``: a list of float32 arrays of one shape, and a line
saying what was simulated. ``quick`` gives small grids for a smoke run.

- ``gray_scott``: :class:`stagelearn.sim_mocks.GrayScott3D` with ``examples/gray_scott.yaml``'s
  settings (64^3, F 0.01, k 0.05, Du 0.2, Dv 0.1, dt 2, noise 1e-7), variable V, one frame every
  ``plotgap = 10`` steps from step 1000 on (the first output steps are the seed cube relaxing).
- ``heat2d``: :class:`stagelearn.sim_mocks.AdvectionDiffusion2D` with ``examples/heat2d.yaml``'s
  settings (256^2), one frame every 10 steps from step 500.
- ``gyrokinetic``: :class:`stagelearn.sim_mocks.GyrokineticMock5D`, the configuration defaults
  (16 x 32 x 8 x 32 x 16, noise 1e-4, plotgap 2), from step 20.
- ``allen_cahn``: ``examples/pde_hook``'s py-pde Allen-Cahn run (128^2, dt 0.02, t_end 40, 50
  outputs), from the first output after the initial noise; without py-pde, the same equation
  (5-point Laplacian, periodic, explicit Euler) in numpy, and the description says so.
- ``turbulence2d``: decaying 2-D Navier-Stokes turbulence (vorticity, 256^2, pseudo-spectral, 2/3
  dealiasing, RK2 with an integrating factor for viscosity), random initial field peaked at k = 8,
  one frame every 0.03 time units after a spin-up of 2 (17 % of the norm changes per frame).
"""

from __future__ import annotations

import numpy as np
from mpi4py import MPI

from stagelearn.sim_mocks import AdvectionDiffusion2D, GrayScott3D, GyrokineticMock5D

try:  # optional: the examples extra
    import pde
except ImportError:  # pragma: no cover - depends on the environment
    pde = None


def _sample(sim, variable, n_frames, spin_up, gap):
    """``n_frames`` float32 copies of ``variable``, the first after ``spin_up`` steps, then every ``gap`` steps."""
    sim.advance(spin_up)
    frames = []
    for i in range(n_frames):
        if i:
            sim.advance(gap)
        frames.append(sim.fields()[variable].astype(np.float32))
    return frames


def gray_scott(n_frames, quick=False):
    L = 32 if quick else 64
    gs = GrayScott3D(L, F=0.01, k=0.05, Du=0.2, Dv=0.1, dt=2.0, noise=1e-7, comm=MPI.COMM_SELF, seed=0)
    return _sample(gs, "V", n_frames, 1000, 10), f"Gray-Scott 3-D {L}^3 (V), steps 1000 + 10 i"


def heat2d(n_frames, quick=False):
    n = 128 if quick else 256
    sim = AdvectionDiffusion2D(n, n, kappa=0.1, velocity=(0.3, 0.1), amplitude=1.0, sigma=6.0, omega=0.01,
                               decay=0.002, dt=1.0, comm=MPI.COMM_SELF)
    return _sample(sim, "T", n_frames, 500, 10), f"heat2d {n}^2, steps 500 + 10 i"


def gyrokinetic(n_frames, quick=False):
    grid = (8, 16, 4) if quick else (16, 32, 8)
    sim = GyrokineticMock5D(*grid, 32, 16, comm=MPI.COMM_SELF, noise=1e-4, seed=0)
    return _sample(sim, "f", n_frames, 20, 2), f"gyrokinetic 5-D {'x'.join(map(str, grid + (32, 16)))}, steps 20 + 2 i"


def allen_cahn(n_frames, quick=False):
    n = 64 if quick else 128
    outputs, t_end, dt = 50, 40.0, 0.02
    rng = np.random.default_rng(0)
    if pde is not None:
        grid = pde.CartesianGrid([[0, n / 2], [0, n / 2]], [n, n], periodic=True)
        state = pde.ScalarField.random_uniform(grid, -0.1, 0.1, rng=rng)
        storage = pde.MemoryStorage()
        pde.AllenCahnPDE().solve(state, t_range=t_end, dt=dt, solver="euler", backend="numpy",
                                 tracker=[storage.tracker(t_end / outputs)])
        data = [np.asarray(f.data, dtype=np.float32) for f in storage]
        how = f"py-pde {pde.__version__} AllenCahnPDE"
    else:
        c = rng.uniform(-0.1, 0.1, (n, n))
        h2 = 0.5 ** 2  # cell size of [0, n/2] over n cells
        data = [c.astype(np.float32)]
        per = int(round(t_end / outputs / dt))
        for _ in range(outputs):
            for _ in range(per):
                lap = (np.roll(c, 1, 0) + np.roll(c, -1, 0) + np.roll(c, 1, 1) + np.roll(c, -1, 1) - 4 * c) / h2
                c = c + dt * (lap - c ** 3 + c)
            data.append(c.astype(np.float32))
        how = "Allen-Cahn in numpy (py-pde not installed; same equation and scheme)"
    frames = data[1:1 + n_frames]
    return frames, f"{how} {n}^2, outputs 1..{len(frames)} of {outputs} over t = {t_end:g}"


def turbulence2d(n_frames, quick=False, seed=0):
    n = 128 if quick else 256
    k1 = np.fft.fftfreq(n, 1.0 / n)
    kr = np.fft.rfftfreq(n, 1.0 / n)
    kx, ky = np.meshgrid(k1, kr, indexing="ij")
    k2 = kx ** 2 + ky ** 2
    k2i = np.where(k2 > 0, 1.0 / np.where(k2 > 0, k2, 1.0), 0.0)
    dealias = (np.abs(kx) < n / 3) & (np.abs(ky) < n / 3)
    rng = np.random.default_rng(seed)
    kk = np.sqrt(k2)
    amp = kk ** 2 * np.exp(-(kk / 8.0) ** 2)  # vorticity spectrum ~ k^2 E(k), E ~ k^4 exp
    w_hat = amp * np.exp(2j * np.pi * rng.random(k2.shape))
    w_hat[0, 0] = 0.0
    w = np.fft.irfft2(w_hat, s=(n, n))
    w_hat = np.fft.rfft2(w / w.std() * 5.0)
    nu = 2e-4 if not quick else 5e-4

    def rhs(wh):
        psi = wh * k2i
        u = np.fft.irfft2(1j * ky * psi, s=(n, n))
        v = np.fft.irfft2(-1j * kx * psi, s=(n, n))
        wx = np.fft.irfft2(1j * kx * wh, s=(n, n))
        wy = np.fft.irfft2(1j * ky * wh, s=(n, n))
        return -np.fft.rfft2(u * wx + v * wy) * dealias

    dt = 0.25 * (2 * np.pi / n) / 5.0
    decay = np.exp(-nu * k2 * dt)

    def advance(wh, t):
        for _ in range(int(round(t / dt))):
            a = rhs(wh)
            w1 = (wh + dt * a) * decay
            wh = wh * decay + 0.5 * dt * (a * decay + rhs(w1))
        return wh

    w_hat = advance(w_hat, 2.0)
    frames = []
    for i in range(n_frames):
        if i:
            w_hat = advance(w_hat, 0.03)
        frames.append(np.fft.irfft2(w_hat, s=(n, n)).astype(np.float32))
    return frames, f"decaying 2-D turbulence (vorticity) {n}^2, nu {nu:g}, t = 2 + 0.03 i"


DATASETS = {"gray_scott": gray_scott, "heat2d": heat2d, "gyrokinetic": gyrokinetic, "allen_cahn": allen_cahn,
            "turbulence2d": turbulence2d}
