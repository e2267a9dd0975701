"""3D Gray-Scott reaction-diffusion, as in the ADIOS2 tutorial (ADIOS2-Examples ``gray-scott``).

Model (explicit Euler, 7-point Laplacian divided by 6, periodic box)::

    du/dt = Du * lap(u) - u v^2 + F (1 - u) + noise * uniform(-1, 1)
    dv/dt = Dv * lap(v) + u v^2 - (F + k) v

Initial state: ``u = 1, v = 0`` except the cube ``[L/2 - 6, L/2 + 6)^3`` where
``u = 0.25, v = 0.33``. Parameter names, meaning and defaults follow the tutorial's
``settings-files.json`` (``L 64, Du 0.2, Dv 0.1, F 0.01, k 0.05, dt 2.0, noise 1e-7``).
"""

from __future__ import annotations

import numpy as np

from .decomposition import CartesianDomain


class GrayScott3D:
    """Gray-Scott on a Cartesian decomposition of an ``L x L x L`` periodic grid.

    Parameters
    ----------
    L : int
        Cells per side of the global grid.
    F, k, Du, Dv, dt : float
        Feed rate, kill rate, diffusion coefficients of U and V, time step (tutorial units).
    noise : float
        Amplitude of the uniform noise added to ``du/dt`` (tutorial ``noise``).
    comm : mpi4py.MPI.Comm
        Simulation ranks (construction and :meth:`advance` are collective).
    seed : int, default=0
        Base seed of the noise; rank ``r`` uses ``seed + r``.

    Attributes
    ----------
    domain : CartesianDomain
        ``domain.start`` / ``domain.count`` are this rank's ADIOS2 selection.
    shape : tuple of int
        Global shape ``(L, L, L)``.
    """

    variables = ("U", "V")

    def __init__(self, L, *, F, k, Du, Dv, dt, noise, comm, seed=0):
        self.L, self.F, self.k, self.Du, self.Dv, self.dt, self.noise = L, F, k, Du, Dv, dt, noise
        self.domain = CartesianDomain((L, L, L), comm, periodic=True)
        self.shape = self.domain.shape
        self.u = self.domain.allocate(1.0)
        self.v = self.domain.allocate(0.0)
        x, y, z = self.domain.global_coords()
        d = 6
        lo, hi = L // 2 - d, L // 2 + d  # the tutorial's seed cube [L/2 - 6, L/2 + 6)
        inside = (x >= lo) & (x < hi) & (y >= lo) & (y < hi) & (z >= lo) & (z < hi)
        self.domain.interior(self.u)[inside] = 0.25
        self.domain.interior(self.v)[inside] = 0.33
        self.rng = np.random.default_rng(seed + comm.Get_rank())
        self.time_step = 0

    @staticmethod
    def _laplacian(a):
        c = a[1:-1, 1:-1, 1:-1]
        return (a[:-2, 1:-1, 1:-1] + a[2:, 1:-1, 1:-1] + a[1:-1, :-2, 1:-1] + a[1:-1, 2:, 1:-1]
                + a[1:-1, 1:-1, :-2] + a[1:-1, 1:-1, 2:] - 6.0 * c) / 6.0

    def advance(self, n_steps=1):
        """Advance ``n_steps`` time steps (collective: halo exchange each step)."""
        for _ in range(n_steps):
            self.domain.exchange_halos(self.u)
            self.domain.exchange_halos(self.v)
            u = self.u[1:-1, 1:-1, 1:-1]
            v = self.v[1:-1, 1:-1, 1:-1]
            uvv = u * v * v
            du = self.Du * self._laplacian(self.u) - uvv + self.F * (1.0 - u)
            if self.noise:
                du += self.noise * self.rng.uniform(-1.0, 1.0, size=u.shape)
            dv = self.Dv * self._laplacian(self.v) + uvv - (self.F + self.k) * v
            u += du * self.dt
            v += dv * self.dt
            self.time_step += 1

    def fields(self):
        """This rank's owned block of each variable.

        Returns
        -------
        fields : dict of str to ndarray of shape domain.count, float64
            Views into the simulation state (copy before keeping them).
        """
        return {"U": self.domain.interior(self.u), "V": self.domain.interior(self.v)}
