"""SZ3 compared at the PSNR our code reached: SZ3's PSNR mode overshoots, the matched call does not."""

from __future__ import annotations

import math

import numpy as np
import pytest

from stagelearn.analytics.baselines import PSNR_MATCH_DB, sz3_at_psnr, sz3_matched_psnr

pysz = pytest.importorskip("pysz")


def psnr(ref, rec):
    """PSNR against the reference's own range, computed here."""
    d = np.asarray(rec, dtype=np.float64) - np.asarray(ref, dtype=np.float64)
    return 20 * math.log10(float(ref.max() - ref.min())) - 10 * math.log10(float(np.mean(d * d)))


def field():
    i, j = np.meshgrid(np.arange(32), np.arange(64), indexing="ij")
    noise = 1e-3 * np.random.default_rng(0).standard_normal(i.shape)
    return (np.sin(0.1 * i) * np.cos(0.13 * j) + 0.3 * np.cos(0.05 * (i + j)) + noise).astype(np.float32)


@pytest.mark.parametrize("target", [35.0, 40.0, 50.0])
def test_matched_sz3_reaches_the_target_psnr_and_no_more(target):
    x = field()
    plain_bytes, plain_rec = sz3_at_psnr(x, target)
    nbytes, rec = sz3_matched_psnr(x, target)
    assert rec.shape == x.shape and rec.dtype == np.float32
    assert abs(psnr(x, rec) - target) <= PSNR_MATCH_DB
    assert psnr(x, plain_rec) >= target - PSNR_MATCH_DB  # SZ3's PSNR mode alone: at least the target...
    assert nbytes <= plain_bytes  # ...at a size the matched call never exceeds


def test_a_constant_block_is_exact_and_needs_one_run():
    x = np.full((8, 8), 3.0, dtype=np.float32)
    nbytes, rec = sz3_matched_psnr(x, 40.0)
    np.testing.assert_array_equal(rec, x)
    assert nbytes > 0


def test_sz3_match_names_the_setting_it_used():
    """The setting returned reproduces the run with pysz alone (what the closed-loop rows record)."""
    from stagelearn.analytics.baselines import sz3_match

    x = field()
    nbytes, rec, setting, achieved = sz3_match(x, 42.0, prefer_match=True)
    cfg = pysz.szConfig()
    cfg.errorBoundMode = pysz.szErrorBoundMode.PSNR
    cfg.psnrErrorBound = float(setting)
    comp, _ = pysz.sz.compress(x, cfg)
    again, _ = pysz.sz.decompress(comp, np.float32, x.shape)
    assert int(comp.nbytes) == nbytes
    np.testing.assert_array_equal(again, rec)
    assert achieved == pytest.approx(psnr(x, rec), abs=1e-5)


def test_prefer_match_lands_in_the_window_where_sz3_jumps():
    """On a small block SZ3's PSNR jumps as its setting moves; with ``prefer_match`` the scan finds a
    setting inside the window at least wherever the plain matched call does."""
    from stagelearn.analytics.baselines import sz3_match

    x = field()[:16]
    plain = preferred = 0
    for target in np.arange(34.0, 52.0, 1.0):
        plain += abs(psnr(x, sz3_matched_psnr(x, target)[1]) - target) <= PSNR_MATCH_DB
        nbytes, rec, _, achieved = sz3_match(x, target, prefer_match=True)
        assert achieved == pytest.approx(psnr(x, rec), abs=1e-5)
        preferred += abs(achieved - target) <= PSNR_MATCH_DB
    assert preferred >= plain and preferred >= 15


def test_carry_keeps_a_series_mean_matched():
    """When no run lands in the window, the run nearest on the side that brings the series' sum toward 0."""
    from stagelearn.analytics.baselines import sz3_match

    x = field()[:16]
    for target in np.arange(34.0, 52.0, 1.0):
        low = sz3_match(x, target, prefer_match=True, carry_db=+5.0, max_tries=1)
        high = sz3_match(x, target, prefer_match=True, carry_db=-5.0, max_tries=1)
        if abs(low[3] - target) > PSNR_MATCH_DB:  # no run in the window: the carry decides the side
            assert low[3] <= high[3]
