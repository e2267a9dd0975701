"""Transform codecs: tiles projected on a learned basis and uniformly quantized.

Each tile (:mod:`.tiling`) is projected on the basis (PCA components) and the coefficients are
quantized uniformly with one step per block (transform coding, as in JPEG with a learned
Karhunen-Loeve transform instead of the DCT); the integer codes are entropy coded by
:mod:`.entropy`. :class:`IdentityCodec` quantizes in the value domain (the residual of an
autoencoder's prediction).

With an orthonormal basis of full rank the squared error of a tile equals the squared
quantization error of its coefficients, ``~ quant_step**2 / 12`` per value, so the step follows
from an error target: :func:`quant_step_for_psnr`.

Reconstruction (:meth:`TransformCodec.dequantize`) is the same bit for bit on every machine
(:mod:`.fixed_point`); projection (choosing codes) uses whatever BLAS kernel is there.
"""

from __future__ import annotations

import math

import numpy as np

from .entropy import pack_codes, unpack_codes
from .fixed_point import MAX_CODE, FixedPointBasis


def quant_step_for_psnr(psnr_db, data_range):
    """Uniform quantization step that gives a target PSNR with an orthonormal transform.

    Parameters
    ----------
    psnr_db : float
        Target PSNR (dB) against ``data_range``.
    data_range : float
        Value range of the variable (``max - min``).

    Returns
    -------
    step : float
        ``sqrt(12) * data_range * 10**(-psnr_db / 20)``, from ``MSE = step**2 / 12``.
    """
    return math.sqrt(12.0) * float(data_range) * 10.0 ** (-float(psnr_db) / 20.0)


class TransformCodec:
    """Quantized projection of tiles on a basis, entropy coded with a range coder.

    Parameters
    ----------
    mean : ndarray of shape (n_features,)
        Mean tile subtracted before projection.
    components : ndarray of shape (n_components, n_features)
        Orthonormal basis (rows), e.g. ``IncrementalPCA.components_``.
    quant_step : float
        Uniform quantization step of the coefficients (same unit as the field).
    zstd_level : int, default=3
        zstd level for the lossless sections (raw tiles and their indices).
    """

    def __init__(self, mean, components, quant_step, *, zstd_level=3):
        self.mean = np.asarray(mean, dtype=np.float32)
        self.components = np.asarray(components, dtype=np.float32)
        if self.components.ndim != 2 or self.components.shape[1] != self.mean.shape[0]:
            raise ValueError(
                f"components of shape {self.components.shape} do not match mean of shape {self.mean.shape}"
            )
        if not quant_step > 0:
            raise ValueError(f"quant_step must be positive, got {quant_step!r}")
        self.quant_step = float(quant_step)
        self.zstd_level = zstd_level
        self._fixed = None  # FixedPointBasis, built on first use and shared by derived codecs

    kind = "pca"

    def _derived(self, mean, quant_step):
        """A codec with this basis and another mean or step, sharing the fixed-point basis."""
        out = TransformCodec(mean, self.components, quant_step, zstd_level=self.zstd_level)
        out._fixed = self.fixed_basis
        return out

    @property
    def fixed_basis(self):
        """The basis rounded for exact reconstruction (:class:`~stagelearn.analytics.fixed_point.FixedPointBasis`)."""
        if self._fixed is None:
            self._fixed = FixedPointBasis(self.components)
        return self._fixed

    # The model-side interface of :func:`encode_block` / :func:`decode_block` (shared with
    # :class:`~stagelearn.analytics.ae_codec.AECodec`): a prediction of each tile from the model
    # ("intra"), the side information it needs, and the codec of the residual.

    @property
    def fill_tile(self):
        """Stand-in for tiles with NaN/Inf while coding (they are sent raw): the mean tile."""
        return self.mean

    def residual_codec(self):
        """The codec of prediction residuals: the same basis with a zero mean (TransformCodec)."""
        return self._derived(np.zeros_like(self.mean), self.quant_step)

    def intra_reference(self, tiles):
        """Model prediction of tiles.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)

        Returns
        -------
        ref : ndarray of shape (n_tiles, n_features), float32
            The mean tile for every tile (the residual is then coded in the basis).
        state : None
            No side information.
        """
        return np.broadcast_to(self.mean, tiles.shape), None

    def side_sections(self, state, intra):
        """Payload sections and header fields besides the residual codes: ``({}, {})`` for PCA."""
        return {}, {}

    def decode_intra(self, header, sections, n_intra):
        """The mean tile, as ndarray of shape (n_intra, n_features), for the tiles predicted by the model."""
        return np.broadcast_to(self.mean, (n_intra, self.n_features))

    #: :meth:`step_for_mse` searches steps up to this factor above the uniform-noise model's step;
    #: a cap keeps the error spread out (a large step would concentrate a block's error budget in
    #: a few tiles and inflate the maximum error).
    max_step_factor = 2.0

    @property
    def n_features(self):
        return self.components.shape[1]

    def quantize(self, tiles):
        """Integer codes of tiles.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)

        Returns
        -------
        codes : ndarray of shape (n_tiles, n_components), dtype int32
        """
        return self.quantize_coefficients(self.coefficients(tiles))

    def coefficients(self, tiles):
        """Projections of tiles on the basis: ndarray of shape (n_tiles, n_components), float32."""
        return (np.asarray(tiles, dtype=np.float32) - self.mean) @ self.components.T

    def quantize_coefficients(self, coef):
        """Integer codes of coefficients (uniform mid-tread quantizer, step ``quant_step``)."""
        q = np.rint(coef * np.float32(1.0 / self.quant_step))
        return np.clip(q, -MAX_CODE, MAX_CODE).astype(np.int32)  # clipped tiles have huge errors: sent raw

    def with_step(self, quant_step):
        """The same basis with another quantization step."""
        return self._derived(self.mean, quant_step)

    def step_for_mse(self, tiles, target_mse, *, n_values=None, iterations=12):
        """Largest quantization step whose reconstruction MSE stays at or below ``target_mse``.

        The uniform-noise model ``MSE = step**2 / 12`` underestimates the step that a target
        allows when many coefficients quantize to zero (their error is below ``step**2 / 12``), so
        the step is found by bisection on ``log(step)`` between that model's value and
        :attr:`max_step_factor` times it; the error is measured in the coefficient domain plus the residual outside the
        basis, which equals the tile-domain error for an orthonormal basis.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features)
        target_mse : float
            Mean squared error per value (field units squared).
        n_values : int, optional
            Values the MSE is taken over (default ``tiles.size``). For a block padded to whole
            tiles pass the block's size: the error over all tiles then bounds the error over the
            block's own values, so the target holds for the block.

        Returns
        -------
        step : float
        """
        tiles = np.asarray(tiles, dtype=np.float32)
        n_values = tiles.size if n_values is None else int(n_values)
        if n_values == 0 or target_mse <= 0:
            return math.sqrt(12.0 * max(target_mse, 0.0)) or self.quant_step
        coef = self.coefficients(tiles)
        residual = 0.0
        if self.components.shape[0] < self.components.shape[1]:  # truncated basis: error outside it is fixed
            centred = tiles - self.mean
            residual = float(np.sum(centred.astype(np.float64) ** 2) - np.sum(coef.astype(np.float64) ** 2))
        budget = target_mse * n_values - max(residual, 0.0)
        lo = math.sqrt(12.0 * max(budget, 0.0) / n_values)
        if lo == 0.0:
            return math.sqrt(12.0 * target_mse)
        def sse(step):
            r = coef - np.rint(coef / np.float32(step)) * np.float32(step)
            return float(np.einsum("ij,ij->", r, r, dtype=np.float64))
        hi = self.max_step_factor * lo
        if sse(lo) > budget:  # model optimistic (rare): shrink until it holds
            while lo > 1e-30 and sse(lo) > budget:
                lo *= 0.5
            return lo
        if sse(hi) <= budget:
            return hi
        for _ in range(iterations):
            mid = math.sqrt(lo * hi)
            if sse(mid) <= budget:
                lo = mid
            else:
                hi = mid
        return lo

    def dequantize(self, codes):
        """Tiles reconstructed from integer codes, bit for bit the same on every machine.

        ``codes * quant_step @ components + mean`` with the basis rounded to a fixed-point grid
        and the product summed exactly (:meth:`FixedPointBasis.combine
        <stagelearn.analytics.fixed_point.FixedPointBasis.combine>`): the result does not depend
        on the BLAS kernel, thread count or CPU, nor on which other tiles are decoded with it.

        Parameters
        ----------
        codes : ndarray of shape (n_tiles, n_components)
            Integers with ``|codes| <= 2**24``.

        Returns
        -------
        tiles : ndarray of shape (n_tiles, n_features), dtype float32
        """
        return self.fixed_basis.combine(codes, self.quant_step) + self.mean

    def pack(self, codes):
        """Entropy-code integer codes (:func:`~stagelearn.analytics.entropy.pack_codes`).

        Parameters
        ----------
        codes : ndarray of shape (n_tiles, n_components), integer

        Returns
        -------
        data : bytes
        """
        return pack_codes(codes, zstd_level=self.zstd_level)

    @staticmethod
    def unpack(data, n_tiles, n_components):
        """Inverse of :meth:`pack`; returns codes of shape (n_tiles, n_components), int32."""
        return unpack_codes(data, n_tiles, n_components)


class IdentityCodec(TransformCodec):
    """Value-domain quantization of residuals: :class:`TransformCodec` with the identity basis
    (no matrix products) and a zero mean. Used for the residual of autoencoder predictions.

    Parameters
    ----------
    n_features : int
    quant_step : float, default=1.0
    zstd_level : int, default=3
    """

    def __init__(self, n_features, quant_step=1.0, *, zstd_level=3):
        super().__init__(np.zeros(n_features, np.float32), np.eye(n_features, dtype=np.float32), quant_step,
                         zstd_level=zstd_level)

    def coefficients(self, tiles):
        """The tiles themselves, float32: ndarray of shape (n_tiles, n_features)."""
        return np.asarray(tiles, dtype=np.float32)

    def dequantize(self, codes):
        """``codes * quant_step``: ndarray of shape (n_tiles, n_features), float32."""
        return np.asarray(codes, dtype=np.float32) * np.float32(self.quant_step)

    def with_step(self, quant_step):
        """The same codec with another quantization step."""
        return IdentityCodec(self.n_features, quant_step, zstd_level=self.zstd_level)
