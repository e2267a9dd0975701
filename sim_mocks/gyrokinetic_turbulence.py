"""A harder Gysela-like 5-D ``f``: broadband turbulence and non-Maxwellian velocity space.

:class:`~stagelearn.sim_mocks.gyrokinetic.GyrokineticMock5D` is three drifting modes on shifted
Maxwellians: its velocity slices span a very low-rank family (``n``, ``u``, ``T``), so a learned
basis of a few components reproduces it. This mock keeps the same grid, decomposition, magnetic
field, profiles, noise and API, and makes both halves harder (still closed form, not a solver).

Space and time: each fluctuating field (``delta n``, ``u``, ``delta T_par``, ``delta T_perp``, and
the amplitudes of the kinetic terms below) is a sum over a broadband spectrum of
``(m, n)`` modes, ``1 <= m <= m_max``, ``-n_max <= n <= n_max``, with a radial wave number
``k_r`` and a Gaussian radial envelope each, drawn once from ``seed``::

    X(rho, theta, phi, t) = A(t) sum_mn a_mn g_mn(rho) b(theta) s_mn(t) cos(m theta - n phi + k_r rho - omega_mn t + chi_mn)
    a_mn ~ (1 + (m / m0)^2 + (n / n0)^2)^(-alpha / 2)            (power-law spectrum, rms normalised)
    omega_mn = omega_star m + random dispersion,   s_mn(t) = 1 + 0.5 sin(nu_mn t + xi_mn)  (mode decorrelation)

``A(t)`` is the saturating growth of the first mock (``a0``, ``gamma``).

Velocity space, at each point (``x = (v_par - u) / sqrt(T_par)``, ``y = mu B / T_perp``)::

    f = n F_bi(u, T_par, T_perp) [1 + e3 He3(x) exp(-x^2 / 8) + e4 (1 - y) exp(-y / 4)]
        + n_res exp(-((v_par - v_res)^2 / (2 w_res^2)) - y)   (a resonant clump / hole near v_res)
        + n_beam F_bi(v_beam, T_beam, T_beam)                  (a fast, cold parallel beam)

with ``F_bi = (2 pi)^(-3/2) T_par^(-1/2) T_perp^(-1) exp(-(v_par - u)^2 / (2 T_par) - mu B / T_perp)``
(unit density with the Jacobian ``2 pi B``), ``e3``, ``e4``, ``n_res`` broadband fields bounded
by ``tanh`` so ``f`` stays positive, and ``n_beam`` a radial profile with its own fluctuation. The
moments (:func:`~stagelearn.sim_mocks.gyrokinetic.moments`) are no longer ``n``, ``n u``, ``3/2 n T``:
the kinetic terms carry energy, the clump and the beam carry density and flow.
"""

from __future__ import annotations

import math

import numpy as np

from .gyrokinetic import GyrokineticMock5D

#: The broadband fields (each with its own phases): relative density, parallel flow (``v_th``),
#: relative ``T_par`` and ``T_perp``, and the kinetic amplitudes.
FIELDS = ("dn", "u", "dT_par", "dT_perp", "e3", "e4", "res", "beam")


def _he3(x):
    return x ** 3 - 3.0 * x


def bi_maxwellian(n, u, T_par, T_perp, B, grid):
    """``n F_bi`` at each point (see the module docstring): arrays of shape S -> S + (n_vpar, n_mu)."""
    n, u, tp, tq, B = (np.asarray(a, dtype=np.float64)[..., None, None]
                       for a in np.broadcast_arrays(n, u, T_par, T_perp, B))
    v, mu = grid.vpar[:, None], grid.mu[None, :]
    return n * (2 * np.pi) ** -1.5 / (np.sqrt(tp) * tq) * np.exp(-0.5 * (v - u) ** 2 / tp - mu * B / tq)


class TurbulentGyrokineticMock5D(GyrokineticMock5D):
    """Broadband, non-Maxwellian Gysela-like ``f(r, theta, phi, v_par, mu)``.

    Parameters
    ----------
    n_r, n_theta, n_phi, n_vpar, n_mu, comm, dims, vpar_max, mu_max, B0, inverse_aspect, rho_min, rho_max,
    kappa_n, kappa_T, rho_peak, delta_r, ballooning, noise, dt, seed
        As :class:`~stagelearn.sim_mocks.gyrokinetic.GyrokineticMock5D`.
    m_max, n_max : int, default=16, 4
        Largest poloidal and toroidal mode numbers of the spectrum.
    spectrum_alpha : float, default=2.0
        Power-law exponent of the mode amplitudes.
    amplitudes : dict of str to float, optional
        Rms of each field of :data:`FIELDS` when saturated; defaults: ``dn`` 0.05, ``u`` 0.1, ``dT_par``
        0.08, ``dT_perp`` 0.06, ``e3`` 0.05, ``e4`` 0.05, ``res`` 0.01, ``beam`` 0.3 (relative fluctuation
        of the beam density). 0 switches a field off.
    beam_density : float, default=0.02
        Beam density relative to ``n0`` at the beam's radial peak (0: no beam).
    v_beam, T_beam : float, default=2.5, 0.15
    v_res, w_res : float, default=1.5, 0.3
        Centre and width (``v_th``) of the resonant structure.
    a0, gamma : float, default=0.05, 0.08
        Initial amplitude and growth rate of the turbulence envelope ``A(t)``.
    """

    def __init__(self, n_r, n_theta, n_phi, n_vpar, n_mu, *, comm, m_max=16, n_max=4, spectrum_alpha=2.0,
                 amplitudes=None, beam_density=0.02, v_beam=2.5, T_beam=0.15, v_res=1.5, w_res=0.3, a0=0.05,
                 gamma=0.08, **kw):
        kw.setdefault("modes", ())
        super().__init__(n_r, n_theta, n_phi, n_vpar, n_mu, comm=comm, **kw)
        self.amplitudes = {"dn": 0.05, "u": 0.1, "dT_par": 0.08, "dT_perp": 0.06, "e3": 0.05, "e4": 0.05,
                           "res": 0.01, "beam": 0.3}
        unknown = set(amplitudes or {}) - set(FIELDS)
        if unknown:
            raise ValueError(f"amplitudes: unknown field(s) {sorted(unknown)}; choose from {list(FIELDS)}")
        self.amplitudes.update(amplitudes or {})
        self.beam_density, self.v_beam, self.T_beam = float(beam_density), float(v_beam), float(T_beam)
        self.v_res, self.w_res, self.a0, self.gamma = float(v_res), float(w_res), float(a0), float(gamma)
        if m_max < 1 or n_max < 0:
            raise ValueError(f"m_max must be >= 1 and n_max >= 0, got {m_max}, {n_max}")
        rng = np.random.default_rng([self.seed, 16])
        m, n = np.meshgrid(np.arange(1, m_max + 1), np.arange(-n_max, n_max + 1), indexing="ij")
        self.m, self.n = m.ravel().astype(float), n.ravel().astype(float)
        n_modes = self.m.size
        amp = (1 + (self.m / 4.0) ** 2 + (self.n / 2.0) ** 2) ** (-spectrum_alpha / 2)
        self._spec = {}
        for name in FIELDS:  # every field: its own phases, radial structure and dispersion
            self._spec[name] = {
                "a": amp * rng.uniform(0.5, 1.5, n_modes), "chi": rng.uniform(0, 2 * np.pi, n_modes),
                "kr": rng.normal(0.0, 8.0, n_modes), "rc": rng.uniform(0.3, 0.75, n_modes),
                "w": rng.uniform(0.12, 0.3, n_modes), "omega": 0.05 * self.m + rng.normal(0, 0.05, n_modes),
                "nu": rng.uniform(0.02, 0.1, n_modes), "xi": rng.uniform(0, 2 * np.pi, n_modes)}
        self._norm = {name: self._rms_norm(name) for name in FIELDS}

    def envelope(self, t):
        """Saturating turbulence amplitude ``A(t)`` in ``(0, 1]``."""
        return 1.0 / math.sqrt(1.0 + (self.a0 ** -2 - 1.0) * math.exp(-2.0 * self.gamma * t))

    def _raw_field(self, name, t, rho, theta, phi):
        s = self._spec[name]
        out = np.zeros(np.broadcast_shapes(rho.shape, theta.shape, phi.shape))
        bal = (1.0 + self.ballooning * np.cos(theta)) / (1.0 + self.ballooning)
        for k in range(self.m.size):  # ~150 modes on the local points: cheap, and the same on every decomposition
            env = s["a"][k] * np.exp(-(((rho - s["rc"][k]) / s["w"][k]) ** 2))
            env = env * (1.0 + 0.5 * math.sin(s["nu"][k] * t + s["xi"][k]))
            psi = self.m[k] * theta - self.n[k] * phi + s["kr"][k] * rho - s["omega"][k] * t + s["chi"][k]
            out += env * np.cos(psi)
        return out * bal

    def _rms_norm(self, name):
        """1 / rms of the raw field over a fixed reference grid (independent of the decomposition)."""
        rho = np.linspace(0.1, 0.9, 24)[:, None, None]
        th = np.linspace(0, 2 * np.pi, 48, endpoint=False)[None, :, None]
        ph = np.linspace(0, 2 * np.pi, 12, endpoint=False)[None, None, :]
        return 1.0 / float(np.sqrt(np.mean(self._raw_field(name, 0.0, rho, th, ph) ** 2)))

    def turbulence(self, t=None):
        """The broadband fields of :data:`FIELDS` at time ``t`` (default :attr:`time`), shape ``count[:3]`` each."""
        t = self.time if t is None else float(t)
        A = self.envelope(t)
        S = self.count[:3]
        return {name: np.broadcast_to(A * self.amplitudes[name] * self._norm[name]
                                      * self._raw_field(name, t, self.rho, self.theta, self.phi), S)
                if self.amplitudes[name] else np.zeros(S) for name in FIELDS}

    def perturbations(self, t=None):
        """Relative ``delta n``, relative ``delta T_par`` and absolute ``u`` (as the first mock's)."""
        tb = self.turbulence(t)
        return tb["dn"], tb["dT_par"], tb["u"]

    def fluid_fields(self, t=None):
        """Imposed bulk ``n``, ``u``, ``T_par``, ``T_perp`` (without the clump and the beam) and ``B``."""
        n0, T0 = self.background()
        tb = self.turbulence(t)
        return {"n": n0 * (1.0 + tb["dn"]), "u": tb["u"], "T": T0 * (1.0 + tb["dT_par"]),
                "T_perp": T0 * (1.0 + tb["dT_perp"]), "B": self.B}

    def _compute_f(self):
        tb = self.turbulence()
        fl = self.fluid_fields()
        g = self.grid
        f = bi_maxwellian(fl["n"], fl["u"], fl["T"], fl["T_perp"], fl["B"], g)
        x = (g.vpar[:, None] - fl["u"][..., None, None]) / np.sqrt(fl["T"])[..., None, None]
        y = g.mu[None, :] * fl["B"][..., None, None] / fl["T_perp"][..., None, None]
        e3 = 0.1 * np.tanh(tb["e3"] / 0.1)[..., None, None]   # |e3| < 0.1: 1 + e3 He3 exp(-x^2/8) > 0.3
        e4 = 0.3 * np.tanh(tb["e4"] / 0.3)[..., None, None]   # |e4| < 0.3: |(1 - y) exp(-y/4)| <= 1
        f *= 1.0 + e3 * _he3(x) * np.exp(-x ** 2 / 8.0) + e4 * (1.0 - y) * np.exp(-y / 4.0)
        n0, _ = self.background()
        if self.amplitudes["res"]:  # clump (> 0) or hole (< 0), never deeper than the local f
            res = fl["n"] * self.amplitudes["res"] * np.tanh(tb["res"] / self.amplitudes["res"])
            shape = np.exp(-0.5 * ((g.vpar[:, None] - self.v_res) / self.w_res) ** 2 - y)
            f += res[..., None, None] * shape * (2 * np.pi) ** -1.5
            np.maximum(f, 0.0, out=f)
        if self.beam_density:
            nb = self.beam_density * n0 * np.exp(-((self.rho - 0.6) / 0.15) ** 2) * (1.0 + np.tanh(tb["beam"]))
            f += bi_maxwellian(nb, self.v_beam, self.T_beam, self.T_beam, fl["B"], g)
        if self.noise:
            self._apply_noise(f)
        return f

    def _apply_noise(self, f):
        i_glob, j_glob = self._index
        k0, nk = self.start[2], self.count[2]
        for a, i in enumerate(i_glob):
            for b, j in enumerate(j_glob):
                rng = np.random.default_rng([self.seed, self.time_step, int(i), int(j)])
                f[a, b] *= 1.0 + self.noise * rng.standard_normal((self.shape[2],) + self.shape[3:])[k0:k0 + nk]
