"""Flux proxies built from velocity moments, for ``benchmarks/gyrokinetic_moments.py`` (reported, not guaranteed).

The mocks carry no electrostatic potential, so the potential is the adiabatic-electron response to the
ion density, ``e phi / T_e = (n - <n>) / <n>`` (``<.>``: mean over theta and phi at each radius,
``T_e = 1``), and the radial E x B drift is ``v_r = -(d phi / d theta) / B`` (periodic central difference
over the full theta grid, per unit radius). Two proxies of what a physicist builds from the moments:

- the local radial particle flux ``Gamma(x) = n(x) v_r(x)``, judged by its relative L2 error over the frame
  (its flux-surface average is small but not zero: ``sum_i n_i (n_{i+1} - n_{i-1})`` would telescope to 0, but
  ``v_r`` carries ``1 / B(theta)``; on the turbulent mock's test frames ``max_r |<n v_r>(r)|`` is 0.7-1.2 % of
  the RMS of ``n v_r``, 0 on the three-mode mock, so the local flux is the particle-flux check);
- the flux-surface averaged radial energy flux ``Q(r) = <E v_r>(r)`` (``E`` the energy moment), judged by
  ``max_r |Q_decoded(r) - Q(r)| / max_r |Q(r)|``.

Both take a theta derivative of the density, so a moment error within tolerance at every point can be
amplified: nothing here is a guarantee.
"""

from __future__ import annotations

import numpy as np


def flux_proxies(m, B, grid):
    """E x B flux proxies built from the moments ``m`` (P, 3) on the full ``grid`` (n_r, n_theta, n_phi).

    Adiabatic electrons give the potential from the density, ``e phi / T_e = (n - <n>) / <n>`` (``<.>``: mean
    over theta and phi at each radius, ``T_e = 1``), the radial E x B drift ``v_r = -(d phi / d theta) / B``
    (periodic central difference, per unit radius). Returns the local particle flux ``n v_r`` (P,) and the
    flux-surface averaged energy flux profile ``<E v_r>(r)`` (n_r,). (The flux-surface average of ``n v_r``
    itself is small, not identically zero, since ``v_r`` carries ``1 / B(theta)``: the local flux is the
    particle-flux check.)"""
    n, E = m[:, 0].reshape(grid), m[:, 2].reshape(grid)
    mean = n.mean(axis=(1, 2), keepdims=True)
    phi = (n - mean) / mean
    v_r = -(np.roll(phi, -1, axis=1) - np.roll(phi, 1, axis=1)) / (4 * np.pi / grid[1]) / np.asarray(B).reshape(grid)
    return (n * v_r).ravel(), (E * v_r).mean(axis=(1, 2))


def flux_errors(ms, f, f_out, geo):
    """(relative L2 error of the local particle flux, max error of the energy-flux profile / its max)."""
    g0, q0 = flux_proxies(ms.apply(f), geo.B, geo.shape5[:3])
    g1, q1 = flux_proxies(ms.apply(f_out), geo.B, geo.shape5[:3])
    return float(np.linalg.norm(g1 - g0) / np.linalg.norm(g0)), float(np.abs(q1 - q0).max() / np.abs(q0).max())
