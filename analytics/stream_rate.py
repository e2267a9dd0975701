"""Rate control of the stream codec in a run: each block's step chosen for this frame and the frames after it.

:func:`rate_controlled` codes one block so that its MSE is at most ``target_mse`` (PSNR at or above
the target, verified by the caller against its own values) and every error is at most
``abs_bound``; :class:`StreamStates` holds each (variable, block)'s memory between steps. Used by
:func:`~stagelearn.analytics.stream_step.encode_stream_block`.

In closed loop a keyframe's step also sets the reference of the frames after it: on a smooth,
slowly changing field a finer keyframe keeps paying while the predicted frames code little more
than the change (video codecs give I-frames a lower QP for the same reason). A keyframe's first
pass is at the uniform-noise step ``sqrt(12 AIM target)``; where its error is under ``KEY_FINE`` of
that model's (most codes 0: the error is the interpolation's, the field is smooth at this target)
it is kept as it is, finer than the target asks, instead of searching up to the band; a busy
block's keyframe (the model nearly holds) searches into the band as a predicted frame does
(docs/codec.md, "Rate control in a run"). No decoder change (a keyframe is an ordinary payload).

A predicted frame that costs more than 1.5x its block's last keyframe (:func:`intra_bound`: the search
failed, e.g. the reconstruction lagged behind the field, or the field changed at once) is also
coded on its own, as a keyframe is (kept finer than the target where smooth), and the smaller
payload is sent: an unscheduled keyframe
(``BlockState.intra``; ``ref_step`` None in its envelope, so a reader starting there needs nothing
before), which starts the block's next group of frames as a scheduled one does.

Each block's axis order for the kernels (``BlockState.axis_orders``, :mod:`.stream_codec.axis_order`) is
chosen at its keyframes (:func:`_key_axis_order`) and at the first predicted frame after each
(:func:`~.stream_step.encode_stream_block`), as :class:`~.stream_codec.stream.StreamEncoder` does
(:class:`~.stream_codec.axis_order.AxisOrderChooser`).
"""

from __future__ import annotations

import copy
import math
from dataclasses import dataclass, field

import numpy as np

from .stream_codec import encode_frame, finish_frame
from .stream_codec.axis_order import AxisOrderChooser, KernelView
from .stream_codec.stream import MIN_MSE_FACTOR, min_mse_factor, update_group  # shared with StreamEncoder

MAX_TRIALS = 4  # encoder passes of the search; one more, guarded, when none held the target
BAND = 10.0 ** (-0.03)  # a block's MSE is accepted in [BAND, 1] x target: PSNR in [target, target + 0.3 dB]
AIM = 10.0 ** (-0.0175)  # where a trial aims: 0.175 dB above the target (the first lands within +-2 % in MSE)
SLOPE_MIN, SLOPE_MAX = 0.3, 4.0  # d log MSE / d log step: 2 for busy blocks, flatter where most codes are 0
GROWTH, GROWTH_TRIAL = 1.25, 2.0  # the step grows by at most these factors per frame / per trial (shrinks at any rate)
KEY_FINE = 0.5  # a keyframe whose first pass has under this fraction of the uniform-noise error is kept (smooth)
INTRA_KEY = 1.5  # a predicted frame costing more than this many of the block's last keyframe: also coded intra


@dataclass
class BlockState:
    """The rate control's memory of one (variable, block) between steps."""

    last: dict = field(default_factory=lambda: {False: None, True: None})  # last accepted (step, MSE)
    slope: dict = field(default_factory=lambda: {False: 2.0, True: 2.0})  # d log MSE / d log step, measured
    stats: np.ndarray = None  # the last predicted frame's blend statistics (L, 13)
    encodes: int = 0
    intra: bool = False  # the last kept frame was coded on its own (a keyframe, scheduled or not)
    intra_extra: int = 0  # predicted frames also coded on their own (intra_bound), and how many of those kept
    intra_kept: int = 0
    intra_ref: int = 0  # bytes of the last intra trial that lost since the last keyframe (intra_bound)
    group: list = field(default_factory=lambda: [0, 0, 0])  # keyframe bytes, predicted bytes, frames (update_group)
    axis_orders: AxisOrderChooser = field(default_factory=AxisOrderChooser)  # .axis_order: the last frame's


class StreamStates:
    """Per-(variable, block) state of the stream codec on one encoding rank (keys as the chain's)."""

    def __init__(self):
        self._states = {}

    def get(self, key):
        """The state of ``key`` (created on first use)."""
        return self._states.setdefault(key, BlockState())

    def forget(self):
        """Drop every block's state (with ``PredictionChain`` restarts: a new file)."""
        self._states.clear()


def target_ok(target_mse):
    """True for a usable target MSE (a positive finite number).

    Parameters
    ----------
    target_mse : float or None

    Returns
    -------
    bool
    """
    return target_mse is not None and math.isfinite(target_mse) and target_mse > 0


def rate_controlled(x, prev, weights, target_mse, abs_bound, model, st):
    """Encode ``x`` so that its MSE is at most ``target_mse`` and every error at most ``abs_bound``;
    returns ``(frame, encoder passes)``.

    A keyframe (``prev is None``) is kept finer than the target where it is smooth (:func:`_search`,
    ``KEY_FINE``); each kept frame updates the block's group (``st.group``: keyframe bytes, predicted
    bytes, predicted frames: the step cap and :func:`intra_bound` read it); its axis order is chosen by
    :func:`_key_axis_order` (up to two trial passes where the heuristic proposes another axis order),
    and the first predicted frame's by the caller, before it picks blend weights
    (:func:`~.stream_step.encode_stream_block`). No other extra encoder pass, except where a
    predicted frame costs more than :func:`intra_bound`: the frame is then also coded on its own
    (a keyframe's search, on a copy of ``st``: kept finer than the target where smooth) and the smaller
    of the two kept; ``st.intra`` says which (the caller then sends it as a keyframe: no
    ``ref_step``), and a frame coded on its own starts a new group (``st.group``) and updates the
    keyframe memory. ``st.intra_extra`` / ``st.intra_kept`` count these encodes and those kept.

    Parameters
    ----------
    x : numpy.ndarray
        The block (float32 or float64, any shape the codec takes), the caller's values.
    prev : numpy.ndarray or None
        The previous decoded frame of the block (None: a keyframe).
    weights, model
        The stream model's blend weights and variable model (:mod:`.stream_model`).
    target_mse : float
        MSE every frame must reach (PSNR target over the global range).
    abs_bound : float or None
        Pointwise bound on every error, in the units of ``x``.
    st : BlockState
        The block's memory; updated.

    Returns
    -------
    frame : EncodedFrame
        The kept frame (payload entropy-coded).
    passes : int
        Encoder passes spent.
    """
    temporal, tried = prev is not None, 0
    if not temporal:
        tried = _key_axis_order(x, target_mse, abs_bound, model, st)
        st.encodes += tried
    frame, passes = _search(x, prev, weights, target_mse, abs_bound, model, st)
    passes += tried
    if temporal and len(frame.payload) > intra_bound(max(st.group[0], st.intra_ref)):  # a burst: also code it alone
        trial = copy.deepcopy(st)  # the intra search's memory, kept only with its frame
        trial.axis_orders.keyframe(x, force=True)  # the field changed: the heuristic's order now, no trial
        intra, more = _search(x, None, None, target_mse, abs_bound, model, trial)
        passes += more
        st.encodes, st.intra_extra = trial.encodes, st.intra_extra + 1
        if len(intra.payload) < len(frame.payload):
            st.last[False], st.slope[False], st.intra_kept = trial.last[False], trial.slope[False], st.intra_kept + 1
            st.axis_orders = trial.axis_orders
            frame, temporal = intra, False
        else:  # the bound from now on: not below what coding it alone cost (no search per frame after a tiny keyframe)
            st.intra_ref = len(intra.payload)
    st.intra = not temporal
    if not temporal:
        st.intra_ref = 0
    update_group(st.group, len(frame.payload), not temporal)
    return frame, passes


def _key_axis_order(x, target_mse, abs_bound, model, st):
    """Choose a keyframe's axis order (``st.axis_orders``, :class:`~.stream_codec.axis_order.AxisOrderChooser`;
    trials at the step of the block's last keyframe, else of the uniform-noise model); returns the passes (0-2)."""
    ok, passes = target_ok(target_mse), 0
    if not ok and abs_bound is None:
        return 0
    last = st.last[False]
    q = min(last[0] if last is not None else math.sqrt(12.0 * target_mse) if ok else math.inf,
            2.0 * float(abs_bound) if abs_bound is not None else math.inf)
    kw = {"alpha": model.alpha, "beta": model.beta, "eb_abs": 0.0 if abs_bound is None else float(abs_bound)}
    def size_of(axis_order):  # noqa: E306  (one trial pass, counted)
        nonlocal passes
        passes += 1
        return len(encode_frame(x, q, axis_order=axis_order, **kw).payload)
    st.axis_orders.keyframe(x, size_of)
    return passes


def intra_bound(key_bytes):
    """Bytes above which a block's predicted frame is also coded on its own (:func:`rate_controlled`).

    ``INTRA_KEY`` times the block's last keyframe's bytes (or, once an intra trial lost, that
    trial's bytes if larger); no bound (infinity) before the block's first keyframe.

    Measured (docs/codec.md): it removes the bursts of a step search gone wrong (gyrokinetic mock, a
    predicted frame of 16x its keyframe: ratio at 40 dB 1037 -> 1582) and rarely triggers otherwise.

    Parameters
    ----------
    key_bytes : int
        Payload bytes of the block's last keyframe (``BlockState.group[0]``), or of its last losing
        intra trial (``BlockState.intra_ref``), whichever is larger; 0 before the first keyframe.

    Returns
    -------
    float
        ``INTRA_KEY * key_bytes``, or infinity.
    """
    return INTRA_KEY * key_bytes if key_bytes > 0 else math.inf


def _search(x, prev, weights, target_mse, abs_bound, model, st):
    """Encode ``x`` so that its MSE lands in ``[BAND, 1] * target_mse`` (PSNR in [target, target + 0.3
    dB]) and every error is at most ``abs_bound``; returns ``(frame, encoder passes)``.

    The closed loop's MSE is, on a log-log scale, nearly a line in the step ``q`` that moves little
    from frame to frame: slope 2 where most codes are non-zero (``q^2/12``), flatter where most are
    0. A predicted frame's first pass aims at ``AIM * target_mse`` from the block's last kept
    ``(q, MSE)`` and the slope measured on its earlier frames (:class:`BlockState`; keyframes and
    predicted frames apart), the step growing by ``GROWTH`` at most from frame to frame. A
    keyframe's first pass is at the uniform-noise step ``sqrt(12 AIM target_mse)``; where its MSE is
    under ``KEY_FINE`` of ``q^2/12`` (most codes 0: the interpolation's error; the block is smooth
    at this target) it is kept, finer than the band, as the reference of the frames after it: the
    search up to the band would coarsen it up to 3.2x (the step cap) for few bytes, and every
    predicted frame after it would re-code its error (gyrokinetic mock, ``stream_step``, 40 dB: its
    first 9 frames cost 1.4-2.6 KB each as keyframes at 43 dB and the predicted frames after them
    2.0-4.2 KB, against 0.09-0.7 KB predicted from a 51 dB keyframe of 5 KB). Busy blocks
    (``MSE / (q^2/12)`` 0.6-0.85 on Gray-Scott and the turbulence) search into the band. A pass
    outside the band is followed by a secant step on ``(log q, log MSE)`` through the passes that
    bracket the aim (else the last two; where the error does not grow with the step, the block's
    slope from the pass nearest the aim), at most ``MAX_TRIALS`` passes, each only quantized
    (``payload=False``) and the kept one entropy-coded. The pass kept is the one with the largest
    error at or under ``target_mse``; if none holds it, a last pass with the pointwise bound
    ``sqrt(target_mse)`` meets it on every value.

    A block that cannot spend the budget stops under the band: at the step cap (``2 abs_bound``,
    or ``sqrt(12 target_mse / floor)``, the floor ``MIN_MSE_FACTOR`` for a keyframe and
    :func:`~stagelearn.analytics.stream_codec.stream.min_mse_factor` of ``st.group`` for a predicted
    frame: looser on a block whose predicted frames cost little next to its keyframe), or exact. A
    predicted frame whose error barely grows with the step (the prediction's error) climbs to the
    cap: its reconstruction lags behind the field, and a frame that then costs a burst is coded on
    its own instead (:func:`intra_bound`). (Until 2026-12-08 such a search stopped at the smaller
    step and held it, and keyframes aimed a learned offset above the target: with the finer smooth
    keyframes both cost bytes, docs/codec.md.)
    """
    eb = float(abs_bound) if abs_bound is not None else 0.0
    if abs_bound is not None and not (math.isfinite(eb) and eb > 0):
        raise ValueError(f"stream codec: abs_bound must be a positive finite number, got {abs_bound!r}")
    ok_target = target_ok(target_mse)
    if not ok_target and abs_bound is None:
        raise ValueError(f"stream codec: target_mse {target_mse!r} is not a positive finite number and no abs_bound")
    kw = {"prev": prev, "weights": weights, "alpha": model.alpha, "beta": model.beta, "adaptive": model.adaptive,
          "axis_order": st.axis_orders.axis_order, "view": KernelView(x, prev, st.axis_orders.axis_order)}  # transposed
    if not ok_target:
        st.encodes += 1
        return encode_frame(x, 2.0 * eb, eb_abs=eb, **kw), 1
    temporal = prev is not None
    n = max(x.size, 1)
    cap = math.sqrt(12.0 * target_mse / (min_mse_factor(*st.group) if temporal else MIN_MSE_FACTOR))
    if eb > 0:
        cap = min(cap, 2.0 * eb)
    aim, low = AIM * target_mse, BAND * target_mse
    slope, last = st.slope[temporal], st.last[temporal]
    if temporal and last is not None:  # log MSE = log MSE_last + slope (log q - log q_last), growing by GROWTH at most
        q = last[0] * min(math.exp((math.log(aim) - math.log(last[1])) / slope), GROWTH)
    else:  # a keyframe, or a block's first predicted frame: the uniform-noise model
        q = math.sqrt(12.0 * aim)
    q = min(q, cap)
    trials = []  # (q, mse) of each pass
    best = None  # the trial kept: (q, mse, frame)
    for k in range(MAX_TRIALS):
        frame = encode_frame(x, q, eb_abs=eb, payload=False, **kw)  # entropy-coded only if kept
        st.encodes += 1
        mse = frame.sse / n
        trials.append((q, mse))
        if mse <= target_mse and (best is None or mse > best[1]):
            best = (q, mse, frame)
        if low <= mse <= target_mse or mse == 0.0 or (mse < low and q >= cap):
            break
        if k == 0 and not temporal and best is not None and mse <= KEY_FINE * q * q / 12.0:  # smooth: kept finer
            break
        q_next = min(_next_step(trials, aim, slope), cap)
        if mse < low:
            q_next = min(q_next, GROWTH_TRIAL * q)
        if best is not None and q_next <= best[0]:  # aiming below a trial that already holds the target
            break
        q = q_next
    measured = _measured_slope(trials)
    if measured is not None:
        st.slope[temporal] = min(max(0.5 * slope + 0.5 * measured, SLOPE_MIN), SLOPE_MAX)
    if best is not None:
        st.last[temporal] = (best[0], best[1]) if best[1] > 0 else st.last[temporal]
        return finish_frame(best[2]), len(trials)
    st.last[temporal] = (trials[-1][0], trials[-1][1])
    e = math.sqrt(target_mse) if eb <= 0 else min(math.sqrt(target_mse), eb)
    st.encodes += 1
    return encode_frame(x, 2.0 * e, eb_abs=e, **kw), len(trials) + 1


def _next_step(trials, aim, slope):
    """The next trial step: a secant on ``(log q, log MSE)`` towards ``aim``.

    Through the two trials that bracket ``aim`` when there are (the closest on each side), else the
    last two, else the last one with ``slope``; the secant's slope is clamped to
    ``[SLOPE_MIN, SLOPE_MAX]`` and the new step kept strictly inside a bracket."""
    la = math.log(aim)
    pts = [(math.log(q), math.log(m)) for q, m in trials if m > 0]
    if not pts:  # every trial exact: a much larger step
        return trials[-1][0] * 4.0
    under = [p for p in pts if p[1] <= la]
    over = [p for p in pts if p[1] > la]
    if under and over:
        a, b = max(under, key=lambda p: p[1]), min(over, key=lambda p: p[1])
    elif len(pts) >= 2:
        a, b = pts[-2], pts[-1]
    else:
        a = b = pts[-1]
    s = (b[1] - a[1]) / (b[0] - a[0]) if b[0] != a[0] else slope
    if under and over:  # inside the bracket (a fifth of it from either end at least; its middle if not increasing)
        lo, hi = sorted((a[0], b[0]))
        lq = b[0] + (la - b[1]) / s if s > 0 else 0.5 * (lo + hi)
        return math.exp(min(max(lq, lo + 0.2 * (hi - lo)), hi - 0.2 * (hi - lo)))
    if not SLOPE_MIN <= s <= SLOPE_MAX:  # not a usable secant (error not increasing with the step): the model's
        s = slope
        b = min(pts, key=lambda p: abs(p[1] - la))  # from the trial nearest the aim
    return math.exp(b[0] + (la - b[1]) / s)


def _measured_slope(trials):
    """``d log MSE / d log q`` of a frame's two last trials with non-zero errors (None with fewer), clamped."""
    pts = [(math.log(q), math.log(m)) for q, m in trials if m > 0]
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return None
    s = (pts[-1][1] - pts[-2][1]) / (pts[-1][0] - pts[-2][0])
    return min(max(s, SLOPE_MIN), SLOPE_MAX)
