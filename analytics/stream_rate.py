"""Rate control of the stream codec in a run: each block's step chosen for this frame and the frames after it.

:func:`rate_controlled` codes one block so that its MSE is at most ``target_mse`` (PSNR at or above
the target, verified by the caller against its own values) and every error is at most
``abs_bound``; :class:`StreamStates` holds each (variable, block)'s memory between steps. Used by
:func:`~stagelearn.analytics.stream_step.encode_stream_block`.

In closed loop a keyframe's step also sets the reference of the frames after it: on a smooth,
slowly changing field a finer keyframe keeps paying while the predicted frames code little more
than the change. So a keyframe aims ``st.key_db`` dB above the target (as video codecs give
I-frames a lower QP), learned per block by :func:`key_offset` from the bytes of the block's last
group of frames (docs/codec.md, "Rate control in a run"); predicted frames keep the per-frame
search. No extra encoder pass, no decoder change (a keyframe is an ordinary payload).

A predicted frame that costs more than 1.5x its block's last keyframe (:func:`intra_bound`: the search
failed, e.g. the reconstruction lagged behind the field, or the field changed at once) is also
coded on its own at the target and the smaller payload is sent: an unscheduled keyframe
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
FLAT_PROBE = 4  # held at a flat stop's step: a probe above it only every this many frames (or where it may reach the band)
BAND = 10.0 ** (-0.03)  # a block's MSE is accepted in [BAND, 1] x target: PSNR in [target, target + 0.3 dB]
AIM = 10.0 ** (-0.0175)  # where a trial aims: 0.175 dB above the target (the first lands within +-2 % in MSE)
SLOPE_MIN, SLOPE_MAX = 0.3, 4.0  # d log MSE / d log step: 2 for busy blocks, flatter where most codes are 0
SLOPE_FLAT = 0.5  # below it a larger step barely adds error: the search stops at the smaller step
GROWTH, GROWTH_TRIAL = 1.25, 2.0  # the step grows by at most these factors per frame / per trial (shrinks at any rate)
KEY_RHO0 = 4.0  # a keyframe aims above the target only where it costs more than this many predicted frames
KEY_GROUP = 15  # ... in a group of this many predicted frames (keyframe_every 16; shorter groups scaled down)
KEY_GAIN = 4.0  # dB of keyframe offset per doubling beyond that
KEY_DB_MAX = 9.0  # at most this many dB above the target
INTRA_KEY = 1.5  # a predicted frame costing more than this many of the block's last keyframe: also coded intra


@dataclass
class BlockState:
    """The rate control's memory of one (variable, block) between steps."""

    last: dict = field(default_factory=lambda: {False: None, True: None})  # last accepted (step, MSE)
    slope: dict = field(default_factory=lambda: {False: 2.0, True: 2.0})  # d log MSE / d log step, measured
    stats: np.ndarray = None  # the last predicted frame's blend statistics (L, 13)
    encodes: int = 0
    key_db: float = 0.0  # how far above the target keyframes aim (key_offset)
    key_offset: bool = True  # False: keyframes aim at the target (StreamStates(key_offset=False))
    stopped_flat: bool = False  # the last predicted frame stopped where a larger step barely added error
    flat_held: int = 0  # predicted frames since then that stopped at that step without probing above it
    flat_slope: float = 0.0  # d log MSE / d log q measured at the last flat stop
    intra: bool = False  # the last kept frame was coded on its own (a keyframe, scheduled or not)
    intra_extra: int = 0  # predicted frames also coded on their own (intra_bound), and how many of those kept
    intra_kept: int = 0
    intra_ref: int = 0  # bytes of the last intra trial that lost since the last keyframe (intra_bound)
    group: list = field(default_factory=lambda: [0, 0, 0])  # keyframe bytes, predicted bytes, frames (update_group)
    axis_orders: AxisOrderChooser = field(default_factory=AxisOrderChooser)  # .axis_order: the last frame's


class StreamStates:
    """Per-(variable, block) state of the stream codec on one encoding rank (keys as the chain's).

    Parameters
    ----------
    key_offset : bool, default=True
        Keyframes aim :func:`key_offset` dB above the target (False: at the target, as every
        predicted frame; the benchmarks' comparison without it).
    """

    def __init__(self, key_offset=True):
        self._states = {}
        self.key_offset = bool(key_offset)

    def get(self, key):
        """The state of ``key`` (created on first use)."""
        return self._states.setdefault(key, BlockState(key_offset=self.key_offset))

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


def key_offset(key_bytes, predicted_bytes, predicted):
    """dB above the target for a block's next keyframe, from its last group of frames: the
    keyframe's bytes, the bytes of the ``predicted`` frames coded after it, and their count.

    ``KEY_GAIN * log2(rho * n / (KEY_RHO0 * KEY_GROUP))`` clipped to ``[0, KEY_DB_MAX]``, ``rho``
    the keyframe's bytes over the mean bytes of a predicted frame and ``n`` the predicted frames,
    at most ``KEY_GROUP`` (the rule was measured on 16-frame groups only; 0 dB without a predicted
    frame: every step coded on its own). ``rho`` says how much of the keyframe the
    next frames inherit, ``n`` over how many frames a finer keyframe pays. Measured (16-frame
    groups, docs/codec.md): on busy fields a predicted frame costs 0.4-1 keyframe (Gray-Scott,
    turbulence, heat2d's plume, ``rho`` 1-2.5) and the 15 frames after a keyframe 3 dB finer saved
    0.05-0.8 of its extra bytes; on the smooth gyrokinetic mock (``rho`` 3-25) they got 33-45 %
    cheaper (3-6 dB); Allen-Cahn (``rho`` 2.5-5) lost 1-8 % with 3-6 dB, hence ``KEY_RHO0``.

    Parameters
    ----------
    key_bytes : int
        Payload bytes of the block's last keyframe.
    predicted_bytes : float
        Payload bytes of the predicted frames coded after it (beyond ``PREDICTED_WINDOW`` of them
        scaled to that many: :func:`~stagelearn.analytics.stream_codec.stream.update_group`).
    predicted : int
        How many predicted frames that was (at most ``PREDICTED_WINDOW``).

    Returns
    -------
    float
        dB, in ``[0, KEY_DB_MAX]``.
    """
    if predicted < 1 or key_bytes <= 0 or predicted_bytes <= 0:
        return 0.0
    rho = key_bytes / (predicted_bytes / predicted)
    x = rho * min(predicted, KEY_GROUP) / (KEY_RHO0 * KEY_GROUP)  # longer groups: not measured, no more
    return min(max(KEY_GAIN * math.log2(x), 0.0), KEY_DB_MAX)


def rate_controlled(x, prev, weights, target_mse, abs_bound, model, st):
    """Encode ``x`` so that its MSE is at most ``target_mse`` and every error at most ``abs_bound``;
    returns ``(frame, encoder passes)``.

    A keyframe (``prev is None``) aims ``st.key_db`` dB above the target, set by :func:`key_offset`
    from the bytes of the block's last group of frames (``st.group``: keyframe bytes, predicted
    bytes, predicted frames), which each kept frame updates; its axis order is chosen by
    :func:`_key_axis_order` (up to two trial passes where the heuristic proposes another axis order),
    and the first predicted frame's by the caller, before it picks blend weights
    (:func:`~.stream_step.encode_stream_block`). No other extra encoder pass, except where a
    predicted frame costs more than :func:`intra_bound`: the frame is then also coded on its own
    (at the target, a search from the block's keyframe memory on a copy of ``st``) and the smaller
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
        st.key_db = key_offset(*st.group) if st.key_offset else 0.0
        tried = _key_axis_order(x, target_mse, abs_bound, model, st)
        st.encodes += tried
    frame, passes = _search(x, prev, weights, target_mse, abs_bound, model, st)
    passes += tried
    if temporal and len(frame.payload) > intra_bound(max(st.group[0], st.intra_ref)):  # a burst: also code it alone
        trial = copy.deepcopy(st)  # the intra search's memory, kept only with its frame
        trial.key_db = 0.0
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
    """Encode ``x`` so that its MSE lands in ``[BAND, 1] * limit`` (PSNR in [target, target + 0.3 dB]
    for a predicted frame; ``limit`` is ``target_mse``, ``10^(-st.key_db / 10) target_mse`` for a
    keyframe) and every error is at most ``abs_bound``; returns ``(frame, encoder passes)``.

    The closed loop's MSE is, on a log-log scale, nearly a line in the step ``q`` that moves little
    from frame to frame: slope 2 where most codes are non-zero (``q^2/12``), flatter where most are
    0. The first pass aims at ``AIM * limit`` from the block's last kept ``(q, MSE)`` and the
    slope measured on its earlier frames (:class:`BlockState`; keyframes and predicted frames apart),
    the step growing by ``GROWTH`` at most from frame to frame. A pass outside the band is followed
    by a secant step on ``(log q, log MSE)`` through the passes that bracket the aim (else the last
    two; where the error does not grow with the step, the block's slope from the pass nearest the
    aim), at most ``MAX_TRIALS`` passes, each only quantized (``payload=False``) and the kept one
    entropy-coded. The pass kept is the one with the largest error at or under ``limit``; if none
    holds it, a last pass with the pointwise bound ``sqrt(limit)`` meets it on every value.

    A block that cannot spend the budget stops early, under the band: at the step cap (``2
    abs_bound``, or ``sqrt(12 target_mse / floor)``, the floor ``MIN_MSE_FACTOR`` for a keyframe and
    :func:`~stagelearn.analytics.stream_codec.stream.min_mse_factor` of ``st.group`` for a predicted
    frame: looser on a block whose predicted frames cost little next to its keyframe), exact, or
    where a larger step barely adds error (slope under ``SLOPE_FLAT`` between two passes under the
    band: the error is the prediction's, and a larger step only lets the reconstruction lag behind a
    slowly moving field and pay a burst later; the smaller step is kept, and the next frame's first
    pass starts no higher than it or the ``MIN_MSE_FACTOR`` cap, ``st.stopped_flat``: without this the
    step crept 1.25x a frame up to the looser cap and the gyrokinetic mock paid a burst of 9x its
    keyframe). A first pass so held that lands under the band is kept as it is, and the block stays
    flat, where the next pass, extrapolated with the flat stop's slope (``st.flat_slope``), would
    land under the band too; except every ``FLAT_PROBE``-th such frame (``st.flat_held``), which
    searches above it. Without this a second pass, almost always thrown away, followed every such
    frame: gyrokinetic mock, ``stream_step``, 32 frames, 30-70 dB, 261 -> 221 passes, same bytes.
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
    tight = math.sqrt(12.0 * target_mse / MIN_MSE_FACTOR)
    cap = math.sqrt(12.0 * target_mse / min_mse_factor(*st.group)) if temporal else tight
    if eb > 0:
        cap = min(cap, 2.0 * eb)
    limit = target_mse if temporal else target_mse * 10.0 ** (-st.key_db / 10.0)
    aim, low = AIM * limit, BAND * limit
    slope, last = st.slope[temporal], st.last[temporal]
    if last is None:  # the uniform-noise model
        q = math.sqrt(12.0 * aim)
    else:  # log MSE = log MSE_last + slope (log q - log q_last), the step growing by GROWTH at most
        q = last[0] * min(math.exp((math.log(aim) - math.log(last[1])) / slope), GROWTH)
    q = min(q, cap)
    held = False
    if temporal and st.stopped_flat and last is not None:  # the error was the prediction's: no creep above the tight cap
        held = q > max(tight, last[0])
        q = min(q, max(tight, last[0]))
    flat = False
    trials, prev_frame = [], None  # (q, mse) of each pass; the frame of the pass before the last
    best = None  # the trial kept: (q, mse, frame)
    for k in range(MAX_TRIALS):
        frame = encode_frame(x, q, eb_abs=eb, payload=False, **kw)  # entropy-coded only if kept
        st.encodes += 1
        mse = frame.sse / n
        trials.append((q, mse))
        if mse <= limit and (best is None or mse > best[1]):
            best = (q, mse, frame)
        if low <= mse <= limit or mse == 0.0 or (mse < low and q >= cap):
            break
        if k == 0 and held and mse < low and st.flat_held < FLAT_PROBE - 1 and \
                mse * (min(_next_step(trials, aim, slope), cap, GROWTH_TRIAL * q) / q) ** st.flat_slope < low:
            flat = True  # held under the band, and the probe would land under it too (the flat stop's slope)
            st.flat_held += 1
            break
        if k == 0 and held:
            st.flat_held = 0
        if mse < low and len(trials) >= 2 and trials[-2][1] < low and _flat(trials[-2], trials[-1]):
            best = (trials[-2][0], trials[-2][1], prev_frame)
            flat, st.flat_held = True, 0
            if temporal:
                st.flat_slope = max(math.log(trials[-1][1] / trials[-2][1]) / math.log(trials[-1][0] / trials[-2][0]), 0.0)
            break
        q_next = min(_next_step(trials, aim, slope), cap)
        if mse < low:
            q_next = min(q_next, GROWTH_TRIAL * q)
        if best is not None and q_next <= best[0]:  # aiming below a trial that already holds the target
            break
        q, prev_frame = q_next, frame
    if temporal:
        st.stopped_flat = flat
        if not flat:
            st.flat_held = 0
    measured = _measured_slope(trials)
    if measured is not None:
        st.slope[temporal] = min(max(0.5 * slope + 0.5 * measured, SLOPE_MIN), SLOPE_MAX)
    if best is not None:
        st.last[temporal] = (best[0], best[1]) if best[1] > 0 else st.last[temporal]
        return finish_frame(best[2]), len(trials)
    st.last[temporal] = (trials[-1][0], trials[-1][1])
    e = math.sqrt(limit) if eb <= 0 else min(math.sqrt(limit), eb)
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


def _flat(a, b):
    """True when two trials ``(q, MSE)`` with different steps have ``d log MSE / d log q < SLOPE_FLAT``."""
    if a[0] == b[0] or a[1] <= 0 or b[1] <= 0:
        return False
    return (math.log(b[1]) - math.log(a[1])) / (math.log(b[0]) - math.log(a[0])) < SLOPE_FLAT


def _measured_slope(trials):
    """``d log MSE / d log q`` of a frame's two last trials with non-zero errors (None with fewer), clamped."""
    pts = [(math.log(q), math.log(m)) for q, m in trials if m > 0]
    if len(pts) < 2 or pts[-1][0] == pts[-2][0]:
        return None
    s = (pts[-1][1] - pts[-2][1]) / (pts[-1][0] - pts[-2][0])
    return min(max(s, SLOPE_MIN), SLOPE_MAX)
