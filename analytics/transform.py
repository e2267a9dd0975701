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

    def step_for_mse(self, residual, target_mse, *, n_values=None, exact=None, weights=None, n_raw=0, skip=None,
                     coef=None):
        """Largest quantization step (within a few percent) whose reconstruction MSE stays at or below ``target_mse``.

        A bisection on ``log(step)`` over the reconstruction error itself: for each trial step the
        coefficients are quantized as :meth:`quantize_coefficients` does and the error is measured
        in float64 (the exact reconstruction of :meth:`dequantize` differs by float32 rounding
        only): in the coefficient domain plus the part of ``exact`` outside the basis (equal to
        the tile-domain error for an orthonormal basis), and for edge tiles with padding in the
        tile domain over the values ``weights`` marks; the tiles sent raw count 0: those in
        ``skip``, those whose codes hit the code range, and the ``n_raw`` worst of the others
        (:func:`~stagelearn.analytics.codec.encode_block` sends them raw). The error of a uniform
        quantizer is continuous in the step, so the search ends at 95-99.9 % of the budget
        (0.004-0.22 dB above the target PSNR) unless
        even the largest step (every code 0) stays under it; :func:`~stagelearn.analytics.codec.encode_block`
        then verifies the exact reconstruction. The uniform-noise model ``MSE = step**2 / 12``
        is only the starting point: where many coefficients quantize to zero their error is below
        ``step**2 / 12`` and a much larger step meets the target.

        Parameters
        ----------
        residual : ndarray of shape (n_tiles, n_features)
            What is coded: tiles minus their prediction (float32).
        target_mse : float
            Mean squared error per value (field units squared).
        n_values : int, optional
            Values the MSE is taken over (default: those ``weights`` marks, else ``residual.size``).
        exact : ndarray of shape (n_tiles, n_features), optional
            The residual against the caller's own values (float64: their values minus the
            prediction); default ``residual``.
        weights : ndarray of shape (n_tiles, n_features), optional
            1 for the block's values, 0 for the padding of edge tiles (:func:`~stagelearn.analytics.tiling.tile_weights`).
        n_raw : int, default=0
            The worst tiles, beyond ``skip``, that are sent raw.
        skip : ndarray of bool of shape (n_tiles,), optional
            Tiles sent raw whatever the step (non-finite values, anomalies).
        coef : ndarray of shape (n_tiles, n_components), optional
            ``self.coefficients(residual)`` when the caller has them already.

        Returns
        -------
        step : float
            When the error outside the basis alone exceeds the budget, the step below which the
            error hardly falls (:func:`~stagelearn.analytics.codec.encode_block` then sends more
            tiles raw).
        """
        residual = np.asarray(residual, dtype=np.float32)
        n_tiles = residual.shape[0]
        exact = residual.astype(np.float64) if exact is None else np.asarray(exact, dtype=np.float64)
        if weights is not None:
            weights = np.asarray(weights, dtype=np.float64)
        n_values = int(n_values) if n_values is not None else int(weights.sum() if weights is not None else residual.size)
        if n_values == 0 or not target_mse > 0:
            return math.sqrt(12.0 * max(target_mse, 0.0)) or self.quant_step
        skip = np.zeros(n_tiles, dtype=bool) if skip is None else np.asarray(skip, dtype=bool)
        exact = np.where(skip[:, None], 0.0, exact)
        coef = self.coefficients(residual) if coef is None else coef
        coef = np.where(skip[:, None], np.float32(0.0), coef)
        basis = None if isinstance(self, IdentityCodec) else self.components.astype(np.float64)
        budget = float(target_mse) * n_values
        edge = np.zeros(n_tiles, dtype=bool) if weights is None else weights.min(axis=1) < 1.0
        if basis is not None:  # whole tiles: the error in the coefficient domain plus what lies outside the basis
            c64 = coef.astype(np.float64)  # (the caller's values differ from the float32 tiles by their rounding only)
            outside = np.maximum(np.einsum("ij,ij->i", exact, exact) - np.einsum("ij,ij->i", c64, c64), 0.0)

        def sse(step):
            codes = self.with_step(step).quantize_coefficients(coef)
            tile = np.empty(n_tiles)
            if basis is None:
                err = (exact - codes * float(step)) ** 2
                tile[:] = (err if weights is None else err * weights).sum(axis=1)
            else:
                tile[:] = np.einsum("ij,ij->i", c64 - codes * float(step), c64 - codes * float(step)) + outside
                if edge.any():  # tiles with padding: only the block's own values count
                    used = np.flatnonzero(codes[edge].any(axis=0))
                    err = exact[edge] - (codes[edge][:, used] * float(step)) @ basis[used]
                    tile[edge] = np.einsum("ij,ij->i", err * weights[edge], err)
            tile[skip | np.any(np.abs(codes) >= MAX_CODE, axis=1)] = 0.0
            if n_raw > 0:
                k = min(int(n_raw), n_tiles)
                tile[np.argpartition(tile, n_tiles - k)[n_tiles - k:]] = 0.0
            return float(tile.sum())

        accept_hi, accept_lo = budget * (1.0 - 1e-3), budget * 0.95  # land 0.004-0.22 dB above the target
        lo = math.sqrt(12.0 * target_mse)
        e = sse(lo)
        floor = 2.0 * float(np.max(np.abs(coef))) / MAX_CODE if coef.size else 0.0  # codes clip below this
        while e > accept_hi and lo * 0.5 > floor:  # the model is optimistic: shrink until the budget holds
            e_half = sse(lo * 0.5)
            if e_half > 0.9 * e:  # the error is not the quantizer's (a truncated basis): the caller sends tiles raw
                break
            lo, e = lo * 0.5, e_half
        if e >= accept_lo:
            return lo
        top = float(np.max(np.abs(coef))) if coef.size else 0.0
        hi = max(2.0 * lo, 4.0 * top)  # every code 0 from 2 * max|coef| on
        if sse(hi) <= accept_hi:
            return hi
        for _ in range(40):
            mid = math.sqrt(lo * hi)
            e = sse(mid)
            if e <= accept_hi:
                lo = mid
                if e >= accept_lo:
                    break
            else:
                hi = mid
            if hi / lo < 1.0 + 1e-4:
                break
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
