"""Moments as quantities of interest: functionals, the Lagrange-multiplier correction, tolerances,
side information (analytics/qoi.py, analytics/qoi_side.py), checked against independent computations."""

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics.qoi import (
    MomentSet,
    check_moments,
    correct_moments,
    gyrokinetic_moment_set,
    negative_count,
    tolerance,
)
from stagelearn.analytics.qoi_side import decode_side_info, encode_side_info, protect, restore, side_steps
from stagelearn.sim_mocks import GyrokineticMock5D
from stagelearn.sim_mocks.gyrokinetic import moments


@pytest.fixture(scope="module")
def sim():
    s = GyrokineticMock5D(4, 6, 2, 16, 8, comm=MPI.COMM_SELF, noise=1e-4, seed=1)
    s.advance(40)
    return s


def test_moment_set_equals_the_mock_moments_and_dense_sums(sim):
    f = sim.fields()["f"]
    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    got = ms.apply(f.reshape(-1, 16, 8))
    ref = moments(f, sim.B, sim.grid)
    for k, name in enumerate(ms.names):
        np.testing.assert_allclose(got[:, k], ref[name].ravel(), rtol=1e-12, atol=1e-14)
    # explicit sums with dense weights written out from the definitions
    v, mu = sim.grid.vpar[:, None], sim.grid.mu[None, :]
    w = np.outer(sim.grid.w_vpar, sim.grid.w_mu)
    B = sim.B.reshape(-1)
    fs = f.reshape(-1, 16, 8)
    dens = np.einsum("pvm,vm->p", fs, w) * 2 * np.pi * B
    energy = np.array([2 * np.pi * b * np.sum(fp * w * (0.5 * v**2 + mu * b)) for fp, b in zip(fs, B)])
    np.testing.assert_allclose(got[:, 0], dens, rtol=1e-12)
    np.testing.assert_allclose(got[:, 2], energy, rtol=1e-12)
    np.testing.assert_allclose(np.einsum("pkn,pn->pk", ms.weights(), fs.reshape(len(fs), -1)), got, rtol=1e-12,
                               atol=1e-14)


def test_user_weight_vector_and_bad_ones(sim):
    rng = np.random.default_rng(0)
    w = rng.standard_normal(16 * 8)
    ms = gyrokinetic_moment_set(sim.grid, sim.B, names=("density",), extra={"heat_flux": w})
    f = sim.fields()["f"].reshape(-1, 16 * 8)
    np.testing.assert_allclose(ms.apply(f)[:, 1], f @ w, rtol=1e-12)
    assert ms.names == ("density", "heat_flux")
    with pytest.raises(ValueError, match="'q' has 5 values"):
        gyrokinetic_moment_set(sim.grid, sim.B, extra={"q": np.ones(5)})
    with pytest.raises(ValueError, match="finite"):
        gyrokinetic_moment_set(sim.grid, sim.B, extra={"q": np.full(128, np.nan)})
    with pytest.raises(ValueError, match="unknown gyrokinetic moment"):
        gyrokinetic_moment_set(sim.grid, sim.B, names=("pressure",))


def _lstsq_correction(W, f, targets, d=None):
    """Per point: the minimum-norm change with the given moments (numpy lstsq on each point's system)."""
    out = np.empty_like(f)
    for p in range(len(f)):
        Wp = W[p] if W.ndim == 3 else W
        s = np.ones(f.shape[1]) if d is None else np.sqrt(d[p])
        y = np.linalg.lstsq(Wp * s, targets[p] - Wp @ f[p], rcond=None)[0]
        out[p] = f[p] + s * y
    return out


@pytest.mark.parametrize("metric", ["l2", "relative"])
def test_correction_is_the_per_point_least_squares_projection(sim, metric):
    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    f = sim.fields()["f"].reshape(-1, 128)
    rng = np.random.default_rng(1)
    f_dec = f + 1e-3 * f.max() * rng.standard_normal(f.shape)
    targets = ms.apply(f)
    got = correct_moments(f_dec, ms, targets, metric=metric)
    d = None if metric == "l2" else np.abs(f_dec) + 1e-12 * np.abs(f_dec).max()
    ref = _lstsq_correction(ms.weights(), f_dec, targets, d)
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-12 * np.abs(f).max())
    np.testing.assert_allclose(ms.apply(got), targets, rtol=1e-11, atol=1e-13)
    assert got.shape == f_dec.shape


def test_correction_on_a_constant_weight_set_and_dependent_rows():
    rng = np.random.default_rng(2)
    G = rng.standard_normal((2, 10))
    ms = MomentSet(("a", "b", "a_plus_b"), G, np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]]))
    f = rng.standard_normal((7, 10))
    t = ms.apply(f + 0.1)
    got = correct_moments(f, ms, t)  # the third row depends on the others: pinv, consistent targets are met
    np.testing.assert_allclose(ms.apply(got), t, atol=1e-10)


def test_tolerance_scales_and_check():
    m = np.array([[2.0, 0.1, 3.0], [1.0, -0.2, 1.5]])
    names = ("density", "parallel_flow", "energy")
    tol = tolerance(m, names, [1e-2, 1e-2, 1e-3], ["local", "density", "max"])
    np.testing.assert_allclose(tol, [[0.02, 0.02, 3e-3], [0.01, 0.01, 3e-3]])
    np.testing.assert_allclose(tolerance(m, names, [0.5] * 3, ["absolute"] * 3), 0.5)
    with pytest.raises(ValueError, match="tolerance of moment 'energy' is 0"):
        tolerance(m, names, [1e-2, 1e-2, 0.0], ["local"] * 3)
    with pytest.raises(ValueError, match="scale of moment 'density' is 'mean'"):
        tolerance(m, names, [1e-2] * 3, ["mean", "local", "local"])
    checks = check_moments(m + [[0.019, 0.0, 0.0], [0.0, 0.011, -0.004]], m, tol, names)
    assert [c.ok for c in checks] == [True, False, False]
    assert checks[1].n_bad == 1 and checks[1].worst == pytest.approx(1.1)
    assert checks[0].worst == pytest.approx(0.95)
    with pytest.raises(ValueError, match="'parallel_flow'.*tolerance is 0"):
        side_steps(tolerance(np.array([[1.0, 0.0, 1.0]]), names, [1e-2] * 3, ["local"] * 3), names)


@pytest.mark.parametrize("precision", ["quantized", "float32", "float64"])
def test_side_information_round_trip(precision):
    rng = np.random.default_rng(3)
    m_exact = rng.uniform(0.5, 2.0, (500, 3))
    m_dec = m_exact + 1e-3 * rng.standard_normal(m_exact.shape)
    steps = np.array([1e-4, 2e-4, 5e-5])
    blob = encode_side_info(m_exact, m_dec, steps=steps, precision=precision, spatial=(20, 25))
    assert blob[:4] == (b"QOI2" if precision == "quantized" else b"QOI1")
    got = decode_side_info(blob, m_dec)
    if precision == "float64":
        np.testing.assert_array_equal(got, m_exact)
    elif precision == "float32":
        np.testing.assert_array_equal(got, m_exact.astype(np.float32))
    else:
        assert np.all(np.abs(got - m_exact) <= steps / 2 * (1 + 1e-9))
        assert len(blob) < 500 * 3 * 2  # a few bits per moment, not 8 bytes


@pytest.mark.parametrize("shape", [(600,), (10, 60), (5, 6, 20)])
def test_residual_coding_round_trip_is_exact(shape):
    """Format 2's integer coding (Lorenzo + cross-moment + rANS) gives back every integer, for smooth, noisy,
    one-moment and constant residuals."""
    from stagelearn.analytics.qoi_residual_coding import decode_residuals, encode_residuals, lorenzo, unlorenzo

    rng = np.random.default_rng(7)
    P = int(np.prod(shape))
    smooth = np.cumsum(rng.integers(-3, 4, (P, 3)), axis=0)
    cases = [smooth, smooth + rng.integers(-50000, 50000, (P, 3)), smooth[:, :1], np.zeros((P, 2), np.int64),
             np.stack([smooth[:, 0], 3 * smooth[:, 0] + rng.integers(-1, 2, P)], 1)]
    for q in cases:
        np.testing.assert_array_equal(unlorenzo(lorenzo(q, shape), shape), q)
        got = decode_residuals(encode_residuals(q, shape), P, q.shape[1], shape)
        assert got.dtype == np.int64
        np.testing.assert_array_equal(got, q)
    with pytest.raises(ValueError, match="does not hold"):
        encode_residuals(smooth, (7, 7))


def test_format_2_takes_each_moment_against_the_decoded_moments_or_none():
    """Per moment the shorter base: a smooth exact moment with noisy decoded moments travels as itself (mode 1),
    one whose decoded moments are close but rough travels against them (mode 0); both decode within step / 2."""
    from stagelearn.analytics.qoi_side import MODE_DECODED, MODE_NONE

    rng = np.random.default_rng(9)
    x = np.linspace(0, 1, 400)
    rough = 1.0 + 0.5 * rng.standard_normal(400)
    m_exact = np.stack([1.0 + 0.2 * np.sin(6 * x), rough], axis=1)
    m_dec = np.stack([m_exact[:, 0] + 0.05 * rng.standard_normal(400), rough + 1e-4 * rng.standard_normal(400)], 1)
    steps = np.array([1e-3, 1e-3])
    blob = encode_side_info(m_exact, m_dec, steps=steps, spatial=(400,))
    off = 4 + 7 + 1 + 4 + 16
    assert list(blob[off:off + 2]) == [MODE_NONE, MODE_DECODED]
    got = decode_side_info(blob, m_dec)
    assert np.all(np.abs(got - m_exact) <= steps / 2 * (1 + 1e-9))
    assert np.all(np.abs(decode_side_info(blob, m_dec + 1.0)[:, 0] - m_exact[:, 0]) <= 5e-4 * (1 + 1e-9))  # mode 1


def test_spatial_shape_of_a_field():
    from stagelearn.analytics.qoi_side import spatial_shape

    assert spatial_shape((4, 6, 2, 16, 8), 128) == (4, 6, 2)
    assert spatial_shape((48, 16, 8), 128) == (48,)
    assert spatial_shape((48, 128), 128) == (48,)
    assert spatial_shape((3, 5, 7, 6), 42) == (3, 5)
    assert spatial_shape((10, 12), 4) == (30,)  # the trailing axes do not hold whole slices: one axis of points


def test_side_information_format_1_still_decodes_and_large_residuals_write_it():
    """A format-1 blob built by hand (magic QOI1, int8 codes, zstd) as stored before format 2, and the fallback."""
    import struct

    import zstandard

    rng = np.random.default_rng(8)
    m_dec = rng.uniform(1, 2, (40, 3))
    q = rng.integers(-100, 100, (40, 3)).astype(np.int8)
    steps = np.array([1e-3, 2e-3, 4e-3])
    blob = (b"QOI1" + struct.pack("<BHI", 0, 3, 40) + struct.pack("<B", 0) + steps.tobytes()
            + zstandard.ZstdCompressor().compress(q.T.tobytes()))
    np.testing.assert_array_equal(decode_side_info(blob, m_dec), m_dec + q * steps)
    huge = m_dec + 1e9 * steps  # 1e9 steps: too large for format 2's 32-bit differences
    blob = encode_side_info(huge, m_dec, steps=steps, spatial=(40,))
    assert blob[:4] == b"QOI1"
    np.testing.assert_allclose(decode_side_info(blob, m_dec), huge, rtol=0, atol=steps.max())
    with pytest.raises(ValueError, match="bad magic|magic"):
        decode_side_info(b"XXXX" + blob[4:], m_dec)


def test_protect_then_restore_meets_every_tolerance(sim):
    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    f = sim.fields()["f"].reshape(-1, 128)
    rng = np.random.default_rng(4)
    f_dec = (f + 3e-3 * f.max() * rng.standard_normal(f.shape)).astype(np.float32)
    tols, scales = [1e-3] * 3, ["local", "density", "local"]
    m_exact = ms.apply(f)
    abs_tol = tolerance(m_exact, ms.names, tols, scales)
    assert not all(c.ok for c in check_moments(ms.apply(f_dec), m_exact, abs_tol, ms.names))  # uncorrected: fails
    blob, f_out, checks = protect(f, f_dec, ms, tols, scales)
    assert all(c.ok for c in checks)
    assert f_out.dtype == np.float32 and blob[:4] == b"QOI2"
    # the margin the whole-tolerance step keeps: one float32 ulp of every value, from dense weights
    dense = np.abs(ms.weights())  # (P, K, N)
    margin = np.einsum("pkn,pn->pk", dense, np.abs(f_out.astype(np.float64)) + 2.0 ** -126) * 2.0 ** -23
    assert np.all(np.abs(ms.apply(f_out) - m_exact) + margin <= abs_tol)
    np.testing.assert_array_equal(restore(f_dec, ms, blob), f_out)  # the decoder gets what was verified
    # independent check of the decoder's output
    dec = ms.apply(f_out)
    assert np.all(np.abs(dec - m_exact) <= abs_tol)
    assert negative_count(f_out, f_dec) >= 0


def test_a_decoder_whose_moments_differ_in_the_last_bits_stays_within_tolerance(sim):
    """Another machine's float64 sums give decoded moments a few units off in the last bits; with every moment
    coded against the decoded moments (MODE_DECODED, asserted) on a 5-D block, that moves the targets, and the
    corrected field still holds every tolerance."""
    from stagelearn.analytics.qoi_side import MODE_DECODED

    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    f = sim.fields()["f"]  # (4, 6, 2, 16, 8)
    rng = np.random.default_rng(4)
    f_dec = (f + 3e-4 * f.max() * rng.standard_normal(f.shape)).astype(np.float32)
    tols, scales = [1e-3] * 3, ["local", "density", "local"]
    m_exact = ms.apply(f)
    abs_tol = tolerance(m_exact, ms.names, tols, scales)
    blob, f_out, checks = protect(f, f_dec, ms, tols, scales)
    assert all(c.ok for c in checks)
    assert blob[:4] == b"QOI2" and blob[11] == 3  # three spatial axes (4, 6, 2)
    off = 4 + 7 + 1 + 3 * 4 + 3 * 8
    assert list(blob[off:off + 3]) == [MODE_DECODED] * 3
    m_dec = ms.apply(f_dec)
    for sign in (1, -1):
        targets = decode_side_info(blob, m_dec * (1 + sign * 4e-16))
        assert np.count_nonzero(targets != decode_side_info(blob, m_dec)) > targets.size // 2  # it matters
        other = correct_moments(f_dec, ms, targets, metric="entropy").astype(np.float32)
        assert np.all(np.abs(ms.apply(other) - m_exact) <= abs_tol)


def test_relative_metric_keeps_zero_tails_zero():
    rng = np.random.default_rng(5)
    G = np.vstack([np.ones(20), np.linspace(-1, 1, 20)])
    ms = MomentSet(("n", "nu"), G, np.eye(2))
    f = np.exp(-np.linspace(-3, 3, 20) ** 2)[None, :].repeat(4, 0)
    f[:, :3] = 0.0
    f_dec = f * (1 + 0.01 * rng.standard_normal(f.shape))
    t = ms.apply(f)
    rel = correct_moments(f_dec, ms, t, metric="relative")
    l2 = correct_moments(f_dec, ms, t, metric="l2")
    np.testing.assert_allclose(ms.apply(rel), t, atol=1e-12)
    assert np.abs(rel[:, :3]).max() < 1e-12 and np.abs(l2[:, :3]).max() > 1e-6


# ----------------------------------------------------------------------------- the run YAML's qoi section
GK_SIM = {"type": "gyrokinetic", "ranks": 2, "n_r": 8, "n_theta": 8, "n_phi": 4, "n_vpar": 16, "n_mu": 8}
GOOD_QOI = {"moments": [{"name": "density", "tolerance": 1e-3, "scale": "local"},
                        {"name": "parallel_flow", "tolerance": 1e-3, "scale": "density"},
                        {"name": "energy", "tolerance": 1e-3},
                        {"name": "heat_flux", "weights": [0.5] * 128, "tolerance": 1e-6, "scale": "absolute"}]}


def _load(tmp_path, qoi, sim=GK_SIM, **extra):
    import yaml

    from stagelearn.staging.config import load_config

    p = tmp_path / "run.yaml"
    p.write_text(yaml.safe_dump({"simulation": sim, "qoi": qoi, **extra}))
    return p, lambda: load_config(p)


def test_qoi_section_loads(tmp_path):
    _, load = _load(tmp_path, GOOD_QOI)
    cfg = load()
    assert [m.name for m in cfg.qoi.moments] == ["density", "parallel_flow", "energy", "heat_flux"]
    assert cfg.qoi.moments[2].scale == "local" and cfg.qoi.precision == "quantized" and cfg.qoi.metric == "entropy"
    _, load = _load(tmp_path, dict(GOOD_QOI, store_exact_moments=True))
    assert load().qoi.precision == "float64"
    _, load = _load(tmp_path, {"moments": [{"name": "q", "weights": [1.0] * 6, "tolerance": 1e-4, "scale": "max"}],
                               "velocity_shape": [3, 2]}, sim={"type": "external", "command": ["x"]},
                    staging={"mode": "in_transit", "stream": "s.bp"})
    assert load().qoi.velocity_shape == (3, 2)


def _bad(moment_index, **change):
    moments = [dict(m) for m in GOOD_QOI["moments"]]
    moments[moment_index].update(change)
    return {"moments": moments}


@pytest.mark.parametrize("qoi, key, words", [
    (_bad(0, tolerance=0), "qoi.moments.0.tolerance", "greater than 0"),
    (_bad(2, tolerance=-1e-3), "qoi.moments.2.tolerance", "finite number > 0"),
    (_bad(0, tolerance=float("nan")), "qoi.moments.0.tolerance", "finite"),
    (_bad(0, tolerance=1e-9), "qoi.moments.0", "cannot be met"),
    (_bad(1, scale="local"), "qoi.moments.1", "crosses zero"),
    (_bad(3, weights=[0.5] * 127), "qoi.moments.3.weights", "has 127 values"),
    (_bad(3, weights=[0.5] * 127 + [float("nan")]), "qoi.moments.3.weights.127", "finite"),
    (_bad(3, weights=[0.5] * 127 + [float("inf")]), "qoi.moments.3.weights.127", "finite"),
    (_bad(3, weights=None), "qoi.moments.3", "not one of"),
    (_bad(0, scale="mean"), "qoi", "scale 'mean' of moment 'density'"),
    (_bad(0, tolerance_pct=1), "qoi.moments.0.tolerance_pct", "Extra inputs"),
    (dict(GOOD_QOI, raw_fraction=0.6), "qoi.raw_fraction", "less than or equal to 0.5"),
    (dict(GOOD_QOI, raw_fraction=-0.01), "qoi.raw_fraction", "greater than or equal to 0"),
    ({"moments": []}, "qoi.moments", "at least 1"),
])
def test_bad_qoi_values_name_the_key(tmp_path, qoi, key, words):
    from stagelearn.staging.errors import ConfigError

    path, load = _load(tmp_path, qoi)
    with pytest.raises(ConfigError) as err:
        load()
    msg = str(err.value)
    assert str(path) in msg and key in msg and words in msg and "\n" not in msg, msg


def test_qoi_against_the_simulation(tmp_path):
    from stagelearn.staging.errors import ConfigError

    _, load = _load(tmp_path, {"moments": GOOD_QOI["moments"][:3], "velocity_shape": [32, 16]})
    with pytest.raises(ConfigError, match=r"qoi.velocity_shape \[32, 16\] differs from the simulation's"):
        load()
    _, load = _load(tmp_path, GOOD_QOI, sim={"type": "gray_scott", "L": 16})
    with pytest.raises(ConfigError, match=r"qoi.moments \['density', 'parallel_flow', 'energy'\] are named"):
        load()
    _, load = _load(tmp_path, {"moments": [{"name": "q", "weights": [1.0] * 6, "tolerance": 1e-4}]},
                    sim={"type": "gray_scott", "L": 16})
    with pytest.raises(ConfigError, match="qoi.velocity_shape is required"):
        load()
    _, load = _load(tmp_path, GOOD_QOI, staging={"variables": ["g"]})
    with pytest.raises(ConfigError, match=r"qoi.variable 'f' is not in staging.variables"):
        load()


def test_raw_slices_of_the_moment_variable_follow_qoi_raw_fraction(tmp_path):
    """The moment variable is coded with ``qoi.raw_fraction`` raw tiles (0 by default: the correction guards the
    moments), other variables with ``codec.raw_fraction``; an older policy without the key keeps the codec's."""
    from types import SimpleNamespace

    from stagelearn.analytics.qoi_policy import check_policy, qoi_policy, raw_fraction_for

    _, load = _load(tmp_path, GOOD_QOI, codec={"kind": "learned", "raw_fraction": 0.02})
    cfg = load()
    assert cfg.qoi.raw_fraction == 0.0
    policy = check_policy(qoi_policy(cfg.qoi, cfg.simulation))
    enc = SimpleNamespace(raw_fraction=cfg.codec.raw_fraction, qoi=policy)
    assert raw_fraction_for(enc, "f") == 0.0 and raw_fraction_for(enc, "phi") == 0.02
    _, load = _load(tmp_path, dict(GOOD_QOI, raw_fraction=0.01), codec={"kind": "learned"})
    cfg = load()
    assert raw_fraction_for(SimpleNamespace(raw_fraction=0.02, qoi=qoi_policy(cfg.qoi, cfg.simulation)), "f") == 0.01
    older = {k: v for k, v in policy.items() if k != "raw_fraction"}  # a spec written before the key existed
    assert raw_fraction_for(SimpleNamespace(raw_fraction=0.02, qoi=check_policy(older)), "f") == 0.02
    assert raw_fraction_for(SimpleNamespace(raw_fraction=0.02, qoi=None), "f") == 0.02
    with pytest.raises(ValueError, match="raw_fraction 2 is not a number in"):
        check_policy(dict(policy, raw_fraction=2))


def test_policy_and_config_accept_the_same_raw_fractions(tmp_path):
    """check_policy (a spec read back) and the qoi: section share one upper bound, MAX_RAW_FRACTION (0.5)."""
    from stagelearn.analytics.qoi_config import MAX_RAW_FRACTION, QoIConfig
    from stagelearn.analytics.qoi_policy import check_policy, qoi_policy

    assert MAX_RAW_FRACTION == 0.5
    _, load = _load(tmp_path, GOOD_QOI, codec={"kind": "learned"})
    policy = qoi_policy(load().qoi, load().simulation)
    for rf in (0.0, 0.25, 0.5):
        QoIConfig(**dict(GOOD_QOI, raw_fraction=rf))
        assert check_policy(dict(policy, raw_fraction=rf))["raw_fraction"] == rf
    for rf in (0.51, 0.75, 1.0):  # accepted by check_policy up to 1 before
        with pytest.raises(ValueError, match="less than or equal to 0.5"):
            QoIConfig(**dict(GOOD_QOI, raw_fraction=rf))
        with pytest.raises(ValueError, match=r"raw_fraction .* is not a number in \[0, 0.5\]"):
            check_policy(dict(policy, raw_fraction=rf))
    with pytest.raises(ValueError, match=r"is not a number in \[0, 0.5\]"):
        check_policy(dict(policy, raw_fraction=-0.1))
    with pytest.raises(ValueError, match="raw_fraction True"):
        check_policy(dict(policy, raw_fraction=True))


def test_validate_cli_refuses_a_zero_tolerance(tmp_path, stagelearn_cli):
    path, _ = _load(tmp_path, _bad(0, tolerance=0))
    out = stagelearn_cli("validate", path, timeout=60)
    assert out.returncode == 2
    lines = out.stderr.strip().splitlines()
    assert len(lines) == 1 and "qoi.moments.0.tolerance" in lines[0] and "cannot be met" in lines[0]


# ----------------------------------------------------------------------------- the product's encode path + correction
def _pca_model(train, tile):
    from stagelearn.analytics import IncrementalPCA
    from stagelearn.analytics.encoder import VariableModel

    est = IncrementalPCA()
    for f in train:
        est.partial_fit(f.reshape(len(f), -1).astype(np.float32))
    return VariableModel(tile, float(min(f.min() for f in train)), float(max(f.max() for f in train)), "pca",
                         mean_=est.mean_.astype(np.float32), components_=est.components_.astype(np.float32))


def _ae_model(train, tile):
    pytest.importorskip("torch")
    from stagelearn.analytics.ae_training import AETrainer
    from stagelearn.analytics.autoencoder import named_arrays, spec_from_data
    from stagelearn.analytics.encoder import VariableModel

    samples = [f.reshape(len(f), -1).astype(np.float32) for f in train]
    spec = spec_from_data(samples[0], tile[1:], channels=(8, 16), latent_dim=4)
    trainer = AETrainer(spec, iterations_per_step=10, batch_size=64, lr=2e-3, device="cpu", seed=0)
    for s in samples:
        trainer.partial_fit(s)
    return VariableModel(tile, float(min(f.min() for f in train)), float(max(f.max() for f in train)), "ae",
                         autoencoder=spec.to_dict(), ae_arrays=named_arrays(trainer.model))


@pytest.mark.parametrize("learner", ["pca", "ae"])
@pytest.mark.parametrize("tol", [1e-2, 1e-3])
def test_encode_path_then_correction_keeps_every_moment(learner, tol):
    """encode_step_block -> decode_block -> restore: the decoder's f has every moment within tolerance at every
    point, judged with sim_mocks.gyrokinetic.moments (not the MomentSet) against the raw float64 f."""
    from stagelearn.analytics.codec import decode_block
    from stagelearn.analytics.step_encode import encode_step_block
    from stagelearn.analytics.temporal import PredictionChain
    from stagelearn.sim_mocks import TurbulentGyrokineticMock5D

    sim = TurbulentGyrokineticMock5D(4, 8, 2, 16, 8, comm=MPI.COMM_SELF, noise=1e-4, m_max=6, n_max=2)
    frames = []
    for _ in range(4):
        sim.advance(10)
        frames.append(sim.fields()["f"].reshape(-1, 16, 8).copy())
    tile = (1, 16, 8)
    model = (_pca_model if learner == "pca" else _ae_model)(frames[:3], tile)
    f = frames[3]
    span = float(f.max() - f.min())
    code = encode_step_block(f.astype(np.float32), model, step=3, chain=PredictionChain(0), chain_key="f",
                             target_mse=span**2 * 10 ** (-30 / 10), raw_fraction=0.0, reference=f)
    dec, _, _ = decode_block(code.payload, model.codec())
    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    scales = ["local", "density", "local"]
    blob, f_out, checks = protect(f, dec, ms, [tol] * 3, scales)
    assert all(c.ok for c in checks)
    got = restore(dec, ms, blob)  # the decoder: its own f and the side information only
    np.testing.assert_array_equal(got, f_out)
    raw, out = moments(f.reshape(sim.count), sim.B, sim.grid), moments(got.reshape(sim.count), sim.B, sim.grid)
    n = np.abs(raw["density"])
    for name, scale in (("density", n), ("parallel_flow", n), ("energy", np.abs(raw["energy"]))):
        assert np.all(np.abs(out[name] - raw[name]) <= tol * scale), name
    before = moments(dec.reshape(sim.count), sim.B, sim.grid)
    assert np.abs(before["parallel_flow"] - raw["parallel_flow"]).max() > tol * n.min()  # the correction was needed


def test_entropy_correction_is_positive_and_meets_the_moments(sim):
    """Against scipy: per point, the multipliers solving W (f exp(W^T lam)) = m (a root finder)."""
    from scipy.optimize import root

    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    f = sim.fields()["f"].reshape(-1, 128)
    rng = np.random.default_rng(6)
    f_dec = f * (1 + 0.05 * rng.standard_normal(f.shape))  # 5 % multiplicative error: positive, moments off
    targets = ms.apply(f)
    got = correct_moments(f_dec, ms, targets, metric="entropy")
    assert np.all(got > 0)
    np.testing.assert_allclose(ms.apply(got), targets, rtol=1e-11, atol=1e-13)
    W = ms.weights()
    for p in (0, 17, len(f) - 1):
        sol = root(lambda lam: W[p] @ (f_dec[p] * np.exp(W[p].T @ lam)) - targets[p], np.zeros(3), tol=1e-12)
        np.testing.assert_allclose(W[p] @ (f_dec[p] * np.exp(W[p].T @ sol.x)), targets[p], rtol=1e-9, atol=1e-12)
        np.testing.assert_allclose(got[p], f_dec[p] * np.exp(W[p].T @ sol.x), rtol=1e-7)
    assert negative_count(correct_moments(f_dec, ms, targets, metric="l2"), f_dec) > 0  # what the entropy form avoids


def test_entropy_falls_back_to_relative_where_newton_does_not_settle(sim):
    from stagelearn.analytics import qoi

    ms = gyrokinetic_moment_set(sim.grid, sim.B)
    f = sim.fields()["f"].reshape(-1, 128)
    f_dec = f * 1.3
    targets = ms.apply(f)
    G, C = ms.basis, ms._coeffs(len(f))
    got = qoi._entropy_correction(f_dec, ms, targets, C, G, 1e-12, max_iter=0)
    np.testing.assert_allclose(got, correct_moments(f_dec, ms, targets, metric="relative"), rtol=1e-12)
