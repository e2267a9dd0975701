"""What staging learns for the stream codec and pushes to producers: per-level blend weights.

The stream codec (:mod:`stagelearn.analytics.stream_codec`) predicts each value from a blend
``w0 S(rec) + w1 p + w2 S(p)`` of the spatial interpolation of the current reconstruction, the
previous reconstructed frame ``p`` and its interpolation, per interpolation level (level 0 the
finest, stride ``2^l``). The least-squares fit of those weights needs only 13 sums per level
(Gram matrix, right-hand side, sum of squares): they add over blocks, ranks and steps, so staging
merges them *exactly* (one ``Allreduce`` of a fixed ``(MAX_LEVELS, 13)`` array) and fits once.

Producer / staging side::

    s = statistics(block, previous)             # (MAX_LEVELS, 13), this block's sums (or a BlockCode's)
    w = fit_from_statistics(s_rank_total, comm)  # collective: the same weights on every rank
    model = StreamVariableModel(weights=w)       # Encoder-compatible: arrays() + spec_entry()

The export follows :mod:`stagelearn.analytics.encoder`'s conventions: named float32 arrays
(``stream/weights``, shape ``(L, 3)``, values multiples of ``2^-16``: exactly what the payload
carries) plus a JSON entry (``kind: "stream"``, ``stream: {alpha, beta, refit}``); no pickle.
:meth:`StreamVariableModel.from_spec` validates both, as :meth:`Encoder.from_arrays` does.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

import numpy as np

from .stream_codec import fit_weights
from .stream_codec.axis_order import kernel_shape, normalize_axis_order, to_kernel
from .stream_codec.frame import WEIGHT_SCALE
from .stream_codec.interpolation import N_STATS, as_3d_shape, encode_field, n_levels

MAX_LEVELS = 32  # interpolation levels a block may have (strides up to 2^31): the merged array's rows
KIND = "stream"
REFIT = ("local", "published")
_STREAM_KEYS = {"alpha", "beta", "refit", "entropy"}
#: ``codec.entropy``: static interleaved rANS only, or also the context-adaptive binary coder per frame
ENTROPY = ("rans", "adaptive")
DEFAULT_WEIGHTS = (1.0, 1.0, -1.0)


class StreamModelError(ValueError):
    """A stream model's spec or arrays do not match the expected format."""


def pad_statistics(stats):
    """Per-level statistics ``(L, 13)`` (level 0 finest) padded with zero rows to ``(MAX_LEVELS, 13)``.

    Raises
    ------
    ValueError
        With more than ``MAX_LEVELS`` levels or a wrong number of columns.
    """
    stats = np.asarray(stats, dtype=np.float64)
    if stats.ndim != 2 or stats.shape[1] != N_STATS or stats.shape[0] > MAX_LEVELS:
        raise ValueError(f"stream statistics: shape {stats.shape}, expected (L <= {MAX_LEVELS}, {N_STATS})")
    out = np.zeros((MAX_LEVELS, N_STATS), dtype=np.float64)
    out[:stats.shape[0]] = stats
    return out


def statistics(block, previous, axis_order=None):
    """Least-squares statistics of the temporal blend for one block (staging or producer side).

    Computed as the codec computes them while encoding, on a reconstruction that is the block
    itself to within ``2^-16`` of its range (the interpolation reads the block's own values).

    Parameters
    ----------
    block : ndarray, float32 or float64, any shape
        The block at this step.
    previous : ndarray like ``block``, or None
        The block at the previous step (its reconstruction on a producer). None: zeros (no pair).
    axis_order : tuple of int, optional
        The axis order the block was coded in (:mod:`.stream_codec.axis_order`; the payload's
        ``frame_info(...)["axis_order"]``): the statistics of the levels the producer's kernels saw.

    Returns
    -------
    stats : ndarray of float64, shape (MAX_LEVELS, 13)
        Per level (row 0 finest): they add over blocks, ranks and steps.

    Raises
    ------
    ValueError
        On a ``previous`` of another shape, or a dtype other than float32/float64.
    """
    x = np.ascontiguousarray(block)
    if x.dtype not in (np.float32, np.float64):
        x = x.astype(np.float64)
    if previous is None or x.size == 0:
        return np.zeros((MAX_LEVELS, N_STATS))
    p = np.ascontiguousarray(previous, dtype=x.dtype)
    if p.shape != x.shape:
        raise ValueError(f"stream statistics: previous block {p.shape} does not match {x.shape}")
    finite = np.isfinite(x) & np.isfinite(p)
    if not finite.all():  # the sums need finite values: non-finite cells contribute nothing
        x, p = np.where(finite, x, 0).astype(x.dtype), np.where(finite, p, 0).astype(x.dtype)
    axis_order = normalize_axis_order(axis_order, x.ndim)
    shape3 = as_3d_shape(kernel_shape(x.shape, axis_order))
    levels = n_levels(shape3)
    span = float(np.max(np.abs(x))) or 1.0
    q = np.full(levels + 1, span * 2.0 ** -16)
    w = np.tile(np.asarray(DEFAULT_WEIGHTS), (max(levels, 1), 1))
    _, _, _, stats, _ = encode_field(to_kernel(x, axis_order).reshape(shape3), to_kernel(p, axis_order).reshape(shape3),
                                     q, w)
    return pad_statistics(stats)


def fit_from_statistics(stats, comm=None):
    """Blend weights fitted from statistics summed over ``comm`` (collective when ``comm`` is given).

    One ``Allreduce`` (SUM) of the ``(MAX_LEVELS, 13)`` array merges every rank's sums; the fit
    (:func:`~stagelearn.analytics.stream_codec.fit_weights`) then runs on identical input on every
    rank, so every rank gets the same weights.

    Parameters
    ----------
    stats : ndarray of float64, shape (L, 13) with L <= MAX_LEVELS
        This rank's sums (zeros when it has no pair).
    comm : mpi4py.MPI.Comm, optional

    Returns
    -------
    weights : ndarray of float64, shape (MAX_LEVELS, 3)
        Rounded to the ``2^-16`` grid the payload uses; ``(1, 1, -1)`` where a level has no statistics.
    merged : ndarray of float64, shape (MAX_LEVELS, 13)
        The merged statistics.
    """
    merged = pad_statistics(stats)
    if comm is not None and comm.Get_size() > 1:
        from mpi4py import MPI

        comm.Allreduce(MPI.IN_PLACE, merged, op=MPI.SUM)
    return quantize_weights(fit_weights(merged)), merged


def quantize_weights(weights):
    """Weights on the payload's grid (multiples of ``2^-16``; exact in float32 within ``[-256, 256]``)."""
    w = np.asarray(weights, dtype=np.float64)
    return np.clip(np.round(w * WEIGHT_SCALE), -256 * WEIGHT_SCALE, 256 * WEIGHT_SCALE) / WEIGHT_SCALE


@dataclass
class StreamVariableModel:
    """One variable's stream-codec model: published blend weights and the codec's level factors.

    Attributes
    ----------
    weights : ndarray of float64, shape (L, 3), or None
        Blend weights per level (row 0 finest); None: ``(1, 1, -1)`` until fitted.
    alpha, beta : float
        Level-wise quantization steps (:func:`~stagelearn.analytics.stream_codec.frame_header.level_steps`).
    refit : {"local", "published"}
        ``local``: a producer refits each block's weights from that block's previous frame (the
        codec's own statistics, no communication) and uses ``weights`` only where it has none yet
        (after a keyframe, a new block); ``published``: always ``weights``.
    entropy : {"rans", "adaptive"}
        ``rans``: static interleaved rANS (payload format 4, fast); ``adaptive``: each frame is also
        coded with the context-adaptive binary coder and the shorter payload is sent (format 5 or
        4; 3-8x the encode time for 0.5-36 % fewer bytes, docs/codec.md). Decoders read both.
    data_min, data_max : float
        Value range seen (as :class:`~stagelearn.analytics.encoder.VariableModel`).
    """

    weights: np.ndarray = None
    alpha: float = 1.5
    beta: float = 4.0
    refit: str = "local"
    entropy: str = "rans"
    data_min: float = 0.0
    data_max: float = 0.0
    kind: str = KIND
    tile_shape: tuple = (1,)  # no tiles: the whole block is one field (kept for report/header code)

    def __post_init__(self):
        if self.refit not in REFIT:
            raise StreamModelError(f"stream model: refit {self.refit!r} (expected one of {', '.join(REFIT)})")
        if self.entropy not in ENTROPY:
            raise StreamModelError(f"stream model: entropy {self.entropy!r} (expected one of {', '.join(ENTROPY)})")
        for name in ("alpha", "beta"):
            v = getattr(self, name)
            if not (isinstance(v, (int, float)) and math.isfinite(v) and 1.0 <= v <= 16.0):
                raise StreamModelError(f"stream model: {name} must be a number in [1, 16], got {v!r}")
        if self.weights is not None:
            w = np.asarray(self.weights, dtype=np.float64)
            if w.ndim != 2 or w.shape[1] != 3 or not 1 <= w.shape[0] <= MAX_LEVELS or not np.isfinite(w).all():
                raise StreamModelError(f"stream model: weights of shape {w.shape} (expected finite (L <= "
                                       f"{MAX_LEVELS}, 3))")
            self.weights = quantize_weights(w)

    @property
    def adaptive(self):
        """True when frames may use the context-adaptive binary coder (``entropy == "adaptive"``)."""
        return self.entropy == "adaptive"

    def level_weights(self, levels):
        """The weights of a block with ``levels`` levels, shape ``(max(levels, 1), 3)``."""
        n = max(int(levels), 1)
        out = np.tile(np.asarray(DEFAULT_WEIGHTS), (n, 1))
        if self.weights is not None:
            k = min(n, self.weights.shape[0])
            out[:k] = self.weights[:k]
        return out

    def codec(self):
        """This model (the stream codec needs no other object; mirrors ``VariableModel.codec()``)."""
        return self

    # ------------------------------------------------------------ Encoder conventions
    def arrays(self):
        """Named arrays without the variable prefix: ``stream/weights`` (float32, exact), or none."""
        if self.weights is None:
            return {}
        return {"stream/weights": np.array(self.weights, dtype=np.float32, order="C")}

    def spec_entry(self):
        """The variable's JSON entry in an encoder spec (``arrays`` lists shape and dtype)."""
        return {"kind": KIND, "tile_shape": list(self.tile_shape), "data_min": float(self.data_min),
                "data_max": float(self.data_max), "autoencoder": None,
                "stream": {"alpha": float(self.alpha), "beta": float(self.beta), "refit": self.refit,
                           "entropy": self.entropy},
                "arrays": {a: {"shape": list(v.shape), "dtype": "float32"} for a, v in self.arrays().items()}}

    @classmethod
    def from_spec(cls, name, entry, arrays):
        """Rebuild and validate a model from its spec entry and its arrays (without the variable prefix).

        Raises
        ------
        StreamModelError
            On a wrong kind, unknown ``stream`` keys, arrays that differ from the spec, non-finite
            weights or weights off the ``2^-16`` grid.
        """
        try:
            if entry.get("kind") != KIND:
                raise StreamModelError(f"encoder variable {name}: kind {entry.get('kind')!r}, expected {KIND!r}")
            st = entry.get("stream")
            if not isinstance(st, dict) or set(st) - _STREAM_KEYS:
                raise StreamModelError(f"encoder variable {name}: 'stream' must be an object with keys "
                                       f"{sorted(_STREAM_KEYS)}, got {st!r}")
            declared = entry.get("arrays") or {}
            if set(declared) != set(arrays) or set(arrays) - {"stream/weights"}:
                raise StreamModelError(f"encoder variable {name}: arrays {sorted(arrays)} do not match the spec "
                                       f"{sorted(declared)} (a stream model carries at most 'stream/weights')")
            w = None
            if arrays:
                w = np.asarray(arrays["stream/weights"])
                want = declared["stream/weights"]
                if w.dtype != np.float32 or want.get("dtype") != "float32" or list(w.shape) != list(want["shape"]):
                    raise StreamModelError(f"encoder array {name}/stream/weights: got {w.dtype}{list(w.shape)}, "
                                           f"spec says {want.get('dtype')}{want.get('shape')}")
                if not np.isfinite(w).all() or np.any(np.round(w.astype(np.float64) * WEIGHT_SCALE)
                                                      != w.astype(np.float64) * WEIGHT_SCALE):
                    raise StreamModelError(f"encoder array {name}/stream/weights: non-finite or off the 2^-16 grid")
                w = w.astype(np.float64)
            for key in ("alpha", "beta"):
                v = st.get(key, 1.0)
                if isinstance(v, bool) or not isinstance(v, (int, float)):
                    raise StreamModelError(f"encoder variable {name}: stream.{key} must be a number in [1, 16], "
                                           f"got {v!r}")
            return cls(weights=w, alpha=float(st.get("alpha", 1.5)), beta=float(st.get("beta", 4.0)),
                       refit=st.get("refit", "local"), entropy=st.get("entropy", "rans"), data_min=float(entry.get("data_min", 0.0)),
                       data_max=float(entry.get("data_max", 0.0)))
        except (KeyError, TypeError, AttributeError, ValueError) as exc:
            if isinstance(exc, StreamModelError):
                raise
            raise StreamModelError(f"encoder variable {name}: stream model spec is malformed: {exc!r}") from None
