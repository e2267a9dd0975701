"""Moment side information (analytics/qoi_side.py): the rounding margin holds on every step path, and a
truncated, altered or misapplied format-2 blob is refused with one clear error; checked against dense
weights and one-unit roundings of the output computed here."""

import logging
import struct
import time
import zlib

import numpy as np
import pytest
from mpi4py import MPI

from stagelearn.analytics import qoi_side
from stagelearn.analytics.qoi import gyrokinetic_moment_set, tolerance
from stagelearn.analytics.qoi_side import (
    SideInfoError,
    decode_side_info,
    encode_side_info,
    protect,
    rounding_margin,
    side_steps,
)
from stagelearn.sim_mocks import GyrokineticMock5D


@pytest.fixture(scope="module")
def case():
    s = GyrokineticMock5D(4, 6, 2, 16, 8, comm=MPI.COMM_SELF, noise=1e-4, seed=1)
    s.advance(40)
    ms = gyrokinetic_moment_set(s.grid, s.B)
    f = s.fields()["f"]  # (4, 6, 2, 16, 8): 48 points of 128 values
    rng = np.random.default_rng(4)
    f_dec = (f + 3e-3 * f.max() * rng.standard_normal(f.shape)).astype(np.float32)
    return ms, f, f_dec


def _margin(ms, f_out):
    """One float32 unit of every value, through the dense weights (independent of rounding_margin)."""
    dense = np.abs(ms.weights())  # (P, K, N)
    return np.einsum("pkn,pn->pk", dense, np.abs(f_out.reshape(len(dense), -1).astype(np.float64)) + 2.0 ** -126) \
        * 2.0 ** -23


def _adversarial_error(ms, f_out, m_exact):
    """Per point and moment, the moment error after rounding every value of ``f_out`` one float32 unit the way
    that grows the error (what a decoder whose last bits differ could do at worst)."""
    W = ms.weights()
    f2 = f_out.reshape(len(W), -1)
    err = ms.apply(f_out) - m_exact
    out = np.empty_like(err)
    for k in range(err.shape[1]):
        up = np.sign(W[:, k, :]) * np.sign(err[:, k])[:, None] >= 0
        g = np.where(up, np.nextafter(f2, np.float32(np.inf)), np.nextafter(f2, np.float32(-np.inf)))
        out[:, k] = np.abs(ms.apply(g.astype(np.float32))[:, k] - m_exact[:, k])
    return out


def _steps_of(blob, K):
    nd = blob[11]
    return np.frombuffer(blob, "<f8", K, 12 + 4 * nd)


def _checks_match_margin(ms, f, f_out, abs_tol, checks):
    err = np.abs(ms.apply(f_out) - ms.apply(f))
    need = err + _margin(ms, f_out)
    for k, c in enumerate(checks):
        assert c.ok == bool(np.all(need[:, k] <= abs_tol[:, k])), c.name
        assert c.worst == pytest.approx(float((need[:, k] / abs_tol[:, k]).max()), rel=1e-5), c.name
    return need


def test_fallback_steps_are_verified_with_the_rounding_margin(case, monkeypatch):
    """Absolute tolerances of 1.5x the largest margin leave no wide step: the half-tolerance step is checked with
    the margin, so density, within its tolerance but without the margin to spare, is reported outside (worst > 1),
    not ok as before; every moment reported ok stays within under the worst one-unit rounding of the output."""
    ms, f, f_dec = case
    b = rounding_margin(f_dec, ms)
    tols, scales = list(1.5 * b.max(axis=0)), ["absolute"] * 3
    abs_tol = tolerance(ms.apply(f), ms.names, tols, scales)
    assert np.all(np.isnan(qoi_side.wide_steps(abs_tol, b)))  # no wide step: the fallback path
    blob, f_out, checks = protect(f, f_dec, ms, tols, scales)
    np.testing.assert_array_equal(_steps_of(blob, 3), side_steps(abs_tol, ms.names))
    _checks_match_margin(ms, f, f_out, abs_tol, checks)
    err = np.abs(ms.apply(f_out) - ms.apply(f))
    assert np.all(err[:, 0] <= abs_tol[:, 0])  # density: within without the margin (the old check said ok) ...
    assert not checks[0].ok and checks[0].worst > 1  # ... but not with it, and the producer says so
    adv = _adversarial_error(ms, f_out, ms.apply(f))
    for k, c in enumerate(checks):
        if c.ok:
            assert np.all(adv[:, k] <= abs_tol[:, k]), c.name


def test_a_moment_whose_wide_step_fails_falls_back_alone(case, monkeypatch):
    """A wide step that cannot verify (made 50x too wide here) sends that moment, and only it, to the half
    tolerance step; the result holds every tolerance with the margin to spare."""
    ms, f, f_dec = case
    real = qoi_side.wide_steps
    monkeypatch.setattr(qoi_side, "wide_steps", lambda tol, margin: real(tol, margin) * np.array([50.0, 1.0, 1.0]))
    tols, scales = [1e-3] * 3, ["local", "density", "local"]
    abs_tol = tolerance(ms.apply(f), ms.names, tols, scales)
    blob, f_out, checks = protect(f, f_dec, ms, tols, scales)
    steps = _steps_of(blob, 3)
    wide = real(abs_tol, rounding_margin(f_dec, ms))
    assert steps[0] == side_steps(abs_tol, ms.names)[0]
    np.testing.assert_array_equal(steps[1:], wide[1:])
    assert all(c.ok for c in checks)
    need = _checks_match_margin(ms, f, f_out, abs_tol, checks)
    assert np.all(need <= abs_tol)
    assert np.all(_adversarial_error(ms, f_out, ms.apply(f)) <= abs_tol)


def test_a_tolerance_neither_step_holds_logs_the_out_of_tolerance_error(case, caplog):
    """protect_block (the producer's caller) logs its error naming the moment and returns worst > 1."""
    from stagelearn.analytics.qoi_policy import protect_block

    ms, f, f_dec = case
    w = np.ones(128)
    policy = {"variable": "f", "velocity_shape": (16, 8), "geometry": None, "weights": {"n": w},
              "moments": [{"name": "n", "tolerance": 0.0, "scale": "absolute"}], "precision": "quantized",
              "metric": "entropy"}
    margin = float(np.abs(f_dec.astype(np.float64)).reshape(48, 128).sum(axis=1).max()) * 2.0 ** -23
    policy["moments"][0]["tolerance"] = 0.8 * margin  # below the margin: no step can hold it
    with caplog.at_level(logging.ERROR, logger="stagelearn.analytics.qoi_policy"):
        blob, f_out, worst = protect_block(3, policy, f, f_dec, (0, 0, 0, 0, 0), f.shape)
    assert worst > 1
    assert "moment 'n' is outside its tolerance" in caplog.text and "step 3" in caplog.text


def test_rounding_margin_follows_the_output_dtype(case):
    ms, f, f_dec = case
    b32, b64 = rounding_margin(f_dec, ms), rounding_margin(f_dec, ms, np.float64)
    np.testing.assert_allclose(b32, _margin(ms, f_dec), rtol=2e-6)  # 1 + 2^-20 + 128 2^-29
    assert np.all(b32 >= _margin(ms, f_dec))  # the slack only adds
    np.testing.assert_allclose(b64, _margin(ms, f_dec) * 2.0 ** -29 * (1 + 128), rtol=1e-6)
    with pytest.raises(ValueError, match="not floating"):
        rounding_margin(f_dec, ms, np.int32)


@pytest.fixture(scope="module")
def qoi2():
    rng = np.random.default_rng(3)
    m_exact = rng.uniform(0.5, 2.0, (60, 3))
    m_dec = m_exact + 1e-3 * rng.standard_normal(m_exact.shape)
    steps = np.array([1e-4, 2e-4, 5e-5])
    blob = encode_side_info(m_exact, m_dec, steps=steps, spatial=(3, 4, 5))
    assert blob[:4] == b"QOI2"
    return blob, m_dec, decode_side_info(blob, m_dec)


def test_truncated_format_2_blobs_are_refused(qoi2):
    blob, m_dec, _ = qoi2
    for n in range(len(blob)):
        with pytest.raises(SideInfoError, match="moment side information"):
            decode_side_info(blob[:n], m_dec)
    with pytest.raises(SideInfoError, match="CRC"):
        decode_side_info(blob + b"\0", m_dec)


def test_flipped_bytes_of_a_format_2_blob_are_refused(qoi2):
    blob, m_dec, good = qoi2
    for i in range(len(blob)):
        for x in (0x01, 0x80, 0xFF):
            bad = bytearray(blob)
            bad[i] ^= x
            try:
                got = decode_side_info(bytes(bad), m_dec)
            except SideInfoError:
                continue
            np.testing.assert_array_equal(got, good)  # never silently different targets


def _reheader(blob, fmt, values, at):
    """``blob`` with ``values`` packed at ``at`` and its CRC made right again (a well-formed lie)."""
    b = bytearray(blob[:-4])
    struct.pack_into(fmt, b, at, *values)
    return bytes(b) + struct.pack("<I", zlib.crc32(bytes(b)))


def test_a_corrupt_header_is_refused_before_decoding(qoi2):
    blob, m_dec, _ = qoi2
    for P in (2 ** 24, 2 ** 32 - 1):
        t0 = time.perf_counter()
        with pytest.raises(SideInfoError, match=f"declares {P} points x 3 moments.*shape \\(60, 3\\)"):
            decode_side_info(_reheader(blob, "<I", (P,), 7), m_dec)
        assert time.perf_counter() - t0 < 0.5
    with pytest.raises(SideInfoError, match="declares 60 points x 3"):
        decode_side_info(blob, m_dec[:30])
    with pytest.raises(SideInfoError, match="spatial shape"):
        decode_side_info(_reheader(blob, "<3I", (3, 4, 6), 12), m_dec)
    for bad in (np.nan, 0.0, -1e-4, np.inf):
        with pytest.raises(SideInfoError, match="steps"):
            decode_side_info(_reheader(blob, "<d", (bad,), 24), m_dec)


def test_encode_refuses_an_unknown_format():
    with pytest.raises(ValueError, match="format 3"):
        encode_side_info(np.ones((4, 2)), np.ones((4, 2)), steps=np.ones(2), fmt=3)


def test_truncated_format_1_blobs_are_refused_too():
    """Format 1 (no CRC, still read): every truncation raises the same clear error, none decodes."""
    rng = np.random.default_rng(8)
    m_dec = rng.uniform(1, 2, (40, 3))
    blob = encode_side_info(m_dec + 0.01, m_dec, steps=np.array([1e-3, 2e-3, 4e-3]), fmt=1)
    assert blob[:4] == b"QOI1"
    for n in range(len(blob)):
        with pytest.raises(SideInfoError, match="moment side information"):
            decode_side_info(blob[:n], m_dec)
