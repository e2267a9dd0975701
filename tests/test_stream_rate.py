"""The run's rate control (analytics/stream_rate.py, with the step cap and group bookkeeping of
analytics/stream_codec/stream.py): the step cap rule, the group of frames it reads (a window of
predicted frames), and the intra fallback (a predicted frame costing more than its block's last
keyframe, times ``INTRA_KEY``, is also coded on its own and sent as an unscheduled keyframe when
that is cheaper).

The rules are measured here in each field's given axis order: the kernels' axis order (the one a
block's keyframe and first predicted frame choose, analytics/stream_codec/axis_order.py) is held at the
given order by the autouse fixture below; tests/test_stream_axis_order.py tests it, and with it.
"""

import math

import numpy as np
import pytest

from stagelearn.analytics import stream_rate
from stagelearn.analytics.stream_codec import axis_order
from stagelearn.analytics.stream_codec.stream import (MIN_MSE_FACTOR, MIN_MSE_FACTOR_PREDICTABLE, PREDICTED_WINDOW,
                                                      min_mse_factor, update_group)
from stagelearn.analytics.stream_model import StreamVariableModel
from stagelearn.analytics.stream_payload import parse_stream_payload
from stagelearn.analytics.stream_step import StreamStates, decode_stream_block, encode_stream_block
from stagelearn.analytics.temporal import PredictionChain

from test_stream_codec import gyrokinetic_frames, moving_field
from test_stream_step import _decode_at, _stream, _target


@pytest.fixture(autouse=True)
def given_axis_order():
    """Every block coded in its given axis order (no axis order chosen at keyframes or predicted frames); its own
    patch, which a test's ``monkeypatch.undo()`` leaves in place."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(axis_order, "trial_axis_order", lambda x, size_of: None)
        mp.setattr(axis_order, "choose_axis_order", lambda x, prev=None: None)
        yield


def test_step_cap_rule():
    """min_mse_factor (analytics/stream_codec/stream.py, used by stream_rate.py): MIN_MSE_FACTOR for the first
    predicted frame after a keyframe and where a keyframe costs at most PREDICTABLE_RHO predicted frames;
    MIN_MSE_FACTOR_PREDICTABLE beyond."""
    from stagelearn.analytics.stream_codec.stream import PREDICTABLE_RHO

    assert MIN_MSE_FACTOR_PREDICTABLE < MIN_MSE_FACTOR
    assert min_mse_factor(10 ** 6, 0, 0) == MIN_MSE_FACTOR  # nothing predicted yet
    assert min_mse_factor(1000, 3 * 1000, 3) == MIN_MSE_FACTOR  # a predicted frame costs a keyframe
    assert min_mse_factor(PREDICTABLE_RHO * 100, 100, 1) == MIN_MSE_FACTOR
    assert min_mse_factor(PREDICTABLE_RHO * 100 + 1, 100, 1) == MIN_MSE_FACTOR_PREDICTABLE
    assert min_mse_factor(PREDICTABLE_RHO * 500 + 1, 5 * 100, 5) == MIN_MSE_FACTOR_PREDICTABLE


def test_run_step_cap_looser_where_predicted_frames_cost_little(monkeypatch):
    """The run's rate control (stream_rate.py) with min_mse_factor: on the smooth gyrokinetic mock fewer bytes
    than under the MIN_MSE_FACTOR cap everywhere, every block at its target (computed here from the decoded
    payloads); on a busier drifting field the payloads are those of the MIN_MSE_FACTOR cap, byte for byte."""
    from stagelearn.analytics.stream_codec import stream

    def run(frames, db):
        codes, prev = _stream(frames, keyframe_every=16, db=db), None
        for x, c in zip(frames, codes):
            rec, header = decode_stream_block(c.payload, None if header_is_key(c) else prev)
            mse = float(np.mean((x.astype(np.float64) - rec.astype(np.float64)) ** 2))
            assert rec.tobytes() == c.reconstruction.tobytes() and mse <= _target(x, db)
            prev = rec
        return [c.payload for c in codes]

    def header_is_key(c):
        return parse_stream_payload(c.payload)[0]["ref_step"] is None

    gyro, drift = gyrokinetic_frames(), [moving_field(t) for t in range(12)]
    looser = [run(gyro, db) for db in (40.0, 50.0)], run(drift, 50.0)
    monkeypatch.setattr(stream, "MIN_MSE_FACTOR_PREDICTABLE", stream.MIN_MSE_FACTOR)  # the one cap of before
    tight = [run(gyro, db) for db in (40.0, 50.0)], run(drift, 50.0)
    for a, b in zip(looser[0], tight[0]):
        assert sum(map(len, a)) < 0.99 * sum(map(len, b))  # measured 0.952 (40 dB), 0.889 (50 dB); 1.0 without
    assert looser[1] == tight[1]


def test_group_is_a_plain_sum_up_to_the_window_then_a_mean_over_about_its_last_frames():
    """update_group (stream.py, the one bookkeeping of StreamEncoder and stream_rate.py): a keyframe starts a
    group; up to PREDICTED_WINDOW predicted frames their bytes are summed exactly (intra_bound /
    min_mse_factor of 16-frame groups unchanged); beyond, the mean follows the recent frames, so that with
    keyframe_every=0 a block whose predicted frames became expensive loses the looser cap."""
    group = update_group([5, 7, 3], 10000, True)
    assert group == [10000, 0, 0]
    sizes = [10 + t for t in range(PREDICTED_WINDOW)]
    for b in sizes:
        update_group(group, b, False)
    assert group == [10000, sum(sizes), PREDICTED_WINDOW]
    assert min_mse_factor(*group) == MIN_MSE_FACTOR_PREDICTABLE
    never_forgets = list(group)
    for _ in range(40):  # predicted frames now cost 0.3 of the keyframe
        update_group(group, 3000, False)
        never_forgets = [never_forgets[0], never_forgets[1] + 3000, never_forgets[2] + 1]
    assert group[2] == PREDICTED_WINDOW
    mean = group[1] / group[2]
    assert 2500 < mean < 3000  # (15/16)^40 of the old mean left: 3000 - 2983 * 0.076
    assert min_mse_factor(*group) == MIN_MSE_FACTOR
    assert min_mse_factor(*never_forgets) == MIN_MSE_FACTOR_PREDICTABLE  # the mean over all 55 frames: rho 4.6


CUT = 6  # the field changes at this frame: its prediction from the frame before is worthless


def _cut_frames():
    """A drifting field for CUT frames, then another (mirrored, other noise, 1.5x): a burst for a predicted frame."""
    a = [moving_field(t) for t in range(CUT)]
    b = [np.ascontiguousarray(np.flip(moving_field(t, seed=7), axis=(0, 2)) * np.float32(1.5)) for t in range(CUT, 10)]
    return a + b


def _intra_bytes(x, db):
    """Bytes of ``x`` coded on its own at the target, by a producer that has seen nothing before (a keyframe)."""
    code = encode_stream_block(x, StreamVariableModel(), step=0, chain=PredictionChain(16), chain_key="v",
                               target_mse=_target(x, db), state=StreamStates())
    assert parse_stream_payload(code.payload)[0]["ref_step"] is None
    return len(code.payload)


def test_intra_bound():
    assert stream_rate.intra_bound(0) == math.inf  # before the block's first keyframe
    assert stream_rate.intra_bound(1000) == stream_rate.INTRA_KEY * 1000


def test_a_losing_intra_trial_raises_the_bound_until_the_next_keyframe():
    """After a tiny keyframe (a constant block) every predicted frame of the field that follows is over 1.5x it;
    the first intra trial, which loses, sets the bound to its own bytes, so the next frames do not search intra
    again (before this rule: a losing trial on every frame). Every frame at its target. (Until 2026-12-08 the
    scenario was a field, a constant block, the field again; with smooth keyframes kept finer the first keyframe's
    bound is higher and the constant block, 939 bytes predicted, no longer triggers a trial; here the trial,
    a keyframe kept finer than the target, loses, 703 against 638 bytes, where the code before coded it at the
    target and it won.)"""
    shape = (24, 20, 18)
    frames = [np.full(shape, 1.0, np.float32)] * 3 + [moving_field(t, shape) for t in range(3, 12)]
    chain, states, model = PredictionChain(16), StreamStates(), StreamVariableModel()
    for t, x in enumerate(frames):
        tm = _target(x, 40.0) or _target(frames[-1], 40.0)
        code = encode_stream_block(x, model, step=t, chain=chain, chain_key="v", target_mse=tm, state=states)
        chain.end_step()
        assert np.mean((x.astype(np.float64) - code.reconstruction) ** 2) <= tm
        st = states.get("v")
        if t >= 3:
            assert len(code.payload) > stream_rate.intra_bound(st.group[0])  # over the keyframe's bound
    assert st.group[0] < 100 and st.intra_ref > 0  # the tiny keyframe still the block's; the bound raised
    assert st.intra_extra - st.intra_kept == 1  # one losing trial, not one per frame (measured: 703 vs 638 bytes)


def test_a_predicted_frame_costing_more_than_coding_it_on_its_own_is_sent_as_a_keyframe(monkeypatch):
    frames, bound = _cut_frames(), stream_rate.INTRA_KEY
    for db in (40.0, 50.0, 60.0):
        intra = _intra_bytes(frames[CUT], db)
        monkeypatch.setattr(stream_rate, "INTRA_KEY", math.inf)  # the controller of before: no intra fallback
        before = _stream(frames, keyframe_every=16, db=db)
        assert parse_stream_payload(before[CUT].payload)[0]["ref_step"] is not None
        assert len(before[CUT].payload) > bound * intra  # a burst (1.98x at 40 dB, where intra is coded 9 dB finer)
        assert len(before[CUT].payload) > bound * len(before[0].payload)  # over the bound
        monkeypatch.undo()
        codes = _stream(frames, keyframe_every=16, db=db)
        payloads = {10 * t: c.payload for t, c in enumerate(codes)}
        assert parse_stream_payload(codes[CUT].payload)[0]["ref_step"] is None  # an unscheduled keyframe
        assert len(codes[CUT].payload) <= 1.1 * intra, (db, len(codes[CUT].payload), intra)
        assert sum(len(c.payload) for c in codes) < sum(len(c.payload) for c in before)
        for t, (x, c) in enumerate(zip(frames, codes)):  # every frame at its target, from the decoded payloads
            rec, walked = _decode_at(payloads, 10 * t)  # a reader starting at this step
            assert rec.tobytes() == c.reconstruction.tobytes()
            assert walked == (t + 1 if t < CUT else t - CUT + 1)  # ... walks back to frame 0 or to the cut
            mse = float(np.mean((x.astype(np.float64) - rec.astype(np.float64)) ** 2))
            assert mse <= _target(x, db), (db, t)
            assert c.stats.mse == mse or math.isclose(c.stats.mse, mse, rel_tol=1e-12)
