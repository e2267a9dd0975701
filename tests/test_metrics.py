"""Metrics against scikit-image and hand-computed values."""

import math

import numpy as np
import pytest
from skimage.metrics import normalized_root_mse, peak_signal_noise_ratio

from stagelearn.analytics.metrics import ErrorStats, compression_ratio, max_abs_error, nrmse, psnr


def test_psnr_matches_skimage():
    rng = np.random.default_rng(0)
    x = rng.normal(size=(32, 32))
    y = x + rng.normal(scale=0.01, size=x.shape)
    rng_x = float(x.max() - x.min())
    assert psnr(x, y) == pytest.approx(peak_signal_noise_ratio(x, y, data_range=rng_x), rel=1e-12)
    assert nrmse(x, y) == pytest.approx(normalized_root_mse(x, y, normalization="min-max"), rel=1e-12)


def test_hand_values():
    x = np.array([0.0, 1.0, 2.0, 4.0])
    y = np.array([0.0, 1.0, 2.0, 3.0])
    # mse = 1/4, range 4 -> psnr = 10 log10(16 / 0.25)
    assert psnr(x, y) == pytest.approx(10 * math.log10(64))
    assert max_abs_error(x, y) == 1.0
    assert psnr(x, x) == math.inf
    assert compression_ratio(100, 8) == 12.5


def test_error_stats_merge_equals_whole():
    rng = np.random.default_rng(1)
    x = rng.normal(size=1000)
    y = x + rng.normal(scale=0.1, size=1000)
    whole = ErrorStats.from_arrays(x, y)
    merged = ErrorStats.from_arrays(x[:300], y[:300]).merge(ErrorStats.from_arrays(x[300:], y[300:]))
    assert merged.psnr_db == pytest.approx(whole.psnr_db, rel=1e-12)
    assert merged.max_abs_error == whole.max_abs_error
    assert merged.psnr_db == pytest.approx(psnr(x, y), rel=1e-12)
