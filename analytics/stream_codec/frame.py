"""One frame of the stream codec: encode/decode at a given quantization.

Payload (:mod:`.frame_header` writes and reads it, every version)::

    b"SLC1" | varint 2 len(H) + z | H = header, zstd if z | rANS words (uint16, little endian)  (versions 4, 6; 1, 3)
    b"SLC1" | varint 2 len(H) + z | H = header, zstd if z | adaptive binary code stream        (versions 5, 7; 2)

The header holds the format version, flags (temporal prediction from the previous reconstructed
frame, float64, level factors other than the defaults, another code radius, outliers present), the
shape, the finest step (float32) and, when not the defaults 1.5 and 4.0, the level factors
``alpha``, ``beta`` (float32; :func:`level_steps`), the blend weights of the levels with many
points (units of 2^-16, predicted within the frame; only with temporal prediction;
:func:`.frame_header.fitted_levels`; coarser levels reuse them), the number of rANS words (versions 5 and 2: of
code-stream bytes), the outliers (count, then raw values), the CRC-32 of the reconstruction
(uint32) and (versions 4, 3, 1) the segment histograms (version 4: :mod:`.entropy_coding` with
``compact=True``). The encoder writes whichever of the two entropy codings (:mod:`.entropy_coding`'s
static rANS with transmitted histograms, version 4; :mod:`.adaptive_coding`'s context-adaptive binary
coder, version 5) gives the shorter payload; the decoder reads every version (1-3: the header and
varint tables before 2026-12-07). Versions 4 and 5 change no code and no reconstruction; on 32
frames of ``StreamEncoder("psnr", target)`` the mean payload went from 298 to 236 bytes (heat2d
256^2, 40 dB), 758 to 665 (heat2d, 60 dB) and 523 to 461 (Allen-Cahn 128^2, 40 dB). Versions 6
and 7 are 4 and 5 for a frame coded in another axis order (``axis_order``, :mod:`.axis_order`): the header
also holds that order; the codes are those of the transposed field. Every byte a decoder needs is
in the payload except the previous reconstructed frame.
"""

from __future__ import annotations

import zlib
from dataclasses import dataclass, field

import numpy as np

from .adaptive_coding import decode_codes_adaptive, encode_codes_adaptive
from .axis_order import KernelView, from_kernel, kernel_shape, normalize_axis_order, to_kernel
from .entropy_coding import decode_codes, encode_codes, merge_segments
from .frame_header import (ADAPTIVE_VERSIONS, MAGIC, RADIUS, VERSION, VERSION_ADAPTIVE, WEIGHT_MAX,  # noqa: F401
                           WEIGHT_SCALE, StreamFormatError, default_weights, level_steps, read_header, spread,
                           write_payload)
from .frame_header import fitted_levels as _fitted_levels
from .interpolation import as_3d_shape, decode_field, encode_field, level_counts, n_levels


@dataclass
class EncodedFrame:
    """What :func:`encode_frame` returns.

    Attributes
    ----------
    payload : bytes
        Everything the decoder needs besides the previous reconstructed frame.
    reconstruction : ndarray
        The producer's closed-loop reconstruction, shape and dtype of the input; any decoder
        reproduces it bit for bit.
    stats : ndarray of float64, shape (L, 13)
        Least-squares statistics of the blend (zeros without temporal prediction).
    n_outliers : int
    sse : float
        Sum of squared errors of the reconstruction against the input.
    """

    payload: bytes  # None until finish_frame for encode_frame(..., payload=False)
    _rec: np.ndarray = field(repr=False)  # in the kernels' axis order while _rec_axis_order is set
    stats: np.ndarray
    n_outliers: int
    sse: float
    _pending: tuple = field(default=None, repr=False)  # what finish_frame codes (payload=False)
    _rec_axis_order: tuple = field(default=None, repr=False)

    @property
    def reconstruction(self):
        """The reconstruction in the input's axis order (transposed back on first use: a rate
        control's passes that are not kept never pay it)."""
        if self._rec_axis_order is not None:
            self._rec, self._rec_axis_order = from_kernel(self._rec, self._rec_axis_order), None
        return self._rec


def encode_frame(x, step, *, prev=None, weights=None, eb_abs=0.0, alpha=1.5, beta=4.0, zstd_level=3,
                 adaptive=False, payload=True, axis_order=None, view=None):
    """Encode one frame at quantization step ``step`` (closed loop).

    Parameters
    ----------
    x : ndarray, float32 or float64, any shape
    step : float
        Finest-level quantization step (> 0); the pointwise error of non-outliers is ``<= step / 2``
        plus one rounding to the dtype.
    prev : ndarray or None
        The previous frame's reconstruction (same shape and dtype): temporal prediction.
    weights : ndarray, shape (L, 3), optional
        Blend weights per level (default ``(1, 1, -1)``: interpolate the temporal difference); ``L``
        the levels of the shape in ``axis_order``.
    eb_abs : float
        Pointwise absolute bound enforced on every value (0: none); values that miss it are stored exactly.
    alpha, beta : float
        Level-wise steps (:func:`level_steps`).
    payload : bool
        False: quantize only (``reconstruction``, ``stats``, ``sse``; ``payload`` None): a rate
        control's trial pass; :func:`finish_frame` then entropy-codes the pass it keeps.
    adaptive : bool
        Also try the context-adaptive binary coder (:mod:`.adaptive_coding`) and keep the shorter
        payload (False: static rANS only, format version 4).
    axis_order : sequence of int, optional
        The axis order the kernels see (:mod:`.axis_order`, e.g. :func:`~.axis_order.choose_axis_order` of a
        keyframe; None: the given order); carried in the payload (format versions 6 and 7).
    view : KernelView, optional
        ``KernelView(x, prev, axis_order)`` made once for several calls on the same frame (a rate
        control's passes): the transposition is done once.

    Returns
    -------
    EncodedFrame

    Raises
    ------
    ValueError
        On a bad dtype, step, axis order or a ``prev`` of another shape or dtype.
    """
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise ValueError(f"stream codec: dtype {x.dtype} (float32 or float64 expected)")
    if not (step > 0 and np.isfinite(step) and np.float32(step) > 0):
        raise ValueError(f"stream codec: quantization step must be positive and finite, got {step}")
    axis_order = normalize_axis_order(axis_order, x.ndim)
    shape3 = as_3d_shape(kernel_shape(x.shape, axis_order))
    levels = n_levels(shape3)
    if prev is not None:
        prev = np.asarray(prev)
        if prev.shape != x.shape or prev.dtype != x.dtype:
            raise ValueError(f"stream codec: previous frame {prev.shape} {prev.dtype} does not match "
                             f"{x.shape} {x.dtype}")
    if view is None or not view.matches(x, prev, axis_order):
        view = KernelView(x, prev, axis_order)
    x3 = view.x.reshape(shape3)
    prev3 = None if prev is None else view.prev.reshape(shape3)
    qlev = level_steps(float(step), levels, alpha, beta)
    fitted = _fitted_levels(shape3)
    wq = default_weights(levels)
    if weights is not None and prev is not None:
        w = np.asarray(weights, dtype=np.float64).reshape(max(levels, 1), 3)
        wq[fitted] = np.clip(np.round(w[fitted] * WEIGHT_SCALE), -WEIGHT_MAX, WEIGHT_MAX).astype(np.int64)
        wq = spread(wq, fitted)
    codes, outliers, rec3, stats, sse = encode_field(x3, prev3, qlev.astype(np.float64), wq / WEIGHT_SCALE,
                                                     eb_abs=eb_abs, radius=RADIUS)
    frame = EncodedFrame(None, rec3.reshape(kernel_shape(x.shape, axis_order)), stats, len(outliers), float(sse),
                         _rec_axis_order=axis_order)
    frame._pending = (x, prev3, shape3, levels, qlev, wq[fitted], codes, outliers, (step, alpha, beta), zstd_level,
                      adaptive, axis_order)
    return finish_frame(frame) if payload else frame


def finish_frame(frame):
    """Entropy-code a frame quantized with ``encode_frame(..., payload=False)`` (sets and returns it).

    The payload is the one ``encode_frame`` with ``payload=True`` writes for the same arguments."""
    if frame.payload is not None:
        return frame
    x, prev3, shape3, levels, qlev, wfit, codes, outliers, factors, zstd_level, adaptive, axis_order = frame._pending
    rec = frame.reconstruction
    sizes = merge_segments(level_counts(shape3))
    tables, words = encode_codes(codes, sizes, compact=True)
    crc = zlib.crc32(memoryview(np.ascontiguousarray(rec)).cast("B"))
    head = (x.dtype, x.shape, prev3 is not None, factors, wfit, outliers, crc)
    static = write_payload(VERSION, *head, len(words), tables, np.asarray(words, dtype="<u2").tobytes(), zstd_level,
                           axis_order=axis_order)
    out = static
    if adaptive:
        stream = encode_codes_adaptive(codes, shape3, prev3, qlev.astype(np.float64))
        if len(stream) < len(static):
            alt = write_payload(VERSION_ADAPTIVE, *head, len(stream), b"", stream, zstd_level, axis_order=axis_order)
            if len(alt) < len(static):
                out = alt
    frame.payload, frame._pending = out, None
    return frame


def frame_info(payload):
    """Parse a payload's header (any format version).

    Returns
    -------
    info : dict
        ``shape``, ``dtype``, ``temporal`` (bool), ``levels``, ``steps``, ``weights``, ``crc32``, ``version``,
        ``n_outliers``, ``radius``, ``axis_order`` (the kernels' axis order, :mod:`.axis_order`; None: the
        given order) and the private fields :func:`decode_frame` needs.

    Raises
    ------
    StreamFormatError
        On a wrong magic or a truncated or corrupt payload.
    """
    return read_header(payload)


def decode_frame(payload, prev=None, *, verify=True):
    """Decode one frame.

    Parameters
    ----------
    payload : bytes
    prev : ndarray or None
        The previous reconstructed frame; required when the frame was encoded with temporal prediction.
    verify : bool
        Check the reconstruction's CRC-32 against the producer's.

    Returns
    -------
    rec : ndarray
        Bit for bit the producer's reconstruction.

    Raises
    ------
    StreamFormatError
        On a corrupt payload, a missing or mismatched ``prev``, or a CRC mismatch.
    """
    info = frame_info(payload)
    axis_order = info["axis_order"]
    kshape = kernel_shape(info["shape"], axis_order)
    shape3 = as_3d_shape(kshape)
    prev3 = None
    if info["temporal"]:
        if prev is None:
            raise StreamFormatError("stream codec: this frame is predicted from the previous step's reconstruction; "
                                    "pass prev=")
        prev = np.asarray(prev)
        if prev.shape != info["shape"] or prev.dtype != info["dtype"]:
            raise StreamFormatError(f"stream codec: previous frame {prev.shape} {prev.dtype} does not match "
                                    f"{info['shape']} {info['dtype']}")
        prev3 = to_kernel(prev, axis_order).reshape(shape3)
    sizes = merge_segments(level_counts(shape3))
    try:
        if info["version"] in ADAPTIVE_VERSIONS:
            codes = decode_codes_adaptive(info["_words"], shape3, prev3, info["steps"])
        else:
            codes, _ = decode_codes(info["_tables"], info["_words"], sizes, compact=info["version"] >= VERSION,
                                    max_bins=2 * info["radius"] + 2)
        rec = decode_field(codes, info["_outliers"], shape3, info["dtype"], prev3, info["steps"], info["weights"],
                           radius=info["radius"])
    except (IndexError, ValueError, OverflowError, ZeroDivisionError, MemoryError) as err:
        raise StreamFormatError(f"stream codec: corrupt payload ({err!r})") from err
    rec = from_kernel(rec.reshape(kshape), axis_order)
    if verify and zlib.crc32(memoryview(np.ascontiguousarray(rec)).cast("B")) != info["crc32"]:
        raise StreamFormatError("stream codec: decoded frame differs from the producer's reconstruction (CRC-32); "
                                "wrong previous frame?")
    return rec
