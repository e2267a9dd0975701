"""Block coding with a tile autoencoder: quantized latent codes plus a coded residual.

The autoencoder predicts each tile from its latent code (integers with one float32 scale per
tile, :mod:`.autoencoder`); the residual between the tile and that prediction is quantized in the
value domain with the step the error target allows and range coded (the identity transform of
:class:`~stagelearn.analytics.transform.TransformCodec`). The autoencoder thus plays the role of a
learned predictor, as in AE-SZ (Liu et al., "Exploring autoencoder-based error-bounded compression
for scientific data", IEEE Cluster 2021), and the error target holds whatever the network's
quality. :func:`~stagelearn.analytics.codec.encode_block` drives it; the payload's sections
``latents`` (range-coded integer codes) and ``scales`` (zstd float32) are the side information,
counted in every ratio.
"""

from __future__ import annotations

import numpy as np
import zstandard

from .ae_fixed import FixedPointDecoder
from .entropy import unpack_codes
from .transform import IdentityCodec


class AECodec:
    """Codec of one variable from a trained :class:`~stagelearn.analytics.autoencoder.TileAutoencoder`.

    Parameters
    ----------
    model : TileAutoencoder
        Encoder and decoder of tiles (``encode_latents`` / ``decode_latents``).
    offset : float
        Stand-in value for non-finite tiles while coding (they are sent raw).
    quant_step : float, default=1.0
        Quantization step of the residual (usually set per block from the error target).
    zstd_level : int, default=3
    """

    kind = "ae"

    def __init__(self, model, offset=0.0, quant_step=1.0, *, zstd_level=3):
        self.model = model
        self.n_features = int(model.spec.n_features)
        self.zstd_level = zstd_level
        self.quant_step = float(quant_step)
        self.fill_tile = np.full(self.n_features, offset, dtype=np.float32)
        self._residual = IdentityCodec(self.n_features, self.quant_step, zstd_level=zstd_level)
        self._decode = FixedPointDecoder(model)  # the prediction both sides reconstruct: same bits everywhere

    def residual_codec(self):
        """Value-domain quantizer of the residuals (:class:`~stagelearn.analytics.codec.IdentityCodec`)."""
        return self._residual

    def intra_reference(self, tiles):
        """Autoencoder reconstruction of each tile from its quantized latent code (choosing the codes
        may use any kernel; the reconstruction is :class:`~stagelearn.analytics.ae_fixed.FixedPointDecoder`'s).

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, n_features), float32

        Returns
        -------
        ref : ndarray of shape (n_tiles, n_features), float32
        state : (codes, scales)
            Integer latent codes (ndarray of shape (n_tiles, latent_dim), int32) and per-tile
            scales (ndarray of shape (n_tiles,), float32).
        """
        codes, scales = self.model.encode_latents(tiles)
        return self._decode(codes, scales), (codes, scales)

    def side_sections(self, state, intra):
        """Latent codes and scales of the tiles predicted by the autoencoder.

        Parameters
        ----------
        state : (codes, scales)
            As returned by :meth:`intra_reference` for all tiles of the block.
        intra : ndarray of bool of shape (n_tiles,)
            Tiles coded from their latent code (not raw, not predicted from the previous step).

        Returns
        -------
        sections : dict of str to bytes
            ``latents`` (range-coded, per-dimension Laplace model) and ``scales`` (zstd float32).
        header : dict
            ``latent_dim``.
        """
        codes, scales = state
        packed = self._residual.pack(codes[intra])
        zc = zstandard.ZstdCompressor(level=self.zstd_level)
        return ({"latents": packed, "scales": zc.compress(np.ascontiguousarray(scales[intra], dtype=np.float32).tobytes())},
                {"latent_dim": int(codes.shape[1])})

    def decode_intra(self, header, sections, n_intra):
        """Autoencoder predictions of the ``n_intra`` tiles that carry a latent code.

        Parameters
        ----------
        header : dict
            Payload header (``latent_dim``).
        sections : dict of str to bytes
            Payload sections (``latents``, ``scales``).
        n_intra : int

        Returns
        -------
        ref : ndarray of shape (n_intra, n_features), float32

        Raises
        ------
        ValueError
            If the latent sections do not match the header or the model.
        """
        k = int(header["latent_dim"])
        if k != self.model.spec.latent_dim:
            raise ValueError(f"payload latent_dim {k} differs from the model's {self.model.spec.latent_dim}")
        codes = unpack_codes(sections["latents"], n_intra, k)
        raw = zstandard.ZstdDecompressor().decompress(bytes(sections["scales"]), max_output_size=4 * n_intra + 64)
        scales = np.frombuffer(raw, dtype=np.float32).copy()
        if scales.size != n_intra or not np.all(np.isfinite(scales)) or (scales < 0).any():
            raise ValueError(f"payload latent scales: {scales.size} for {n_intra} tiles, or not finite and non-negative")
        return self._decode(codes, scales)
