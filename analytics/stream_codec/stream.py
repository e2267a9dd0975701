"""Stateful stream encoder/decoder: closed-loop temporal prediction, fitted blend, rate control.

A :class:`StreamEncoder` encodes one variable's frames in time order. Each frame is predicted by
multilevel interpolation blended with the previous *reconstructed* frame (the decoder has it), with
per-level blend weights fitted by least squares from the statistics gathered while encoding the
previous frame (or set from outside with :meth:`StreamEncoder.set_weights`, e.g. fitted in staging
from statistics merged over ranks: they merge by addition). The error target is met on the
producer, against the caller's own values:

- ``psnr``: the step is predicted from the last frame's ratio of measured MSE to ``step^2 / 12``
  (floored: :func:`min_mse_factor`); if the measured PSNR misses the target the frame is re-encoded
  with a smaller step;
- ``abs``: every value within ``target`` (step ``2 target``, checked pointwise; misses stored exactly);
- ``step``: a fixed finest-level quantization step.

The axis order the kernels see (:class:`~.axis_order.AxisOrderChooser`) is chosen at
keyframes from the frame and at the first predicted frame after each from its difference to the
keyframe's values (smooth where the field is not: the gyrokinetic mock's changes are smooth in
velocity and steep in ``phi``, the field itself the other way round); the next predicted frames
keep it.
"""

from __future__ import annotations

import math
import numbers

import numpy as np

from .axis_order import AxisOrderChooser, KernelView, kernel_shape, normalize_axis_order, to_kernel
from .frame import decode_frame, encode_frame, finish_frame
from .interpolation import as_3d_shape, encode_field, fit_weights, n_levels

MODES = ("psnr", "abs", "step")
MIN_MSE_FACTOR = 0.1  # the step is at most 3.2 sqrt(12 target MSE)
MIN_MSE_FACTOR_PREDICTABLE = 0.01  # ... 10 sqrt(12 target MSE) on a predicted frame of a predictable block
PREDICTABLE_RHO = 4.0  # predictable: its last keyframe cost more than this many of the predicted frames after it
PREDICTED_WINDOW = 15  # the predicted frames' bytes are a mean over about this many frames (update_group)


def update_group(group, nbytes, keyframe):
    """Count a kept frame in a block's group ``[keyframe bytes, predicted bytes, predicted frames]``.

    A keyframe starts a new group; a predicted frame adds its bytes and 1. Beyond
    ``PREDICTED_WINDOW`` predicted frames the bytes and count are scaled down to that many (the
    mean is then over about the last ``PREDICTED_WINDOW`` frames: with ``keyframe_every=0`` it
    would never forget); groups of at most ``PREDICTED_WINDOW`` predicted frames are plain sums.
    The one bookkeeping of :func:`min_mse_factor` (``StreamEncoder``) and of the run's rate control
    (:mod:`stagelearn.analytics.stream_rate`: the step cap, ``intra_bound``).

    Parameters
    ----------
    group : list
        ``[key_bytes, predicted_bytes, predicted]``; updated in place.
    nbytes : int
        Payload bytes of the kept frame.
    keyframe : bool
        True for a frame coded on its own.

    Returns
    -------
    list
        ``group``.
    """
    if keyframe:
        group[:] = [nbytes, 0, 0]
        return group
    group[1] += nbytes
    group[2] += 1
    if group[2] > PREDICTED_WINDOW:
        group[1] = group[1] * PREDICTED_WINDOW / group[2]
        group[2] = PREDICTED_WINDOW
    return group


def min_mse_factor(key_bytes, predicted_bytes, predicted):
    """Floor of the error model's ``MSE / (step^2 / 12)`` for a block's next predicted frame.

    From the bytes of the block's last keyframe and of the ``predicted`` frames coded after it
    (:func:`update_group`: about the last ``PREDICTED_WINDOW``): the step is at most
    ``sqrt(12 target_mse / floor)`` (the rate control's step cap; keyframes: ``MIN_MSE_FACTOR``).

    Where most codes are 0 the error is the prediction's and the model says little; a step far above
    ``sqrt(12 target_mse)`` lets the reconstruction lag behind the field. On a block whose predicted
    frames cost little next to its keyframe (more than ``PREDICTABLE_RHO`` of them to one keyframe:
    the field changes slowly against the error target) the lag grows slowly and the cap is
    ``MIN_MSE_FACTOR_PREDICTABLE``; elsewhere ``MIN_MSE_FACTOR``. Measured before 2026-12-08 (the run's
    rate control then also held the step at the ``MIN_MSE_FACTOR`` cap after a frame whose error did
    not grow with the step; 32 frames, settings 30-70 dB and four shifted grids, docs/codec.md): on the gyrokinetic mock
    (predicted frames 1/3-1/78 of a keyframe) ``stream_step`` 1.09-1.11x / 1.06-1.13x / 1.00-1.02x
    the ratio at 40 / 50 / 60 dB and ``stream`` 1.05-1.21x / 1.34-1.38x / 1.03-1.08x; heat2d's plume
    (predicted frames ~1x a keyframe: header-bound), Gray-Scott and turbulence2d unchanged byte for
    byte, Allen-Cahn within 0.6 %. A looser cap everywhere cost heat2d 3-13 % at 40 dB: a frame spent
    its whole error on the lag and the next one paid a burst of 5-10x the bytes.

    Parameters
    ----------
    key_bytes : int
        Payload bytes of the block's last keyframe.
    predicted_bytes : float
        Payload bytes of the predicted frames coded after it (windowed: :func:`update_group`).
    predicted : int
        How many predicted frames that was (0: the first after the keyframe, ``MIN_MSE_FACTOR``).

    Returns
    -------
    float
        ``MIN_MSE_FACTOR`` or ``MIN_MSE_FACTOR_PREDICTABLE``.
    """
    if predicted >= 1 and predicted_bytes > 0 and key_bytes * predicted > PREDICTABLE_RHO * predicted_bytes:
        return MIN_MSE_FACTOR_PREDICTABLE
    return MIN_MSE_FACTOR


def first_weights(x, prev, axis_order=None):
    """Blend weights for a first predicted frame, fitted on the frame itself (one extra pass).

    Without statistics of an earlier pair the default ``(1, 1, -1)`` can be far off (on the
    gyrokinetic mock the first predicted frame cost 25x the later ones); the statistics are
    gathered as :func:`stagelearn.analytics.stream_model.statistics` does (a step of ``2^-16`` of
    the range: the interpolation reads the frame's own values) and the weights, fitted on the
    encoder, travel in the payload as usual. ``axis_order``: the axis order the frame is coded in
    (:mod:`.axis_order`); the weights have the levels of that shape.
    """
    shape3 = as_3d_shape(kernel_shape(x.shape, axis_order))
    levels = n_levels(shape3)
    span = float(np.max(np.abs(x))) or 1.0
    if not math.isfinite(span):
        return None
    q = np.full(levels + 1, span * 2.0 ** -16)
    w = np.tile(np.array([1.0, 1.0, -1.0]), (max(levels, 1), 1))
    stats = encode_field(to_kernel(x, axis_order).reshape(shape3), to_kernel(prev, axis_order).reshape(shape3), q, w)[3]
    return fit_weights(stats) if np.any(stats[:, 0] > 0) else None


def validate_target(mode, target):
    """Check an error target.

    Raises
    ------
    ValueError
        Unknown mode, or a target that is not a positive finite number.
    """
    if mode not in MODES:
        raise ValueError(f"stream codec: error mode {mode!r} (expected one of {', '.join(MODES)})")
    if not isinstance(target, (int, float)) or isinstance(target, bool) or not math.isfinite(target) or target <= 0:
        raise ValueError(f"stream codec: {mode} target must be a positive finite number, got {target!r}")


class StreamEncoder:
    """Encode a variable's frames in time order (closed loop).

    Parameters
    ----------
    mode : {"psnr", "abs", "step"}
    target : float
        PSNR in dB (over each frame's own value range, as :func:`stagelearn.analytics.metrics.psnr`),
        absolute pointwise bound, or quantization step.
    temporal : bool, default=True
        Predict from the previous reconstructed frame.
    keyframe_every : int, default=0
        Encode every n-th frame without temporal prediction (0: only the first).
    alpha, beta : float
        Level-wise steps (:func:`stagelearn.analytics.stream_codec.frame_header.level_steps`).
    fit : bool, default=True
        Refit the blend weights from each frame's statistics (False: keep the default or set weights).
    adaptive : bool, default=False
        Also try the context-adaptive binary coder on each frame and send the shorter payload
        (:func:`~stagelearn.analytics.stream_codec.frame.encode_frame`); False: static rANS only
        (3-8x faster to encode; ``codec.entropy`` in a run).
    axis_order : "auto", None or sequence of int, default="auto"
        The axis order the kernels see (:mod:`.axis_order`): ``"auto"`` chooses it at keyframes (a
        trial; again only 16 frames after the last choice) and at the first predicted frame after
        each (from its difference to the keyframe's values), which the next predicted frames keep
        (:class:`~.axis_order.AxisOrderChooser`); None: the given order; a permutation: that order for
        every frame. Where a new axis order changes the number of levels, fitted weights are refitted
        and weights set with :meth:`set_weights` (``fit=False``) padded with the default.

    Attributes
    ----------
    prev : ndarray or None
        The last frame's reconstruction (what the decoder holds).
    weights : ndarray of shape (L, 3) or None
        Blend weights for the next frame (None: the default ``(1, 1, -1)``).
    statistics : ndarray of shape (L, 13) or None
        The last temporal frame's least-squares statistics (they add over ranks and blocks).
    frames, encodes : int
        Frames encoded, and encoder passes spent on them (re-encodes included).
    axis_order : tuple of int or None
        The axis order of the last frame (None: the given order).

    Raises
    ------
    ValueError
        On a bad mode or target.
    """

    def __init__(self, mode="psnr", target=50.0, *, temporal=True, keyframe_every=0, alpha=1.5, beta=4.0,
                 fit=True, max_retries=4, adaptive=False, axis_order="auto"):
        validate_target(mode, target)
        if not (axis_order is None or isinstance(axis_order, str) and axis_order == "auto" or
                isinstance(axis_order, (tuple, list)) and all(isinstance(a, numbers.Integral) for a in axis_order)):
            raise ValueError(f"stream codec: axis_order {axis_order!r} (expected 'auto', None or a permutation of "
                             "the axes)")
        self._axis_order_rule = axis_order
        self.axis_order, self._given_weights = None, None
        self._axis_orders = AxisOrderChooser()
        self.mode, self.target = mode, float(target)
        self.temporal, self.keyframe_every = bool(temporal), int(keyframe_every)
        self.alpha, self.beta, self.fit, self.max_retries = float(alpha), float(beta), bool(fit), int(max_retries)
        self.adaptive = bool(adaptive)
        self.prev = None
        self.weights = None
        self.statistics = None
        self.frames = 0
        self.margin = 0.97  # aim this much below the step the last frame's error model predicts (fewer re-encodes)
        self.encodes = 0
        self._mse_factor = {False: 1.0, True: 1.0}  # measured MSE / (step^2 / 12), per prediction kind
        self._group = [0, 0, 0]  # last keyframe's bytes, predicted bytes and frames after it (min_mse_factor)

    def set_weights(self, weights):
        """Use these blend weights (shape ``(L, 3)``) from the next frame on, e.g. fitted in staging."""
        self.weights = None if weights is None else np.asarray(weights, dtype=np.float64)
        self._given_weights = self.weights  # kept whole: an axis order with fewer levels must not cut them for good

    def encode(self, x):
        """Encode the next frame.

        Parameters
        ----------
        x : ndarray, float32 or float64
            Same shape and dtype on every call.

        Returns
        -------
        frame : EncodedFrame
            ``frame.payload`` to send; ``frame.reconstruction`` is what the decoder will produce.
        """
        x = np.ascontiguousarray(x)
        key = not self.temporal or self.prev is None or (self.keyframe_every > 0 and
                                                         self.frames % self.keyframe_every == 0)
        prev = None if key else self.prev
        self._set_axis_order(x, prev)
        if prev is not None and self.weights is None and self.fit:
            self.weights = first_weights(x, prev, self.axis_order)
        kwargs = {"prev": prev, "weights": None if key else self.weights, "alpha": self.alpha, "beta": self.beta,
                  "adaptive": self.adaptive, "axis_order": self.axis_order}
        if self.mode == "step":
            frame = encode_frame(x, self.target, **kwargs)
        elif self.mode == "abs":
            frame = encode_frame(x, 2.0 * self.target, eb_abs=self.target, **kwargs)
        else:
            frame = self._encode_psnr(x, prev is not None, kwargs)
        self.prev = frame.reconstruction
        self.frames += 1
        update_group(self._group, len(frame.payload), prev is None)
        if prev is not None and self.fit:
            self.statistics = frame.stats
            levels = n_levels(as_3d_shape(kernel_shape(x.shape, self.axis_order)))
            if frame.stats.shape[0] == max(levels, 1) and np.any(frame.stats[:, 0] > 0):
                self.weights = fit_weights(frame.stats)
        return frame

    def _set_axis_order(self, x, prev):
        """The axis order of this frame (:class:`~.axis_order.AxisOrderChooser`; at a keyframe a trial at the
        first pass's step), and the blend weights dropped where it changes the level count."""
        rule = self._axis_order_rule
        if not isinstance(rule, str):
            self.axis_order = normalize_axis_order(rule, x.ndim)
        elif prev is None:
            self.axis_order = self._axis_orders.keyframe(x, lambda lay: self._trial_bytes(x, lay), keep=self.temporal)
        else:
            self.axis_order = self._axis_orders.predicted(x)
        levels = max(n_levels(as_3d_shape(kernel_shape(x.shape, self.axis_order))), 1)
        if prev is None or self.weights is None or self.weights.shape[0] == levels:
            return  # a keyframe uses no weights: they are fitted to the levels of its predicted frames
        if self.fit:  # another level count: refit (first_weights)
            self.weights = None
        else:  # weights set from outside: the default on levels they lack (as StreamVariableModel.level_weights)
            given = self._given_weights if self._given_weights is not None else self.weights
            self.weights = np.tile([1.0, 1.0, -1.0], (levels, 1))
            k = min(levels, given.shape[0])
            self.weights[:k] = given[:k]

    def _trial_bytes(self, x, axis_order):
        """Payload bytes of keyframe ``x`` in ``axis_order`` at the first pass's step (0: no trial possible)."""
        step = self._first_step(x, False)
        if step is None:
            return 0
        self.encodes += 1
        kw = {"alpha": self.alpha, "beta": self.beta, "eb_abs": self.target if self.mode == "abs" else 0.0}
        return len(encode_frame(x, step, axis_order=axis_order, **kw).payload)

    def _first_step(self, x, temporal, span=None):
        """The first pass's step (None: a constant frame, or non-finite values with a PSNR target);
        ``span``: the frame's range if the caller has it."""
        if self.mode == "step":
            return self.target
        if self.mode == "abs":
            return 2.0 * self.target
        if span is None:
            span = float(np.float64(x.max()) - np.float64(x.min())) if x.size else 0.0
        if not math.isfinite(span) or span == 0.0:
            return None
        target_mse = span ** 2 * 10.0 ** (-self.target / 10.0)
        floor = min_mse_factor(*self._group) if temporal else MIN_MSE_FACTOR
        return self.margin * math.sqrt(12.0 * target_mse / max(self._mse_factor[temporal], floor))

    def _encode_psnr(self, x, temporal, kwargs):
        span = float(np.float64(x.max()) - np.float64(x.min())) if x.size else 0.0
        if not math.isfinite(span):
            raise ValueError("stream codec: PSNR target on a frame with non-finite values; use mode='abs'")
        if span == 0.0:  # constant frame: exact
            return encode_frame(x, 1.0, eb_abs=np.finfo(np.float64).tiny, **kwargs)
        target_mse = span ** 2 * 10.0 ** (-self.target / 10.0)
        floor = min_mse_factor(*self._group) if temporal else MIN_MSE_FACTOR
        step = self._first_step(x, temporal, span)
        kwargs = dict(kwargs, view=KernelView(x, kwargs["prev"], self.axis_order))  # transposed once for every pass
        for _ in range(self.max_retries + 1):
            frame = encode_frame(x, step, payload=False, **kwargs)  # entropy-coded only if kept
            self.encodes += 1
            mse = frame.sse / x.size
            if mse > 0:
                # floored (min_mse_factor): where most codes are 0 the error is the prediction's and the model
                # says little; a step far above sqrt(12 target) lets the reconstruction lag behind the field
                self._mse_factor[temporal] = max(mse / (step ** 2 / 12.0), floor)
            if mse <= target_mse:
                self.margin = min(0.99, self.margin * 1.002)
                return finish_frame(frame)
            self.margin = max(0.85, self.margin * 0.97)  # missed: aim lower from now on
            step *= 0.98 * math.sqrt(target_mse / mse)
        # the target is met by a pointwise bound (every value within sqrt(target_mse))
        return encode_frame(x, 2.0 * math.sqrt(target_mse), eb_abs=math.sqrt(target_mse), **kwargs)


class StreamDecoder:
    """Decode a variable's frames in time order (keeps the previous reconstruction)."""

    def __init__(self):
        self.prev = None

    def decode(self, payload, *, verify=True):
        """Decode the next frame (bit for bit the producer's reconstruction).

        Raises
        ------
        StreamFormatError
            On a corrupt payload or a frame whose previous frame this decoder did not see.
        """
        rec = decode_frame(payload, self.prev, verify=verify)
        self.prev = rec
        return rec
