"""Classical compressors respect their error bounds; SSIM and spectrum metrics against references."""

import numpy as np
import pytest
from skimage.metrics import structural_similarity

from stagelearn.analytics import baselines
from stagelearn.analytics.metrics import spectrum_relative_error, ssim_slices


def field(shape=(24, 20, 16), seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=shape)
    for ax in range(len(shape)):
        x = np.cumsum(x, axis=ax)
    return (x / np.ptp(x)).astype(np.float32)


@pytest.mark.parametrize("rel", [1e-2, 1e-3, 1e-4])
def test_zfp_and_sz3_abs_bounds(rel):
    x = field()
    bound = rel * float(np.ptp(x))
    for payload, decode in (baselines.zfp_fixed_accuracy(x, bound), baselines.sz3(x, bound, "ABS")):
        y = decode()
        assert np.max(np.abs(y - x)) <= bound * (1 + 1e-6)
        assert len(payload) < x.nbytes


def test_sz3_rel_bound_is_relative_to_the_value_range():
    x = field() * 1000.0 + 5.0
    y = baselines.sz3(x, 1e-3, "REL")[1]()
    assert np.max(np.abs(y - x)) <= 1e-3 * float(np.ptp(x)) * (1 + 1e-6)
    with pytest.raises(ValueError, match="ABS or REL"):
        baselines.sz3(x, 1e-3, "PW_REL")


def test_bitround_keeps_the_requested_mantissa_bits():
    x = field()
    for keepbits in (4, 10, 23):
        y = baselines.bitround_zstd(x, keepbits)[1]()
        # rounding to k mantissa bits: relative error at most 2^-(k+1)
        assert np.all(np.abs(y - x) <= np.abs(x) * 2.0 ** -(keepbits + 1) * (1 + 1e-6) + 1e-30)
    big = field((128, 32, 8), seed=3)  # the information estimate needs enough samples along the axis
    assert 0 <= baselines.keepbits_for_information(big, 0.99) <= baselines.keepbits_for_information(big, 0.9999) <= 23


def test_wavelet_error_is_bounded_by_the_step():
    x = field()
    step = 1e-3
    y = baselines.wavelet_threshold(x, step)[1]()
    # orthogonal-like transform: RMSE close to the uniform quantization error step / sqrt(12)
    assert np.sqrt(np.mean((y - x) ** 2)) <= step


def test_ssim_and_spectrum():
    x = field((32, 32, 4))
    y = x + np.random.default_rng(1).normal(scale=0.01, size=x.shape).astype(np.float32)
    rng = float(np.ptp(x))
    ref = np.mean([structural_similarity(x[..., i].astype(float), y[..., i].astype(float), data_range=rng) for i in range(4)])
    assert ssim_slices(x, y, rng) == pytest.approx(ref, rel=1e-12)
    assert spectrum_relative_error(x, x) == 0.0
    assert 0 < spectrum_relative_error(x, y) < 0.1
    # a pure scaling by 2 scales every power-spectrum shell by 4: relative error 3
    assert spectrum_relative_error(x, 2 * x) == pytest.approx(3.0)


def test_sz3_at_psnr_takes_a_5d_gyrokinetic_block():
    """pysz codes at most 4 axes: a 5-D f (r, theta, phi, v_par, mu) is coded with its leading axes merged
    and comes back in its own shape, at the requested PSNR (recomputed here over the block's range)."""
    rng = np.random.default_rng(3)
    r, th, ph, vp, mu = np.meshgrid(*(np.linspace(0, 1, n) for n in (3, 4, 5, 16, 8)), indexing="ij")
    f = np.exp(-8 * (vp - 0.5) ** 2 - 2 * mu) * (1 + 0.1 * np.sin(6 * th + 4 * ph + r)) + 1e-4 * rng.random(r.shape)
    nbytes, rec = baselines.sz3_at_psnr(f, 50.0)
    assert rec.shape == f.shape and 0 < nbytes < f.astype(np.float32).nbytes
    span = float(f.max() - f.min())
    psnr = 20 * np.log10(span) - 10 * np.log10(np.mean((rec.astype(np.float64) - f) ** 2))
    assert psnr >= 49.0, psnr
    payload, decode = baselines.sz3(f, 1e-3, "ABS")  # the error-bound mode takes it too
    back = decode()
    assert back.shape == f.shape and float(np.max(np.abs(back - f))) <= 1e-3 * (1 + 1e-5)
