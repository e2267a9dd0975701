"""Convolutional autoencoder for flattened tiles, with quantized latents.

A tile of shape ``tile_shape`` (1, 2 or 3 axes) is normalised as ``(x - offset) / scale``,
encoded by ``len(channels)`` convolution stages (3-wide kernels, stride 2 along every axis
still longer than 1, LeakyReLU) and a linear map to ``latent_dim`` values, and decoded by the
mirror image (linear map, transposed convolutions). On a 4x4x4 tile two stages reach 1x1x1.

The latents of each tile are quantized to signed ``latent_bits``-bit integers with one float32
scale per tile, ``s = max|z| / (2**(latent_bits - 1) - 1)``; training passes gradients through
the rounding with the straight-through estimator of Theis et al., "Lossy image compression
with compressive autoencoders" (ICLR 2017).

Models travel as a JSON-serialisable :class:`~.ae_spec.AESpec` (:mod:`.ae_spec`, re-exported
here) plus float32 arrays (:func:`named_arrays` / :func:`from_arrays`), never as pickles.
"""

from __future__ import annotations

import logging
import math

import numpy as np
import torch
from torch import nn
from torch.func import functional_call

from .ae_spec import (FORMAT, MAX_CHANNELS, MAX_FEATURES, MAX_LATENT_DIM, AEFormatError, AESpec, spec_from_data,
                      validate_spec)

logger = logging.getLogger(__name__)

_SCALE_FLOOR = 1e-30  # per-tile latent scale when all latents are 0 (float32-representable)
_CHUNK = 4096  # tiles per forward pass in the numpy API (small chunks stay in cache)
_DENSE_MAX = 2 ** 22  # largest identity basis / dense matrix (entries) replacing a convolution

__all__ = ["FORMAT", "MAX_CHANNELS", "MAX_FEATURES", "MAX_LATENT_DIM", "AEFormatError", "AESpec", "TileAutoencoder",
           "from_arrays", "named_arrays", "quantize_latents", "spec_from_data", "ste_quantize", "validate_spec"]


# ---------------------------------------------------------------------- quantization
def quantize_latents(z, bits):
    """Round latents to ``bits``-bit signed codes with one scale per tile.

    Parameters
    ----------
    z : torch.Tensor of shape (n, latent_dim), float32
    bits : int

    Returns
    -------
    codes : torch.Tensor of shape (n, latent_dim), float32
        Integer-valued, ``|codes| <= 2**(bits - 1) - 1``.
    scales : torch.Tensor of shape (n,), float32
        ``max_j |z_ij| / (2**(bits - 1) - 1)``, at least ``1e-30``; no gradient.
    """
    max_code = 2 ** (bits - 1) - 1
    scales = (z.detach().abs().amax(dim=1) / max_code).clamp_min(_SCALE_FLOOR)
    codes = torch.round(z / scales[:, None]).clamp(-max_code, max_code)
    return codes, scales


def ste_quantize(z, bits):
    """Quantize-dequantize ``z`` with a straight-through gradient (identity backward).

    Parameters
    ----------
    z : torch.Tensor of shape (n, latent_dim)
    bits : int

    Returns
    -------
    z_hat : torch.Tensor of shape (n, latent_dim)
        Value ``codes * scales``; gradient that of ``z``.
    """
    codes, scales = quantize_latents(z, bits)
    return z + (codes * scales[:, None] - z).detach()


# ---------------------------------------------------------------------------- model
def _writable(a):
    """``a``, or a copy of it when read-only (``torch.from_numpy`` warns on read-only arrays)."""
    return a if a.flags.writeable else a.copy()


_CONV = {1: nn.Conv1d, 2: nn.Conv2d, 3: nn.Conv3d}
_CONV_T = {1: nn.ConvTranspose1d, 2: nn.ConvTranspose2d, 3: nn.ConvTranspose3d}


def _flat_layers(seq, shape):
    """The layers of ``seq`` as functions on flattened ``(n, features)`` tensors (inference only).

    Convolutions on a tiny fixed input are affine maps, and a dense matrix product is far
    faster on the CPU than PyTorch's small (transposed) 3-D convolutions (about 25x for the
    4x4x4 decoder). Each linear layer whose identity basis and dense matrix stay under
    ``_DENSE_MAX`` entries is replaced by ``h @ W + b``, with ``W`` the layer applied (without
    bias) to the identity basis; larger ones run as modules.

    Parameters
    ----------
    seq : torch.nn.Sequential
        Linear and convolution layers, LeakyReLU, Flatten and Unflatten.
    shape : tuple of int
        Input shape of one sample, e.g. ``(1, 4, 4, 4)``.

    Returns
    -------
    layers : list of callable
        Maps from (n, prod(shape)) tensors to (n, features) tensors, in order.
    """
    dev = next(seq.parameters()).device
    layers = []
    for layer in seq:
        out_shape = tuple(layer(torch.zeros((1,) + shape, device=dev)).shape[1:])
        n_in, n_out = math.prod(shape), math.prod(out_shape)
        if isinstance(layer, (nn.Flatten, nn.Unflatten)):
            pass  # flattened C order throughout
        elif isinstance(layer, nn.LeakyReLU):
            layers.append(layer)
        elif isinstance(layer, nn.Linear):
            layers.append(_Affine(layer.weight.T.contiguous(), layer.bias))
        elif n_in * max(n_in, n_out) <= _DENSE_MAX:
            basis = torch.eye(n_in, device=dev).reshape((n_in,) + shape)
            W = functional_call(layer, {"weight": layer.weight, "bias": torch.zeros_like(layer.bias)}, (basis,))
            b = layer.bias.repeat_interleave(n_out // layer.bias.numel())  # channel-major, as Flatten
            layers.append(_Affine(W.reshape(n_in, n_out), b))
        else:
            layers.append(_Unflattened(layer, shape))
        shape = out_shape
    return layers


class _Affine:
    """``h @ W + b`` on (n, n_in) tensors."""

    def __init__(self, W, b):
        self.W, self.b = W, b

    def __call__(self, h):
        return torch.addmm(self.b, h, self.W)


class _Unflattened:
    """``layer`` applied to (n, prod(shape)) tensors viewed as (n, *shape), output flattened."""

    def __init__(self, layer, shape):
        self.layer, self.shape = layer, shape

    def __call__(self, h):
        return self.layer(h.reshape((-1,) + self.shape)).flatten(1)


def _run(layers, h):
    for layer in layers:
        h = layer(h)
    return h


def _stage_extents(tile_shape, depth):
    """Extents before each stage and after the last: list of ``depth + 1`` tuples."""
    extents = [tuple(tile_shape)]
    for _ in range(depth):
        extents.append(tuple((e + 1) // 2 if e > 1 else 1 for e in extents[-1]))
    return extents


class TileAutoencoder(nn.Module):
    """Convolutional autoencoder on flattened tiles (see the module docstring).

    Parameters
    ----------
    spec : AESpec or dict
        Architecture and normalisation; validated with :func:`validate_spec`.

    Attributes
    ----------
    spec : AESpec
    encoder, decoder : torch.nn.Sequential
        Normalised tiles of shape (n, 1, *tile_shape) to latents of shape (n, latent_dim),
        and back.

    Notes
    -----
    ``forward`` works in normalised units on torch tensors (training); ``encode_latents``,
    ``decode_latents`` and ``reconstruct`` work in field units on numpy arrays, without
    autograd, in chunks of 4096 tiles, with small convolutions evaluated as dense matrix
    products (same maps, rounding differs from ``forward`` by a few float32 ulps).
    """

    def __init__(self, spec):
        super().__init__()
        self.spec = spec = validate_spec(spec)
        nd, ch = len(spec.tile_shape), spec.channels
        extents = _stage_extents(spec.tile_shape, len(ch))
        strides = [tuple(2 if e > 1 else 1 for e in ext) for ext in extents[:-1]]
        enc, c_in = [], 1
        for c_out, stride in zip(ch, strides):
            enc += [_CONV[nd](c_in, c_out, 3, stride=stride, padding=1), nn.LeakyReLU(0.1)]
            c_in = c_out
        bottom = ch[-1] * math.prod(extents[-1])
        enc += [nn.Flatten(), nn.Linear(bottom, spec.latent_dim)]
        self.encoder = nn.Sequential(*enc)
        dec = [nn.Linear(spec.latent_dim, bottom), nn.LeakyReLU(0.1), nn.Unflatten(1, (ch[-1],) + extents[-1])]
        for i in reversed(range(len(ch))):
            c_out = ch[i - 1] if i > 0 else 1
            # output_padding restores even extents: stride 2 maps e -> ceil(e / 2) -> 2 * ceil(e / 2) - 1 + pad
            pad = tuple(1 if s == 2 and e % 2 == 0 else 0 for s, e in zip(strides[i], extents[i]))
            dec.append(_CONV_T[nd](ch[i], c_out, 3, stride=strides[i], padding=1, output_padding=pad))
            if i > 0:
                dec.append(nn.LeakyReLU(0.1))
        self.decoder = nn.Sequential(*dec)

    # -- torch, normalised units
    def encode(self, x):
        """Latents of normalised flattened tiles: (n, d) tensor -> (n, latent_dim) tensor."""
        return self.encoder(x.reshape((-1, 1) + self.spec.tile_shape))

    def decode(self, z):
        """Normalised flattened tiles from latents: (n, latent_dim) tensor -> (n, d) tensor."""
        return self.decoder(z).reshape(z.shape[0], -1)

    def forward(self, x, quantize=True):
        """Reconstruct normalised tiles through (straight-through) quantized latents.

        Parameters
        ----------
        x : torch.Tensor of shape (n, prod(tile_shape)), float32
            Normalised tiles, ``(tiles - offset) / scale``.
        quantize : bool, default=True
            Pass the latents through :func:`ste_quantize`.

        Returns
        -------
        x_hat : torch.Tensor of shape (n, prod(tile_shape))
        """
        z = self.encode(x)
        return self.decode(ste_quantize(z, self.spec.latent_bits) if quantize else z)

    # -- numpy, field units
    def _tiles(self, tiles):
        tiles = np.asarray(tiles)
        if tiles.ndim != 2 or tiles.shape[1] != self.spec.n_features:
            raise ValueError(f"tiles must have shape (n_tiles, {self.spec.n_features}), got {tiles.shape}")
        return np.ascontiguousarray(tiles, dtype=np.float32)

    def _param_device(self):
        return next(self.parameters()).device

    def encode_latents(self, tiles):
        """Quantized latents of tiles.

        Parameters
        ----------
        tiles : ndarray of shape (n_tiles, prod(tile_shape))
            Field values (cast to float32), tiles flattened in C order.

        Returns
        -------
        codes : ndarray of shape (n_tiles, latent_dim), int32
            ``|codes| <= 2**(latent_bits - 1) - 1``.
        scales : ndarray of shape (n_tiles,), float32
            Per-tile step: latents are ``codes * scales[:, None]``.
        """
        tiles = self._tiles(tiles)
        spec, n, dev = self.spec, tiles.shape[0], self._param_device()
        codes = np.empty((n, spec.latent_dim), dtype=np.int32)
        scales = np.empty(n, dtype=np.float32)
        with torch.inference_mode():
            encoder = _flat_layers(self.encoder, (1,) + spec.tile_shape)
            for i in range(0, n, _CHUNK):
                x = torch.from_numpy(_writable(tiles[i:i + _CHUNK])).to(dev)
                q, s = quantize_latents(_run(encoder, (x - spec.offset) / spec.scale), spec.latent_bits)
                codes[i:i + _CHUNK] = q.to(torch.int32).cpu().numpy()
                scales[i:i + _CHUNK] = s.cpu().numpy()
        return codes, scales

    def decode_latents(self, codes, scales):
        """Tiles from quantized latents.

        Parameters
        ----------
        codes : ndarray of shape (n_tiles, latent_dim), int
        scales : ndarray of shape (n_tiles,), float32

        Returns
        -------
        tiles : ndarray of shape (n_tiles, prod(tile_shape)), float32
            Field units.
        """
        codes, scales = np.asarray(codes), np.asarray(scales, dtype=np.float32)
        spec, n, dev = self.spec, codes.shape[0], self._param_device()
        if codes.ndim != 2 or codes.shape[1] != spec.latent_dim or scales.shape != (n,):
            raise ValueError(f"codes must have shape (n, {spec.latent_dim}) and scales (n,), "
                             f"got {codes.shape} and {scales.shape}")
        out = np.empty((n, spec.n_features), dtype=np.float32)
        with torch.inference_mode():
            decoder = _flat_layers(self.decoder, (spec.latent_dim,))
            for i in range(0, n, _CHUNK):
                m = min(_CHUNK, n - i)
                # Every chunk is padded to _CHUNK rows: matrix-product kernels may round a row
                # differently for different batch sizes, and producer and decoder decode different
                # subsets of tiles; a fixed shape makes each tile's output bit-identical on both.
                q = np.zeros((_CHUNK, spec.latent_dim), dtype=np.float32)
                q[:m] = codes[i:i + m]
                s = np.zeros(_CHUNK, dtype=np.float32)
                s[:m] = scales[i:i + m]
                z = torch.from_numpy(q).to(dev) * torch.from_numpy(s).to(dev)[:, None]
                out[i:i + m] = (_run(decoder, z) * spec.scale + spec.offset).cpu().numpy()[:m]
        return out

    def reconstruct(self, tiles):
        """``decode_latents(*encode_latents(tiles))``: ndarray of shape (n_tiles, d), float32."""
        return self.decode_latents(*self.encode_latents(tiles))


# ------------------------------------------------------------------- weight transfer
def named_arrays(model):
    """The model's weights as float32 numpy arrays (no pickle).

    Parameters
    ----------
    model : TileAutoencoder

    Returns
    -------
    arrays : dict of str to ndarray
        ``state_dict`` names to C-contiguous float32 copies.
    """
    return {k: np.ascontiguousarray(v.detach().cpu().numpy(), dtype=np.float32).copy()
            for k, v in model.state_dict().items()}


def from_arrays(spec, arrays):
    """Rebuild a :class:`TileAutoencoder` from its spec and :func:`named_arrays`.

    Parameters
    ----------
    spec : AESpec or dict
    arrays : mapping of str to ndarray
        Exactly the model's parameter names; float32, the expected shapes, finite values.

    Returns
    -------
    model : TileAutoencoder
        On the CPU; outputs bit-for-bit those of the exported model (same device and threads).

    Raises
    ------
    AEFormatError
        If the spec is invalid, or a name is missing or unexpected, or an array has the wrong
        shape, a dtype other than float32, or NaN/Inf values.
    """
    with torch.device("meta"):  # shapes first, without allocating: a hostile spec costs nothing
        expected = TileAutoencoder(spec).state_dict()
    missing = sorted(set(expected) - set(arrays))
    unexpected = sorted(set(arrays) - set(expected))
    if missing or unexpected:
        raise AEFormatError(f"weights do not match the spec: missing {missing}, unexpected {unexpected}")
    state = {}
    for name, ref in expected.items():
        a = arrays[name]
        if not isinstance(a, np.ndarray) or a.dtype != np.float32:
            raise AEFormatError(f"weight {name!r} must be a float32 ndarray, got "
                                f"{getattr(a, 'dtype', type(a).__name__)}")
        if a.shape != tuple(ref.shape):
            raise AEFormatError(f"weight {name!r} must have shape {tuple(ref.shape)}, got {a.shape}")
        if not np.all(np.isfinite(a)):
            raise AEFormatError(f"weight {name!r} contains NaN or Inf")
        state[name] = torch.from_numpy(np.array(a, dtype=np.float32, order="C"))
    model = TileAutoencoder(spec)
    model.load_state_dict(state, strict=True)
    return model
