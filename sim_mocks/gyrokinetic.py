"""A Gysela-like 5-D gyrokinetic distribution function ``f(r, theta, phi, v_par, mu)``.

Context
-------
Full-f gyrokinetic codes such as Gysela (Grandgirard et al., "A 5D gyrokinetic full-f global
semi-Lagrangian code for flux-driven ion turbulence simulations", Comput. Phys. Commun. 207,
2016) evolve the ion guiding-centre distribution on a grid in the radius ``r``, poloidal and
toroidal angles ``(theta, phi)``, parallel velocity ``v_par`` and magnetic moment ``mu``. Their
output is dominated by ``f``, and the usual way to reduce it (as for XGC) is to treat the
velocity-space slice ``f(x, ., .)`` at each spatial point ``x`` as one sample and learn a basis or
an autoencoder over those samples, judging the result by the fluid moments (density, flow,
energy) computed from the reconstruction. Examples: del-Castillo-Negrete, Hatch and Terry,
"Analysis and compression of six-dimensional gyrokinetic datasets using higher order singular
value decomposition", J. Comput. Phys. 231 (2012) (velocity-space singular vectors decay fast);
Churchill, Chang and Ku, "Finding structure in large data sets of particle distribution functions
using unsupervised machine learning", IEEE Trans. Plasma Sci. 48 (2020) (XGC1 velocity-space
samples); and the XGC reduction work of the ORNL/UF group with moment (quantity-of-interest)
preservation, e.g. Banerjee et al. (HiPC 2022) and Lee et al. (Appl. Sci. 2022), which train PCA
and autoencoders on per-node velocity-space slices.

This mock is *not* a gyrokinetic solver: ``f`` is a closed-form function of phase space and time
(no Vlasov step, no field solve), built to have the structure such data has.

Model (normalised units: lengths to the minor radius ``a``, velocities to the reference thermal
speed ``v_th = sqrt(T_ref / m)``, ``m = 1``)
-----------------------------------------------------------------------------------------------
Spatial grid: ``rho_i = rho_min + i (rho_max - rho_min) / (n_r - 1)`` (``r = rho a``),
``theta_j = 2 pi j / n_theta``, ``phi_k = 2 pi k / n_phi`` (periodic in both angles).

Magnetic field (large-aspect-ratio circular tokamak)::

    B(r, theta) = B0 / (1 + eps(r) cos theta),   eps(r) = inverse_aspect * rho

Radial profiles (Gysela's standard ``tanh`` gradient profiles, normalised so that ``n0 = T0 = 1``
far inside ``rho_peak``)::

    n0(rho) = exp(-kappa_n dr (1 + tanh((rho - rho_peak) / dr)))
    T0(rho) = exp(-kappa_T dr (1 + tanh((rho - rho_peak) / dr)))

so ``-d ln T0 / d rho = kappa_T`` at ``rho_peak``: the ion temperature gradient that drives ITG
modes.

Perturbations: each :class:`ITGMode` ``k`` contributes a drifting wave
``psi_k = m_k theta - n_k phi - omega_k t + phase_k`` with a Gaussian radial envelope
``g_k(rho) = exp(-((rho - rho_k) / w_k)^2)``, a ballooning envelope
``b(theta) = (1 + ballooning cos theta) / (1 + ballooning)`` (larger on the outboard side), and an
amplitude that grows at ``gamma_k`` from ``a0_k`` and saturates at 1 (the Landau equation
``dA/dt = gamma A (1 - A^2)``)::

    A_k(t) = 1 / sqrt(1 + (a0_k^-2 - 1) exp(-2 gamma_k t))

The fluid fields are then::

    n = n0 (1 + delta_n sum_k A_k g_k b cos(psi_k))
    T = T0 (1 + delta_T sum_k A_k g_k b cos(psi_k + phase_T))
    u = delta_u sum_k A_k g_k b sin(psi_k)            (parallel flow, units of v_th)

and ``f`` is the shifted, heated Maxwellian that carries exactly these moments (with the
gyrokinetic Jacobian ``2 pi B``, see :func:`moments`)::

    f = n (2 pi T)^(-3/2) exp(-((v_par - u)^2 / 2 + mu B) / T) * (1 + noise * N(0, 1))

The multiplicative noise is seeded by ``(seed, time_step, global r index, global theta index)``,
so the global ``f`` does not depend on the decomposition.

Velocity grid: ``v_par`` uniform on ``[-vpar_max, vpar_max]`` and ``mu`` uniform on
``[0, mu_max]`` (both end points included), integrated with 4th-order Gregory weights
(:func:`uniform_weights`); the truncation of the Maxwellian tails at ``vpar_max`` and ``mu_max``
is the main quadrature error (``~exp(-mu_max B / T)`` relative, ``2e-3`` for the defaults at
``T = 1.1``, ``B = 0.83``).
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .decomposition import balanced_split


# ----------------------------------------------------------------------------- velocity space
def uniform_weights(n, h):
    """Quadrature weights on ``n`` uniformly spaced nodes (end points included).

    4th-order Gregory rule ``h [3/8, 7/6, 23/24, 1, ..., 1, 23/24, 7/6, 3/8]`` when ``n >= 6``,
    the trapezoidal rule otherwise.

    Parameters
    ----------
    n : int
        Number of nodes, ``>= 2``.
    h : float
        Node spacing.

    Returns
    -------
    w : ndarray of shape (n,), float64
        ``w.sum() == (n - 1) * h``.
    """
    if n < 2:
        raise ValueError(f"a quadrature needs at least 2 nodes, got {n}")
    w = np.ones(n)
    if n >= 6:
        end = np.array([3 / 8, 7 / 6, 23 / 24])
        w[:3] = end
        w[-3:] = end[::-1]
    else:
        w[0] = w[-1] = 0.5
    return w * h


@dataclass(frozen=True)
class VelocityGrid:
    """Uniform ``(v_par, mu)`` grid with quadrature weights.

    Parameters
    ----------
    n_vpar, n_mu : int
        Nodes along ``v_par`` and ``mu``.
    vpar_max : float
        ``v_par`` spans ``[-vpar_max, vpar_max]`` (units of ``v_th``).
    mu_max : float
        ``mu`` spans ``[0, mu_max]`` (units of ``T_ref / B0``).

    Attributes
    ----------
    vpar : ndarray of shape (n_vpar,)
    mu : ndarray of shape (n_mu,)
    w_vpar : ndarray of shape (n_vpar,)
    w_mu : ndarray of shape (n_mu,)
        Quadrature weights (:func:`uniform_weights`).
    """

    n_vpar: int
    n_mu: int
    vpar_max: float = 4.0
    mu_max: float = 8.0

    def __post_init__(self):
        if self.n_vpar < 2 or self.n_mu < 2:
            raise ValueError(f"velocity grid needs >= 2 nodes per axis, got ({self.n_vpar}, {self.n_mu})")
        if not (self.vpar_max > 0 and self.mu_max > 0):
            raise ValueError(f"vpar_max and mu_max must be positive, got {self.vpar_max}, {self.mu_max}")

    @property
    def vpar(self):
        return np.linspace(-self.vpar_max, self.vpar_max, self.n_vpar)

    @property
    def mu(self):
        return np.linspace(0.0, self.mu_max, self.n_mu)

    @property
    def w_vpar(self):
        return uniform_weights(self.n_vpar, 2.0 * self.vpar_max / (self.n_vpar - 1))

    @property
    def w_mu(self):
        return uniform_weights(self.n_mu, self.mu_max / (self.n_mu - 1))


def maxwellian(n, u, T, B, grid):
    """Shifted Maxwellian in ``(v_par, mu)`` at each spatial point.

    ``f = n (2 pi T)^(-3/2) exp(-((v_par - u)^2 / 2 + mu B) / T)``, normalised so that
    ``int f 2 pi B dmu dv_par = n`` over the infinite domain.

    Parameters
    ----------
    n, u, T, B : ndarray of the same (broadcastable) spatial shape S
        Density, parallel flow (``v_th``), temperature (``T_ref``), magnetic field (``B0``).
    grid : VelocityGrid

    Returns
    -------
    f : ndarray of shape S + (n_vpar, n_mu), float64
    """
    n, u, T, B = (np.asarray(a, dtype=np.float64)[..., None, None] for a in np.broadcast_arrays(n, u, T, B))
    v = grid.vpar[:, None]
    mu = grid.mu[None, :]
    return n * (2.0 * np.pi * T) ** -1.5 * np.exp(-(0.5 * (v - u) ** 2 + mu * B) / T)


def moments(f, B, grid):
    """Density, parallel flow and energy of ``f`` at each spatial point.

    With the gyrokinetic Jacobian ``J = 2 pi B`` (``d^3v = 2 pi B dmu dv_par``)::

        density        n   = int f J dmu dv_par
        parallel_flow  n u = int v_par f J dmu dv_par
        energy         W   = int (v_par^2 / 2 + mu B) f J dmu dv_par

    For the Maxwellian of :func:`maxwellian`: ``n``, ``n u`` and ``n (3 T / 2 + u^2 / 2)``.

    Parameters
    ----------
    f : ndarray of shape S + (n_vpar, n_mu)
        Distribution function on ``grid`` (any float dtype; integrated in float64).
    B : ndarray broadcastable to S
        Magnetic field at the spatial points.
    grid : VelocityGrid

    Returns
    -------
    moments : dict of str to ndarray of shape S, float64
        ``density``, ``parallel_flow`` (``n u``) and ``energy`` (``W``).
    """
    f = np.asarray(f)
    if f.shape[-2:] != (grid.n_vpar, grid.n_mu):
        raise ValueError(f"f has velocity shape {f.shape[-2:]}, the grid ({grid.n_vpar}, {grid.n_mu})")
    S = f.shape[:-2]
    B = np.broadcast_to(np.asarray(B, dtype=np.float64), S)
    f = f.astype(np.float64, copy=False).reshape(-1, grid.n_vpar, grid.n_mu)
    v, mu, wv, wm = grid.vpar, grid.mu, grid.w_vpar, grid.w_mu
    jac = 2.0 * np.pi * B.reshape(-1)
    fw = f @ wm                       # (P, n_vpar): int f dmu
    fmu = f @ (wm * mu)               # (P, n_vpar): int mu f dmu
    dens = jac * (fw @ wv)
    flow = jac * (fw @ (wv * v))
    energy = jac * (fw @ (wv * 0.5 * v ** 2) + B.reshape(-1) * (fmu @ wv))
    return {"density": dens.reshape(S), "parallel_flow": flow.reshape(S), "energy": energy.reshape(S)}


def fluid_from_moments(mom):
    """Density, parallel flow and temperature from :func:`moments`.

    ``u = (n u) / n`` and ``T = (2 / 3) (W / n - u^2 / 2)`` (exact for a shifted Maxwellian).

    Parameters
    ----------
    mom : dict of str to ndarray
        ``density``, ``parallel_flow``, ``energy``.

    Returns
    -------
    fluid : dict of str to ndarray
        ``n``, ``u`` (``v_th``), ``T`` (``T_ref``), same shapes as the moments.
    """
    n = mom["density"]
    u = mom["parallel_flow"] / n
    return {"n": n, "u": u, "T": (2.0 / 3.0) * (mom["energy"] / n - 0.5 * u ** 2)}


# ----------------------------------------------------------------------------- modes
@dataclass(frozen=True)
class ITGMode:
    """One drifting ITG-like mode (see the module docstring).

    Parameters
    ----------
    m, n : int
        Poloidal and toroidal mode numbers.
    rho_c, width : float
        Centre and width of the Gaussian radial envelope (units of ``a``).
    omega : float
        Real frequency (``v_th / a``); positive drifts towards increasing ``theta``.
    gamma : float
        Linear growth rate (``v_th / a``).
    a0 : float
        Initial amplitude relative to saturation, in ``(0, 1]``.
    phase : float
        Phase offset (rad).
    """

    m: int
    n: int
    rho_c: float
    width: float
    omega: float
    gamma: float
    a0: float = 0.02
    phase: float = 0.0

    def amplitude(self, t):
        """Saturating amplitude ``A(t) = 1 / sqrt(1 + (a0^-2 - 1) exp(-2 gamma t))``, in ``(0, 1]``."""
        return 1.0 / math.sqrt(1.0 + (self.a0 ** -2 - 1.0) * math.exp(-2.0 * self.gamma * t))


DEFAULT_MODES = (
    ITGMode(m=3, n=1, rho_c=0.45, width=0.15, omega=0.30, gamma=0.10, a0=0.02, phase=0.0),
    ITGMode(m=5, n=2, rho_c=0.55, width=0.12, omega=0.45, gamma=0.08, a0=0.02, phase=1.0),
    ITGMode(m=7, n=3, rho_c=0.60, width=0.10, omega=0.60, gamma=0.06, a0=0.02, phase=2.0),
)


def block_B(n_r, n_theta, start, count, *, B0=1.0, inverse_aspect=0.2, rho_min=0.1, rho_max=0.9):
    """Magnetic field ``B0 / (1 + eps(r) cos theta)`` at the spatial points of one block.

    The one formula the mock and a decoder share (the gyrokinetic Jacobian ``2 pi B`` of the
    moments, :func:`stagelearn.analytics.qoi_policy.block_moment_set`).

    Parameters
    ----------
    n_r, n_theta : int
        Global radial and poloidal grid sizes.
    start, count : sequence of int
        The block's selection; its first three entries are ``(r, theta, phi)``.
    B0, inverse_aspect, rho_min, rho_max : float
        As :class:`GyrokineticMock5D` (the defaults are the mock's).

    Returns
    -------
    B : ndarray of shape count[:3], float64
    """
    i = np.arange(start[0], start[0] + count[0])
    j = np.arange(start[1], start[1] + count[1])
    rho = (rho_min + (rho_max - rho_min) * i / (n_r - 1))[:, None, None]
    theta = (2.0 * np.pi * j / n_theta)[None, :, None]
    return np.broadcast_to(B0 / (1.0 + inverse_aspect * rho * np.cos(theta)), tuple(count[:3])).copy()


# ----------------------------------------------------------------------------- decomposition
class PhaseSpaceDomain:
    """This rank's box of the 5-D grid: split over ``(r, theta, phi)``, whole velocity space.

    Parameters
    ----------
    shape : tuple of 5 int
        ``(n_r, n_theta, n_phi, n_vpar, n_mu)``.
    comm : mpi4py.MPI.Comm
        Simulation ranks (collective construction).
    dims : tuple of 3 int, optional
        Process grid over ``(r, theta, phi)``; default ``MPI.Compute_dims(comm.size, 3)``.

    Attributes
    ----------
    cart : mpi4py.MPI.Cartcomm
        Periodic in ``theta`` and ``phi``, not in ``r``.
    dims : tuple of 3 int
    shape, start, count : tuple of 5 int
        Global shape and this rank's ADIOS2 selection (velocity axes whole).
    """

    def __init__(self, shape, comm, *, dims=None):
        from mpi4py import MPI

        self.shape = tuple(int(s) for s in shape)
        if len(self.shape) != 5:
            raise ValueError(f"phase-space shape must have 5 axes, got {self.shape}")
        spatial = self.shape[:3]
        self.dims = tuple(int(d) for d in dims) if dims is not None else tuple(MPI.Compute_dims(comm.Get_size(), 3))
        if len(self.dims) != 3 or int(np.prod(self.dims)) != comm.Get_size():
            raise ValueError(f"process grid {self.dims} does not have {comm.Get_size()} ranks over 3 axes")
        if any(d > s for d, s in zip(self.dims, spatial)):
            raise ValueError(f"process grid {self.dims} is finer than the spatial grid {spatial}")
        self.cart = comm.Create_cart(self.dims, periods=[False, True, True], reorder=False)
        coords = self.cart.Get_coords(self.cart.Get_rank())
        se = [balanced_split(n, d, c) for n, d, c in zip(spatial, self.dims, coords)]
        self.start = tuple(s for s, _ in se) + (0, 0)
        self.count = tuple(c for _, c in se) + self.shape[3:]

    def global_coords(self):
        """Global indices of the owned points, one broadcastable (sparse) array per axis (5 arrays)."""
        return np.meshgrid(*[np.arange(s, s + c) for s, c in zip(self.start, self.count)], indexing="ij", sparse=True)


# ----------------------------------------------------------------------------- the mock
class GyrokineticMock5D:
    """Gysela-like ``f(r, theta, phi, v_par, mu)`` on a decomposition of ``(r, theta, phi)``.

    Parameters
    ----------
    n_r, n_theta, n_phi : int
        Spatial grid (``n_r >= 2``).
    n_vpar, n_mu : int
        Velocity grid (``>= 2`` each).
    comm : mpi4py.MPI.Comm
        Simulation ranks (construction is collective; :meth:`advance` needs no communication).
    dims : tuple of 3 int, optional
        Process grid over ``(r, theta, phi)``; default ``MPI.Compute_dims(comm.size, 3)``.
    vpar_max, mu_max : float, default=4.0, 8.0
        Velocity box (:class:`VelocityGrid`).
    B0 : float, default=1.0
        Magnetic field on the magnetic axis.
    inverse_aspect : float, default=0.2
        ``a / R0``; ``eps(r) = inverse_aspect * rho``.
    rho_min, rho_max : float, default=0.1, 0.9
        Radial extent (units of ``a``).
    kappa_n, kappa_T : float, default=0.5, 1.5
        Peak logarithmic gradients of ``n0`` and ``T0``.
    rho_peak, delta_r : float, default=0.5, 0.2
        Location and width of the gradient region.
    modes : sequence of ITGMode, default=DEFAULT_MODES
        ``()`` gives the unperturbed background.
    delta_n, delta_T, delta_u : float, default=0.05, 0.08, 0.1
        Relative density, relative temperature and absolute parallel-flow (``v_th``) amplitude of a
        saturated mode.
    phase_T : float, default=pi/4
        Phase lead of ``delta T`` over ``delta n``.
    ballooning : float, default=0.3
        Poloidal envelope ``(1 + ballooning cos theta) / (1 + ballooning)``.
    noise : float, default=1e-4
        Relative (multiplicative) Gaussian noise on ``f``; 0 disables it.
    dt : float, default=1.0
        Time per step (``a / v_th``).
    seed : int, default=0

    Attributes
    ----------
    domain : PhaseSpaceDomain
        ``domain.shape`` / ``start`` / ``count``: the 5-D ADIOS2 selection.
    shape, start, count : tuple of 5 int
        Same as ``domain``'s.
    grid : VelocityGrid
    rho, theta, phi : ndarray
        Local coordinates, broadcastable to the local spatial shape ``count[:3]``.
    B : ndarray of shape count[:3]
        Magnetic field at the local points.
    time : float
    time_step : int
    """

    variables = ("f",)

    def __init__(self, n_r, n_theta, n_phi, n_vpar, n_mu, *, comm, dims=None, vpar_max=4.0, mu_max=8.0, B0=1.0,
                 inverse_aspect=0.2, rho_min=0.1, rho_max=0.9, kappa_n=0.5, kappa_T=1.5, rho_peak=0.5, delta_r=0.2,
                 modes=DEFAULT_MODES, delta_n=0.05, delta_T=0.08, delta_u=0.1, phase_T=math.pi / 4, ballooning=0.3,
                 noise=1e-4, dt=1.0, seed=0):
        if n_r < 2:
            raise ValueError(f"n_r must be >= 2, got {n_r}")
        self.grid = VelocityGrid(int(n_vpar), int(n_mu), float(vpar_max), float(mu_max))
        self.domain = PhaseSpaceDomain((n_r, n_theta, n_phi, n_vpar, n_mu), comm, dims=dims)
        self.shape, self.start, self.count = self.domain.shape, self.domain.start, self.domain.count
        self.B0, self.inverse_aspect = float(B0), float(inverse_aspect)
        self.kappa_n, self.kappa_T, self.rho_peak, self.delta_r = kappa_n, kappa_T, rho_peak, delta_r
        self.modes = tuple(modes)
        self.delta_n, self.delta_T, self.delta_u, self.phase_T = delta_n, delta_T, delta_u, phase_T
        self.ballooning, self.noise, self.dt, self.seed = ballooning, float(noise), float(dt), int(seed)
        i, j, k = (np.arange(s, s + c) for s, c in zip(self.start[:3], self.count[:3]))
        self._index = (i, j)
        self.rho = (rho_min + (rho_max - rho_min) * i / (n_r - 1))[:, None, None]
        self.theta = (2.0 * np.pi * j / n_theta)[None, :, None]
        self.phi = (2.0 * np.pi * k / n_phi)[None, None, :]
        self.B = block_B(n_r, n_theta, self.start, self.count, B0=self.B0, inverse_aspect=self.inverse_aspect,
                         rho_min=rho_min, rho_max=rho_max)
        self.time = 0.0
        self.time_step = 0
        self._cache = None

    # ------------------------------------------------------------------ profiles and fields
    def _profile(self, kappa):
        s = 1.0 + np.tanh((self.rho - self.rho_peak) / self.delta_r)
        return np.exp(-kappa * self.delta_r * s)

    def background(self):
        """Equilibrium profiles ``n0(rho)`` and ``T0(rho)``, each ndarray of shape (count[0], 1, 1)."""
        return self._profile(self.kappa_n), self._profile(self.kappa_T)

    def perturbations(self, t=None):
        """Imposed relative ``delta n``, relative ``delta T`` and absolute ``u`` at time ``t``.

        Parameters
        ----------
        t : float, optional
            Default :attr:`time`.

        Returns
        -------
        dn, dT, u : ndarray of shape count[:3], float64
        """
        t = self.time if t is None else float(t)
        S = self.count[:3]
        dn, dT, du = np.zeros(S), np.zeros(S), np.zeros(S)
        bal = (1.0 + self.ballooning * np.cos(self.theta)) / (1.0 + self.ballooning)
        for mode in self.modes:
            env = mode.amplitude(t) * np.exp(-(((self.rho - mode.rho_c) / mode.width) ** 2)) * bal
            psi = mode.m * self.theta - mode.n * self.phi - mode.omega * t + mode.phase
            dn += env * np.cos(psi)
            dT += env * np.cos(psi + self.phase_T)
            du += env * np.sin(psi)
        return self.delta_n * dn, self.delta_T * dT, self.delta_u * du

    def fluid_fields(self, t=None):
        """The imposed density, parallel flow and temperature at each local point.

        Returns
        -------
        fields : dict of str to ndarray of shape count[:3], float64
            ``n``, ``u`` (``v_th``), ``T`` (``T_ref``) and ``B`` (``B0``).
        """
        n0, T0 = self.background()
        dn, dT, u = self.perturbations(t)
        return {"n": n0 * (1.0 + dn), "u": u, "T": T0 * (1.0 + dT), "B": self.B}

    def _compute_f(self):
        fl = self.fluid_fields()
        f = maxwellian(fl["n"], fl["u"], fl["T"], fl["B"], self.grid)
        if self.noise:
            i_glob, j_glob = self._index
            k0, nk = self.start[2], self.count[2]
            n_phi = self.shape[2]
            for a, i in enumerate(i_glob):
                for b, j in enumerate(j_glob):
                    rng = np.random.default_rng([self.seed, self.time_step, int(i), int(j)])
                    line = rng.standard_normal((n_phi,) + self.shape[3:])[k0:k0 + nk]
                    f[a, b] *= 1.0 + self.noise * line
        return f

    # ------------------------------------------------------------------ simulation API
    def advance(self, n_steps=1):
        """Advance ``n_steps`` time steps of ``dt`` (local: ``f`` is closed-form in time)."""
        self.time_step += int(n_steps)
        self.time = self.time_step * self.dt
        self._cache = None

    def fields(self):
        """This rank's block of ``f``.

        Returns
        -------
        fields : dict
            ``{"f": ndarray of shape count (local_r, local_theta, local_phi, n_vpar, n_mu), float64}``
            (cached per time step; copy before modifying it).
        """
        if self._cache is None:
            self._cache = self._compute_f()
        return {"f": self._cache}

    def moments(self, f=None):
        """:func:`moments` of ``f`` (default: the current block) with this rank's ``B`` and grid."""
        return moments(self.fields()["f"] if f is None else f, self.B, self.grid)

    @staticmethod
    def velocity_samples(block):
        """One sample per spatial point: ``block`` reshaped to ``(n_points, n_vpar * n_mu)`` (a view when possible)."""
        block = np.asarray(block)
        return block.reshape(-1, block.shape[-2] * block.shape[-1])
