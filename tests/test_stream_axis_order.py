"""The kernels' axis order (analytics/stream_codec/axis_order.py): a frame coded in another axis order is the
transposed frame coded in the given one (format versions 6 and 7 carry the order), decoded bit for bit; the
choice (roughest axes first) on fields whose smooth axes are known; corrupt orders refused; the encoders'
choices (StreamEncoder and the run's rate control) decoded bit for bit and smaller on a field given in a bad
order, unchanged on one whose order is already right.
"""

import numpy as np
import pytest

from stagelearn.analytics.stream_codec import (StreamDecoder, StreamEncoder, StreamFormatError, decode_frame,
                                               encode_frame)
from stagelearn.analytics.stream_codec.frame import frame_info
from stagelearn.analytics.stream_codec.frame_header import write_payload
from stagelearn.analytics.stream_codec.axis_order import (axis_roughness, choose_axis_order, from_kernel,
                                                          kernel_shape, normalize_axis_order, to_kernel)
from stagelearn.analytics.stream_payload import parse_stream_payload

from test_stream_codec import moving_field
from test_stream_step import _decode_at, _stream, _target


def _rough_then_smooth(shape=(6, 40, 48), seed=0):
    """Smooth along axes 0 and 1, noise along axis 2 (the same on every line): the kernels' view codes it far
    better with axis 2 first (merged) than last (half of the finest level's points predicted along it)."""
    rng = np.random.default_rng(seed)
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in shape], indexing="ij")
    return (np.sin(3 * g[0]) + np.cos(2 * g[1]) + rng.standard_normal(shape[2])[None, None, :]).astype(np.float32)


@pytest.mark.parametrize("order", [(1, 0, 2), (2, 0, 1), (2, 1, 0)])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_an_axis_order_codes_the_transposed_frame_and_decodes_bit_for_bit(order, dtype):
    x = moving_field(1, (9, 14, 20), dtype=dtype)
    prev = moving_field(0, (9, 14, 20), dtype=dtype)
    inverse = np.argsort(order)
    for p in (None, prev):
        frame = encode_frame(x, 0.01, prev=p, axis_order=order)
        alone = encode_frame(np.ascontiguousarray(x.transpose(order)), 0.01,
                             prev=None if p is None else np.ascontiguousarray(p.transpose(order)))
        assert frame.reconstruction.tobytes() == np.ascontiguousarray(alone.reconstruction.transpose(inverse)).tobytes()
        assert frame.reconstruction.shape == x.shape and frame.reconstruction.flags.c_contiguous
        np.testing.assert_array_equal(frame.stats, alone.stats)
        info = frame_info(frame.payload)
        assert info["version"] == 6 and info["axis_order"] == order and info["shape"] == x.shape
        assert decode_frame(frame.payload, p).tobytes() == frame.reconstruction.tobytes()
        adaptive = encode_frame(x, 0.01, prev=p, axis_order=order, adaptive=True)
        assert frame_info(adaptive.payload)["version"] in (6, 7)
        assert decode_frame(adaptive.payload, p).tobytes() == frame.reconstruction.tobytes()


def test_the_given_order_writes_format_4_byte_for_byte():
    x = moving_field(2, (9, 14, 20))
    plain = encode_frame(x, 0.01)
    for order in (None, (0, 1, 2), [0, 1, 2]):
        frame = encode_frame(x, 0.01, axis_order=order)
        assert frame.payload == plain.payload and frame_info(frame.payload)["axis_order"] is None
    assert frame_info(plain.payload)["version"] == 4


def test_bad_and_corrupt_orders_are_refused():
    x = moving_field(2, (9, 14, 20))
    for bad in ((0, 1), (0, 0, 1), (0, 1, 3)):
        with pytest.raises(ValueError, match="not a permutation"):
            encode_frame(x, 0.01, axis_order=bad)
    frame = encode_frame(x, 0.01, payload=False)
    x_, prev3, shape3, levels, qlev, wfit, codes, outliers, factors, zstd_level, *_ = frame._pending
    for order in ((0, 0, 1), (0, 1, 5)):
        payload = write_payload(4, x.dtype, x.shape, False, factors, wfit, outliers, 0, 0, b"", b"", 3,
                                axis_order=order)
        with pytest.raises(StreamFormatError, match="axis order"):
            decode_frame(payload)
    with pytest.raises(ValueError, match="axis_order"):
        StreamEncoder("psnr", 40.0, axis_order="rough")


def test_helpers_invert_each_other():
    x = np.arange(2 * 3 * 4 * 5, dtype=np.float32).reshape(2, 3, 4, 5)
    order = normalize_axis_order([3, 1, 0, 2], 4)
    k = to_kernel(x, order)
    assert k.shape == kernel_shape(x.shape, order) == (5, 3, 2, 4) and k.flags.c_contiguous
    assert np.array_equal(from_kernel(k, order), x)
    assert normalize_axis_order((0, 1, 2, 3), 4) is None and to_kernel(None, order) is None


def test_roughness_and_choice_follow_the_smooth_axes():
    small = _rough_then_smooth((5, 12, 48))  # 60 lines of 48 values along axis 2: all sampled
    a = np.moveaxis(small.astype(np.float64), 2, -1)
    n = a.shape[-1]
    r2 = a[..., 3:n - 3] - (-a[..., :n - 6] + 9 * a[..., 2:n - 4] + 9 * a[..., 4:n - 2] - a[..., 6:]) / 16
    assert axis_roughness(small)[2] == pytest.approx(np.mean(r2 ** 2), rel=1e-12)  # the cubic residual, here
    x = _rough_then_smooth()
    rough = axis_roughness(x)
    assert rough[2] > 20 * max(rough[0], rough[1])  # axis 0: 6 points, the linear stencil
    assert choose_axis_order(x)[0] == 2  # the noisy axis goes first (merged), the smooth ones last
    assert choose_axis_order(np.ascontiguousarray(x.transpose(2, 0, 1))) is None  # already in a right order
    assert choose_axis_order(np.ones(50, np.float32)) is None  # one axis: nothing to choose
    y = x.copy()
    y[0, 0, 0] = np.nan
    assert choose_axis_order(y) is None  # a non-finite sampled value: the given order
    # of a difference: a field in a right order plus a change that is noise along its last axis
    base = np.ascontiguousarray(x.transpose(2, 0, 1))
    rng = np.random.default_rng(1)
    z = base + rng.standard_normal(base.shape[2]).astype(np.float32)[None, None, :]
    assert choose_axis_order(z, base)[0] == 2


def test_stream_encoder_codes_a_badly_ordered_field_smaller_and_decodes_bit_for_bit():
    frames = [_rough_then_smooth(seed=t) for t in range(5)]  # the change from frame to frame: noise along axis 2
    sizes = {}
    for rule in ("auto", None):
        enc, dec = StreamEncoder("psnr", 50.0, axis_order=rule), StreamDecoder()
        total = 0
        for x in frames:
            frame = enc.encode(x)
            total += len(frame.payload)
            assert dec.decode(frame.payload).tobytes() == frame.reconstruction.tobytes()
            span = float(x.max() - x.min())
            assert np.mean((x.astype(np.float64) - frame.reconstruction) ** 2) <= span ** 2 * 1e-5
        sizes[rule] = total
        if rule == "auto":
            assert frame_info(enc.encode(frames[0]).payload)["axis_order"] is not None
    assert sizes["auto"] < 0.8 * sizes[None]
    right = [np.ascontiguousarray(f.transpose(2, 0, 1)) for f in frames]  # already in a right order: the same bytes
    for rule in ("auto", None):
        enc = StreamEncoder("psnr", 50.0, axis_order=rule)
        sizes[rule] = [enc.encode(x).payload for x in right]
    assert sizes["auto"] == sizes[None]


def test_the_run_chooses_an_axis_order_at_keyframes_and_decodes_any_step():
    frames = [_rough_then_smooth(seed=t) for t in range(6)]
    codes = _stream(frames, keyframe_every=4, db=45.0)
    payloads = {10 * t: c.payload for t, c in enumerate(codes)}
    versions = set()
    for t, (x, c) in enumerate(zip(frames, codes)):
        rec, _ = _decode_at(payloads, 10 * t)
        assert rec.tobytes() == c.reconstruction.tobytes()
        assert float(np.mean((x.astype(np.float64) - rec) ** 2)) <= _target(x, 45.0)
        versions.add(frame_info(parse_stream_payload(c.payload)[2])["version"])
    assert versions & {6, 7}


def test_chooser_keeps_a_keyframe_choice_for_axis_order_every_frames_unless_forced_or_reshaped():
    from stagelearn.analytics.stream_codec.axis_order import AXIS_ORDER_EVERY, AxisOrderChooser

    x = _rough_then_smooth()
    trials = []

    def size_of(lay):
        trials.append(lay)
        return len(encode_frame(x, 0.05, axis_order=lay).payload)

    chooser = AxisOrderChooser()
    first = chooser.keyframe(x, size_of)
    assert first == choose_axis_order(x) and len(trials) == 2  # the heuristic's order and the given one
    for _ in range(AXIS_ORDER_EVERY - 1):  # frames coded on their own every step: no trial
        assert chooser.keyframe(np.ascontiguousarray(x.transpose(2, 0, 1)).reshape(x.shape), size_of) == first
    assert len(trials) == 2
    assert chooser.keyframe(np.ascontiguousarray(x.transpose(2, 0, 1)), None, force=False) is None  # new shape
    assert chooser.keyframe(x, None, force=True) == first  # forced: chosen again at once
    assert chooser.keyframe(x, size_of, keep=False) == first and chooser._source is None


def test_the_intra_fallback_chooses_the_order_of_the_changed_field():
    """A block whose rough axis moves from 2 to 0 at the cut: the unscheduled keyframe is coded in the order
    choose_axis_order gives the new field, not in the block's cached keyframe order."""
    a = [_rough_then_smooth(seed=t) for t in range(3)]
    b = [np.ascontiguousarray(_rough_then_smooth(seed=10 + t).transpose(2, 1, 0)).reshape(a[0].shape) * 3
         for t in range(3)]
    codes = _stream(a + b, keyframe_every=16, db=45.0)
    for t, c in enumerate(codes[3:], 3):
        header, _, body = parse_stream_payload(c.payload)
        if header["ref_step"] is None:  # the rate control coded it on its own
            assert frame_info(body)["axis_order"] == choose_axis_order(b[t - 3])
            break
    else:
        raise AssertionError("no unscheduled keyframe after the cut (the predicted frame was cheaper)")


def test_weights_set_from_outside_survive_an_axis_order_with_another_level_count():
    from stagelearn.analytics.stream_codec.interpolation import as_3d_shape, n_levels

    rng = np.random.default_rng(0)
    g = np.meshgrid(*[np.linspace(0, 1, n) for n in (4, 8, 6, 40)], indexing="ij")
    frames = [(np.sin(3 * g[0] + 0.1 * t) + np.cos(2 * g[1]) + g[2] + rng.standard_normal(40)[None, None, None, :])
              .astype(np.float32) for t in range(3)]  # noise along the last axis (40 points)
    order = choose_axis_order(frames[0])
    levels = n_levels(as_3d_shape(kernel_shape(frames[0].shape, order)))
    assert levels != n_levels(as_3d_shape(frames[0].shape)) == 6  # (32, 6, 40) given, the 40 axis merged first
    w = np.tile([0.9, 0.8, -0.7], (6, 1))
    enc = StreamEncoder("step", 0.05, fit=False)
    enc.set_weights(w)
    for f in frames:
        enc.encode(f)
    assert enc.axis_order is not None and enc.weights.shape == (levels, 3)
    k = min(levels, 6)
    assert np.array_equal(enc.weights[:k], w[:k]) and np.all(enc.weights[k:] == [1.0, 1.0, -1.0])


def test_staging_statistics_follow_the_coded_axis_order():
    from stagelearn.analytics.stream_model import statistics
    from stagelearn.analytics.stream_step import payload_axis_order

    x, p = _rough_then_smooth(seed=1), _rough_then_smooth(seed=0)
    order = (2, 0, 1)
    xt, pt = np.ascontiguousarray(x.transpose(order)), np.ascontiguousarray(p.transpose(order))
    assert np.array_equal(statistics(x, p, order), statistics(xt, pt))
    codes = _stream([p, x], keyframe_every=16, db=45.0)
    assert payload_axis_order(codes[0].payload) == choose_axis_order(p)  # the keyframe's order (its trial kept it)
    from stagelearn.analytics.stream_model import StreamVariableModel
    from stagelearn.analytics.stream_step import encode_stream_block
    from stagelearn.analytics.temporal import PredictionChain

    empty = encode_stream_block(np.zeros((0, 4), np.float32), StreamVariableModel(), step=0, chain=PredictionChain(16),
                                chain_key="e", target_mse=1.0)  # stored exactly: no frame, no order
    assert payload_axis_order(empty.payload) is None


def test_axes_of_length_one_do_not_hide_a_better_order():
    """A 2-D field given as (nx, ny, 1) (a degenerate ADIOS2 block) gets the order it gets as (nx, ny)."""
    x = np.ascontiguousarray(_rough_then_smooth((5, 40, 48))[2])  # (40, 48): noise along axis 1
    order2 = choose_axis_order(x)
    assert order2 == (1, 0)
    assert choose_axis_order(x[:, :, None]) == (2, 1, 0)  # the length-1 axis first, then as in 2-D


def test_weights_set_from_outside_survive_a_keyframe_with_fewer_levels():
    """set_weights with fit=False: a keyframe whose order has fewer levels does not cut the caller's weights."""
    from stagelearn.analytics.stream_codec.interpolation import as_3d_shape, n_levels

    g = np.meshgrid(*[np.linspace(0, 1, n) for n in (40, 4, 6, 8)], indexing="ij")
    rng = np.random.default_rng(3)
    frames = [(np.sin(2 * g[0] + 0.1 * t) + g[1] + np.cos(g[2]) + rng.standard_normal(8)[None, None, None, :])
              .astype(np.float32) for t in range(4)]  # noise along axis 3 (8 points), the smooth 40 points last
    given = n_levels(as_3d_shape(frames[0].shape))  # (160, 6, 8): 8 levels
    w = np.tile([1.0, 0.3, -0.2], (given, 1))
    enc = StreamEncoder("step", 0.05, fit=False, keyframe_every=2, axis_order=None)
    enc.set_weights(w)
    enc.encode(frames[0])
    enc._axis_order_rule = "auto"  # from here on the encoder chooses: the keyframe at frame 2 gets fewer levels
    enc.encode(frames[1])
    enc.encode(frames[2])
    assert n_levels(as_3d_shape(kernel_shape(frames[2].shape, enc.axis_order))) < given
    enc.encode(frames[3])  # predicted, in the keyframe's group
    k = enc.weights.shape[0]
    assert np.array_equal(enc.weights, w[:k]) or np.array_equal(enc.weights[:given], w)
