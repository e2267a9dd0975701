"""Gysela-like 5-D mock: velocity-space moments, imposed perturbations, decomposition invariance."""

import numpy as np
import pytest
from mpi4py import MPI
from stagelearn.analytics.tiling import to_tiles
from stagelearn.sim_mocks import GyrokineticMock5D
from stagelearn.sim_mocks.gyrokinetic import (
    DEFAULT_MODES,
    VelocityGrid,
    fluid_from_moments,
    maxwellian,
    moments,
    uniform_weights,
)

# velocity grid fine enough that the quadrature error is the truncation of the Maxwellian tails
FINE = {"n_vpar": 48, "n_mu": 32}


def _mock(n_vpar, n_mu, **kw):
    return GyrokineticMock5D(6, 8, 4, n_vpar, n_mu, comm=MPI.COMM_SELF, **kw)


def test_uniform_weights_integrate_polynomials_exactly():
    for n in (6, 9, 16):
        x = np.linspace(0.0, 2.0, n)
        w = uniform_weights(n, x[1] - x[0])
        for p in range(4):  # the 4th-order Gregory rule is exact up to cubics
            assert w @ x**p == pytest.approx(2.0 ** (p + 1) / (p + 1), rel=1e-12)
    np.testing.assert_allclose(uniform_weights(3, 0.5), [0.25, 0.5, 0.25])


def test_background_moments_match_analytic():
    sim = _mock(**FINE, modes=(), noise=0.0)
    f = sim.fields()["f"]
    assert f.shape == (6, 8, 4, 48, 32) and f.dtype == np.float64 and np.all(f >= 0)
    n0, T0 = sim.background()
    n0, T0 = np.broadcast_to(n0, sim.count[:3]), np.broadcast_to(T0, sim.count[:3])
    assert T0.max() / T0.min() > 1.5  # a real temperature gradient
    m = sim.moments()
    np.testing.assert_allclose(m["density"], n0, rtol=2e-3)
    np.testing.assert_allclose(m["parallel_flow"], 0.0, atol=1e-12)
    np.testing.assert_allclose(m["energy"], 1.5 * n0 * T0, rtol=5e-3)
    # B varies with theta (1 / (1 + eps cos theta)) and the density does not: the Jacobian 2 pi B is applied
    assert np.ptp(sim.B) > 0.1


def test_perturbed_moments_equal_imposed_fields():
    sim = _mock(**FINE, noise=0.0)
    sim.advance(60)  # modes grown to saturation
    n0, T0 = sim.background()
    dn, dT, u = sim.perturbations()
    assert np.abs(dn).max() > 0.02 and np.abs(dT).max() > 0.03 and np.abs(u).max() > 0.05
    fl = fluid_from_moments(sim.moments())
    np.testing.assert_allclose(fl["n"] / n0 - 1.0, dn, atol=2e-3)
    np.testing.assert_allclose(fl["u"], u, atol=1e-3)
    np.testing.assert_allclose(fl["T"] / T0 - 1.0, dT, atol=5e-3)


def test_modes_grow_saturate_and_drift():
    mode = DEFAULT_MODES[0]
    assert mode.amplitude(0.0) == pytest.approx(mode.a0)
    assert mode.amplitude(5.0) == pytest.approx(mode.a0 * np.exp(5.0 * mode.gamma), rel=0.01)  # linear growth
    assert mode.amplitude(200.0) == pytest.approx(1.0, abs=1e-6)  # saturation
    sim = _mock(16, 8, noise=0.0)
    rms0 = np.sqrt(np.mean(sim.perturbations()[0] ** 2))
    sim.advance(80)
    assert np.sqrt(np.mean(sim.perturbations()[0] ** 2)) > 10 * rms0
    a = sim.perturbations(t=100.0)[0]
    b = sim.perturbations(t=103.0)[0]
    assert np.abs(a - b).max() > 0.01  # the pattern drifts


def test_moments_function_on_a_given_maxwellian():
    grid = VelocityGrid(40, 64, vpar_max=6.0, mu_max=12.0)
    n, u, T, B = np.array([1.3, 0.7]), np.array([0.2, -0.4]), np.array([0.8, 1.1]), np.array([1.0, 0.9])
    m = moments(maxwellian(n, u, T, B, grid), B, grid)
    np.testing.assert_allclose(m["density"], n, rtol=1e-4)
    np.testing.assert_allclose(m["parallel_flow"], n * u, rtol=1e-4)
    np.testing.assert_allclose(m["energy"], n * (1.5 * T + 0.5 * u**2), rtol=1e-3)  # tail truncation


def test_velocity_space_samples():
    sim = _mock(16, 8)
    f = sim.fields()["f"]
    samples = sim.velocity_samples(f)
    assert samples.shape == (6 * 8 * 4, 16 * 8)
    np.testing.assert_array_equal(samples[5], f.reshape(-1, 16, 8)[5].ravel())
    # the same samples as N-D tiles of one spatial point each
    np.testing.assert_array_equal(to_tiles(f, (1, 1, 1, 16, 8)), samples)
    np.testing.assert_array_equal(to_tiles(f.reshape(-1, 16, 8), (1, 16, 8)), samples)


def test_fields_are_cached_per_step_and_noise_changes_with_time():
    sim = _mock(16, 8, noise=1e-3, modes=())
    a = sim.fields()["f"]
    assert sim.fields()["f"] is a
    sim.advance(1)
    b = sim.fields()["f"]
    assert b is not a and np.abs(b / a - 1).max() > 1e-4  # background is static: only the noise differs


def test_shape_start_count_and_bad_process_grid():
    sim = _mock(16, 8)
    assert sim.shape == sim.domain.shape == (6, 8, 4, 16, 8)
    assert sim.start == (0, 0, 0, 0, 0) and sim.count == sim.shape
    with pytest.raises(ValueError, match="ranks"):
        GyrokineticMock5D(6, 8, 4, 16, 8, comm=MPI.COMM_SELF, dims=(2, 1, 1))


SCRIPT = """
    import numpy as np
    from mpi4py import MPI
    from stagelearn.sim_mocks import GyrokineticMock5D
    from stagelearn.sim_mocks.runner import gather_field
    comm = MPI.COMM_WORLD
    for tag, dims in (("auto", None), ("tp", (1, 2, 2) if comm.size == 4 else None)):
        sim = GyrokineticMock5D(8, 8, 4, 16, 8, comm=comm, dims=dims, noise=1e-3, seed=3)
        sim.advance(25)
        assert sim.fields()["f"].shape == sim.count
        f = gather_field(comm, sim.fields()["f"], sim.start, sim.count, sim.shape)
        dens = gather_field(comm, sim.moments()["density"], sim.start[:3], sim.count[:3], sim.shape[:3])
        if comm.rank == 0:
            np.save("f_%s_%d.npy" % (tag, comm.size), f)
            np.save("n_%s_%d.npy" % (tag, comm.size), dens)
"""


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_decomposition_invariance(mpirun, tmp_path):
    mpirun(1, SCRIPT)
    mpirun(4, SCRIPT)
    one = np.load(tmp_path / "f_auto_1.npy")
    assert one.shape == (8, 8, 4, 16, 8) and one.max() > 0.01
    for tag in ("auto", "tp"):
        np.testing.assert_array_equal(np.load(tmp_path / f"f_{tag}_4.npy"), one)
        np.testing.assert_allclose(np.load(tmp_path / f"n_{tag}_4.npy"), np.load(tmp_path / "n_auto_1.npy"), rtol=1e-6)


# ----------------------------------------------------------------------------- the broadband, non-Maxwellian mock
def _turbulent(n_vpar=32, n_mu=16, **kw):
    from stagelearn.sim_mocks import TurbulentGyrokineticMock5D

    return TurbulentGyrokineticMock5D(8, 16, 4, n_vpar, n_mu, comm=MPI.COMM_SELF, **kw)


def _pca_rank(f, fraction):
    X = f.reshape(-1, f.shape[-2] * f.shape[-1])
    sv = np.linalg.svd(X - X.mean(0), compute_uv=False)
    return int(np.searchsorted(np.cumsum(sv**2) / np.sum(sv**2), fraction) + 1)


def _modes_for(field2d, fraction):
    """Fourier modes in (theta, phi) holding ``fraction`` of the fluctuation power (per radius, pooled)."""
    d = field2d - field2d.mean(axis=(1, 2), keepdims=True)
    p = np.sort((np.abs(np.fft.fft2(d, axes=(1, 2))) ** 2).ravel())[::-1]
    return int(np.searchsorted(np.cumsum(p) / p.sum(), fraction) + 1)


def test_turbulent_mock_is_broadband_and_higher_rank_than_the_three_mode_mock():
    hard, easy = _turbulent(noise=0.0), GyrokineticMock5D(8, 16, 4, 32, 16, comm=MPI.COMM_SELF, noise=0.0)
    hard.advance(60)
    easy.advance(60)
    fh, fe = hard.fields()["f"], easy.fields()["f"]
    assert fh.shape == fe.shape == (8, 16, 4, 32, 16) and np.all(fh >= 0) and np.all(np.isfinite(fh))
    dh, de = hard.moments()["density"], easy.moments()["density"]
    assert _modes_for(dh, 0.9) > 3 * _modes_for(de, 0.9)
    assert _pca_rank(fh, 0.9999) > _pca_rank(fe, 0.9999) + 3


def test_turbulent_mock_moments_and_non_maxwellian_structure():
    # kinetic terms, clump and beam off: a bi-Maxwellian with the imposed n and u (quadrature accuracy)
    fine = {"n_vpar": 64, "n_mu": 128, "vpar_max": 6.0, "mu_max": 14.0}  # quadrature error << the checks
    plain = _turbulent(noise=0.0, amplitudes={"e3": 0, "e4": 0, "res": 0}, beam_density=0.0, **fine)
    plain.advance(60)
    fl, m = plain.fluid_fields(), plain.moments()
    assert np.abs(fl["u"]).max() > 0.05 and np.ptp(fl["n"]) > 0.05
    np.testing.assert_allclose(m["density"], fl["n"], rtol=3e-3)
    np.testing.assert_allclose(m["parallel_flow"], fl["n"] * fl["u"], atol=3e-3)
    # bi-Maxwellian energy: n (T_par / 2 + T_perp + u^2 / 2)
    np.testing.assert_allclose(m["energy"], fl["n"] * (0.5 * fl["T"] + fl["T_perp"] + 0.5 * fl["u"] ** 2), rtol=1e-2)
    # the full mock departs from it: the beam carries flow, the kinetic terms energy
    full = _turbulent(noise=0.0, **fine)
    full.advance(60)
    mf = full.moments()
    assert np.abs(mf["parallel_flow"] - m["parallel_flow"]).max() > 0.01
    assert np.abs(mf["energy"] / m["energy"] - 1).max() > 0.01
    with pytest.raises(ValueError, match="unknown field"):
        _turbulent(amplitudes={"dB": 0.1})


def test_turbulent_mock_is_registered_as_a_simulation():
    from stagelearn.sim_mocks import TurbulentGyrokineticMock5D
    from stagelearn.sim_mocks.config import GyrokineticTurbulenceConfig
    from stagelearn.sim_mocks.runner import build_simulation
    from stagelearn.staging.config import RunConfig

    cfg = RunConfig.model_validate({"simulation": {"type": "gyrokinetic_turbulence", "n_r": 4, "n_theta": 8,
                                                   "n_phi": 2, "n_vpar": 16, "n_mu": 8, "m_max": 6}})
    assert isinstance(cfg.simulation, GyrokineticTurbulenceConfig) and cfg.simulation.field_ndim == 5
    sim = build_simulation(cfg.simulation, MPI.COMM_SELF)
    assert isinstance(sim, TurbulentGyrokineticMock5D) and sim.fields()["f"].shape == (4, 8, 2, 16, 8)
    assert sim.m.max() == 6


TURB_SCRIPT = """
    import numpy as np
    from mpi4py import MPI
    from stagelearn.sim_mocks import TurbulentGyrokineticMock5D
    from stagelearn.sim_mocks.runner import gather_field
    comm = MPI.COMM_WORLD
    sim = TurbulentGyrokineticMock5D(8, 8, 4, 16, 8, comm=comm, noise=1e-3, seed=3, m_max=6, n_max=2)
    sim.advance(25)
    f = gather_field(comm, sim.fields()["f"], sim.start, sim.count, sim.shape)
    if comm.rank == 0:
        np.save("turb_%d.npy" % comm.size, f)
"""


@pytest.mark.mpi
@pytest.mark.timeout(120)
def test_turbulent_decomposition_invariance(mpirun, tmp_path):
    mpirun(1, TURB_SCRIPT)
    mpirun(4, TURB_SCRIPT)
    one = np.load(tmp_path / "turb_1.npy")
    assert one.shape == (8, 8, 4, 16, 8) and one.max() > 0.01
    np.testing.assert_array_equal(np.load(tmp_path / "turb_4.npy"), one)
