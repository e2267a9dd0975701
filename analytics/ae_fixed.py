"""Autoencoder decoding that is bit for bit the same on every machine.

The autoencoder's prediction of a tile is part of what producer and decoder both reconstruct,
so it must not depend on the BLAS kernel, thread count, CPU or memory alignment (PyTorch's CPU
matrix products depend on all of them). :class:`FixedPointDecoder` evaluates the decoder network
with numpy in float64 fixed point:

- each layer is an affine map (the linear layer, or a transposed convolution on the fixed tile
  extent, written as a dense matrix by applying it in float64 to the identity basis: exact, as
  every output is one weight times one), followed by LeakyReLU;
- the weights are rounded once to integers on a ``2**-shift`` grid
  (:class:`~stagelearn.analytics.fixed_point.FixedPointBasis`);
- the activations of each tile are rounded to integers on a grid of ``2**-26`` times the tile's
  largest activation (a power of two, so scaling is exact); the integer products and their sums
  then stay below ``2**53`` and are exact in any summation order;
- the bias, the LeakyReLU and the final de-normalisation are elementwise float64 operations,
  rounded once to float32 at the end.

Each tile's output depends only on its own latent code and scale. The result differs from
:meth:`TileAutoencoder.decode_latents <stagelearn.analytics.autoencoder.TileAutoencoder.decode_latents>`
by about float32 rounding noise; it is a prediction, and the residual is coded after it.
"""

from __future__ import annotations

import copy
import math

import numpy as np
import torch
from torch import nn

from .fixed_point import FixedPointBasis

_ACT_BITS = 26  # activations: integers up to 2**26 per tile; weights then get 2**27 of column L1
_DENSE_MAX = 2**24  # largest dense layer matrix (entries, float64: 128 MiB)


def _dense(layer, shape):
    """``(W, b, out_shape)`` of an affine layer on inputs of shape ``shape``, float64 (exact)."""
    if isinstance(layer, nn.Linear):
        W = layer.weight.detach().to("cpu", torch.float64).T.numpy().copy()
        b = layer.bias.detach().to("cpu", torch.float64).numpy().copy()
        return W, b, (W.shape[1],)
    n_in = math.prod(shape)
    lay = copy.deepcopy(layer).to("cpu", torch.float64)
    bias = lay.bias.detach().clone()
    with torch.no_grad():
        lay.bias.zero_()
        probe = lay(torch.zeros((1,) + tuple(shape), dtype=torch.float64))
        out_shape = tuple(probe.shape[1:])
        if n_in * math.prod(out_shape) > _DENSE_MAX:
            raise ValueError(f"decoder layer {layer} on {shape} is too large for a dense matrix "
                             f"({n_in} x {math.prod(out_shape)} entries)")
        W = lay(torch.eye(n_in, dtype=torch.float64).reshape((n_in,) + tuple(shape))).reshape(n_in, -1).numpy()
    b = bias.repeat_interleave(math.prod(out_shape) // bias.numel()).numpy()  # channel-major, as Flatten
    return W, b, out_shape


class FixedPointDecoder:
    """The decoder of a :class:`~stagelearn.analytics.autoencoder.TileAutoencoder` in exact fixed point.

    Parameters
    ----------
    model : TileAutoencoder
        Its ``decoder`` (linear, transposed-convolution, LeakyReLU and Unflatten layers) and ``spec``
        (``latent_dim``, ``scale``, ``offset``) are read once; later changes to the model are not seen.

    Raises
    ------
    ValueError
        If a layer is of another type or too large to hold as a dense matrix.
    """

    def __init__(self, model):
        spec = model.spec
        self.latent_dim, self.n_features = int(spec.latent_dim), int(spec.n_features)
        self.scale, self.offset = float(spec.scale), float(spec.offset)
        self.layers = []  # ("affine", FixedPointBasis or None, bias) or ("leaky", slope)
        self.finite = True
        shape = (self.latent_dim,)
        for layer in model.decoder:
            if isinstance(layer, nn.Unflatten):
                shape = tuple(layer.unflattened_size)
            elif isinstance(layer, nn.Flatten):
                shape = (math.prod(shape),)
            elif isinstance(layer, nn.LeakyReLU):
                self.layers.append(("leaky", float(layer.negative_slope)))
            elif isinstance(layer, (nn.Linear, nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d,
                                    nn.Conv1d, nn.Conv2d, nn.Conv3d)):
                W, b, shape = _dense(layer, shape)
                if not np.all(np.isfinite(b)):
                    self.finite = False  # a diverged network: every prediction is NaN (tiles go raw)
                    b = np.zeros_like(b)
                basis = FixedPointBasis(W, max_code=2**_ACT_BITS)
                self.finite &= basis.finite
                self.layers.append(("affine", basis, b))
            else:
                raise ValueError(f"no fixed-point form for decoder layer {layer!r}")
        if math.prod(shape) != self.n_features:
            raise ValueError(f"decoder ends with {math.prod(shape)} values, tiles have {self.n_features}")

    def __call__(self, codes, scales):
        """Tiles from quantized latents (``codes`` of shape (n_tiles, latent_dim), integer, and per-tile
        ``scales`` of shape (n_tiles,), float32), as ``TileAutoencoder.decode_latents`` but exact.

        Returns an ndarray of shape (n_tiles, n_features), float32, in field units, with NaN rows
        where the network overflows (every row for a diverged network); raises ValueError if the
        shapes do not match the model.
        """
        codes, scales = np.asarray(codes), np.asarray(scales, dtype=np.float32)
        n = codes.shape[0] if codes.ndim == 2 else -1
        if codes.ndim != 2 or codes.shape[1] != self.latent_dim or scales.shape != (n,):
            raise ValueError(f"codes must have shape (n, {self.latent_dim}) and scales (n,), "
                             f"got {codes.shape} and {scales.shape}")
        h = codes.astype(np.float64) * scales.astype(np.float64)[:, None]  # elementwise: the same everywhere
        bad = np.zeros(n, dtype=bool)
        for layer in self.layers:
            if layer[0] == "leaky":
                h = np.where(h > 0, h, h * layer[1])
                continue
            _, basis, bias = layer
            top = np.max(np.abs(h), axis=1) if h.shape[1] else np.zeros(n)
            bad |= ~np.isfinite(top)
            _, e = np.frexp(np.where(bad, 0.0, top))  # |h| < 2**e per tile (exact)
            e = np.maximum(e, -960)  # keeps 2**(_ACT_BITS - e) finite; tinier rows only lose precision
            # multiplications by powers of two (exact): to integers below 2**_ACT_BITS, and back
            h = np.rint(np.where(bad[:, None], 0.0, h) * np.ldexp(1.0, _ACT_BITS - e)[:, None])
            h = h @ basis.ints  # integers below 2**53: exact in any order
            h *= np.ldexp(1.0, e - _ACT_BITS - basis.shift)[:, None]
            h += bias
        with np.errstate(over="ignore", invalid="ignore"):  # overflowing tiles become NaN rows below
            out = (h * self.scale + self.offset).astype(np.float32)
        out[bad | ~np.all(np.isfinite(out), axis=1)] = np.nan
        if not self.finite:
            out[:] = np.nan
        return out
