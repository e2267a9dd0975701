"""Error and size metrics for lossy compression of simulation fields.

PSNR follows the convention of the SDRBench/SZ/ZFP literature:
``PSNR = 20 log10(value_range / RMSE)`` with ``value_range = max(x) - min(x)`` of the
original field (not the dtype range), and NRMSE ``= RMSE / value_range``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np


def psnr(original, reconstruction, data_range=None):
    """Peak signal-to-noise ratio in dB.

    Parameters
    ----------
    original, reconstruction : ndarray of the same shape
    data_range : float, optional
        Value range; default ``original.max() - original.min()``.

    Returns
    -------
    psnr_db : float
        ``inf`` for an exact reconstruction.
    """
    original = np.asarray(original, dtype=np.float64)
    if data_range is None:
        data_range = float(original.max() - original.min())
    mse = float(np.mean((original - np.asarray(reconstruction, dtype=np.float64)) ** 2))
    return psnr_from_mse(mse, data_range)


def psnr_from_mse(mse, data_range):
    """PSNR in dB from a mean squared error and a value range (``inf`` when ``mse == 0``)."""
    if mse <= 0:
        return math.inf
    if data_range <= 0:
        return -math.inf
    return 10.0 * math.log10(data_range**2 / mse)


def nrmse(original, reconstruction, data_range=None):
    """Root mean squared error divided by the value range of ``original``."""
    original = np.asarray(original, dtype=np.float64)
    if data_range is None:
        data_range = float(original.max() - original.min())
    rmse = math.sqrt(float(np.mean((original - np.asarray(reconstruction, dtype=np.float64)) ** 2)))
    return rmse / data_range if data_range > 0 else math.inf


def max_abs_error(original, reconstruction):
    """Largest pointwise absolute error."""
    diff = np.asarray(original, dtype=np.float64) - np.asarray(reconstruction, dtype=np.float64)
    return float(np.max(np.abs(diff))) if diff.size else 0.0


@dataclass
class ErrorStats:
    """Additive error statistics of one field part, mergeable across blocks and ranks.

    Attributes
    ----------
    sse : float
        Sum of squared errors.
    n : int
        Number of values.
    max_abs_error : float
    vmin, vmax : float
        Range of the original values (for PSNR against the merged range).
    """

    sse: float = 0.0
    n: int = 0
    max_abs_error: float = 0.0
    vmin: float = math.inf
    vmax: float = -math.inf

    @classmethod
    def from_arrays(cls, original, reconstruction):
        """Statistics of one pair of arrays (float64 accumulation).

        Values that are NaN or infinite in ``original`` count as exact where the reconstruction
        holds the same value (non-finite tiles travel raw) and as NaN errors otherwise; the range
        is that of the finite values.
        """
        original = np.asarray(original)
        rec = np.asarray(reconstruction, dtype=np.float64)
        orig = original.astype(np.float64)
        finite = np.isfinite(orig)
        if finite.all():
            diff = orig - rec
            if original.dtype.kind in "iu":
                _exact_integer_difference(original, rec, diff)
        else:
            same = (orig == rec) | (np.isnan(orig) & np.isnan(rec))
            with np.errstate(invalid="ignore"):  # inf - inf where the tile travelled raw: counted as exact below
                diff = np.where(finite, orig - rec, np.where(same, 0.0, np.nan))
        vals = orig[finite] if not finite.all() else orig
        return cls(
            sse=float(np.dot(diff.ravel(), diff.ravel())),
            n=int(original.size),
            max_abs_error=float(np.max(np.abs(diff))) if diff.size else 0.0,
            vmin=float(vals.min()) if vals.size else math.inf,
            vmax=float(vals.max()) if vals.size else -math.inf,
        )

    def merge(self, other):
        """Combined statistics of ``self`` and ``other`` (a new object)."""
        return ErrorStats(
            self.sse + other.sse,
            self.n + other.n,
            max(self.max_abs_error, other.max_abs_error),
            min(self.vmin, other.vmin),
            max(self.vmax, other.vmax),
        )

    @property
    def mse(self):
        return self.sse / self.n if self.n else 0.0

    @property
    def data_range(self):
        return self.vmax - self.vmin if self.n else 0.0

    @property
    def psnr_db(self):
        """PSNR against the merged value range (dB)."""
        return psnr_from_mse(self.mse, self.data_range)

    @property
    def nrmse(self):
        r = self.data_range
        return math.sqrt(self.mse) / r if r > 0 else math.inf

    def to_dict(self):
        return {"sse": self.sse, "n": self.n, "max_abs_error": self.max_abs_error,
                "vmin": self.vmin, "vmax": self.vmax}

    @classmethod
    def from_dict(cls, d):
        return cls(float(d["sse"]), int(d["n"]), float(d["max_abs_error"]), float(d["vmin"]), float(d["vmax"]))


def _exact_integer_difference(original, rec, diff):
    """Correct ``diff`` (``original - rec`` in float64) in place where integers exceed float64's 2**53.

    Beyond 2**53 an integer's float64 value may be rounded, so the float64 difference may read 0
    for values that differ; there the difference is taken exactly (Python integers and fractions)
    and rounded once.
    """
    big = np.abs(original.astype(np.float64)) >= 2.0 ** 53
    if not big.any():
        return
    from fractions import Fraction

    flat, out, recs = original.ravel(), diff.reshape(-1), rec.ravel()
    for i in np.flatnonzero(big.ravel()):
        r = float(recs[i])
        out[i] = float(Fraction(int(flat[i])) - Fraction(r)) if math.isfinite(r) else math.nan


def compression_ratio(raw_bytes, sent_bytes):
    """``raw_bytes / sent_bytes`` (``inf`` when nothing was sent)."""
    return raw_bytes / sent_bytes if sent_bytes else math.inf


def ssim_slices(original, reconstruction, data_range=None):
    """Mean SSIM (scikit-image) over the 2D slices along the last axis (the field itself if 2D)."""
    from skimage.metrics import structural_similarity

    original = np.asarray(original, dtype=np.float64)
    reconstruction = np.asarray(reconstruction, dtype=np.float64)
    if data_range is None:
        data_range = float(original.max() - original.min()) or 1.0
    if original.ndim == 2:
        return float(structural_similarity(original, reconstruction, data_range=data_range))
    return float(np.mean([structural_similarity(original[..., i], reconstruction[..., i], data_range=data_range)
                          for i in range(original.shape[-1])]))


def spectrum_relative_error(original, reconstruction):
    """Relative L2 error of the radially averaged power spectrum (shell-binned |FFT|^2)."""
    def radial(a):
        a = np.asarray(a, dtype=np.float64)
        p = np.abs(np.fft.fftn(a - a.mean())) ** 2
        freqs = np.meshgrid(*[np.fft.fftfreq(n) * n for n in a.shape], indexing="ij")
        r = np.sqrt(sum(f**2 for f in freqs)).astype(int).ravel()
        return np.bincount(r, weights=p.ravel())

    po, pr = radial(original), radial(reconstruction)
    return float(np.linalg.norm(po - pr) / np.linalg.norm(po)) if np.any(po) else 0.0
